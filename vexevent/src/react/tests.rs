//! The rule engine on synthetic events: each pattern, keys, gaps, chaining, bounds, validation,
//! and replay of a JSON Lines log.

use std::sync::Arc;

use super::*;
use crate::{
    config::Config,
    event::{GapContext, PathBytes},
    telemetry::RuleTable,
};

const MS: u64 = 1_000_000;

fn at(mut event: SemanticEvent, ms: u64) -> SemanticEvent {
    event.timestamp.monotonic_ns = ms * MS;
    event
}

fn rename(from: &str, to: &str, pid: u32, ms: u64) -> SemanticEvent {
    let mut event = SemanticEvent::sample(EventType::FilesystemRename, from, pid, "locker", true);
    event.context.filesystem.as_mut().unwrap().target_path = Some(PathBytes::from(to));
    at(event, ms)
}

fn create(path: &str, pid: u32, ms: u64) -> SemanticEvent {
    at(SemanticEvent::sample(EventType::FilesystemCreate, path, pid, "writer", true), ms)
}

fn gap(from_ms: u64, to_ms: u64) -> SemanticEvent {
    let mut event = SemanticEvent::sample(EventType::ObservabilityAlertTriggered, "", 0, "", true);
    event.event_subtype = "records_lost".into();
    event.process = None;
    event.context.filesystem = None;
    event.context.gap = Some(GapContext {
        count: 5,
        lost_from_ns: from_ms * MS,
        lost_to_ns: to_ms * MS,
        ..GapContext::default()
    });
    at(event, to_ms)
}

fn settings(rules: &str) -> ReactSettings {
    let config = Config::from_toml(rules).unwrap();
    let problems: Vec<String> = config.problems().iter().map(ToString::to_string).collect();
    assert!(problems.is_empty(), "{problems:#?}");
    config.react_settings().unwrap()
}

fn engine(rules: &str) -> (Engine, RuleTable) {
    let table = RuleTable::default();
    (Engine::new(&settings(rules), &table).unwrap(), table)
}

/// Feeds each event with the watermark at its own time, then `end_ms`.
fn run(engine: &mut Engine, events: &[SemanticEvent], end_ms: u64) -> Vec<Detection> {
    let mut out = Vec::new();
    for event in events {
        engine.process(std::slice::from_ref(event), event.timestamp.monotonic_ns, &mut out);
    }
    engine.advance(end_ms * MS, &mut out);
    out
}

fn param<'a>(detection: &'a Detection, name: &str) -> &'a str {
    &detection.event.context.parameters[name]
}

/// The shared `locker` rule (tests/fixtures/rules), firing at 10 renames.
fn locker() -> String {
    include_str!("../../../tests/fixtures/rules/locker.toml").replace("at_least = 200", "at_least = 10")
}

#[test]
fn a_count_fires_once_per_burst_per_key_with_its_events_linked() {
    let (mut engine, table) = engine(&locker());
    let mut events: Vec<SemanticEvent> =
        (0..30).map(|i| rename(&format!("/d/{i}"), &format!("/d/{i}.locked"), 7, 100 + i)).collect();
    // Another process renames 9 files: under the threshold.
    events.extend((0..9).map(|i| rename(&format!("/e/{i}"), &format!("/e/{i}.locked"), 8, 200 + i)));
    // Renames to other names do not count.
    events.extend((0..20).map(|i| rename(&format!("/f/{i}"), &format!("/f/{i}.txt"), 8, 300 + i)));
    let out = run(&mut engine, &events, 5_000);
    assert_eq!(out.len(), 1, "one detection for the burst of pid 7");
    let detection = &out[0];
    assert_eq!(detection.event.event_type, EventType::ObservabilityAlertTriggered);
    assert_eq!(detection.event.event_subtype, "rule:locker");
    assert_eq!((param(detection, "key"), param(detection, "verdict")), ("7", "complete"));
    assert_eq!(detection.event.causality_links, events[..10].iter().map(|e| e.event_id).collect::<Vec<_>>());
    assert_eq!(
        detection.event.timestamp.monotonic_ns, events[9].timestamp.monotonic_ns,
        "at the 10th rename"
    );
    assert_eq!(detection.event.process.as_ref().unwrap().pid, 7);
    let summary = &table.summaries()["locker"];
    assert_eq!((summary.matches, summary.detections), (39, 1));
}

