//! The `replicate` stage on the pipeline thread, and the member it starts on a runtime of its
//! own (openraft, the peer server, the proposer). The stage never waits on the cluster: the
//! events it is given go to the proposer (or, when the buffer of events waiting to commit is
//! full, are dropped and counted); what it passes on are the committed events, every node's, in
//! commit order (`causal`: in clock order, within a bounded hold; `eventual`: this node's own
//! events at once, the others' as they commit).

use std::{
    collections::{BTreeMap, VecDeque},
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use openraft::{BasicNode, SnapshotPolicy};
use tokio::sync::{mpsc, oneshot};

use super::{
    ClusterSettings, Consistency, LogError, LogStore,
    causal::{CausalOrder, Hlc},
    disk::DiskGuard,
    machine::{Delivery, MachineError, StateMachine, write_delivered},
    members::{Removal, follow},
    net::{Peers, Raft, Server, serve},
    proposer::{Proposer, SHUTDOWN_GRACE},
    status::{ClusterHandle, local_status},
    totals::{SharedTotals, gossip},
};
use crate::{
    event::{NodeId, Run, SemanticEvent},
    pipeline::{EventBatch, Stage},
    telemetry::{Counters, add},
};

/// Entries applied and not yet taken by the pipeline (the state machine waits beyond that).
const DELIVERIES: usize = 64;
/// Most events the stage passes on in one batch.
const BATCH_EVENTS: usize = 65_536;
/// How often the delivered mark is written at most.
const MARK_PERIOD: Duration = Duration::from_millis(200);
/// How often the raft metrics are copied into the counters and the snapshot size checked.
const MONITOR_PERIOD: Duration = Duration::from_millis(250);

/// Why the cluster member cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ReplicateError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    Machine(#[from] MachineError),
    #[error("cluster: cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cluster: cannot start its runtime: {source}")]
    Runtime {
        #[source]
        source: std::io::Error,
    },
    #[error("cluster: openraft refused to start: {message}")]
    Raft { message: String },
    #[error(
        "cluster: this member was {why} (says {path}); to join again, move its data_dir away, set cluster.join = true and add it with `vexevent cluster add`"
    )]
    Removed { path: PathBuf, why: String },
}

/// The `replicate` stage.
pub struct ReplicateStage {
    incoming: Option<mpsc::UnboundedSender<Vec<SemanticEvent>>>,
    /// Committed entries from before a restart that this node's pipeline was not handed.
    backlog: VecDeque<Delivery>,
    buffered: Arc<AtomicU64>,
    buffer_limit: u64,
    deliveries: mpsc::Receiver<Delivery>,
    /// The proposer finished (everything committed, or the grace passed).
    proposer_done: Arc<AtomicBool>,
    delivered: u64,
    /// The delivered mark on disk, and the index handed on when it was last looked at.
    mark_written: u64,
    mark_candidate: (u64, Instant),
    dir: PathBuf,
    counters: Arc<Counters>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    mode: Mode,
}

/// What the consistency mode changes in the stage.
enum Mode {
    /// `strong`, `session`: committed events in commit order.
    Committed,
    /// Stamps this node's events, receives the others' stamps, delivers in clock order.
    Causal { clock: Hlc, order: CausalOrder, taken: u64 },
    /// Delivers this node's events at once (committed ones of this node are not delivered again).
    Eventual { me: NodeId },
}

