import Glibc

/// Parsing of /proc/<pid>/net/tcp and tcp6, for the sockets that existed
/// before the tracer attached: listeners (whose owners the kernel side learns
/// only at listen()) and established connections (whose connect or accept
/// happened before anything watched).
public enum ProcNetTCP {
    /// One row of /proc/net/tcp{,6}.
    public struct Socket: Equatable, Sendable {
        /// AF_INET or AF_INET6: the socket's own family (the file it is in).
        /// An IPv6 socket's IPv4-mapped address still reads as IPv4 in
        /// `local` and `remote`, as everywhere in ConnGuard.
        public var family: Int32
        public var local: IPAddress
        public var localPort: UInt16
        public var remote: IPAddress
        public var remotePort: UInt16
        /// TCP state, include/net/tcp_states.h (`State`).
        public var state: UInt8
        /// The socket's owner as the kernel keeps it (the creator's fsuid).
        public var uid: UInt32
        /// 0 when no file refers to the socket (not accept()ed yet, orphaned,
        /// TIME_WAIT).
        public var inode: UInt64

        public init(family: Int32, local: IPAddress, localPort: UInt16, remote: IPAddress, remotePort: UInt16,
                    state: UInt8, uid: UInt32, inode: UInt64) {
            self.family = family
            self.local = local
            self.localPort = localPort
            self.remote = remote
            self.remotePort = remotePort
            self.state = state
            self.uid = uid
            self.inode = inode
        }
    }

    /// TCP states in include/net/tcp_states.h, as /proc prints them (hex).
    public enum State {
        public static let established: UInt8 = 0x01
        public static let listen: UInt8 = 0x0A
    }

    /// Every socket in one /proc/net/tcp{,6} text. Malformed lines are
    /// skipped.
    public static func sockets(_ text: String) -> [Socket] {
        var result: [Socket] = []
        for line in text.split(separator: "\n").dropFirst() {
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode ...
            let f = line.split(separator: " ", omittingEmptySubsequences: true)
            guard f.count >= 10, let local = endpoint(f[1]), let remote = endpoint(f[2]),
                  local.family == remote.family, f[3].utf8.count == 2, let state = UInt8(f[3], radix: 16),
                  let uid = UInt32(f[7]), let inode = UInt64(f[9]) else { continue }
            result.append(Socket(family: local.family, local: local.address, localPort: local.port,
                                 remote: remote.address, remotePort: remote.port, state: state, uid: uid, inode: inode))
        }
        return result
    }

    /// Listening sockets that a process holds (inode not 0).
    public static func listeners(_ text: String) -> [Socket] {
        sockets(text).filter { $0.state == State.listen && $0.inode != 0 }
    }

    /// "0100007F:1F90" -> (AF_INET, 127.0.0.1, 8080). The address is the
    /// kernel's 32-bit words printed with %08X as the CPU loads them, so each
    /// word is in host byte order (on x86 127.0.0.1 reads 0100007F); stored
    /// back as host-order words they are the address's bytes in network order.
    /// 8 digits are an IPv4 address, 32 an IPv6 one.
    static func endpoint(_ text: Substring) -> (family: Int32, address: IPAddress, port: UInt16)? {
        // Digits only: UInt32(_:radix:) would also take a sign.
        func isHex(_ s: Substring) -> Bool { s.utf8.allSatisfy { (48...57).contains($0) || (65...70).contains($0) || (97...102).contains($0) } }
        let parts = text.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 2, parts[1].count == 4, isHex(parts[1]),
              let port = UInt16(parts[1], radix: 16) else { return nil }
        let hex = parts[0]
        guard hex.utf8.count == 8 || hex.utf8.count == 32, isHex(hex) else { return nil }
        var words: [UInt32] = []
        var i = hex.startIndex
        while i < hex.endIndex {
            let j = hex.index(i, offsetBy: 8)
            guard let word = UInt32(hex[i..<j], radix: 16) else { return nil }
            words.append(word)
            i = j
        }
        let family = words.count == 1 ? AF_INET : AF_INET6
        guard let address = words.withUnsafeBytes({ IPAddress(family: family, networkBytes: $0.baseAddress!) }) else { return nil }
        return (family, address, port)
    }

    /// "socket:[12345]" -> 12345 (the text of a /proc/<pid>/fd link).
    public static func socketInode(fromLink link: String) -> UInt64? {
        guard link.hasPrefix("socket:["), link.hasSuffix("]") else { return nil }
        return UInt64(link.dropFirst(8).dropLast())
    }

    /// "net:[4026531840]" -> 4026531840 (the text of a /proc/<pid>/ns/net link).
    public static func namespaceInode(fromLink link: String) -> UInt32? {
        guard let open = link.firstIndex(of: "["), link.hasSuffix("]") else { return nil }
        return UInt32(link[link.index(after: open)..<link.index(before: link.endIndex)])
    }

