/* SPDX-License-Identifier: GPL-2.0 */
/*
 * event.h: filling a cg_connection_event, for every program that sends one
 * (the tracer's connects and accepts, enforcement's denials), as Inspektor
 * Gadget's fill_event does. Each field is written exactly once here or by
 * the caller, so no stale ring-buffer or stack byte reaches user space.
 */
#ifndef CONNGUARD_EVENT_H
#define CONNGUARD_EVENT_H

/* What the connection is. The caller then sets the addresses and ports,
 * the network namespace, the process (event_process_*), and error, flags
 * and peer_cgroup_id where they are not 0. */
static __always_inline void fill_event(struct cg_connection_event *e, __u8 direction, __u8 outcome, __u8 hook,
                                       __u16 family, __u64 cgroup_id)
{
    e->kind = CG_RECORD_CONNECTION;
    e->timestamp_ns = bpf_ktime_get_boot_ns();
    e->direction = direction;
    e->outcome = outcome;
    e->hook = hook;
    e->family = family;
    e->cgroup_id = cgroup_id;
    e->error = 0;
    e->flags = 0;
    e->netns = 0;
    e->peer_cgroup_id = 0;
    e->protocol = IPPROTO_TCP; /* the UDP programs set their own */
    e->pad[0] = 0;
}

/* The process is the current task (in connect(), in accept()). */
static __always_inline void event_process_current(struct cg_connection_event *e)
{
    e->pid = bpf_get_current_pid_tgid() >> 32;
    e->uid = (__u32)bpf_get_current_uid_gid();
    bpf_get_current_comm(e->comm, sizeof(e->comm));
}

/* The process was remembered earlier (a caller, a listener's owner). */
static __always_inline void event_process_known(struct cg_connection_event *e, __u32 pid, __u32 uid, const char comm[CG_COMM_LEN])
{
    e->pid = pid;
    e->uid = uid;
    __builtin_memcpy(e->comm, comm, CG_COMM_LEN);
}

/* Nobody known: pid, uid and comm 0, and `flag` says why. */
static __always_inline void event_process_unknown(struct cg_connection_event *e, __u8 flag)
{
    e->pid = 0;
    e->uid = 0;
    __builtin_memset(e->comm, 0, sizeof(e->comm));
    e->flags |= flag;
}

/* A 16-byte address (IPv4 mapped as ::ffff:a.b.c.d) in the event's layout
 * (IPv4 in the first 4 bytes, the rest 0). */
static __always_inline void event_address(__u8 out[16], const __u8 mapped[16], __u16 family)
{
    __builtin_memset(out, 0, 16);
    if (family == AF_INET)
        __builtin_memcpy(out, mapped + 12, 4);
    else
        __builtin_memcpy(out, mapped, 16);
}

/* The repeat-count key of one flow (struct cg_repeat_key), for the
 * tracer's counts and enforcement's UDP denials. peer: 16 bytes in the
 * event's layout (or IPv4 mapped, as enforcement keeps it); port: the
 * service port. The caller zeroes *k (padding included: it is a hash key). */
static __always_inline void repeat_key(struct cg_repeat_key *k, __u64 cgroup_id, const void *peer, __u16 port,
                                       __u16 family, __u8 direction, __u8 outcome, __u8 protocol,
                                       __u64 peer_cgroup_id)
{
    k->cgroup_id = cgroup_id;
    __builtin_memcpy(k->peer, peer, 16);
    k->port = port;
    k->family = family;
    k->direction = direction;
    k->outcome = outcome;
    k->protocol = protocol;
    k->peer_cgroup_id = peer_cgroup_id;
}

#endif /* CONNGUARD_EVENT_H */
