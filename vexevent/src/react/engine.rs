//! The rule engine: every rule's state per key, fed events in output order and closed on the
//! watermark, yielding detections. Counts and distinct counts live in the shared keyed windows
//! (sliding, a quarter of the rule's window apart); sequences and absences keep their partial
//! matches per key with deadlines in arrival order. Gap events' spans make a detection whose
//! window they overlap `gapped`. An event is evaluated only against the rules its type and path
//! can match (`index`). Nothing here acts: the stage and replay share it.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::Arc,
};

use super::{
    config::{KeyField, ReactSettings, RuleConfig, RuleError, RuleKind},
    index::RuleIndex,
};
use crate::{
    event::{
        EventType, FilesystemContext, ObservabilityContext, OpResult, Origin, Priority, ProcessInfo,
        SemanticEvent, Timestamp,
    },
    expr::{Captures, Filter, Kept, Needs, StepMatcher, compile_steps, needs, parse, parse_macros},
    telemetry::{RuleCounters, RuleTable, add},
    window::{KeyedWindows, WindowSpec},
};

/// Sliding windows per rule window: a burst shorter than 3/4 of `within_ms` is always inside one.
const SLIDES: u64 = 4;
/// Matched event ids a detection links (the latest ones).
const MAX_LINKS: usize = 64;
/// Partial matches a sequence keeps per key (the oldest is evicted).
const MAX_PARTIALS_PER_KEY: usize = 64;
/// How many times detections may be fed back to the rules in one batch (chaining depth).
const MAX_CHAIN_DEPTH: usize = 4;

/// A detection's verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// No records were lost inside the rule's window.
    Complete,
    /// Records were lost inside the rule's window: a count may be short, an absence unproven.
    Gapped,
}

impl Verdict {
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Verdict::Complete => "complete",
            Verdict::Gapped => "gapped",
        }
    }
}

/// A rule's detection: the rule, the detection event (in the stream), and whether actions may
/// run on it (not on an absence that records lost may explain).
pub struct Detection {
    pub rule: usize,
    pub verdict: Verdict,
    pub act: bool,
    pub event: SemanticEvent,
}

/// A group's key value.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Key {
    All,
    Number(u64),
    Text(Box<[u8]>),
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Key::All => f.write_str("*"),
            Key::Number(n) => write!(f, "{n}"),
            Key::Text(bytes) => f.write_str(&String::from_utf8_lossy(bytes)),
        }
    }
}

fn path_of(event: &SemanticEvent) -> Option<&[u8]> {
    event.context.filesystem.as_ref()?.path.as_ref().map(crate::event::PathBytes::as_bytes)
}

fn key_of(field: KeyField, event: &SemanticEvent) -> Option<Key> {
    let process = event.process.as_ref();
    Some(match field {
        KeyField::None => Key::All,
        KeyField::Pid => Key::Number(u64::from(process?.pid)),
        KeyField::Uid => Key::Number(u64::from(process?.uid)),
        KeyField::Comm => Key::Text(process?.comm.as_bytes().into()),
        KeyField::Inode => Key::Number(event.context.filesystem.as_ref()?.inode_number?),
        KeyField::Path => Key::Text(path_of(event)?.into()),
        KeyField::Dir => {
            let path = path_of(event)?;
            Key::Text(path[..path.iter().rposition(|b| *b == b'/')?.max(1)].into())
        }
    })
}

/// A count window's aggregate for one key (kept small: a window holds one per key).
#[derive(Default)]
struct Tally {
    count: u64,
    /// Distinct paths (distinct rules only), up to the threshold.
    #[expect(clippy::box_collection, reason = "8 bytes in every tally instead of 48; count rules have none")]
    paths: Option<Box<HashSet<Box<[u8]>>>>,
    fired: bool,
}

/// A sequence's partial match: of each step so far, its event's id and the fields later steps
/// name (not the event).
struct Partial {
    ids: Vec<u64>,
    kept: Vec<Kept>,
    /// The first step's time (where the matched span starts).
    first_ns: u64,
    deadline: u64,
}

