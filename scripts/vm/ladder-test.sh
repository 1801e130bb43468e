#!/bin/sh
# The hook-ladder test: for each rung, force it (connguard trace --hooks RUNG),
# make loopback connections and check the events exactly. Runs inside the
# qemu guest of scripts/vm-test (busybox sh) and on the host.
#
#   ladder-test.sh CONNGUARD CGNET "EXPECTED RUNGS"
# Rungs in EXPECTED must work; the others must fail cleanly (exit 1, one
# line naming the rung). Prints "RESULT rung=R ok|fail|refused ..." per rung
# and exits non-zero if any expectation was not met.
CG="$1"; NET="$2"; EXPECT="$3"
CGROOT="$(grep ' - cgroup2 ' /proc/self/mountinfo | head -n 1 | cut -d' ' -f5)"
TMP="${TMPDIR:-/tmp}/ladder.$$"
mkdir -p "$TMP"
status=0
base=0

say() { echo "ladder: $*"; }

# count FILE PATTERN...: lines of FILE containing every PATTERN (fixed strings)
count() {
    f="$1"; shift
    cat "$f" >"$TMP/c.0"
    for p in "$@"; do grep -F -- "$p" "$TMP/c.0" >"$TMP/c.1"; mv "$TMP/c.1" "$TMP/c.0"; done
    grep -c . "$TMP/c.0"
}

# udp_total FILE PORT EVENT: a UDP flow's datagrams, its events plus its counts
udp_total() {
    grep -F "\"dport\":$2," "$1" | grep -F "\"event\":\"$3\"" | grep -F '"protocol":"udp"' \
        | awk '{ if (match($0, /"count":[0-9]+/)) n += substr($0, RSTART + 8, RLENGTH - 8); else n += 1 } END { print n + 0 }'
}

# expect LABEL N FILE PATTERN...
expect() {
    label="$1"; want="$2"; shift 2
    got="$(count "$@")"
    if [ "$got" != "$want" ]; then
        problems="$problems; $label: $got events, want $want"
    fi
}

# Enforcement's programs (with the in-kernel DNS parser) must load here.
if "$CG" probe -o json | grep -q '"enforcement programs":{"available":true'; then
    echo "RESULT enforcement ok: its programs load (cgroup connect, sendmsg, bind, cgroup_skb with the DNS parser under bpf_loop)"
else
    echo "RESULT enforcement fail: $("$CG" probe | grep 'enforcement programs')"
    status=1
fi

