//! `cargo xtask fuzz [--inputs N]`: runs the property tests that fuzz outside input (the
//! `fuzz_*` tests of the vexevent library: filter parser, stream query, record decoder, config
//! loader) with N inputs each, in a release build, one target at a time, and reports how long
//! each took. A failure prints proptest's smallest failing input: make it a regression test.

use std::{process::Command, time::Instant};

use anyhow::{Context as _, bail};

use super::{run, workspace_root};

/// The test name filter that selects the fuzz targets.
const PREFIX: &str = "fuzz_";

fn cargo_test() -> Command {
    let mut command = Command::new("cargo");
    command.current_dir(workspace_root()).args(["test", "--release", "--package", "vexevent", "--lib"]);
    command
}

/// The fuzz targets, as the test binary lists them.
fn targets() -> anyhow::Result<Vec<String>> {
    let output = cargo_test().args([PREFIX, "--", "--list"]).output().context("cannot list the tests")?;
    if !output.status.success() {
        bail!("listing the tests failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    let targets: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.strip_suffix(": test"))
        .map(str::to_owned)
        .collect();
    if targets.is_empty() {
        bail!("no test named {PREFIX}* in the vexevent library");
    }
    Ok(targets)
}

pub fn fuzz(inputs: u32) -> anyhow::Result<()> {
    let targets = targets()?;
    let mut report = Vec::new();
    for target in &targets {
        let started = Instant::now();
        run(cargo_test()
            .args([target.as_str(), "--", "--exact", "--test-threads=1"])
            .env("VEXEVENT_FUZZ_INPUTS", inputs.to_string()))
        .with_context(|| format!("fuzz target {target} failed: its smallest failing input is above"))?;
        let seconds = started.elapsed().as_secs_f64();
        report.push(format!(
            "  {target:<52} {inputs} inputs  {seconds:>8.1} s  {:>9.0} inputs/s",
            f64::from(inputs) / seconds
        ));
    }
    println!("fuzz: every target passed");
    for line in report {
        println!("{line}");
    }
    Ok(())
}
