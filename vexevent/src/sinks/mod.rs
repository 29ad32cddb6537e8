//! Where events end up. Named outputs (stdout, JSON Lines file, webhook, Unix/TCP socket, NATS
//! `JetStream`, null),
//! each with its own bounded two-lane queue, full-queue policy and worker thread that batches,
//! retries and counts.

mod config;
mod jsonl;
mod nats;
mod queue;
mod socket;
mod webhook;
mod worker;

use std::{
    path::PathBuf,
    sync::{Arc, atomic::Ordering},
    thread::JoinHandle,
};

pub use config::{
    DEFAULT_FILE_MODE, DEFAULT_SINK, OutputConfig, SinkConfig, SinkConfigError, SinkType, default_sink,
};
pub use jsonl::{FileAccess, Rotation};
pub use nats::{NatsAuth, NatsSettings, Servers, SubjectTemplate};
pub use queue::Queued;
pub use socket::SocketAddress;
pub use webhook::WebhookSettings;
pub use worker::{Delivery, GiveUpAt};

use crate::{
    pipeline::WhenFull,
    telemetry::{Counters, SinkCounters, add},
};
use jsonl::JsonLinesSink;
use nats::NatsSink;
use queue::{Pushed, SinkQueue};
use socket::SocketSink;
use webhook::Webhook;
use worker::{Deliver, Worker};

/// Why a sink could not start.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("cannot open output file {path}: {source}; check the directory exists and is writable")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "output file {path} is a symbolic link; outputs are not written through links (another user could plant one): give the real path"
    )]
    Symlink { path: PathBuf },
    #[error("cannot use the NATS credentials file {path}: {source}")]
    Credentials {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the async runtime of a NATS sink: {source}")]
    Runtime {
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the worker thread of sink {name}: {source}")]
    Thread {
        name: String,
        #[source]
        source: std::io::Error,
    },
}

/// Why one delivery attempt failed (the batch is retried).
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("HTTP request failed: {0}")]
    Http(String),
    #[error("the receiver answered HTTP {0}")]
    Status(u16),
    #[error("NATS: {0}")]
    Nats(String),
}

/// What an output writes to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Destination {
    Stdout,
    File {
        path: PathBuf,
        rotation: Rotation,
        /// Permission bits (0600 unless configured) and group of the file.
        access: FileAccess,
    },
    Webhook(WebhookSettings),
    Socket {
        address: SocketAddress,
        /// How long connecting, and each write, may take.
        timeout: std::time::Duration,
    },
    Nats(NatsSettings),
    /// Discards events (counted as delivered): benchmarks, or a route that only counts.
    Null,
}

/// One configured output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SinkSpec {
    pub name: String,
    pub destination: Destination,
    /// Events each lane of the queue holds.
    pub queue: usize,
    pub when_full: WhenFull,
    pub delivery: Delivery,
}

struct Null;

impl Deliver for Null {
    fn deliver(&mut self, _: &[Queued]) -> Result<(), DeliveryError> {
        Ok(())
    }
}

struct Output {
    name: String,
    queue: Arc<SinkQueue>,
    counters: Arc<SinkCounters>,
    worker: JoinHandle<()>,
}

/// The running outputs, addressed by index (their order in the configuration).
pub struct Sinks {
    outputs: Vec<Output>,
    give_up_at: GiveUpAt,
}

impl Sinks {
    /// Opens every output (files and NATS credentials now, so a bad path fails at start;
    /// network ones connect on first delivery) and starts its worker.
    ///
    /// # Errors
    /// A file that cannot be opened, or a thread or runtime that cannot start.
    pub fn start(specs: &[SinkSpec], counters: &Arc<Counters>) -> Result<Self, SinkError> {
        let give_up_at = GiveUpAt::default();
        let mut outputs = Vec::with_capacity(specs.len());
        for spec in specs {
            let destination: Box<dyn Deliver> = match &spec.destination {
                Destination::Stdout => Box::new(JsonLinesSink::new(Box::new(std::io::stdout()))),
                Destination::File { path, rotation, access } => {
                    Box::new(JsonLinesSink::open(path, *rotation, *access)?)
                }
                Destination::Webhook(settings) => Box::new(Webhook::new(settings.clone())),
                Destination::Socket { address, timeout } => {
                    Box::new(SocketSink::new(address.clone(), *timeout))
                }
                Destination::Nats(settings) => Box::new(NatsSink::new(settings.clone())?),
                Destination::Null => Box::new(Null),
            };
            let queue = Arc::new(SinkQueue::new(spec.queue, spec.when_full));
            let sink_counters = counters.outputs.register_sink(&spec.name);
            let worker = Worker {
                name: spec.name.clone(),
                queue: Arc::clone(&queue),
                destination,
                delivery: spec.delivery,
                sink: Arc::clone(&sink_counters),
                counters: Arc::clone(counters),
                give_up_at: Arc::clone(&give_up_at),
            };
            let worker = std::thread::Builder::new()
                .name(format!("sink-{}", spec.name))
                .spawn(move || worker.run())
                .map_err(|source| SinkError::Thread { name: spec.name.clone(), source })?;
            outputs.push(Output { name: spec.name.clone(), queue, counters: sink_counters, worker });
        }
        Ok(Self { outputs, give_up_at })
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.outputs.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.outputs.is_empty()
    }

    /// Whether output `index` is delivering (its last attempt did not fail).
    #[must_use]
    pub fn is_up(&self, index: usize) -> bool {
        self.outputs.get(index).is_some_and(|o| !o.counters.down.load(Ordering::Relaxed))
    }

    /// Queues events for output `index` (in order, under one lock), counting what the queue's
    /// policy drops.
    pub fn offer(&self, index: usize, items: impl IntoIterator<Item = Queued>, counters: &Counters) {
        let Some(output) = self.outputs.get(index) else { return };
        let sink = &output.counters;
        output.queue.push_all(items, |pushed| match pushed {
            Pushed::Queued => add(&sink.queued, 1),
            Pushed::DroppedOldest | Pushed::DroppedNewest => {
                add(&sink.dropped_full, 1);
                add(&counters.sink_errors, 1);
            }
            Pushed::Abandoned => {
                add(&sink.dropped_shutdown, 1);
                add(&counters.sink_errors, 1);
            }
        });
    }

    /// Set once, when vexevent stops: from that instant on, outputs that are down stop
    /// retrying and count what they hold as dropped (stopping cannot hang on a dead
    /// destination).
    #[must_use]
    pub fn give_up_handle(&self) -> GiveUpAt {
        Arc::clone(&self.give_up_at)
    }

    /// Delivers what is queued and stops the workers.
    pub fn finish(self) {
        for output in &self.outputs {
            output.queue.close();
        }
        for output in self.outputs {
            if output.worker.join().is_err() {
                tracing::error!(sink = %output.name, "the sink's worker panicked");
            }
        }
    }
}
