//! Webhook sink: each batch is one HTTP POST of a JSON array of events. A batch keeps its
//! number (`X-Vexevent-Batch: <pid>-<n>`) across retries, so a receiver that got a batch whose
//! reply was lost can recognise the repeat. HTTPS uses rustls with the ring provider and the
//! Mozilla roots (no system TLS library, no cmake).

use std::time::Duration;

use super::{DeliveryError, queue::Queued, worker::Deliver};

/// Where and how a webhook posts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookSettings {
    /// `http://` or `https://` URL.
    pub url: String,
    /// Whole-request timeout.
    pub timeout: Duration,
    /// Extra request headers (e.g. `Authorization`).
    pub headers: Vec<(String, String)>,
}

/// Posts batches to one URL.
pub struct Webhook {
    agent: ureq::Agent,
    settings: WebhookSettings,
    /// Number of the batch being delivered (the same across its retries).
    batch: u64,
}

impl Webhook {
    #[must_use]
    pub fn new(settings: WebhookSettings) -> Self {
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(settings.timeout))
            .http_status_as_error(false)
            .build()
            .into();
        Self { agent, settings, batch: 0 }
    }
}

/// `[line,line,...]`: the lines are JSON objects already.
fn json_array(batch: &[Queued]) -> String {
    let mut body = String::with_capacity(batch.iter().map(|q| q.line.len() + 1).sum::<usize>() + 2);
    body.push('[');
    for (i, queued) in batch.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(&queued.line);
    }
    body.push(']');
    body
}

impl Deliver for Webhook {
    fn deliver(&mut self, batch: &[Queued]) -> Result<(), DeliveryError> {
        let mut request = self
            .agent
            .post(&self.settings.url)
            .header("content-type", "application/json")
            .header("x-vexevent-batch", format!("{}-{}", std::process::id(), self.batch));
        for (name, value) in &self.settings.headers {
            request = request.header(name, value);
        }
        let response =
            request.send(json_array(batch)).map_err(|error| DeliveryError::Http(error.to_string()))?;
        let status = response.status();
        if !status.is_success() {
            return Err(DeliveryError::Status(status.as_u16()));
        }
        self.batch += 1;
        Ok(())
    }
}
