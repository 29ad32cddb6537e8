//! `vexevent tail`: follows a running instance's live stream and prints each event, as one
//! readable line or as JSON.

use anyhow::{Context as _, bail};
use futures_util::StreamExt as _;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;
use vexevent::http::STREAM_PATH;

use super::remote::Remote;

/// Percent-encodes a query value.
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// One readable line for an event.
fn line(event: &Value) -> String {
    let fs = &event["context"]["filesystem"];
    let path = match &fs["path"] {
        Value::String(path) => path.clone(),
        Value::Object(path) => path.get("lossy").and_then(Value::as_str).unwrap_or("").to_owned(),
        _ => String::new(),
    };
    let result = match event["result"]["error"].as_str() {
        Some(error) => error.to_owned(),
        None => "ok".to_owned(),
    };
    format!(
        "{} {:<28} {:<16} {} [{}] pid {} {}",
        event["timestamp"]["wall_ns"].as_u64().unwrap_or(0) / 1_000_000,
        event["event_type"].as_str().unwrap_or("?"),
        event["event_subtype"].as_str().unwrap_or("?"),
        path,
        result,
        event["process"]["pid"],
        event["process"]["comm"].as_str().unwrap_or(""),
    )
}

/// Connects and prints until the stream ends or the user interrupts.
pub fn follow(
    remote: &Remote,
    addr: &str,
    filter: Option<&str>,
    token: &str,
    json: bool,
) -> anyhow::Result<()> {
    let scheme = remote.ws_scheme();
    let url = match filter {
        Some(filter) => format!("{scheme}://{addr}{STREAM_PATH}?filter={}", encode(filter)),
        None => format!("{scheme}://{addr}{STREAM_PATH}"),
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let mut socket = remote.websocket(&url, addr, token).await.with_context(|| {
            format!("cannot connect to {url} (is `vexevent run --stream-addr {addr}` running?)")
        })?;
        while let Some(message) = socket.next().await {
            let Message::Text(text) = message.context("the stream broke")? else { continue };
            let value: Value =
                serde_json::from_str(&text).context("the stream sent something that is not JSON")?;
            if let Some(gap) = value.get("gap") {
                eprintln!("vexevent tail: {} events dropped (this client was too slow)", gap["dropped"]);
            } else if json {
                println!("{}", value["event"]);
            } else {
                println!("{}", line(&value["event"]));
            }
        }
        bail!("the stream closed (the instance stopped)")
    })
}
