//! The probes' own diagnostics (aya-log: FUSE daemons learned, forks inheriting a watched cwd,
//! path read faults, full rings and tables), for a user debugging a probe. Off unless asked
//! (`--debug-probes`): the loader then sets the probes' log level to "off" before load, so the
//! verifier removes every log statement and the probes pay nothing. When on, a thread forwards
//! each line to `tracing` (target `vexevent::probes`, printed at WARN so the default filter
//! shows it).

use std::{
    os::fd::AsRawFd as _,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use aya::Ebpf;
use aya_log::EbpfLogger;

/// How often the reader looks at its stop flag while no log line arrives.
const POLL_TIMEOUT: Duration = Duration::from_millis(100);

/// The probes' log level the loader sets: every level when debugging, none otherwise.
#[must_use]
pub fn level(debug: bool) -> u8 {
    if debug { aya_log::Level::Trace as u8 } else { 0 }
}

/// Forwards aya-log records to `tracing`.
struct ToTracing;

impl log::Log for ToTracing {
    fn enabled(&self, _metadata: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        tracing::warn!(target: "vexevent::probes", level = %record.level(), "probe: {}", record.args());
    }

    fn flush(&self) {}
}

/// The thread reading the probes' log ring; stops when dropped.
pub struct ProbeLogReader {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ProbeLogReader {
    /// Takes the log ring from the loaded object and starts forwarding its lines.
    ///
    /// # Errors
    /// When the object has no log ring, or the thread cannot start.
    pub fn start(ebpf: &mut Ebpf) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        let mut logger = EbpfLogger::init_with_logger(ebpf, ToTracing)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let thread = std::thread::Builder::new().name("probe-log".to_owned()).spawn(move || {
            // Started before `vexevent run` drops its privileges (capabilities are per thread):
            // it reads a ring it already holds and needs none.
            if let Err(error) = crate::privilege::restrict(&[]) {
                tracing::warn!(%error, "the probe log thread keeps its capabilities");
            }
            let timeout = libc::timespec {
                tv_sec: 0,
                tv_nsec: libc::c_long::try_from(POLL_TIMEOUT.as_nanos()).unwrap_or(0),
            };
            while !stopping.load(Ordering::Acquire) {
                let mut fd = libc::pollfd { fd: logger.as_raw_fd(), events: libc::POLLIN, revents: 0 };
                // SAFETY: one valid pollfd and a valid timespec for the duration of the call.
                unsafe { libc::ppoll(&raw mut fd, 1, &raw const timeout, std::ptr::null()) };
                logger.flush();
            }
        })?;
        Ok(Self { stop, thread: Some(thread) })
    }
}

impl Drop for ProbeLogReader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
