/*
 * kernel_types.h: the few kernel-internal types the BPF programs read, declared
 * with only the fields they use (as cilium/ebpf's examples/headers/common.h
 * does) instead of a 2.7 MB vmlinux.h. preserve_access_index makes every
 * access a CO-RE relocation: libbpf finds each field by name in the running
 * kernel's BTF at load time, so offsets here do not matter and the one object
 * loads on any kernel with BTF (checked on 6.1 and 6.18). A field that a kernel
 * lacks makes the load fail with a clear error naming it, rather than read junk.
 */
#ifndef CONNGUARD_KERNEL_TYPES_H
#define CONNGUARD_KERNEL_TYPES_H

#pragma clang attribute push(__attribute__((preserve_access_index)), apply_to = record)

struct ns_common {
    unsigned int inum;
};

struct net {
    struct ns_common ns;
};

typedef struct {
    struct net *net;
} possible_net_t;

struct in6_addr {
    union {
        __u8 u6_addr8[16];
        __be32 u6_addr32[4];
    } in6_u;
};

/* In the kernel these sit inside anonymous unions/structs; libbpf matches
 * them by name through anonymous members. */
struct sock_common {
    __be32 skc_daddr;
    __be32 skc_rcv_saddr;
    __be16 skc_dport;
    __u16 skc_num;
    unsigned short skc_family;
    possible_net_t skc_net;
    struct in6_addr skc_v6_daddr;
    struct in6_addr skc_v6_rcv_saddr;
};

struct kernfs_node {
    __u64 id;
};

struct cgroup_root {
    int hierarchy_id;
};

struct cgroup {
    struct kernfs_node *kn;
    struct cgroup_root *root;
};

struct sock_cgroup_data {
    struct cgroup *cgroup;
};

struct sock {
    struct sock_common __sk_common;
    int sk_err;
    __u16 sk_protocol;
    struct sock_cgroup_data sk_cgrp_data;
};

struct nsproxy {
    struct net *net_ns;
};

struct fdtable {
    unsigned int max_fds;
    struct file **fd;
};

struct files_struct {
    struct fdtable *fdt;
};

struct file {
    void *private_data;
};

struct socket {
    struct sock *sk;
};

struct task_struct {
    struct nsproxy *nsproxy;
    struct files_struct *files;
};

#pragma clang attribute pop

/* include/net/tcp_states.h */
enum {
    TCP_ESTABLISHED = 1,
    TCP_SYN_SENT = 2,
    TCP_SYN_RECV = 3,
    TCP_CLOSE = 7,
    TCP_LISTEN = 10,
};

#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6
#define IPPROTO_UDP 17
#define SOCK_DGRAM 2

#endif
