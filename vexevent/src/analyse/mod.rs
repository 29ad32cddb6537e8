//! The analyse stage: live analytics on the event stream. Tumbling or sliding windows on event
//! time (panes of the shared [`window`](crate::window) module, closed by the batch watermark,
//! carrying the loss in each window) aggregate counts, bytes, errors, time and log-bucketed
//! latency per key (path, directory, pid, comm, uid, operation, event type, cgroup), with full
//! HDR histograms per operation, FUSE mount, FUSE stage (the operation's timeline) and FUSE daemon
//! function (the daemon's handler of an opcode, per mount). Each
//! closed window gives the top keys (exact within the window, to within the events evicted past
//! `max_keys`) and the top keys since start (Space-Saving, with its error bound), the slowest operations, anomalies (EWMA and z-score
//! per key, raised as `ObservabilityAlertTriggered` events `anomaly:NAME`) and health alerts
//! (`health:NAME`); the window's summary goes to the dashboard and `/metrics`, and optionally to
//! the sinks as `ObservabilityMetricCollected` events. Owns `[analyse]`.

mod aggregate;
mod anomaly;
mod cgroups;
mod config;
mod summary;
mod topn;

use std::{
    collections::{BTreeMap, HashMap},
    hash::BuildHasher as _,
    sync::{Arc, LazyLock},
};

pub use aggregate::{KeyAgg, SlowOp};
pub use anomaly::{Anomaly, Metric};
pub use config::{AnalyseConfig, AnalyseConfigError, AnomalyConfig, Dimension};

use aggregate::{Hdr, Slowest};
use anomaly::Detector;
use cgroups::CgroupNames;
use foldhash::fast::FixedState;
use summary::Parts;
use topn::SpaceSaving;

use crate::{
    event::{PathBytes, Run, SemanticEvent},
    pipeline::{EventBatch, Stage},
    telemetry::Counters,
    window::{Losses, WindowSpec, Windows},
};

/// How long after a window's end an idle pipeline closes it (the source had nothing for a tick):
/// longer than correlate holds a FUSE request waiting for its syscall (20 ms by default).
const IDLE_CLOSE_DELAY_NS: u64 = 50_000_000;

/// Gaps kept apart for the windows still to report (see [`Losses`]).
const MAX_GAPS: usize = 4_096;

/// The key every event is counted under (the window's totals).
const ALL: u64 = 0;

/// No key in this dimension (a key's top 4 bits are a dimension's tag, 1 to 8: never all ones).
const NO_KEY: u64 = u64::MAX;

/// Events ahead of the one aggregated whose keys' places in the window are prefetched, and
/// whose keys' aggregates are (their places fetched by then).
const PLACE_AHEAD: usize = 16;
const VALUE_AHEAD: usize = 8;

/// One event's key in one dimension, and its hash in the keyed windows: a batch's keys are
/// computed first, so that the windows can fetch them a few events ahead.
#[derive(Clone, Copy)]
struct BatchKey {
    key: u64,
    hash: u64,
}

/// A latency series with a full histogram.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Series {
    /// An operation, by its key hash.
    Operation(u64),
    /// A FUSE mount, by its connection.
    Mount(u32),
    /// A stage of a FUSE operation's timeline.
    FuseStage(FuseStage),
    /// A FUSE daemon's time serving requests (read of a request to its reply), by mount
    /// (connection) and the handler serving them, named by its opcode.
    DaemonFunction { connection: u32, opcode: u32 },
}

/// Where a FUSE operation's time went (the event's `timeline`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum FuseStage {
    BeforeRequest,
    KernelQueue,
    Daemon,
    DaemonFunctions,
    Reply,
    AfterReply,
}

impl FuseStage {
    const fn name(self) -> &'static str {
        match self {
            FuseStage::BeforeRequest => "before_request",
            FuseStage::KernelQueue => "kernel_queue",
            FuseStage::Daemon => "daemon",
            FuseStage::DaemonFunctions => "daemon_functions",
            FuseStage::Reply => "reply",
            FuseStage::AfterReply => "after_reply",
        }
    }
}

