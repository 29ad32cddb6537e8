# Summarizes `perf script` of sched_switch and sched_wakeup for placement.sh: wakeups of vexevent's threads
# and where they landed, preemptions of the loop (`loop`: its comm) and by whom.
function val(s, name,   m) {
    if (match(s, "(^| )" name "=[^ ]+")) { m = substr(s, RSTART, RLENGTH); sub(/^ /, "", m); return substr(m, length(name) + 2) }
    return ""
}
function consumer(c) { return c ~ /^(vexevent|sink-)/ }
{
    if (!match($0, /\[[0-9]+\] +[0-9.]+: +sched:[a-z_]+: /)) next
    head = substr($0, RSTART, RLENGTH); rest = substr($0, RSTART + RLENGTH)
    split(head, h, /[][ :]+/); cpu = h[2] + 0; t = h[3] + 0; ev = h[5]
    if (first == "") first = t
    last = t
    if (ev == "sched_wakeup") {
        c = val(rest, "comm")
        if (consumer(c)) { wakeups++; if (loop_cpu != "" && val(rest, "target_cpu") + 0 == loop_cpu) on_loop++ }
    } else if (ev == "sched_switch") {
        prev = val(rest, "prev_comm"); next_c = val(rest, "next_comm")
        if (cpu in since && consumer(running[cpu]) && cpu == loop_cpu) ran_on_loop += t - since[cpu]
        running[cpu] = next_c; since[cpu] = t
        if (prev == loop && val(rest, "prev_state") ~ /^R/) { preempted++; if (consumer(next_c)) by_consumer++ }
        if (next_c == loop) loop_cpu = cpu
    }
}
END {
    printf "trace %.2f s: consumer threads woken %d times, %d of them on the loop's CPU; the loop preempted %d times, %d by a consumer thread; consumer threads ran %.0f ms on the loop's CPU\n", last - first, wakeups, on_loop, preempted, by_consumer, ran_on_loop * 1000
}
