#!/usr/bin/env bash
# Side-by-side consumer measurement (README, Performance): runs `vexevent run --watch DIR -o FILE`
# (any binary, e.g. two builds alternately), drives it with a C loop, waits until the output has
# stopped growing (the drain after the workload), and prints vexevent's CPU per delivered line
# and its final stats (latency, stages, rings). Needs root and gcc.
# `threads` runs two open/close loops at once (one per CPU on two cores), each of ITERATIONS.
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
"$bin" run "$@" --watch "$work/watch" -o "$work/out.jsonl" --stats-interval 0 2> "$work/stderr" &
pid=$!
until grep -q "ready:" "$work/stderr" 2>/dev/null; do sleep 0.1; done
cpu() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
before=$(cpu)
case $loop in
  openclose) "$work/$loop" "$work/watch/f" "$n" ;;
  threads) "$work/$loop" "$work/watch/f" "$n" & first=$!; "$work/$loop" "$work/watch/g" "$n"; wait "$first" ;;
  *) "$work/$loop" "$work/watch" "$n" ;;
esac
previous=-1
while size=$(stat -c %s "$work/out.jsonl") && [ "$size" != "$previous" ]; do previous=$size; sleep 0.3; done
after=$(cpu)
lines=$(wc -l < "$work/out.jsonl")
kill -INT "$pid"
wait "$pid"
ticks_per_second=$(getconf CLK_TCK)
echo "lines $lines  vexevent cpu $(( (after - before) * 1000 / ticks_per_second )) ms  $(( (after - before) * 1000000000 / ticks_per_second / lines )) ns per line"
grep -E "lost|latency|stage |rings" "$work/stderr" | tail -12