/// A key's display name, and the last window it was seen in.
struct Name {
    text: Box<str>,
    last_window: u64,
}

/// One batch's latency values per series and window, recorded into the window's histograms at
/// the batch's end (a histogram per batch would be allocated, zeroed and added whole each time),
/// in lists kept from batch to batch while the series has values; and the batch's slowest
/// operations per window.
#[derive(Default)]
struct Pending {
    series: HashMap<(u64, Series), Vec<u64>, FixedState>,
    slowest: HashMap<u64, Slowest, FixedState>,
}

/// The last operation name seen, its key, and the window its name was last kept for (most
/// events of a batch share a few operations).
#[derive(Default)]
struct LastOperation {
    name: String,
    key: u64,
    window: u64,
}

/// The analyse stage (see the module documentation).
pub struct AnalyseStage {
    config: AnalyseConfig,
    /// Window length, and the distance between window starts (the panes' length: events are
    /// aggregated in tumbling panes of `slide_ns`, and a window merges its `window / slide`
    /// panes when it closes, so an event costs the same whatever the slide).
    window_ns: u64,
    slide_ns: u64,
    keyed: Windows<u64, KeyAgg>,
    /// The batch's keys: per event, the totals' then each of `config.dimensions`'.
    batch_keys: Vec<BatchKey>,
    series: Windows<Series, Hdr>,
    slowest: Windows<(), Slowest>,
    /// The kernel's losses, for the windows still to report (each gap once per window).
    losses: Losses,
    names: HashMap<u64, Name, FixedState>,
    cgroups: CgroupNames,
    pending: Pending,
    last_operation: LastOperation,
    /// Events not aggregated per key: in a window already closed, or beyond `max_keys`.
    late_events: u64,
    evicted_events: u64,
    /// Closed panes a window still to report needs (sliding windows), by start.
    panes: BTreeMap<u64, Parts>,
    /// Top keys since start, per dimension (fed once per pane).
    totals: Vec<(Dimension, SpaceSaving)>,
    detector: Detector,
    /// Health checks failing at the last window (to alert on the change).
    failing: Vec<String>,
    /// The start of the next window to report (windows without events are reported empty).
    next_start: Option<u64>,
    /// `wall - monotonic` of the latest event, to stamp derived events.
    wall_offset_ns: i128,
    /// The run the events this stage makes belong to (their origin).
    run: Run,
    /// `evicted_events` and `late_events` when the last window closed.
    evicted_before: u64,
    late_before: u64,
    counters: Arc<Counters>,
}

impl AnalyseStage {
    /// The stage, stamping the events it makes with `run`.
    #[must_use]
    pub fn new(config: AnalyseConfig, run: Run, counters: Arc<Counters>) -> Self {
        let window_ns = config.window_secs.max(1) * 1_000_000_000;
        let slide_ns = config.slide_secs().clamp(1, config.window_secs.max(1)) * 1_000_000_000;
        let spec = WindowSpec::tumbling(slide_ns);
        let totals = [Dimension::Path, Dimension::Dir, Dimension::Pid, Dimension::Comm, Dimension::Cgroup]
            .into_iter()
            .filter(|d| config.dimensions.contains(d))
            .map(|d| (d, SpaceSaving::new(config.top_capacity)))
            .collect();
        Self {
            keyed: Windows::new(spec, config.max_keys),
            batch_keys: Vec::new(),
            // Operations, mounts and stages: a few dozen series.
            series: Windows::new(spec, 4_096),
            slowest: Windows::new(spec, 1),
            losses: Losses::new(MAX_GAPS),
            names: HashMap::with_hasher(FixedState::default()),
            cgroups: CgroupNames::from_mounts(),
            pending: Pending::default(),
            last_operation: LastOperation::default(),
            late_events: 0,
            evicted_events: 0,
            panes: BTreeMap::new(),
            totals,
            detector: Detector::new(config.anomaly.clone()),
            failing: Vec::new(),
            next_start: None,
            wall_offset_ns: 0,
            run,
            evicted_before: 0,
            late_before: 0,
            window_ns,
            slide_ns,
            config,
            counters,
        }
    }

