// SPDX-License-Identifier: GPL-2.0
/*
 * enforce.bpf.c: ConnGuard's enforcement. A TCP connection outside a
 * workload's baseline is refused in the kernel:
 *
 *   outbound: cgroup/connect4 and cgroup/connect6 run inside connect() (and
 *             sendto(MSG_FASTOPEN)), in the caller's context; returning 0
 *             makes the call fail with EPERM. The process is not harmed.
 *   inbound:  cgroup_skb/ingress runs for every packet delivered to a socket
 *             of the subtree; for a SYN (no ACK) the socket is the listener,
 *             so its cgroup is the server's. Returning 0 drops the SYN: the
 *             server never sees the connection, the client retries until its
 *             own timeout.
 *
 * All programs are attached to ONE cgroup directory, the watched subtree's
 * root, so they run for its descendants and nowhere else: processes outside
 * the subtree are never affected.
 *
 * Which rules apply to a cgroup: `cgroup_policy`, looked up by the cgroup's
 * id, then (on a miss) by its ancestors up to the watched root, so a policy
 * set on a pod's cgroup covers containers created in it later, from their
 * first connect(). A cgroup with no policy is allowed, unless user space set
 * unknown_deny (the operator's explicit `--unknown deny`).
 *
 * The other end: a peer on this node in the same network namespace (the
 * client of a SYN, the listener of a connect to a loopback address) is found
 * by bpf_sk_lookup_tcp and named by its cgroup's policy, i.e. its workload;
 * any other peer by its address, or by the workload that holds that address
 * (`peer_addresses`).
 *
 * Only CG_MODE_ENFORCE is decided here; learn and monitor allow everything
 * (monitor's would-deny verdicts come from traced events in user space).
 * Each refusal is a cg_connection_event with outcome CG_OUTCOME_DENIED in
 * `denials`.
 *
 * cgroup/post_bind4 and post_bind6 remember who bound each socket of the
 * subtree (socket storage), to name the server in an inbound denial; they
 * never refuse.
 *
 * tp_btf/cgroup_mkdir reports cgroups created in the subtree on a ring buffer
 * of their own (`cgroup_births`), so that the agent can arm a new container
 * at once: the tracer's cgroup events share a ring with every connection on
 * the node and wait behind them under load.
 */
#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include "kernel_types.h"
#include "connguard.h"
#include "event.h"
#include "packet.h"
#include "connguard_dns.h"

char LICENSE[] SEC("license") = "GPL";

/* The shared record types, into the object's BTF for the layout test. */
const struct cg_connection_event *unused_connection_event __attribute__((unused));
const struct cg_cgroup_policy *unused_cgroup_policy __attribute__((unused));
const struct cg_rule_key *unused_rule_key __attribute__((unused));
const struct cg_peer_rule_key *unused_peer_rule_key __attribute__((unused));
const struct cg_rule *unused_rule __attribute__((unused));
const struct cg_socket_owner *unused_socket_owner __attribute__((unused));
const struct cg_name_key *unused_name_key __attribute__((unused));
const struct cg_name_rule_key *unused_name_rule_key __attribute__((unused));
const struct cg_dns_grant_key *unused_dns_grant_key __attribute__((unused));
const struct cg_dns_grant *unused_dns_grant __attribute__((unused));

#define SOCK_STREAM 1
#define IPPROTO_MPTCP 262
#define EPERM 1
#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_ACK 0x10
/* Levels below the watched root that the ancestry walk looks at. Kubernetes
 * nests containers 3 deep (kubepods/<qos>/pod<uid>/<container>). */
#define MAX_ANCESTOR_DEPTH 8

/* Set by user space before load. */
const volatile __u8 unknown_deny = 0;  /* 1: deny cgroups with no policy (`--unknown deny`) */
const volatile __u32 watch_level = 0;  /* cgroup level of the directory the programs attach to */
const volatile __u64 watch_root_id = 0; /* and its id */

/* cgroup id -> workload and mode. Writer: user space (the agent arms a cgroup
 * when it appears, or a pod's parent cgroup before its containers start).
 * Deleter: user space, when the cgroup goes away or leaves policy. Reader:
 * every program here, for the caller's / listener's cgroup and its ancestors. */
struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(map_flags, BPF_F_NO_PREALLOC);
    __uint(max_entries, 16384);
    __type(key, __u64);
    __type(value, struct cg_cgroup_policy);
} cgroup_policy SEC(".maps");

/* Baseline rules by address or CIDR (struct cg_rule_key). Writer and deleter:
 * user space (baseline import, rule edits). Reader: connect and ingress, in
 * enforce mode. */
struct {
    __uint(type, BPF_MAP_TYPE_LPM_TRIE);
    __uint(map_flags, BPF_F_NO_PREALLOC); /* required for LPM tries */
    __uint(max_entries, 65536);
    __type(key, struct cg_rule_key);
    __type(value, struct cg_rule);
} rules_cidr SEC(".maps");

/* Baseline rules whose peer is a known workload. Writer and deleter: user
 * space. Reader: connect and ingress, in enforce mode, after the peer's
 * address was found in `peer_addresses`. */
struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(map_flags, BPF_F_NO_PREALLOC);
    __uint(max_entries, 65536);
    __type(key, struct cg_peer_rule_key);
    __type(value, struct cg_rule);
} rules_peer SEC(".maps");

/* Address (16 bytes, IPv4 as ::ffff:a.b.c.d) -> workload id of the peer that
 * holds it. Writer and deleter: user space, as pods and containers come and
 * go. Reader: connect and ingress, in enforce mode. */
struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(map_flags, BPF_F_NO_PREALLOC);
    __uint(max_entries, 65536);
    __type(key, __u8[16]);
    __type(value, __u32);
} peer_addresses SEC(".maps");

/* Who bound a socket. Writer: post_bind4/6 (the kernel frees it with the
 * socket). Reader: ingress, to name the server of a denied SYN. */
struct {
    __uint(type, BPF_MAP_TYPE_SK_STORAGE);
    __uint(map_flags, BPF_F_NO_PREALLOC);
    __type(key, int);
    __type(value, struct cg_socket_owner);
} socket_owners SEC(".maps");

/* Denials to user space (struct cg_connection_event, outcome DENIED). Writer:
 * connect and ingress. Reader: the agent's ring-buffer thread. Pinned: denials
 * made while no agent runs wait here for the next one. */
