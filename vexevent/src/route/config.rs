//! `[[routes]]` and `[routing]`: the routes to the named outputs and where events no route
//! matches go, resolved against the sinks (`[sinks.NAME]`, or `[output]` when there are none).

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

use super::{Balance, BalanceKey, RouteSpec};
use crate::sinks::{DEFAULT_SINK, OutputConfig, SinkConfig, SinkConfigError, SinkSpec, default_sink};

/// What is wrong with the outputs and routes.
#[derive(Debug, thiserror::Error)]
pub enum OutputsError {
    #[error(transparent)]
    Sink(#[from] SinkConfigError),
    #[error("{what}: {message}")]
    Route { what: String, message: String },
    #[error("{what}: {sink:?} is not a configured sink; sinks: {known}")]
    UnknownSink { what: String, sink: String, known: String },
    #[error(
        "output.path (or --output) is set while [sinks] are configured; add the file as a sink: [sinks.NAME] type = \"file\", path = ..."
    )]
    OutputWithSinks,
}

/// `[[routes]]`: a match expression and the sinks its events go to.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub name: String,
    /// Filter expression (macros of `[filter.macros]` apply).
    #[serde(rename = "match")]
    pub match_expr: String,
    /// Sink names.
    pub targets: Vec<String>,
    /// `all` (default), `round-robin` or `key`.
    #[serde(default)]
    pub balance: Balance,
    /// With `balance = "key"`: `path` (default), `pid`, `comm` or `type`.
    pub key: Option<BalanceKey>,
    /// Skip targets that are down.
    #[serde(default)]
    pub failover: bool,
}

/// `[routing]`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingSection {
    /// Sinks for events no route matches. Default: every sink when there are no routes, none
    /// (events counted as unrouted) when there are.
    pub unmatched: Option<Vec<String>>,
}

/// The resolved outputs and routes.
#[derive(Clone, Debug)]
pub struct Outputs {
    pub sinks: Vec<SinkSpec>,
    pub routes: Vec<RouteSpec>,
    pub unmatched: Vec<usize>,
}

/// Resolves sinks, routes and the unmatched outputs; collects every problem.
///
/// # Errors
/// Every problem found, in configuration order.
pub fn outputs(
    output: &OutputConfig,
    sinks: &BTreeMap<String, SinkConfig>,
    routes: &[RouteConfig],
    routing: &RoutingSection,
) -> Result<Outputs, Vec<OutputsError>> {
    let mut problems = Vec::new();
    let specs: Vec<SinkSpec> = if sinks.is_empty() {
        default_sink(output)
            .map_err(|errors| problems.extend(errors.into_iter().map(OutputsError::Sink)))
            .into_iter()
            .collect()
    } else {
        if output.path.as_ref().is_some_and(|p| p.as_os_str() != "-") {
            problems.push(OutputsError::OutputWithSinks);
        }
        sinks
            .iter()
            .filter_map(|(name, sink)| {
                sink.spec(name)
                    .map_err(|errors| problems.extend(errors.into_iter().map(OutputsError::Sink)))
                    .ok()
            })
            .collect()
    };
    let names: Vec<&str> =
        sinks.keys().map(String::as_str).chain(sinks.is_empty().then_some(DEFAULT_SINK)).collect();
    let resolve = |what: String, targets: &[String], problems: &mut Vec<OutputsError>| -> Vec<usize> {
        targets
            .iter()
            .filter_map(|target| {
                let found = names.iter().position(|n| n == target);
                if found.is_none() {
                    problems.push(OutputsError::UnknownSink {
                        what: what.clone(),
                        sink: target.clone(),
                        known: names.join(", "),
                    });
                }
                found
            })
            .collect()
    };
    let mut seen = BTreeSet::new();
    let mut route_specs = Vec::new();
    for (i, route) in routes.iter().enumerate() {
        let what = format!("routes[{i}] ({})", route.name);
        if !seen.insert(route.name.as_str()) {
            problems
                .push(OutputsError::Route { what: what.clone(), message: "the name is used twice".into() });
        }
        if route.targets.is_empty() {
            problems.push(OutputsError::Route { what: what.clone(), message: "`targets` is empty".into() });
        }
        if route.key.is_some() && route.balance != Balance::Key {
            problems.push(OutputsError::Route {
                what: what.clone(),
                message: "`key` only applies with balance = \"key\"".into(),
            });
        }
        let targets = resolve(what, &route.targets, &mut problems);
        route_specs.push(RouteSpec {
            name: route.name.clone(),
            match_expr: route.match_expr.clone(),
            targets,
            balance: route.balance,
            key: route.key.unwrap_or_default(),
            failover: route.failover,
        });
    }
    let unmatched = match &routing.unmatched {
        Some(names) => resolve("routing.unmatched".into(), names, &mut problems),
        None if routes.is_empty() => (0..specs.len()).collect(),
        None => Vec::new(),
    };
    if problems.is_empty() {
        Ok(Outputs { sinks: specs, routes: route_specs, unmatched })
    } else {
        Err(problems)
    }
}