for rung in fentry kprobe tracepoint; do
    base=$((base + 10))
    p4=$((18000 + base)); p6=$((p4 + 1)); pr=$((p4 + 2)); ph=$((p4 + 3)); pu4=$((p4 + 4)); pu6=$((p4 + 5)); pd=$((p4 + 6))
    out="$TMP/$rung.json"; err="$TMP/$rung.err"
    expected=no
    case " $EXPECT " in *" $rung "*) expected=yes ;; esac
    start=$(date +%s)
    "$CG" trace --hooks "$rung" -o json --verbose --duration 120 >"$out" 2>"$err" &
    tpid=$!
    # Attached once it names its rung; gone if the kernel refused it.
    i=0
    while ! grep -q "^connguard: rung $rung" "$err" 2>/dev/null && kill -0 $tpid 2>/dev/null && [ $i -lt 600 ]; do
        sleep 0.1; i=$((i + 1))
    done
    if ! kill -0 $tpid 2>/dev/null; then
        wait $tpid; rc=$?
        msg="$(grep "^connguard: " "$err" | grep -v "^connguard: \(rung\|hook\|listeners\|cgroup v2\|warning\)" | tail -n 1)"
        lines="$(grep -c "^connguard: " "$err")"
        if [ "$expected" = yes ]; then
            echo "RESULT rung=$rung fail: did not start (exit $rc): $msg"; status=1
        elif [ $rc -eq 1 ] && echo "$msg" | grep -q "$rung"; then
            echo "RESULT rung=$rung refused (as expected on this kernel): $msg"
        else
            echo "RESULT rung=$rung fail: refused without a clear message (exit $rc, $lines lines): $msg"; status=1
        fi
        continue
    fi
    if [ "$expected" = no ]; then
        say "$rung loaded although not expected here; testing it anyway"
    fi

    srv="$CGROOT/ladder-srv-$rung-$$"
    mkdir "$srv"
    srvid=$(stat -c %i "$srv")
    sh -c "echo \$\$ > $srv/cgroup.procs && exec $NET serve 127.0.0.1 $p4 1" >"$TMP/s4" &
    s4=$!
    sh -c "echo \$\$ > $srv/cgroup.procs && exec $NET serve ::1 $p6 1" >"$TMP/s6" &
    s6=$!
    # A listener that hands accept() to a child: the owner and the acceptor differ.
    "$NET" handoff 127.0.0.1 $ph >"$TMP/sh" &
    sh_owner=$!
    # UDP servers in the same cgroup: 3 datagrams each, answered.
    sh -c "echo \$\$ > $srv/cgroup.procs && exec $NET udpserve 127.0.0.1 $pu4 3" >"$TMP/u4" &
    u4=$!
    sh -c "echo \$\$ > $srv/cgroup.procs && exec $NET udpserve ::1 $pu6 3" >"$TMP/u6" &
    u6=$!
    # A DNS server (port 53 of a loopback address of its own) and a server
    # for the address it answers.
    "$NET" dnsserve 127.0.0.77 53 1 >"$TMP/d" &
    d=$!
    "$NET" serve 127.0.0.1 $pd 1 >"$TMP/sd" &
    sd=$!
    i=0
    while ! { grep -q ready "$TMP/s4" && grep -q ready "$TMP/s6" && grep -q ready "$TMP/sh" && grep -q ready "$TMP/u4" && grep -q ready "$TMP/u6" && grep -q ready "$TMP/d" && grep -q ready "$TMP/sd"; } 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
    "$NET" udpsend 127.0.0.1 $pu4 3 >"$TMP/uc4" & uc4=$!; wait $uc4; ru4=$?
    "$NET" udpsend ::1 $pu6 3 >"$TMP/uc6" & uc6=$!; wait $uc6; ru6=$?
    "$NET" connect 127.0.0.1 $p4 >"$TMP/c4" & c4=$!; wait $c4; r4=$?
    "$NET" connect ::1 $p6 >"$TMP/c6" & c6=$!; wait $c6; r6=$?
    "$NET" connect 127.0.0.1 $pr >"$TMP/cr" & cr=$!; wait $cr
    "$NET" connect 127.0.0.1 $ph >"$TMP/ch" & ch=$!; wait $ch; rh=$?
    "$NET" dnsconnect 127.0.0.77 53 $pd >"$TMP/cd" & cd=$!; wait $cd; rd=$?
    sh_child=$(awk '/^child/ { print $2 }' "$TMP/sh")
    # The servers exit once they have accepted (on the fentry and kprobe rungs
    # the accept event comes from accept() itself).
    i=0
    while { kill -0 $s4 || kill -0 $s6 || kill -0 $sh_owner || kill -0 $u4 || kill -0 $u6; } 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
    kill $s4 $s6 $sh_owner $u4 $u6 $d $sd 2>/dev/null
    # The UDP counts come once a second.
    sleep 1.5
    kill -INT $tpid; wait $tpid
    rmdir "$srv"
    secs=$(( $(date +%s) - start ))

    problems=""
    [ $r4 -eq 0 ] || problems="$problems; IPv4 connect failed: $(cat "$TMP/c4")"
    [ $r6 -eq 0 ] || problems="$problems; IPv6 connect failed: $(cat "$TMP/c6")"
    grep -q ECONNREFUSED "$TMP/cr" || problems="$problems; refused connect: $(cat "$TMP/cr")"
    h="\"hook\":\"$rung\""
    # Exactly one connect and one accept per accepted connection, none doubled.
    expect "v4 events" 2 "$out" "\"dport\":$p4,"
    expect "v4 connect" 1 "$out" "\"dport\":$p4," '"event":"connect"' '"outcome":"established"' "\"pid\":$c4," '"comm":"cgnet"' '"family":"ipv4"' "$h" '"process_known":true'
    expect "v4 accept" 1 "$out" "\"dport\":$p4," '"event":"accept"' '"outcome":"established"' "\"pid\":$s4," '"comm":"cgnet"' "\"cgroup_id\":$srvid," '"family":"ipv4"' "$h" '"process_known":true'
    expect "v6 events" 2 "$out" "\"dport\":$p6,"
    expect "v6 connect" 1 "$out" "\"dport\":$p6," '"event":"connect"' '"outcome":"established"' "\"pid\":$c6," '"family":"ipv6"' "$h"
    expect "v6 accept" 1 "$out" "\"dport\":$p6," '"event":"accept"' "\"pid\":$s6," "\"cgroup_id\":$srvid," '"family":"ipv6"' "$h"
    expect "refused events" 1 "$out" "\"dport\":$pr,"
    expect "refused connect" 1 "$out" "\"dport\":$pr," '"event":"connect"' '"outcome":"failed"' '"error":"ECONNREFUSED"' "\"pid\":$cr," "$h"
    [ $rh -eq 0 ] || problems="$problems; handoff connect failed: $(cat "$TMP/ch")"
    # Who accepted: the child, on every rung (the tracepoint rung learns it
    # from the syscall tracepoints on accept() and accept4()).
    acceptor=$sh_child
    expect "handoff events" 2 "$out" "\"dport\":$ph,"
    expect "handoff accept" 1 "$out" "\"dport\":$ph," '"event":"accept"' "\"pid\":$acceptor," "$h"
    # UDP, the same on every rung (cgroup sock_addr hooks): one flow each way
    # per family, the first datagram an event with its process, the rest
    # counted; the answers make no flows.
    [ $ru4 -eq 0 ] || problems="$problems; UDP IPv4 exchange failed: $(cat "$TMP/uc4")"
    [ $ru6 -eq 0 ] || problems="$problems; UDP IPv6 exchange failed: $(cat "$TMP/uc6")"
    hu='"hook":"cgroup_sock_addr"'
    for f in 4 6; do
        eval "pu=\$pu$f uc=\$uc$f us=\$u$f"
        fam=ipv$f
        # At least one event (one per CPU and second) with the process...
        [ "$(count "$out" "\"dport\":$pu," '"event":"connect"' '"protocol":"udp"' "\"pid\":$uc," "\"family\":\"$fam\"" "$hu" '"process_known":true')" -ge 1 ] \
            || problems="$problems; udp v$f: no outbound event of pid $uc"
        [ "$(count "$out" "\"dport\":$pu," '"event":"accept"' '"protocol":"udp"' "\"pid\":$us," "\"cgroup_id\":$srvid," "\"family\":\"$fam\"" "$hu")" -ge 1 ] \
            || problems="$problems; udp v$f: no inbound event of server pid $us in cgroup $srvid"
        # ...and events plus kernel counts are exactly the 3 datagrams each way.
        for ev in connect accept; do
            n=$(udp_total "$out" "$pu" "$ev")
            [ "$n" = 3 ] || problems="$problems; udp v$f $ev: $n datagrams in events and counts, want 3"
        done
    done
    expect "udp answers" 0 "$out" "\"sport\":$pu4," '"event":"connect"'
    # A connect to an address a DNS answer gave names its peer by the name.
    [ $rd -eq 0 ] || problems="$problems; DNS then connect failed: $(cat "$TMP/cd")"
    expect "peer_name" 1 "$out" "\"dport\":$pd," '"event":"connect"' "\"pid\":$cd," '"peer_name":"vm.example.test"'
    expect "lost" 1 "$err" " 0 lost"
    n=$(grep -c . "$out")
    if [ -z "$problems" ] && [ "$expected" = yes ]; then
        echo "RESULT rung=$rung ok: v4, v6, refused, accept in own cgroup (id $srvid), accept by pid $acceptor (listener $sh_owner), UDP v4 and v6 flows both ways exact, peer_name from a DNS answer; $n events in ${secs}s"
    elif [ -z "$problems" ]; then
        echo "RESULT rung=$rung ok (not expected to load here)"
    else
        echo "RESULT rung=$rung fail:${problems#;}"
        echo "--- events of $rung"; grep "\"dport\":\($p4\|$p6\|$pr\|$ph\|$pu4\|$pu6\)," "$out"; echo "--- stderr"; cat "$err"
        status=1
    fi
done
rm -rf "$TMP"
exit $status