struct {
    __uint(type, BPF_MAP_TYPE_RINGBUF);
    __uint(max_entries, 1 << 20);
} denials SEC(".maps");

/* Cgroups created in the watched subtree (struct cg_cgroup_event, kind
 * CG_RECORD_CGROUP_MKDIR). Writer: cg_enf_mkdir. Reader: the agent, which
 * arms each new cgroup. Not pinned: with no agent, nobody arms. */
struct {
    __uint(type, BPF_MAP_TYPE_RINGBUF);
    __uint(max_entries, 1 << 16);
} cgroup_births SEC(".maps");

/* Decisions by direction (enum cg_decision). Writer: connect and ingress.
 * Reader: user space, summed over CPUs. Never deleted. */
struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, CG_DECISION_COUNT);
    __type(key, __u32);
    __type(value, __u64);
} decisions SEC(".maps");

/* What could not be reported or checked (enum cg_enforce_drop_reason).
 * Writer: every program here. Reader: user space. Never deleted. */
struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, CG_ENF_DROP_REASON_COUNT);
    __type(key, __u32);
    __type(value, __u64);
} enforce_drops SEC(".maps");

/* UDP flows let through, so that their replies pass without a rule: a
 * client's datagram out lets the peer's replies in, a server's datagram in
 * lets its answers out. Keyed by the local socket (its cookie) and the peer.
 * Writer: the UDP paths, when they allow a flow's first datagram. Reader:
 * the same, for every later datagram and every reply. Only for workloads in
 * enforce mode. LRU: flows that end age out; an evicted flow is checked
 * against the rules again at its next datagram. */
struct udp_flow_key {
    __u64 cookie;        /* bpf_get_socket_cookie of the local socket */
    __u8 peer[16];       /* IPv4 mapped */
    __u16 port;          /* the peer's port */
    __u8 pad[6];
};

struct {
    __uint(type, BPF_MAP_TYPE_LRU_HASH);
    __uint(max_entries, 16384);
    __type(key, struct udp_flow_key);
    __type(value, __u8);
} udp_allowed SEC(".maps");

/* The UDP flows each socket let through lately, in front of udp_allowed:
 * a socket's datagrams go to or come from a few peers (its resolvers, a
 * server's clients), and then the verdict costs one socket-storage read
 * instead of the policy and flow lookups (a helper call or hash lookup costs
 * 50-90 ns here, on every datagram). Direct-mapped by the peer's port and
 * address: a new flow takes its slot from an older one, which then goes to
 * udp_allowed again. Holds only what udp_allowed would: flows let through in
 * enforce mode, by peer and the peer's port, for both directions. Writer and
 * reader: the UDP paths; the kernel frees it with the socket. */
#define UDP_RECENT_FLOWS 16 /* a power of 2 */

struct udp_recent_flow {
    __u8 peer[16];       /* IPv4 mapped */
    __u16 port;          /* the peer's port */
    __u8 valid;
    __u8 pad[5];
};

struct udp_recent_flows {
    struct udp_recent_flow slot[UDP_RECENT_FLOWS];
};

struct {
    __uint(type, BPF_MAP_TYPE_SK_STORAGE);
    __uint(map_flags, BPF_F_NO_PREALLOC);
    __type(key, int);
    __type(value, struct udp_recent_flows);
} udp_recent SEC(".maps");

/* The slot of (peer, port). Consecutive ports (a client's round of servers,
 * a server's clients) land in different slots. */
static __always_inline struct udp_recent_flow *recent_slot(struct udp_recent_flows *r, const __u8 peer[16],
                                                           __u16 port)
{
    __u32 i = (port ^ peer[15] ^ (peer[14] << 4)) & (UDP_RECENT_FLOWS - 1);

    return &r->slot[i];
}

static __always_inline int is_recent_flow(struct udp_recent_flows *r, const __u8 peer[16], __u16 port)
{
    const __u64 *b = (const __u64 *)peer;
    struct udp_recent_flow *f;

    if (!r)
        return 0;
    f = recent_slot(r, peer, port);
    if (!f->valid || f->port != port)
        return 0;
    return ((const __u64 *)f->peer)[0] == b[0] && ((const __u64 *)f->peer)[1] == b[1];
}

static __always_inline void remember_flow(struct udp_recent_flows *r, const __u8 peer[16], __u16 port)
{
    struct udp_recent_flow *f;

    if (!r)
        return;
    f = recent_slot(r, peer, port);
    __builtin_memcpy(f->peer, peer, 16);
    f->port = port;
    f->valid = 1;
}

/* When each UDP flow's last denial was reported (struct cg_repeat_key, peer
 * IPv4-mapped, outcome DENIED): one denial event per flow and second, not
 * one per datagram. Writer and reader: the UDP denial paths. LRU, bounded: a
 * flood over more flows than this reports more, never grows. */
struct {
    __uint(type, BPF_MAP_TYPE_LRU_HASH);
    __uint(max_entries, 4096);
    __type(key, struct cg_repeat_key);
    __type(value, __u64);
} udp_denied SEC(".maps");

/* UDP denials not reported one by one (their flow's was, this second).
 * Writer: the UDP denial paths. Reader: user space. Not pinned. */
struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, __u64);
} udp_denial_repeats SEC(".maps");

/* ---- DNS names ---------------------------------------------------------
 * A rule on a name (`peer: {name: api.example.test}`, or a pattern
 * `*.example.test`) allows the addresses that DNS gives the workload for it.
 * The ingress program reads every answer an enforced workload receives from
 * a resolver its baseline lets it use, before the socket has it; for an
 * allowed name it grants the answer's addresses (dns_grants), so a client
 * that resolves and connects at once finds them granted. A grant holds
 * max(TTL, dns_floor_ns) after the last answer; connect only looks at it,
 * so an established connection is never cut. */

/* Set by user space before load: the operator's floor (default 5 minutes). */
const volatile __u64 dns_floor_ns = 300ULL * 1000000000ULL;

/* The names a workload's rules name (struct cg_name_key). Writer and
 * deleter: user space, with the rules. Reader: ingress, per answer. */
struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(map_flags, BPF_F_NO_PREALLOC);
    __uint(max_entries, 16384);
    __type(key, struct cg_name_key);
    __type(value, __u32);
} names_allowed SEC(".maps");

/* Rules on names, by port and protocol. Writer and deleter: user space.
 * Reader: connect and sendmsg, for a granted address. */
struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(map_flags, BPF_F_NO_PREALLOC);
    __uint(max_entries, 65536);
    __type(key, struct cg_name_rule_key);
    __type(value, struct cg_rule);
} rules_name SEC(".maps");

/* Addresses granted by answers for allowed names. Writer: ingress. Reader:
 * connect and sendmsg. Deleter: user space, once every name's grant ended.
 * A plain hash: full is counted (CG_DNS_COUNT_GRANTS_FULL), not evicted. */
struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(map_flags, BPF_F_NO_PREALLOC);
    __uint(max_entries, 65536);
    __type(key, struct cg_dns_grant_key);
    __type(value, struct cg_dns_grant);
} dns_grants SEC(".maps");

/* Where an answer is parsed and a grant made, per CPU: too big for the
 * stack (6.1 allows 512 bytes over the whole call chain). */
struct dns_scratch {
    struct cg_dns_work work;
    struct cg_dns_grant grant;
};

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, struct dns_scratch);
} dns_work SEC(".maps");

/* Answers parsed in the last second, by (workload, message hash): a repeat
 * within the second is not parsed again (the grants it would renew were
 * made by the first, at most a second before). Writer and reader:
 * ingress. LRU: past 8,192 answers a second, repeats are parsed again. */
struct {
    __uint(type, BPF_MAP_TYPE_LRU_HASH);
    __uint(max_entries, 8192);
    __type(key, struct cg_dns_seen_key);
    __type(value, __u64);
} dns_parsed SEC(".maps");

/* What became of answers (enum cg_dns_count). Reader: user space. */
struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, CG_DNS_COUNT_COUNT);
    __type(key, __u32);
    __type(value, __u64);
} dns_counts SEC(".maps");

static __always_inline void count(void *map, __u32 index)
{
    __u64 *n = bpf_map_lookup_elem(map, &index);
    if (n)
        *n += 1; /* per-CPU slot: no atomics needed */
}

/* Only the fields used here; the ___enf suffix keeps these apart from
 * kernel_types.h's struct cgroup (CO-RE ignores the suffix when matching). */
#pragma clang attribute push(__attribute__((preserve_access_index)), apply_to = record)
struct cgroup___enf;
struct cgroup_subsys_state___enf {
    struct cgroup___enf *cgroup;
    struct cgroup_subsys_state___enf *parent;
};
struct cgroup___enf {
    struct cgroup_subsys_state___enf self;
    struct kernfs_node *kn;
    struct cgroup_root *root;
    int level;
};
#pragma clang attribute pop

/* Offset of the decision counters of a direction. */
static __always_inline __u32 decision_base(__u8 direction)
{
    return direction == CG_DIRECTION_CONNECT ? CG_DECISION_CONNECT_ALLOWED : CG_DECISION_ACCEPT_ALLOWED;
}

/* The policy of cgroup `id`, or of its nearest ancestor that has one (not
 * above the watched root). ANCESTOR(level) is the id of the ancestor at that
 * level. The walk goes from the watched root down to the cgroup itself,
 * keeping the deepest policy found: a cgroup right under the root costs one
 * helper call, not one per level (learn-mode workloads' sub-cgroups and
 * unknown cgroups have no policy of their own, so they come here). */
#define POLICY_BY_ANCESTRY(id, ANCESTOR)                                      \
    ({                                                                        \
        __u64 self_ = (id);                                                   \
        struct cg_cgroup_policy *p_ = bpf_map_lookup_elem(&cgroup_policy, &self_); \
        if (!p_) {                                                            \
            for (int i_ = 0; i_ < MAX_ANCESTOR_DEPTH; i_++) {                 \
                __u64 a_ = ANCESTOR(watch_level + i_);                        \
                struct cg_cgroup_policy *q_;                                  \
                if (!a_ || a_ == self_)                                       \
                    break;                                                    \
                q_ = bpf_map_lookup_elem(&cgroup_policy, &a_);                \
                if (q_)                                                       \
                    p_ = q_;                                                  \
            }                                                                 \
        }                                                                     \
        p_;                                                                   \
    })

/* Policy of the calling task's cgroup (connect). */
static __always_inline struct cg_cgroup_policy *policy_of_current(__u64 *cgroup_id)
{
#define CURRENT_ANCESTOR(level) bpf_get_current_ancestor_cgroup_id(level)
    *cgroup_id = bpf_get_current_cgroup_id();
    return POLICY_BY_ANCESTRY(*cgroup_id, CURRENT_ANCESTOR);
}

/* Policy of the socket an skb is delivered to (the listener, for a SYN). */
static __always_inline struct cg_cgroup_policy *policy_of_skb(struct __sk_buff *skb, __u64 *cgroup_id)
{
#define SKB_ANCESTOR(level) bpf_skb_ancestor_cgroup_id(skb, level)
    *cgroup_id = bpf_skb_cgroup_id(skb);
    return POLICY_BY_ANCESTRY(*cgroup_id, SKB_ANCESTOR);
}

/* The other end of a connection, when it is a socket of this node in the same
 * network namespace (loopback, the node's own address, a shared namespace).
 * Such a peer is named by its cgroup, never by its address: every local
 * process shares 127.0.0.1 and the node's addresses. */
struct local_peer {
    __u64 cgroup_id;     /* 0: not found here (a remote peer) */
    __u32 workload_id;   /* with has_workload */
    __u8 has_workload;   /* its cgroup, or an ancestor, has a policy */
};

/* Fills *peer from a socket found by bpf_sk_lookup_tcp, and releases it.
 * The socket's cgroup is read through BTF (bpf_sk_cgroup_id is not offered
 * to sock_addr programs), then its ancestors up to the watched root, the
 * nearest with a policy naming the workload. A peer outside the watched
 * subtree is looked up by its own cgroup and those above it. */
static __always_inline void local_peer_of(struct bpf_sock *sk, struct local_peer *peer)
{
    struct tcp_sock *tp = bpf_skc_to_tcp_sock(sk);
    struct cgroup___enf *c = NULL;

    if (tp)
        c = (struct cgroup___enf *)BPF_CORE_READ((struct sock *)tp, sk_cgrp_data.cgroup);
    for (int i = 0; i <= MAX_ANCESTOR_DEPTH && c; i++) {
        __u64 id = BPF_CORE_READ(c, kn, id);
        struct cg_cgroup_policy *p;

        if (i == 0)
            peer->cgroup_id = id;
        p = bpf_map_lookup_elem(&cgroup_policy, &id);
        if (p) {
            peer->workload_id = p->workload_id;
            peer->has_workload = 1;
            break;
        }
        if (id == watch_root_id)
            break;
        c = BPF_CORE_READ(c, self.parent, cgroup);
    }
    bpf_sk_release(sk);
}

