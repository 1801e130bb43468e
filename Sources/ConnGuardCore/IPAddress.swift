import Glibc

/// An IPv4 or IPv6 address. An IPv4-mapped IPv6 address (::ffff:a.b.c.d) is
/// stored as the IPv4 address it carries, so that one peer has one spelling
/// whichever socket family reached it.
///
/// The bytes are kept inline as two integers, not in an array: the tracer and
/// the agent make two addresses for every event, tens of thousands a second,
/// and an array would be a heap allocation each.
public struct IPAddress: Hashable, Sendable, Comparable, CustomStringConvertible {
    public enum Family: String, Sendable, Codable {
        case ipv4
        case ipv6
    }

    public let family: Family
    /// The address in its 16-byte IPv6 form (an IPv4 address as
    /// ::ffff:a.b.c.d, as the kernel's dual-stack sockets and ConnGuard's
    /// policy maps key it), network byte order, as two big-endian numbers:
    /// bytes 0-7 and bytes 8-15.
    public let high: UInt64
    public let low: UInt64

    /// From the 16-byte form; the family follows from the bytes (mapped: IPv4).
    public init(high: UInt64, low: UInt64) {
        self.high = high
        self.low = low
        family = high == 0 && low >> 32 == 0xffff ? .ipv4 : .ipv6
    }

    /// An IPv4 address as a number (a.b.c.d = a << 24 | ... | d).
    public init(ipv4 value: UInt32) {
        self.init(high: 0, low: 0xffff_0000_0000 | UInt64(value))
    }

    public init(ipv4 bytes: [UInt8]) {
        precondition(bytes.count == 4)
        var v: UInt32 = 0
        for b in bytes { v = v << 8 | UInt32(b) }
        self.init(ipv4: v)
    }

    /// An IPv6 address; a mapped IPv4 address becomes .ipv4.
    public init(ipv6 bytes: [UInt8]) {
        precondition(bytes.count == 16)
        var high: UInt64 = 0, low: UInt64 = 0
        for i in 0..<8 { high = high << 8 | UInt64(bytes[i]) }
        for i in 8..<16 { low = low << 8 | UInt64(bytes[i]) }
        self.init(high: high, low: low)
    }

    /// Reads an address as a socket or the kernel stores it, in network byte
    /// order: 4 bytes for AF_INET, 16 for AF_INET6. nil for another family.
    public init?(family: Int32, networkBytes p: UnsafeRawPointer) {
        switch family {
        case AF_INET: self.init(ipv4: UInt32(bigEndian: p.loadUnaligned(as: UInt32.self)))
        case AF_INET6:
            self.init(high: UInt64(bigEndian: p.loadUnaligned(as: UInt64.self)),
                      low: UInt64(bigEndian: p.loadUnaligned(fromByteOffset: 8, as: UInt64.self)))
        default: return nil
        }
    }

    /// Parses dotted IPv4 or any IPv6 spelling; nil if it is neither.
    public init?(_ text: String) {
        // inet_pton reads a C string: "10.0.0.1\0junk" would be 10.0.0.1.
        guard !text.utf8.contains(0) else { return nil }
        var v4 = in_addr()
        if inet_pton(AF_INET, text, &v4) == 1 {
            self.init(ipv4: UInt32(bigEndian: v4.s_addr))
            return
        }
        var v6 = in6_addr()
        if inet_pton(AF_INET6, text, &v6) == 1 {
            self.init(family: AF_INET6, networkBytes: &v6)
            return
        }
        return nil
    }

    /// The IPv4 address as a number; meaningful for .ipv4 only.
    public var ipv4Value: UInt32 { UInt32(truncatingIfNeeded: low) }

    /// Byte `i` of the address: 0..<4 for IPv4, 0..<16 for IPv6.
    public subscript(byte i: Int) -> UInt8 {
        mappedByte(family == .ipv4 ? i + 12 : i)
    }

    /// Byte `j` (0..<16) of the 16-byte form.
    private func mappedByte(_ j: Int) -> UInt8 {
        UInt8(truncatingIfNeeded: j < 8 ? high >> (56 - 8 * j) : low >> (56 - 8 * (j - 8)))
    }

    /// 4 bytes for IPv4, 16 for IPv6, network order.
    public var bytes: [UInt8] { (0..<(family == .ipv4 ? 4 : 16)).map { self[byte: $0] } }

    /// The 16-byte form (`high`, `low`) as bytes: IPv4 as ::ffff:a.b.c.d.
    public var mappedBytes: [UInt8] {
        (0..<16).map(mappedByte)
    }

    public var description: String {
        var buf = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
        switch family {
        case .ipv4:
            var a = in_addr(s_addr: ipv4Value.bigEndian)
            inet_ntop(AF_INET, &a, &buf, socklen_t(buf.count))
        case .ipv6:
            var a = (high.bigEndian, low.bigEndian)
            inet_ntop(AF_INET6, &a, &buf, socklen_t(buf.count))
        }
        return buf.withUnsafeBufferPointer { b in
            String(decoding: b.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }, as: UTF8.self)
        }
    }

    public var isLoopback: Bool {
        switch family {
        case .ipv4: return ipv4Value >> 24 == 127
        case .ipv6: return high == 0 && low == 1
        }
    }

    /// 0.0.0.0 or ::.
    public var isUnspecified: Bool {
        family == .ipv4 ? ipv4Value == 0 : high == 0 && low == 0
    }

    public static func < (a: IPAddress, b: IPAddress) -> Bool {
        if a.family != b.family { return a.family == .ipv4 }
        return a.high != b.high ? a.high < b.high : a.low < b.low
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
    /// The first `length` bits of the address (of its 32 bits for IPv4, of
    /// 128 for IPv6), the rest zero.
    static func masked(_ a: IPAddress, _ length: Int) -> IPAddress {
        // Keep the leading `bits` bits of a 64-bit word.
        func keep(_ word: UInt64, _ bits: Int) -> UInt64 {
            bits <= 0 ? 0 : bits >= 64 ? word : word & ~(UInt64.max >> bits)
        }
        if a.family == .ipv4 {
            let l = max(0, min(32, length))
            return IPAddress(ipv4: l == 0 ? 0 : a.ipv4Value & ~(UInt32.max >> l))
        }
        return IPAddress(ipv6Raw: keep(a.high, length), keep(a.low, length - 64))
    }

    /// IPv6 taken as it is (no mapped-address folding): a masked ::/96 block
    /// must stay IPv6.
    init(ipv6Raw high: UInt64, _ low: UInt64) {
        family = .ipv6
        self.high = high
        self.low = low
    }
}
