/// What each workload resolved through DNS: for each address an answer
/// gave it, the names that pointed there and until when. A connection to
/// that address then names its peer by the name this workload resolved most
/// recently (`peer_name`), and a rule learnt from it can be a rule on the
/// name, which survives the name's next addresses.
///
/// An address is kept for max(its TTL, `floor`) after the last answer that
/// gave it: clients that cache longer than the TTL (the JVM, connection
/// pools) keep reaching it by name. Bounded: at most `maxAddressesPerWorkload`
/// addresses per workload, the least recently answered going first.
public struct NameBook: Sendable, Equatable {
    public struct Resolution: Sendable, Equatable {
        public var name: String
        /// Wall-clock nanoseconds: when the last answer came, and until when it holds.
        public var answeredAt: Int64
        public var expires: Int64
        public var ttl: UInt32
    }

    public var floor: Int64
    public let maxAddressesPerWorkload: Int
    /// workload -> address -> name -> its last answer.
    public private(set) var entries: [String: [IPAddress: [String: Resolution]]] = [:]

    public init(floorNanoseconds: Int64 = 300_000_000_000, maxAddressesPerWorkload: Int = 4096) {
        floor = floorNanoseconds
        self.maxAddressesPerWorkload = maxAddressesPerWorkload
    }

    /// An answer `workload` received at `now`.
    public mutating func record(_ answer: DNSAnswer, workload: String, at now: Int64) {
        guard !answer.addresses.isEmpty else { return }
        var book = entries[workload] ?? [:]
        for a in answer.addresses {
            let hold = max(Int64(a.ttl) * 1_000_000_000, floor)
            book[a.address, default: [:]][answer.name] = Resolution(name: answer.name, answeredAt: now, expires: now + hold, ttl: a.ttl)
        }
        if book.count > maxAddressesPerWorkload {
            // The least recently answered addresses go.
            let newest = book.mapValues { $0.values.map(\.answeredAt).max() ?? 0 }
            for (address, _) in newest.sorted(by: { $0.value < $1.value }).prefix(book.count - maxAddressesPerWorkload) {
                book[address] = nil
            }
        }
        entries[workload] = book
    }

    public var isEmpty: Bool { entries.isEmpty }

    /// Every name whose answer to `workload` gave `address` and still holds
    /// at `now`, most recent first.
    public func names(of address: IPAddress, for workload: String, at now: Int64) -> [String] {
        (entries[workload]?[address]?.values.filter { $0.expires > now } ?? [])
            .sorted { ($0.answeredAt, $1.name) > ($1.answeredAt, $0.name) }.map(\.name)
    }

    /// The name `workload` resolved most recently to `address`, if that
    /// answer still holds at `now`.
    public func name(of address: IPAddress, for workload: String, at now: Int64) -> String? {
        entries[workload]?[address]?.values.filter { $0.expires > now }.max { ($0.answeredAt, $1.name) < ($1.answeredAt, $0.name) }?.name
    }

    /// Every name's addresses that still hold at `now`, for `workload`
    /// (nil: every workload): what `connguard dns` shows.
    public func resolutions(workload: String? = nil, name: String? = nil, at now: Int64)
        -> [(workload: String, address: IPAddress, resolution: Resolution)] {
        var out: [(String, IPAddress, Resolution)] = []
        for (w, book) in entries where workload == nil || workload == w {
            for (a, names) in book {
                for r in names.values where r.expires > now && (name == nil || name == r.name) { out.append((w, a, r)) }
            }
        }
        return out.sorted { ($0.0, $0.2.name, $0.1) < ($1.0, $1.2.name, $1.1) }
    }

    /// Drops what no longer holds.
    public mutating func expire(at now: Int64) {
        for (w, book) in entries {
            var kept: [IPAddress: [String: Resolution]] = [:]
            for (a, names) in book {
                let live = names.filter { $0.value.expires > now }
                if !live.isEmpty { kept[a] = live }
            }
            entries[w] = kept.isEmpty ? nil : kept
        }
    }
}
