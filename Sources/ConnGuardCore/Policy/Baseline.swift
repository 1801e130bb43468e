/// Baselines: what each workload normally connects to and accepts, learnt
/// from what it does, then used to decide what is outside it.

/// Where a workload is in its life cycle.
public enum Mode: String, Sendable, Codable, CaseIterable, Comparable {
    /// Allow everything; add what is seen to the baseline.
    case learn
    /// Allow everything; report what is outside the baseline as would_deny.
    case monitor
    /// Refuse, in the kernel, what is outside the baseline.
    case enforce

    public static func < (a: Mode, b: Mode) -> Bool {
        allCases.firstIndex(of: a)! < allCases.firstIndex(of: b)!
    }
}

/// The other side of a rule. A peer that is a workload the agent knows is
/// named by workload, so the rule survives that peer's restarts and new
/// addresses; any other peer is an address block (a single address is a /32
/// or /128). Learning never widens an address into a larger block: only an
/// operator's import can. An external peer that the workload reached by a
/// DNS name is that name (or an imported pattern): the rule survives the
/// name's rotating addresses.
public enum Peer: Hashable, Sendable, Comparable, CustomStringConvertible {
    case workload(String)
    case network(CIDR)
    case name(DNSName)

    public var description: String {
        switch self {
        case let .workload(w): return "workload:\(w)"
        case let .name(n): return "name:\(n)"
        case let .network(c):
            let full = c.network.family == .ipv4 ? 32 : 128
            return c.prefixLength == full ? c.network.description : c.description
        }
    }

    /// The inverse of `description`: "workload:NAME" (NAME not empty) is a
    /// workload, "name:api.example.test" (or "name:*.example.test") a DNS
    /// name; anything else must be an address or a CIDR.
    public init?(description text: String) {
        if text.hasPrefix("workload:") {
            let name = String(text.dropFirst("workload:".count))
            guard !name.isEmpty else { return nil }
            self = .workload(name)
        } else if text.hasPrefix("name:") {
            guard let n = DNSName(String(text.dropFirst("name:".count))) else { return nil }
            self = .name(n)
        } else if let c = CIDR(text) {
            self = .network(c)
        } else {
            return nil
        }
    }

    public static func < (a: Peer, b: Peer) -> Bool { a.description < b.description }

    /// Whether an address (and, if known, the workload it belongs to and the
    /// names this workload resolved to it) is this peer.
    public func matches(address: IPAddress, workload: String?, names: [String] = []) -> Bool {
        switch self {
        case let .workload(w): return w == workload
        case let .network(c): return c.contains(address)
        case let .name(n): return names.contains { n.matches($0) }
        }
    }
}

extension ConnectionEvent.Direction {
    /// How rules say it (baseline files, the database, the API): "out" for
    /// connect, "in" for accept.
    public var ruleName: String { self == .connect ? "out" : "in" }

    public init?(ruleName: String) {
        switch ruleName {
        case "out": self = .connect
        case "in": self = .accept
        default: return nil
        }
    }
}

/// One allowed kind of connection. Outbound: (remote peer, remote port);
/// inbound: (remote peer, local port). The port on this side of an outbound
/// connection, and the remote port of an inbound one, are ephemeral and never
/// part of a rule.
public struct RuleKey: Hashable, Sendable, Comparable {
    /// connect: this workload connects out ("out" in rules); accept: it
    /// accepts ("in").
    public var direction: ConnectionEvent.Direction
    public var peer: Peer
    public var port: UInt16
    /// "tcp" or "udp" (`ConnectionEvent.IPProtocol`).
    public var proto: String

    public init(direction: ConnectionEvent.Direction, peer: Peer, port: UInt16, proto: String = "tcp") {
        self.direction = direction
        self.peer = peer
        self.port = port
        self.proto = proto
    }

    public static func < (a: RuleKey, b: RuleKey) -> Bool {
        (a.direction.ruleName, a.port, a.peer, a.proto) < (b.direction.ruleName, b.port, b.peer, b.proto)
    }

    /// Without `proto`: hashing a string is the dearest part of a key, and
    /// the policy engine hashes a key for every event; the TCP and UDP rules
    /// of one peer and port only share a bucket. (Equal keys still hash
    /// equally.)
    public func hash(into h: inout Hasher) {
        h.combine(direction)
        h.combine(port)
        h.combine(peer)
    }
}

