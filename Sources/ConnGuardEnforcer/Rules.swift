import CConnGuard
import ConnGuardCore
import Glibc

/// What the kernel does with a connection from or to a cgroup in the watched
/// subtree that has no policy, itself or by ancestry.
public enum UnknownCgroups: String, Sendable, Codable {
    /// Let it through (the default: ConnGuard never blocks what it does not know).
    case allow
    /// Refuse it: only on the operator's explicit request (`--unknown deny`).
    case deny
}

/// Which workload a cgroup belongs to, and the mode it is in.
public struct CgroupPolicy: Sendable, Hashable {
    public var workloadID: UInt32
    /// The kernel decides only in `enforce`; in `learn` and `monitor` it
    /// lets everything through (monitor's would-deny verdicts come from
    /// traced events in user space).
    public var mode: Mode

    public init(workloadID: UInt32, mode: Mode) {
        self.workloadID = workloadID
        self.mode = mode
    }
}

/// The other end of an allowed connection.
public enum RulePeer: Sendable, Hashable, CustomStringConvertible {
    /// Any address in this block (a bare address is a /32 or /128).
    case cidr(CIDR)
    /// Any address of this workload (addresses set with `setPeerAddress`).
    case workload(UInt32)
    /// Any address that DNS gave the workload for this name (DNSName's
    /// `kernelHash`), or for a name this pattern matches: outbound only.
    case name(hash: UInt64, pattern: Bool)

    public var description: String {
        switch self {
        case let .cidr(c): return c.description
        case let .workload(w): return "workload \(w)"
        case let .name(h, p): return "\(p ? "pattern" : "name") \(String(h, radix: 16))"
        }
    }
}

/// One baseline entry: workload `workloadID` may `direction` on `port` with
/// `peer` over `proto`. `port` is the service port: the remote port of a
/// connect (or of a UDP datagram sent), the local (listening or bound) port of
/// an accept (or of a UDP datagram received). There is no wildcard port.
public struct EnforcementRule: Sendable, Hashable, CustomStringConvertible {
    public var workloadID: UInt32
    public var direction: ConnectionEvent.Direction
    public var port: UInt16
    public var peer: RulePeer
    public var proto: ConnectionEvent.IPProtocol

    public init(workloadID: UInt32, direction: ConnectionEvent.Direction, port: UInt16, peer: RulePeer,
                proto: ConnectionEvent.IPProtocol = .tcp) {
        self.workloadID = workloadID
        self.direction = direction
        self.port = port
        self.peer = peer
        self.proto = proto
    }

    public var description: String { "workload \(workloadID) \(direction.rawValue) \(peer) port \(port)/\(proto.rawValue)" }
}

// MARK: - Kernel keys (struct cg_rule_key, struct cg_peer_rule_key in connguard.h)

/// 16 address bytes as the kernel keys them: IPv6 as is, IPv4 as ::ffff:a.b.c.d.
typealias KernelAddress = (UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8,
                           UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8)

enum AddressKey {
    static func bytes(_ a: IPAddress) -> [UInt8] { a.mappedBytes }

    static func tuple(_ a: IPAddress) -> KernelAddress {
        var t: KernelAddress = (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        withUnsafeMutableBytes(of: &t) { $0.copyBytes(from: bytes(a)) }
        return t
    }

    static func address(_ t: KernelAddress) -> IPAddress {
        var t = t
        return IPAddress(ipv6: withUnsafeBytes(of: &t) { Array($0) }) // folds ::ffff:a.b.c.d to IPv4
    }

    static func isMappedIPv4(_ b: [UInt8]) -> Bool {
        b[0..<10].allSatisfy { $0 == 0 } && b[10] == 0xff && b[11] == 0xff
    }
}

extension EnforcementRule {
    /// The rules_cidr key, or nil for a peer-workload rule.
    var cidrKey: cg_rule_key? {
        guard case let .cidr(c) = peer else { return nil }
        var k = cg_rule_key()
        let addressBits = c.network.family == .ipv4 ? 96 + c.prefixLength : c.prefixLength
        k.prefixlen = UInt32(CG_RULE_KEY_FIXED_BITS) + UInt32(addressBits)
        k.workload_id = workloadID
        k.direction = direction.kernelValue
        k.protocol = proto.kernelValue
        k.port = port
        k.addr = AddressKey.tuple(c.network)
        return k
    }

    /// The rules_peer key, or nil for an address rule.
    var peerKey: cg_peer_rule_key? {
        guard case let .workload(w) = peer else { return nil }
        var k = cg_peer_rule_key()
        k.workload_id = workloadID
        k.peer_workload_id = w
        k.port = port
        k.direction = direction.kernelValue
        k.protocol = proto.kernelValue
        return k
    }

    init?(_ k: cg_rule_key) {
        guard let direction = ConnectionEvent.Direction(kernel: k.direction),
              let proto = ConnectionEvent.IPProtocol(kernel: k.protocol),
              k.prefixlen >= UInt32(CG_RULE_KEY_FIXED_BITS), k.prefixlen <= UInt32(CG_RULE_KEY_FIXED_BITS) + 128
        else { return nil }
        var a = k.addr
        let bytes = withUnsafeBytes(of: &a) { Array($0) }
        let bits = Int(k.prefixlen) - Int(CG_RULE_KEY_FIXED_BITS)
        let text: String
        if bits >= 96 && AddressKey.isMappedIPv4(bytes) {
            text = "\(bytes[12]).\(bytes[13]).\(bytes[14]).\(bytes[15])/\(bits - 96)"
        } else {
            var in6 = in6_addr()
            withUnsafeMutableBytes(of: &in6) { $0.copyBytes(from: bytes) }
            var buf = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
            inet_ntop(AF_INET6, &in6, &buf, socklen_t(buf.count))
            text = String(decoding: buf.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }, as: UTF8.self) + "/\(bits)"
        }
        guard let cidr = CIDR(text) else { return nil }
        self.init(workloadID: k.workload_id, direction: direction, port: k.port, peer: .cidr(cidr), proto: proto)
    }

    /// The rules_name key, or nil for another peer.
    var nameKey: cg_name_rule_key? {
        guard case let .name(h, pattern) = peer, direction == .connect else { return nil }
        var k = cg_name_rule_key()
        k.name_hash = h
        k.workload_id = workloadID
        k.port = port
        k.protocol = proto.kernelValue
        k.pattern = pattern ? 1 : 0
        return k
    }

    /// The names_allowed key its rule needs, or nil for another peer.
    var allowedNameKey: cg_name_key? {
        guard case let .name(h, pattern) = peer else { return nil }
        var k = cg_name_key()
        k.name_hash = h
        k.workload_id = workloadID
        k.pattern = pattern ? 1 : 0
        return k
    }

    init?(_ k: cg_name_rule_key) {
        guard let proto = ConnectionEvent.IPProtocol(kernel: k.protocol) else { return nil }
        self.init(workloadID: k.workload_id, direction: .connect, port: k.port, peer: .name(hash: k.name_hash, pattern: k.pattern != 0),
                  proto: proto)
    }

    init?(_ k: cg_peer_rule_key) {
        guard let direction = ConnectionEvent.Direction(kernel: k.direction),
              let proto = ConnectionEvent.IPProtocol(kernel: k.protocol) else { return nil }
        self.init(workloadID: k.workload_id, direction: direction, port: k.port, peer: .workload(k.peer_workload_id),
                  proto: proto)
    }
}
