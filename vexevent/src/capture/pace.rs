//! When the rings are drained: on the drainer's own short timer while records keep coming (the
//! probes then submit without waking it), and on the kernel's wakeup once nothing came for a
//! while. A wakeup per batch cost the traced task an interrupt and a preemption each time: the
//! scheduler placed the woken drainer on the waking CPU, the traced task's own.

use std::time::Duration;

use aya::maps::{Array, MapData};

/// Drains on the timer that found nothing for this long put the drainer to sleep until the
/// kernel wakes it.
pub const IDLE_AFTER: Duration = Duration::from_millis(2);
/// Shortest timer period (a zero batch window would otherwise spin).
const MIN_PERIOD: Duration = Duration::from_micros(20);

/// Whether the drainer polls, mirrored in the probes' `CONSUMER_POLLING` flag.
pub struct Pace {
    flag: Array<MapData, u32>,
    /// What the probes see: true while the drainer drains on its timer.
    polling: bool,
    /// Timer period while polling.
    period: Duration,
    /// Kernel time of the first of the empty drains in a row, while polling.
    quiet_since_ns: Option<u64>,
    /// A write of the flag failed (warned once).
    failed: bool,
}

impl Pace {
    /// Starts asleep (the probes wake the drainer for the first record); polls every
    /// `batch_window` (at least 20 us) while records come.
    #[must_use]
    pub fn new(flag: Array<MapData, u32>, batch_window: Duration) -> Self {
        let mut pace = Self {
            flag,
            polling: true,
            period: batch_window.max(MIN_PERIOD),
            quiet_since_ns: None,
            failed: false,
        };
        pace.set(false);
        pace
    }

    /// True while the drainer drains on its timer (the probes do not wake it).
    #[must_use]
    pub fn polling(&self) -> bool {
        self.polling
    }

    /// The timer period while polling.
    #[must_use]
    pub fn period(&self) -> Duration {
        self.period
    }

    /// Records were seen (a wakeup, or a drain that took records): poll from now on.
    pub fn busy(&mut self) {
        self.quiet_since_ns = None;
        self.set(true);
    }

    /// After a drain at kernel time `now_ns` that took `received` records: keeps polling while
    /// records come, sleeps once drains found nothing for [`IDLE_AFTER`].
    pub fn drained(&mut self, received: u64, now_ns: u64) {
        if received > 0 {
            self.busy();
            return;
        }
        if !self.polling {
            return;
        }
        let since = *self.quiet_since_ns.get_or_insert(now_ns);
        if now_ns.saturating_sub(since) >= u64::try_from(IDLE_AFTER.as_nanos()).unwrap_or(u64::MAX) {
            self.quiet_since_ns = None;
            self.set(false);
        }
    }

    /// Tells the probes; on failure the state stays what it was (a drainer that cannot clear the
    /// flag keeps polling rather than sleep unwoken).
    fn set(&mut self, polling: bool) {
        if self.polling == polling {
            return;
        }
        match self.flag.set(0, u32::from(polling), 0) {
            Ok(()) => self.polling = polling,
            Err(error) => {
                if !std::mem::replace(&mut self.failed, true) {
                    tracing::warn!(%error, polling, "cannot tell the probes whether the drainer polls");
                }
            }
        }
    }
}