/// A rule and its history, so that stale rules can be seen and pruned.
public struct Rule: Hashable, Sendable {
    public var key: RuleKey
    /// Wall-clock nanoseconds.
    public var firstSeen: Int64
    public var lastSeen: Int64
    public var hits: Int64

    public init(key: RuleKey, firstSeen: Int64, lastSeen: Int64, hits: Int64) {
        self.key = key
        self.firstSeen = firstSeen
        self.lastSeen = lastSeen
        self.hits = hits
    }
}

extension RuleKey {
    /// The rule an event would need. `peerWorkload` is the workload that owns
    /// the remote address, if the agent knows one; else an outbound
    /// connection to an address DNS gave this workload is a rule on that
    /// name (`event.peerName`).
    public init(event: ConnectionEvent, peerWorkload: String?) {
        let direction = event.direction
        let peer: Peer
        if let w = peerWorkload, w != Identity.unknownWorkload {
            peer = .workload(w)
        } else if direction == .connect, let n = event.peerName.flatMap(DNSName.init) {
            peer = .name(n)
        } else {
            let full = event.peer.family == .ipv4 ? 32 : 128
            peer = .network(CIDR(address: event.peer, prefixLength: full))
        }
        // The service port: the peer's for outbound, ours for inbound; never
        // a client's ephemeral source port (for UDP as for TCP).
        self.init(direction: direction, peer: peer, port: event.direction == .connect ? event.remotePort : event.localPort,
                  proto: event.proto.rawValue)
    }
}

/// One workload's baseline.
public struct Baseline: Sendable, Equatable {
    public var workload: String
    public var mode: Mode
    public var rules: [RuleKey: Rule]
    /// When learning (re)started, and when a rule was last added or the mode changed.
    public var learningSince: Int64
    public var lastChange: Int64
    /// Events were lost while this baseline was learning: it may lack rules,
    /// so it is never promoted automatically.
    public var incomplete: Bool
    /// Last time monitor mode saw a would_deny (for promotion to enforce).
    public var lastWouldDeny: Int64?
    /// Why learning stopped adding rules (the workload added them faster than
    /// a baseline grows: a scan is not a baseline); nil while it learns.
    /// Also marks the baseline incomplete. Cleared when the operator puts
    /// the workload in learn mode again.
    public var learningStopped: String?

    public init(workload: String, mode: Mode, rules: [Rule] = [], learningSince: Int64, lastChange: Int64? = nil,
                incomplete: Bool = false, lastWouldDeny: Int64? = nil, learningStopped: String? = nil) {
        self.workload = workload
        self.mode = mode
        self.rules = Dictionary(rules.map { ($0.key, $0) }, uniquingKeysWith: { a, _ in a })
        self.learningSince = learningSince
        self.lastChange = lastChange ?? learningSince
        self.incomplete = incomplete
        self.lastWouldDeny = lastWouldDeny
        self.learningStopped = learningStopped
    }

    /// Whether some rule allows this connection. `peerNames`: every name
    /// this workload resolved to the peer's address that still holds (an
    /// address also claimed by a name that is not allowed is allowed if any
    /// allowed name maps to it).
    public func allows(_ event: ConnectionEvent, peerWorkload: String?, peerNames: [String] = []) -> Bool {
        let direction = event.direction
        let port = event.direction == .connect ? event.remotePort : event.localPort
        let proto = event.proto.rawValue
        if let w = peerWorkload, rules[RuleKey(direction: direction, peer: .workload(w), port: port, proto: proto)] != nil {
            return true
        }
        var byAddress = event
        byAddress.peerName = nil
        if rules[RuleKey(event: byAddress, peerWorkload: nil)] != nil { return true }
        if direction == .connect {
            for n in peerNames {
                if let name = DNSName(n), rules[RuleKey(direction: direction, peer: .name(name), port: port, proto: proto)] != nil {
                    return true
                }
            }
        }
        // Operator-imported blocks and patterns: a linear scan, only over
        // rules wider than one address or name (few, in practice).
        return rules.keys.contains { k in
            k.direction == direction && k.port == port && k.proto == proto
                && k.peer.matches(address: event.peer, workload: peerWorkload, names: direction == .connect ? peerNames : [])
        }
    }

