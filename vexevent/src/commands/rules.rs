//! The rule commands that need no running instance: `replay` (rules over a recorded log),
//! `audit verify` (the audit log's hash chain) and `rollback` (undo an action the audit log
//! recorded, and record that in the log).

use std::{io::Write as _, path::Path};

use anyhow::{Context as _, bail};
use vexevent::{
    config::Config,
    react::{AuditLog, AuditRecord, ReactSettings, read_rules_file, replay, rollback, verify},
    telemetry::Counters,
};

/// Prints, one JSON line each, the detections `rules` makes over the log `events`.
pub fn replay_log(rules: &Path, events: &Path) -> anyhow::Result<()> {
    let config = Config { rules: read_rules_file(rules)?, ..Config::default() };
    let problems = config.problems();
    if let Some(first) = problems.into_iter().next() {
        bail!("{}: {first}", rules.display());
    }
    let settings = ReactSettings { rules: config.rules, ..ReactSettings::default() };
    let file = std::fs::File::open(events).with_context(|| format!("cannot open {}", events.display()))?;
    let detections = replay(&settings, std::io::BufReader::new(file), &Counters::default())
        .with_context(|| events.display().to_string())?;
    let mut out = std::io::stdout().lock();
    for detection in &detections {
        writeln!(out, "{}", serde_json::to_string(detection)?)?;
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
    let lines = verify(file)?;
    let line =
        lines.iter().find(|l| l.seq == seq).with_context(|| format!("{}: no line {seq}", file.display()))?;
    let Some(undo) = &line.record.undo else {
        bail!(
            "line {seq} ({} {}, {}) records nothing to undo",
            line.record.action,
            line.record.record,
            line.record.outcome
        );
    };
    if lines.iter().any(|l| l.record.rolls_back == Some(seq) && l.record.outcome == "done") {
        bail!("line {seq} was already rolled back");
    }
    let result = rollback(undo);
    let record = AuditRecord {
        record: "rollback".into(),
        outcome: if result.is_ok() { "done" } else { "failed" }.into(),
        detail: match &result {
            Ok(detail) | Err(detail) => detail.clone(),
        },
        rolls_back: Some(seq),
        undo: None,
        ..line.record.clone()
    };
    let written = AuditLog::open(file)?.append(record)?;
    match result {
        Ok(detail) => {
            println!("{detail} (audit line {})", written.seq);
            Ok(())
        }
        Err(detail) => bail!("{detail} (audit line {})", written.seq),
    }
}
