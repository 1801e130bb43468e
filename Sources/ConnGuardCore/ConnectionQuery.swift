
/// Which stored connections to return (`connguard connections`). Every
/// condition that is set must hold.
public struct ConnectionQuery: Sendable, Equatable {
    /// Wall-clock nanoseconds, inclusive: time >= since.
    public var since: Int64?
    /// Wall-clock nanoseconds, exclusive: time < until.
    public var until: Int64?
    /// Only the newest N (still returned oldest first). Must be >= 1.
    public var last: Int?
    /// Exact workload name.
    public var workload: String?
    /// A container name, or a prefix of its id.
    public var container: String?
    /// A Kubernetes namespace.
    public var namespace: String?
    /// A pod name, or "namespace/name".
    public var pod: String?
    /// Either side's port, 0...65535. For aggregates: the aggregate's port.
    public var port: Int?
    /// The remote side is inside this block.
    public var peer: CIDR?
    /// The DNS name the workload resolved to the peer (`peer_name`), or a
    /// pattern `*.example.test` (one label deep). Events only.
    public var peerName: DNSName?
    public var direction: ConnectionEvent.Direction?
    public var verdict: Verdict?
    public var proto: ConnectionEvent.IPProtocol?
    /// Only rows with a larger id (`--follow`); results are then in id
    /// (arrival) order rather than time order. Events only.
    public var afterID: Int64?

    public init(since: Int64? = nil, until: Int64? = nil, last: Int? = nil, workload: String? = nil,
                container: String? = nil, namespace: String? = nil, pod: String? = nil, port: Int? = nil,
                peer: CIDR? = nil, direction: ConnectionEvent.Direction? = nil, verdict: Verdict? = nil,
                afterID: Int64? = nil, proto: ConnectionEvent.IPProtocol? = nil) {
        self.since = since
        self.until = until
        self.last = last
        self.workload = workload
        self.container = container
        self.namespace = namespace
        self.pod = pod
        self.port = port
        self.peer = peer
        self.direction = direction
        self.verdict = verdict
        self.afterID = afterID
        self.proto = proto
    }

    /// Throws a `QueryError` naming the first thing wrong.
    public func validate() throws {
        if let last, last < 1 { throw QueryError.invalidLast(last) }
        if let since, since < 0 { throw QueryError.timeOutOfRange("since", since) }
        if let until, until < 0 { throw QueryError.timeOutOfRange("until", until) }
        if let since, let until, since > until { throw QueryError.invertedTimeRange(since: since, until: until) }
        if let port, !(0...65535).contains(port) { throw QueryError.invalidPort(port) }
        if let afterID, afterID < 0 { throw QueryError.invalidAfterID(afterID) }
        for (name, value) in [("workload", workload), ("container", container), ("namespace", namespace), ("pod", pod)] {
            if let value, value.isEmpty { throw QueryError.emptyValue(name) }
        }
        if let pod, pod.split(separator: "/", omittingEmptySubsequences: false).count > 2 || pod.hasPrefix("/") || pod.hasSuffix("/") {
            throw QueryError.invalidPod(pod)
        }
    }
}

public enum QueryError: Error, Equatable, CustomStringConvertible {
    case invalidLast(Int)
    case invertedTimeRange(since: Int64, until: Int64)
    case timeOutOfRange(String, Int64)
    case invalidPort(Int)
    case invalidAfterID(Int64)
    case emptyValue(String)
    case invalidPod(String)
    case unsupported(String)

    public var description: String {
        switch self {
        case let .invalidLast(n): return "--last must be 1 or more, not \(n)"
        case let .invertedTimeRange(since, until):
            return "the time range is inverted: since (\(RFC3339.microseconds(since))) is after until (\(RFC3339.microseconds(until)))"
        case let .timeOutOfRange(name, t): return "\(name) is out of range: \(t) ns (before 1970)"
        case let .invalidPort(p): return "a port is 0 to 65535, not \(p)"
        case let .invalidAfterID(id): return "an event id is 0 or more, not \(id)"
        case let .emptyValue(name): return "--\(name) needs a value"
        case let .invalidPod(p): return "--pod takes NAME or NAMESPACE/NAME, not \"\(p)\""
        case let .unsupported(what): return "not supported: \(what)"
        }
    }
}