/// What an absence keeps of its first event: what its detection carries (the event's id, origin,
/// type, time, flags, process, file and result), not the whole event.
struct Started {
    event_id: u64,
    origin: Origin,
    event_type: EventType,
    subtype: String,
    timestamp: Timestamp,
    flags: u32,
    process: Option<ProcessInfo>,
    filesystem: Option<Box<FilesystemContext>>,
    result: Option<OpResult>,
}

impl Started {
    fn of(event: &SemanticEvent) -> Self {
        Self {
            event_id: event.event_id,
            origin: event.origin.clone(),
            event_type: event.event_type,
            subtype: event.event_subtype.clone(),
            timestamp: event.timestamp,
            flags: event.flags,
            process: event.process.clone(),
            filesystem: event.context.filesystem.clone().map(Box::new),
            result: event.result.clone(),
        }
    }

    /// The event again, with only what was kept.
    fn event(self) -> SemanticEvent {
        let mut event = SemanticEvent::own(
            &self.origin.run,
            self.event_type,
            self.subtype,
            self.timestamp.monotonic_ns,
            self.timestamp.wall_ns,
        );
        event.event_id = self.event_id;
        event.origin = self.origin;
        event.timestamp = self.timestamp;
        event.flags = self.flags;
        event.process = self.process;
        event.context.filesystem = self.filesystem.map(|f| *f);
        event.result = self.result;
        event
    }
}

/// An absence's first event, waiting for its follower.
struct Pending {
    started: Started,
    links: Vec<u64>,
    deadline: u64,
}

enum Pattern {
    Count {
        condition: Filter,
        at_least: u64,
        distinct: bool,
        /// Each key's windows, and its latest matching events' ids (the links of a detection:
        /// a window reaching `at_least` holds at least the key's latest `at_least` events).
        windows: KeyedWindows<Key, Tally, VecDeque<u64>>,
    },
    Sequence {
        steps: Vec<StepMatcher>,
        /// What each step's event keeps for the later steps.
        captures: Captures,
        /// Event types the steps after the first can match (`None`: any): others never advance a
        /// partial match, so its key is not looked up.
        advancing: Option<HashSet<EventType>>,
        partials: HashMap<Key, Vec<Partial>>,
        deadlines: VecDeque<(u64, Key)>,
        held: usize,
    },
    Absence {
        first: Filter,
        then: Filter,
        pending: HashMap<Key, Pending>,
        deadlines: VecDeque<(u64, Key)>,
    },
}

struct Rule {
    name: String,
    kind: RuleKind,
    key: KeyField,
    within_ns: u64,
    except_paths: Vec<Vec<u8>>,
    except_comm: Vec<Vec<u8>>,
    except_uid: Vec<u32>,
    pattern: Pattern,
    counters: Arc<RuleCounters>,
    /// Evictions already added to `counters`.
    evictions_counted: u64,
}

impl Rule {
    /// Whether the rule's exceptions cover `event` (its process and path are read only when the
    /// rule has exceptions about them).
    fn excepts(&self, event: &SemanticEvent) -> bool {
        if !self.except_uid.is_empty() || !self.except_comm.is_empty() {
            if let Some(process) = &event.process {
                if self.except_uid.contains(&process.uid)
                    || self.except_comm.iter().any(|c| c == process.comm.as_bytes())
                {
                    return true;
                }
            }
        }
        !self.except_paths.is_empty()
            && path_of(event)
                .is_some_and(|path| self.except_paths.iter().any(|prefix| path.starts_with(prefix)))
    }
}

/// Every rule, compiled, with its state.
pub struct Engine {
    rules: Vec<Rule>,
    /// Rules by the event types and path prefixes they need.
    index: RuleIndex,
    /// The candidates of the event being evaluated (kept to reuse its allocation).
    candidates: Vec<u32>,
    /// Spans of records lost (gap events), oldest first, kept while a window may overlap them.
    gaps: VecDeque<(u64, u64)>,
    longest_ns: u64,
    max_keys: usize,
    max_partials: usize,
    /// The latest event time seen (closes everything at the end, as at shutdown).
    last_ns: u64,
}

