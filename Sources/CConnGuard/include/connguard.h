/*
 * connguard.h: the one definition of every type shared by the BPF programs
 * (bpf/ *.bpf.c) and the Swift agent, which imports this header through the
 * CConnGuard module. There is no hand-kept Swift mirror: Swift reads these
 * structs as C structs.
 *
 * Rules for this file:
 *  - fixed-width fields only, laid out from largest to smallest, with every
 *    byte of padding spelled out, so the layout is the same for the BPF target
 *    and x86_64/arm64 user space;
 *  - a _Static_assert on the size of every struct;
 *  - a new field goes in place of padding or at the end, never in the middle.
 * Tests/ConnGuardTracerTests/LayoutTests.swift checks these structs against
 * the BTF that clang wrote into the compiled object.
 */
#ifndef CONNGUARD_H
#define CONNGUARD_H

#ifndef __VMLINUX_H__
#include <linux/types.h>
#endif

#define CG_COMM_LEN 16
#define CG_CGROUP_PATH_LEN 256

/* What a ring-buffer record is. Every record starts with a __u32 kind. */
enum cg_record_kind {
    CG_RECORD_CONNECTION = 1, /* struct cg_connection_event */
    CG_RECORD_CGROUP_MKDIR = 2, /* struct cg_cgroup_event */
    CG_RECORD_CGROUP_RMDIR = 3, /* struct cg_cgroup_event */
    CG_RECORD_DNS_MESSAGE = 4, /* struct cg_dns_message */
};

/* Which way the connection goes, seen from the process it is attributed to. */
enum cg_direction {
    CG_DIRECTION_CONNECT = 1, /* this node's process called connect() */
    CG_DIRECTION_ACCEPT = 2,  /* a listener on this node took a connection */
};

/* How the attempt ended. */
enum cg_outcome {
    CG_OUTCOME_ESTABLISHED = 1,
    CG_OUTCOME_FAILED = 2, /* refused, unreachable, timed out, aborted: see error */
    CG_OUTCOME_DENIED = 3, /* refused by ConnGuard's enforcement (bpf/enforce.bpf.c) */
};

/* Which kernel hook produced an event (the attach ladder: the best hook the kernel allows). */
enum cg_hook {
    CG_HOOK_TP_BTF = 1,    /* tp_btf/inet_sock_set_state */
    CG_HOOK_FENTRY = 2,    /* fentry/fexit on tcp_connect / inet_csk_accept */
    CG_HOOK_KPROBE = 3,    /* kprobe/kretprobe */
    CG_HOOK_CGROUP_CONNECT = 4, /* cgroup/connect4, cgroup/connect6 (enforcement) */
    CG_HOOK_CGROUP_SKB = 5,     /* cgroup_skb/ingress (enforcement) */
    CG_HOOK_CGROUP_SOCK_ADDR = 6, /* cgroup/connect, sendmsg, recvmsg 4/6: UDP flows (tracing, always allow) */
};

/* Bits of cg_connection_event.flags. */
enum cg_event_flags {
    /* The connect began before the tracer was attached, or its record could
     * not be stored: pid, uid, comm and cgroup_id are those of the socket,
     * not of the caller (pid may be 0). */
    CG_FLAG_PROCESS_UNKNOWN = 1 << 0,
    /* An accept whose listener's owner is not known: pid and comm are 0. */
    CG_FLAG_LISTENER_UNKNOWN = 1 << 1,
    /* A denial of a cgroup that has no policy (the operator chose
     * `--unknown deny`), rather than one outside a workload's baseline. */
    CG_FLAG_NO_POLICY = 1 << 2,
};

/*
 * One TCP connection, made (connect) or taken (accept), or the first datagram
 * of a UDP flow in a counting period: sent or connect()ed to a peer
 * (CG_DIRECTION_CONNECT), or received by a local server from a peer
 * (CG_DIRECTION_ACCEPT). Addresses are in network byte order; ports in host
 * byte order. For an IPv4 connection the first 4 bytes of saddr/daddr hold
 * the address. For accept, src is the remote client and dst the local
 * listener (flow direction).
 */