/* Whether a rule on a name allows connecting to `addr` on `port`: an
 * answer for that name gave the workload this address, and has not ended. */
static __always_inline int dns_allows(__u32 workload, __u8 protocol, __u16 port, const __u8 addr[16])
{
    struct cg_dns_grant_key gk = {};
    struct cg_name_rule_key rk = {};
    struct cg_dns_grant *g;
    __u64 now;

    gk.workload_id = workload;
    __builtin_memcpy(gk.addr, addr, 16);
    g = bpf_map_lookup_elem(&dns_grants, &gk);
    if (!g)
        return 0;
    now = bpf_ktime_get_boot_ns();
    rk.workload_id = workload;
    rk.port = port;
    rk.protocol = protocol;
    for (int i = 0; i < CG_DNS_GRANT_NAMES; i++) {
        if (g->names[i].expires_ns <= now)
            continue;
        rk.name_hash = g->names[i].name_hash;
        rk.pattern = g->names[i].pattern;
        if (bpf_map_lookup_elem(&rules_name, &rk)) {
            count(&dns_counts, CG_DNS_COUNT_ALLOWED_CONNECTS);
            return 1;
        }
    }
    return 0;
}

/* Whether the baseline of `workload` holds (direction, port, peer). A local
 * peer is allowed by a rule on its workload, or by an address block wider
 * than one address (an operator's CIDR); an inbound rule on one exact
 * address never admits a local peer, since that address is not its own. A
 * remote peer is allowed by an address or CIDR rule, or by a rule on the
 * workload that holds its address (peer_addresses), or (`by_name`, out) by a
 * rule on a name whose answer gave the workload this address (dns_grants). */
static __always_inline int baseline_allows(__u32 workload, __u8 direction, __u8 protocol, __u16 port,
                                           const __u8 addr[16], const struct local_peer *local, int by_name)
{
    struct cg_rule_key key = {};
    struct cg_peer_rule_key peer_key = {};
    __u32 *peer;

    peer_key.workload_id = workload;
    peer_key.port = port;
    peer_key.direction = direction;
    peer_key.protocol = protocol;
    if (local->cgroup_id && local->has_workload) {
        peer_key.peer_workload_id = local->workload_id;
        if (bpf_map_lookup_elem(&rules_peer, &peer_key))
            return 1;
    }

    key.prefixlen = CG_RULE_KEY_FIXED_BITS + 128;
    if (local->cgroup_id && direction == CG_DIRECTION_ACCEPT)
        key.prefixlen -= 1; /* blocks only: matches no full-length (one-address) rule */
    key.workload_id = workload;
    key.direction = direction;
    key.protocol = protocol;
    key.port = port;
    __builtin_memcpy(key.addr, addr, 16);
    if (bpf_map_lookup_elem(&rules_cidr, &key))
        return 1;
    if (local->cgroup_id)
        return 0;

    peer = bpf_map_lookup_elem(&peer_addresses, key.addr);
    if (peer) {
        peer_key.peer_workload_id = *peer;
        if (bpf_map_lookup_elem(&rules_peer, &peer_key))
            return 1;
    }
    return by_name && direction == CG_DIRECTION_CONNECT && dns_allows(workload, protocol, port, key.addr);
}

/* Why a decision was made: indexes of `decisions`, relative to the
 * direction's first (decision_base). */
enum decision_reason {
    REASON_ALLOWED = CG_DECISION_CONNECT_ALLOWED - CG_DECISION_CONNECT_ALLOWED,
    REASON_DENIED = CG_DECISION_CONNECT_DENIED - CG_DECISION_CONNECT_ALLOWED,
    REASON_NOT_ENFORCED = CG_DECISION_CONNECT_NOT_ENFORCED - CG_DECISION_CONNECT_ALLOWED,
    REASON_UNKNOWN = CG_DECISION_CONNECT_UNKNOWN - CG_DECISION_CONNECT_ALLOWED,
};

/* 1: allow, 0: refuse. Counts the decision; *flags gets CG_FLAG_NO_POLICY for
 * a refusal of an unknown cgroup. */
static __always_inline int decide(const struct cg_cgroup_policy *p, __u8 direction, __u8 protocol, __u16 port,
                                  const __u8 addr[16], const struct local_peer *local, __u8 *flags)
{
    __u32 base = decision_base(direction);

    *flags = 0;
    if (!p) {
        if (unknown_deny) {
            *flags = CG_FLAG_NO_POLICY;
            count(&decisions, base + REASON_DENIED);
            return 0;
        }
        count(&decisions, base + REASON_UNKNOWN);
        return 1;
    }
    if (p->mode != CG_MODE_ENFORCE) {
        count(&decisions, base + REASON_NOT_ENFORCED);
        return 1;
    }
    if (baseline_allows(p->workload_id, direction, protocol, port, addr, local, 1)) {
        count(&decisions, base + REASON_ALLOWED);
        return 1;
    }
    count(&decisions, base + REASON_DENIED);
    return 0;
}

/* Only an enforced cgroup (or an unknown one under `--unknown deny`, which
 * never looks at the peer) needs the peer: the lookups are skipped for the
 * rest. */
static __always_inline int needs_peer(const struct cg_cgroup_policy *p)
{
    return p && p->mode == CG_MODE_ENFORCE;
}

/* addr (16 bytes, IPv4 mapped) is a loopback address. */
static __always_inline int is_loopback(const __u8 a[16])
{
    const __u32 *w = (const __u32 *)a;

    if (w[0] | w[1])
        return 0;
    if (w[2] == bpf_htonl(0xffff))
        return a[12] == 127;
    return w[2] == 0 && w[3] == bpf_htonl(1);
}

static __always_inline void map_ipv4(__u8 addr[16], __u32 ip_be)
{
    __builtin_memset(addr, 0, 10);
    addr[10] = 0xff;
    addr[11] = 0xff;
    __builtin_memcpy(addr + 12, &ip_be, 4);
}

