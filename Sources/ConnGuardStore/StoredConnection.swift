import ConnGuardCore
import Glibc

/// One connection event as the store keeps it: what the kernel saw, who it
/// was, and what ConnGuard decided.
public struct StoredConnection: Sendable, Equatable {
    /// Assigned by the store on append (nil before). Grows with every append
    /// and is never reused, so `ConnectionQuery.afterID` can follow new rows.
    public var id: Int64?
    public var event: ConnectionEvent
    public var identity: Identity
    public var verdict: Verdict
    /// The workload at the other end, when ConnGuard knows it (a local peer's
    /// cgroup, or an address that one workload of the node holds).
    public var peerWorkload: String?
    /// nil: this is one event (a row, if the store's row budget allows).
    /// n: it stands for n events of this connection that the kernel counted
    /// without sending them: folded into the aggregate, never a row.
    public var repeatCount: Int64?
    /// A denied connect to an address no DNS answer of an allowed name gave:
    /// the names that the workload's rules on that port and protocol allow.
    public var expectedNames: [String]
    /// The events this stands for.
    public var eventCount: Int { Int(repeatCount ?? 1) }

    public init(id: Int64? = nil, event: ConnectionEvent, identity: Identity, verdict: Verdict = .allowed,
                peerWorkload: String? = nil, repeatCount: Int64? = nil, expectedNames: [String] = []) {
        self.id = id
        self.event = event
        self.identity = identity
        self.verdict = verdict
        self.peerWorkload = peerWorkload
        self.repeatCount = repeatCount
        self.expectedNames = expectedNames
    }

    /// One JSON line: the keys of `connguard trace -o json` (time, event,
    /// outcome, error, pid, comm, uid, cgroup_id, family, src, sport, dst,
    /// dport, netns, hook, process_known, workload, container {id, runtime,
    /// name, image} or null, pod {namespace, name, uid, container} or null),
    /// then verdict, peer_workload (or null) and, for a denied connect that
    /// rules on names might have allowed, expected_names.
    public func appendJSONLine(using writer: inout JSONLineWriter, to out: inout [UInt8]) {
        var extra: [(String, JSONValue)] = [("verdict", .string(verdict.rawValue)),
                                            ("peer_workload", peerWorkload.map(JSONValue.string) ?? .null)]
        if !expectedNames.isEmpty { extra.append(("expected_names", .array(expectedNames.map(JSONValue.string)))) }
        writer.append(event, identity: identity, extra: extra, to: &out)
    }

    /// `appendJSONLine` as a String, newline included.
    public var jsonLine: String {
        var writer = JSONLineWriter()
        var out: [UInt8] = []
        appendJSONLine(using: &writer, to: &out)
        return String(decoding: out, as: UTF8.self)
    }
}

/// Connections folded together per (workload, direction, peer, port,
/// verdict): kept much longer than individual events.
public struct AggregatedConnection: Sendable, Equatable {
    public var id: Int64
    public var workload: String
    /// The Kubernetes namespace of the workload's pods, when it has any.
    public var namespace: String?
    public var direction: ConnectionEvent.Direction
    /// The remote side (`ConnectionEvent.peer`).
    public var peer: IPAddress
    /// The service port: the peer's port for connect, the local listening
    /// port for accept (in both cases the event's destination port).
    public var port: UInt16
    public var verdict: Verdict
    /// Wall-clock nanoseconds of the earliest and latest event folded in.
    public var firstSeen: Int64
    public var lastSeen: Int64
    public var count: Int64
    /// How many of `count` were failed connects.
    public var failedCount: Int64
    public var proto: ConnectionEvent.IPProtocol

    public init(id: Int64, workload: String, namespace: String? = nil, direction: ConnectionEvent.Direction,
                peer: IPAddress, port: UInt16, verdict: Verdict, firstSeen: Int64, lastSeen: Int64,
                count: Int64, failedCount: Int64, proto: ConnectionEvent.IPProtocol = .tcp) {
        self.id = id
        self.workload = workload
        self.namespace = namespace
        self.direction = direction
        self.peer = peer
        self.port = port
        self.verdict = verdict
        self.firstSeen = firstSeen
        self.lastSeen = lastSeen
        self.count = count
        self.failedCount = failedCount
        self.proto = proto
    }

    /// Keys: workload, namespace, event, peer, port, verdict, first_seen,
    /// last_seen (RFC 3339 UTC), count, failed, protocol.
    public var json: JSONValue {
        .object([
            ("workload", .string(workload)),
            ("namespace", namespace.map(JSONValue.string) ?? .null),
            ("event", .string(direction.rawValue)),
            ("peer", .string(peer.description)),
            ("port", .int(Int64(port))),
            ("verdict", .string(verdict.rawValue)),
            ("first_seen", .string(RFC3339.string(firstSeen))),
            ("last_seen", .string(RFC3339.string(lastSeen))),
            ("count", .int(count)),
            ("failed", .int(failedCount)),
            ("protocol", .string(proto.rawValue)),
        ])
    }

    public var jsonLine: String {
        var out: [UInt8] = []
        json.append(to: &out)
        out.append(UInt8(ascii: "\n"))
        return String(decoding: out, as: UTF8.self)
    }
}

/// UTC timestamps with microseconds, as `connguard trace -o json` writes them
/// (the formatter lives in ConnGuardCore, beside the parser, so that
/// ConnectionQuery's messages use it too).
enum RFC3339 {
    static func string(_ nanoseconds: Int64) -> String { ConnGuardCore.RFC3339.microseconds(nanoseconds) }
}

