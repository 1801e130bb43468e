// SPDX-License-Identifier: GPL-2.0
/*
 * trace.bpf.c: ConnGuard's connection tracer.
 *
 * Every TCP connect and accept on the node becomes one cg_connection_event in
 * the `events` ring buffer, once its outcome is known. The hooks here are the
 * ones that work on kernels without kprobes or fentry (`connguard probe` lists what a kernel has):
 * the BTF tracepoint inet_sock_set_state, which fires on every TCP state change
 * with a typed struct sock *.
 *
 *   connect: CLOSE -> SYN_SENT runs inside connect() (tcp_v4_connect /
 *            tcp_v6_connect), so the current task is the caller: remember it
 *            in `connecting`. SYN_SENT -> ESTABLISHED or SYN_SENT -> CLOSE
 *            (often in softirq, where the current task is anyone) emits the
 *            event with the remembered caller. The source port is only known
 *            at that second transition.
 *   accept:  SYN_RECV -> ESTABLISHED runs in softirq on the child socket, so
 *            the current task is whoever sent the packet. The child inherits
 *            the listener's cgroup (sk_cgrp_data), and the listener's owner is
 *            remembered in `listeners` when listen() moves it CLOSE -> LISTEN.
 *            The process that accepts may be another one (a pre-forked
 *            worker), so, where the kernel has syscall tracepoints, the event
 *            waits in `accepting` until accept() or accept4() returns the
 *            socket, and goes out from there with the caller's pid and comm.
 *            One that no accept() takes within a second (io_uring, a server
 *            that never accepts) is sent by user space, naming the listener's
 *            owner.
 *
 * UDP (no connection, no state change): cgroup sock_addr programs that always
 * allow, attached at the cgroup v2 root (see the UDP section below), report
 * the first datagram of each flow in a counting period and count the rest.
 *
 * Also cgroup_mkdir / cgroup_rmdir, so the agent learns of a container's cgroup
 * before the container's first connection.
 *
 * The attach ladder. The tracepoint above is the bottom rung; on
 * kernels that allow them, better rungs take over the process attribution:
 *   fentry:  fentry/tcp_connect records the caller (in connect(), in the
 *            caller's context) and fexit/inet_csk_accept emits the accept
 *            event in the accepting process's context, with its pid and comm.
 *   kprobe:  the same with kprobe/tcp_connect and kretprobe/inet_csk_accept.
 * The outcome of a connect always comes from the tracepoint (it needs the
 * state change). Those programs are off by default (autoload); user space
 * turns on one rung and sets the knobs below, so that the tracepoint neither
 * records the caller nor emits the accept a second time: each connection is
 * one connect event and one accept event on every rung.
 */
#include <linux/types.h>
#include <linux/bpf.h>
#include <asm/ptrace.h> /* struct pt_regs for BPF_KPROBE (uapi layout = kernel layout) */
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include "kernel_types.h"
#include "connguard.h"
#include "event.h"
#include "packet.h"

char LICENSE[] SEC("license") = "GPL";

/* Put the record types into the object's BTF, so that the layout test can
 * compare them with what Swift imports from connguard.h. */
const struct cg_connection_event *unused_connection_event __attribute__((unused));
const struct cg_cgroup_event *unused_cgroup_event __attribute__((unused));
const struct cg_dns_message *unused_dns_message __attribute__((unused));

/* Wake the reader only once this many bytes wait in the ring buffer (0: on
 * every event). Under load this spares a context switch per event; the reader
 * also polls on a short timeout, so a quiet trickle is delivered promptly. */
const volatile __u64 wakeup_data_size = 0;

/* Which rung attributes connects and accepts (enum cg_hook): CG_HOOK_TP_BTF,
 * CG_HOOK_FENTRY or CG_HOOK_KPROBE. Written into every connection event's
 * `hook`. With any other than CG_HOOK_TP_BTF, the tracepoint leaves the
 * caller record and the accept event to that rung's programs. */
const volatile __u32 attribution_hook = CG_HOOK_TP_BTF;

/* On the tracepoint rung: hold accepts in `accepting` for the syscall
 * tracepoints on accept()/accept4() to name the accepting process (1), or
 * send them at once naming the listener's owner (0). User space sets 1 only
 * when it attaches those tracepoints. */
const volatile __u32 accept_via_syscall = 0;

/* Repeat counting, for the agent (0: off, every event goes to the ring
 * buffer, as `connguard trace` wants). With it on, the first event of each
 * connection (cg_repeat_key) in a counting period, and up to
 * repeats_sent_per_cpu others a second on each CPU, go to the ring buffer;
 * the others are only counted, in the map `repeats` points to. User space
 * swaps that map for its twin once a second (the update waits for running
 * programs) and folds the old one's counts into the aggregates. Under a
 * storm of one connection repeated, the reader then handles a few thousand
 * events a second instead of 100,000. */
const volatile __u32 count_repeats = 0;
const volatile __u64 repeats_sent_per_cpu = 0;

/* Per CPU, so that a connection repeated on every CPU at once does not bounce
 * one cache line between them. 4096 connections per period; past that,
 * events go to the ring buffer as usual. */
struct repeat_map {
    __uint(type, BPF_MAP_TYPE_PERCPU_HASH);
    __uint(max_entries, 4096);
    __type(key, struct cg_repeat_key);
    __type(value, struct cg_repeat_count);
} repeats_a SEC(".maps"), repeats_b SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
    __uint(max_entries, 1);
    __type(key, __u32);
    __array(values, struct repeat_map);
} repeats SEC(".maps") = {
    .values = {&repeats_a},
};

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, struct cg_repeat_budget);
} repeat_budget SEC(".maps");

/* Events to user space. Writer: every program here. Reader: the agent's
 * ring-buffer thread. Size set by user space before load. */
struct {
    __uint(type, BPF_MAP_TYPE_RINGBUF);
    __uint(max_entries, 1 << 24);
} events SEC(".maps");

/* Why events were lost or delivered incomplete (enum cg_drop_reason).
 * Writer: every program here. Reader: user space, summed over CPUs. Never
 * deleted. */
struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, CG_DROP_REASON_COUNT);
    __type(key, __u32);
    __type(value, __u64);
} drops SEC(".maps");

/* Connects in flight: socket address -> caller. Inserted at CLOSE -> SYN_SENT,
 * deleted when the socket leaves SYN_SENT. A plain hash, not LRU: a full map
 * must be counted (CG_DROP_CONNECT_MAP_FULL), not evict silently.
 * Size: each connect touches a random bucket of the map, so its bucket array
 * (16 bytes per entry) should stay in the CPU's cache; at 64k entries it took
 * a cache miss per access and cost the storm benchmark several percent.
 * 16k connects in SYN_SENT at once is far beyond a normal node; past that,
 * events still come, with the socket's cgroup, flagged "process unknown",
 * and counted. */
struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 16384);
    __type(key, __u64);
    __type(value, struct cg_connecting);
} connecting SEC(".maps");

/* Listening ports -> owner. Inserted at CLOSE -> LISTEN (inside listen()) and
 * by user space at start for listeners that already existed; deleted at
 * LISTEN -> CLOSE when the socket matches. Read at every accept. 8k
 * listening (namespace, port) pairs per node; past that, accepts are flagged
 * "listener unknown" and counted (CG_DROP_LISTENER_MAP_FULL). */
struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 8192);
    __type(key, struct cg_listener_key);
    __type(value, struct cg_listener);
} listeners SEC(".maps");

/* Accepted sockets not yet returned by accept(): socket address -> the event,
 * filled in but for the process. Inserted at SYN_RECV -> ESTABLISHED,
 * claimed (deleted) by the accept()/accept4() exit that returns the socket, or
 * by user space once it is a second old: whoever deletes it sends it, so it is
 * sent exactly once. A plain hash, not LRU; when full, accepts are sent at
 * once naming the listener's owner, and counted (CG_DROP_ACCEPT_MAP_FULL).
 * An entry lives from the handshake to accept(), microseconds in practice:
 * 4k at once is plenty, and keeps the map small enough for the cache. */
struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 4096);
    __type(key, __u64);
    __type(value, struct cg_connection_event);
} accepting SEC(".maps");

/* Established connections seen from their client: flow -> the client's
 * cgroup id. Inserted when a connect is established; looked up and deleted
 * by the accept at the other end when the listener is on this node in the
 * same network namespace (loopback, the node's own address, a shared
 * namespace), so that the accept names its client's cgroup (the peer's
 * workload) rather than an address every local process shares. Entries of
 * connects to other hosts are never claimed: LRU, so they age out instead of
 * filling the map, and per CPU (no common LRU list to contend on). The client
 * is established before the server (it sends the handshake's last ACK), so
 * the entry is there when the accept looks. */
struct {
    __uint(type, BPF_MAP_TYPE_LRU_HASH);
    __uint(map_flags, BPF_F_NO_COMMON_LRU);
    __uint(max_entries, 16384);
    __type(key, struct cg_local_flow_key);
    __type(value, __u64);
} local_clients SEC(".maps");

/* With count_repeats most accepts are counted, never held, and the exits of
 * accept() would walk the descriptor table for nothing. held_count says when
 * nothing is held: [0] is what the kernel put in `accepting` less what it
 * took out (atomically; rare with count_repeats), [1] what user space swept.
 * Unused (never read) without count_repeats, where nearly every accept is
 * held anyway. */
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 2);
    __type(key, __u32);
    __type(value, __u64);
} held_count SEC(".maps");

static __always_inline void held_changed(__s64 by)
{
    __u32 zero = 0;
    __u64 *n;

    if (!count_repeats)
        return;
    n = bpf_map_lookup_elem(&held_count, &zero);
    if (n)
        __sync_fetch_and_add(n, by);
}

static __always_inline int nothing_held(void)
{
    __u32 kernel = 0, swept = 1;
    __u64 *k, *u;

    if (!count_repeats)
        return 0;
    k = bpf_map_lookup_elem(&held_count, &kernel);
    u = bpf_map_lookup_elem(&held_count, &swept);
    return k && u && *k == *u;
}

static __always_inline void count_drop(__u32 reason)
{
    __u64 *n = bpf_map_lookup_elem(&drops, &reason);
    if (n)
        *n += 1; /* per-CPU slot: no atomics needed */
}

/* Wake the reader when this record makes the waiting data cross the
 * threshold, not on every record above it: while the reader drains a backlog,
 * each forced wake-up would be a wasted (in a VM, costly) interrupt. The
 * reserved record already counts in AVAIL_DATA. A reader that sleeps past a
 * crossing still drains on its poll timeout. */
static __always_inline long wakeup_flags(__u64 record_size)
{
    __u64 avail;

    if (!wakeup_data_size)
        return 0;
    avail = bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA);
    return avail >= wakeup_data_size && avail - record_size < wakeup_data_size
               ? BPF_RB_FORCE_WAKEUP
               : BPF_RB_NO_WAKEUP;
}

/* Whether the event of `key` at `now` was counted as a repeat, so that it
 * must not be sent. The first event of a connection in a period makes its
 * entry (and is sent); later TCP ones are sent while this CPU's budget for
 * the second lasts, then counted; later UDP datagrams are only counted,
 * undated (`now` 0). A full map only means more events are sent. */
static __always_inline int counted_key(const struct cg_repeat_key *key, __u64 now)
{
    struct cg_repeat_count *n, first = {};
    struct cg_repeat_budget *budget;
    __u32 zero = 0;
    void *counts;

    counts = bpf_map_lookup_elem(&repeats, &zero);
    if (!counts)
        return 0;
    n = bpf_map_lookup_elem(counts, key);
    if (!n) {
        bpf_map_update_elem(counts, key, &first, BPF_NOEXIST);
        return 0;
    }
    budget = key->protocol == IPPROTO_UDP ? 0 : bpf_map_lookup_elem(&repeat_budget, &zero);
    if (budget) {
        if (now - budget->second_start >= 1000000000ULL) {
            budget->second_start = now;
            budget->sent = 0;
        }
        if (budget->sent < repeats_sent_per_cpu) {
            budget->sent += 1;
            return 0;
        }
    }
    n->count += 1; /* this CPU's slot: no atomics needed */
    n->last_ns = now;
    return 1;
}

