//! Counters the `react` stage keeps for every rule, under the rule's name: events matched,
//! detections, evictions of state over the rule's bound, and actions by outcome; and the audit
//! log's chain head (written to the stats file, so a truncated audit log is detected).

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use serde::{Deserialize, Serialize};

/// One rule's counters.
#[derive(Debug, Default)]
pub struct RuleCounters {
    /// Events that matched one of the rule's conditions.
    pub matches: AtomicU64,
    /// Detections the rule made.
    pub detections: AtomicU64,
    /// Detections marked `gapped` (records were lost inside the rule's window).
    pub gapped: AtomicU64,
    /// Keys, windows or partial matches dropped because the rule held its bound.
    pub evictions: AtomicU64,
    /// Actions by outcome (`done`, `dry_run`, `failed`, `rate_limited`, ...).
    actions: Mutex<BTreeMap<&'static str, u64>>,
}

impl RuleCounters {
    /// Counts one action that ended with `outcome`.
    pub fn action(&self, outcome: &'static str) {
        *super::lock(&self.actions).entry(outcome).or_default() += 1;
    }
}

/// One rule's counters at an instant.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RuleSummary {
    pub matches: u64,
    pub detections: u64,
    pub gapped: u64,
    pub evictions: u64,
    /// Actions by outcome.
    pub actions: BTreeMap<String, u64>,
}

/// The last line of the audit log: its sequence number and hash.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct AuditHead {
    pub file: String,
    pub seq: u64,
    pub hash: String,
}

/// Every rule's counters, by name, and the audit chain's head.
#[derive(Debug, Default)]
pub struct RuleTable {
    rules: Mutex<Vec<(String, Arc<RuleCounters>)>>,
    head: Mutex<Option<AuditHead>>,
}

impl RuleTable {
    /// Counters for rule `name` (a rule registered again keeps its counters).
    pub fn register(&self, name: &str) -> Arc<RuleCounters> {
        let mut rules = super::lock(&self.rules);
        if let Some((_, counters)) = rules.iter().find(|(n, _)| n == name) {
            return Arc::clone(counters);
        }
        let counters = Arc::new(RuleCounters::default());
        rules.push((name.to_owned(), Arc::clone(&counters)));
        counters
    }

    /// Every rule's counters, by name.
    #[must_use]
    pub fn summaries(&self) -> BTreeMap<String, RuleSummary> {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        super::lock(&self.rules)
            .iter()
            .map(|(name, c)| {
                let summary = RuleSummary {
                    matches: get(&c.matches),
                    detections: get(&c.detections),
                    gapped: get(&c.gapped),
                    evictions: get(&c.evictions),
                    actions: super::lock(&c.actions).iter().map(|(k, v)| ((*k).to_owned(), *v)).collect(),
                };
                (name.clone(), summary)
            })
            .collect()
    }

    /// Records the audit log's new head.
    pub fn set_audit_head(&self, head: AuditHead) {
        *super::lock(&self.head) = Some(head);
    }

    #[must_use]
    pub fn audit_head(&self) -> Option<AuditHead> {
        super::lock(&self.head).clone()
    }
}
