//! The route stage: named routes (a compiled match expression -> targets) decide which outputs
//! each event goes to. Every matching route contributes its targets (each output gets an event at
//! most once); an event no route matches goes to the `unmatched` outputs, or is counted as
//! unrouted. A route sends to all its targets, or balances over them (round robin, or by a key
//! such as the path so that one file's events stay on one target), and with failover skips
//! targets that are down. Targets are output indices: the caller owns the outputs.

mod config;
mod stage;

pub use config::{Outputs, OutputsError, RouteConfig, RoutingSection, outputs};
pub use stage::RouteStage;

use std::hash::{BuildHasher, Hash, Hasher};

use serde::Deserialize;

use crate::{
    event::{PathBytes, SemanticEvent},
    expr::{Filter, FilterError, Macros},
};

/// How a route spreads events over its targets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Balance {
    /// Every target gets every event.
    #[default]
    All,
    /// One target per event, in turn.
    RoundRobin,
    /// One target per event, chosen by a hash of `key`: the same key always reaches the same
    /// (healthy) target.
    Key,
}

/// What a `Balance::Key` route hashes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BalanceKey {
    /// The file's path.
    #[default]
    Path,
    /// The process id.
    Pid,
    /// The task name.
    Comm,
    /// The event type.
    Type,
}

/// A route as configured, its targets resolved to output indices.
#[derive(Clone, Debug)]
pub struct RouteSpec {
    pub name: String,
    /// Filter expression an event must match.
    pub match_expr: String,
    pub targets: Vec<usize>,
    pub balance: Balance,
    pub key: BalanceKey,
    /// Skip targets that are down (to the next one in order); when all are down the balanced
    /// choice keeps the event queued.
    pub failover: bool,
}

impl RouteSpec {
    /// Compiles the route's match expression (named `routes.NAME` in errors).
    ///
    /// # Errors
    /// When the expression does not parse or compile.
    pub fn compile(&self, macros: &Macros) -> Result<Filter, FilterError> {
        Filter::new(&format!("routes.{}", self.name), &self.match_expr, macros)
    }
}

struct Route {
    name: String,
    filter: Filter,
    targets: Vec<usize>,
    balance: Balance,
    key: BalanceKey,
    failover: bool,
    next: usize,
    matched: u64,
}

/// Compiled routes.
pub struct Router {
    routes: Vec<Route>,
    unmatched: Vec<usize>,
    outputs: usize,
    /// Events no route matched and no unmatched output took.
    unrouted: u64,
}

impl Router {
    /// Compiles the routes (with the filter macros) for `outputs` outputs.
    ///
    /// # Errors
    /// The first route whose expression does not parse or compile.
    pub fn new(
        routes: &[RouteSpec],
        unmatched: Vec<usize>,
        outputs: usize,
        macros: &Macros,
    ) -> Result<Self, FilterError> {
        let filters = routes.iter().map(|spec| spec.compile(macros)).collect::<Result<_, _>>()?;
        Ok(Self::compiled(routes, filters, unmatched, outputs))
    }

    /// The routes with their expressions already compiled (`filters[i]` is `routes[i]`'s).
    #[must_use]
    pub fn compiled(
        routes: &[RouteSpec],
        filters: Vec<Filter>,
        unmatched: Vec<usize>,
        outputs: usize,
    ) -> Self {
        let routes = routes
            .iter()
            .zip(filters)
            .map(|(spec, filter)| Route {
                name: spec.name.clone(),
                filter,
                targets: spec.targets.clone(),
                balance: spec.balance,
                key: spec.key,
                failover: spec.failover,
                next: 0,
                matched: 0,
            })
            .collect();
        Self { routes, unmatched, outputs, unrouted: 0 }
    }

    /// The outputs `event` goes to, each once, in `out` (cleared first). `up` says whether an
    /// output is currently delivering (for failover).
    pub fn route(&mut self, event: &SemanticEvent, up: &dyn Fn(usize) -> bool, out: &mut Vec<usize>) {
        out.clear();
        // A handful of targets per event: a linear check beats any set.
        let add = |target: usize, out: &mut Vec<usize>| {
            if target < self.outputs && !out.contains(&target) {
                out.push(target);
            }
        };
        let mut any = false;
        for route in &mut self.routes {
            if !route.filter.matches(event) || route.targets.is_empty() {
                continue;
            }
            any = true;
            route.matched += 1;
            match route.balance {
                Balance::All if route.failover => {
                    // Failover among "all" targets: the first one that is up (the primary,
                    // then its standbys).
                    let target = route.targets.iter().copied().find(|&t| up(t)).unwrap_or(route.targets[0]);
                    add(target, out);
                }
                Balance::All => route.targets.iter().for_each(|&t| add(t, out)),
                Balance::RoundRobin | Balance::Key => {
                    let start = if route.balance == Balance::RoundRobin {
                        route.next = route.next.wrapping_add(1);
                        route.next
                    } else {
                        key_hash(event, route.key)
                    } % route.targets.len();
                    let n = route.targets.len();
                    let pick = (0..n)
                        .map(|i| route.targets[(start + i) % n])
                        .find(|&t| !route.failover || up(t))
                        .unwrap_or(route.targets[start]);
                    add(pick, out);
                }
            }
        }
        if !any {
            for &target in &self.unmatched {
                add(target, out);
            }
            if self.unmatched.is_empty() {
                self.unrouted += 1;
            }
        }
    }

    /// Events each route matched since the last call, by route name (for the stats).
    pub fn take_matched(&mut self) -> Vec<(&str, u64)> {
        self.routes.iter_mut().map(|r| (r.name.as_str(), std::mem::take(&mut r.matched))).collect()
    }

    /// Events that went nowhere (no route matched, no unmatched output), and resets the count.
    pub fn take_unrouted(&mut self) -> u64 {
        std::mem::take(&mut self.unrouted)
    }
}

/// A stable hash of the event's balance key (stable within one run).
fn key_hash(event: &SemanticEvent, key: BalanceKey) -> usize {
    let mut hasher =
        std::hash::BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default().build_hasher();
    match key {
        BalanceKey::Path => {
            event
                .context
                .filesystem
                .as_ref()
                .and_then(|fs| fs.path.as_ref())
                .map(PathBytes::as_bytes)
                .hash(&mut hasher);
        }
        BalanceKey::Pid => event.process.as_ref().map(|p| p.pid).hash(&mut hasher),
        BalanceKey::Comm => event.process.as_ref().map(|p| p.comm.as_bytes()).hash(&mut hasher),
        BalanceKey::Type => event.event_type_code.hash(&mut hasher),
    }
    // Truncation is fine: only the remainder by the target count matters.
    #[expect(clippy::cast_possible_truncation, reason = "a hash, reduced modulo the target count")]
    let hash = hasher.finish() as usize;
    hash
}

#[cfg(test)]
mod tests;