struct cg_connection_event {
    __u32 kind;          /* CG_RECORD_CONNECTION */
    __u32 pid;           /* thread-group id (what users call the pid) */
    __u64 timestamp_ns;  /* CLOCK_BOOTTIME */
    __u64 cgroup_id;     /* cgroup v2 id (directory inode) of the process / listening socket */
    __u32 uid;
    __u32 netns;         /* network namespace inode number */
    __s32 error;         /* errno for a failed connect (ECONNREFUSED, ETIMEDOUT, ...), else 0 */
    __u16 family;        /* AF_INET or AF_INET6 */
    __u16 sport;
    __u16 dport;
    __u8 direction;      /* enum cg_direction */
    __u8 outcome;        /* enum cg_outcome */
    __u8 hook;           /* enum cg_hook */
    __u8 flags;          /* enum cg_event_flags */
    __u8 protocol;       /* IPPROTO_TCP or IPPROTO_UDP */
    __u8 pad[1];
    __u8 saddr[16];
    __u8 daddr[16];
    char comm[CG_COMM_LEN];
    /* The other end's cgroup, when it is a socket of this node in the same
     * network namespace (loopback, the node's own address, a shared
     * namespace): for a connect to a loopback address, the listener's; for an
     * accept, the client's. 0 when the peer is elsewhere or was not found. */
    __u64 peer_cgroup_id;
};
_Static_assert(sizeof(struct cg_connection_event) == 104, "cg_connection_event layout changed");

/* A cgroup was created or removed (from tp_btf/cgroup_mkdir and cgroup_rmdir). */
struct cg_cgroup_event {
    __u32 kind;          /* CG_RECORD_CGROUP_MKDIR or CG_RECORD_CGROUP_RMDIR */
    __u32 hierarchy_id;  /* cgroup root hierarchy id; the v2 hierarchy is 0 */
    __u64 timestamp_ns;  /* CLOCK_BOOTTIME */
    __u64 cgroup_id;
    char path[CG_CGROUP_PATH_LEN]; /* relative to the hierarchy root, NUL-terminated, may be truncated */
};
_Static_assert(sizeof(struct cg_cgroup_event) == 280, "cg_cgroup_event layout changed");

/*
 * Why an event was not delivered, or was delivered with less than it should
 * carry. Indexes into the per-CPU `drops` array map. Loss is never silent:
 * user space sums these and reports them.
 */
enum cg_drop_reason {
    CG_DROP_RINGBUF_FULL = 0,        /* bpf_ringbuf_reserve failed: the event is lost */
    CG_DROP_CONNECT_MAP_FULL = 1,    /* could not remember a connect's caller: event sent with CG_FLAG_PROCESS_UNKNOWN */
    CG_DROP_LISTENER_MAP_FULL = 2,   /* could not remember a listener's owner: its accepts carry CG_FLAG_LISTENER_UNKNOWN */
    CG_DROP_CGROUP_RINGBUF_FULL = 3, /* a cgroup mkdir/rmdir record was lost */
    CG_DROP_ACCEPT_MAP_FULL = 4,     /* could not hold an accept for accept(): sent at once, naming the listener's owner */
    CG_DROP_UDP_ROLE_STORAGE = 5,    /* could not remember whether a UDP socket is a client or a server: taken as a client */
    CG_DROP_DNS_RINGBUF_FULL = 6,    /* a DNS answer was not passed on (its names are not known to user space) */
    CG_DROP_REASON_COUNT = 7,
};

/* Repeat counting: a connection is (cgroup, direction, outcome, protocol,
 * peer, port). The first event of each in a period, and (TCP, in the agent)
 * a budget of others, go to the ring buffer; the rest are counted per CPU
 * under this key, and user space folds the counts into the connection's
 * aggregate. UDP datagrams are always counted this way (trace and agent):
 * the peer port of an outbound flow and the local port of an inbound one are
 * the key's port, never a client's ephemeral source port. */
struct cg_repeat_key {
    __u64 cgroup_id;     /* as in the event */
    __u8 peer[16];       /* connect: daddr; accept: saddr (the client); as in the event */
    __u16 port;          /* the event's dport: the service port */
    __u16 family;        /* AF_INET or AF_INET6 */
    __u8 direction;      /* enum cg_direction */
    __u8 outcome;        /* enum cg_outcome */
    __u8 protocol;       /* IPPROTO_TCP or IPPROTO_UDP */
    __u8 pad[1];
    __u64 peer_cgroup_id; /* as in the event: local clients of one server stay apart */
};
_Static_assert(sizeof(struct cg_repeat_key) == 40, "cg_repeat_key layout changed");

struct cg_repeat_count {
    __u64 count;         /* events counted here, not sent */
    __u64 last_ns;       /* CLOCK_BOOTTIME of the latest of them */
};
_Static_assert(sizeof(struct cg_repeat_count) == 16, "cg_repeat_count layout changed");

