//! Where events end up. Today: JSON Lines on stdout or in a file.

mod jsonl;

pub use jsonl::{JsonLinesSink, SinkError};
