//! The `react` stage: rules over the event stream (counts, distinct counts, sequences, absences,
//! per key, on kernel time, closed on the watermark) whose detections are events
//! (`ObservabilityAlertTriggered`, subtype `rule:NAME`) entering the batch before `filter`, and
//! whose actions (signal, run, quarantine, chmod, xattr) are decided, run and audited on a worker
//! of their own (`actions`, `audit`). `replay` and `rules test` run the same engine over a
//! recorded log.

mod actions;
mod audit;
mod config;
mod engine;
mod index;

pub use actions::{
    Actions, ActionsError, OwnTree, RollbackError, rollback, rollback_line, start_time, would,
};
pub use audit::{AuditError, AuditLog, AuditRecord, GENESIS, Undo, Verified, Written, verify};
pub use config::{
    ActionConfig, ActionType, Exceptions, KeyField, Mode, ReactConfig, ReactSettings, RuleConfig, RuleError,
    RuleKind, RulesFile, StepConfig, read_rules_file, rule_problems,
};
pub use engine::{Detection, Engine, Key, Verdict};

use std::{io::BufRead, sync::Arc};

use crate::{
    event::{EventType, Run, SemanticEvent},
    pipeline::{EventBatch, Stage, Update, settings_for},
    telemetry::{AuditHead, Counters, monotonic_ns},
};

/// How far behind the clock an idle tick closes windows: when the source is idle, capture holds
/// nothing newer than its reorder window (100 us by default), far less than this.
const IDLE_LAG_NS: u64 = 100_000_000;

/// Whether each rule has actions.
fn acting(settings: &ReactSettings) -> Vec<bool> {
    settings.rules.iter().map(|rule| !rule.actions.is_empty()).collect()
}

/// Least time between two audit-head events while the head moves.
const AUDIT_HEAD_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// An `ObservabilityAuditEvent` (subtype `audit_head`) carrying the audit log's last line:
/// `file`, `audit_seq`, `audit_hash`.
fn head_event(head: &AuditHead, at_ns: u64, run: &Run) -> SemanticEvent {
    let parameters =
        [("file", head.file.clone()), ("audit_seq", head.seq.to_string()), ("audit_hash", head.hash.clone())]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
    let mut event = SemanticEvent::own(
        run,
        EventType::ObservabilityAuditEvent,
        "audit_head".to_owned(),
        at_ns,
        wall_ns(),
    );
    event.context.parameters = parameters;
    event
}

