import ConnGuardCore
import Glibc

/// What each workload resolved through DNS (a NameBook), shared by the event
/// path (which records the answers the tracer passes on and names the peers
/// of connections), the policy engine (rules on names: learning, monitor's
/// verdicts) and the API (`connguard dns`). Answers come in ring-buffer
/// order, before the connection their application makes next.
public final class ResolvedNames: @unchecked Sendable {
    /// What came of the answers read (since the agent started).
    public struct Counts: Sendable, Equatable, Codable {
        public var answers: UInt64 = 0
        /// Refused by the parser (compression loops, lengths past the end...).
        public var malformed: UInt64 = 0
        /// Error answers (NXDOMAIN), queries, answers without addresses.
        public var notAnAnswer: UInt64 = 0
        /// From a resolver the workload's baseline does not let it use
        /// (monitor, enforce): ignored.
        public var untrusted: UInt64 = 0

        enum CodingKeys: String, CodingKey {
            case answers, malformed, notAnAnswer = "not_an_answer", untrusted
        }
    }

    private let lock = Mutex()
    private var book: NameBook
    private var counts = Counts()
    /// Read without the lock on the event path: false until a first answer.
    @exclusivity(unchecked) private var anyAnswer = false

    public init(floorNanoseconds: Int64) {
        book = NameBook(floorNanoseconds: floorNanoseconds)
    }

    public var floorNanoseconds: Int64 { lock.withLock { book.floor } }
    public var snapshot: Counts { lock.withLock { counts } }

    /// One message the tracer passed on, received by `workload`; `trusted`:
    /// from a resolver the workload may use.
    func record(_ m: DNSMessage, workload: String, trusted: Bool) {
        lock.withLock {
            switch m.answer {
            case let .success(a):
                counts.answers += 1
                if a.addresses.isEmpty {
                    counts.notAnAnswer += 1
                } else if !trusted {
                    counts.untrusted += 1
                } else {
                    book.record(a, workload: workload, at: m.timeNanoseconds)
                }
            case .failure(.malformed):
                counts.malformed += 1
            case .failure(.notAnAnswer):
                counts.notAnAnswer += 1
            }
            anyAnswer = true
        }
    }

    /// The name `workload` resolved most recently to `address` (peer_name).
    func name(of address: IPAddress, for workload: String, at now: Int64) -> String? {
        guard anyAnswer else { return nil }
        return lock.withLock { book.name(of: address, for: workload, at: now) }
    }

    /// Every name that `workload` resolved to `address` and that holds.
    func names(of address: IPAddress, for workload: String, at now: Int64) -> [String] {
        guard anyAnswer else { return [] }
        return lock.withLock { book.names(of: address, for: workload, at: now) }
    }

    func resolutions(workload: String?, name: String?, at now: Int64) -> [(workload: String, address: IPAddress, resolution: NameBook.Resolution)] {
        lock.withLock { book.resolutions(workload: workload, name: name, at: now) }
    }

    /// Drops what no longer holds (once in a while: the book stays bounded either way).
    func expire(at now: Int64) { lock.withLock { book.expire(at: now) } }
}