/* ---- outbound -------------------------------------------------------- */

static __always_inline void report_connect(__u16 family, const __u8 addr[16], __u16 port, __u64 cgroup_id,
                                           const struct local_peer *local, __u8 flags, __u8 hook, __u8 protocol)
{
    struct cg_connection_event *e;
    struct task_struct *task;

    e = bpf_ringbuf_reserve(&denials, sizeof(*e), 0);
    if (!e) {
        count(&enforce_drops, CG_ENF_DROP_RINGBUF_FULL);
        return;
    }
    fill_event(e, CG_DIRECTION_CONNECT, CG_OUTCOME_DENIED, hook, family, cgroup_id);
    e->protocol = protocol;
    task = (struct task_struct *)bpf_get_current_task();
    e->netns = BPF_CORE_READ(task, nsproxy, net_ns, ns.inum);
    e->error = EPERM;
    e->flags = flags;
    e->sport = 0; /* not bound yet: the kernel picks it after this hook */
    e->dport = port;
    __builtin_memset(e->saddr, 0, sizeof(e->saddr));
    event_address(e->daddr, addr, family);
    event_process_current(e);
    e->peer_cgroup_id = local->cgroup_id;
    /* Always wake: a denial is rare and the operator wants it now. */
    bpf_ringbuf_submit(e, 0);
}

/* Whether a UDP denial of this flow was reported less than a second ago
 * (then it is only counted). */
static __always_inline int udp_denial_is_repeat(__u64 cgroup_id, __u8 direction, const __u8 peer[16], __u16 port)
{
    struct cg_repeat_key k = {};
    __u64 now = bpf_ktime_get_boot_ns(), *last;

    repeat_key(&k, cgroup_id, peer, port, 0, direction, CG_OUTCOME_DENIED, IPPROTO_UDP, 0);
    last = bpf_map_lookup_elem(&udp_denied, &k);
    if (last && now - *last < 1000000000ULL) {
        count(&udp_denial_repeats, 0);
        return 1;
    }
    bpf_map_update_elem(&udp_denied, &k, &now, BPF_ANY);
    return 0;
}

/* Outbound UDP: connect() on a UDP socket, or sendto()/sendmsg() with an
 * address on an unconnected one. Allowed: a reply to a flow let in (a
 * server's answer), a flow let out before, or what the baseline holds
 * (direction out, protocol udp, the peer's port). Refused: connect() or
 * sendmsg() fails with EPERM. A UDP peer is named by its address (no
 * socket lookup: a local UDP server is not found by the peer rules). */
static __always_inline int on_udp_out(struct bpf_sock_addr *ctx, __u16 family, const __u8 addr[16], __u8 hook)
{
    struct local_peer local = {};
    struct udp_flow_key fk = {};
    struct cg_cgroup_policy *p;
    __u16 port = bpf_ntohs((__u16)ctx->user_port);
    __u64 cgroup_id;
    __u8 flags, one = 1;

    if (ctx->sk && is_recent_flow(bpf_sk_storage_get(&udp_recent, ctx->sk, 0, 0), addr, port))
        return 1;
    p = policy_of_current(&cgroup_id);
    if (needs_peer(p)) {
        fk.cookie = bpf_get_socket_cookie(ctx);
        __builtin_memcpy(fk.peer, addr, 16);
        fk.port = port;
        if (bpf_map_lookup_elem(&udp_allowed, &fk))
            goto allowed;
    }
    if (decide(p, CG_DIRECTION_CONNECT, IPPROTO_UDP, port, addr, &local, &flags)) {
        if (!needs_peer(p))
            return 1;
        bpf_map_update_elem(&udp_allowed, &fk, &one, BPF_ANY);
        goto allowed;
    }
    /* ::ffff:a.b.c.d is reported as IPv4, as the tracer does. */
    if (family == AF_INET6 && ((const __u32 *)addr)[0] == 0 && ((const __u32 *)addr)[1] == 0 &&
        ((const __u32 *)addr)[2] == bpf_htonl(0xffff))
        family = AF_INET;
    if (!udp_denial_is_repeat(cgroup_id, CG_DIRECTION_CONNECT, addr, port))
        report_connect(family, addr, port, cgroup_id, &local, flags, hook, IPPROTO_UDP);
    return 0; /* EPERM */
allowed:
    if (ctx->sk)
        remember_flow(bpf_sk_storage_get(&udp_recent, ctx->sk, 0, BPF_SK_STORAGE_GET_F_CREATE), addr, port);
    return 1;
}

static __always_inline int on_connect(struct bpf_sock_addr *ctx, __u16 family, const __u8 addr[16])
{
    struct local_peer local = {};
    struct cg_cgroup_policy *p;
    __u64 cgroup_id;
    __u16 port;
    __u8 flags;

    if (ctx->type == SOCK_DGRAM && ctx->protocol == IPPROTO_UDP)
        return on_udp_out(ctx, family, addr, CG_HOOK_CGROUP_CONNECT);
    /* TCP (MPTCP is TCP underneath); others pass. */
    if (ctx->type != SOCK_STREAM || (ctx->protocol != IPPROTO_TCP && ctx->protocol != IPPROTO_MPTCP))
        return 1;
    port = bpf_ntohs((__u16)ctx->user_port);
    p = policy_of_current(&cgroup_id);
    /* To a loopback address the peer is whoever listens there, in this
     * network namespace. (To another address a listener on the wildcard
     * address would match the port too, without being the peer.) */
    if (needs_peer(p) && is_loopback(addr)) {
        struct bpf_sock_tuple t = {};
        struct bpf_sock *sk;

        if (((const __u32 *)addr)[2] == bpf_htonl(0xffff)) {
            t.ipv4.daddr = t.ipv4.saddr = ((const __u32 *)addr)[3];
            t.ipv4.dport = (__u16)ctx->user_port;
            sk = bpf_sk_lookup_tcp(ctx, &t, sizeof(t.ipv4), BPF_F_CURRENT_NETNS, 0);
        } else {
            __builtin_memcpy(t.ipv6.daddr, addr, 16);
            __builtin_memcpy(t.ipv6.saddr, addr, 16);
            t.ipv6.dport = (__u16)ctx->user_port;
            sk = bpf_sk_lookup_tcp(ctx, &t, sizeof(t.ipv6), BPF_F_CURRENT_NETNS, 0);
        }
        if (sk)
            local_peer_of(sk, &local);
    }
    if (decide(p, CG_DIRECTION_CONNECT, IPPROTO_TCP, port, addr, &local, &flags))
        return 1;
    report_connect(family, addr, port, cgroup_id, &local, flags, CG_HOOK_CGROUP_CONNECT, IPPROTO_TCP);
    return 0; /* connect() fails with EPERM */
}


