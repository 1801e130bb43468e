import BPFKit
import CConnGuard
import ConnGuardCore
import Glibc

/// Tells the kernel who owns the listening sockets that existed before the
/// tracer attached: the BPF side learns owners at listen(), which for these
/// has already happened. The sockets come from /proc (`ProcSockets`), in every
/// network namespace, since a pod's server listens in the pod's namespace.
enum ListenerSeeder {
    struct Seed {
        var key: cg_listener_key
        var value: cg_listener
    }

    /// What to insert for the listening sockets found in /proc (sockets in
    /// other states are ignored). A listener no process holds is skipped.
    static func seeds(from found: ProcSockets) -> [Seed] {
        var seeds: [Seed] = []
        for (ns, s) in found.sockets where s.state == ProcNetTCP.State.listen {
            guard let owner = found.owners[s.inode] else { continue }
            var key = cg_listener_key()
            key.netns = ns
            key.port = s.localPort
            key.family = UInt16(s.family)
            var value = cg_listener()
            value.sock = 0
            value.cgroup_id = owner.cgroupID
            value.pid = UInt32(owner.pid)
            value.uid = s.uid
            withUnsafeMutableBytes(of: &value.comm) { buf in
                let bytes = Array(owner.comm.utf8.prefix(Int(CG_COMM_LEN) - 1))
                buf.copyBytes(from: bytes)
            }
            seeds.append(Seed(key: key, value: value))
        }
        // Several listeners can share a key (addresses, SO_REUSEPORT) and the
        // first inserted stays: make that the lowest pid, as for owners.
        return seeds.sorted { $0.value.pid < $1.value.pid }
    }

    /// Inserts seeds without overwriting what the kernel recorded since attach.
    static func seed(_ seeds: [Seed], into map: BPFMap) -> Int {
        var inserted = 0
        for s in seeds {
            do {
                try map.update(key: s.key, value: s.value, flags: .noExist)
                inserted += 1
            } catch {
                continue  // EEXIST: the kernel's own record is fresher
            }
        }
        return inserted
    }
}
