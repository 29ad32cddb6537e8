//! JSON Lines sink: one event per line, appended to a file or written to stdout, flushed after
//! every batch so readers see events within one drain interval.

use std::{
    fs::OpenOptions,
    io::{self, BufWriter, Write},
    path::{Path, PathBuf},
};

use crate::{
    event::SemanticEvent,
    telemetry::{Counters, add},
};

/// Why the sink could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("cannot open output file {path}: {source}; check the directory exists and is writable")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Writes events as JSON Lines.
pub struct JsonLinesSink {
    writer: BufWriter<Box<dyn Write + Send>>,
    failing: bool,
}

impl JsonLinesSink {
    /// Appends to `path`, or writes to stdout when `None`.
    ///
    /// # Errors
    /// When the file cannot be opened.
    pub fn open(path: Option<&Path>) -> Result<Self, SinkError> {
        let out: Box<dyn Write + Send> = match path {
            None => Box::new(io::stdout()),
            Some(path) => Box::new(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|source| SinkError::Open { path: path.to_owned(), source })?,
            ),
        };
        Ok(Self::new(out))
    }

    /// Writes to any writer (tests, benchmarks).
    #[must_use]
    pub fn new(out: Box<dyn Write + Send>) -> Self {
        Self { writer: BufWriter::with_capacity(1 << 16, out), failing: false }
    }

    /// Writes a batch and flushes it; true when it was written. Events that cannot be written
    /// are counted in `sink_errors`; the first failure is logged.
    pub fn write_batch(&mut self, events: &[SemanticEvent], counters: &Counters) -> bool {
        let result = events.iter().try_for_each(|event| {
            serde_json::to_writer(&mut self.writer, event).map_err(io::Error::from)?;
            self.writer.write_all(b"\n")
        });
        match result.and_then(|()| self.writer.flush()) {
            Ok(()) => {
                add(&counters.events_delivered, events.len() as u64);
                self.failing = false;
                true
            }
            Err(error) => {
                if !self.failing {
                    tracing::error!(%error, "the output sink failed; events are counted as sink_errors");
                }
                self.failing = true;
                add(&counters.sink_errors, events.len() as u64);
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex, atomic::Ordering};

    use super::*;
    use crate::event::EventType;

    fn event(id: u64) -> SemanticEvent {
        let mut event = SemanticEvent::sample(EventType::FilesystemWrite, "/w/f", 1, "t", true);
        event.event_id = id;
        event
    }

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn writes_one_line_per_event_and_counts_them() {
        let counters = Counters::default();
        let out = Shared::default();
        let mut sink = JsonLinesSink::new(Box::new(out.clone()));
        sink.write_batch(&[event(0), event(1)], &counters);
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let ids: Vec<u64> = text
            .lines()
            .map(|line| {
                serde_json::from_str::<serde_json::Value>(line).unwrap()["event_id"].as_u64().unwrap()
            })
            .collect();
        assert_eq!(ids, vec![0, 1]);
        assert_eq!(counters.events_delivered.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn a_failing_writer_counts_every_event_it_lost() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::from(io::ErrorKind::BrokenPipe))
            }
            fn flush(&mut self) -> io::Result<()> {
                Err(io::Error::from(io::ErrorKind::BrokenPipe))
            }
        }
        let counters = Counters::default();
        let mut sink = JsonLinesSink::new(Box::new(Broken));
        sink.write_batch(&[event(0), event(1), event(2)], &counters);
        assert_eq!(counters.sink_errors.load(Ordering::Relaxed), 3);
        assert_eq!(counters.events_delivered.load(Ordering::Relaxed), 0);
    }
}