SEC("cgroup/connect4")
int cg_enf_connect4(struct bpf_sock_addr *ctx)
{
    __u8 addr[16];

    map_ipv4(addr, ctx->user_ip4);
    return on_connect(ctx, AF_INET, addr);
}

SEC("cgroup/connect6")
int cg_enf_connect6(struct bpf_sock_addr *ctx)
{
    __u32 ip6[4];

    /* One 4-byte load per word: the only access the verifier allows. */
    ip6[0] = ctx->user_ip6[0];
    ip6[1] = ctx->user_ip6[1];
    ip6[2] = ctx->user_ip6[2];
    ip6[3] = ctx->user_ip6[3];
    /* ::ffff:a.b.c.d from a dual-stack socket meets the IPv4 rules. */
    return on_connect(ctx, AF_INET6, (const __u8 *)ip6);
}

/* sendmsg4/6 run only for a datagram with an address on an unconnected
 * socket; a connected one was checked at connect(). */
SEC("cgroup/sendmsg4")
int cg_enf_sendmsg4(struct bpf_sock_addr *ctx)
{
    __u8 addr[16];

    if (ctx->type != SOCK_DGRAM || ctx->protocol != IPPROTO_UDP)
        return 1;
    map_ipv4(addr, ctx->user_ip4);
    return on_udp_out(ctx, AF_INET, addr, CG_HOOK_CGROUP_SOCK_ADDR);
}

SEC("cgroup/sendmsg6")
int cg_enf_sendmsg6(struct bpf_sock_addr *ctx)
{
    __u32 ip6[4];

    if (ctx->type != SOCK_DGRAM || ctx->protocol != IPPROTO_UDP)
        return 1;
    ip6[0] = ctx->user_ip6[0];
    ip6[1] = ctx->user_ip6[1];
    ip6[2] = ctx->user_ip6[2];
    ip6[3] = ctx->user_ip6[3];
    return on_udp_out(ctx, AF_INET6, (const __u8 *)ip6, CG_HOOK_CGROUP_SOCK_ADDR);
}

/* ---- who bound a socket ------------------------------------------------ */