/* With count_repeats (UDP: always, in `trace` too, since a datagram is not
 * an event): whether `e` was counted as a repeat. */
static __always_inline int counted_as_repeat(const struct cg_connection_event *e)
{
    struct cg_repeat_key key = {};

    if (!count_repeats && e->protocol != IPPROTO_UDP)
        return 0;
    repeat_key(&key, e->cgroup_id, e->direction == CG_DIRECTION_CONNECT ? e->daddr : e->saddr, e->dport, e->family,
               e->direction, e->outcome, e->protocol, e->peer_cgroup_id);
    return counted_key(&key, e->timestamp_ns);
}

/* Sends a finished event (built on the stack). */
static __always_inline void send_now(const struct cg_connection_event *e)
{
    struct cg_connection_event *out = bpf_ringbuf_reserve(&events, sizeof(*out), 0);

    if (!out) {
        count_drop(CG_DROP_RINGBUF_FULL);
        return;
    }
    __builtin_memcpy(out, e, sizeof(*out));
    bpf_ringbuf_submit(out, wakeup_flags(sizeof(*out) + 8 /* record header */));
}

/* Sends a finished event unless it is a counted repeat. */
static __always_inline void send_event(const struct cg_connection_event *e)
{
    if (!counted_as_repeat(e))
        send_now(e);
}

/* Reads of the socket. `direct` is a compile-time constant at every call.
 * Where the socket is a typed (BTF) pointer, in tp_btf and fentry programs,
 * the verifier lets the program load its fields directly: one instruction
 * each, with a fault handler, several times cheaper than the helper call
 * bpf_probe_read_kernel that BPF_CORE_READ makes. The kprobe and fexit
 * programs get the socket as a plain number and must use the helper. Both
 * forms are CO-RE relocated (preserve_access_index in kernel_types.h). */
#define SK_READ(direct, sk, field) ((direct) ? (sk)->field : BPF_CORE_READ(sk, field))

static __always_inline __u32 sock_netns(const struct sock *sk, int direct)
{
    return direct ? sk->__sk_common.skc_net.net->ns.inum
                  : BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
}

static __always_inline __u64 sock_cgroup_id(const struct sock *sk, int direct)
{
    return direct ? sk->sk_cgrp_data.cgroup->kn->id : BPF_CORE_READ(sk, sk_cgrp_data.cgroup, kn, id);
}

/* Local and remote address and port of sk. */
static __always_inline void read_endpoints(const struct sock *sk, __u16 family, __u8 local[16],
                                           __u16 *lport, __u8 remote[16], __u16 *rport, int direct)
{
    /* No stale ring-buffer bytes behind an IPv4 address. */
    __builtin_memset(local, 0, 16);
    __builtin_memset(remote, 0, 16);
    if (direct) {
        if (family == AF_INET) {
            *(__u32 *)local = sk->__sk_common.skc_rcv_saddr;
            *(__u32 *)remote = sk->__sk_common.skc_daddr;
        } else {
            for (int i = 0; i < 4; i++) {
                ((__u32 *)local)[i] = sk->__sk_common.skc_v6_rcv_saddr.in6_u.u6_addr32[i];
                ((__u32 *)remote)[i] = sk->__sk_common.skc_v6_daddr.in6_u.u6_addr32[i];
            }
        }
    } else if (family == AF_INET) {
        /* Explicit sizes: BPF_CORE_READ_INTO would take sizeof(*local), one byte. */
        bpf_core_read(local, 4, &sk->__sk_common.skc_rcv_saddr);
        bpf_core_read(remote, 4, &sk->__sk_common.skc_daddr);
    } else {
        bpf_core_read(local, 16, &sk->__sk_common.skc_v6_rcv_saddr);
        bpf_core_read(remote, 16, &sk->__sk_common.skc_v6_daddr);
    }
    *lport = SK_READ(direct, sk, __sk_common.skc_num);
    *rport = bpf_ntohs(SK_READ(direct, sk, __sk_common.skc_dport));
}

/* a (event layout: IPv4 in the first 4 bytes) is a loopback address. */
static __always_inline int is_loopback(const __u8 a[16], __u16 family)
{
    if (family == AF_INET)
        return a[0] == 127;
    if (((const __u32 *)a)[0] | ((const __u32 *)a)[1])
        return 0;
    if (((const __u32 *)a)[2] == bpf_htonl(0xffff))
        return a[12] == 127; /* ::ffff:127.0.0.0/104 */
    return ((const __u32 *)a)[2] == 0 && ((const __u32 *)a)[3] == bpf_htonl(1); /* ::1 */
}

/* An event-layout address in the 16-byte form of cg_local_flow_key. */
static __always_inline void flow_address(__u8 out[16], const __u8 a[16], __u16 family)
{
    if (family == AF_INET) {
        ((__u32 *)out)[0] = 0;
        ((__u32 *)out)[1] = 0;
        ((__u32 *)out)[2] = bpf_htonl(0xffff);
        ((__u32 *)out)[3] = ((const __u32 *)a)[0];
    } else {
        __builtin_memcpy(out, a, 16);
    }
}

/* The key of `local_clients` for the connection of event e (either side). */
static __always_inline void local_flow_key(struct cg_local_flow_key *k, const struct cg_connection_event *e)
{
    const __u8 *client = e->saddr, *server = e->daddr; /* flow direction on both sides */

    flow_address(k->client, client, e->family);
    flow_address(k->server, server, e->family);
    k->netns = e->netns;
    k->client_port = e->sport;
    k->server_port = e->dport;
}

/* The cgroup of whoever listens on the destination of a connect to a
 * loopback address (only there is the listener sure to be the peer: the
 * port alone also names listeners on the wildcard address, which a connect
 * to another host never reaches). 0 if none is known. */
