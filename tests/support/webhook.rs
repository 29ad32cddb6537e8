//! A webhook receiver on loopback for the sink tests: refuses its first requests (HTTP 500), then
//! records every batch it accepts with its `X-Vexevent-Batch` header.

use std::sync::{Arc, Mutex};

use axum::{
    extract::State,
    http::{HeaderMap, StatusCode},
    routing::post,
};
use serde_json::Value;

/// What the receiver got.
#[derive(Default)]
pub struct Hook {
    /// Requests still to refuse.
    pub refuse: usize,
    /// Requests refused so far.
    pub refused: usize,
    /// Accepted batches: the batch header and the events.
    pub batches: Vec<(String, Vec<Value>)>,
    /// The batch header of every request, refused or accepted, in order.
    pub attempts: Vec<String>,
}

impl Hook {
    /// Every accepted event, in order.
    pub fn events(&self) -> Vec<Value> {
        self.batches.iter().flat_map(|(_, events)| events.iter().cloned()).collect()
    }
}

async fn receive(State(hook): State<Arc<Mutex<Hook>>>, headers: HeaderMap, body: String) -> StatusCode {
    let mut hook = hook.lock().unwrap();
    let batch = headers.get("x-vexevent-batch").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    hook.attempts.push(batch.clone());
    if hook.refuse > 0 {
        hook.refuse -= 1;
        hook.refused += 1;
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    hook.batches.push((batch, serde_json::from_str(&body).expect("a JSON array of events")));
    StatusCode::OK
}

/// Serves a receiver that refuses its first `refuse` requests; returns its URL.
pub fn webhook_receiver(refuse: usize) -> (String, Arc<Mutex<Hook>>) {
    let hook = Arc::new(Mutex::new(Hook { refuse, ..Hook::default() }));
    let state = Arc::clone(&hook);
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            addr_tx.send(listener.local_addr().unwrap()).unwrap();
            let app = axum::Router::new().route("/events", post(receive)).with_state(state);
            axum::serve(listener, app).await.unwrap();
        });
    });
    (format!("http://{}/events", addr_rx.recv().unwrap()), hook)
}