impl ReplicateStage {
    /// Starts this member (its log, state machine, raft node, peer server and proposer) on a
    /// runtime of its own; forms the cluster from the configured members if it has not formed.
    ///
    /// # Errors
    /// A log or snapshot that cannot be opened, an address that cannot be bound.
    pub fn start(
        settings: &ClusterSettings,
        run: &Run,
        counters: &Arc<Counters>,
    ) -> Result<Self, ReplicateError> {
        std::fs::create_dir_all(&settings.data_dir)
            .map_err(|source| LogError::Io { path: settings.data_dir.clone(), source })?;
        let (deliver, deliveries) = mpsc::channel(DELIVERIES);
        let (incoming, incoming_rx) = mpsc::unbounded_channel();
        let buffered = Arc::new(AtomicU64::new(0));
        let proposer_done = Arc::new(AtomicBool::new(false));
        let (stop, stopped) = oneshot::channel();
        let (ready, is_ready) = std::sync::mpsc::channel();
        let member = Member {
            settings: settings.clone(),
            node: run.node().to_string(),
            run: run.id(),
            counters: Arc::clone(counters),
            buffered: Arc::clone(&buffered),
            proposer_done: Arc::clone(&proposer_done),
        };
        let thread = std::thread::Builder::new()
            .name("stage-replicate".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .thread_name("replicate")
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(source) => {
                        let _ = ready.send(Err(ReplicateError::Runtime { source }));
                        return;
                    }
                };
                runtime.block_on(member.run(deliver, incoming_rx, ready, stopped));
            })
            .map_err(|source| ReplicateError::Runtime { source })?;
        let backlog = match is_ready.recv() {
            Ok(Ok((handle, backlog))) => {
                counters.cluster.set(Arc::new(handle));
                backlog
            }
            Ok(Err(error)) => {
                let _ = thread.join();
                return Err(error);
            }
            Err(_) => {
                let _ = thread.join();
                return Err(ReplicateError::Raft { message: "the member's thread ended at start".into() });
            }
        };
        Ok(Self {
            incoming: Some(incoming),
            backlog: backlog.into(),
            buffered,
            buffer_limit: settings.buffer_events as u64,
            deliveries,
            proposer_done,
            delivered: 0,
            mark_written: 0,
            mark_candidate: (0, Instant::now()),
            dir: settings.data_dir.clone(),
            counters: Arc::clone(counters),
            stop: Some(stop),
            thread: Some(thread),
            mode: match settings.consistency {
                Consistency::Strong | Consistency::Session => Mode::Committed,
                Consistency::Causal => Mode::Causal {
                    clock: Hlc::default(),
                    order: CausalOrder::new(settings.causal_delay, settings.buffer_events),
                    taken: 0,
                },
                Consistency::Eventual => Mode::Eventual { me: run.node().clone() },
            },
        })
    }

    /// Passes on the events of a committed entry, as the mode wants them.
    fn accept(&mut self, delivery: Delivery, batch: &mut EventBatch) {
        let Delivery { index, mut events } = delivery;
        match &mut self.mode {
            Mode::Committed => {
                batch.events.extend(events);
                self.delivered = index;
            }
            Mode::Causal { clock, order, taken } => {
                let now = Instant::now();
                let wall_ns = wall_now_ns();
                for event in events {
                    if event.timestamp.hlc.is_some_and(|stamp| clock.observe(stamp, wall_ns)) {
                        add(&self.counters.cluster_causal_clock_ahead, 1);
                    }
                    order.hold(index, event, now);
                }
                *taken = index;
            }
            Mode::Eventual { me } => {
                events.retain(|event| event.origin.run.node() != me);
                batch.events.extend(events);
                self.delivered = index;
            }
        }
    }

    /// `causal`: moves the held events that are due (every one when `all`) into `batch`.
    fn release(&mut self, all: bool, batch: &mut EventBatch) {
        if let Mode::Causal { order, taken, .. } = &mut self.mode {
            let room = BATCH_EVENTS.saturating_sub(batch.len());
            let late =
                order.release(Instant::now(), all, if all { usize::MAX } else { room }, &mut batch.events);
            add(&self.counters.cluster_causal_late, late);
            self.delivered = order.released_through(*taken);
        }
    }

    /// Hands this node's events to the proposer, as many as the buffer has room for (the rest
    /// dropped and counted).
    fn offer(&mut self, mut events: Vec<SemanticEvent>) {
        if events.is_empty() {
            return;
        }
        let room = self.buffer_limit.saturating_sub(self.buffered.load(Ordering::Relaxed));
        if events.len() as u64 > room {
            let dropped = events.len() as u64 - room;
            add(&self.counters.cluster_dropped_buffer_full, dropped);
            events.truncate(usize::try_from(room).unwrap_or(usize::MAX));
        }
        let Some(incoming) = &self.incoming else { return };
        let count = events.len() as u64;
        self.buffered.fetch_add(count, Ordering::Relaxed);
        if incoming.send(events).is_err() {
            // The member stopped (it logged why): nothing can commit them.
            self.buffered.fetch_sub(count, Ordering::Relaxed);
            add(&self.counters.cluster_dropped_shutdown, count);
        }
    }

    /// Moves committed events (every node's, in commit order) into `batch`.
    fn take_committed(&mut self, batch: &mut EventBatch) {
        // `causal` holds what it takes: at most a channel's worth per call.
        for _ in 0..DELIVERIES {
            if batch.len() >= BATCH_EVENTS {
                break;
            }
            let Some(delivery) = self.backlog.pop_front().or_else(|| self.deliveries.try_recv().ok()) else {
                break;
            };
            self.accept(delivery, batch);
        }
        self.release(false, batch);
        self.write_mark(false);
    }

    /// Records how far this node's pipeline got, so a restart does not deliver it again: the
    /// index handed on at least [`MARK_PERIOD`] ago (the sinks have written it by then; a crash
    /// delivers at most the last two periods again, never skips one).
    fn write_mark(&mut self, now: bool) {
        let (candidate, at) = self.mark_candidate;
        if at.elapsed() < MARK_PERIOD && !now {
            return;
        }
        let mark = if now { self.delivered } else { candidate };
        if mark > self.mark_written {
            if let Err(error) = write_delivered(&self.dir, mark) {
                tracing::warn!(%error, "cluster: cannot write the delivered mark");
            }
            self.mark_written = mark;
        }
        self.mark_candidate = (self.delivered, Instant::now());
    }
}