static __always_inline __u64 loopback_listener_cgroup(const struct cg_connection_event *e)
{
    struct cg_listener_key key = {};
    struct cg_listener *owner;

    if (!is_loopback(e->daddr, e->family))
        return 0;
    key.netns = e->netns;
    key.port = e->dport;
    key.family = e->family;
    owner = bpf_map_lookup_elem(&listeners, &key);
    if (!owner && e->family == AF_INET) {
        key.family = AF_INET6; /* a dual-stack listener takes IPv4 too */
        owner = bpf_map_lookup_elem(&listeners, &key);
    }
    return owner ? owner->cgroup_id : 0;
}

static __always_inline void on_connect_start(const struct sock *sk)
{
    struct cg_connecting who = {};
    __u64 key = (__u64)sk;

    who.pid = bpf_get_current_pid_tgid() >> 32;
    who.uid = (__u32)bpf_get_current_uid_gid();
    who.cgroup_id = bpf_get_current_cgroup_id();
    bpf_get_current_comm(who.comm, sizeof(who.comm));
    if (bpf_map_update_elem(&connecting, &key, &who, BPF_ANY))
        count_drop(CG_DROP_CONNECT_MAP_FULL);
}

static __always_inline void on_connect_done(const struct sock *sk, __u16 family, int newstate, int direct)
{
    __u64 key = (__u64)sk;
    struct cg_connecting *who = bpf_map_lookup_elem(&connecting, &key);
    struct cg_connection_event e;

    fill_event(&e, CG_DIRECTION_CONNECT, newstate == TCP_ESTABLISHED ? CG_OUTCOME_ESTABLISHED : CG_OUTCOME_FAILED,
               attribution_hook, family, 0);
    e.netns = sock_netns(sk, direct);
    /* tcp_reset() / tcp_write_err() set sk_err before tcp_done() closes. */
    if (newstate != TCP_ESTABLISHED)
        e.error = SK_READ(direct, sk, sk_err);
    read_endpoints(sk, family, e.saddr, &e.sport, e.daddr, &e.dport, direct);
    if (who) {
        e.cgroup_id = who->cgroup_id;
        event_process_known(&e, who->pid, who->uid, who->comm);
        bpf_map_delete_elem(&connecting, &key);
    } else {
        /* Began before we attached, or `connecting` was full: the socket's
         * cgroup is still right; the process is not known. */
        e.cgroup_id = sock_cgroup_id(sk, direct);
        event_process_unknown(&e, CG_FLAG_PROCESS_UNKNOWN);
    }
    if (newstate == TCP_ESTABLISHED) {
        struct cg_local_flow_key flow;

        local_flow_key(&flow, &e);
        bpf_map_update_elem(&local_clients, &flow, &e.cgroup_id, BPF_ANY);
        e.peer_cgroup_id = loopback_listener_cgroup(&e);
    }
    send_event(&e);
}

static __always_inline void on_listen(const struct sock *sk, __u16 family)
{
    struct cg_listener_key key = {};
    struct cg_listener owner = {};

    key.netns = sock_netns(sk, 1);
    key.port = sk->__sk_common.skc_num;
    key.family = family;
    owner.sock = (__u64)sk;
    owner.cgroup_id = sock_cgroup_id(sk, 1);
    owner.pid = bpf_get_current_pid_tgid() >> 32;
    owner.uid = (__u32)bpf_get_current_uid_gid();
    bpf_get_current_comm(owner.comm, sizeof(owner.comm));
    if (bpf_map_update_elem(&listeners, &key, &owner, BPF_ANY))
        count_drop(CG_DROP_LISTENER_MAP_FULL);
}

static __always_inline void on_unlisten(const struct sock *sk, __u16 family)
{
    struct cg_listener_key key = {};
    struct cg_listener *owner;

    key.netns = sock_netns(sk, 1);
    key.port = sk->__sk_common.skc_num;
    key.family = family;
    owner = bpf_map_lookup_elem(&listeners, &key);
    /* Another socket may share the port (SO_REUSEPORT): only forget our own. */
    if (owner && owner->sock == (__u64)sk)
        bpf_map_delete_elem(&listeners, &key);
}

/* Fills e with an accepted connection. From the tracepoint (in softirq,
 * in_process = 0) the process is the listener's remembered owner; from
 * fexit/kretprobe on inet_csk_accept (in_process = 1) it is the current task,
 * which accepted. Only the tracepoint has sk as a typed pointer, so in_process
 * also means "read through the helper". */
static __always_inline void fill_accept(struct cg_connection_event *e, const struct sock *sk, __u16 family,
                                        int in_process)
{
    struct cg_listener_key key = {};
    struct cg_listener *owner;
    __u16 lport, rport;

    /* The cgroup is inherited from the listener. */
    fill_event(e, CG_DIRECTION_ACCEPT, CG_OUTCOME_ESTABLISHED, attribution_hook, family, sock_cgroup_id(sk, !in_process));
    e->netns = sock_netns(sk, !in_process);
    /* Flow direction: the remote client is the source. */
    read_endpoints(sk, family, e->daddr, &lport, e->saddr, &rport, !in_process);
    e->sport = rport;
    e->dport = lport;
    {
        struct cg_local_flow_key flow;
        __u64 *client;

        local_flow_key(&flow, e);
        client = bpf_map_lookup_elem(&local_clients, &flow);
        e->peer_cgroup_id = client ? *client : 0;
        if (client)
            bpf_map_delete_elem(&local_clients, &flow);
    }

    if (in_process) {
        event_process_current(e);
        return;
    }
    key.netns = e->netns;
    key.port = lport;
    key.family = family;
    owner = bpf_map_lookup_elem(&listeners, &key);
    if (owner)
        event_process_known(e, owner->pid, owner->uid, owner->comm);
    else
        event_process_unknown(e, CG_FLAG_LISTENER_UNKNOWN);
}

/* Takes the held accept of `key` out of `accepting` into a ring-buffer
 * record, for the caller to finish and submit; NULL if the ring buffer is full
 * (counted) or someone else claimed it first (it is theirs to send). */