#[test]
fn a_distinct_count_counts_paths_not_events() {
    let (mut engine, _) = engine(
        r#"
[[rules]]
name = "mass-delete"
kind = "distinct"
match = "type == FilesystemDelete"
at_least = 5
within_ms = 1000
key = "uid"
"#,
    );
    let delete =
        |path: &str, ms| at(SemanticEvent::sample(EventType::FilesystemDelete, path, 3, "rm", true), ms);
    let same: Vec<SemanticEvent> = (0..20).map(|i| delete("/d/same", 10 + i)).collect();
    assert!(run(&mut engine, &same, 100).is_empty(), "one path deleted 20 times is not 5 paths");
    let many: Vec<SemanticEvent> = (0..5).map(|i| delete(&format!("/d/{i}"), 2_000 + i)).collect();
    assert_eq!(run(&mut engine, &many, 5_000).len(), 1);
}

#[test]
fn a_sequence_joins_steps_by_an_earlier_steps_field_within_its_window() {
    let (mut engine, _) = engine(
        &include_str!("../../../tests/fixtures/rules/replace-over.toml")
            .replace("within_ms = 5000", "within_ms = 100"),
    );
    let events = [
        create("/d/a.tmp", 5, 10),
        rename("/d/other.tmp", "/d/x", 5, 20), // not the created file
        rename("/d/a.tmp", "/d/a", 6, 30),     // another pid (another key)
        rename("/d/a.tmp", "/d/a", 5, 40),     // the match
        create("/d/b.tmp", 5, 50),
        rename("/d/b.tmp", "/d/b", 5, 500), // too late
    ];
    let out = run(&mut engine, &events, 1_000);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].event.causality_links, [events[0].event_id, events[3].event_id]);
    assert_eq!(engine.held(), 0, "expired partial matches are freed on the watermark");
}

const INDEX: &str = include_str!("../../../tests/fixtures/rules/index-upkeep.toml");

