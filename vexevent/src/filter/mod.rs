//! The filter stage: filter expressions (the `expr` language) chained (all, any, first match)
//! keep the events the user asked for and count the rest; the part of a filter the kernel can
//! evaluate is pushed into the probes' settings (`pushdown`). Owns `[filter]`.

mod pushdown;

use std::{collections::BTreeMap, sync::Arc};

pub use pushdown::{KernelPart, pushdown};
use serde::Deserialize;

use crate::{
    expr::{ChainMode, Filter, FilterChain, FilterError, Macros, parse_macros},
    pipeline::{EventBatch, Stage, Update, settings_for},
    telemetry::{Counters, add},
};

/// `[filter]`: which events reach the outputs (see README, "Filters").
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FilterConfig {
    /// How the expressions combine: `all`, `any` or `first-match`.
    pub mode: ChainMode,
    /// Filter expressions; none means every event passes.
    pub expressions: Vec<String>,
    /// Named expressions usable as `@name`.
    pub macros: BTreeMap<String, String>,
}

impl FilterConfig {
    /// Parses the macros and compiles every expression once: the chain when all compile, and
    /// every macro and expression that does not (with its place).
    #[must_use]
    pub fn compile(&self) -> (Option<FilterChain>, Macros, Vec<FilterError>) {
        let mut problems = Vec::new();
        let mut macros = Macros::new();
        for (name, text) in &self.macros {
            match parse_macros(&BTreeMap::from([(name.clone(), text.clone())])) {
                Ok(parsed) => macros.extend(parsed),
                Err(error) => problems.push(error),
            }
        }
        let mut filters = Vec::with_capacity(self.expressions.len());
        for (i, text) in self.expressions.iter().enumerate() {
            match Filter::new(&format!("filter.expressions[{i}]"), text, &macros) {
                Ok(filter) => filters.push(filter),
                Err(error) => problems.push(error),
            }
        }
        let chain = problems.is_empty().then_some(FilterChain { mode: self.mode, filters });
        (chain, macros, problems)
    }
}

/// The filter stage: drops the events its chain does not pass (`filtered_expression`). A reload
/// sends a new [`FilterChain`].
pub struct FilterStage {
    chain: FilterChain,
    counters: Arc<Counters>,
}

impl FilterStage {
    #[must_use]
    pub fn new(chain: FilterChain, counters: Arc<Counters>) -> Self {
        Self { chain, counters }
    }
}

impl Stage for FilterStage {
    fn name(&self) -> &'static str {
        "filter"
    }

    fn process(&mut self, batch: &mut EventBatch) {
        if self.chain.is_empty() {
            return;
        }
        let before = batch.len();
        batch.events.retain(|event| self.chain.check(event).is_some());
        add(&self.counters.filtered_expression, (before - batch.len()) as u64);
    }

    fn reconfigure(&mut self, update: Update) {
        if let Some(chain) = settings_for::<FilterChain>("filter", update) {
            self.chain = chain;
        }
    }
}

#[cfg(test)]
mod tests;
