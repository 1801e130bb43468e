/// Parsing of /proc/<pid>/net/tcp and tcp6, for the listeners that existed
/// before the tracer attached.
public enum ProcNetTCP {
    public struct Listener: Equatable, Sendable {
        public var port: UInt16
        public var uid: UInt32
        public var inode: UInt64

        public init(port: UInt16, uid: UInt32, inode: UInt64) {
            self.port = port
            self.uid = uid
            self.inode = inode
        }
    }

    /// TCP_LISTEN in include/net/tcp_states.h, as /proc prints it.
    static let listenState = "0A"

    /// Listening sockets in one /proc/net/tcp{,6} text. Malformed lines are
    /// skipped.
    public static func listeners(_ text: String) -> [Listener] {
        var result: [Listener] = []
        for line in text.split(separator: "\n").dropFirst() {
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode ...
            let f = line.split(separator: " ", omittingEmptySubsequences: true)
            guard f.count >= 10, f[3] == listenState else { continue }
            let local = f[1].split(separator: ":")
            guard local.count == 2, let port = UInt16(local[1], radix: 16),
                  let uid = UInt32(f[7]), let inode = UInt64(f[9]), inode != 0 else { continue }
            result.append(Listener(port: port, uid: uid, inode: inode))
        }
        return result
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
}
