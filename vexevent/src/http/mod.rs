//! The HTTP edge: everything vexevent serves over HTTP (the live event stream, the control API
//! with its Prometheus endpoint) and who may use it (bearer tokens).

mod auth;
pub mod control;
mod stream;

pub use auth::{AuthError, Token};
pub use control::{
    CONTROL_SERVER, CONTROL_TOKEN_FLAG, ControlConfig, ControlRequest, METRICS_PATH, RELOAD_PATH, STATS_PATH,
};
pub use stream::{
    Broadcaster, QueryError, STREAM_PATH, STREAM_SERVER, STREAM_TOKEN_FLAG, StreamConfig, StreamError,
    StreamServer,
};
