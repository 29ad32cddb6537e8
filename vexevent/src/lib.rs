//! vexevent: captures file-system events with eBPF and propagates them as `VexFS` semantic events.
//!
//! Data flows one way: `loader` attaches the probes, `capture` drains their ring buffers,
//! `translate` turns records into [`event::SemanticEvent`]s, `correlate` joins the boundaries of
//! one operation (syscall and FUSE requests), `filter` keeps what was asked for, `react` matches rules and acts, `route` picks
//! the outputs, `sinks` deliver to them, `http` serves the live stream and the control API; `telemetry`
//! counts everything that does not make it; `app` wires the stages; `config` feeds them.

pub mod analyse;
pub mod app;
pub mod capture;
pub mod config;
pub mod correlate;
pub mod event;
pub mod expr;
pub mod filter;
#[cfg(test)]
mod fuzz;
pub mod http;
pub mod loader;
pub mod pipeline;
pub mod privilege;
pub mod react;
pub mod replicate;
pub mod route;
pub mod sinks;
pub mod telemetry;
pub mod translate;
pub mod window;