/* Per CPU: the budget of repeats sent one by one in the current second. */
struct cg_repeat_budget {
    __u64 second_start;  /* CLOCK_BOOTTIME */
    __u64 sent;
};
_Static_assert(sizeof(struct cg_repeat_budget) == 16, "cg_repeat_budget layout changed");

/* Key of the `listeners` map: a listening port in one network namespace. */
struct cg_listener_key {
    __u32 netns;
    __u16 port;          /* host byte order */
    __u16 family;        /* AF_INET or AF_INET6 */
};
_Static_assert(sizeof(struct cg_listener_key) == 8, "cg_listener_key layout changed");

/* Who owns a listening socket: recorded when listen() is called, or seeded
 * from /proc by user space for listeners that existed before the tracer. */
struct cg_listener {
    __u64 sock;          /* kernel address of the listening socket, only to match the later close; 0 when seeded */
    __u64 cgroup_id;
    __u32 pid;
    __u32 uid;
    char comm[CG_COMM_LEN];
};
_Static_assert(sizeof(struct cg_listener) == 40, "cg_listener layout changed");

/* Key of the `local_clients` map: an established connection seen from its
 * client, so that the accept at the other end (a listener of this node, in
 * the same network namespace) can name the client's cgroup. Addresses in the
 * 16-byte form, IPv4 as ::ffff:a.b.c.d, so that an IPv4 client of a
 * dual-stack listener meets its key. */
struct cg_local_flow_key {
    __u8 client[16];
    __u8 server[16];
    __u32 netns;
    __u16 client_port;   /* host byte order */
    __u16 server_port;
};
_Static_assert(sizeof(struct cg_local_flow_key) == 40, "cg_local_flow_key layout changed");

/* Socket storage of the tracer's `udp_roles`: what a UDP socket did first.
 * A socket that sent first is a client, and what it receives are replies; one
 * that received first is a server, and what it sends are replies. Replies
 * are part of the flow that began it, not flows of their own. */
enum cg_udp_role {
    CG_UDP_ROLE_CLIENT = 1,
    CG_UDP_ROLE_SERVER = 2,
};

/* Value of the `connecting` map: who called connect(), remembered from
 * SYN_SENT until the outcome is known. */
struct cg_connecting {
    __u64 cgroup_id;
    __u32 pid;
    __u32 uid;
    char comm[CG_COMM_LEN];
};
_Static_assert(sizeof(struct cg_connecting) == 32, "cg_connecting layout changed");

/* ---- Enforcement (bpf/enforce.bpf.c) ------------------------------------ */

/* A workload's mode, as the kernel sees it. The kernel decides only in
 * CG_MODE_ENFORCE; learn and monitor verdicts are computed in user space from
 * traced events. */
enum cg_mode {
    CG_MODE_LEARN = 0,
    CG_MODE_MONITOR = 1,
    CG_MODE_ENFORCE = 2,
};

/* Value of `cgroup_policy` (key: __u64 cgroup id): which workload a cgroup
 * belongs to and its mode. Also covers the cgroup's descendants that have no
 * entry of their own (resolved by ancestry in the kernel). */
struct cg_cgroup_policy {
    __u32 workload_id;   /* user space's number for the workload; 0 is valid */
    __u8 mode;           /* enum cg_mode */
    __u8 pad[3];
};
_Static_assert(sizeof(struct cg_cgroup_policy) == 8, "cg_cgroup_policy layout changed");

/* Bits of a rules_cidr key before the address: workload_id, direction, protocol, port. */
#define CG_RULE_KEY_FIXED_BITS 64

/*
 * Key of the `rules_cidr` LPM trie: "workload W may <direction> on port P
 * with peers in addr/n". prefixlen = CG_RULE_KEY_FIXED_BITS + address bits
 * (IPv4 as ::ffff:a.b.c.d, so an IPv4 /n is 96 + n address bits), which makes
 * workload, direction, protocol and port an exact match and the address a prefix.
 * An exact address is a full-length prefix: addresses and CIDRs are one lookup.
 * port is the service port: the remote port for connect, the local (listening)
 * port for accept. Host byte order. There is no wildcard port.
 */
