import CConnGuard

/// The name a rule allows: one DNS name (`api.example.test`), or a pattern
/// one label deep (`*.example.test`: `a.example.test`, not `example.test`
/// nor `a.b.example.test`, as Cilium's `matchPattern`). Lowercase, without
/// the final dot.
public struct DNSName: Hashable, Sendable, Comparable, CustomStringConvertible {
    /// As written, e.g. "*.example.test".
    public let text: String

    /// nil unless `text` is a hostname (labels of 1 to 63 letters, digits,
    /// '-' or '_', 253 characters at most), optionally behind "*.".
    public init?(_ text: String) {
        var t = text.lowercased()
        if t.hasSuffix(".") { t.removeLast() }
        let body = t.hasPrefix("*.") ? String(t.dropFirst(2)) : t
        guard !body.isEmpty, body.utf8.count <= 253 else { return nil }
        let labels = body.split(separator: ".", omittingEmptySubsequences: false)
        guard !(t.hasPrefix("*.") && labels.count < 2) else { return nil } // "*.test" is too wide
        for l in labels {
            guard (1...63).contains(l.utf8.count),
                  l.utf8.allSatisfy({ ($0 >= 0x61 && $0 <= 0x7a) || ($0 >= 0x30 && $0 <= 0x39) || $0 == 0x2d || $0 == 0x5f })
            else { return nil }
        }
        self.text = t
    }

    public var isPattern: Bool { text.hasPrefix("*.") }
    public var description: String { text }
    public static func < (a: DNSName, b: DNSName) -> Bool { a.text < b.text }

    /// Whether a resolved name (as DNSAnswer gives it) is this name.
    public func matches(_ resolved: String) -> Bool {
        guard isPattern else { return resolved == text }
        let parent = text.dropFirst(2)
        guard resolved.hasSuffix("." + parent) else { return false }
        return !resolved.dropLast(parent.count + 1).contains(".")
    }

    /// What the kernel keys this rule by: the hash of the name, or for a
    /// pattern of its parent (connguard_dns.h computes the same two for each
    /// answer's question).
    public var kernelHash: UInt64 {
        let body = isPattern ? String(text.dropFirst(2)) : text
        var h: UInt64 = 0, p: UInt64 = 0
        var bytes = Array(body.utf8)
        bytes.withUnsafeMutableBufferPointer { b in
            b.withMemoryRebound(to: CChar.self) { c in cg_dns_hash_text(c.baseAddress, UInt32(c.count), &h, &p) }
        }
        return h
    }
}
