// DNS answers: the parser the kernel side runs too (connguard_dns.h), on
// whatever a resolver, or someone forging one, may send.
import ConnGuardCore

func fuzzDNS(_ data: UnsafeRawBufferPointer) {
    let first = DNSAnswer.parse(data)
    // The same bytes, the same answer: the parser keeps no state between messages.
    require(DNSAnswer.parse(data) == first, "two parses differ")
    switch first {
    case let .success(a):
        require(a.addresses.count <= 16, "\(a.addresses.count) addresses")
        require(a.recordsRead <= 32, "\(a.recordsRead) records")
        require(!a.name.unicodeScalars.contains { $0.value < 0x20 || $0.value > 0x7e }, "raw byte in the name: \(a.name.debugDescription)")
        require(a.name.utf8.count <= 253 * 4, "name of \(a.name.utf8.count) bytes")
        require(data.count >= 12 + 1 + 4, "an answer from \(data.count) bytes")
        // An answer cut at any point is read as far as it goes or refused;
        // never more addresses than the whole.
        let half = UnsafeRawBufferPointer(rebasing: data.prefix(data.count / 2))
        if case let .success(h) = DNSAnswer.parse(half) {
            require(h.addresses.count <= a.addresses.count, "half the message gave more addresses")
        }
    case let .failure(p):
        requireOneLine(p.description, "for \(data.count) bytes")
    }
}