    /// Computes the keys of a batch's events and their hashes (`batch_keys`).
    fn key_batch(&mut self, events: &[SemanticEvent]) {
        let Self { batch_keys, keyed, config, .. } = self;
        batch_keys.clear();
        let all = BatchKey { key: ALL, hash: keyed.hash(&ALL) };
        for event in events {
            let path = path_of(event);
            batch_keys.push(all);
            batch_keys.extend(config.dimensions.iter().map(|&dimension| {
                key_of(dimension, event, path)
                    .map_or(BatchKey { key: NO_KEY, hash: 0 }, |key| BatchKey { key, hash: keyed.hash(&key) })
            }));
        }
    }

    /// Prefetches what aggregating the events `PLACE_AHEAD` and `VALUE_AHEAD` after `at` will
    /// read, for the dimensions whose keys may be many (paths, directories, pids, cgroups: the
    /// others' few keys stay in the cache).
    fn prefetch(&self, events: &[SemanticEvent], at: usize) {
        let stride = self.config.dimensions.len() + 1;
        for (ahead, value) in [(PLACE_AHEAD, false), (VALUE_AHEAD, true)] {
            let Some(event) = events.get(at + ahead) else { continue };
            let time = event.timestamp.monotonic_ns;
            let keys = &self.batch_keys[(at + ahead) * stride + 1..][..stride - 1];
            for (dimension, key) in self.config.dimensions.iter().zip(keys) {
                let many = matches!(
                    dimension,
                    Dimension::Path | Dimension::Dir | Dimension::Pid | Dimension::Cgroup
                );
                if !many || key.key == NO_KEY {
                    continue;
                }
                if value {
                    self.keyed.prefetch_value(key.hash, time);
                } else {
                    self.keyed.prefetch_place(key.hash, time);
                }
            }
        }
    }

    /// Aggregates one event (its keys from `batch_keys[first_key..]`) into its windows: the
    /// totals and each dimension's key directly (one lookup in the window's index each), its
    /// latency series and the slowest list into the batch's pending values.
    fn observe(&mut self, event: &SemanticEvent, first_key: usize) {
        let time = event.timestamp.monotonic_ns;
        self.wall_offset_ns = i128::from(event.timestamp.wall_ns) - i128::from(time);
        if self.next_start.is_none() {
            self.next_start = Some(time - time % self.slide_ns);
        }
        if let Some(gap) = &event.context.gap {
            self.losses.record(gap.lost_from_ns, gap.lost_to_ns, gap.count);
        }
        let path = path_of(event);
        let bytes = event.context.filesystem.as_ref().and_then(|f| f.bytes).unwrap_or(0);
        let error = event.result.as_ref().is_some_and(|r| !r.ok);
        let duration = event.duration_ns;
        let pane = time - time % self.slide_ns;
        let Self { keyed, config, names, cgroups, batch_keys, .. } = self;
        let keys = &batch_keys[first_key..=first_key + config.dimensions.len()];
        let (late, evicted) = (keyed.late, keyed.evicted);
        keyed.add_hashed(&ALL, keys[0].hash, time, |agg| agg.record(bytes, error, duration));
        self.late_events += keyed.late - late;
        for (&dimension, &BatchKey { key, hash }) in config.dimensions.iter().zip(&keys[1..]) {
            if key == NO_KEY {
                continue;
            }
            let mut new = false;
            keyed.add_hashed(&key, hash, time, |agg| {
                new = agg.count == 0;
                agg.record(bytes, error, duration);
            });
            if new {
                // The key's first event in this window: it needs a name.
                let name = names.entry(key).or_insert_with(|| Name {
                    text: text_of(dimension, event, cgroups).into(),
                    last_window: pane,
                });
                name.last_window = name.last_window.max(pane);
            }
        }
        self.evicted_events += keyed.evicted - evicted;
        self.record_series(event, time, duration);
        if self.config.slowest > 0 && event.result.is_some() {
            let capacity = self.config.slowest;
            self.pending.slowest.entry(pane).or_default().offer(capacity, duration, || SlowOp {
                duration_us: duration / 1_000,
                operation: event.event_subtype.clone(),
                path: path.map(|p| String::from_utf8_lossy(p).into_owned()).unwrap_or_default(),
                comm: event.process.as_ref().map(|p| p.comm.lossy().into_owned()).unwrap_or_default(),
                pid: event.timestamp.pid,
                at_ns: time,
            });
        }
    }

