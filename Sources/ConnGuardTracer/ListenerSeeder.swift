import BPFKit
import CConnGuard
import ConnGuardCore
import Glibc

/// Tells the kernel who owns the listening sockets that existed before the
/// tracer attached: the BPF side learns owners at listen(), which for these
/// has already happened. Covers every network namespace (one /proc/<pid>/net
/// per namespace), since a pod's server listens in the pod's namespace.
enum ListenerSeeder {
    struct Seed {
        var key: cg_listener_key
        var value: cg_listener
    }

    /// Walks /proc; returns what to insert. Processes that exit meanwhile are
    /// skipped.
    static func discover(proc: String = "/proc", cgroupMount: String?) -> [Seed] {
        let pids = listPIDs(proc)
        // One pid per network namespace.
        var namespaces: [UInt32: Int32] = [:]
        for pid in pids {
            if let link = readLink("\(proc)/\(pid)/ns/net"), let ns = ProcNetTCP.namespaceInode(fromLink: link),
               namespaces[ns] == nil {
                namespaces[ns] = pid
            }
        }
        // Listening sockets by inode.
        var wanted: [UInt64: (netns: UInt32, family: UInt16, listener: ProcNetTCP.Listener)] = [:]
        for (ns, pid) in namespaces {
            for (file, family) in [("tcp", UInt16(AF_INET)), ("tcp6", UInt16(AF_INET6))] {
                guard let text = try? readFile("\(proc)/\(pid)/net/\(file)") else { continue }
                for l in ProcNetTCP.listeners(text) { wanted[l.inode] = (ns, family, l) }
            }
        }
        guard !wanted.isEmpty else { return [] }
        // Owner of each: the first process holding an fd on it.
        var seeds: [Seed] = []
        for pid in pids where !wanted.isEmpty {
            let fdDir = "\(proc)/\(pid)/fd"
            guard let dir = opendir(fdDir) else { continue }
            var found: [(UInt64, (netns: UInt32, family: UInt16, listener: ProcNetTCP.Listener))] = []
            while let entry = readdir(dir) {
                let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self) }
                guard name.first?.isNumber == true,
                      let link = readLink("\(fdDir)/\(name)"), let inode = ProcNetTCP.socketInode(fromLink: link),
                      let w = wanted[inode] else { continue }
                found.append((inode, w))
            }
            closedir(dir)
            guard !found.isEmpty else { continue }
            let comm = ((try? readFile("\(proc)/\(pid)/comm")) ?? "").trimmingSuffixNewline()
            var cgroupID: UInt64 = 0
            if let mount = cgroupMount, let text = try? readFile("\(proc)/\(pid)/cgroup"),
               let path = ProcNetTCP.cgroupV2Path(text) {
                var st = stat()
                if stat(mount + (path == "/" ? "" : path), &st) == 0 { cgroupID = UInt64(st.st_ino) }
            }
            for (inode, w) in found {
                wanted[inode] = nil
                var key = cg_listener_key()
                key.netns = w.netns
                key.port = w.listener.port
                key.family = w.family
                var value = cg_listener()
                value.sock = 0
                value.cgroup_id = cgroupID
                value.pid = UInt32(pid)
                value.uid = w.listener.uid
                withUnsafeMutableBytes(of: &value.comm) { buf in
                    let bytes = Array(comm.utf8.prefix(Int(CG_COMM_LEN) - 1))
                    buf.copyBytes(from: bytes)
                }
                seeds.append(Seed(key: key, value: value))
            }
        }
        return seeds
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

    static func listPIDs(_ proc: String) -> [Int32] {
        guard let dir = opendir(proc) else { return [] }
        defer { closedir(dir) }
        var pids: [Int32] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self) }
            if let pid = Int32(name) { pids.append(pid) }
        }
        return pids.sorted()
    }

    static func readLink(_ path: String) -> String? {
        var buf = [CChar](repeating: 0, count: 256)
        let n = readlink(path, &buf, buf.count - 1)
        guard n > 0 else { return nil }
        return String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}

extension String {
    func trimmingSuffixNewline() -> String {
        var s = self
        while s.hasSuffix("\n") { s.removeLast() }
        return s
    }
}