struct cg_rule_key {
    __u32 prefixlen;     /* LPM trie: bits of what follows that must match */
    __u32 workload_id;
    __u8 direction;      /* enum cg_direction */
    __u8 protocol;       /* IPPROTO_TCP or IPPROTO_UDP */
    __u16 port;
    __u8 addr[16];       /* network byte order; IPv4 mapped into ::ffff:0:0/96 */
};
_Static_assert(sizeof(struct cg_rule_key) == 28, "cg_rule_key layout changed");

/* Key of `rules_peer`: "workload W may <direction> on port P with any address
 * of workload V" (addresses of V in `peer_addresses`). */
struct cg_peer_rule_key {
    __u32 workload_id;
    __u32 peer_workload_id;
    __u16 port;          /* host byte order; as in cg_rule_key */
    __u8 direction;      /* enum cg_direction */
    __u8 protocol;       /* IPPROTO_TCP or IPPROTO_UDP */
};
_Static_assert(sizeof(struct cg_peer_rule_key) == 12, "cg_peer_rule_key layout changed");

/* Value of `rules_cidr` and `rules_peer`; the key is the rule. */
struct cg_rule {
    __u32 flags;         /* none defined yet; 0 */
};
_Static_assert(sizeof(struct cg_rule) == 4, "cg_rule layout changed");

/* Who bound a socket in the watched subtree (socket storage, set at bind());
 * names the server of a denied inbound connection. */
struct cg_socket_owner {
    __u32 pid;
    __u32 uid;
    char comm[CG_COMM_LEN];
};
_Static_assert(sizeof(struct cg_socket_owner) == 24, "cg_socket_owner layout changed");

/* Indexes into the per-CPU `decisions` array: what the enforcement programs
 * decided, by direction. */
enum cg_decision {
    CG_DECISION_CONNECT_ALLOWED = 0,     /* enforce mode, inside the baseline */
    CG_DECISION_CONNECT_DENIED = 1,      /* refused: connect() failed with EPERM */
    CG_DECISION_CONNECT_NOT_ENFORCED = 2,/* learn or monitor mode: allowed */
    CG_DECISION_CONNECT_UNKNOWN = 3,     /* no policy for the cgroup or its ancestors: allowed */
    CG_DECISION_ACCEPT_ALLOWED = 4,
    CG_DECISION_ACCEPT_DENIED = 5,       /* refused: the SYN was dropped */
    CG_DECISION_ACCEPT_NOT_ENFORCED = 6,
    CG_DECISION_ACCEPT_UNKNOWN = 7,
    CG_DECISION_COUNT = 8,
};

/* Indexes into the per-CPU `enforce_drops` array: what enforcement could not
 * report or could not check. Never silent. */
enum cg_enforce_drop_reason {
    CG_ENF_DROP_RINGBUF_FULL = 0,   /* a denial happened but its event was lost */
    CG_ENF_DROP_OWNER_STORAGE = 1,  /* could not remember who bound a socket */
    CG_ENF_DROP_UNPARSED = 2,       /* an inbound packet whose TCP header was not found (allowed) */
    CG_ENF_DROP_BIRTH_RINGBUF_FULL = 3, /* a new cgroup in the subtree was not reported (cgroup_births full) */
    CG_ENF_DROP_REASON_COUNT = 4,
};

/* ---- DNS names ---------------------------------------------------------
 * A workload's DNS answers say which addresses its names stand for. The
 * tracer passes each answer a socket receives from port 53 to user space
 * (struct cg_dns_message, parsed there by connguard_dns.h: peer_name,
 * learning by name); enforcement parses the same answers in the kernel,
 * before the socket has them, and lets the workload reach the addresses of
 * the names its baseline allows (rules_name, dns_grants). */

/* Bytes of a DNS message read (EDNS's recommended UDP size): records past it are not read. */
#define CG_DNS_MAX_BYTES 1232

/* A DNS message that a socket in the watched tree received from port 53: a
 * UDP datagram, or the first segment of a TCP reply (after its 2-byte length). */
struct cg_dns_message {
    __u32 kind;          /* CG_RECORD_DNS_MESSAGE */
    __u32 len;           /* bytes in data: at most CG_DNS_MAX_BYTES */
    __u64 timestamp_ns;  /* CLOCK_BOOTTIME */
    __u64 cgroup_id;     /* of the receiving socket */
    __u32 message_len;   /* the message's own length (more than len when cut) */
    __u32 netns;
    __u8 resolver[16];   /* the sender, network byte order; IPv4 mapped (::ffff:a.b.c.d) */
    __u16 resolver_port; /* host byte order: 53 */
    __u8 protocol;       /* IPPROTO_UDP or IPPROTO_TCP */
    __u8 pad;
    __u32 pad2;
    __u8 data[CG_DNS_MAX_BYTES];
};
_Static_assert(sizeof(struct cg_dns_message) == 56 + CG_DNS_MAX_BYTES, "cg_dns_message layout changed");