    /// Full histograms: the operation, its FUSE mount and the stages of its timeline.
    fn record_series(&mut self, event: &SemanticEvent, time: u64, duration: u64) {
        if event.result.is_none() {
            return;
        }
        let start = time - time % self.slide_ns;
        let last = &mut self.last_operation;
        if last.key == 0 || last.window != start || last.name != event.event_subtype {
            // A new operation, or a new window: the name is kept for the window's summary.
            last.key = hash(Dimension::Operation, event.event_subtype.as_bytes());
            last.name.clone_from(&event.event_subtype);
            last.window = start;
            let name = self
                .names
                .entry(last.key)
                .or_insert_with(|| Name { text: event.event_subtype.as_str().into(), last_window: start });
            name.last_window = name.last_window.max(start);
        }
        let operation = last.key;
        let series = &mut self.pending.series;
        series.entry((start, Series::Operation(operation))).or_default().push(duration);
        if let Some(request) = event.context.fuse.first() {
            series.entry((start, Series::Mount(request.connection))).or_default().push(duration);
        }
        for request in &event.context.fuse {
            if let (Some(received), Some(replied)) = (request.daemon_received_ns, request.daemon_replied_ns) {
                let function =
                    Series::DaemonFunction { connection: request.connection, opcode: request.opcode };
                series.entry((start, function)).or_default().push(replied.saturating_sub(received));
            }
        }
        if let Some(timeline) = &event.timeline {
            let stages = [
                (FuseStage::BeforeRequest, Some(timeline.before_fuse_ns)),
                (FuseStage::KernelQueue, timeline.kernel_queue_ns),
                (FuseStage::Daemon, timeline.daemon_ns),
                (FuseStage::DaemonFunctions, timeline.daemon_functions_ns),
                (FuseStage::Reply, timeline.reply_ns),
                (FuseStage::AfterReply, Some(timeline.after_fuse_ns)),
            ];
            for (stage, value) in stages {
                if let Some(ns) = value {
                    series.entry((start, Series::FuseStage(stage))).or_default().push(ns);
                }
            }
        }
    }
}

impl AnalyseStage {
    /// Merges the batch's latency values and slowest operations into the windows.
    fn merge_pending(&mut self) {
        let windows = &mut self.series;
        self.pending.series.retain(|(start, series), values| {
            if values.is_empty() {
                // No values in this batch: the series' window has passed or it is idle.
                return false;
            }
            windows.add(series, *start, |window| values.iter().for_each(|&ns| window.record(ns)));
            values.clear();
            true
        });
        let capacity = self.config.slowest;
        for (start, slowest) in self.pending.slowest.drain() {
            self.slowest.add(&(), start, |window| {
                for op in &slowest.ops {
                    window.offer(capacity, op.duration_us * 1_000, || op.clone());
                }
            });
        }
    }
}

/// Bits of a key that say its dimension (its index in [`Dimension::ALL`] plus one; 0: the totals).
const DIMENSION_SHIFT: u32 = 60;

/// The seed of the keys' hashes, random per process: keys such as paths come from outside, and
/// nobody who does not know it can craft two that collide.
static KEY_SEED: LazyLock<u64> = LazyLock::new(|| foldhash::fast::RandomState::default().hash_one(0_u64));