    /// Learns from one event; returns the rule if it is new.
    @discardableResult
    public mutating func learn(_ event: ConnectionEvent, peerWorkload: String?) -> Rule? {
        let (rule, isNew) = learn(RuleKey(event: event, peerWorkload: peerWorkload), at: event.timeNanoseconds)
        return isNew ? rule : nil
    }

    /// Learns that `hits` connections needing `key` happened, the latest at `time`.
    @discardableResult
    public mutating func learn(_ key: RuleKey, at time: Int64, hits: Int64 = 1) -> (rule: Rule, isNew: Bool) {
        // One lookup, then the rule is changed in place (the agent's hot path).
        if let i = rules.index(forKey: key) {
            rules.values[i].hits += hits
            rules.values[i].lastSeen = max(rules.values[i].lastSeen, time)
            return (rules.values[i], false)
        }
        let r = Rule(key: key, firstSeen: time, lastSeen: time, hits: hits)
        rules[key] = r
        lastChange = max(lastChange, time)
        return (r, true)
    }

    /// Counts a hit on the rule that names this connection exactly (by its
    /// peer workload, else by its peer address), and returns the rule; nil
    /// when no such rule exists (a wider imported block may still allow the
    /// connection: `allows`).
    @discardableResult
    public mutating func recordHit(_ event: ConnectionEvent, peerWorkload: String?, hits: Int64 = 1) -> Rule? {
        var key = RuleKey(event: event, peerWorkload: peerWorkload)
        var found = rules.index(forKey: key)
        if found == nil, peerWorkload != nil {
            key = RuleKey(event: event, peerWorkload: nil)
            found = rules.index(forKey: key)
        }
        guard let i = found else { return nil }
        rules.values[i].hits += hits
        rules.values[i].lastSeen = max(rules.values[i].lastSeen, event.timeNanoseconds)
        return rules.values[i]
    }

    /// Removes rules not seen since `cutoff`; returns them.
    public mutating func prune(unusedSince cutoff: Int64, now: Int64) -> [Rule] {
        let stale = rules.values.filter { $0.lastSeen < cutoff }
        for r in stale { rules[r.key] = nil }
        if !stale.isEmpty { lastChange = now }
        return stale.sorted { $0.key < $1.key }
    }

    /// Rules added since `time`, oldest first.
    public func added(since time: Int64) -> [Rule] {
        rules.values.filter { $0.firstSeen >= time }.sorted { ($0.firstSeen, $0.key) < ($1.firstSeen, $1.key) }
    }

    public var sortedRules: [Rule] { rules.values.sorted { $0.key < $1.key } }
}


/// When a workload moves on by itself. learn -> monitor after the learning
/// period, once no new rule has appeared for the quiet period; monitor ->
/// enforce only if the operator allowed it (--auto-enforce), after a quiet
/// period without would_deny. A baseline that learnt while events were lost
/// is never promoted automatically.
public struct PromotionPolicy: Sendable, Equatable {
    /// nil: stay in learn until the operator says otherwise.
    public var learningPeriod: Int64?
    public var quietPeriod: Int64
    public var autoEnforce: Bool

    public init(learningPeriod: Int64? = nil, quietPeriod: Int64 = 3600 * 1_000_000_000, autoEnforce: Bool = false) {
        self.learningPeriod = learningPeriod
        self.quietPeriod = quietPeriod
        self.autoEnforce = autoEnforce
    }

    /// The mode the baseline should move to now, if any.
    public func promotion(for b: Baseline, now: Int64) -> Mode? {
        guard !b.incomplete else { return nil }
        switch b.mode {
        case .learn:
            guard let period = learningPeriod, now - b.learningSince >= period,
                  now - b.lastChange >= quietPeriod else { return nil }
            return .monitor
        case .monitor:
            guard autoEnforce, now - b.lastChange >= quietPeriod else { return nil }
            if let w = b.lastWouldDeny, now - w < quietPeriod { return nil }
            return .enforce
        case .enforce:
            return nil
        }
    }
}
