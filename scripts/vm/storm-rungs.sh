#!/bin/sh
# The measuring half of scripts/bench-rungs: the storm (bench/storm.c)
# untraced and under `connguard trace --hooks RUNG -o json > /dev/null` for
# every rung this kernel offers, interleaved in rounds (untraced, rung A,
# rung B, ..., the order rotated each round). Runs inside the qemu guest
# (busybox sh) and on the host; scripts/bench-rungs reads its output.
#
#   storm-rungs.sh CONNGUARD STORM SECONDS ROUNDS THREADS PORT
# Prints, one per line:
#   RUNGS kernel=K offered="R1 R2" (from connguard probe, which loads and attaches each)
#   REFUSED rung=R reason=TEXT      (once per rung the kernel refuses)
#   PHASE kernel=K round=N mode=M rate=R conns=N failed=N events=N lost=N missed=N
#     (mode none: events, lost and missed are -; missed: BPF program runs the
#     kernel skipped for recursion, from connguard's summary)
#   ERROR TEXT                      (a phase that could not be measured)
# and exits non-zero if a phase could not be measured. Judging the figures
# (lost, events per connection) is left to bench-rungs.
CG="$1"; STORM="$2"; SECS="$3"; ROUNDS="$4"; THREADS="$5"; PORT="$6"
TMP="${TMPDIR:-/tmp}/storm-rungs.$$"
mkdir -p "$TMP"
K="$(uname -r)"
status=0

"$CG" probe -o json >"$TMP/probe.json" 2>&1
offered=""
for r in fentry kprobe tracepoint; do
    if grep -q "\"$r\":{\"available\":true," "$TMP/probe.json"; then
        offered="$offered $r"
    else
        reason="$(grep -o "\"$r\":{\"available\":false,\"detail\":\"[^\"]*\"" "$TMP/probe.json" | sed 's/.*"detail":"//; s/"$//')"
        echo "REFUSED rung=$r reason=${reason:-not in connguard probe's output}"
    fi
done
offered="${offered# }"
echo "RUNGS kernel=$K offered=\"$offered\""

# storm_line: runs the storm, prints "rate=R conns=N failed=N" (or nothing).
storm_line() {
    "$STORM" -d "$SECS" -t "$THREADS" -p "$PORT" >"$TMP/storm.out" 2>&1
    sed -n 's/^connections=\([0-9]*\) accepted=[0-9]* failed=\([0-9]*\) seconds=[0-9.]* rate=\([0-9]*\)$/rate=\3 conns=\1 failed=\2/p' "$TMP/storm.out"
}

# phase ROUND MODE
phase() {
    round="$1"; mode="$2"
    if [ "$mode" = none ]; then
        s="$(storm_line)"
        if [ -z "$s" ]; then echo "ERROR round=$round mode=none: storm printed: $(cat "$TMP/storm.out")"; status=1; return; fi
        echo "PHASE kernel=$K round=$round mode=none $s events=- lost=- missed=-"
        return
    fi
    : >"$TMP/cg.err"
    "$CG" trace --hooks "$mode" -o json --verbose >/dev/null 2>"$TMP/cg.err" &
    tpid=$!
    # Attached once it names its hooks (--verbose); under TCG loading takes seconds.
    i=0
    while ! grep -q '^connguard: hook ' "$TMP/cg.err" && kill -0 $tpid 2>/dev/null && [ $i -lt 1200 ]; do
        sleep 0.1; i=$((i + 1))
    done
    if ! grep -q '^connguard: hook ' "$TMP/cg.err"; then
        kill -INT $tpid 2>/dev/null; wait $tpid
        echo "ERROR round=$round mode=$mode: the tracer did not start: $(grep -v '^connguard: \(rung\|listeners\|cgroup\)' "$TMP/cg.err" | tail -n 1)"
        status=1; return
    fi
    s="$(storm_line)"
    # SIGINT: connguard drains the ring buffer, detaches and prints its summary.
    kill -INT $tpid; wait $tpid
    sum="$(grep -E '^connguard: [0-9]+ events seen' "$TMP/cg.err" | tail -n 1)"
    events="$(echo "$sum" | sed -n 's/^connguard: \([0-9]*\) events seen, [0-9]* shown, \([0-9]*\) lost.*/\1/p')"
    lost="$(echo "$sum" | sed -n 's/^connguard: \([0-9]*\) events seen, [0-9]* shown, \([0-9]*\) lost.*/\2/p')"
    missed="$(echo "$sum" | sed -n 's/.*; \([0-9]*\) program runs skipped by the kernel (recursion).*/\1/p')"
    if [ -z "$s" ] || [ -z "$events" ]; then
        echo "ERROR round=$round mode=$mode: storm printed: $(cat "$TMP/storm.out"); connguard: $(tail -n 2 "$TMP/cg.err" | tr '\n' ' ')"
        status=1; return
    fi
    echo "PHASE kernel=$K round=$round mode=$mode $s events=$events lost=$lost missed=${missed:-0}"
}

set -- none $offered
n=$#
r=0
while [ $r -lt "$ROUNDS" ]; do
    # Rotate the order each round so that no mode always follows the same one.
    k=0
    while [ $k -lt $n ]; do
        i=$(( (r + k) % n + 1 ))
        eval "m=\${$i}"
        phase $((r + 1)) "$m"
        sleep 1   # let sockets and softirqs settle between phases
        k=$((k + 1))
    done
    r=$((r + 1))
done
rm -rf "$TMP"
exit $status
