import CConnGuard

/// One DNS answer, as `connguard_dns.h` reads it (the same code the kernel
/// side runs): the question's name and type, and the addresses the answer
/// gives for that name (the CNAME chain followed), with their TTLs.
public struct DNSAnswer: Sendable, Equatable {
    public struct Address: Sendable, Equatable {
        public var address: IPAddress
        public var ttl: UInt32

        public init(address: IPAddress, ttl: UInt32) {
            self.address = address
            self.ttl = ttl
        }
    }

    public var id: UInt16
    /// The question's name: lowercase, dotted, without the final dot.
    public var name: String
    /// A (1), AAAA (28), ...
    public var questionType: UInt16
    /// The name's hashes, as the kernel computes them (`cg_dns_hash`): the
    /// whole name, and the name without its first label (0 for one label).
    public var nameHash: UInt64
    public var parentHash: UInt64
    public var addresses: [Address]
    /// Answer records read (at most CG_DNS_MAX_ANSWERS).
    public var recordsRead: Int

    public init(id: UInt16, name: String, questionType: UInt16, nameHash: UInt64, parentHash: UInt64, addresses: [Address], recordsRead: Int) {
        self.id = id
        self.name = name
        self.questionType = questionType
        self.nameHash = nameHash
        self.parentHash = parentHash
        self.addresses = addresses
        self.recordsRead = recordsRead
    }

    public enum Problem: Error, Sendable, Equatable, CustomStringConvertible {
        /// Not an answer to a lookup (a query, another opcode, more than one
        /// question), or an error answer (its rcode: 3 is NXDOMAIN).
        case notAnAnswer(rcode: UInt16)
        case malformed(String)

        public var description: String {
            switch self {
            case let .notAnAnswer(rcode): return rcode == 0 ? "not an answer to one question" : "error answer (rcode \(rcode))"
            case let .malformed(why): return "malformed DNS message: \(why)"
            }
        }
    }

    /// Reads `bytes` (a DNS message, as carried by UDP or after TCP's length
    /// prefix). Past CG_DNS_MAX_BYTES nothing is read. Never traps, never
    /// allocates more than the answer it returns.
    /// `messageLength`: the message's own length, when `bytes` holds only
    /// its start (the kernel copies at most CG_DNS_MAX_BYTES): what is there
    /// is read.
    public static func parse(_ bytes: UnsafeRawBufferPointer, messageLength: Int? = nil) -> Result<DNSAnswer, Problem> {
        let work = UnsafeMutablePointer<cg_dns_work>.allocate(capacity: 1)
        defer { work.deallocate() }
        let r = bytes.withMemoryRebound(to: UInt8.self) { b in
            cg_dns_parse_part(work, b.baseAddress ?? UnsafePointer(bitPattern: 1)!, UInt32(clamping: b.count),
                              UInt32(clamping: max(messageLength ?? b.count, b.count)))
        }
        let a = work.pointee.a
        switch UInt32(r) {
        case CG_DNS_OK.rawValue:
            break
        case CG_DNS_NOT_ANSWER.rawValue:
            return .failure(.notAnAnswer(rcode: a.rcode))
        default:
            return .failure(.malformed(Self.reason(a.error)))
        }
        let name = withUnsafeBytes(of: a.qname) { raw in
            // Label bytes are any bytes: what is not a hostname character is
            // kept as \DDD (RFC 1035's master-file form), so the text is
            // never ambiguous nor a terminal escape.
            var out = ""
            for b in raw.prefix(while: { $0 != 0 }) {
                let c = Character(Unicode.Scalar(b))
                if (b >= 0x61 && b <= 0x7a) || (b >= 0x30 && b <= 0x39) || b == 0x2d || b == 0x5f || b == 0x2e || b == 0x2a {
                    out.append(c)
                } else {
                    let d = String(b)
                    out += "\\" + String(repeating: "0", count: 3 - d.count) + d
                }
            }
            return out
        }
        var addresses: [Address] = []
        withUnsafeBytes(of: a.address) { raw in
            let list = raw.bindMemory(to: cg_dns_address.self)
            for i in 0..<Int(min(a.addresses, UInt32(CG_DNS_MAX_ADDRESSES))) {
                let bytes = withUnsafeBytes(of: list[i].addr) { Array($0) }
                addresses.append(Address(address: IPAddress(ipv6: bytes), ttl: list[i].ttl))
            }
        }
        return .success(DNSAnswer(id: a.id, name: name, questionType: a.qtype, nameHash: a.qname_hash, parentHash: a.qname_parent_hash,
                                  addresses: addresses, recordsRead: Int(a.answers_read)))
    }

    public static func parse(_ bytes: [UInt8]) -> Result<DNSAnswer, Problem> {
        bytes.withUnsafeBytes { parse($0) }
    }

    static func reason(_ e: UInt32) -> String {
        switch e {
        case CG_DNS_E_SHORT.rawValue: return "a length goes past the end"
        case CG_DNS_E_LABEL.rawValue: return "a reserved label type"
        case CG_DNS_E_NAME.rawValue: return "a name longer than 253 characters"
        case CG_DNS_E_POINTER.rawValue: return "a compression pointer that does not point back (a loop), or too many"
        case CG_DNS_E_RDATA.rawValue: return "a record's data of the wrong length or past the end"
        case CG_DNS_E_STEPS.rawValue: return "too long to read"
        default: return "error \(e)"
        }
    }
}