fn compile(name: &str, text: &str, macros: &crate::expr::Macros) -> Result<Filter, RuleError> {
    Ok(Filter::new(name, text, macros)?)
}

impl Engine {
    /// Compiles the rules of `settings`; their counters are registered in `table`.
    ///
    /// # Errors
    /// A rule that does not compile (validated settings compile).
    pub fn new(settings: &ReactSettings, table: &RuleTable) -> Result<Self, RuleError> {
        let macros = parse_macros(&settings.macros)?;
        let mut engine = Self {
            rules: Vec::new(),
            index: RuleIndex::default(),
            candidates: Vec::new(),
            gaps: VecDeque::new(),
            longest_ns: 0,
            max_keys: settings.config.max_keys,
            max_partials: settings.config.max_partials,
            last_ns: 0,
        };
        for rule in &settings.rules {
            engine.add(rule, &macros, table)?;
        }
        Ok(engine)
    }

    fn add(
        &mut self,
        rule: &RuleConfig,
        macros: &crate::expr::Macros,
        table: &RuleTable,
    ) -> Result<(), RuleError> {
        let within_ns = rule.within_ms.saturating_mul(1_000_000);
        let part = |part: &str| format!("rules.{}.{part}", rule.name);
        let invalid = |message: &str| RuleError::Invalid {
            what: format!("rules.{}", rule.name),
            message: message.into(),
        };
        let text = |field: &Option<String>| field.clone().ok_or_else(|| invalid("a condition is missing"));
        let (pattern, needs) = match rule.kind {
            RuleKind::Count | RuleKind::Distinct => {
                let condition = compile(&part("match"), &text(&rule.match_expr)?, macros)?;
                let needs = needs(&condition.expr, macros, &[]);
                let spec = WindowSpec::sliding(within_ns, (within_ns / SLIDES).max(1));
                let at_least = rule.at_least.ok_or_else(|| invalid("`at_least` is missing"))?;
                let distinct = rule.kind == RuleKind::Distinct;
                (
                    Pattern::Count {
                        condition,
                        at_least,
                        distinct,
                        windows: KeyedWindows::new(spec, self.max_keys),
                    },
                    needs,
                )
            }
            RuleKind::Sequence => {
                let mut steps = Vec::new();
                let mut captures = Captures::default();
                let mut advancing = Some(HashSet::new());
                let mut earlier: Vec<(&str, Needs)> = Vec::new();
                for step in &rule.steps {
                    let name = part(&format!("steps.{}", step.name));
                    let expr = parse(&step.match_expr)
                        .map_err(|source| crate::expr::FilterError::Parse { name: name.clone(), source })?;
                    let names: Vec<&str> = earlier.iter().map(|(name, _)| *name).collect();
                    steps.push(
                        compile_steps(&expr, &names, macros, &mut captures)
                            .map_err(|source| crate::expr::FilterError::Compile { name, source })?,
                    );
                    let known: Vec<(&str, &Needs)> = earlier.iter().map(|(name, n)| (*name, n)).collect();
                    let step_needs = needs(&expr, macros, &known);
                    if !earlier.is_empty() {
                        advancing = advancing.zip(step_needs.types.clone()).map(|(a, b)| &a | &b);
                    }
                    earlier.push((&step.name, step_needs));
                }
                let needs = earlier.into_iter().map(|(_, n)| n).reduce(Needs::or).unwrap_or_default();
                let pattern = Pattern::Sequence {
                    steps,
                    captures,
                    advancing,
                    partials: HashMap::new(),
                    deadlines: VecDeque::new(),
                    held: 0,
                };
                (pattern, needs)
            }
            RuleKind::Absence => {
                let first = compile(&part("match"), &text(&rule.match_expr)?, macros)?;
                let then = compile(&part("followed_by"), &text(&rule.followed_by)?, macros)?;
                let needs = needs(&first.expr, macros, &[]).or(needs(&then.expr, macros, &[]));
                (Pattern::Absence { first, then, pending: HashMap::new(), deadlines: VecDeque::new() }, needs)
            }
        };
        let index = u32::try_from(self.rules.len()).map_err(|_| invalid("too many rules"))?;
        self.index.add(index, &needs);
        self.longest_ns = self.longest_ns.max(within_ns);
        self.rules.push(Rule {
            name: rule.name.clone(),
            kind: rule.kind,
            key: rule.key,
            within_ns,
            except_paths: rule.except.paths.iter().map(|p| p.as_bytes().to_vec()).collect(),
            except_comm: rule.except.comm.iter().map(|c| c.as_bytes().to_vec()).collect(),
            except_uid: rule.except.uid.clone(),
            pattern,
            counters: table.register(&rule.name),
            evictions_counted: 0,
        });
        Ok(())
    }

