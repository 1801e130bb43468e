import Glibc

/// An IPv4 or IPv6 address. An IPv4-mapped IPv6 address (::ffff:a.b.c.d) is
/// stored as the IPv4 address it carries, so that one peer has one spelling
/// whichever socket family reached it.
public struct IPAddress: Hashable, Sendable, Comparable, CustomStringConvertible {
    public enum Family: String, Sendable, Codable {
        case ipv4
        case ipv6
    }

    public let family: Family
    /// Network byte order; 4 meaningful bytes for IPv4, 16 for IPv6.
    public let bytes: [UInt8]

    public init(ipv4 bytes: [UInt8]) {
        precondition(bytes.count == 4)
        family = .ipv4
        self.bytes = bytes
    }

    /// An IPv6 address; a mapped IPv4 address becomes .ipv4.
    public init(ipv6 bytes: [UInt8]) {
        precondition(bytes.count == 16)
        if bytes[0..<10].allSatisfy({ $0 == 0 }) && bytes[10] == 0xff && bytes[11] == 0xff {
            family = .ipv4
            self.bytes = Array(bytes[12..<16])
        } else {
            family = .ipv6
            self.bytes = bytes
        }
    }

    /// Parses dotted IPv4 or any IPv6 spelling; nil if it is neither.
    public init?(_ text: String) {
        var v4 = in_addr()
        if inet_pton(AF_INET, text, &v4) == 1 {
            self.init(ipv4: withUnsafeBytes(of: v4) { Array($0) })
            return
        }
        var v6 = in6_addr()
        if inet_pton(AF_INET6, text, &v6) == 1 {
            self.init(ipv6: withUnsafeBytes(of: v6) { Array($0) })
            return
        }
        return nil
    }

    public var description: String {
        var buf = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
        switch family {
        case .ipv4:
            var a = in_addr()
            withUnsafeMutableBytes(of: &a) { $0.copyBytes(from: bytes) }
            inet_ntop(AF_INET, &a, &buf, socklen_t(buf.count))
        case .ipv6:
            var a = in6_addr()
            withUnsafeMutableBytes(of: &a) { $0.copyBytes(from: bytes) }
            inet_ntop(AF_INET6, &a, &buf, socklen_t(buf.count))
        }
        return buf.withUnsafeBufferPointer { b in
            String(decoding: b.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }, as: UTF8.self)
        }
    }

    public var isLoopback: Bool {
        switch family {
        case .ipv4: return bytes[0] == 127
        case .ipv6: return bytes[0..<15].allSatisfy { $0 == 0 } && bytes[15] == 1
        }
    }

    public static func < (a: IPAddress, b: IPAddress) -> Bool {
        if a.family != b.family { return a.family == .ipv4 }
        return a.bytes.lexicographicallyPrecedes(b.bytes)
    }
}

/// An address block, "10.0.0.0/8" or "fd00::/8"; a bare address is a /32 or /128.
public struct CIDR: Hashable, Sendable, CustomStringConvertible {
    public let network: IPAddress
    public let prefixLength: Int

    public init?(_ text: String) {
        let parts = text.split(separator: "/", maxSplits: 1, omittingEmptySubsequences: false)
        guard let address = IPAddress(String(parts[0])) else { return nil }
        let maxLength = address.family == .ipv4 ? 32 : 128
        var length = maxLength
        if parts.count == 2 {
            guard let n = Int(parts[1]), (0...maxLength).contains(n), parts[1].allSatisfy(\.isNumber) else { return nil }
            length = n
        }
        network = IPAddress.masked(address, length)
        prefixLength = length
    }

    /// The block of `prefixLength` bits around `address` (clamped to the family's size).
    public init(address: IPAddress, prefixLength: Int) {
        let length = max(0, min(prefixLength, address.family == .ipv4 ? 32 : 128))
        network = IPAddress.masked(address, length)
        self.prefixLength = length
    }

    public func contains(_ address: IPAddress) -> Bool {
        address.family == network.family && IPAddress.masked(address, prefixLength) == network
    }

    public var description: String { "\(network)/\(prefixLength)" }
}

extension IPAddress {
    static func masked(_ a: IPAddress, _ length: Int) -> IPAddress {
        var out = a.bytes
        for i in 0..<out.count {
            let bitsHere = max(0, min(8, length - i * 8))
            out[i] &= bitsHere == 0 ? 0 : UInt8(truncatingIfNeeded: 0xff << (8 - bitsHere))
        }
        return a.family == .ipv4 ? IPAddress(ipv4: out) : IPAddress(ipv6Raw: out)
    }

    /// IPv6 bytes taken as they are (no mapped-address folding).
    init(ipv6Raw bytes: [UInt8]) {
        family = .ipv6
        self.bytes = bytes
    }
}
