//! The stage graph of `vexevent run`: which stages run, in which order, built from the settings.
//! Adding a stage is one line in [`STAGES`] and one in [`build_pipeline`].

use std::sync::Arc;

use super::{AppError, Routing};
use crate::{
    config::Settings,
    correlate::CorrelateStage,
    filter::FilterStage,
    http::{Broadcaster, StreamStage},
    pipeline::{Pipeline, Sequencer, Source},
    react::ReactStage,
    route::RouteStage,
    sinks::Sinks,
    telemetry::Counters,
};

/// The stages after the source, in order (`react` only with rules, `stream` only with a stream
/// server).
pub const STAGES: [&str; 6] = ["correlate", "react", "filter", "sequence", "route", "stream"];

/// The stage graph the settings give, from the source to the last stage.
#[must_use]
pub fn stage_graph(source: &str, settings: &Settings) -> Vec<String> {
    std::iter::once(source)
        .chain(STAGES.into_iter().filter(|&stage| stage != "stream" || settings.stream.addr.is_some()))
        .filter(|&stage| stage != "react" || !settings.react.rules.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The pipeline `vexevent run` runs: `source`, then correlate, react (with rules), filter,
/// sequence, route (to `sinks`) and, with a stream server, the live stream. The replay test and the stages benchmark
/// build theirs here too.
///
/// # Errors
/// A filter or route that does not compile (validated settings compile).
pub fn build_pipeline(
    source: Box<dyn Source>,
    settings: &Settings,
    sinks: Sinks,
    stream: Option<Arc<Broadcaster>>,
    counters: &Arc<Counters>,
) -> Result<Pipeline, AppError> {
    let Routing { filter, router, .. } = Routing::new(settings).map_err(|e| AppError::Filter(Box::new(e)))?;
    let pipeline = Pipeline::new(source, Arc::clone(counters))
        .then(Box::new(CorrelateStage::new(settings.correlate, Arc::clone(counters))));
    let pipeline = if settings.react.rules.is_empty() {
        pipeline
    } else {
        pipeline.then(Box::new(ReactStage::new(&settings.react, counters)?))
    };
    let pipeline = pipeline
        .then(Box::new(FilterStage::new(filter, Arc::clone(counters))))
        .then(Box::new(Sequencer::default()))
        .then(Box::new(RouteStage::new(router, sinks, Arc::clone(counters))));
    Ok(match stream {
        Some(broadcaster) => pipeline.then(Box::new(StreamStage::new(broadcaster, Arc::clone(counters)))),
        None => pipeline,
    })
}
