// What the node's kernel and runtimes write: cgroup paths, /proc/net files.
import ConnGuardCore
import Glibc

func fuzzCgroupPath(_ data: UnsafeRawBufferPointer) {
    let s = text(data)
    let origin = CgroupPathParser.parse(s)
    require(CgroupPathParser.parse(s) == origin, "not deterministic")
    // Split as the kernel does, at "/" bytes (Characters would glue "/\u{301}").
    func split(_ p: String) -> [Substring] { p.unicodeScalars.split(separator: "/").map(Substring.init) }
    let components = split(s)
    switch origin {
    case let .container(ref):
        require(!ref.id.isEmpty && s.contains(ref.id), "\(s.debugDescription): id \(ref.id)")
        require(CgroupPathParser.isFullID(ref.id) || CgroupPathParser.isContainerdID(ref.id), "\(s.debugDescription): id \(ref.id)")
        // The container's own cgroup is a prefix of the path, and names the
        // same container; so does any cgroup below it.
        let own = split(ref.cgroupPath)
        require(ref.cgroupPath.utf8.first == UInt8(ascii: "/") && own.count <= components.count && Array(components.prefix(own.count)) == own,
                "\(s.debugDescription): cgroup \(ref.cgroupPath)")
        require(CgroupPathParser.parse(ref.cgroupPath) == origin, "\(ref.cgroupPath) is not the same container as \(s.debugDescription)")
        require(CgroupPathParser.parse(ref.cgroupPath + "/init.scope") == origin, "below \(ref.cgroupPath) is another origin")
        require((ref.podUID == nil) == (ref.qos == nil), "\(s.debugDescription): pod uid without qos or the reverse")
        if let ns = ref.containerdNamespace { require(CgroupPathParser.defaultContainerdNamespaces.contains(ns), "namespace \(ns)") }
    case let .host(p):
        require(p.utf8.first == UInt8(ascii: "/") && split(p) == components, "\(s.debugDescription): host \(p)")
    case let .unknown(p):
        require(p == s, "\(s.debugDescription): unknown \(p)")
    }
}

/// A socket as the kernel prints it in /proc/net/tcp{,6} (net/ipv4/tcp_ipv4.c
/// get_tcp4_sock: each 32-bit word of the address with %08X as the CPU holds it).
func procRow(_ sk: ProcNetTCP.Socket) -> String {
    func hex(_ v: UInt64, _ width: Int) -> String {
        let s = String(v, radix: 16, uppercase: true)
        return String(repeating: "0", count: max(0, width - s.count)) + s
    }
    func address(_ a: IPAddress) -> String {
        let bytes = sk.family == AF_INET ? a.bytes : a.mappedBytes
        return stride(from: 0, to: bytes.count, by: 4).map { i in
            hex(UInt64(bytes[i]) | UInt64(bytes[i + 1]) << 8 | UInt64(bytes[i + 2]) << 16 | UInt64(bytes[i + 3]) << 24, 8)
        }.joined()
    }
    return "   0: \(address(sk.local)):\(hex(UInt64(sk.localPort), 4)) \(address(sk.remote)):\(hex(UInt64(sk.remotePort), 4)) "
        + "\(hex(UInt64(sk.state), 2)) 00000000:00000000 00:00000000 00000000 \(sk.uid) 0 \(sk.inode) 1 0000000000000000 100 0 0 10 0"
}

func fuzzProcNetTCP(_ data: UnsafeRawBufferPointer) {
    let s = text(data)
    let sockets = ProcNetTCP.sockets(s)
    require(sockets.count <= s.utf8.count / 20 + 1, "\(sockets.count) sockets from \(s.utf8.count) bytes")
    for sk in sockets {
        require(sk.family == AF_INET || sk.family == AF_INET6, "family \(sk.family)")
        if sk.family == AF_INET { require(sk.local.family == .ipv4 && sk.remote.family == .ipv4, "AF_INET with \(sk.local) \(sk.remote)") }
    }
    // Printed back as the kernel prints them, they read as the same sockets.
    let again = ProcNetTCP.sockets("  sl  local_address rem_address   st\n" + sockets.map(procRow).joined(separator: "\n"))
    require(again == sockets, "round trip: \(sockets) -> \(again)")
    let listeners = ProcNetTCP.listeners(s)
    require(listeners.allSatisfy { $0.state == ProcNetTCP.State.listen && $0.inode != 0 && sockets.contains($0) }, "listeners")
}

func fuzzNamespaceAddresses(_ data: UnsafeRawBufferPointer) {
    let s = text(data)
    let v4 = NamespaceAddresses.ipv4(fibTrie: s)
    require(Set(v4).count == v4.count, "an address twice: \(v4)")
    require(v4.allSatisfy { $0.family == .ipv4 && !$0.isLoopback && !$0.isUnspecified }, "fib_trie gave \(v4)")
    let v6 = NamespaceAddresses.ipv6(ifInet6: s)
    // Neither loopback nor link-local (fe80::/10) addresses are a namespace's own.
    require(v6.allSatisfy { !$0.isLoopback && !$0.isUnspecified && !($0.family == .ipv6 && $0.high >> 54 == 0x3fa) },
            "if_inet6 gave \(v6)")
    require(v6.count <= s.split(separator: "\n").count, "more addresses than lines")
}
