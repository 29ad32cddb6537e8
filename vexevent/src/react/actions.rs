//! What rules do about a detection, on a worker thread of its own (the pipeline never waits for
//! an action): per action, a decision (`monitor` mode, `dry_run`, rate limit, a target to act on)
//! and, when it acts, an attempt bounded by the action's timeout; each decision and outcome is an
//! audit line and an `ObservabilityAuditEvent` sent back to the stream. Signals go through a
//! pidfd after checking the process's start time against the one read at detection (pid reuse);
//! programs run without a shell as an unprivileged user, killed at their timeout; their process
//! tree is excluded from rules while they run. [`rollback`] undoes what the audit log says.

use std::{
    collections::{HashMap, VecDeque},
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::{ffi::OsStrExt, fs::PermissionsExt, process::CommandExt},
    },
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};

use super::{
    audit::{AuditError, AuditLog, AuditRecord, Undo, Verified, Written, lines_after, verify},
    config::{
        ActionConfig, ActionType, DEFAULT_RUN_USER, Mode, ReactConfig, RuleConfig, lookup_user, signal_number,
    },
};
use crate::{
    event::{EventType, Priority, Run, SemanticEvent},
    telemetry::{AuditHead, RuleCounters, RuleTable, monotonic_ns},
};

/// Audit events waiting to enter the stream; more are dropped (the audit log has them) and
/// counted under the rule's actions as `audit_event_dropped`.
const AUDIT_EVENTS_QUEUE: usize = 4096;
/// Parents followed from a pid looking for a program vexevent runs.
const MAX_TREE_DEPTH: usize = 32;
/// How often the worker looks for rollbacks other processes appended to the audit log
/// (`vexevent rollback`, the control API), to send them to the stream.
const FOLLOW_EVERY: Duration = Duration::from_millis(200);
/// Detections whose undoable actions are remembered, so a rollback's audit event is derived
/// from its detection (older ones get an event of vexevent's own).
const MAX_UNDOABLE: usize = 4096;

/// The start time of process `pid` (clock ticks since boot, `/proc/PID/stat` field 22).
#[must_use]
pub fn start_time(pid: u32) -> Option<u64> {
    stat_field(pid, 22)
}

fn parent(pid: u32) -> Option<u32> {
    stat_field(pid, 4).and_then(|p| u32::try_from(p).ok())
}

/// A numeric field of `/proc/PID/stat` (numbered from 1, as in proc(5)); the fields after the
/// command name are counted from its closing parenthesis (a name may hold spaces).
fn stat_field(pid: u32, field: usize) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..].split_whitespace().nth(field - 3)?.parse().ok()
}

/// The programs vexevent runs: their events, and their descendants', never count for rules.
/// A program stays known for [`EXITED_GRACE`] after it exits, since its last events reach the
/// stage after it is gone.
#[derive(Debug, Default)]
pub struct OwnTree {
    /// Program pids, with when they exited (`None`: running).
    programs: Mutex<HashMap<u32, Option<Instant>>>,
    count: AtomicUsize,
}

/// How long after a program exits its events are still recognized as its own (far more than an
/// event takes from the kernel to the stage when the pipeline keeps up).
pub const EXITED_GRACE: Duration = Duration::from_secs(2);

impl OwnTree {
    /// Whether a program vexevent runs is running or just exited (only then is a pid looked up).
    #[must_use]
    pub fn active(&self) -> bool {
        self.count.load(Ordering::Acquire) > 0
    }

