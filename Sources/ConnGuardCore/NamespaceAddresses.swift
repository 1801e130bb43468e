import Glibc

/// The addresses a network namespace holds, read from the node itself: a
/// container's or pod's own addresses, whether or not anything ever connected
/// to them. Read through a process inside the namespace, from its
/// /proc/<pid>/net files (procfs shows the reader the namespace of the
/// process named in the path), so no setns() and no netlink socket per
/// namespace.
public enum NamespaceAddresses {
    /// The inode of the network namespace process `pid` is in (what
    /// /proc/<pid>/ns/net links to, "net:[4026531840]"), nil if the process
    /// is gone.
    public static func namespace(ofProcess pid: Int32) -> UInt64? {
        var st = stat()
        guard stat("/proc/\(pid)/ns/net", &st) == 0 else { return nil }
        return UInt64(st.st_ino)
    }

    /// The namespace of the calling process (the node's own, for an agent
    /// on the host network).
    public static var ownNamespace: UInt64? {
        var st = stat()
        guard stat("/proc/self/ns/net", &st) == 0 else { return nil }
        return UInt64(st.st_ino)
    }

    /// The addresses of the namespace of process `pid`: nil if it is gone.
    public static func addresses(ofProcess pid: Int32) -> Set<IPAddress>? {
        guard let v4 = try? readFile("/proc/\(pid)/net/fib_trie") else { return nil }
        var all = Set(ipv4(fibTrie: v4))
        if let v6 = try? readFile("/proc/\(pid)/net/if_inet6") { all.formUnion(ipv6(ifInet6: v6)) }
        return all
    }

    /// The IPv4 addresses in /proc/net/fib_trie that are the namespace's own
    /// (a "/32 host LOCAL" leaf), loopback excluded. The file lists the
    /// local table and the main table; each address is returned once.
    public static func ipv4(fibTrie text: String) -> [IPAddress] {
        var found: [IPAddress] = []
        var seen = Set<IPAddress>()
        var leaf: IPAddress?
        for raw in text.split(separator: "\n") {
            let line = raw.drop(while: { $0 == " " || $0 == "|" || $0 == "+" })
            if raw.contains("|--") {
                // "|-- 198.18.0.11": a leaf's address; its kinds follow.
                let text = line.drop(while: { $0 == "-" || $0 == " " })
                leaf = IPAddress(String(text))
            } else if let a = leaf, line.hasPrefix("/32 host LOCAL") {
                if a.family == .ipv4, !a.isLoopback, !a.isUnspecified, seen.insert(a).inserted { found.append(a) }
            } else if !line.hasPrefix("/") {
                leaf = nil
            }
        }
        return found
    }

    /// The IPv6 addresses in /proc/net/if_inet6, less loopback and
    /// link-local ones (fe80::/10: scoped to one link, and so the same
    /// address can stand for different hosts on different links).
    public static func ipv6(ifInet6 text: String) -> [IPAddress] {
        var found: [IPAddress] = []
        for line in text.split(separator: "\n") {
            // address(32 hex) ifindex prefixlen scope flags name
            let f = line.split(separator: " ", omittingEmptySubsequences: true)
            guard f.count >= 6, f[0].utf8.count == 32, let scope = UInt8(f[3], radix: 16) else { continue }
            // By bytes: 32 bytes that are not all ASCII are fewer than 32
            // Characters, and stepping two Characters at a time ran off the end.
            func hex(_ c: UInt8) -> UInt8? {
                switch c {
                case 0x30...0x39: return c - 0x30
                case 0x61...0x66: return c - 0x61 + 10
                case 0x41...0x46: return c - 0x41 + 10
                default: return nil
                }
            }
            let digits = Array(f[0].utf8)
            var bytes: [UInt8] = []
            for i in stride(from: 0, to: 32, by: 2) {
                guard let high = hex(digits[i]), let low = hex(digits[i + 1]) else { break }
                bytes.append(high << 4 | low)
            }
            guard bytes.count == 16 else { continue }
            let a = IPAddress(ipv6: bytes)
            // Scope 0x10 is host (loopback), 0x20 link; fe80::/10 is left out by
            // its address too, whatever scope the line gives.
            let linkLocal = a.family == .ipv6 && a.high >> 54 == 0x3fa
            if scope == 0x10 || scope == 0x20 || linkLocal || a.isLoopback || a.isUnspecified { continue }
            found.append(a)
        }
        return found
    }
}