/// The wall clock now, in nanoseconds since the Unix epoch.
fn wall_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Why the `react` stage or a replay cannot run.
#[derive(Debug, thiserror::Error)]
pub enum ReactError {
    #[error(transparent)]
    Rules(#[from] RuleError),
    #[error(transparent)]
    Actions(#[from] ActionsError),
    #[error("cannot read the events: {0}")]
    Read(#[source] std::io::Error),
    #[error("event line {line} is not a vexevent event: {message}")]
    Line { line: usize, message: String },
}

/// The `react` stage.
pub struct ReactStage {
    engine: Engine,
    actions: Actions,
    /// Whether each rule has actions.
    acting: Vec<bool>,
    detections: Vec<Detection>,
    /// The latest watermark seen (ticks never close less than it).
    watermark_ns: u64,
    counters: Arc<Counters>,
    /// The audit chain head last sent to the sinks, and when.
    head_sent: Option<(u64, std::time::Instant)>,
    /// The run the events this stage makes on its own (audit heads) belong to.
    run: Run,
    /// The settings the rules were built from (a reload with other rules rebuilds them).
    settings: ReactSettings,
    /// What the rules replaced by a reload decided last, for the next batch.
    held: Vec<SemanticEvent>,
}

impl ReactStage {
    /// Compiles the rules and starts the action worker (opening the audit log); the events the
    /// stage makes on its own belong to `run`.
    ///
    /// # Errors
    /// A rule that does not compile, an audit log that cannot be opened.
    pub fn new(settings: &ReactSettings, run: Run, counters: &Arc<Counters>) -> Result<Self, ReactError> {
        let engine = Engine::new(settings, &counters.rules)?;
        let actions =
            Actions::start(&settings.config, &settings.rules, counters, Arc::default(), run.clone())?;
        Ok(Self {
            engine,
            actions,
            acting: acting(settings),
            detections: Vec::new(),
            watermark_ns: 0,
            counters: Arc::clone(counters),
            head_sent: None,
            run,
            settings: settings.clone(),
            held: Vec::new(),
        })
    }

    /// Switches to `rules` (a reload): what the old rules decided up to the watermark goes out
    /// with the next batch, their action worker finishes its queue, and the new rules start
    /// empty (their windows and partial matches open from the next event). `[react]` itself
    /// (mode, audit log, bounds) stays as at start.
    fn reload(&mut self, rules: ReactSettings) -> Result<(), ReactError> {
        let settings = ReactSettings { config: self.settings.config.clone(), ..rules };
        let engine = Engine::new(&settings, &self.counters.rules)?;
        let own = Arc::clone(&self.actions.own);
        let actions =
            Actions::start(&settings.config, &settings.rules, &self.counters, own, self.run.clone())?;
        self.engine.advance(self.watermark_ns, &mut self.detections);
        let mut held = std::mem::take(&mut self.held);
        self.emit(&mut held);
        self.actions.stop(&mut held);
        self.held = held;
        self.engine = engine;
        self.actions = actions;
        self.acting = acting(&settings);
        self.settings = settings;
        Ok(())
    }

    /// Sends the audit chain's head to the sinks when it moved (at most every
    /// [`AUDIT_HEAD_EVERY`] unless `now`), so a truncated audit log is detected from the stream too.
    fn send_head(&mut self, now: bool, at_ns: u64, out: &mut Vec<SemanticEvent>) {
        let Some(head) = self.counters.rules.audit_head() else { return };
        let due = match self.head_sent {
            None => true,
            Some((seq, at)) => seq != head.seq && (now || at.elapsed() >= AUDIT_HEAD_EVERY),
        };
        if due {
            out.push(head_event(&head, at_ns, &self.run));
            self.head_sent = Some((head.seq, std::time::Instant::now()));
        }
    }

    /// Adds the detections to the batch and hands those of acting rules to the worker (after
    /// what rules replaced by a reload left).
    fn emit(&mut self, out: &mut Vec<SemanticEvent>) {
        out.append(&mut self.held);
        let now_ns = monotonic_ns();
        for Detection { rule, act, mut event, .. } in self.detections.drain(..) {
            // Live only (a replay has no such time): from the kernel timestamp of the last
            // matching event (an absence: its deadline) to the detection leaving the stage.
            let latency = now_ns.saturating_sub(event.timestamp.monotonic_ns);
            event.context.parameters.insert("latency_ns".into(), latency.to_string());
            if self.acting[rule] {
                // Events replicated from another node never act here (their pids are not ours).
                let local = event.origin.run.node() == self.run.node();
                // Read now, as close to the event as userspace can: the record carries no start
                // time, so a pid reused between the event and this read is the residual race.
                let start_time = event.process.as_ref().filter(|_| local).and_then(|p| start_time(p.pid));
                self.actions.submit(actions::Job { rule, detection: event.clone(), act, local, start_time });
            }
            out.push(event);
        }
        self.actions.drain(out);
    }
}

impl Stage for ReactStage {
    fn name(&self) -> &'static str {
        "react"
    }

    fn process(&mut self, batch: &mut EventBatch) {
        self.watermark_ns = self.watermark_ns.max(batch.watermark_ns);
        if self.actions.own.active() {
            // Programs vexevent runs (and their children) never trigger rules.
            let own = &self.actions.own;
            let events: Vec<SemanticEvent> = batch
                .events
                .iter()
                .filter(|e| !e.process.as_ref().is_some_and(|p| own.contains(p.pid)))
                .cloned()
                .collect();
            self.engine.process(&events, self.watermark_ns, &mut self.detections);
        } else {
            self.engine.process(&batch.events, self.watermark_ns, &mut self.detections);
        }
        self.emit(&mut batch.events);
    }

    fn tick(&mut self, now_ns: u64, batch: &mut EventBatch) {
        self.watermark_ns = self.watermark_ns.max(now_ns.saturating_sub(IDLE_LAG_NS));
        self.engine.advance(self.watermark_ns, &mut self.detections);
        self.emit(&mut batch.events);
        self.send_head(false, now_ns, &mut batch.events);
    }

    fn flush(&mut self, batch: &mut EventBatch) {
        self.engine.finish(&mut self.detections);
        self.emit(&mut batch.events);
        self.actions.stop(&mut batch.events);
        self.send_head(true, self.watermark_ns, &mut batch.events);
    }

    /// Takes [`ReactSettings`]: rules that differ from the running ones replace them.
    fn reconfigure(&mut self, update: Update) {
        let Some(rules) = settings_for::<ReactSettings>("react", update) else { return };
        if rules.rules == self.settings.rules && rules.macros == self.settings.macros {
            return;
        }
        let count = rules.rules.len();
        match self.reload(rules) {
            Ok(()) => tracing::info!(rules = count, "rules reloaded"),
            Err(error) => tracing::error!(%error, "the reloaded rules cannot start; the running rules stay"),
        }
    }
}

/// Largest event line a replay reads.
const MAX_LINE_BYTES: u64 = 1 << 20;

/// Whether `event` was made by rules (a detection or an audit event): a replay makes its own.
fn derived_by_rules(event: &SemanticEvent) -> bool {
    event.event_type == EventType::ObservabilityAuditEvent
        || (event.event_type == EventType::ObservabilityAlertTriggered
            && event.event_subtype.starts_with("rule:"))
}

/// Reads a recorded JSON Lines log (vexevent's output), handing `each` every event that rules did
/// not make (a replay makes its own).
fn read_log(mut input: impl BufRead, mut each: impl FnMut(SemanticEvent)) -> Result<(), ReactError> {
    let mut line = Vec::new();
    let mut number = 0;
    loop {
        line.clear();
        number += 1;
        let read = std::io::Read::take(&mut input, MAX_LINE_BYTES + 1)
            .read_until(b'\n', &mut line)
            .map_err(ReactError::Read)?;
        if read == 0 {
            return Ok(());
        }
        if line.len() as u64 > MAX_LINE_BYTES {
            return Err(ReactError::Line {
                line: number,
                message: format!("longer than {MAX_LINE_BYTES} bytes"),
            });
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let event: SemanticEvent = serde_json::from_slice(&line)
            .map_err(|e| ReactError::Line { line: number, message: e.to_string() })?;
        if !derived_by_rules(&event) {
            each(event);
        }
    }
}

/// Records lost, as a gap event reports them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lost {
    pub count: u64,
    pub from_ns: u64,
    pub to_ns: u64,
}

/// What rules make of a recorded log: its events, its gaps, and the detections.
pub struct Tried {
    /// Events read (not counting those rules made).
    pub events: u64,
    pub gaps: Vec<Lost>,
    pub detections: Vec<Detection>,
}

/// Runs `settings`' rules over a recorded JSON Lines log (vexevent's output), without acting, as
/// the live run did (windows still open at the end are closed at the last event's time, as at
/// shutdown).
///
/// # Errors
/// A rule that does not compile, a line that cannot be read or is not an event.
pub fn try_rules(
    settings: &ReactSettings,
    input: impl BufRead,
    counters: &Counters,
) -> Result<Tried, ReactError> {
    let mut engine = Engine::new(settings, &counters.rules)?;
    let mut tried = Tried { events: 0, gaps: Vec::new(), detections: Vec::new() };
    read_log(input, |event| {
        tried.events += 1;
        if let Some(gap) = &event.context.gap {
            tried.gaps.push(Lost { count: gap.count, from_ns: gap.lost_from_ns, to_ns: gap.lost_to_ns });
        }
        let time = event.timestamp.monotonic_ns;
        engine.process(std::slice::from_ref(&event), time, &mut tried.detections);
    })?;
    engine.finish(&mut tried.detections);
    Ok(tried)
}

/// The detection events of [`try_rules`]: what `vexevent replay` prints.
///
/// # Errors
/// As [`try_rules`].
pub fn replay(
    settings: &ReactSettings,
    input: impl BufRead,
    counters: &Counters,
) -> Result<Vec<SemanticEvent>, ReactError> {
    Ok(try_rules(settings, input, counters)?.detections.into_iter().map(|d| d.event).collect())
}

#[cfg(test)]
mod tests;