    fn programs(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Option<Instant>>> {
        let mut programs = self.programs.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        programs.retain(|_, exited| exited.is_none_or(|at| at.elapsed() < EXITED_GRACE));
        self.count.store(programs.len(), Ordering::Release);
        programs
    }

    /// Whether `pid` is a program vexevent runs (or ran moments ago) or a running descendant of
    /// one (found through `/proc` parents).
    #[must_use]
    pub fn contains(&self, pid: u32) -> bool {
        let programs = self.programs();
        let mut current = pid;
        for _ in 0..MAX_TREE_DEPTH {
            if programs.contains_key(&current) {
                return true;
            }
            match parent(current) {
                Some(up) if up > 1 => current = up,
                _ => return false,
            }
        }
        false
    }

    fn started(&self, pid: u32) {
        let mut programs = self.programs();
        programs.insert(pid, None);
        self.count.store(programs.len(), Ordering::Release);
    }

    fn exited(&self, pid: u32) {
        self.programs().insert(pid, Some(Instant::now()));
    }
}

/// A detection for the worker.
pub struct Job {
    pub rule: usize,
    pub detection: SemanticEvent,
    /// False for an absence that lost records may explain: decisions are audited, nothing acts.
    pub act: bool,
    /// False when the trigger came from another node (replicated): its pid and files are that
    /// node's, so decisions are audited and nothing acts.
    pub local: bool,
    /// The start time of the detection's process, read at detection.
    pub start_time: Option<u64>,
}

/// Attempts within the last minute.
struct RateLimit {
    per_minute: usize,
    recent: VecDeque<Instant>,
}

impl RateLimit {
    fn allow(&mut self) -> bool {
        let now = Instant::now();
        while self.recent.front().is_some_and(|t| now.duration_since(*t) >= Duration::from_mins(1)) {
            self.recent.pop_front();
        }
        if self.recent.len() >= self.per_minute {
            return false;
        }
        self.recent.push_back(now);
        true
    }
}

struct RuleActions {
    name: String,
    actions: Vec<(ActionConfig, RateLimit)>,
    counters: Arc<RuleCounters>,
}

/// A rollback the rule asked for: when, and the outcome line to undo.
struct Due {
    at: Instant,
    seq: u64,
}

struct Worker {
    rules: Vec<RuleActions>,
    mode: Mode,
    quarantine_dir: PathBuf,
    log: AuditLog,
    table: Arc<crate::telemetry::Counters>,
    events: Sender<SemanticEvent>,
    own: Arc<OwnTree>,
    /// Automatic rollbacks to do, in the order they are due.
    due: VecDeque<Due>,
    /// Outcome lines that can be undone, with their detection (the newest [`MAX_UNDOABLE`]).
    undoable: VecDeque<(u64, SemanticEvent)>,
    /// The audit log read up to here (rollback lines after it go to the stream).
    followed: u64,
    /// The run this instance's own events belong to.
    run: Run,
}

/// The action worker, from the stage's side.
pub struct Actions {
    jobs: Option<Sender<Job>>,
    events: Receiver<SemanticEvent>,
    worker: Option<JoinHandle<()>>,
    counters: Vec<Arc<RuleCounters>>,
    pub own: Arc<OwnTree>,
}

/// Why the actions cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ActionsError {
    #[error(transparent)]
    Audit(#[from] super::audit::AuditError),
    #[error("cannot start the action worker: {0}")]
    Thread(#[source] std::io::Error),
}

impl Actions {
    /// Opens the audit log and starts the worker for `rules`' actions; the programs it runs join
    /// `own` (kept over a reload, so a program started before it stays excluded).
    ///
    /// # Errors
    /// When the audit log cannot be opened or the thread started.
    pub fn start(
        config: &ReactConfig,
        rules: &[RuleConfig],
        counters: &Arc<crate::telemetry::Counters>,
        own: Arc<OwnTree>,
        run: Run,
    ) -> Result<Self, ActionsError> {
        let log = AuditLog::open(&config.audit_log)?;
        // Rollbacks recorded before this start are not sent again.
        let followed = std::fs::metadata(log.path()).map_or(0, |meta| meta.len());
        let table: &RuleTable = &counters.rules;
        let rules: Vec<RuleActions> = rules
            .iter()
            .map(|rule| RuleActions {
                name: rule.name.clone(),
                actions: rule
                    .actions
                    .iter()
                    .map(|a| {
                        let limit =
                            RateLimit { per_minute: a.max_per_minute as usize, recent: VecDeque::new() };
                        (a.clone(), limit)
                    })
                    .collect(),
                counters: table.register(&rule.name),
            })
            .collect();
        let rule_counters = rules.iter().map(|r| Arc::clone(&r.counters)).collect();
        let (jobs_tx, jobs_rx) = crossbeam_channel::bounded(config.action_queue.max(1));
        let (events_tx, events_rx) = crossbeam_channel::bounded(AUDIT_EVENTS_QUEUE);
        let worker = Worker {
            rules,
            mode: config.mode,
            quarantine_dir: config.quarantine_dir.clone(),
            log,
            table: Arc::clone(counters),
            events: events_tx,
            own: Arc::clone(&own),
            due: VecDeque::new(),
            undoable: VecDeque::new(),
            followed,
            run,
        };
        let handle = std::thread::Builder::new()
            .name("vexevent-actions".into())
            .spawn(move || worker.run(&jobs_rx))
            .map_err(ActionsError::Thread)?;
        Ok(Self {
            jobs: Some(jobs_tx),
            events: events_rx,
            worker: Some(handle),
            counters: rule_counters,
            own,
        })
    }

    /// Hands a detection to the worker; when its queue is full the detection's actions are
    /// counted as `queue_full` (and logged), never waited for.
    pub fn submit(&self, job: Job) {
        let Some(jobs) = &self.jobs else { return };
        if let Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) = jobs.try_send(job) {
            self.counters[job.rule].action("queue_full");
            tracing::warn!(
                detection = job.detection.event_id,
                "the action queue is full; the detection's actions are skipped"
            );
        }
    }

    /// Moves the audit events the worker produced into `out`.
    pub fn drain(&self, out: &mut Vec<SemanticEvent>) {
        out.extend(self.events.try_iter());
    }

    /// Lets the worker finish what is queued, then moves its last audit events into `out`.
    pub fn stop(&mut self, out: &mut Vec<SemanticEvent>) {
        self.jobs = None;
        if let Some(worker) = self.worker.take() {
            if worker.join().is_err() {
                tracing::error!("the action worker panicked");
            }
        }
        self.drain(out);
    }
}

/// What an action is aimed at.
enum Target {
    Process { pid: u32, start_time: Option<u64> },
    File(PathBuf),
    Program,
}

impl Target {
    fn describe(&self) -> String {
        match self {
            Target::Process { pid, .. } => format!("pid {pid}"),
            Target::File(path) => path.display().to_string(),
            Target::Program => String::new(),
        }
    }
}

fn target(action: &ActionConfig, event: &SemanticEvent, start_time: Option<u64>) -> Option<Target> {
    match action.action {
        ActionType::Signal => {
            let pid = event.process.as_ref()?.pid;
            Some(Target::Process { pid, start_time })
        }
        ActionType::Run => Some(Target::Program),
        ActionType::Quarantine | ActionType::Chmod | ActionType::Xattr => {
            let fs = event.context.filesystem.as_ref()?;
            // After a rename (or a link) the file is at its target.
            let renamed = event.context.parameters.get("trigger").is_some_and(|t| {
                t == EventType::FilesystemRename.name() || t == EventType::FilesystemHardlink.name()
            });
            let path = if renamed { fs.target_path.as_ref() } else { fs.path.as_ref() }?;
            Some(Target::File(PathBuf::from(std::ffi::OsStr::from_bytes(path.as_bytes()))))
        }
    }
}

/// An action's result: the outcome, a detail and how to undo it.
type Attempt = (&'static str, String, Option<Undo>);

impl Worker {
    fn run(mut self, jobs: &Receiver<Job>) {
        loop {
            let wait = self.due.front().map_or(FOLLOW_EVERY, |due| {
                due.at.saturating_duration_since(Instant::now()).min(FOLLOW_EVERY)
            });
            match jobs.recv_timeout(wait) {
                Ok(job) => {
                    for index in 0..self.rules[job.rule].actions.len() {
                        self.act(&job, index);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            self.roll_back_due(Instant::now());
            self.follow_log();
        }
        // Stopping (shutdown, or rules replaced): what was to be undone later is undone now,
        // rather than never (a stopped process is not left stopped).
        self.roll_back_due(Instant::now() + Duration::from_secs(u64::from(u32::MAX)));
        self.follow_log();
    }

    /// Does the automatic rollbacks due by `now`, through the audit log as `vexevent rollback`
    /// does (a line already rolled back by hand is left alone); their lines reach the stream
    /// through [`Worker::follow_log`].
    fn roll_back_due(&mut self, now: Instant) {
        while let Some(due) = self.due.pop_front_if(|due| due.at <= now) {
            match rollback_line(self.log.path(), due.seq) {
                Ok(_) | Err(RollbackError::Failed { .. }) => {}
                Err(RollbackError::AlreadyRolledBack { .. }) => {
                    tracing::debug!(seq = due.seq, "already rolled back by hand");
                }
                Err(error) => {
                    // Nothing was undone and no line written: say so in the stream.
                    tracing::error!(%error, seq = due.seq, "the automatic rollback cannot run");
                    let record = AuditRecord {
                        record: "rollback".into(),
                        outcome: "failed".into(),
                        detail: error.to_string(),
                        rolls_back: Some(due.seq),
                        ..AuditRecord::default()
                    };
                    self.send_rollback(&record, None);
                }
            }
        }
    }

    /// Sends the rollback lines appended to the audit log since it was last read (by this
    /// worker or another process) to the stream as audit events, and moves the chain's head.
    fn follow_log(&mut self) {
        let (lines, followed) = match lines_after(self.log.path(), self.followed) {
            Ok(read) => read,
            Err(error) => {
                tracing::warn!(%error, "cannot follow the audit log");
                return;
            }
        };
        self.followed = followed;
        if let Some(last) = lines.last() {
            self.table.rules.set_audit_head(AuditHead {
                file: self.log.path().display().to_string(),
                seq: last.seq,
                hash: last.hash.clone(),
            });
        }
        for Verified { seq, hash, record } in lines.into_iter().filter(|l| l.record.record == "rollback") {
            self.send_rollback(&record, Some(&Written { seq, hash }));
        }
    }

    /// The audit event of a rollback: derived from its detection when it is remembered.
    fn send_rollback(&self, record: &AuditRecord, written: Option<&Written>) {
        let detection = record
            .rolls_back
            .and_then(|seq| self.undoable.iter().find(|(line, _)| *line == seq))
            .map(|(_, detection)| detection);
        let counters = self.rules.iter().find(|r| r.name == record.rule).map(|r| &r.counters);
        if let Some(counters) = counters {
            counters.action(if record.outcome == "done" { "rolled_back" } else { "rollback_failed" });
        }
        let event = if let Some(detection) = detection {
            audit_event(detection, record, written)
        } else {
            let base = SemanticEvent::own(
                &self.run,
                EventType::ObservabilityAuditEvent,
                String::new(),
                monotonic_ns(),
                super::wall_ns(),
            );
            audit_event(&base, record, written)
        };
        if self.events.try_send(event).is_err() {
            if let Some(counters) = counters {
                counters.action("audit_event_dropped");
            }
        }
    }

    fn act(&mut self, job: &Job, index: usize) {
        let rule = &mut self.rules[job.rule];
        let (action, limit) = &mut rule.actions[index];
        let action = action.clone();
        let target = target(&action, &job.detection, job.start_time);
        let describe = target.as_ref().map(Target::describe).unwrap_or_default();
        let would = match &target {
            Some(target) => what(&action, target),
            None => String::new(),
        };
        let decision = if !job.local {
            "not_local"
        } else if !job.act {
            "not_acted_gapped"
        } else if target.is_none() {
            "no_target"
        } else if !limit.allow() {
            "rate_limited"
        } else if action.dry_run || self.mode == Mode::Monitor {
            "dry_run"
        } else {
            "decided"
        };
        self.audit(job, &action, "decision", &describe, decision, would, None);
        let Some(target) = target.filter(|_| decision == "decided") else { return };
        let (outcome, detail, undo) = self.attempt(&action, &target, job);
        let undoable = undo.is_some();
        let written = self.audit(job, &action, "outcome", &describe, outcome, detail, undo);
        if let Some(written) = written.filter(|_| undoable) {
            if self.undoable.len() == MAX_UNDOABLE {
                self.undoable.pop_front();
            }
            self.undoable.push_back((written.seq, job.detection.clone()));
            if let Some(after) = action.rollback_after_ms {
                let at = Instant::now() + Duration::from_millis(after);
                // Delays differ between actions: keep the queue in the order rollbacks are due.
                let place = self.due.partition_point(|due| due.at <= at);
                self.due.insert(place, Due { at, seq: written.seq });
            }
        }
    }

    fn attempt(&self, action: &ActionConfig, target: &Target, job: &Job) -> Attempt {
        let timeout = Duration::from_millis(action.timeout_ms);
        match (action.action, target) {
            (ActionType::Signal, Target::Process { pid, start_time }) => {
                let signal = action.signal.as_deref().and_then(signal_number).unwrap_or(libc::SIGSTOP);
                let (pid, start_time) = (*pid, *start_time);
                bounded(timeout, move || signal_process(pid, start_time, signal))
            }
            (ActionType::Quarantine, Target::File(path)) => {
                let (path, dir, id) = (path.clone(), self.quarantine_dir.clone(), job.detection.event_id);
                bounded(timeout, move || quarantine(&path, &dir, id))
            }
            (ActionType::Chmod, Target::File(path)) => {
                let (path, mode) = (path.clone(), action.mode.unwrap_or(0));
                bounded(timeout, move || chmod(&path, mode))
            }
            (ActionType::Xattr, Target::File(path)) => {
                let path = path.clone();
                let name = action.xattr.clone().unwrap_or_default();
                let value = action.value.clone().unwrap_or_default();
                bounded(timeout, move || set_xattr(&path, &name, value.as_bytes()))
            }
            (ActionType::Run, _) => run_program(action, job, timeout, &self.own),
            _ => ("failed", "no target of this kind".into(), None),
        }
    }

    #[expect(clippy::too_many_arguments, reason = "the fields of one audit line")]
    fn audit(
        &mut self,
        job: &Job,
        action: &ActionConfig,
        record: &str,
        target: &str,
        outcome: &'static str,
        detail: String,
        undo: Option<Undo>,
    ) -> Option<Written> {
        let rule = &self.rules[job.rule];
        rule.counters.action(outcome);
        let entry = AuditRecord {
            record: record.into(),
            rule: rule.name.clone(),
            action: action.action.name().into(),
            detection_id: job.detection.event_id,
            target: target.into(),
            outcome: outcome.into(),
            detail,
            undo,
            rolls_back: None,
        };
        let written = match self.log.append(entry.clone()) {
            Ok(written) => {
                self.table.rules.set_audit_head(AuditHead {
                    file: self.log.path().display().to_string(),
                    seq: written.seq,
                    hash: written.hash.clone(),
                });
                Some(written)
            }
            Err(error) => {
                tracing::error!(%error, "cannot write the audit log");
                None
            }
        };
        let event = audit_event(&job.detection, &entry, written.as_ref());
        if self.events.try_send(event).is_err() {
            rule.counters.action("audit_event_dropped");
        }
        written
    }
}

/// The `ObservabilityAuditEvent` of an audit line, derived from the detection.
#[must_use]
pub fn audit_event(
    detection: &SemanticEvent,
    entry: &AuditRecord,
    written: Option<&super::audit::Written>,
) -> SemanticEvent {
    let mut event = detection.derive_own(EventType::ObservabilityAuditEvent);
    event.event_subtype = format!("action:{}", entry.action);
    event.priority = Priority::High;
    event.context.observability = None;
    let parameters = &mut event.context.parameters;
    parameters.clear();
    parameters.insert("rule".into(), entry.rule.clone());
    parameters.insert("action".into(), entry.action.clone());
    parameters.insert("record".into(), entry.record.clone());
    parameters.insert("target".into(), entry.target.clone());
    parameters.insert("outcome".into(), entry.outcome.clone());
    if !entry.detail.is_empty() {
        parameters.insert("detail".into(), entry.detail.clone());
    }
    if let Some(written) = written {
        parameters.insert("audit_seq".into(), written.seq.to_string());
        parameters.insert("audit_hash".into(), written.hash.clone());
    }
    if let Some(seq) = entry.rolls_back {
        parameters.insert("rolls_back".into(), seq.to_string());
    }
    event
}

/// What an action would do, in words (dry runs audit this).
fn what(action: &ActionConfig, target: &Target) -> String {
    match (action.action, target) {
        (ActionType::Signal, Target::Process { pid, .. }) => {
            format!("send {} to pid {pid}", action.signal.as_deref().unwrap_or("SIGSTOP"))
        }
        (ActionType::Quarantine, Target::File(path)) => format!("move {} to quarantine", path.display()),
        (ActionType::Chmod, Target::File(path)) => {
            format!("chmod {:o} {}", action.mode.unwrap_or(0), path.display())
        }
        (ActionType::Xattr, Target::File(path)) => format!(
            "set {}={:?} on {}",
            action.xattr.as_deref().unwrap_or_default(),
            action.value.as_deref().unwrap_or_default(),
            path.display()
        ),
        (ActionType::Run, _) => {
            format!("run {:?} as {}", action.argv, action.user.as_deref().unwrap_or(DEFAULT_RUN_USER))
        }
        _ => String::new(),
    }
}

/// What `action` would do about `detection` (`vexevent rules test`).
#[must_use]
pub fn would(action: &ActionConfig, detection: &SemanticEvent) -> String {
    target(action, detection, None)
        .map_or_else(|| format!("{}: no target in the event", action.action.name()), |t| what(action, &t))
}

/// Runs `work` on a thread of its own for at most `timeout`; a late result is logged.
fn bounded(timeout: Duration, work: impl FnOnce() -> Attempt + Send + 'static) -> Attempt {
    let (done_tx, done_rx) = crossbeam_channel::bounded(1);
    let spawned = std::thread::Builder::new().name("vexevent-action".into()).spawn(move || {
        let attempt = work();
        if let Err(late) = done_tx.send(attempt) {
            let (outcome, detail, _) = late.0;
            tracing::warn!(outcome, detail, "an action ended after its timeout");
        }
    });
    if let Err(error) = spawned {
        return ("failed", format!("cannot start the action: {error}"), None);
    }
    done_rx
        .recv_timeout(timeout)
        .unwrap_or_else(|_| ("timeout", format!("no result within {timeout:?}"), None))
}

fn pidfd_open(pid: u32) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags; it returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, libc::pid_t::try_from(pid).unwrap_or(-1), 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a descriptor the kernel just opened for us.
    Ok(unsafe { OwnedFd::from_raw_fd(i32::try_from(fd).unwrap_or(-1)) })
}

/// Signals `pid` through a pidfd, when it is still the process with `start_time` (pid reuse).
fn signal_process(pid: u32, started: Option<u64>, signal: i32) -> Attempt {
    if pid <= 1 || pid == std::process::id() {
        return ("refused", format!("pid {pid} is init or vexevent itself"), None);
    }
    let Some(expected) = started else {
        return ("failed", format!("pid {pid} had exited at detection"), None);
    };
    let pidfd = match pidfd_open(pid) {
        Ok(fd) => fd,
        Err(error) => return ("failed", format!("pid {pid}: {error}"), None),
    };
    // The pidfd pins the process: if its start time is the detection's, it is the same one.
    if start_time(pid) != Some(expected) {
        return ("refused", format!("pid {pid} is another process now (start time changed)"), None);
    }
    // SAFETY: pidfd_send_signal with a pidfd we own, no siginfo, no flags.
    let rc = unsafe {
        libc::syscall(libc::SYS_pidfd_send_signal, pidfd.as_raw_fd(), signal, std::ptr::null::<u8>(), 0)
    };
    if rc != 0 {
        return ("failed", format!("pid {pid}: {}", std::io::Error::last_os_error()), None);
    }
    let undo = (signal == libc::SIGSTOP).then_some(Undo::Resume { pid, start_time: expected });
    ("done", format!("signal {signal} sent to pid {pid}"), undo)
}

/// Moves `path` into `dir` as `ID-NAME`.
fn quarantine(path: &Path, dir: &Path, id: u64) -> Attempt {
    let fail = |e: std::io::Error| ("failed", format!("{}: {e}", path.display()), None);
    if let Err(e) = std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)))
    {
        return ("failed", format!("quarantine directory {}: {e}", dir.display()), None);
    }
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let to = dir.join(format!("{id}-{name}"));
    match std::fs::rename(path, &to) {
        Ok(()) => (
            "done",
            format!("moved to {}", to.display()),
            Some(Undo::Restore { from: to.display().to_string(), to: path.display().to_string() }),
        ),
        Err(e) => fail(e),
    }
}

fn chmod(path: &Path, mode: u32) -> Attempt {
    let old = match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => {
            return ("refused", format!("{} is a symbolic link", path.display()), None);
        }
        Ok(meta) => meta.permissions().mode() & 0o7777,
        Err(e) => return ("failed", format!("{}: {e}", path.display()), None),
    };
    match std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)) {
        Ok(()) => (
            "done",
            format!("mode {old:o} -> {mode:o}"),
            Some(Undo::Mode { path: path.display().to_string(), mode: old }),
        ),
        Err(e) => ("failed", format!("{}: {e}", path.display()), None),
    }
}