    /// The cgroup v2 path in a /proc/<pid>/cgroup text (the "0::" line).
    public static func cgroupV2Path(_ text: String) -> String? {
        for line in text.split(separator: "\n") where line.hasPrefix("0::") {
            return String(line.dropFirst(3))
        }
        return nil
    }

    /// The real uid in a /proc/<pid>/status text ("Uid:\t1000\t1000\t1000\t1000"):
    /// the one the tracer reports for a live connect (bpf_get_current_uid_gid).
    public static func realUID(fromStatus text: String) -> UInt32? {
        for line in text.split(separator: "\n") where line.hasPrefix("Uid:") {
            return line.dropFirst(4).split(whereSeparator: { $0 == "\t" || $0 == " " }).first.flatMap { UInt32($0) }
        }
        return nil
    }

    /// The process that holds a socket, as ConnGuard reports it.
    public struct Owner: Equatable, Sendable {
        public var pid: Int32
        public var comm: String
        public var uid: UInt32
        /// cgroup v2 id (0 when not found).
        public var cgroupID: UInt64

        public init(pid: Int32, comm: String, uid: UInt32, cgroupID: UInt64) {
            self.pid = pid
            self.comm = comm
            self.uid = uid
            self.cgroupID = cgroupID
        }
    }

    /// The established connections among `sockets` (each with the network
    /// namespace whose /proc/net it was read from), as the events the tracer
    /// would have sent had it watched them start, marked `hook: .snapshot`
    /// at `time`.
    ///
    /// An established socket is an accept when a listener in the same
    /// namespace and family has its local port, on its local address or on
    /// the unspecified one (so an IPv6 listener on :: takes the IPv4-mapped
    /// connections it accepted); otherwise it is a connect. Sockets that no
    /// process holds (`owners` by inode: a connection still in the accept
    /// queue, a kernel socket) are left out: there is nobody to attribute
    /// them to. Accepts come first, so that the policy engine knows the
    /// addresses at which local workloads accept before it learns the
    /// connects that reach them; the rest of the order is fixed too.
    public static func establishedConnections(_ sockets: [(netns: UInt32, socket: Socket)], owners: [UInt64: Owner],
                                              time: Int64) -> [ConnectionEvent] {
        struct ListenKey: Hashable {
            var netns: UInt32
            var family: Int32
            var port: UInt16
        }
        var listening: [ListenKey: [IPAddress]] = [:]
        for (ns, s) in sockets where s.state == State.listen {
            listening[ListenKey(netns: ns, family: s.family, port: s.localPort), default: []].append(s.local)
        }
        var events: [ConnectionEvent] = []
        for (ns, s) in sockets where s.state == State.established && s.inode != 0 {
            guard let owner = owners[s.inode] else { continue }
            let listeners = listening[ListenKey(netns: ns, family: s.family, port: s.localPort)] ?? []
            let accepted = listeners.contains { $0.isUnspecified || $0 == s.local }
            // Flow direction, as for live events: an accept's source is the remote client.
            events.append(ConnectionEvent(
                timeNanoseconds: time, direction: accepted ? .accept : .connect, outcome: .established,
                pid: UInt32(owner.pid), comm: owner.comm, uid: owner.uid, cgroupID: owner.cgroupID, netns: ns,
                source: accepted ? s.remote : s.local, sourcePort: accepted ? s.remotePort : s.localPort,
                destination: accepted ? s.local : s.remote, destinationPort: accepted ? s.localPort : s.remotePort,
                hook: .snapshot))
        }
        // Both ends on this node, in one namespace: each names the other's
        // cgroup, as the tracer's events do (a connect only to a loopback
        // address, where the listener is sure to be the peer).
        struct FlowKey: Hashable {
            var netns: UInt32, source: IPAddress, sourcePort: UInt16, destination: IPAddress, destinationPort: UInt16
            init(_ e: ConnectionEvent) {
                (netns, source, sourcePort, destination, destinationPort) = (e.netns, e.source, e.sourcePort, e.destination, e.destinationPort)
            }
        }
        var cgroupOf: [ConnectionEvent.Direction: [FlowKey: UInt64]] = [:]
        for e in events { cgroupOf[e.direction, default: [:]][FlowKey(e)] = e.cgroupID }
        for i in events.indices {
            let e = events[i]
            if e.direction == .accept {
                events[i].peerCgroupID = cgroupOf[.connect]?[FlowKey(e)] ?? 0
            } else if e.destination.isLoopback {
                events[i].peerCgroupID = cgroupOf[.accept]?[FlowKey(e)] ?? 0
            }
        }
        events.sort { a, b in
            if a.direction != b.direction { return a.direction == .accept }
            return (a.pid, a.netns, a.source, a.sourcePort, a.destination, a.destinationPort)
                < (b.pid, b.netns, b.source, b.sourcePort, b.destination, b.destinationPort)
        }
        return events
    }
}
