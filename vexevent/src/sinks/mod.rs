//! Where events end up: JSON Lines on stdout or in a file, and the live WebSocket stream.

mod jsonl;
mod websocket;

pub use jsonl::{JsonLinesSink, Rotation, SinkError, to_json_lines};
pub use websocket::{Broadcaster, STREAM_PATH, StreamError, StreamServer, require_token_for_remote};