/// A key's hash: its dimension and bytes (the dimension in the top 4 bits, the bytes' hash in the
/// other 60: a collision between two live keys is vanishingly unlikely, and would merge two rows
/// of a summary).
fn hash(dimension: Dimension, bytes: &[u8]) -> u64 {
    let tag = dimension.index() as u64 + 1;
    (FixedState::with_seed(*KEY_SEED ^ tag).hash_one(bytes) >> 4) | (tag << DIMENSION_SHIFT)
}

/// The event's path, if it has one.
fn path_of(event: &SemanticEvent) -> Option<&[u8]> {
    event.context.filesystem.as_ref().and_then(|f| f.path.as_ref()).map(PathBytes::as_bytes)
}

/// The dimension of a key made by [`hash`] (none for the totals).
fn dimension_of(key: u64) -> Option<Dimension> {
    let tag = usize::try_from(key >> DIMENSION_SHIFT).ok()?;
    Dimension::ALL.get(tag.checked_sub(1)?).copied()
}

/// `event`'s key in `dimension` (`path`: the event's path), if it has one.
fn key_of(dimension: Dimension, event: &SemanticEvent, path: Option<&[u8]>) -> Option<u64> {
    let process = event.process.as_ref();
    Some(match dimension {
        Dimension::Path => hash(dimension, path?),
        Dimension::Dir => hash(dimension, parent(path?)),
        Dimension::Pid => hash(dimension, &process?.pid.to_le_bytes()),
        Dimension::Comm => hash(dimension, process?.comm.as_bytes()),
        Dimension::Uid => hash(dimension, &process?.uid.to_le_bytes()),
        Dimension::Operation => hash(dimension, event.event_subtype.as_bytes()),
        Dimension::EventType => hash(dimension, event.event_type.name().as_bytes()),
        Dimension::Cgroup => hash(dimension, &Some(process?.cgroup_id).filter(|&id| id != 0)?.to_le_bytes()),
    })
}

/// The name summaries show for `event`'s key in `dimension`.
fn text_of(dimension: Dimension, event: &SemanticEvent, cgroups: &mut CgroupNames) -> String {
    let path = path_of(event);
    let process = event.process.as_ref();
    match dimension {
        Dimension::Path => String::from_utf8_lossy(path.unwrap_or_default()).into_owned(),
        Dimension::Dir => String::from_utf8_lossy(path.map(parent).unwrap_or_default()).into_owned(),
        Dimension::Pid => process.map(|p| format!("{} {}", p.pid, p.comm.lossy())).unwrap_or_default(),
        Dimension::Comm => process.map(|p| p.comm.lossy().into_owned()).unwrap_or_default(),
        Dimension::Uid => process.map(|p| p.uid.to_string()).unwrap_or_default(),
        Dimension::Operation => event.event_subtype.clone(),
        Dimension::EventType => event.event_type.name().to_owned(),
        Dimension::Cgroup => process.map(|p| cgroups.name(p.cgroup_id)).unwrap_or_default(),
    }
}

/// The directory of `path` (`/` for a top-level name).
fn parent(path: &[u8]) -> &[u8] {
    match path.iter().rposition(|&b| b == b'/') {
        Some(0) => b"/",
        Some(end) => &path[..end],
        None => b".",
    }
}

impl Stage for AnalyseStage {
    fn name(&self) -> &'static str {
        "analyse"
    }

    fn process(&mut self, batch: &mut EventBatch) {
        self.key_batch(&batch.events);
        let stride = self.config.dimensions.len() + 1;
        for (at, event) in batch.events.iter().enumerate() {
            self.prefetch(&batch.events, at);
            self.observe(event, at * stride);
        }
        self.merge_pending();
        let mut derived = Vec::new();
        self.close(batch.watermark_ns, &mut derived);
        batch.events.extend(derived);
    }

    fn tick(&mut self, now_ns: u64, batch: &mut EventBatch) {
        self.close(now_ns.saturating_sub(IDLE_CLOSE_DELAY_NS), &mut batch.events);
    }

    fn flush(&mut self, batch: &mut EventBatch) {
        self.close(u64::MAX, &mut batch.events);
    }
}

#[cfg(test)]
mod tests;
