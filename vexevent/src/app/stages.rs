//! The stage graph of `vexevent run`: which stages run, in which order, built from the settings.
//! Adding a stage is one line in [`STAGES`] and one in [`build_pipeline`].

use std::sync::Arc;

use super::AppError;

use crate::{
    analyse::AnalyseStage,
    config::{Compiled, Settings},
    correlate::CorrelateStage,
    event::Run,
    filter::FilterStage,
    http::{Broadcaster, StreamStage},
    pipeline::{Pipeline, Sequencer, Source},
    react::ReactStage,
    replicate::ReplicateStage,
    route::RouteStage,
    sinks::Sinks,
    telemetry::Counters,
};

/// The stages after the source, in order (`react` only with rules, `analyse` only when enabled,
/// `replicate` only with `[cluster]`, `stream` only with a stream server).
pub const STAGES: [&str; 8] =
    ["correlate", "react", "analyse", "filter", "replicate", "sequence", "route", "stream"];

/// The stage graph the settings give, from the source to the last stage.
#[must_use]
pub fn stage_graph(source: &str, settings: &Settings) -> Vec<String> {
    std::iter::once(source)
        .chain(STAGES.into_iter().filter(|&stage| stage != "stream" || settings.stream.addr.is_some()))
        .filter(|&stage| stage != "react" || !settings.react.rules.is_empty())
        .filter(|&stage| stage != "analyse" || settings.analyse.enabled)
        .filter(|&stage| stage != "replicate" || settings.cluster.is_some())
        .map(str::to_owned)
        .collect()
}

/// The pipeline `vexevent run` runs: `source`, then correlate, react (with rules), analyse (when
/// enabled), filter, replicate (with `[cluster]`), sequence, route (to `sinks`) and, with a
/// stream server, the live stream; the
/// filter and routes as compiled when the configuration was built. The replay test and the stages
/// benchmark build theirs here too.
///
/// # Errors
/// When the react stage cannot start (its audit log cannot be opened), or the replicate stage
/// (its log, its address).
pub fn build_pipeline(
    source: Box<dyn Source>,
    settings: &Settings,
    compiled: Compiled,
    run: &Run,
    sinks: Sinks,
    stream: Option<Arc<Broadcaster>>,
    counters: &Arc<Counters>,
) -> Result<Pipeline, AppError> {
    let Compiled { filter, router } = compiled;
    let pipeline = Pipeline::new(source, Arc::clone(counters))
        .then(Box::new(CorrelateStage::new(settings.correlate, Arc::clone(counters))));
    // Before filter: the events they derive (detections, anomalies, health alerts, windows) go
    // through filter and route like any event.
    let pipeline = if settings.react.rules.is_empty() {
        pipeline
    } else {
        pipeline.then(Box::new(ReactStage::new(&settings.react, run.clone(), counters)?))
    };
    let pipeline = if settings.analyse.enabled {
        pipeline.then(Box::new(AnalyseStage::new(
            settings.analyse.clone(),
            run.clone(),
            Arc::clone(counters),
        )))
    } else {
        pipeline
    };
    let pipeline = pipeline.then(Box::new(FilterStage::new(filter, Arc::clone(counters))));
    // After filter (each node contributes what its filter keeps), before sequence: the stages
    // after it see the cluster's committed events, every node's, in commit order.
    let pipeline = match &settings.cluster {
        Some(cluster) => pipeline.then(Box::new(ReplicateStage::start(cluster, run, counters)?)),
        None => pipeline,
    };
    let pipeline = pipeline.then(Box::new(Sequencer::default())).then(Box::new(RouteStage::new(
        router,
        sinks,
        Arc::clone(counters),
    )));
    Ok(match stream {
        Some(broadcaster) => pipeline.then(Box::new(StreamStage::new(broadcaster, Arc::clone(counters)))),
        None => pipeline,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        config::Config,
        pipeline::{EventBatch, Poll},
    };

    struct Nothing;

    impl Source for Nothing {
        fn name(&self) -> &'static str {
            "kernel"
        }

        fn next(&mut self, _: std::time::Duration, _: &mut EventBatch) -> Poll {
            Poll::Ended
        }
    }

    #[test]
    fn the_stage_graph_check_config_prints_is_the_pipeline_run_builds() {
        let (settings, compiled) = Config::from_toml("[sinks.n]\ntype = \"null\"").unwrap().build().unwrap();
        let counters = Arc::new(Counters::default());
        let sinks = Sinks::start(&settings.outputs.sinks, &counters).unwrap();
        let run = Run::new(settings.node.clone());
        let pipeline =
            build_pipeline(Box::new(Nothing), &settings, compiled, &run, sinks, None, &counters).unwrap();
        assert_eq!(pipeline.graph(), stage_graph("kernel", &settings));
        pipeline.run(&crossbeam_channel::never());
    }
}