/// A path as a C string (paths are bytes; one with a NUL cannot name a file).
fn c_path(path: &Path) -> std::io::Result<std::ffi::CString> {
    std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(std::io::Error::other)
}

/// The value of extended attribute `name` of `path` (not following a link), `None` when unset.
fn get_xattr(path: &std::ffi::CStr, name: &std::ffi::CStr) -> std::io::Result<Option<Vec<u8>>> {
    let mut value = vec![0u8; 64 * 1024];
    // SAFETY: valid C strings and a buffer of the given length.
    let n = unsafe { libc::lgetxattr(path.as_ptr(), name.as_ptr(), value.as_mut_ptr().cast(), value.len()) };
    if n < 0 {
        let error = std::io::Error::last_os_error();
        return if error.raw_os_error() == Some(libc::ENODATA) { Ok(None) } else { Err(error) };
    }
    value.truncate(usize::try_from(n).unwrap_or(0));
    Ok(Some(value))
}

/// Sets (`Some`) or removes (`None`) extended attribute `name` of `path`, not following a link.
fn put_xattr(path: &std::ffi::CStr, name: &std::ffi::CStr, value: Option<&[u8]>) -> std::io::Result<()> {
    // SAFETY: valid C strings and, to set, a value of the given length.
    let rc = unsafe {
        match value {
            Some(value) => {
                libc::lsetxattr(path.as_ptr(), name.as_ptr(), value.as_ptr().cast(), value.len(), 0)
            }
            None => libc::lremovexattr(path.as_ptr(), name.as_ptr()),
        }
    };
    if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

/// Sets extended attribute `name` of `path` to `value` (a symbolic link is refused); the undo
/// restores the old value or removes it.
fn set_xattr(path: &Path, name: &str, value: &[u8]) -> Attempt {
    use base64::Engine as _;
    let fail = |e: std::io::Error| ("failed", format!("{}: {e}", path.display()), None);
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => {
            return ("refused", format!("{} is a symbolic link", path.display()), None);
        }
        Ok(_) => {}
        Err(e) => return fail(e),
    }
    let (c_file, c_name) = match (c_path(path), std::ffi::CString::new(name).map_err(std::io::Error::other)) {
        (Ok(file), Ok(name)) => (file, name),
        (Err(e), _) | (_, Err(e)) => return fail(e),
    };
    let old = match get_xattr(&c_file, &c_name) {
        Ok(old) => old,
        Err(e) => return fail(e),
    };
    if let Err(e) = put_xattr(&c_file, &c_name, Some(value)) {
        return fail(e);
    }
    let undo = Undo::Xattr {
        path: path.display().to_string(),
        name: name.to_owned(),
        old: old.map(|old| base64::engine::general_purpose::STANDARD.encode(old)),
    };
    ("done", format!("{name} set ({} bytes)", value.len()), Some(undo))
}

