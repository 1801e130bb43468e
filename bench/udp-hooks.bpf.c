/*
 * udp-hooks.bpf.c: programs that return at once (allow), on the hook points
 * connguard's UDP tracing and enforcement use. scripts/bench-udp attaches
 * them to its own cgroup subtree for its `hooks` and `hooks-enforce` modes:
 * what the workloads lose to the hooks alone, before any program does work
 * (the floor under any UDP tracer or enforcer on these hooks).
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "GPL";

/* connguard's cg_udp_* (trace) and cg_enf_connect/sendmsg (enforce). */
SEC("cgroup/connect4")
int hooks_connect4(struct bpf_sock_addr *ctx) { return 1; }
SEC("cgroup/connect6")
int hooks_connect6(struct bpf_sock_addr *ctx) { return 1; }
SEC("cgroup/sendmsg4")
int hooks_sendmsg4(struct bpf_sock_addr *ctx) { return 1; }
SEC("cgroup/sendmsg6")
int hooks_sendmsg6(struct bpf_sock_addr *ctx) { return 1; }
SEC("cgroup/recvmsg4")
int hooks_recvmsg4(struct bpf_sock_addr *ctx) { return 1; }
SEC("cgroup/recvmsg6")
int hooks_recvmsg6(struct bpf_sock_addr *ctx) { return 1; }

/* connguard's cg_enf_ingress: every packet delivered to a socket. */
SEC("cgroup_skb/ingress")
int hooks_ingress(struct __sk_buff *skb) { return 1; }