/* The same DNS answer (every byte but the id) to the same cgroup or
 * workload within a second is passed on and parsed once: key of the
 * kernel's `dns_seen` and `dns_parsed` maps. */
struct cg_dns_seen_key {
    __u64 id;            /* cgroup id (tracer) or workload id (enforcement) */
    __u64 message_hash;  /* dns_message_hash() in bpf/packet.h */
};
_Static_assert(sizeof(struct cg_dns_seen_key) == 16, "cg_dns_seen_key layout changed");

/* Key of `names_allowed`: the names a workload's baseline has rules on.
 * An answer to one of them (its question's name, or for a pattern
 * `*.example.test` the name without its first label) grants its addresses. */
struct cg_name_key {
    __u64 name_hash;     /* connguard_dns.h's hash of the name (of the pattern's parent) */
    __u32 workload_id;
    __u32 pattern;       /* 1: name_hash is a one-label pattern's parent */
};
_Static_assert(sizeof(struct cg_name_key) == 16, "cg_name_key layout changed");

/* Key of `rules_name`: "workload W may connect on port P to the addresses
 * that DNS gave it for name N". Value: struct cg_rule. */
struct cg_name_rule_key {
    __u64 name_hash;
    __u32 workload_id;
    __u16 port;          /* host byte order */
    __u8 protocol;       /* IPPROTO_TCP or IPPROTO_UDP */
    __u8 pattern;
};
_Static_assert(sizeof(struct cg_name_rule_key) == 16, "cg_name_rule_key layout changed");

/* Key of `dns_grants`: an address that DNS gave a workload for an allowed name. */
struct cg_dns_grant_key {
    __u32 workload_id;
    __u8 addr[16];       /* network byte order; IPv4 mapped */
};
_Static_assert(sizeof(struct cg_dns_grant_key) == 20, "cg_dns_grant_key layout changed");

#define CG_DNS_GRANT_NAMES 4

/* Value of `dns_grants`: which allowed names gave the address, and until when
 * (CLOCK_BOOTTIME): max(TTL, the operator's floor) after their last answer.
 * Up to CG_DNS_GRANT_NAMES names; a new one replaces the one that ends first. */
struct cg_dns_grant_name {
    __u64 name_hash;
    __u64 expires_ns;  /* 0: an empty slot */
    __u32 pattern;
    __u32 ttl;         /* of the last answer, for `connguard dns` */
};
_Static_assert(sizeof(struct cg_dns_grant_name) == 24, "cg_dns_grant_name layout changed");

struct cg_dns_grant {
    struct cg_dns_grant_name names[CG_DNS_GRANT_NAMES];
};
_Static_assert(sizeof(struct cg_dns_grant) == 24 * CG_DNS_GRANT_NAMES, "cg_dns_grant layout changed");

/* Indexes into the per-CPU `dns_counts` array of enforcement: what became
 * of the DNS answers that enforced workloads received. */
enum cg_dns_count {
    CG_DNS_COUNT_GRANTED = 0,      /* an answer for an allowed name: its addresses granted */
    CG_DNS_COUNT_ADDRESSES = 1,    /* addresses granted (or renewed) */
    CG_DNS_COUNT_NOT_ALLOWED = 2,  /* an answer for a name no rule names: nothing granted */
    CG_DNS_COUNT_UNTRUSTED = 3,    /* from a resolver outside the workload's baseline: ignored */
    CG_DNS_COUNT_MALFORMED = 4,    /* refused by the parser: ignored */
    CG_DNS_COUNT_NOT_ANSWER = 5,   /* an error (NXDOMAIN), a query, no addresses: nothing granted */
    CG_DNS_COUNT_GRANTS_FULL = 6,  /* an address could not be granted (dns_grants full) */
    CG_DNS_COUNT_ALLOWED_CONNECTS = 7, /* connects and datagrams let out by a grant */
    CG_DNS_COUNT_REPEATS = 8,      /* the same answer again within a second: its grant stands, not parsed again */
    CG_DNS_COUNT_COUNT = 9,
};

#endif /* CONNGUARD_H */