    /// The name of rule `index`.
    #[must_use]
    pub fn rule_name(&self, index: usize) -> &str {
        &self.rules[index].name
    }

    /// Runs `events` (in output order) through every rule, then closes what `watermark_ns`
    /// passed; detections (fed back to the rules, for chaining) are appended to `out`.
    pub fn process(&mut self, events: &[SemanticEvent], watermark_ns: u64, out: &mut Vec<Detection>) {
        let first = out.len();
        for event in events {
            self.event(event, out);
        }
        let mut from = first;
        for _ in 0..MAX_CHAIN_DEPTH {
            let to = out.len();
            if from == to {
                break;
            }
            for index in from..to {
                let event = out[index].event.clone();
                self.event(&event, out);
            }
            from = to;
        }
        self.advance(watermark_ns, out);
    }

    /// Closes, at the end of the stream, what its last event's time closes (as at shutdown:
    /// what is still open then stays undecided).
    pub fn finish(&mut self, out: &mut Vec<Detection>) {
        self.advance(self.last_ns, out);
    }

    fn event(&mut self, event: &SemanticEvent, out: &mut Vec<Detection>) {
        let time = event.timestamp.monotonic_ns;
        self.last_ns = self.last_ns.max(time);
        // Gap reports are alerts (`translate`): other events' gap field is not read (one cache
        // line less per event).
        if event.event_type == EventType::ObservabilityAlertTriggered {
            if let Some(gap) = &event.context.gap {
                self.gaps.push_back((gap.lost_from_ns, gap.lost_to_ns));
            }
        }
        let mut candidates = std::mem::take(&mut self.candidates);
        self.index.candidates(event.event_type, || path_of(event), &mut candidates);
        for &index in &candidates {
            let index = index as usize;
            let rule = &mut self.rules[index];
            if rule.excepts(event) {
                continue;
            }
            let bounds = (self.max_keys, self.max_partials);
            if let Some((key, trigger, links, from_ns)) = step(rule, event, time, bounds) {
                let verdict = verdict(&self.gaps, from_ns, time);
                out.push(detection(index, rule, &key, &trigger, links, verdict, true));
            }
        }
        self.candidates = candidates;
    }

    /// Closes windows and deadlines `watermark_ns` passed: absences fire, the rest is freed.
    pub fn advance(&mut self, watermark_ns: u64, out: &mut Vec<Detection>) {
        let mut fired = Vec::new();
        for (index, rule) in self.rules.iter_mut().enumerate() {
            match &mut rule.pattern {
                Pattern::Count { windows, .. } => {
                    windows.close(watermark_ns);
                    add(&rule.counters.evictions, windows.evicted - rule.evictions_counted);
                    rule.evictions_counted = windows.evicted;
                }
                Pattern::Sequence { partials, deadlines, held, .. } => {
                    while let Some((_, key)) =
                        deadlines.pop_front_if(|(deadline, _)| *deadline < watermark_ns)
                    {
                        if let Some(list) = partials.get_mut(&key) {
                            let before = list.len();
                            list.retain(|p| p.deadline >= watermark_ns);
                            *held -= before - list.len();
                            if list.is_empty() {
                                partials.remove(&key);
                            }
                        }
                    }
                }
                Pattern::Absence { pending, deadlines, .. } => {
                    while let Some((deadline, key)) =
                        deadlines.pop_front_if(|(deadline, _)| *deadline < watermark_ns)
                    {
                        if pending.get(&key).is_some_and(|p| p.deadline == deadline) {
                            let Some(Pending { started, links, .. }) = pending.remove(&key) else {
                                continue;
                            };
                            let mut event = started.event();
                            let from_ns = event.timestamp.monotonic_ns;
                            let verdict = verdict(&self.gaps, from_ns, deadline);
                            let shift = deadline - from_ns;
                            event.timestamp.monotonic_ns = deadline;
                            event.timestamp.wall_ns += shift;
                            let act = verdict == Verdict::Complete;
                            fired.push((key, event, links, verdict, act));
                        }
                    }
                }
            }
            for (key, event, links, verdict, act) in fired.drain(..) {
                out.push(detection(index, rule, &key, &event, links, verdict, act));
            }
        }
        let horizon = watermark_ns.saturating_sub(self.longest_ns);
        while self.gaps.front().is_some_and(|(_, to)| *to < horizon) {
            self.gaps.pop_front();
        }
    }