/// The detection's fields a program gets in its environment (paths byte for byte).
fn environment(job: &Job, rule: &str) -> Vec<(String, std::ffi::OsString)> {
    let event = &job.detection;
    let text = |value: &str| std::ffi::OsString::from(value);
    let bytes = |value: &[u8]| std::ffi::OsStr::from_bytes(value).to_owned();
    let mut env = vec![
        ("VEXEVENT_RULE".to_owned(), text(rule)),
        ("VEXEVENT_DETECTION_ID".to_owned(), text(&event.event_id.to_string())),
        ("PATH".to_owned(), text("/usr/local/bin:/usr/bin:/bin")),
    ];
    for (name, value) in &event.context.parameters {
        env.push((format!("VEXEVENT_{}", name.to_uppercase()), text(value)));
    }
    if let Some(process) = &event.process {
        env.push(("VEXEVENT_PID".into(), text(&process.pid.to_string())));
        env.push(("VEXEVENT_UID".into(), text(&process.uid.to_string())));
        env.push(("VEXEVENT_COMM".into(), bytes(process.comm.as_bytes())));
    }
    if let Some(fs) = &event.context.filesystem {
        if let Some(path) = &fs.path {
            env.push(("VEXEVENT_PATH".into(), bytes(path.as_bytes())));
        }
        if let Some(target) = &fs.target_path {
            env.push(("VEXEVENT_TARGET".into(), bytes(target.as_bytes())));
        }
    }
    env
}

