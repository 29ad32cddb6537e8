#!/usr/bin/env bash
# Sets the machine up (idempotent), builds vexevent in release mode and runs it. Arguments are
# passed to `vexevent run`; without any it watches the whole system and writes JSON Lines to
# stdout. Stop it with Ctrl-C: it drains every captured event and prints final stats.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo build --release --quiet --package vexevent
exec ./target/release/vexevent run "$@"