impl Stage for ReplicateStage {
    fn name(&self) -> &'static str {
        "replicate"
    }

    fn process(&mut self, batch: &mut EventBatch) {
        let mut local = std::mem::take(&mut batch.events);
        match &mut self.mode {
            Mode::Committed => {}
            Mode::Causal { clock, .. } => {
                for event in &mut local {
                    event.timestamp.hlc = Some(clock.stamp(event.timestamp.wall_ns));
                }
            }
            Mode::Eventual { .. } => batch.events.clone_from(&local),
        }
        self.offer(local);
        self.take_committed(batch);
    }

    fn tick(&mut self, _now_ns: u64, batch: &mut EventBatch) {
        self.take_committed(batch);
    }

    /// Waits (up to the proposer's grace) until this node's events are committed, passing on
    /// what commits meanwhile.
    fn flush(&mut self, batch: &mut EventBatch) {
        self.incoming = None;
        for delivery in std::mem::take(&mut self.backlog) {
            self.accept(delivery, batch);
        }
        let deadline = Instant::now() + SHUTDOWN_GRACE + Duration::from_secs(1);
        while !self.proposer_done.load(Ordering::Acquire) && Instant::now() < deadline {
            match self.deliveries.try_recv() {
                Ok(delivery) => self.accept(delivery, batch),
                // Shutdown only: the proposer's end is not an event to wait on here.
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        while let Ok(delivery) = self.deliveries.try_recv() {
            self.accept(delivery, batch);
        }
        self.release(true, batch);
    }

    fn finish(mut self: Box<Self>) {
        // The pipeline has handed everything to the sinks, which deliver it before exiting.
        self.write_mark(true);
        // Nothing more to propose (when `flush` did not already say so).
        self.incoming = None;
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        // Let the state machine finish an apply that waits for room (nobody takes it now).
        let ReplicateStage { deliveries, thread, .. } = *self;
        drop(deliveries);
        if let Some(thread) = thread {
            if thread.join().is_err() {
                tracing::error!("the replicate stage's thread panicked");
            }
        }
    }
}

/// Everything the member's runtime starts from.
struct Member {
    settings: ClusterSettings,
    node: String,
    run: u64,
    counters: Arc<Counters>,
    buffered: Arc<AtomicU64>,
    proposer_done: Arc<AtomicBool>,
}

impl Member {
    async fn run(
        self,
        deliver: mpsc::Sender<Delivery>,
        incoming: mpsc::UnboundedReceiver<Vec<SemanticEvent>>,
        ready: std::sync::mpsc::Sender<Result<(ClusterHandle, Vec<Delivery>), ReplicateError>>,
        stopped: oneshot::Receiver<()>,
    ) {
        let (raft, handle, machine, backlog) = match self.start(deliver).await {
            Ok(started) => started,
            Err(error) => {
                let _ = ready.send(Err(error));
                return;
            }
        };
        let _ = ready.send(Ok((handle.clone(), backlog)));
        let monitor = tokio::spawn(monitor(
            raft.clone(),
            machine,
            handle.log.clone(),
            handle.disk.clone(),
            self.settings.snapshot_bytes,
            Arc::clone(&self.counters),
        ));
        let proposer = Proposer {
            raft: raft.clone(),
            peers: handle.peers.clone(),
            me: self.settings.node_id,
            node: self.node,
            run: self.run,
            entry_events: self.settings.entry_events,
            buffered: self.buffered,
            counters: Arc::clone(&self.counters),
            disk: handle.disk.clone(),
        };
        let last = proposer.run(incoming).await;
        // This node's own events reach its pipeline once applied here.
        let _ = raft.wait(Some(Duration::from_secs(1))).applied_index_at_least(Some(last), "shutdown").await;
        self.proposer_done.store(true, Ordering::Release);
        let _ = stopped.await;
        monitor.abort();
        // A removed member's raft node stopped when it was removed.
        if handle.removal.why().is_none() {
            if let Err(error) = raft.shutdown().await {
                tracing::warn!(%error, "cluster: the raft node did not stop cleanly");
            }
        }
    }

    async fn start(
        &self,
        deliver: mpsc::Sender<Delivery>,
    ) -> Result<(Raft, ClusterHandle, StateMachine, Vec<Delivery>), ReplicateError> {
        let settings = &self.settings;
        let (removal, removed_before) = Removal::new(&settings.data_dir);
        if let Some(why) = removed_before {
            return Err(ReplicateError::Removed { path: settings.data_dir.clone(), why });
        }
        let log = LogStore::open(&settings.data_dir.join("log"))?;
        let node = crate::event::NodeId::new(&self.node)
            .map_err(|e| ReplicateError::Raft { message: e.to_string() })?;
        let machine = StateMachine::open(&settings.data_dir, node, deliver, Arc::clone(&self.counters))?;
        let backlog = machine.behind_snapshot(&log).await;
        warn_if_plaintext(settings);
        let peers = Peers::new(
            settings.node_id,
            &settings.secret,
            settings.members.clone(),
            settings.tls.as_ref().map(|tls| Arc::clone(&tls.client)),
            &self.counters,
        );
        let disk = DiskGuard::new(&settings.data_dir, settings.min_free_bytes, &self.counters);
        let config = openraft::Config {
            cluster_name: "vexevent".into(),
            heartbeat_interval: millis(settings.heartbeat),
            election_timeout_min: millis(settings.election_timeout[0]),
            election_timeout_max: millis(settings.election_timeout[1]),
            // A few full entries per append: frames stay far below the frame limit.
            max_payload_entries: (32_768 / settings.entry_events as u64).max(1),
            // Snapshots follow the bytes applied (see `monitor`), not an entry count.
            snapshot_policy: SnapshotPolicy::Never,
            max_in_snapshot_log_to_keep: settings.keep_entries,
            ..openraft::Config::default()
        }
        .validate()
        .map_err(|e| ReplicateError::Raft { message: e.to_string() })?;
        let raft = Raft::new(settings.node_id, Arc::new(config), peers.clone(), log.clone(), machine.clone())
            .await
            .map_err(|e| ReplicateError::Raft { message: e.to_string() })?;
        // A member that starts with a full disk does not stand for election.
        take_part(&raft, disk.check().is_ok());
        let listener = tokio::net::TcpListener::bind(settings.listen)
            .await
            .map_err(|source| ReplicateError::Listen { addr: settings.listen, source })?;
        removal.attach(raft.clone());
        tokio::spawn(follow(raft.clone(), peers.clone()));
        let status = {
            let (raft, log, disk, removal) = (raft.clone(), log.clone(), disk.clone(), removal.clone());
            Arc::new(move || local_status(&raft, &log, &disk, &removal))
        };
        let totals = SharedTotals::new(self.run);
        tokio::spawn(serve(
            listener,
            Server {
                raft: raft.clone(),
                peers: peers.clone(),
                removal: removal.clone(),
                secret: settings.secret.clone(),
                status,
                totals: Arc::clone(&totals),
                counters: Arc::clone(&self.counters),
                tls: settings.tls.as_ref().map(|tls| Arc::clone(&tls.server)),
                disk: disk.clone(),
            },
        ));
        tokio::spawn(gossip(
            Arc::clone(&totals),
            self.node.clone(),
            peers.clone(),
            Arc::clone(&self.counters),
        ));
        // Every member forms the cluster from the same static list: safe to repeat (openraft
        // refuses it once the log has a membership). A joining member waits to be added; a
        // member restarted after membership changes comes back with the membership its log
        // (or snapshot) holds, whatever `peers` says.
        if !settings.join
            && !raft.is_initialized().await.map_err(|e| ReplicateError::Raft { message: e.to_string() })?
        {
            let nodes: BTreeMap<_, _> = settings
                .members
                .iter()
                .map(|(&id, addr)| (id, BasicNode { addr: addr.to_string() }))
                .collect();
            if let Err(error) = raft.initialize(nodes).await {
                tracing::debug!(%error, "cluster: already formed");
            }
        }
        let handle = ClusterHandle {
            raft: raft.clone(),
            log,
            disk,
            peers,
            removal,
            not_applied: Arc::clone(&machine.not_applied),
            totals,
            runtime: tokio::runtime::Handle::current(),
        };
        Ok((raft, handle, machine, backlog))
    }
}

/// The wall clock now, in Unix nanoseconds.
fn wall_now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| u64::try_from(since.as_nanos()).unwrap_or(u64::MAX))
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Says at start how peer traffic travels: plain TCP off loopback (allowed by
/// `plaintext_off_loopback`) loudly.
fn warn_if_plaintext(settings: &ClusterSettings) {
    if settings.tls.is_some() {
        tracing::info!("cluster: peer traffic is mutual TLS 1.3 (cluster CA)");
    } else if let Some(addr) =
        std::iter::once(&settings.listen).chain(settings.members.values()).find(|a| !a.ip().is_loopback())
    {
        tracing::warn!(
            %addr,
            "cluster: peer traffic is NOT ENCRYPTED off loopback (cluster.plaintext_off_loopback): anyone on that network reads every event; set [cluster.tls]"
        );
    } else {
        tracing::info!("cluster: peer traffic is plain TCP on loopback (set [cluster.tls] to encrypt it)");
    }
}

/// Lets this member stand for and keep leadership (heartbeats), or not (its disk is full: the
/// others elect a leader that can write).
fn take_part(raft: &Raft, can_write: bool) {
    raft.runtime_config().elect(can_write);
    raft.runtime_config().heartbeat(can_write);
}

/// Copies the raft metrics into the counters (term, leader changes), builds a snapshot once
/// `snapshot_bytes` of events were applied since the last one, looks at the data directory's
/// free space (under the reserve, this member steps back; see `disk`) and at the log's health.
async fn monitor(
    raft: Raft,
    machine: StateMachine,
    log: LogStore,
    disk: DiskGuard,
    snapshot_bytes: u64,
    counters: Arc<Counters>,
) {
    let mut leader = None;
    let mut asked = false;
    let mut can_write = disk.low().is_none();
    let mut tick = tokio::time::interval(MONITOR_PERIOD);
    loop {
        tick.tick().await;
        if disk.check().is_ok() != can_write {
            can_write = !can_write;
            take_part(&raft, can_write);
        }
        if log.failed().is_some() {
            counters.cluster_log_failed.store(1, Ordering::Relaxed);
        }
        let (term, current) = {
            let metrics = raft.metrics().borrow().clone();
            (metrics.current_term, metrics.current_leader)
        };
        counters.cluster_term.store(term, Ordering::Relaxed);
        if current.is_some() && current != leader {
            if leader.is_some() {
                add(&counters.cluster_leader_changes, 1);
            }
            leader = current;
        }
        let since = machine.since_snapshot.load(Ordering::Relaxed);
        if since >= snapshot_bytes && !asked {
            asked = raft.trigger().snapshot().await.is_ok();
        } else if since < snapshot_bytes {
            asked = false;
        }
    }
}