static __always_inline struct cg_connection_event *claim_held(__u64 key, const struct cg_connection_event *held)
{
    struct cg_connection_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);

    if (!e) {
        count_drop(CG_DROP_RINGBUF_FULL);
        if (!bpf_map_delete_elem(&accepting, &key))
            held_changed(-1);
        return 0;
    }
    __builtin_memcpy(e, held, sizeof(*e));
    /* The delete decides: whoever deletes the entry sends the event. */
    if (bpf_map_delete_elem(&accepting, &key)) {
        bpf_ringbuf_discard(e, BPF_RB_NO_WAKEUP);
        return 0;
    }
    held_changed(-1);
    return e;
}

static __always_inline void on_accept(const struct sock *sk, __u16 family, int in_process)
{
    struct cg_connection_event e;

    fill_accept(&e, sk, family, in_process);
    send_event(&e);
}

/* The tracepoint rung with syscall tracepoints: hold the accept until
 * accept() returns the socket (see `accepting`). */
static __always_inline void hold_accept(const struct sock *sk, __u16 family)
{
    struct cg_connection_event e;
    struct cg_connection_event *stale, *out;
    __u64 key = (__u64)sk;
    long err;

    fill_accept(&e, sk, family, 0);
    /* A repeat is only counted: it needs no process. */
    if (counted_as_repeat(&e))
        return;
    err = bpf_map_update_elem(&accepting, &key, &e, BPF_NOEXIST);
    if (err == -17 /* EEXIST */) {
        /* A socket at this address died unaccepted (reset, or its listener
         * closed) and user space has not swept it yet: send it first. */
        stale = bpf_map_lookup_elem(&accepting, &key);
        if (stale && (out = claim_held(key, stale)))
            bpf_ringbuf_submit(out, wakeup_flags(sizeof(*out) + 8 /* record header */));
        err = bpf_map_update_elem(&accepting, &key, &e, BPF_NOEXIST);
    }
    if (err) {
        count_drop(CG_DROP_ACCEPT_MAP_FULL);
        send_now(&e);
        return;
    }
    held_changed(1);
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(cg_tp_sock_state, const struct sock *sk, int oldstate, int newstate)
{
    __u16 family;

    /* About six state changes per connection reach this program; only three
     * matter (the start and end of a connect, the accept) plus listen and
     * unlisten. Decide on the two states first, which reads nothing, so that
     * the closing handshake costs only the call. */
    if (!(oldstate == TCP_CLOSE && newstate == TCP_SYN_SENT) && oldstate != TCP_SYN_SENT &&
        !(oldstate == TCP_SYN_RECV && newstate == TCP_ESTABLISHED) && newstate != TCP_LISTEN &&
        oldstate != TCP_LISTEN)
        return 0;
    if (sk->sk_protocol != IPPROTO_TCP)
        return 0;
    family = sk->__sk_common.skc_family;
    if (family != AF_INET && family != AF_INET6)
        return 0;

    if (oldstate == TCP_CLOSE && newstate == TCP_SYN_SENT) {
        if (attribution_hook == CG_HOOK_TP_BTF)
            on_connect_start(sk);
    } else if (oldstate == TCP_SYN_SENT)
        on_connect_done(sk, family, newstate, 1);
    else if (oldstate == TCP_SYN_RECV && newstate == TCP_ESTABLISHED) {
        if (attribution_hook == CG_HOOK_TP_BTF) {
            if (accept_via_syscall)
                hold_accept(sk, family);
            else
                on_accept(sk, family, 0);
        }
    }
    else if (newstate == TCP_LISTEN)
        on_listen(sk, family);
    else if (oldstate == TCP_LISTEN)
        on_unlisten(sk, family);
    return 0;
}

/* TCP over IPv4 or IPv6: the family, else 0. */
static __always_inline __u16 tcp_family(const struct sock *sk)
{
    __u16 family;

    if (!sk || BPF_CORE_READ(sk, sk_protocol) != IPPROTO_TCP)
        return 0;
    family = BPF_CORE_READ(sk, __sk_common.skc_family);
    return family == AF_INET || family == AF_INET6 ? family : 0;
}

/* ---- fentry rung ("?": not loaded unless user space turns it on) ------- */

/* tcp_connect() runs inside connect() (after CLOSE -> SYN_SENT, before the
 * SYN is sent), in the caller's context. */
SEC("?fentry/tcp_connect")
int BPF_PROG(cg_fentry_tcp_connect, struct sock *sk)
{
    if (tcp_family(sk))
        on_connect_start(sk);
    return 0;
}

/* inet_csk_accept() returns the accepted child socket, in the context of the
 * process calling accept(). Its arguments differ between kernels (6.1: sk,
 * flags, err, kern; 6.10+: sk, arg), so the return value is read with
 * bpf_get_func_ret rather than by position. */
SEC("?fexit/inet_csk_accept")
int BPF_PROG(cg_fexit_inet_csk_accept, struct sock *listener)
{
    __u64 ret = 0;
    const struct sock *sk;
    __u16 family;

    if (bpf_get_func_ret(ctx, &ret))
        return 0;
    sk = (const struct sock *)ret;
    family = tcp_family(sk);
    if (family)
        on_accept(sk, family, 1);
    return 0;
}

/* ---- tracepoint rung: who accepted ---------------------------------------- */

/* The exit of accept() and accept4(): `ret` is the new descriptor. Classic
 * tracepoints (they need tracefs); the fields before `ret` are the common
 * header and the syscall number. */
struct syscall_exit {
    __u64 common;
    __s64 nr;
    __s64 ret;
};

static __always_inline int on_accept_return(const struct syscall_exit *ctx)
{
    struct task_struct *task = bpf_get_current_task_btf();
    struct cg_connection_event *held, *e;
    struct fdtable *fdt;
    struct file **fds;
    struct file *file = 0;
    struct socket *sock;
    __s64 fd = ctx->ret;
    __u64 key;

    if (fd < 0 || nothing_held())
        return 0;
    /* The task is a typed (BTF) pointer: its files and fd table are read
     * directly, several times cheaper than bpf_probe_read_kernel. The array
     * of files and what hangs off a file are untyped, so read by helper. */
    fdt = task->files->fdt;
    if (!fdt || fd >= fdt->max_fds)
        return 0;
    fds = fdt->fd;
    if (bpf_probe_read_kernel(&file, sizeof(file), &fds[fd]) || !file)
        return 0;
    /* accept() returned this descriptor for a socket; if another thread
     * replaced it meanwhile, the lookup below simply misses. */
    sock = BPF_CORE_READ(file, private_data);
    key = (__u64)BPF_CORE_READ(sock, sk);
    held = bpf_map_lookup_elem(&accepting, &key);
    if (!held)
        return 0; /* established before we attached, or already swept */
    e = claim_held(key, held);
    if (!e)
        return 0;
    e->pid = bpf_get_current_pid_tgid() >> 32;
    e->uid = (__u32)bpf_get_current_uid_gid();
    bpf_get_current_comm(e->comm, sizeof(e->comm));
    e->flags = 0;
    bpf_ringbuf_submit(e, wakeup_flags(sizeof(*e) + 8 /* record header */));
    return 0;
}

SEC("?tracepoint/syscalls/sys_exit_accept4")
int cg_tp_accept4_exit(const struct syscall_exit *ctx)
{
    return on_accept_return(ctx);
}

SEC("?tracepoint/syscalls/sys_exit_accept")
int cg_tp_accept_exit(const struct syscall_exit *ctx)
{
    return on_accept_return(ctx);
}

/* ---- kprobe rung -------------------------------------------------------- */

SEC("?kprobe/tcp_connect")
int BPF_KPROBE(cg_kprobe_tcp_connect, struct sock *sk)
{
    if (tcp_family(sk))
        on_connect_start(sk);
    return 0;
}

SEC("?kretprobe/inet_csk_accept")
int BPF_KRETPROBE(cg_kretprobe_inet_csk_accept, struct sock *sk)
{
    __u16 family = tcp_family(sk);

    if (family)
        on_accept(sk, family, 1);
    return 0;
}

static __always_inline void emit_cgroup(struct cgroup *cgrp, const char *path, __u32 kind)
{
    struct cg_cgroup_event *e;

    e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
    if (!e) {
        count_drop(CG_DROP_CGROUP_RINGBUF_FULL);
        return;
    }
    e->kind = kind;
    e->hierarchy_id = BPF_CORE_READ(cgrp, root, hierarchy_id);
    e->timestamp_ns = bpf_ktime_get_boot_ns();
    e->cgroup_id = BPF_CORE_READ(cgrp, kn, id);
    if (bpf_probe_read_kernel_str(e->path, sizeof(e->path), path) < 0)
        e->path[0] = 0;
    /* Always wake: the agent wants to know of a new container at once. */
    bpf_ringbuf_submit(e, 0);
}

SEC("tp_btf/cgroup_mkdir")
int BPF_PROG(cg_tp_cgroup_mkdir, struct cgroup *cgrp, const char *path)
{
    emit_cgroup(cgrp, path, CG_RECORD_CGROUP_MKDIR);
    return 0;
}

SEC("tp_btf/cgroup_rmdir")
int BPF_PROG(cg_tp_cgroup_rmdir, struct cgroup *cgrp, const char *path)
{
    emit_cgroup(cgrp, path, CG_RECORD_CGROUP_RMDIR);
    return 0;
}

/* ---- UDP ------------------------------------------------------------------
 *
 * A UDP flow is (cgroup, direction, peer address, service port): the peer's
 * port for a flow this node's process began, the local port for one a local
 * server received. The client's source port, ephemeral, is never part of it.
 * These are cgroup sock_addr programs that return 1 (allow) whatever they
 * see, attached at the cgroup v2 root: they run in the calling process, so
 * its pid, comm and cgroup are the event's.
 *   connect4/6: connect() on a UDP socket: an outbound flow (source port 0:
 *               the kernel binds it after this hook);
 *   sendmsg4/6: sendto()/sendmsg() with an address on an unconnected socket
 *               (the kernel runs it only then): outbound;
 *   recvmsg4/6: recvfrom()/recvmsg() asking for the sender's address (every
 *               UDP server does, to reply): inbound, naming the server.
 * Each datagram goes through counted_key: the first of a flow in a
 * counting period is sent, the rest counted in `repeats`, which user space
 * swaps and reads once a second.
 * A client's replies and a server's answers are not flows of their own: a
 * socket's first act decides its role (udp_sockets), and a client's receives
 * and a server's sends are its replies. Known gaps: datagrams a connected
 * socket sends with send()/write() (counted in no flow after its connect),
 * and a server that reads with recv()/read() without asking who sent. */

/* What the tracer keeps per UDP socket. Writer and reader: the programs
 * below; the kernel frees an entry with its socket. */
struct udp_socket {
    __u32 role;       /* what it did first (enum cg_udp_role) */
    __u32 pad;
    __u64 cgroup_id;  /* of the process that did it: the flows' workload */
};

struct {
    __uint(type, BPF_MAP_TYPE_SK_STORAGE);
    __uint(map_flags, BPF_F_NO_PREALLOC);
    __type(key, int);
    __type(value, struct udp_socket);
} udp_sockets SEC(".maps");

/* The socket's state, its role made `role` if it has none yet (then the
 * cgroup is read, once per socket: a helper call costs ~50 ns here, on every
 * datagram). 0 without storage (counted): the caller reads what it needs. */
static __always_inline struct udp_socket *udp_socket(struct bpf_sock *sk, __u32 role)
{
    struct udp_socket *u;

    if (!sk)
        return 0;
    u = bpf_sk_storage_get(&udp_sockets, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
    if (!u) {
        count_drop(CG_DROP_UDP_ROLE_STORAGE);
        return 0;
    }
    if (!u->role) {
        u->role = role;
        u->cgroup_id = bpf_get_current_cgroup_id();
    }
    return u;
}

/* The network namespace of the calling process (a sock_addr program cannot
 * reach the socket's; they are the same but for a socket handed over). */
static __always_inline __u32 current_netns(void)
{
    struct task_struct *task = bpf_get_current_task_btf();

    return task->nsproxy->net_ns->ns.inum;
}

/* An address as the sock_addr context gives it: IPv4 (one word, network
 * order) or IPv6 (four words). ::ffff:a.b.c.d becomes IPv4, as for TCP. */
struct udp_addr {
    __u32 w[4];
    __u16 family;
};

static __always_inline void udp_addr4(struct udp_addr *a, __u32 ip)
{
    a->w[0] = ip;
    a->w[1] = a->w[2] = a->w[3] = 0;
    a->family = AF_INET;
}

static __always_inline void udp_addr6(struct udp_addr *a, __u32 w0, __u32 w1, __u32 w2, __u32 w3)
{
    if (!w0 && !w1 && w2 == bpf_htonl(0xffff)) {
        udp_addr4(a, w3);
        return;
    }
    a->w[0] = w0;
    a->w[1] = w1;
    a->w[2] = w2;
    a->w[3] = w3;
    a->family = AF_INET6;
}

/* This socket's own address (0 if not bound to one). */
static __always_inline void udp_local_address(struct bpf_sock_addr *ctx, struct udp_addr *a, int v6)
{
    struct bpf_sock *sk = ctx->sk;

    if (!sk)
        udp_addr4(a, 0);
    else if (v6)
        udp_addr6(a, sk->src_ip6[0], sk->src_ip6[1], sk->src_ip6[2], sk->src_ip6[3]);
    else
        udp_addr4(a, sk->src_ip4);
}

/* One datagram (or a connect) of a flow: counted if its flow was already
 * reported in this counting period, else sent as the flow's event. This runs
 * for every datagram, so the common case, a repeat, costs only the key and
 * one lookup: the process, the namespace and the socket's own address are
 * read for a flow's first datagram alone. peer/pport: the other side. */
static __always_inline void on_udp(struct bpf_sock_addr *ctx, int v6, __u64 cgroup_id, __u8 direction,
                                   const struct udp_addr *peer, __u16 pport)
{
    struct cg_repeat_key key = {};
    struct cg_connection_event e;
    struct udp_addr local;
    __u16 family = peer->family, lport;

    lport = ctx->sk ? (__u16)ctx->sk->src_port : 0; /* host byte order */
    /* The service port, as the event's dport: the peer's going out, this
     * socket's coming in (the client's source port is ephemeral). */
    repeat_key(&key, cgroup_id, peer->w, direction == CG_DIRECTION_CONNECT ? pport : lport, family, direction,
               CG_OUTCOME_ESTABLISHED, IPPROTO_UDP, 0);
    /* No time for a repeat: reading the clock (~120 ns here) would double
     * the cost. User space dates a flow's counted datagrams when it reads
     * them, at most a second after the last. */
    if (counted_key(&key, 0))
        return;

    udp_local_address(ctx, &local, v6);

    fill_event(&e, direction, CG_OUTCOME_ESTABLISHED, CG_HOOK_CGROUP_SOCK_ADDR, family, cgroup_id);
    e.protocol = IPPROTO_UDP;
    e.netns = current_netns();
    event_process_current(&e);
    /* Flow direction, as for TCP: for an inbound flow the peer is the source.
     * A udp_addr is already in the event's layout (IPv4 in the first word,
     * the rest 0). An unbound side, or one of the other family (an IPv6
     * socket's wildcard address talking IPv4), is left 0. */
    __builtin_memset(e.saddr, 0, 16);
    __builtin_memset(e.daddr, 0, 16);
    if (direction == CG_DIRECTION_CONNECT) {
        if (local.family == family)
            __builtin_memcpy(e.saddr, local.w, 16);
        __builtin_memcpy(e.daddr, peer->w, 16);
        e.sport = lport;
        e.dport = pport;
    } else {
        __builtin_memcpy(e.saddr, peer->w, 16);
        if (local.family == family)
            __builtin_memcpy(e.daddr, local.w, 16);
        e.sport = pport;
        e.dport = lport;
    }
    send_now(&e);
}

static __always_inline int is_udp(struct bpf_sock_addr *ctx)
{
    return ctx->type == SOCK_DGRAM && ctx->protocol == IPPROTO_UDP;
}

/* Outbound: connect() or sendto() by this socket, unless it is a server
 * answering. */
static __always_inline void udp_out(struct bpf_sock_addr *ctx, const struct udp_addr *peer, int v6)
{
    struct udp_socket *u = udp_socket(ctx->sk, CG_UDP_ROLE_CLIENT);

    if (u && u->role != CG_UDP_ROLE_CLIENT)
        return;
    on_udp(ctx, v6, u ? u->cgroup_id : bpf_get_current_cgroup_id(), CG_DIRECTION_CONNECT, peer,
           bpf_ntohs((__u16)ctx->user_port));
}

/* Inbound: a datagram this socket receives, unless it is a client's reply. */
static __always_inline void udp_in(struct bpf_sock_addr *ctx, const struct udp_addr *peer, int v6)
{
    struct udp_socket *u = udp_socket(ctx->sk, CG_UDP_ROLE_SERVER);

    if (u && u->role != CG_UDP_ROLE_SERVER)
        return;
    on_udp(ctx, v6, u ? u->cgroup_id : bpf_get_current_cgroup_id(), CG_DIRECTION_ACCEPT, peer,
           bpf_ntohs((__u16)ctx->user_port));
}

/* The address the call names (destination, or a received datagram's
 * source). One 4-byte load per word: the only access the verifier allows. */
#define UDP_ADDR4(a, ctx) udp_addr4(a, (ctx)->user_ip4)
#define UDP_ADDR6(a, ctx) udp_addr6(a, (ctx)->user_ip6[0], (ctx)->user_ip6[1], (ctx)->user_ip6[2], (ctx)->user_ip6[3])

SEC("cgroup/connect4")
int cg_udp_connect4(struct bpf_sock_addr *ctx)
{
    struct udp_addr peer;

    if (is_udp(ctx)) {
        UDP_ADDR4(&peer, ctx);
        udp_out(ctx, &peer, 0);
    }
    return 1;
}

SEC("cgroup/connect6")
int cg_udp_connect6(struct bpf_sock_addr *ctx)
{
    struct udp_addr peer;

    if (is_udp(ctx)) {
        UDP_ADDR6(&peer, ctx);
        udp_out(ctx, &peer, 1);
    }
    return 1;
}

SEC("cgroup/sendmsg4")
int cg_udp_sendmsg4(struct bpf_sock_addr *ctx)
{
    struct udp_addr peer;

    if (is_udp(ctx)) {
        UDP_ADDR4(&peer, ctx);
        udp_out(ctx, &peer, 0);
    }
    return 1;
}

SEC("cgroup/sendmsg6")
int cg_udp_sendmsg6(struct bpf_sock_addr *ctx)
{
    struct udp_addr peer;

    if (is_udp(ctx)) {
        UDP_ADDR6(&peer, ctx);
        udp_out(ctx, &peer, 1);
    }
    return 1;
}

SEC("cgroup/recvmsg4")
int cg_udp_recvmsg4(struct bpf_sock_addr *ctx)
{
    struct udp_addr peer;

    if (is_udp(ctx)) {
        UDP_ADDR4(&peer, ctx);
        udp_in(ctx, &peer, 0);
    }
    return 1;
}

SEC("cgroup/recvmsg6")
int cg_udp_recvmsg6(struct bpf_sock_addr *ctx)
{
    struct udp_addr peer;

    if (is_udp(ctx)) {
        UDP_ADDR6(&peer, ctx);
        udp_in(ctx, &peer, 1);
    }
    return 1;
}

/* ---- DNS answers ---------------------------------------------------------
 * Every reply a socket of the node receives from port 53 (UDP, or the first
 * segment of a TCP reply) goes to user space as a cg_dns_message, on the
 * events ring: ahead of the connection its application makes next, so that
 * user space knows the name of that connection's peer when it reads it.
 * User space parses it (connguard_dns.h). Tracing only: always 1. Other
 * packets cost two field reads (a connected socket) or a header read (an
 * unconnected UDP socket). */

/* Answers passed on in the last second, by (cgroup, message hash): a
 * repeat (dnsperf, a client that asks again and again) is not passed on
 * again within the second, so user space reads each answer about once a
 * second however often it comes. Writer and reader: cg_dns_answers. LRU:
 * past 8,192 answers a second some repeats are passed on again, none lost. */
struct {
    __uint(type, BPF_MAP_TYPE_LRU_HASH);
    __uint(max_entries, 8192);
    __type(key, struct cg_dns_seen_key);
    __type(value, __u64);
} dns_seen SEC(".maps");

/* Where an answer is hashed before anything is reserved on the ring, per
 * CPU: a repeat costs no ring space (at dnsperf's rate, a reservation per
 * answer churns megabytes of ring a second for nothing). */
struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, __u8[CG_DNS_MAX_BYTES + 8]); /* + 8: dns_message_hash reads whole words */
} dns_scratch SEC(".maps");

