#!/usr/bin/env bash
# Sets the machine up (idempotent) and runs every test: unit tests, and the root integration
# tests that load the real eBPF probes and perform real operations on tmpfs and ext4 mounts, and
# the VM test: the same binary on Debian's Linux 6.1 under QEMU (FUSE capture through kprobes).
# Lints and formatting are checked too. Exits non-zero when anything fails.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
echo "test: formatting" >&2
cargo fmt --all --check
echo "test: clippy (workspace lints, warnings are errors)" >&2
cargo clippy --all-targets --quiet -- -D warnings
echo "test: clippy on the eBPF crate (bpf target, nightly; warnings are errors)" >&2
cargo xtask clippy-ebpf
echo "test: building the eBPF object alone" >&2
cargo xtask build-ebpf >/dev/null
echo "test: cargo test (unit + root integration tests)" >&2
# The integration tests run the real loader: one test binary at a time keeps the machine quiet.
cargo test --workspace --exclude vexevent-ebpf -- --test-threads=1
echo "test: VM test on Linux 6.1 under QEMU (FUSE kprobe fallback; kernel cached in target/vm-test)" >&2
cargo xtask vm-test
echo "test: all passed" >&2