/// Runs the action's program (no shell) as its user, in a process group of its own, killed at
/// the timeout; its tree is excluded from rules while it runs.
fn run_program(action: &ActionConfig, job: &Job, timeout: Duration, own: &OwnTree) -> Attempt {
    let user = action.user.as_deref().unwrap_or(DEFAULT_RUN_USER);
    let Some((uid, gid)) = lookup_user(user).filter(|(uid, _)| *uid != 0) else {
        return ("refused", format!("user {user:?} does not exist or is root"), None);
    };
    let rule = job.detection.context.parameters.get("rule").cloned().unwrap_or_default();
    let mut command = std::process::Command::new(&action.argv[0]);
    command
        .args(&action.argv[1..])
        .env_clear()
        .envs(environment(job, &rule))
        .current_dir("/")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .gid(gid)
        .uid(uid);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => return ("failed", format!("{}: {e}", action.argv[0]), None),
    };
    own.started(child.id());
    let exited = pidfd_open(child.id()).is_ok_and(|fd| {
        let mut poll = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        let millis = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: one valid pollfd; the pidfd is readable once the process exits.
        unsafe { libc::poll(&raw mut poll, 1, millis) > 0 }
    });
    if !exited {
        // SAFETY: killing the process group the child leads (its own, from process_group(0)).
        unsafe { libc::kill(-libc::pid_t::try_from(child.id()).unwrap_or(0), libc::SIGKILL) };
    }
    let status = child.wait();
    own.exited(child.id());
    match status {
        Ok(_) if !exited => ("timeout", format!("killed after {timeout:?}"), None),
        Ok(status) if status.success() => ("done", format!("ran as {user} (uid {uid})"), None),
        Ok(status) => ("failed", format!("exited with {status}"), None),
        Err(e) => ("failed", e.to_string(), None),
    }
}

