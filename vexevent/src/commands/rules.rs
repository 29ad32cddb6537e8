//! The rule commands that need no running instance: `replay` (rules over a recorded log),
//! `rules test` (the same, per rule, with verdicts and what actions would do), `audit verify`
//! (the audit log's hash chain) and `rollback` (undo an action the audit log recorded, and
//! record that in the log).

use std::{io::Write as _, path::Path};

use anyhow::{Context as _, bail};
use vexevent::{
    config::Config,
    react::{
        Detection, ReactSettings, Verdict, read_rules_file, replay, rollback_line, try_rules, verify, would,
    },
    telemetry::Counters,
};

/// The rules of a rules file, validated.
fn rules_of(rules: &Path) -> anyhow::Result<ReactSettings> {
    let config = Config { rules: read_rules_file(rules)?, ..Config::default() };
    let problems = config.problems();
    if let Some(first) = problems.into_iter().next() {
        bail!("{}: {first}", rules.display());
    }
    Ok(ReactSettings { rules: config.rules, ..ReactSettings::default() })
}

/// The recorded events, opened.
fn open_events(events: &Path) -> anyhow::Result<std::io::BufReader<std::fs::File>> {
    let file = std::fs::File::open(events).with_context(|| format!("cannot open {}", events.display()))?;
    Ok(std::io::BufReader::new(file))
}

/// Prints, one JSON line each, the detections `rules` makes over the log `events`.
pub fn replay_log(rules: &Path, events: &Path) -> anyhow::Result<()> {
    let settings = rules_of(rules)?;
    let detections = replay(&settings, open_events(events)?, &Counters::default())
        .with_context(|| events.display().to_string())?;
    let mut out = std::io::stdout().lock();
    for detection in &detections {
        writeln!(out, "{}", serde_json::to_string(detection)?)?;
    }
    Ok(())
}

/// Prints, per rule of `rules`, what it decides over the log `events`: each detection (its
/// time, key, verdict, matched events) and what each action would do about it; a rule without
/// a detection is `uncertain` when the log reports lost records.
pub fn test_rules(rules: &Path, events: &Path) -> anyhow::Result<()> {
    let settings = rules_of(rules)?;
    let tried = try_rules(&settings, open_events(events)?, &Counters::default())
        .with_context(|| events.display().to_string())?;
    let lost: u64 = tried.gaps.iter().map(|gap| gap.count).sum();
    let mut out = std::io::stdout().lock();
    writeln!(out, "{} events, {} gaps ({lost} records lost)", tried.events, tried.gaps.len())?;
    for (index, rule) in settings.rules.iter().enumerate() {
        let found: Vec<&Detection> = tried.detections.iter().filter(|d| d.rule == index).collect();
        let kind = rule.kind.name();
        if found.is_empty() {
            let verdict = if lost == 0 {
                "no detection".to_owned()
            } else {
                format!("no detection, uncertain: {lost} records were lost and may hold events it needs")
            };
            writeln!(out, "rule {} ({kind}): {verdict}", rule.name)?;
            continue;
        }
        writeln!(out, "rule {} ({kind}): {} detections", rule.name, found.len())?;
        for detection in found {
            let event = &detection.event;
            let parameters = &event.context.parameters;
            let verdict = match (detection.verdict, detection.act) {
                (Verdict::Complete, _) => "complete",
                (Verdict::Gapped, true) => "gapped (records were lost in its window: a count may be short)",
                (Verdict::Gapped, false) => "gapped, uncertain (records were lost in its window: no action)",
            };
            writeln!(
                out,
                "  at {} ns, key {}: {verdict}; matched {:?}",
                event.timestamp.monotonic_ns,
                parameters.get("key").map_or("", String::as_str),
                event.causality_links
            )?;
            for action in &rule.actions {
                let dry = if action.dry_run { " (dry_run)" } else { "" };
                let what = would(action, event);
                if detection.act {
                    writeln!(out, "    would {what}{dry}")?;
                } else {
                    writeln!(out, "    would not act (gapped): {what}{dry}")?;
                }
            }
        }
    }
    Ok(())
}

/// Verifies the audit log's chain and prints its head.
pub fn verify_log(file: &Path) -> anyhow::Result<()> {
    let lines = verify(file)?;
    match lines.last() {
        Some(last) => println!(
            "{}: {} lines, chain intact, head {} {}",
            file.display(),
            lines.len(),
            last.seq,
            last.hash
        ),
        None => println!("{}: empty", file.display()),
    }
    Ok(())
}

/// Undoes the action recorded at line `seq` of the audit log and records the rollback there.
pub fn rollback_action(file: &Path, seq: u64) -> anyhow::Result<()> {
    let (detail, written) = rollback_line(file, seq).with_context(|| file.display().to_string())?;
    println!("{detail} (audit line {})", written.seq);
    Ok(())
}
