//! Builds the eBPF object (vexevent-ebpf) with the nightly toolchain so the loader can embed it.
use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let metadata = cargo_metadata::MetadataCommand::new().no_deps().exec().context("cargo metadata")?;
    let ebpf = metadata
        .packages
        .into_iter()
        .find(|package| package.name == "vexevent-ebpf")
        .ok_or_else(|| anyhow!("vexevent-ebpf package not found"))?;
    let root_dir =
        ebpf.manifest_path.parent().ok_or_else(|| anyhow!("vexevent-ebpf manifest has no parent"))?;
    aya_build::build_ebpf(
        [Package { name: "vexevent-ebpf", root_dir: root_dir.as_str(), ..Default::default() }],
        Toolchain::Nightly,
    )
}
