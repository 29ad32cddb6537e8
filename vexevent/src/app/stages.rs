//! The stage graph of `vexevent run`: which stages run, in which order, and how each is built
//! from the settings. Adding a stage is one entry in [`STAGES`].

use std::sync::Arc;

use super::AppError;

use crate::{
    analyse::AnalyseStage,
    config::{Compiled, Settings},
    correlate::CorrelateStage,
    event::Run,
    expr::FilterChain,
    filter::FilterStage,
    http::{Broadcaster, StreamStage},
    pipeline::{Pipeline, Sequencer, Source, Stage},
    react::ReactStage,
    replicate::ReplicateStage,
    route::{RouteStage, Router},
    sinks::Sinks,
    telemetry::Counters,
};

/// What the stages are built from; a stage takes what only it uses.
struct Parts<'a> {
    settings: &'a Settings,
    run: &'a Run,
    counters: &'a Arc<Counters>,
    filter: Option<FilterChain>,
    router: Option<Router>,
    sinks: Option<Sinks>,
    stream: Option<Arc<Broadcaster>>,
}

type Built = Result<Box<dyn Stage>, AppError>;

/// One stage of the graph: its name, whether the settings ask for it, and how it is built.
pub struct StageEntry {
    pub name: &'static str,
    runs: fn(&Settings) -> bool,
    build: fn(&mut Parts<'_>) -> Built,
}

/// The stages after the source, in order. `react` (with rules) and `analyse` go before `filter`:
/// the events they derive (detections, anomalies, health alerts, windows) go through filter and
/// route like any event.
pub const STAGES: [StageEntry; 8] = [
    StageEntry {
        name: "correlate",
        runs: |_| true,
        build: |p| Ok(Box::new(CorrelateStage::new(p.settings.correlate, Arc::clone(p.counters)))),
    },
    StageEntry {
        name: "react",
        runs: |settings| !settings.react.rules.is_empty(),
        build: |p| Ok(Box::new(ReactStage::new(&p.settings.react, p.run.clone(), p.counters)?)),
    },
    StageEntry {
        name: "analyse",
        runs: |settings| settings.analyse.enabled,
        build: |p| {
            Ok(Box::new(AnalyseStage::new(p.settings.analyse.clone(), p.run.clone(), Arc::clone(p.counters))))
        },
    },
    StageEntry {
        name: "filter",
        runs: |_| true,
        build: |p| {
            Ok(Box::new(FilterStage::new(
                p.filter.take().ok_or(AppError::Wiring("filter"))?,
                Arc::clone(p.counters),
            )))
        },
    },
    // With `[cluster]`, after filter (each node contributes what its filter keeps) and before
    // sequence: the stages after it see the cluster's committed events, every node's, in commit
    // order.
    StageEntry {
        name: "replicate",
        runs: |settings| settings.cluster.is_some(),
        build: |p| {
            let cluster = p.settings.cluster.as_ref().ok_or(AppError::Wiring("replicate"))?;
            Ok(Box::new(ReplicateStage::start(cluster, p.run, p.counters)?))
        },
    },
    StageEntry { name: "sequence", runs: |_| true, build: |_| Ok(Box::new(Sequencer::default())) },
    StageEntry {
        name: "route",
        runs: |_| true,
        build: |p| {
            let router = p.router.take().ok_or(AppError::Wiring("route"))?;
            let sinks = p.sinks.take().ok_or(AppError::Wiring("route"))?;
            Ok(Box::new(RouteStage::new(router, sinks, Arc::clone(p.counters))))
        },
    },
    StageEntry {
        name: "stream",
        runs: |settings| settings.stream.addr.is_some(),
        build: |p| {
            let broadcaster = p.stream.take().ok_or(AppError::Wiring("stream"))?;
            Ok(Box::new(StreamStage::new(broadcaster, Arc::clone(p.counters))))
        },
    },
];

/// The stage graph the settings give, from the source to the last stage (what
/// [`build_pipeline`] builds).
#[must_use]
pub fn stage_graph(source: &str, settings: &Settings) -> Vec<String> {
    std::iter::once(source)
        .chain(STAGES.iter().filter(|stage| (stage.runs)(settings)).map(|stage| stage.name))
        .map(str::to_owned)
        .collect()
}

/// The pipeline `vexevent run` runs: `source`, then each of [`STAGES`] the settings ask for, the
/// filter and routes as compiled when the configuration was built, routing to `sinks`, the live
/// stream to `stream`'s subscribers. The replay test and the stages benchmark build theirs here
/// too.
///
/// # Errors
/// When a stage cannot start (the react stage's audit log cannot be opened; the replicate
/// stage's log or address; the stream stage without `stream`).
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
    let mut parts = Parts {
        settings,
        run,
        counters,
        filter: Some(filter),
        router: Some(router),
        sinks: Some(sinks),
        stream,
    };
    STAGES
        .iter()
        .filter(|stage| (stage.runs)(settings))
        .try_fold(Pipeline::new(source, Arc::clone(counters)), |pipeline, stage| {
            Ok(pipeline.then((stage.build)(&mut parts)?))
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
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "a secret of a one-member cluster").unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        let every_stage = format!(
            r#"
[sinks.n]
type = "null"
[stream]
addr = "127.0.0.1:0"
[analyse]
enabled = true
[react]
audit_log = "{}"
[[rules]]
name = "w"
kind = "count"
match = "type == FilesystemWrite"
at_least = 1
within_ms = 1
key = "path"
[cluster]
node_id = 1
listen = "127.0.0.1:0"
data_dir = "{}"
secret_file = "{}"
[cluster.peers]
1 = "127.0.0.1:0"
"#,
            dir.path().join("audit.log").display(),
            dir.path().join("cluster").display(),
            secret.display(),
        );
        for (text, stages) in [("[sinks.n]\ntype = \"null\"", 4), (every_stage.as_str(), STAGES.len())] {
            let (settings, compiled) = Config::from_toml(text).unwrap().build().unwrap();
            let counters = Arc::new(Counters::default());
            let sinks = Sinks::start(&settings.outputs.sinks, &counters).unwrap();
            let run = Run::new(settings.node.clone());
            let stream = settings.stream.addr.map(|_| Arc::new(Broadcaster::default()));
            let pipeline =
                build_pipeline(Box::new(Nothing), &settings, compiled, &run, sinks, stream, &counters)
                    .unwrap();
            assert_eq!(pipeline.graph(), stage_graph("kernel", &settings));
            assert_eq!(pipeline.graph().len(), 1 + stages, "{:?}", pipeline.graph());
            pipeline.run(&crossbeam_channel::never());
        }
    }

    #[test]
    fn a_stage_without_what_it_needs_is_refused() {
        let (settings, compiled) =
            Config::from_toml("[sinks.n]\ntype = \"null\"\n[stream]\naddr = \"127.0.0.1:0\"")
                .unwrap()
                .build()
                .unwrap();
        let counters = Arc::new(Counters::default());
        let sinks = Sinks::start(&settings.outputs.sinks, &counters).unwrap();
        let run = Run::new(settings.node.clone());
        let error = build_pipeline(Box::new(Nothing), &settings, compiled, &run, sinks, None, &counters)
            .err()
            .unwrap();
        assert!(matches!(error, AppError::Wiring("stream")), "{error}");
    }
}