// MARK: - Codable

extension StoredConnection: Codable {
    enum CodingKeys: String, CodingKey {
        case id, time_ns, event, outcome, error, pid, comm, uid, cgroup_id, netns, src, sport, dst, dport
        case hook, process_known, identity, verdict, peer_workload, peer_name, expected_names
        case proto = "protocol"
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        func address(_ key: CodingKeys) throws -> IPAddress {
            let text = try c.decode(String.self, forKey: key)
            guard let a = IPAddress(text) else {
                throw DecodingError.dataCorruptedError(forKey: key, in: c, debugDescription: "not an IP address: \(text)")
            }
            return a
        }
        id = try c.decodeIfPresent(Int64.self, forKey: .id)
        event = ConnectionEvent(
            timeNanoseconds: try c.decode(Int64.self, forKey: .time_ns),
            direction: try c.decode(ConnectionEvent.Direction.self, forKey: .event),
            outcome: try c.decode(ConnectionEvent.Outcome.self, forKey: .outcome),
            error: try c.decode(Int32.self, forKey: .error),
            pid: try c.decode(UInt32.self, forKey: .pid),
            comm: try c.decode(String.self, forKey: .comm),
            uid: try c.decode(UInt32.self, forKey: .uid),
            cgroupID: try c.decode(UInt64.self, forKey: .cgroup_id),
            netns: try c.decode(UInt32.self, forKey: .netns),
            source: try address(.src), sourcePort: try c.decode(UInt16.self, forKey: .sport),
            destination: try address(.dst), destinationPort: try c.decode(UInt16.self, forKey: .dport),
            hook: try c.decode(ConnectionEvent.Hook.self, forKey: .hook),
            processKnown: try c.decode(Bool.self, forKey: .process_known),
            proto: try c.decodeIfPresent(ConnectionEvent.IPProtocol.self, forKey: .proto) ?? .tcp,
            peerName: try c.decodeIfPresent(String.self, forKey: .peer_name))
        identity = try c.decode(Identity.self, forKey: .identity)
        verdict = try c.decode(Verdict.self, forKey: .verdict)
        peerWorkload = try c.decodeIfPresent(String.self, forKey: .peer_workload)
        expectedNames = try c.decodeIfPresent([String].self, forKey: .expected_names) ?? []
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encodeIfPresent(id, forKey: .id)
        try c.encode(event.timeNanoseconds, forKey: .time_ns)
        try c.encode(event.direction, forKey: .event)
        try c.encode(event.outcome, forKey: .outcome)
        try c.encode(event.error, forKey: .error)
        try c.encode(event.pid, forKey: .pid)
        try c.encode(event.comm, forKey: .comm)
        try c.encode(event.uid, forKey: .uid)
        try c.encode(event.cgroupID, forKey: .cgroup_id)
        try c.encode(event.netns, forKey: .netns)
        try c.encode(event.source.description, forKey: .src)
        try c.encode(event.sourcePort, forKey: .sport)
        try c.encode(event.destination.description, forKey: .dst)
        try c.encode(event.destinationPort, forKey: .dport)
        try c.encode(event.hook, forKey: .hook)
        try c.encode(event.processKnown, forKey: .process_known)
        try c.encode(event.proto, forKey: .proto)
        try c.encode(identity, forKey: .identity)
        try c.encode(verdict, forKey: .verdict)
        try c.encodeIfPresent(peerWorkload, forKey: .peer_workload)
        try c.encodeIfPresent(event.peerName, forKey: .peer_name)
        if !expectedNames.isEmpty { try c.encode(expectedNames, forKey: .expected_names) }
    }
}

extension AggregatedConnection: Codable {
    enum CodingKeys: String, CodingKey {
        case id, workload, namespace, event, peer, port, verdict, first_seen_ns, last_seen_ns, count, failed
        case proto = "protocol"
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        let text = try c.decode(String.self, forKey: .peer)
        guard let peer = IPAddress(text) else {
            throw DecodingError.dataCorruptedError(forKey: .peer, in: c, debugDescription: "not an IP address: \(text)")
        }
        self.init(id: try c.decode(Int64.self, forKey: .id),
                  workload: try c.decode(String.self, forKey: .workload),
                  namespace: try c.decodeIfPresent(String.self, forKey: .namespace),
                  direction: try c.decode(ConnectionEvent.Direction.self, forKey: .event),
                  peer: peer, port: try c.decode(UInt16.self, forKey: .port),
                  verdict: try c.decode(Verdict.self, forKey: .verdict),
                  firstSeen: try c.decode(Int64.self, forKey: .first_seen_ns),
                  lastSeen: try c.decode(Int64.self, forKey: .last_seen_ns),
                  count: try c.decode(Int64.self, forKey: .count),
                  failedCount: try c.decode(Int64.self, forKey: .failed),
                  proto: try c.decodeIfPresent(ConnectionEvent.IPProtocol.self, forKey: .proto) ?? .tcp)
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(id, forKey: .id)
        try c.encode(workload, forKey: .workload)
        try c.encodeIfPresent(namespace, forKey: .namespace)
        try c.encode(direction, forKey: .event)
        try c.encode(peer.description, forKey: .peer)
        try c.encode(port, forKey: .port)
        try c.encode(verdict, forKey: .verdict)
        try c.encode(firstSeen, forKey: .first_seen_ns)
        try c.encode(lastSeen, forKey: .last_seen_ns)
        try c.encode(count, forKey: .count)
        try c.encode(failedCount, forKey: .failed)
        try c.encode(proto, forKey: .proto)
    }
}