/// Undoes what an audit line's `undo` says.
///
/// # Errors
/// What went wrong, in words.
pub fn rollback(undo: &Undo) -> Result<String, String> {
    match undo {
        Undo::Resume { pid, start_time } => match signal_process(*pid, Some(*start_time), libc::SIGCONT) {
            ("done", _, _) => Ok(format!("pid {pid} resumed (SIGCONT)")),
            (_, detail, _) => Err(detail),
        },
        Undo::Restore { from, to } => {
            if Path::new(to).exists() {
                return Err(format!("{to} exists again; not overwritten"));
            }
            std::fs::rename(from, to)
                .map(|()| format!("{from} moved back to {to}"))
                .map_err(|e| format!("{from}: {e}"))
        }
        Undo::Mode { path, mode } => std::fs::set_permissions(path, std::fs::Permissions::from_mode(*mode))
            .map(|()| format!("{path}: mode {mode:o} restored"))
            .map_err(|e| format!("{path}: {e}")),
        Undo::Xattr { path, name, old } => {
            use base64::Engine as _;
            let old = old
                .as_deref()
                .map(|old| base64::engine::general_purpose::STANDARD.decode(old))
                .transpose()
                .map_err(|e| format!("{path}: the recorded value of {name} is not base64: {e}"))?;
            let c_file = c_path(Path::new(path)).map_err(|e| format!("{path}: {e}"))?;
            let c_name = std::ffi::CString::new(name.as_str()).map_err(|e| format!("{name}: {e}"))?;
            put_xattr(&c_file, &c_name, old.as_deref())
                .map(|()| match old {
                    Some(_) => format!("{path}: {name} restored"),
                    None => format!("{path}: {name} removed"),
                })
                .map_err(|e| format!("{path}: {e}"))
        }
    }
}