/* Repeats not passed on (dns_seen). Reader: user space. */
struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, __u64);
} dns_repeats SEC(".maps");

SEC("cgroup_skb/ingress")
int cg_dns_answers(struct __sk_buff *skb)
{
    struct bpf_sock *sk = skb->sk;
    struct cg_dns_message *m;
    struct cg_dns_seen_key seen = {};
    struct packet p = {};
    __u32 off, avail, len, zero = 0;
    __u64 n, now, *last;
    __u8 *scratch;

    if (!sk || !may_be_dns_reply(skb, sk))
        return 1;
    if (packet_parse(skb, &p) != 1 || !dns_message_at(skb, &p, &off, &avail, &len))
        return 1;
    n = copy_length(avail, CG_DNS_MAX_BYTES);
    /* < 12: not a DNS message (its header alone is 12 bytes). */
    if (n < 12 || n > CG_DNS_MAX_BYTES)
        return 1;
    scratch = bpf_map_lookup_elem(&dns_scratch, &zero);
    if (!scratch || bpf_skb_load_bytes(skb, off, scratch, n))
        return 1;
    now = bpf_ktime_get_boot_ns();
    seen.id = bpf_skb_cgroup_id(skb);
    seen.message_hash = dns_message_hash(scratch, n);
    last = bpf_map_lookup_elem(&dns_seen, &seen);
    if (last && now - *last < DNS_REPEAT_NS) {
        __u64 *r = bpf_map_lookup_elem(&dns_repeats, &zero);
        if (r)
            *r += 1;
        return 1;
    }
    m = bpf_ringbuf_reserve(&events, sizeof(*m), 0);
    if (!m) {
        count_drop(CG_DROP_DNS_RINGBUF_FULL);
        return 1;
    }
    if (bpf_skb_load_bytes(skb, off, m->data, n)) {
        bpf_ringbuf_discard(m, 0);
        return 1;
    }
    bpf_map_update_elem(&dns_seen, &seen, &now, BPF_ANY);
    m->kind = CG_RECORD_DNS_MESSAGE;
    m->len = n;
    m->message_len = len;
    m->timestamp_ns = now;
    m->cgroup_id = seen.id;
    /* No helper reaches an IPv4 UDP socket's namespace from here (0 then);
     * the cgroup names the workload either way. */
    m->netns = 0;
    sk = bpf_sk_fullsock(sk);
    if (sk) {
        const struct sock *s = (const struct sock *)bpf_skc_to_tcp_sock(sk);
        if (!s)
            s = (const struct sock *)bpf_skc_to_udp6_sock(sk);
        if (s)
            m->netns = sock_netns(s, 0);
    }
    __builtin_memcpy(m->resolver, p.saddr, 16);
    m->resolver_port = p.sport;
    m->protocol = p.proto;
    m->pad = 0;
    m->pad2 = 0;
    bpf_ringbuf_submit(m, wakeup_flags(sizeof(*m) + 8 /* record header */));
    return 1;
}
