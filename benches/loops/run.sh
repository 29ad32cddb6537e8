#!/usr/bin/env bash
# Side-by-side consumer measurement (README, Performance): runs `vexevent run --watch DIR -o FILE`
# (any binary, e.g. two builds alternately), drives it with a C loop, waits until the output has
# stopped growing (the drain after the workload), and prints vexevent's CPU per delivered line,
# the drainer's kernel wakeups and its final stats (latency, stages, rings). Needs root and gcc.
# `threads` runs two open/close loops at once (one per CPU on two cores), each of ITERATIONS.
# With PLACEMENT=1 (what placement.sh sets) the loop runs under `perf record` of the scheduler's
# switches and wakeups, summarised by placement.awk (needs perf; openclose and mixed).
# Usage: benches/loops/run.sh VEXEVENT_BINARY openclose|mixed|threads ITERATIONS [extra vexevent run args]
set -euo pipefail
bin=$1 loop=$2 n=$3
shift 3
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d /dev/shm/vexevent-loop.XXXXXX)
trap 'rm -rf "$work"' EXIT
source=$loop
[ "$loop" = threads ] && source=openclose
gcc -O2 -o "$work/$loop" "$here/$source.c"
mkdir "$work/watch" && echo x > "$work/watch/f" && echo x > "$work/watch/g"
"$bin" run "$@" --watch "$work/watch" -o "$work/out.jsonl" --stats-interval 0 --stats-file "$work/stats.json" \
  2> "$work/stderr" &
pid=$!
until grep -q "ready:" "$work/stderr" 2>/dev/null; do sleep 0.1; done
cpu() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
before=$(cpu)
if [ "$loop" = mixed ]; then target="$work/watch"; else target="$work/watch/f"; fi
if [ "${PLACEMENT:-0}" = 1 ]; then
  perf record -q -e sched:sched_switch,sched:sched_wakeup -a -o "$work/perf.data" -- "$work/$loop" "$target" "$n"
elif [ "$loop" = threads ]; then
  "$work/$loop" "$work/watch/f" "$n" & first=$!
  "$work/$loop" "$work/watch/g" "$n"
  wait "$first"
else
  "$work/$loop" "$target" "$n"
fi
previous=-1
while size=$(stat -c %s "$work/out.jsonl") && [ "$size" != "$previous" ]; do previous=$size; sleep 0.3; done
after=$(cpu)
lines=$(wc -l < "$work/out.jsonl")
kill -INT "$pid"
wait "$pid"
ticks_per_second=$(getconf CLK_TCK)
echo "lines $lines  vexevent cpu $(( (after - before) * 1000 / ticks_per_second )) ms  $(( (after - before) * 1000000000 / ticks_per_second / lines )) ns per line  $(grep -o '"drainer_wakeups": *[0-9]*' "$work/stats.json" || echo 'no drainer_wakeups')"
grep -E "lost|latency|stage |rings" "$work/stderr" | tail -12
if [ "${PLACEMENT:-0}" = 1 ]; then
  perf script -i "$work/perf.data" -F comm,tid,cpu,time,event,trace 2>/dev/null | awk -v loop="$loop" -f "$here/placement.awk"
fi
