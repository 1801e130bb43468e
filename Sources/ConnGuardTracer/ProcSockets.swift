import ConnGuardCore
import Glibc

/// The TCP sockets that exist now, and the processes that hold them, read
/// from /proc: what the tracer cannot have seen, because it happened before
/// it attached. Covers every network namespace (one /proc/<pid>/net per
/// namespace), since a pod's sockets live in the pod's namespace.
struct ProcSockets {
    /// Sockets in the states asked for, with the namespace they are in.
    var sockets: [(netns: UInt32, socket: ProcNetTCP.Socket)] = []
    /// The owner of each socket that a process holds, by inode: of several
    /// processes holding it (a fork), the lowest pid, so that the answer does
    /// not depend on the order of the walk.
    var owners: [UInt64: ProcNetTCP.Owner] = [:]

    /// Walks /proc. Processes that exit meanwhile are skipped.
    static func read(proc: String = "/proc", cgroupMount: String?, states: Set<UInt8>) -> ProcSockets {
        var result = ProcSockets()
        let pids = listPIDs(proc)
        // One pid per network namespace.
        var namespaces: [UInt32: Int32] = [:]
        for pid in pids {
            if let link = readLink("\(proc)/\(pid)/ns/net"), let ns = ProcNetTCP.namespaceInode(fromLink: link),
               namespaces[ns] == nil {
                namespaces[ns] = pid
            }
        }
        var ownerless: Set<UInt64> = []
        for (ns, pid) in namespaces.sorted(by: { $0.key < $1.key }) {
            for file in ["tcp", "tcp6"] {
                guard let text = try? readFile("\(proc)/\(pid)/net/\(file)") else { continue }
                for s in ProcNetTCP.sockets(text) where states.contains(s.state) {
                    result.sockets.append((ns, s))
                    if s.inode != 0 { ownerless.insert(s.inode) }
                }
            }
        }
        // Owners: pids in ascending order, so the first holder found is the
        // lowest; stop once every socket has one.
        for pid in pids where !ownerless.isEmpty {
            let fdDir = "\(proc)/\(pid)/fd"
            guard let entries = listDirectory(fdDir) else { continue }
            var held: [UInt64] = []
            for entry in entries {
                guard entry.name.first?.isNumber == true,
                      let link = readLink("\(fdDir)/\(entry.name)"), let inode = ProcNetTCP.socketInode(fromLink: link),
                      ownerless.remove(inode) != nil else { continue }
                held.append(inode)
            }
            guard !held.isEmpty else { continue }
            let owner = self.owner(pid: pid, proc: proc, cgroupMount: cgroupMount)
            for inode in held { result.owners[inode] = owner }
        }
        return result
    }

    /// pid, comm, real uid and cgroup v2 id of a process. The cgroup id is
    /// the inode number of its cgroup's directory under the cgroup2 mount.
    static func owner(pid: Int32, proc: String, cgroupMount: String?) -> ProcNetTCP.Owner {
        let comm = ((try? readFile("\(proc)/\(pid)/comm")) ?? "").trimmingSuffixNewline()
        let uid = (try? readFile("\(proc)/\(pid)/status")).flatMap(ProcNetTCP.realUID(fromStatus:)) ?? 0
        var cgroupID: UInt64 = 0
        if let mount = cgroupMount, let text = try? readFile("\(proc)/\(pid)/cgroup"),
           let path = ProcNetTCP.cgroupV2Path(text) {
            var st = stat()
            if stat(mount + (path == "/" ? "" : path), &st) == 0 { cgroupID = UInt64(st.st_ino) }
        }
        return ProcNetTCP.Owner(pid: pid, comm: comm, uid: uid, cgroupID: cgroupID)
    }

    static func listPIDs(_ proc: String) -> [Int32] {
        (listDirectory(proc) ?? []).compactMap { Int32($0.name) }.sorted()
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
