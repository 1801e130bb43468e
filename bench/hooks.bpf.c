/*
 * hooks.bpf.c: programs that return at once, on the hook points connguard's
 * tracepoint rung uses. bench/hooks loads them for scripts/bench-trace's
 * `hooks` and `hooks-accept` modes: what the storm loses to the hooks alone,
 * before a tracer does any work (the floor under any tracer on this rung).
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "GPL";

/* connguard's cg_tp_sock_state: every TCP state change. */
SEC("tp_btf/inet_sock_set_state")
int hooks_sock_state(void *ctx)
{
    return 0;
}

/* connguard's cg_tp_accept4_exit / cg_tp_accept_exit, which name the process
 * that accepted. Enabling any syscall tracepoint sends every syscall of every
 * task through the kernel's slower syscall entry and exit path. */
SEC("?tracepoint/syscalls/sys_exit_accept4")
int hooks_accept4_exit(void *ctx)
{
    return 0;
}

SEC("?tracepoint/syscalls/sys_exit_accept")
int hooks_accept_exit(void *ctx)
{
    return 0;
}