    /// Partial matches and keys held over all rules (memory accounting, benchmarks).
    #[must_use]
    pub fn held(&self) -> usize {
        self.rules
            .iter()
            .map(|rule| match &rule.pattern {
                Pattern::Count { windows, .. } => windows.open_keys(),
                Pattern::Sequence { held, .. } => *held,
                Pattern::Absence { pending, .. } => pending.len(),
            })
            .sum()
    }
}

/// Whether a gap overlaps `from_ns ..= to_ns`.
fn verdict(gaps: &VecDeque<(u64, u64)>, from_ns: u64, to_ns: u64) -> Verdict {
    if gaps.iter().any(|(lost_from, lost_to)| *lost_from <= to_ns && *lost_to >= from_ns) {
        Verdict::Gapped
    } else {
        Verdict::Complete
    }
}

/// Feeds one event to one rule (its key is read only when a condition holds); a completed
/// pattern gives its key, trigger event, the matched ids and the start of the matched span.
/// `bounds`: keys pending (absence) and partial matches (sequence) the rule may hold.
#[expect(clippy::too_many_lines, reason = "one short arm per pattern, over the same state")]
fn step(
    rule: &mut Rule,
    event: &SemanticEvent,
    time: u64,
    (max_keys, max_partials): (usize, usize),
) -> Option<(Key, SemanticEvent, Vec<u64>, u64)> {
    let counters = &rule.counters;
    let key_field = rule.key;
    match &mut rule.pattern {
        Pattern::Count { condition, at_least, distinct, windows } => {
            if !condition.matches(event) {
                return None;
            }
            let key = key_of(key_field, event)?;
            add(&counters.matches, 1);
            let (at_least, distinct) = (*at_least, *distinct);
            let path = if distinct { Some(path_of(event)?) } else { None };
            // The latest ids, up to the threshold or MAX_LINKS, allocated once per key.
            let links_held = usize::try_from(at_least).unwrap_or(usize::MAX).min(MAX_LINKS);
            let fired = std::cell::Cell::new(false);
            let links = windows.add(
                &key,
                time,
                |tally| {
                    match path {
                        Some(path) => {
                            let paths = tally.paths.get_or_insert_default();
                            if paths.len() < usize::try_from(at_least).unwrap_or(usize::MAX)
                                && !paths.contains(path)
                            {
                                paths.insert(path.into());
                                tally.count += 1;
                            }
                        }
                        None => tally.count += 1,
                    }
                    fired.set(fired.get() || (tally.count >= at_least && !tally.fired));
                },
                |latest| {
                    if latest.len() == links_held {
                        latest.pop_front();
                    } else if latest.capacity() == 0 {
                        latest.reserve_exact(links_held);
                    }
                    latest.push_back(event.event_id);
                    fired.get().then(|| latest.iter().copied().collect::<Vec<u64>>())
                },
            )??;
            // Every window holding this event has seen the detection: none fires again for it.
            let evicted = windows.evicted;
            windows.add(&key, time, |tally| tally.fired = true, |_| ());
            windows.evicted = evicted;
            Some((key, event.clone(), links, time.saturating_sub(rule.within_ns)))
        }
        Pattern::Sequence { steps, captures, advancing, partials, deadlines, held } => {
            let advances =
                *held > 0 && advancing.as_ref().is_none_or(|types| types.contains(&event.event_type));
            let starts = steps[0](event, &[]);
            if !advances && !starts {
                return None;
            }
            let key = key_of(key_field, event)?;
            let mut complete = None;
            if let Some(list) = partials.get_mut(&key).filter(|_| advances) {
                let mut index = 0;
                while index < list.len() {
                    let partial = &mut list[index];
                    let next = partial.ids.len();
                    if partial.deadline >= time && steps[next](event, &partial.kept) {
                        add(&counters.matches, 1);
                        partial.ids.push(event.event_id);
                        if partial.ids.len() == steps.len() {
                            complete = Some(list.remove(index));
                            *held -= 1;
                            break;
                        }
                        partial.kept.push(captures.keep(next, event));
                    }
                    index += 1;
                }
            }
            if let Some(done) = complete {
                return Some((key, event.clone(), done.ids, done.first_ns));
            }
            if starts {
                add(&counters.matches, 1);
                if *held >= max_partials {
                    add(&counters.evictions, 1);
                    return None;
                }
                let list = partials.entry(key.clone()).or_default();
                if list.len() == MAX_PARTIALS_PER_KEY {
                    list.remove(0);
                    add(&counters.evictions, 1);
                } else {
                    *held += 1;
                }
                let deadline = time.saturating_add(rule.within_ns);
                list.push(Partial {
                    ids: vec![event.event_id],
                    kept: vec![captures.keep(0, event)],
                    first_ns: time,
                    deadline,
                });
                deadlines.push_back((deadline, key));
            }
            None
        }
        Pattern::Absence { first, then, pending, deadlines } => {
            if then.matches(event) {
                if pending.remove(&key_of(key_field, event)?).is_some() {
                    add(&counters.matches, 1);
                }
            } else if first.matches(event) {
                let key = key_of(key_field, event)?;
                add(&counters.matches, 1);
                if let Some(waiting) = pending.get_mut(&key) {
                    if waiting.links.len() < MAX_LINKS {
                        waiting.links.push(event.event_id);
                    }
                } else if pending.len() >= max_keys {
                    add(&counters.evictions, 1);
                } else {
                    let deadline = time.saturating_add(rule.within_ns);
                    pending.insert(
                        key.clone(),
                        Pending { started: Started::of(event), links: vec![event.event_id], deadline },
                    );
                    deadlines.push_back((deadline, key));
                }
            }
            None
        }
    }
}