static __always_inline int on_bind(struct bpf_sock *sk)
{
    struct cg_socket_owner *o;

    if (sk->type != SOCK_STREAM && sk->type != SOCK_DGRAM)
        return 1;
    o = bpf_sk_storage_get(&socket_owners, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
    if (!o) {
        count(&enforce_drops, CG_ENF_DROP_OWNER_STORAGE);
        return 1;
    }
    o->pid = bpf_get_current_pid_tgid() >> 32;
    o->uid = (__u32)bpf_get_current_uid_gid();
    bpf_get_current_comm(o->comm, sizeof(o->comm));
    return 1; /* never refuse a bind */
}

SEC("cgroup/post_bind4")
int cg_enf_bind4(struct bpf_sock *sk)
{
    return on_bind(sk);
}

SEC("cgroup/post_bind6")
int cg_enf_bind6(struct bpf_sock *sk)
{
    return on_bind(sk);
}

/* ---- inbound ----------------------------------------------------------- */

/* 1 if the packet is a TCP SYN without ACK or a UDP datagram (s->proto
 * says which); 0: it is not (or neither protocol); -1: could not be parsed. */
static __always_inline int parse_packet(struct __sk_buff *skb, struct packet *s)
{
    __u8 tcp_flags;
    int r = packet_parse(skb, s);

    if (r <= 0 || s->proto == IPPROTO_UDP)
        return r;
    if (bpf_skb_load_bytes(skb, s->l4_offset + 13, &tcp_flags, 1))
        return -1;
    return (tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN;
}

static __always_inline void report_accept(struct __sk_buff *skb, const struct packet *s, __u64 cgroup_id,
                                          const struct local_peer *local, __u8 flags, __u8 protocol)
{
    struct cg_connection_event *e;
    struct cg_socket_owner *o = NULL;
    struct bpf_sock *sk = skb->sk;
    struct tcp_sock *tp;

    e = bpf_ringbuf_reserve(&denials, sizeof(*e), 0);
    if (!e) {
        count(&enforce_drops, CG_ENF_DROP_RINGBUF_FULL);
        return;
    }
    /* The listener's cgroup. */
    fill_event(e, CG_DIRECTION_ACCEPT, CG_OUTCOME_DENIED, CG_HOOK_CGROUP_SKB, s->family, cgroup_id);
    e->protocol = protocol;
    e->flags = flags;
    /* Flow direction, as the tracer reports accepts: the remote is the source. */
    e->sport = s->sport;
    e->dport = s->dport;
    e->peer_cgroup_id = local->cgroup_id;
    event_address(e->saddr, s->saddr, s->family);
    event_address(e->daddr, s->daddr, s->family);
    if (sk) {
        tp = bpf_skc_to_tcp_sock(sk);
        if (tp)
            e->netns = BPF_CORE_READ((struct sock *)tp, __sk_common.skc_net.net, ns.inum);
        sk = bpf_sk_fullsock(sk);
        if (sk)
            o = bpf_sk_storage_get(&socket_owners, sk, 0, 0);
    }
    if (o)
        event_process_known(e, o->pid, o->uid, o->comm);
    else
        event_process_unknown(e, CG_FLAG_LISTENER_UNKNOWN); /* bound before enforcement attached: the cgroup still names it */
    bpf_ringbuf_submit(e, 0);
}

/* Inbound UDP to a socket in the subtree: allowed when it is a reply to a
 * flow let out (the client's socket sent to this peer and port), a later
 * datagram of a flow let in, or in the baseline (direction in, protocol udp,
 * the local port); else dropped before the socket sees it. A connected UDP
 * socket never comes here (ESTABLISHED: its connect() was checked, and it
 * receives only from its peer). */
static __always_inline int on_udp_in(struct __sk_buff *skb, const struct packet *s)
{
    struct local_peer local = {};
    struct udp_flow_key fk = {};
    struct cg_cgroup_policy *p;
    __u64 cgroup_id;
    __u8 flags, one = 1;

    struct bpf_sock *sk = skb->sk ? bpf_sk_fullsock(skb->sk) : 0;

    if (sk && is_recent_flow(bpf_sk_storage_get(&udp_recent, sk, 0, 0), s->saddr, s->sport))
        return 1;
    p = policy_of_skb(skb, &cgroup_id);
    if (needs_peer(p)) {
        fk.cookie = bpf_get_socket_cookie(skb);
        __builtin_memcpy(fk.peer, s->saddr, 16);
        fk.port = s->sport;
        if (bpf_map_lookup_elem(&udp_allowed, &fk))
            goto allowed;
    }
    if (decide(p, CG_DIRECTION_ACCEPT, IPPROTO_UDP, s->dport, s->saddr, &local, &flags)) {
        if (!needs_peer(p))
            return 1;
        bpf_map_update_elem(&udp_allowed, &fk, &one, BPF_ANY);
        goto allowed;
    }
    if (!udp_denial_is_repeat(cgroup_id, CG_DIRECTION_ACCEPT, s->saddr, s->dport))
        report_accept(skb, s, cgroup_id, &local, flags, IPPROTO_UDP);
    return 0; /* drop the datagram */
allowed:
    if (sk)
        remember_flow(bpf_sk_storage_get(&udp_recent, sk, 0, BPF_SK_STORAGE_GET_F_CREATE), s->saddr, s->sport);
    return 1;
}

/* ---- DNS answers -------------------------------------------------------- */

/* bpf_loop's context must be on the stack: it holds the per-CPU work. */
struct dns_loop {
    struct cg_dns_work *w;
};

static long dns_step(__u64 index, void *ctx)
{
    struct cg_dns_work *w = ((struct dns_loop *)ctx)->w;

    if (!w)
        return 1;
    return cg_dns_step(w) != CG_DNS_MORE; /* 1 ends bpf_loop */
}

/* Grants `addr` to `workload` for (name_hash, pattern) until max(ttl, floor). */
static __always_inline void grant_address(struct cg_dns_grant *g, __u32 workload, const __u8 addr[16], __u64 name_hash,
                                          __u32 pattern, __u32 ttl, __u64 now)
{
    struct cg_dns_grant_key gk = {};
    struct cg_dns_grant *old;
    __u64 hold = (__u64)ttl * 1000000000ULL;
    int slot = 0;

    gk.workload_id = workload;
    __builtin_memcpy(gk.addr, addr, 16);
    old = bpf_map_lookup_elem(&dns_grants, &gk);
    if (old)
        __builtin_memcpy(g, old, sizeof(*g));
    else
        __builtin_memset(g, 0, sizeof(*g));
    /* This name's slot, or else the one that ends first. */
    for (int i = 0; i < CG_DNS_GRANT_NAMES; i++) {
        if (g->names[i].name_hash == name_hash && g->names[i].pattern == pattern) {
            slot = i;
            break;
        }
        if (g->names[i].expires_ns < g->names[slot & (CG_DNS_GRANT_NAMES - 1)].expires_ns)
            slot = i;
    }
    if (hold < dns_floor_ns)
        hold = dns_floor_ns;
    slot &= CG_DNS_GRANT_NAMES - 1;
    g->names[slot].name_hash = name_hash;
    g->names[slot].pattern = pattern;
    g->names[slot].ttl = ttl;
    g->names[slot].expires_ns = now + hold;
    if (bpf_map_update_elem(&dns_grants, &gk, g, BPF_ANY))
        count(&dns_counts, CG_DNS_COUNT_GRANTS_FULL);
    else
        count(&dns_counts, CG_DNS_COUNT_ADDRESSES);
}

/* A reply from port 53 to an enforced workload: if it comes from a resolver
 * the baseline lets the workload use and answers a name its rules name,
 * its addresses are granted before the socket has the answer. Never drops:
 * what is not trusted or not understood is counted and passed on. A
 * function of its own (not inlined): the verifier checks it once. */
static __noinline int dns_answer(struct __sk_buff *skb, const struct packet *pk)
{
    struct local_peer remote = {};
    struct cg_name_key nk = {};
    struct cg_cgroup_policy *p;
    struct cg_dns_seen_key seen = {};
    struct dns_loop loop;
    struct dns_scratch *scratch;
    struct cg_dns_work *w;
    __u32 off, avail, len, zero = 0, exact, pattern;
    __u64 n;
    __u64 cgroup_id, now, *last;

    if (!pk)
        return 0;
    p = policy_of_skb(skb, &cgroup_id);
    if (!needs_peer(p))
        return 0;
    if (!dns_message_at(skb, pk, &off, &avail, &len))
        return 0;
    /* A resolver the workload's rules let it reach by address or workload
     * (one reached through a DNS grant is not trusted for more grants). */
    if (!baseline_allows(p->workload_id, CG_DIRECTION_CONNECT, pk->proto, DNS_PORT, pk->saddr, &remote, 0)) {
        count(&dns_counts, CG_DNS_COUNT_UNTRUSTED);
        return 0;
    }
    scratch = bpf_map_lookup_elem(&dns_work, &zero);
    if (!scratch)
        return 0;
    w = &scratch->work;
    n = copy_length(avail, CG_DNS_MAX_BYTES);
    if (n < 12 || n > CG_DNS_MAX_BYTES || bpf_skb_load_bytes(skb, off, w->buf, n)) {
        count(&dns_counts, CG_DNS_COUNT_MALFORMED);
        return 0;
    }
    seen.id = p->workload_id;
    seen.message_hash = dns_message_hash(w->buf, n);
    now = bpf_ktime_get_boot_ns();
    last = bpf_map_lookup_elem(&dns_parsed, &seen);
    if (last && now - *last < DNS_REPEAT_NS) {
        count(&dns_counts, CG_DNS_COUNT_REPEATS);
        return 0;
    }
    bpf_map_update_elem(&dns_parsed, &seen, &now, BPF_ANY);
    cg_dns_begin(w, n, len <= n);
    loop.w = w;
    bpf_loop(CG_DNS_MAX_STEPS, dns_step, &loop, 0);
    if (w->a.result != CG_DNS_OK || w->a.addresses == 0) {
        count(&dns_counts, w->a.result == CG_DNS_MALFORMED ? CG_DNS_COUNT_MALFORMED : CG_DNS_COUNT_NOT_ANSWER);
        return 0;
    }
    nk.workload_id = p->workload_id;
    nk.name_hash = w->a.qname_hash;
    exact = bpf_map_lookup_elem(&names_allowed, &nk) != NULL;
    nk.name_hash = w->a.qname_parent_hash;
    nk.pattern = 1;
    pattern = nk.name_hash && bpf_map_lookup_elem(&names_allowed, &nk) != NULL;
    if (!exact && !pattern) {
        count(&dns_counts, CG_DNS_COUNT_NOT_ALLOWED);
        return 0;
    }
    count(&dns_counts, CG_DNS_COUNT_GRANTED);
    for (__u32 i = 0; i < CG_DNS_MAX_ADDRESSES; i++) {
        struct cg_dns_address *a;

        if (i >= w->a.addresses)
            break;
        a = &w->a.address[i];
        if (exact)
            grant_address(&scratch->grant, p->workload_id, a->addr, w->a.qname_hash, 0, a->ttl, now);
        if (pattern)
            grant_address(&scratch->grant, p->workload_id, a->addr, w->a.qname_parent_hash, 1, a->ttl, now);
    }
    return 1;
}

SEC("cgroup_skb/ingress")
int cg_enf_ingress(struct __sk_buff *skb)
{
    struct local_peer local = {};
    struct bpf_sock *sk;
    struct cg_cgroup_policy *p;
    struct packet s = {};
    __u64 cgroup_id;
    __u8 flags;
    int r;

    /* Only a listener takes new connections: a SYN that reaches a socket in
     * another state (established, TIME_WAIT) is handed by TCP to the
     * listener, which comes through here again. So established traffic, the
     * bulk of packets, costs two field reads. CLOSE goes on too: it is an
     * unconnected UDP socket (on_udp_in decides) or the dummy socket
     * of BPF_PROG_TEST_RUN, with which the bench times the full path. */
    sk = skb->sk;
    if (!sk)
        return 1;
    if (sk->state != BPF_TCP_LISTEN && sk->state != BPF_TCP_CLOSE) {
        /* A resolver's reply to a connected socket (glibc's, or TCP). */
        if (!may_be_dns_reply(skb, sk) || packet_parse(skb, &s) != 1)
            return 1;
        r = 1;
        goto dns;
    }

    r = parse_packet(skb, &s);
    if (r == 0)
        return 1;
    if (r < 0) {
        count(&enforce_drops, CG_ENF_DROP_UNPARSED);
        return 1;
    }
    if (s.proto == IPPROTO_UDP) {
        r = on_udp_in(skb, &s);
        if (!r || s.sport != DNS_PORT)
            return r;
        goto dns; /* an unconnected socket's resolver (dig, dnsperf) */
    }
    p = policy_of_skb(skb, &cgroup_id);
    /* A client on this node, in this network namespace, is in the kernel's
     * established table already (SYN_SENT): look it up by the flow seen from
     * its side, and decide by its cgroup (as the kernel's selftest
     * cgroup_skb_sk_lookup does). */
    if (needs_peer(p)) {
        struct bpf_sock_tuple t = {};
        struct bpf_sock *client;

        if (s.family == AF_INET) {
            __builtin_memcpy(&t.ipv4.saddr, s.daddr + 12, 4);
            __builtin_memcpy(&t.ipv4.daddr, s.saddr + 12, 4);
            t.ipv4.sport = bpf_htons(s.dport);
            t.ipv4.dport = bpf_htons(s.sport);
            client = bpf_sk_lookup_tcp(skb, &t, sizeof(t.ipv4), BPF_F_CURRENT_NETNS, 0);
        } else {
            __builtin_memcpy(t.ipv6.saddr, s.daddr, 16);
            __builtin_memcpy(t.ipv6.daddr, s.saddr, 16);
            t.ipv6.sport = bpf_htons(s.dport);
            t.ipv6.dport = bpf_htons(s.sport);
            client = bpf_sk_lookup_tcp(skb, &t, sizeof(t.ipv6), BPF_F_CURRENT_NETNS, 0);
        }
        if (client)
            local_peer_of(client, &local);
    }
    if (decide(p, CG_DIRECTION_ACCEPT, IPPROTO_TCP, s.dport, s.saddr, &local, &flags))
        return 1;
    report_accept(skb, &s, cgroup_id, &local, flags, IPPROTO_TCP);
    return 0; /* drop the SYN */
dns:
    /* One call: the verifier checks the parser once. Never drops. */
    dns_answer(skb, &s);
    return r;
}

/* ---- new cgroups ------------------------------------------------------- */

SEC("tp_btf/cgroup_mkdir")
int BPF_PROG(cg_enf_mkdir, struct cgroup *new_cgroup, const char *path)
{
    struct cgroup___enf *cgrp = (struct cgroup___enf *)new_cgroup;
    struct cgroup___enf *c = cgrp;
    struct cg_cgroup_event *e;
    int level;

    /* The v2 hierarchy is 0; v1 hierarchies of a hybrid layout are not ours. */
    if (BPF_CORE_READ(cgrp, root, hierarchy_id) != 0)
        return 0;
    level = BPF_CORE_READ(cgrp, level);
    if (level <= (int)watch_level || level > (int)watch_level + MAX_ANCESTOR_DEPTH)
        return 0;
    /* Up to the watched root's level: is it the watched root? */
    for (int i = 0; i < MAX_ANCESTOR_DEPTH; i++) {
        if (i >= level - (int)watch_level)
            break;
        c = BPF_CORE_READ(c, self.parent, cgroup);
        if (!c)
            return 0;
    }
    if (BPF_CORE_READ(c, kn, id) != watch_root_id)
        return 0;

    e = bpf_ringbuf_reserve(&cgroup_births, sizeof(*e), 0);
    if (!e) {
        count(&enforce_drops, CG_ENF_DROP_BIRTH_RINGBUF_FULL);
        return 0;
    }
    e->kind = CG_RECORD_CGROUP_MKDIR;
    e->hierarchy_id = 0;
    e->timestamp_ns = bpf_ktime_get_boot_ns();
    e->cgroup_id = BPF_CORE_READ(cgrp, kn, id);
    if (bpf_probe_read_kernel_str(e->path, sizeof(e->path), path) < 0)
        e->path[0] = 0;
    bpf_ringbuf_submit(e, BPF_RB_FORCE_WAKEUP); /* arm now */
    return 0;
}
