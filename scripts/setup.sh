#!/usr/bin/env bash
# Installs everything vexevent needs to build and run on a fresh Debian machine, idempotently:
# rust-src for the nightly toolchain, bpf-linker linked against rustc's own libLLVM, the Debian
# packages the tests use, and a mounted tracefs. Fast (a few checks) when everything is present.
set -euo pipefail

say() { printf 'setup: %s\n' "$*" >&2; }
# Whether a command's output contains a match. Not `cmd | grep -q`: with pipefail, grep leaving
# at its first match can make the command die of SIGPIPE and the check fail at random.
has() { local pattern=$1; shift; grep -q -- "$pattern" <<<"$("$@" 2>/dev/null)"; }

[ "$(id -u)" -eq 0 ] || { say "must run as root (loading eBPF programs needs CAP_BPF/CAP_PERFMON); re-run with sudo"; exit 1; }

# 1. rust-src for the nightly toolchain (the eBPF crate is built with -Z build-std=core), and
#    clippy for it.
if ! has '^nightly' rustup toolchain list; then
  say "installing the nightly toolchain"
  rustup toolchain install nightly --profile minimal
fi
if ! has '^rust-src' rustup component list --toolchain nightly --installed; then
  say "installing rust-src for nightly"
  rustup component add rust-src --toolchain nightly
fi
# clippy for nightly: `cargo xtask clippy-ebpf` lints the eBPF crate for its target.
if ! has '^clippy' rustup component list --toolchain nightly --installed; then
  say "installing clippy for nightly"
  rustup component add clippy --toolchain nightly
fi

# 2. bpf-linker 0.13.0 linked against the nightly sysroot's libLLVM (Debian only ships LLVM 14).
SYSROOT=$(rustc +nightly --print sysroot)
LLVM_SO=$(basename "$(ls "$SYSROOT"/lib/libLLVM-*.so | head -1)")
LLVM_LIB=${LLVM_SO#lib}; LLVM_LIB=${LLVM_LIB%.so}
linker_ok() {
  command -v bpf-linker >/dev/null 2>&1 || return 1
  has '0\.13\.0' bpf-linker --version || return 1
  has "$SYSROOT/lib/libLLVM" ldd "$(command -v bpf-linker)" || return 1
}
if ! linker_ok; then
  say "building bpf-linker 0.13.0 against $LLVM_SO (about a minute)"
  RUSTFLAGS="-L native=$SYSROOT/lib -l dylib=$LLVM_LIB -C link-arg=-Wl,-rpath,$SYSROOT/lib" \
    cargo install bpf-linker --version 0.13.0 --locked --force --no-default-features \
      --features llvm-22,no-llvm-linking --target x86_64-unknown-linux-gnu
  linker_ok || { say "bpf-linker installed but not usable (check: ldd \$(command -v bpf-linker))"; exit 1; }
fi

# 3. Debian packages: FUSE (fuse3, bindfs) for the FUSE tests, e2fsprogs for ext4 images, QEMU
# for the VM test on an older kernel (`cargo xtask vm-test`, which fetches the kernel itself) with
# make, gcc-12 and libelf1 to build its vexfs module against that kernel's headers,
# nats-server (2.9, with JetStream) for the NATS sink tests (tests/nats.rs starts its own);
# chromium for the dashboard's browser test and prometheus for promtool (metrics and alert rules);
# systemd for `systemd-analyze verify` of the shipped unit (dist/vexevent.service).
missing=()
for pkg in fuse3 bindfs e2fsprogs qemu-system-x86 make gcc-12 libelf1 nats-server chromium prometheus systemd; do
  has 'install ok installed' dpkg-query -W -f='${Status}' "$pkg" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  say "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# 4. tracefs: tracepoint attach needs it mounted.
if ! mountpoint -q /sys/kernel/tracing; then
  say "mounting tracefs on /sys/kernel/tracing"
  mount -t tracefs tracefs /sys/kernel/tracing
fi
say "ready"
