//! Wiring of `vexevent run`: probes -> capture thread -> translate + sink thread, with signals,
//! periodic stats and an orderly drain on shutdown.

mod stats_file;

pub use stats_file::{read_stats_file, write_stats_file};

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use crossbeam_channel::Receiver;
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    capture::{Batch, DrainSettings, RingDrainer},
    config::Settings,
    correlate::Correlator,
    event::SemanticEvent,
    filter::FilterChain,
    loader::{ProbeSettings, Probes, vexfs_mount_points},
    sinks::{Broadcaster, JsonLinesSink, STREAM_PATH, StreamServer, to_json_lines},
    telemetry::{Counters, StatsSnapshot, add, monotonic_ns},
    translate::{TranslateOptions, Translator, VexfsRoots},
};

/// How often the stats file is refreshed.
const STATS_FILE_PERIOD: Duration = Duration::from_secs(1);

/// Why `vexevent run` stopped early.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Loader(#[from] crate::loader::LoaderError),
    #[error(transparent)]
    Sink(#[from] crate::sinks::SinkError),
    #[error(transparent)]
    Filter(Box<crate::filter::FilterError>),
    #[error(transparent)]
    Stream(#[from] crate::sinks::StreamError),
    #[error("cannot start the {what}: {source}")]
    Start {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// Runs capture until SIGINT or SIGTERM, then drains and returns the final stats.
///
/// # Errors
/// When the probes cannot be loaded or the output cannot be opened.
pub fn run(settings: &Settings) -> Result<StatsSnapshot, AppError> {
    let sink = JsonLinesSink::open(settings.output.as_deref(), settings.rotation)?;
    let mut probes = Probes::load(&probe_settings(settings))?;
    report_hooks(&probes);

    let counters = Arc::new(Counters::default());
    let stop_capture = Arc::new(AtomicBool::new(false));
    let (batches_tx, batches_rx) = crossbeam_channel::bounded::<Batch>(settings.channel_batches);
    let drain_settings = DrainSettings {
        batch_window: settings.batch_window,
        reorder_window: settings.reorder_window,
        one_cpu_per_shard: probes.layout().cpus_per_shard == 1,
    };
    let drainer = RingDrainer::new(
        probes.take_rings()?,
        probes.take_pending_loss()?,
        &drain_settings,
        Arc::clone(&counters),
    );
    let capture = {
        let stop = Arc::clone(&stop_capture);
        thread::Builder::new()
            .name("vexevent-capture".into())
            .spawn(move || drainer.run(&drain_settings, &stop, &batches_tx))
            .map_err(|source| AppError::Start { what: "capture thread", source })?
    };
    let translator = translator(settings, &probes);
    let correlator = Correlator::new(settings.correlate);
    let filter = settings.filter.build().map_err(|e| AppError::Filter(Box::new(e)))?;
    let stream = match settings.stream.addr {
        Some(addr) => Some(StreamServer::start(addr, settings.stream.token.clone())?),
        None => None,
    };
    let broadcaster = stream.as_ref().map(|s| Arc::clone(&s.broadcaster));
    let pipeline = {
        let counters = Arc::clone(&counters);
        thread::Builder::new()
            .name("vexevent-pipeline".into())
            .spawn(move || {
                translate_and_write(
                    &batches_rx,
                    translator,
                    correlator,
                    &filter,
                    sink,
                    broadcaster.as_deref(),
                    &counters,
                );
            })
            .map_err(|source| AppError::Start { what: "pipeline thread", source })?
    };
    report_ready(settings, stream.as_ref());

    let started = Instant::now();
    let snapshot = |probes: &Probes| {
        StatsSnapshot::new(probes.kernel_counters(), &counters, started.elapsed().as_secs_f64())
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| AppError::Start { what: "signal runtime", source })?;
    runtime.block_on(async { wait_for_shutdown(settings, || snapshot(&probes)).await })?;

    // Orderly shutdown: no new records, then drain what the ring holds, then flush the sink.
    probes.detach();
    stop_capture.store(true, Ordering::Release);
    if capture.join().is_err() {
        tracing::error!("the capture thread panicked");
    }
    if pipeline.join().is_err() {
        tracing::error!("the pipeline thread panicked");
    }
    let mut last = snapshot(&probes);
    last.final_snapshot = true;
    if let Err(error) = write_stats_file(&settings.stats_file, &last) {
        tracing::warn!(%error, "cannot write the stats file");
    }
    Ok(last)
}

/// What the probes need of the settings.
fn probe_settings(settings: &Settings) -> ProbeSettings {
    ProbeSettings {
        scope: settings.scope.clone(),
        ops: settings.ops.iter().copied().collect(),
        pids: settings.pids.clone(),
        uid: settings.uid,
        comm: settings.comm,
        ring_bytes: settings.ring_bytes,
        shards: settings.shards,
        daemon_binary: settings.daemon_binary.clone(),
        daemon_functions: settings.daemon_functions.clone(),
        syscall_hooks: settings.syscall_hooks,
    }
}

/// The translate stage, knowing the watched FUSE mounts and where `VexFS` lives.
fn translator(settings: &Settings, probes: &Probes) -> Translator {
    Translator::new(TranslateOptions {
        scope: settings.scope.clone(),
        ops: settings.ops.clone(),
        fuse_mounts: probes.fuse_mounts().iter().map(|m| (m.connection, m.mount_point.clone())).collect(),
        vexfs: VexfsRoots(settings.vexfs_paths.iter().cloned().chain(vexfs_mount_points()).collect()),
    })
}

/// The "ready" line tests and scripts wait for (after the stream address, when there is one).
fn report_ready(settings: &Settings, stream: Option<&StreamServer>) {
    let watching = if settings.scope.watches_all() {
        "everything".to_owned()
    } else {
        let dirs: Vec<String> =
            settings.scope.dirs().iter().map(|d| String::from_utf8_lossy(d).into_owned()).collect();
        dirs.join(", ")
    };
    if let Some(stream) = stream {
        eprintln!("vexevent: event stream at ws://{}{STREAM_PATH}", stream.addr);
    }
    eprintln!("vexevent: ready: watching {watching} (pid {})", std::process::id());
}

/// Waits for SIGINT/SIGTERM; prints stats on SIGUSR1 and every stats interval; keeps the stats
/// file current.
async fn wait_for_shutdown(
    settings: &Settings,
    snapshot: impl Fn() -> StatsSnapshot,
) -> Result<(), AppError> {
    let start =
        |kind: SignalKind| signal(kind).map_err(|source| AppError::Start { what: "signal handler", source });
    let mut interrupt = start(SignalKind::interrupt())?;
    let mut terminate = start(SignalKind::terminate())?;
    let mut user1 = start(SignalKind::user_defined1())?;
    let mut file_tick = tokio::time::interval(STATS_FILE_PERIOD);
    let mut report_tick = tokio::time::interval(settings.stats_interval.unwrap_or(Duration::MAX / 4));
    report_tick.tick().await;
    loop {
        tokio::select! {
            _ = interrupt.recv() => return Ok(()),
            _ = terminate.recv() => return Ok(()),
            _ = user1.recv() => eprint!("{}", snapshot()),
            _ = report_tick.tick(), if settings.stats_interval.is_some() => eprint!("{}", snapshot()),
            _ = file_tick.tick() => {
                if let Err(error) = write_stats_file(&settings.stats_file, &snapshot()) {
                    tracing::warn!(%error, "cannot write the stats file");
                }
            }
        }
    }
}

fn report_hooks(probes: &Probes) {
    let hooks = probes.hooks();
    let attached: Vec<&str> = hooks.iter().filter(|h| h.missing.is_none()).map(|h| h.hook.as_str()).collect();
    eprintln!("vexevent: attached {}; tracing {} syscalls", attached.join(", "), probes.traced_syscalls());
    for mount in probes.fuse_mounts() {
        eprintln!(
            "vexevent:   FUSE mount {} ({}, connection {})",
            String::from_utf8_lossy(&mount.mount_point),
            mount.fstype,
            mount.connection
        );
    }
    for hook in hooks.iter().filter(|h| h.missing.is_some()) {
        eprintln!("vexevent:   not attached: {} ({})", hook.hook, hook.missing.as_deref().unwrap_or(""));
    }
}

/// The pipeline thread: translate each batch, join the boundaries of each operation, number the
/// events in output order and hand them to the sink, until capture ends.
fn translate_and_write(
    batches: &Receiver<Batch>,
    mut translator: Translator,
    mut correlator: Correlator,
    filter: &FilterChain,
    mut sink: JsonLinesSink,
    stream: Option<&Broadcaster>,
    counters: &Counters,
) {
    let mut translated = Vec::new();
    let mut ready = Vec::new();
    let mut next_sequence = 0u64;
    let mut output = |ready: &mut Vec<SemanticEvent>, sink: &mut JsonLinesSink| {
        if !filter.is_empty() {
            let before = ready.len();
            ready.retain(|event| filter.check(event).is_some());
            add(&counters.filtered_expression, (before - ready.len()) as u64);
        }
        if ready.is_empty() {
            return;
        }
        for event in ready.iter_mut() {
            event.global_sequence = next_sequence;
            next_sequence += 1;
        }
        let lines = to_json_lines(ready, counters);
        if sink.write_batch(&lines, counters) {
            let delivered = monotonic_ns();
            counters.record_latencies(
                ready.iter().map(|event| delivered.saturating_sub(event.timestamp.monotonic_ns) / 1_000),
            );
        }
        if let Some(stream) = stream {
            stream.publish(ready, &lines, counters);
        }
        ready.clear();
    };
    loop {
        // Wake up at least every join window, so that pending FUSE requests are released.
        match batches.recv_timeout(correlator_tick()) {
            Ok(batch) => {
                translated.clear();
                for captured in &batch {
                    translator.translate_captured(captured, &mut translated, counters);
                }
                for event in translated.drain(..) {
                    correlator.push(event, counters);
                }
            }
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
        }
        correlator.drain(monotonic_ns(), &mut ready, counters);
        output(&mut ready, &mut sink);
        if let Some(stream) = stream {
            stream.flush_gap_notices();
        }
    }
    correlator.flush(&mut ready, counters);
    output(&mut ready, &mut sink);
}

/// How often the pipeline checks for FUSE requests whose join window has passed.
const fn correlator_tick() -> Duration {
    Duration::from_millis(5)
}