/// Why a recorded action was not rolled back.
#[derive(Debug, thiserror::Error)]
pub enum RollbackError {
    #[error(transparent)]
    Audit(#[from] AuditError),
    #[error("the audit log has no line {seq}")]
    NoLine { seq: u64 },
    #[error("line {seq} ({action} {record}, {outcome}) records nothing to undo")]
    NothingToUndo { seq: u64, action: String, record: String, outcome: String },
    #[error("line {seq} was already rolled back")]
    AlreadyRolledBack { seq: u64 },
    #[error("{detail} (audit line {})", written.seq)]
    Failed { detail: String, written: Written },
}

/// Undoes the action whose outcome is line `seq` of the audit log at `file` (after verifying
/// the chain) and appends the rollback there: what was done and the line written.
///
/// # Errors
/// A log that does not verify, no such line, a line with nothing to undo or already rolled
/// back, an undo that failed (recorded in the log as `failed`).
pub fn rollback_line(file: &Path, seq: u64) -> Result<(String, Written), RollbackError> {
    let lines = verify(file)?;
    let line = lines.iter().find(|l| l.seq == seq).ok_or(RollbackError::NoLine { seq })?;
    let Some(undo) = &line.record.undo else {
        return Err(RollbackError::NothingToUndo {
            seq,
            action: line.record.action.clone(),
            record: line.record.record.clone(),
            outcome: line.record.outcome.clone(),
        });
    };
    if lines.iter().any(|l| l.record.rolls_back == Some(seq) && l.record.outcome == "done") {
        return Err(RollbackError::AlreadyRolledBack { seq });
    }
    let result = rollback(undo);
    let record = AuditRecord {
        record: "rollback".into(),
        outcome: if result.is_ok() { "done" } else { "failed" }.into(),
        detail: match &result {
            Ok(detail) | Err(detail) => detail.clone(),
        },
        rolls_back: Some(seq),
        undo: None,
        ..line.record.clone()
    };
    let written = AuditLog::open(file)?.append(record)?;
    match result {
        Ok(detail) => Ok((detail, written)),
        Err(detail) => Err(RollbackError::Failed { detail, written }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_xattr_is_set_and_its_rollback_restores_or_removes_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        let c_file = c_path(&file).unwrap();
        let name = std::ffi::CString::new("user.vexevent.test").unwrap();
        let (outcome, detail, undo) = set_xattr(&file, "user.vexevent.test", b"suspect");
        if outcome == "failed" && detail.contains("Operation not supported") {
            println!("skipped: the temporary directory's file system has no user extended attributes");
            return;
        }
        assert_eq!(outcome, "done", "{detail}");
        assert_eq!(get_xattr(&c_file, &name).unwrap().as_deref(), Some(&b"suspect"[..]));
        let undo = undo.unwrap();
        assert_eq!(rollback(&undo).unwrap(), format!("{}: user.vexevent.test removed", file.display()));
        assert_eq!(get_xattr(&c_file, &name).unwrap(), None, "it had none before");
        // Over an old value: the rollback puts the old value back.
        put_xattr(&c_file, &name, Some(b"\xffold")).unwrap();
        let (_, _, undo) = set_xattr(&file, "user.vexevent.test", b"new");
        rollback(&undo.unwrap()).unwrap();
        assert_eq!(get_xattr(&c_file, &name).unwrap().as_deref(), Some(&b"\xffold"[..]));
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        assert_eq!(set_xattr(&link, "user.vexevent.test", b"x").0, "refused", "a link is refused");
    }
}