#[test]
fn an_absence_fires_when_the_watermark_passes_unless_followed_and_is_gapped_on_loss() {
    let (mut engine, table) = engine(INDEX);
    // /a: written, never rebuilt -> fires. /b: rebuilt in time -> nothing.
    let events = [create("/a/x.vec", 1, 0), create("/b/y.vec", 1, 10), create("/b/rebuilt", 1, 500)];
    let mut out = Vec::new();
    for event in &events {
        engine.process(std::slice::from_ref(event), event.timestamp.monotonic_ns, &mut out);
    }
    assert!(out.is_empty(), "nothing before the deadline");
    engine.advance(999 * MS, &mut out);
    assert!(out.is_empty(), "the deadline (1000 ms) is not passed yet");
    engine.advance(1_001 * MS, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!((param(&out[0], "key"), param(&out[0], "verdict")), ("/a", "complete"));
    assert!(out[0].act);
    assert_eq!(out[0].event.timestamp.monotonic_ns, 1_000 * MS, "stamped at its deadline");

    // Records lost inside the window: the absence is not proven.
    let events = [create("/c/z.vec", 1, 2_000), gap(2_300, 2_400)];
    let out = run(&mut engine, &events, 4_000);
    assert_eq!(out.len(), 1);
    assert_eq!(param(&out[0], "verdict"), "gapped");
    assert!(!out[0].act, "an absence never acts on a gap");
    assert_eq!(table.summaries()["index-upkeep"].gapped, 1);
}

#[test]
fn a_detection_is_an_event_other_rules_match() {
    let (mut engine, _) = engine(&format!(
        "{}
[[rules]]
name = \"repeat\"
kind = \"count\"
match = 'subtype == \"rule:locker\"'
at_least = 2
within_ms = 10000
key = \"none\"
",
        locker()
    ));
    let events: Vec<SemanticEvent> = (0..20)
        .map(|i| rename("/d/f", "/d/f.locked", 10 + u32::try_from(i / 10).unwrap(), 100 + i))
        .collect();
    let out = run(&mut engine, &events, 1_000);
    let names: Vec<&str> = out.iter().map(|d| d.event.event_subtype.as_str()).collect();
    assert_eq!(names, ["rule:locker", "rule:locker", "rule:repeat"]);
}

#[test]
fn exceptions_and_bounds_hold() {
    let (mut engine, table) =
        engine(&locker().replace("key = \"pid\"", "key = \"pid\"\nexcept = { comm = [\"locker\"] }"));
    let events: Vec<SemanticEvent> = (0..30).map(|i| rename("/d/f", "/d/f.locked", 7, 100 + i)).collect();
    assert!(run(&mut engine, &events, 1_000).is_empty(), "the excepted task never counts");
    assert_eq!(table.summaries()["locker"].matches, 0);

    let mut config = Config::from_toml(&locker()).unwrap();
    config.react.max_keys = 3;
    let table = RuleTable::default();
    let mut engine = Engine::new(&config.react_settings().unwrap(), &table).unwrap();
    let events: Vec<SemanticEvent> = (0..10).map(|pid| rename("/d/f", "/d/f.locked", pid, 2_000)).collect();
    run(&mut engine, &events, 2_100);
    // 7 keys over the bound, in each of the 4 sliding windows holding the event.
    assert_eq!(table.summaries()["locker"].evictions, 7 * 4);
}

#[test]
fn every_rule_problem_is_listed_with_its_place() {
    let config = Config::from_toml(
        r#"
[[rules]]
name = "a"
kind = "count"
match = "type =="
within_ms = 0
[[rules]]
name = "a"
kind = "sequence"
within_ms = 10
followed_by = "true"
steps = [{ name = "one", match = "path == two.path" }, { name = "two", match = "bytes == one.path" }]
actions = [{ type = "signal", signal = "SIGHUP" }, { type = "chmod", argv = ["x"], mode = 0o777 }]
"#,
    )
    .unwrap();
    let problems: Vec<String> = config.problems().iter().map(ToString::to_string).collect();
    let expect = [
        "rules[0] (a): `within_ms` must be at least 1",
        "rules[0] (a): kind count needs `at_least`",
        "filter \"rules.a.match\" does not parse",
        "rules[1] (a): the name is used twice",
        "rules[1] (a): `followed_by` does not apply to kind sequence",
        "rules[1] (a): actions[0] (signal): `signal` must be SIGSTOP, SIGCONT or SIGKILL",
        "rules[1] (a): actions[1] (chmod): `argv` does not apply",
        // `two.path` in the first step is no reference (no earlier step): a literal, accepted.
        "filter \"rules.a.steps.two\" is not valid",
    ];
    for expected in expect {
        assert!(problems.iter().any(|p| p.contains(expected)), "missing {expected:?} in {problems:#?}");
    }
    assert_eq!(problems.len(), expect.len(), "{problems:#?}");
    assert!(
        Config::from_toml("[[rules]]\nname = \"x\"\nkind = \"count\"\nwithin_ms = 1\nbogus = 1\n").is_err()
    );
}

#[test]
fn a_replayed_log_gives_the_detections_of_the_events_it_holds() {
    let events: Vec<SemanticEvent> = (0..12).map(|i| rename("/d/f", "/d/f.locked", 9, 100 + i)).collect();
    let (mut live, _) = engine(&locker());
    let detections = run(&mut live, &events, 100);
    // The log as sinks write it, detection included (replay makes its own).
    let mut log = String::new();
    for event in events.iter().take(10).chain(std::iter::once(&detections[0].event)).chain(&events[10..]) {
        log.push_str(&serde_json::to_string(event).unwrap());
        log.push('\n');
    }
    let replayed = replay(&settings(&locker()), log.as_bytes(), &Counters::default()).unwrap();
    assert_eq!(replayed.len(), 1);
    assert_eq!(replayed[0].causality_links, detections[0].event.causality_links);
    assert_eq!(replayed[0].context.parameters, detections[0].event.context.parameters);
    let error = replay(&settings(&locker()), &b"{}\n"[..], &Counters::default()).unwrap_err();
    assert!(error.to_string().contains("line 1"), "{error}");
}

#[test]
fn the_readme_examples_validate() {
    let readme = include_str!("../../../README.md");
    let section = &readme[readme.find("## Rules: react to patterns").unwrap()..];
    let start = section.find("```toml\n").unwrap() + "```toml\n".len();
    let example = &section[start..start + section[start..].find("```").unwrap()];
    let settings = settings(example);
    assert_eq!(settings.rules.len(), 5);
    assert_eq!(settings.config.mode, Mode::Enforce);
    Engine::new(&settings, &RuleTable::default()).unwrap();
}

#[test]
fn the_stage_adds_detections_and_audit_events_and_sends_the_chain_head() {
    let dir = tempfile::tempdir().unwrap();
    let rules = locker()
        .replace("key = \"pid\"", "key = \"pid\"\nactions = [{ type = \"signal\", signal = \"SIGSTOP\" }]");
    let mut config = Config::from_toml(&rules).unwrap();
    config.react.audit_log = dir.path().join("audit.log");
    let counters = Arc::new(Counters::default());
    let mut stage =
        ReactStage::new(&config.react_settings().unwrap(), Run::new(crate::event::NodeId::host()), &counters)
            .unwrap();
    let mut batch = EventBatch::default();
    batch.events =
        (0..10).map(|i| rename(&format!("/d/{i}"), &format!("/d/{i}.locked"), 7, 100 + i)).collect();
    batch.watermark_ns = 100 * MS;
    stage.process(&mut batch);
    assert_eq!(batch.events[10].event_subtype, "rule:locker", "the detection follows its trigger");
    let mut end = EventBatch::default();
    stage.flush(&mut end);
    // Monitor mode (the default): the signal is decided as a dry run, then the chain's head.
    let derived: Vec<&SemanticEvent> = batch.events[11..].iter().chain(&end.events).collect();
    let subtypes: Vec<&str> = derived.iter().map(|e| e.event_subtype.as_str()).collect();
    assert_eq!(subtypes, ["action:signal", "audit_head"]);
    assert_eq!(derived[0].context.parameters["outcome"], "dry_run");
    assert_eq!(derived[0].context.parameters["detail"], "send SIGSTOP to pid 7");
    let lines = verify(&config.react.audit_log).unwrap();
    assert_eq!(lines.len(), 1);
    assert_eq!(derived[1].context.parameters["audit_hash"], lines[0].hash);
    assert_eq!(counters.rules.summaries()["locker"].actions["dry_run"], 1);
}

#[test]
fn trying_rules_over_a_log_reports_its_gaps_and_verdicts() {
    // The last event (not a .vec) carries the log's time past both deadlines.
    let events =
        [create("/a/x.vec", 1, 0), create("/c/z.vec", 1, 2_000), gap(2_300, 2_400), create("/e/f", 1, 3_500)];
    let log: String = events.iter().map(|e| serde_json::to_string(e).unwrap() + "\n").collect();
    let tried = try_rules(&settings(INDEX), log.as_bytes(), &Counters::default()).unwrap();
    assert_eq!(tried.events, 4);
    assert_eq!(tried.gaps, [Lost { count: 5, from_ns: 2_300 * MS, to_ns: 2_400 * MS }]);
    let verdicts: Vec<(Verdict, bool)> = tried.detections.iter().map(|d| (d.verdict, d.act)).collect();
    assert_eq!(verdicts, [(Verdict::Complete, true), (Verdict::Gapped, false)], "the second is uncertain");
}

/// A stage over `rules` (monitor mode, an audit log in `dir`).
fn stage(rules: &str, dir: &std::path::Path, counters: &Arc<Counters>) -> ReactStage {
    let mut config = Config::from_toml(rules).unwrap();
    config.react.audit_log = dir.join("audit.log");
    ReactStage::new(&config.react_settings().unwrap(), Run::new(crate::event::NodeId::host()), counters)
        .unwrap()
}

/// The subtypes of what `stage` adds to a batch of `events` (the events themselves left out).
fn added(stage: &mut ReactStage, events: Vec<SemanticEvent>) -> Vec<SemanticEvent> {
    let mut batch = EventBatch::default();
    let count = events.len();
    batch.watermark_ns = events.last().map_or(0, |e| e.timestamp.monotonic_ns);
    batch.events = events;
    stage.process(&mut batch);
    batch.events.split_off(count)
}

#[test]
fn a_detection_replicated_from_another_node_is_audited_and_never_acted_on() {
    let dir = tempfile::tempdir().unwrap();
    let rules = locker()
        .replace("key = \"pid\"", "key = \"pid\"\nactions = [{ type = \"signal\", signal = \"SIGSTOP\" }]");
    let counters = Arc::new(Counters::default());
    let mut stage = stage(&rules, dir.path(), &counters);
    let elsewhere = Run::new(crate::event::NodeId::new("elsewhere").unwrap());
    let events = (0..10)
        .map(|i| {
            let mut event = rename(&format!("/d/{i}"), &format!("/d/{i}.locked"), 7, 100 + i);
            event.origin = elsewhere.origin(0, i);
            event
        })
        .collect();
    let mut derived = added(&mut stage, events);
    let mut end = EventBatch::default();
    stage.flush(&mut end);
    derived.extend(end.events);
    assert_eq!(derived[0].event_subtype, "rule:locker", "the detection is made and flows on");
    assert_eq!(derived[1].context.parameters["outcome"], "not_local", "{:?}", derived[1]);
    assert_eq!(counters.rules.summaries()["locker"].actions["not_local"], 1);
}

#[test]
fn a_reload_with_other_rules_replaces_them_and_the_same_rules_keep_their_state() {
    let dir = tempfile::tempdir().unwrap();
    let counters = Arc::new(Counters::default());
    let mut stage = stage(&locker(), dir.path(), &counters);
    let renames = |from: u64, count: u64| -> Vec<SemanticEvent> {
        (from..from + count).map(|i| rename(&format!("/d/{i}"), &format!("/d/{i}.locked"), 7, i)).collect()
    };
    let subtypes = |events: &[SemanticEvent]| -> Vec<String> {
        events.iter().map(|e| e.event_subtype.clone()).filter(|s| s.starts_with("rule:")).collect()
    };
    assert!(added(&mut stage, renames(100, 6)).is_empty());
    // The same rules again: nothing changes, the 6 renames still count.
    stage.reconfigure(Box::new(settings(&locker())));
    assert_eq!(subtypes(&added(&mut stage, renames(106, 4))), ["rule:locker"]);
    // Other rules: they replace the running ones and start empty.
    let five = locker()
        .replace("name = \"locker\"", "name = \"locker-five\"")
        .replace("at_least = 10", "at_least = 5");
    stage.reconfigure(Box::new(settings(&five)));
    assert!(added(&mut stage, renames(200, 4)).is_empty(), "the new rule starts empty");
    assert_eq!(subtypes(&added(&mut stage, renames(204, 1))), ["rule:locker-five"]);
    assert!(counters.rules.summaries().contains_key("locker-five"));
}

#[test]
fn an_xattr_action_needs_a_namespaced_name_and_a_value() {
    let rule = |action: &str| {
        let config = Config::from_toml(
            &locker().replace("key = \"pid\"", &format!("key = \"pid\"\nactions = [{action}]")),
        )
        .unwrap();
        config.problems().iter().map(ToString::to_string).collect::<Vec<_>>()
    };
    assert!(rule(r#"{ type = "xattr", xattr = "user.vexevent.suspect", value = "locker" }"#).is_empty());
    let problems = rule(r#"{ type = "xattr", xattr = "vexevent", mode = 0 }"#);
    assert_eq!(problems.len(), 3, "{problems:#?}");
    assert!(problems.iter().any(|p| p.contains("`mode` does not apply")), "{problems:#?}");
    assert!(problems.iter().any(|p| p.contains("user., trusted. or security. namespace")), "{problems:#?}");
    assert!(problems.iter().any(|p| p.contains("`value` must be given")), "{problems:#?}");
}
