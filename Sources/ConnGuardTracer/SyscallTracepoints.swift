import Glibc

/// The classic syscall tracepoints on accept() and accept4(), which name the
/// process that accepted a connection on the tracepoint rung. They live in
/// tracefs; libbpf finds them under debugfs's tracing directory or
/// /sys/kernel/tracing, so a tracefs that is not mounted yet is mounted at the
/// latter (as `mount -t tracefs nodev /sys/kernel/tracing` would).
enum SyscallTracepoints {
    static let events = ["sys_exit_accept4", "sys_exit_accept"]
    static let roots = ["/sys/kernel/debug/tracing", "/sys/kernel/tracing"]

    /// nil when the tracepoints can be attached; else why not, in a few words.
    static func prepare() -> String? {
        if present() { return nil }
        // The kernel may simply have no tracefs mounted yet (Debian does not
        // mount it at boot).
        if access("/sys/kernel/tracing", F_OK) == 0, access("/sys/kernel/tracing/events", F_OK) != 0 {
            if mount("nodev", "/sys/kernel/tracing", "tracefs", 0, nil) != 0 {
                return "tracefs is not mounted and mounting it at /sys/kernel/tracing failed (\(String(cString: strerror(errno))))"
            }
            if present() { return nil }
        }
        if roots.allSatisfy({ access("\($0)/events", F_OK) != 0 }) {
            return "tracefs is not mounted (mount -t tracefs nodev /sys/kernel/tracing)"
        }
        return "this kernel has no syscall tracepoints for accept (CONFIG_FTRACE_SYSCALLS)"
    }

    private static func present() -> Bool {
        roots.contains { root in events.allSatisfy { access("\(root)/events/syscalls/\($0)/id", F_OK) == 0 } }
    }
}
