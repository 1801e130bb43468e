import CLibBPF
import Glibc

/// Questions about what is loaded in the kernel as a whole (not just ours):
/// used to prove that nothing is left behind.
public enum BPFSystem {
    /// CPUs the kernel may bring up: the number of slots of a per-CPU map value.
    public static func possibleCPUs() throws -> Int {
        let n = Int(libbpf_num_possible_cpus())
        guard n > 0 else { throw BPFError("count CPUs", errno: -Int32(n)) }
        return n
    }

    /// Whether a program with this id is still loaded.
    public static func programExists(id: UInt32) -> Bool {
        let fd = bpf_prog_get_fd_by_id(id)
        if fd >= 0 { close(fd); return true }
        return false
    }

    /// Ids of the links (attachments) that point at any of these programs.
    public static func linksOfPrograms(_ programIDs: [UInt32]) -> [UInt32] {
        let wanted = Set(programIDs)
        var found: [UInt32] = []
        var id: UInt32 = 0
        while bpf_link_get_next_id(id, &id) == 0 {
            let fd = bpf_link_get_fd_by_id(id)
            guard fd >= 0 else { continue }
            var info = bpf_link_info()
            var len = UInt32(MemoryLayout<bpf_link_info>.size)
            if bpf_obj_get_info_by_fd(fd, &info, &len) == 0, wanted.contains(info.prog_id) {
                found.append(id)
            }
            close(fd)
        }
        return found
    }

    /// Names of every loaded program (kernel truncates names to 15 bytes).
    public static func loadedProgramNames() -> [String] {
        var names: [String] = []
        var id: UInt32 = 0
        while bpf_prog_get_next_id(id, &id) == 0 {
            let fd = bpf_prog_get_fd_by_id(id)
            guard fd >= 0 else { continue }
            var info = bpf_prog_info()
            var len = UInt32(MemoryLayout<bpf_prog_info>.size)
            if bpf_obj_get_info_by_fd(fd, &info, &len) == 0 {
                names.append(withUnsafeBytes(of: info.name) { String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self) })
            }
            close(fd)
        }
        return names
    }
}

extension BPFSystem {
    /// Turns on the kernel's per-program run time and count (BPF_ENABLE_STATS)
    /// for as long as the returned fd stays open, without touching the
    /// kernel.bpf_stats_enabled sysctl. -1 if the kernel refuses.
    public static func enableRunTimeStatistics() -> Int32 {
        bpf_enable_stats(BPF_STATS_RUN_TIME)
    }
}
