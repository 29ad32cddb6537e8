//! Developer tasks: `cargo xtask build-ebpf` builds the eBPF object alone and reports its
//! programs and sizes; `cargo xtask clippy-ebpf` lints the eBPF crate for its target (the
//! workspace clippy run cannot: the crate does not build for the host); `cargo xtask bench` runs
//! every benchmark; `cargo xtask vm-test` runs vexevent on an older kernel (Debian's 6.1) under
//! QEMU; `cargo xtask fuzz` fuzzes everything that parses outside input; `cargo xtask chaos`
//! runs randomized fault schedules against a real three-member cluster.

mod fuzz;
mod vm_test;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use object::{Object as _, ObjectSection as _, ObjectSymbol as _, SectionKind};

/// Bytes per eBPF instruction.
const BPF_INSN_BYTES: u64 = 8;

#[derive(Parser)]
#[command(about = "vexevent developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Build the eBPF object (vexevent-ebpf) alone and print its programs, maps and sizes.
    BuildEbpf {
        /// Build with the debug profile instead of release.
        #[arg(long)]
        debug: bool,
    },
    /// Run clippy (workspace lints, warnings are errors) on the eBPF crate for the bpf target.
    ClippyEbpf,
    /// Run the benchmarks: end-to-end capture overhead and WebSocket subscribers (need root) and
    /// per-stage criterion runs.
    Bench,
    /// Fuzz the filter parser, the stream's query parser, the record decoder and the config
    /// loader (the library's `fuzz_*` property tests), INPUTS each, in a release build.
    Fuzz {
        /// Inputs per target.
        #[arg(long, default_value_t = 10_000_000)]
        inputs: u32,
    },
    /// Boot Debian's Linux 6.1 under QEMU (no FUSE tracepoints, kprobes allowed) and check that
    /// vexevent captures FUSE requests there through its kprobe fallback. Needs root, apt and
    /// qemu-system-x86; caches downloads in target/vm-test.
    VmTest {
        /// Another Debian kernel package to boot (same checks), e.g.
        /// linux-image-6.1.0-53-cloud-amd64-unsigned.
        #[arg(long)]
        kernel_package: Option<String>,
    },
    /// Randomized faults (pauses, partitions, kills and restarts) under load against three real
    /// members on loopback, SCHEDULES of them, checking after each that nothing committed is lost
    /// or delivered twice; prints the number survived. Needs root.
    Chaos {
        #[arg(long, default_value_t = 20)]
        schedules: u32,
        /// Replays the schedules of an earlier run (its seed is printed).
        #[arg(long)]
        seed: Option<u64>,
    },
}

/// The chaos test of tests/cluster.rs with `schedules` schedules, its output shown.
fn chaos(schedules: u32, seed: Option<u64>) -> anyhow::Result<()> {
    let mut command = Command::new("cargo");
    command
        .current_dir(workspace_root())
        .args(["test", "--package", "vexevent", "--test", "cluster", "randomized_faults"])
        .args(["--", "--nocapture", "--test-threads=1"])
        .env("VEXEVENT_CHAOS_SCHEDULES", schedules.to_string());
    if let Some(seed) = seed {
        command.env("VEXEVENT_CHAOS_SEED", seed.to_string());
    }
    run(&mut command)
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

fn run(command: &mut Command) -> anyhow::Result<()> {
    let status = command.status().with_context(|| format!("cannot start {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed ({status})");
    }
    Ok(())
}

/// `cargo +nightly <subcommand>` on the eBPF crate for its target, with the flags aya-build
/// passes when vexevent/build.rs embeds the object, and warnings as errors.
fn ebpf_cargo(subcommand: &str, root: &Path) -> Command {
    let mut cargo = Command::new("cargo");
    cargo
        .current_dir(root)
        .args(["+nightly", subcommand, "--package", "vexevent-ebpf", "--target", "bpfel-unknown-none"])
        .args(["-Z", "build-std=core"])
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            "--cfg=bpf_target_arch=\"x86_64\"\x1f-Cdebuginfo=2\x1f-Clink-arg=--btf\x1f-Dwarnings",
        )
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER");
    cargo
}

fn clippy_ebpf() -> anyhow::Result<()> {
    let root = workspace_root();
    let mut cargo = ebpf_cargo("clippy", &root);
    cargo.args(["--release", "--", "-D", "warnings"]);
    run(&mut cargo)
        .context("linting the eBPF crate (is rust-src installed for nightly? run scripts/setup.sh)")
}

fn build_ebpf(debug: bool) -> anyhow::Result<()> {
    let root = workspace_root();
    let mut cargo = ebpf_cargo("build", &root);
    if !debug {
        cargo.arg("--release");
    }
    run(&mut cargo).context("building the eBPF object (is bpf-linker installed? run scripts/setup.sh)")?;
    let profile = if debug { "debug" } else { "release" };
    let object_path = root.join("target/bpfel-unknown-none").join(profile).join("vexevent-probes");
    report(&object_path)
}

/// Prints the object's programs (with instruction counts) and maps.
fn report(path: &Path) -> anyhow::Result<()> {
    let data = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let file = object::File::parse(&*data).context("the eBPF object is not valid ELF")?;
    println!("{} ({} bytes)", path.display(), data.len());
    println!("programs:");
    for symbol in file.symbols().filter(|s| s.kind() == object::SymbolKind::Text && s.size() > 0) {
        let section = symbol.section_index().and_then(|i| file.section_by_index(i).ok());
        let section_name = section.as_ref().and_then(|s| s.name().ok()).unwrap_or("?");
        if section_name == ".text" {
            continue;
        }
        println!(
            "  {:<28} {:<28} {:>6} bytes {:>6} instructions",
            symbol.name().unwrap_or("?"),
            section_name,
            symbol.size(),
            symbol.size() / BPF_INSN_BYTES
        );
    }
    if let Some(text) = file.section_by_name(".text").filter(|s| s.size() > 0) {
        println!("  {:<28} {:<28} {:>6} bytes (shared functions)", "(.text)", ".text", text.size());
    }
    println!("maps:");
    for symbol in file.symbols().filter(|s| s.kind() == object::SymbolKind::Data) {
        let section = symbol.section_index().and_then(|i| file.section_by_index(i).ok());
        if section
            .as_ref()
            .is_some_and(|s| s.name().is_ok_and(|n| n == "maps") && s.kind() != SectionKind::Text)
        {
            println!("  {}", symbol.name().unwrap_or("?"));
        }
    }
    Ok(())
}

fn bench() -> anyhow::Result<()> {
    let root = workspace_root();
    run(Command::new("cargo").current_dir(&root).args([
        "bench",
        "--package",
        "vexevent",
        "--bench",
        "capture_overhead",
    ]))?;
    run(Command::new("cargo").current_dir(&root).args([
        "bench",
        "--package",
        "vexevent",
        "--bench",
        "subscribers",
    ]))?;
    run(Command::new("cargo").current_dir(&root).args([
        "bench",
        "--package",
        "vexevent",
        "--bench",
        "stages",
    ]))
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().task {
        Task::BuildEbpf { debug } => build_ebpf(debug),
        Task::ClippyEbpf => clippy_ebpf(),
        Task::Bench => bench(),
        Task::Fuzz { inputs } => fuzz::fuzz(inputs),
        Task::VmTest { kernel_package } => vm_test::vm_test(kernel_package.as_deref()),
        Task::Chaos { schedules, seed } => chaos(schedules, seed),
    }
}