/// The detection event: an `ObservabilityAlertTriggered` derived from the trigger, subtype
/// `rule:NAME`, linked to the matched events, with the rule, key and verdict in its parameters.
fn detection(
    index: usize,
    rule: &Rule,
    key: &Key,
    trigger: &SemanticEvent,
    links: Vec<u64>,
    verdict: Verdict,
    act: bool,
) -> Detection {
    add(&rule.counters.detections, 1);
    if verdict == Verdict::Gapped {
        add(&rule.counters.gapped, 1);
    }
    let mut event = trigger.derive_own(EventType::ObservabilityAlertTriggered);
    event.event_subtype = format!("rule:{}", rule.name);
    event.priority = Priority::High;
    #[expect(clippy::cast_precision_loss, reason = "a count shown as a metric value")]
    let matched = links.len() as f64;
    event.causality_links = links;
    event.context.gap = None;
    event.context.observability = Some(ObservabilityContext {
        metric_name: "rule_detection".to_owned(),
        metric_value: Some(matched),
        metric_unit: None,
        service_name: "vexevent".to_owned(),
        operation_name: rule.name.clone(),
    });
    let parameters = &mut event.context.parameters;
    parameters.insert("rule".into(), rule.name.clone());
    parameters.insert("pattern".into(), rule.kind.name().into());
    parameters.insert("key".into(), key.to_string());
    parameters.insert("verdict".into(), verdict.name().into());
    parameters.insert("trigger".into(), trigger.event_type.name().into());
    Detection { rule: index, verdict, act, event }
}
