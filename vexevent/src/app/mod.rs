//! Wiring of `vexevent run`: probes -> capture thread -> pipeline thread (translate, correlate,
//! filter, route) -> sink workers and the live stream; signals, the control API, reloads,
//! periodic stats and an orderly drain on shutdown.

mod control;
mod main_loop;
mod pipeline;
mod reload;
mod stats_file;

pub use control::{METRICS_PATH, RELOAD_PATH, STATS_PATH};
pub use reload::{ConfigSource, ReloadError, Reloaded, Routing, Switch};
pub use stats_file::{read_stats_file, write_stats_file};

use std::{
    cell::RefCell,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use crate::{
    capture::{Batch, DrainSettings, RingDrainer},
    config::{Config, Settings},
    correlate::Correlator,
    loader::{ProbeSettings, Probes, vexfs_mount_points},
    sinks::{STREAM_PATH, Sinks, StreamServer},
    telemetry::{Counters, StatsSnapshot},
    translate::{TranslateOptions, Translator, VexfsRoots},
};
use main_loop::{Reloader, Signals, wait_for_shutdown};
use pipeline::{Stages, run_pipeline};
/// How long, once vexevent stops, a sink that is down keeps retrying before its events are
/// counted as dropped.
const SINK_SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

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

/// Runs capture until SIGINT or SIGTERM, then drains and returns the final stats. `config` is
/// the configuration `settings` came from; `source` reads it again on reload.
///
/// # Errors
/// When the probes cannot be loaded or an output cannot be opened.
pub fn run(settings: &Settings, config: Config, source: ConfigSource) -> Result<StatsSnapshot, AppError> {
    let counters = Arc::new(Counters::default());
    let sinks = Sinks::start(&settings.outputs.sinks, &counters)?;
    let give_up = sinks.give_up_handle();
    let mut probes = Probes::load(&probe_settings(settings))?;
    report_hooks(&probes);

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
    let routing = Routing::new(settings).map_err(|e| AppError::Filter(Box::new(e)))?;
    let (reloads_tx, reloads_rx) = crossbeam_channel::bounded::<Switch>(1);
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
                let stages = Stages { translator, correlator, routing, sinks, per_sink: Vec::new() };
                run_pipeline(&batches_rx, &reloads_rx, stages, broadcaster.as_deref(), &counters)
            })
            .map_err(|source| AppError::Start { what: "pipeline thread", source })?
    };

    let started = Instant::now();
    let snapshot = |probes: &Probes| {
        StatsSnapshot::new(probes.kernel_counters(), &counters, started.elapsed().as_secs_f64())
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| AppError::Start { what: "signal runtime", source })?;
    let control = match settings.control.addr {
        Some(addr) => {
            let (bound, requests) = runtime
                .block_on(control::start(addr, settings.control.token.clone()))
                .map_err(|source| AppError::Start { what: "control API", source })?;
            eprintln!(
                "vexevent: control API at http://{bound}{RELOAD_PATH}, {STATS_PATH} and {METRICS_PATH}"
            );
            Some(requests)
        }
        None => None,
    };
    // The handlers exist before "ready" is printed: a signal sent right after it must not find
    // the default action (which would end the process without draining).
    let signals = {
        let _context = runtime.enter();
        Signals::install()?
    };
    report_ready(settings, stream.as_ref());
    // Reloads set the kernel's filters while the loop reads the kernel's counters.
    let probes = RefCell::new(probes);
    let reloader = Reloader { running: config, source, pipeline: reloads_tx, probes: &probes };
    runtime
        .block_on(wait_for_shutdown(settings, signals, control, &reloader, || snapshot(&probes.borrow())))?;
    let mut probes = probes.into_inner();

    // Orderly shutdown: no new records, then drain what the ring holds, then flush the sinks
    // (a sink that is down gets a grace period, then its events are counted as dropped).
    probes.detach();
    stop_capture.store(true, Ordering::Release);
    let _ = give_up.set(Instant::now() + SINK_SHUTDOWN_GRACE);
    if capture.join().is_err() {
        tracing::error!("the capture thread panicked");
    }
    if let Ok(sinks) = pipeline.join() {
        sinks.finish();
    } else {
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

/// The translate stage, knowing the watched FUSE mounts, where `VexFS` lives, and what processes
/// already had open (and where they were) inside the watch.
fn translator(settings: &Settings, probes: &Probes) -> Translator {
    let mut translator = Translator::new(TranslateOptions {
        scope: settings.scope.clone(),
        ops: settings.ops.clone(),
        fuse_mounts: probes.fuse_mounts().iter().map(|m| (m.connection, m.mount_point.clone())).collect(),
        vexfs: VexfsRoots(settings.vexfs_paths.iter().cloned().chain(vexfs_mount_points()).collect()),
    });
    translator.set_node(settings.node.clone());
    let processes = translator.processes_mut();
    for (pid, cwd) in &probes.seeded().cwds {
        processes.set_cwd(*pid, cwd.clone());
    }
    for (pid, fd, path) in &probes.seeded().fds {
        processes.seed_fd(*pid, *fd, path.clone());
    }
    translator
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
