#!/usr/bin/env bash
# Where the scheduler puts vexevent's threads while a C loop runs (README, Performance): runs
# `vexevent run --watch DIR -o FILE` (any binary), records the scheduler's switches and wakeups
# during the loop (`perf record -a`), and prints the loop's rate, vexevent's CPU per line, how
# often vexevent's threads were woken and how many of those wakeups landed on the CPU the loop ran
# on, how often the loop was preempted and by whom, and the drainer's kernel wakeups. Needs root,
# gcc and perf.
# Usage: benches/loops/placement.sh VEXEVENT_BINARY openclose|mixed ITERATIONS [extra vexevent run args]
PLACEMENT=1 exec "$(dirname "$0")/run.sh" "$@"
