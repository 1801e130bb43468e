import ConnGuardCore
import Glibc

/// Why the tracer cannot run here, in one line a person can act on.
public struct PrerequisiteError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// Checks, before touching bpf(), what the kernel and our privileges must
/// provide, so that the failure names the missing piece instead of an errno.
public enum Prerequisites {
    // include/uapi/linux/capability.h
    static let capNetAdmin = 12
    static let capSysAdmin = 21
    static let capPerfmon = 38
    static let capBPF = 39

    public static let btfPath = "/sys/kernel/btf/vmlinux"

    public static func check(btfPath: String = btfPath) throws {
        let caps = effectiveCapabilities()
        let hasBPF = caps.map { $0 & (1 << capSysAdmin) != 0 || ($0 & (1 << capBPF) != 0 && $0 & (1 << capPerfmon) != 0) } ?? (geteuid() == 0)
        if !hasBPF {
            throw PrerequisiteError("connguard needs root (or CAP_BPF and CAP_PERFMON) to load its BPF programs: run it with sudo")
        }
        if access(btfPath, R_OK) != 0 {
            throw PrerequisiteError("this kernel has no BTF (\(btfPath) is missing): ConnGuard needs a kernel built with CONFIG_DEBUG_INFO_BTF=y (Linux 5.8 or later; most distribution kernels have it)")
        }
    }

    /// CapEff from /proc/self/status.
    public static func effectiveCapabilities() -> UInt64? {
        guard let status = try? readFile("/proc/self/status") else { return nil }
        for line in status.split(separator: "\n") where line.hasPrefix("CapEff:") {
            return UInt64(line.dropFirst(7).trimmingCharacters(in: " \t"), radix: 16)
        }
        return nil
    }
}

extension Substring {
    func trimmingCharacters(in set: String) -> String {
        let chars = Set(set)
        var s = self[...]
        while let f = s.first, chars.contains(f) { s = s.dropFirst() }
        while let l = s.last, chars.contains(l) { s = s.dropLast() }
        return String(s)
    }
}
