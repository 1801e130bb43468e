import ConnGuardCore

/// The one interface the agent uses to share state with the other nodes of a
/// cluster: which workload owns which address, one baseline per workload,
/// one mode per workload, and a watch over all three. A backend (etcd today;
/// a Kubernetes API one could follow, docs/cluster.md) implements it; the
/// agent knows nothing else about the store.
///
/// Every method that talks to the store throws `ClusterStoreError` when the
/// store cannot be reached or has no quorum, within the backend's request
/// timeout, so that the agent can go on with what it last knew.
public protocol ClusterStore: Sendable {
    /// This node's name, as it appears in the addresses it publishes and in
    /// the nodes that saw a rule.
    var node: String { get }

    /// Publishes what changed in this node's workload addresses, in the form
    /// `AddressBook` reports it: the new owner of each address, nil where the
    /// address no longer names a workload here. The entries live under a
    /// lease the store keeps alive: when this node stops keeping it (it died,
    /// or lost the store for longer than the TTL), they expire by themselves.
    /// The store remembers the whole set, so if this throws, or the lease is
    /// lost, it writes the set again on its own once the store is back.
    /// Only changed entries are written.
    func publishAddresses(_ changes: [IPAddress: String?]) async throws

    /// Merges rules learnt on this node into the workload's one cluster
    /// baseline: a new rule is added with this node as the one that saw it;
    /// a known one gets the earlier first seen, the later last seen, its hits
    /// added (so pass the hits counted since the last successful merge) and
    /// this node added to those that saw it. Atomic against other nodes
    /// merging at the same time (compare-and-swap): nothing is lost. Returns
    /// the merged baseline.
    @discardableResult
    func mergeRules(_ rules: [Rule], into workload: String) async throws -> ClusterBaseline

    /// Removes rules from the workload's cluster baseline (prune), atomically
    /// as `mergeRules`. Returns what is left (nil if there was no baseline).
    @discardableResult
    func removeRules(_ keys: Set<RuleKey>, from workload: String) async throws -> ClusterBaseline?

    /// Replaces the workload's cluster baseline with `rules` (an import),
    /// atomically as `mergeRules`; `nodes` of each rule: this node.
    @discardableResult
    func replaceRules(_ rules: [Rule], of workload: String) async throws -> ClusterBaseline

    /// The workload's cluster baseline, nil if none was ever merged. A value
    /// in the store that is not valid throws `ClusterStoreError.invalidValue`.
    func baseline(of workload: String) async throws -> ClusterBaseline?

    /// Sets the workload's mode for the whole cluster; `by` is who asked (for
    /// the audit log, with this node and the time).
    @discardableResult
    func setMode(_ mode: Mode, of workload: String, by who: String) async throws -> ModeSetting

    /// An automatic promotion, decided once for the cluster: sets `mode`
    /// only if the workload's cluster mode is still `from` (or was never
    /// set, and `from` is what the agents start in), compared and written in
    /// one transaction. nil: another node decided first (or an operator
    /// changed the mode); nothing was written.
    func promote(_ workload: String, from: Mode, to mode: Mode, unsetMeans: Mode, by who: String) async throws -> ModeSetting?

    /// The workload's cluster mode, nil if none was ever set.
    func mode(of workload: String) async throws -> ModeSetting?

    /// Succeeds only when the store can answer a linearizable read (a
    /// quorum), within the request timeout: a watch on a member cut off from
    /// the others stays open and silent, so this is how an agent knows.
    func checkHealth() async throws

    /// Everything in the store at one revision. Values that are not valid are
    /// left out and listed in `problems`.
    func snapshot() async throws -> ClusterSnapshot

    /// Every change from `revision` on (exclusive), or, when nil, a
    /// `.snapshot` of the current state first and then every change after it.
    /// The stream never fails: it reconnects (to another endpoint if need
    /// be) and resumes after the last revision it delivered, so nothing is
    /// missed or repeated; when the store has compacted those revisions away,
    /// it lists everything again and delivers a new `.snapshot`, which the
    /// consumer reconciles with what it has. It ends when the consumer stops
    /// iterating or the store is closed.
    func watch(from revision: Int64?) -> AsyncStream<ClusterChange>

    /// Stops keeping the lease alive and closes the connections. The lease is
    /// not revoked: this node's addresses stay until the TTL runs out, so an
    /// agent restarted within it (which publishes again under a new lease)
    /// does not make other nodes refuse its workloads in between.
    func close() async
}

/// One rule of a cluster baseline: the rule, as the agent's own baselines
/// hold it, and the nodes that saw it.
public struct ClusterRule: Sendable, Hashable {
    public var rule: Rule
    public var nodes: Set<String>

    public init(rule: Rule, nodes: Set<String>) {
        self.rule = rule
        self.nodes = nodes
    }
}

/// One workload's baseline as the cluster knows it.
public struct ClusterBaseline: Sendable, Equatable {
    public var workload: String
    public var rules: [RuleKey: ClusterRule]
    /// The store's revision of this value (etcd's mod_revision): what a
    /// compare-and-swap compares; 0 for a baseline not yet stored.
    public var revision: Int64

    public init(workload: String, rules: [ClusterRule] = [], revision: Int64 = 0) {
        self.workload = workload
        self.rules = Dictionary(rules.map { ($0.rule.key, $0) }, uniquingKeysWith: { a, _ in a })
        self.revision = revision
    }

    public var sortedRules: [ClusterRule] { rules.values.sorted { $0.rule.key < $1.rule.key } }

    /// A rule names at most this many of the nodes that saw it (the first
    /// ones): a DaemonSet's rule seen by every node of a large cluster
    /// would otherwise grow its baseline past the value limit.
    public static let maxNodesPerRule = 16

    /// The merge that `ClusterStore.mergeRules` does, on a value in hand.
    public mutating func merge(_ learnt: [Rule], from node: String) {
        for r in learnt {
            if var known = rules[r.key] {
                known.rule.firstSeen = min(known.rule.firstSeen, r.firstSeen)
                known.rule.lastSeen = max(known.rule.lastSeen, r.lastSeen)
                known.rule.hits += r.hits
                if known.nodes.count < Self.maxNodesPerRule { known.nodes.insert(node) }
                rules[r.key] = known
            } else {
                rules[r.key] = ClusterRule(rule: r, nodes: [node])
            }
        }
    }
}

/// A workload's cluster mode and who set it, from which node, when.
public struct ModeSetting: Sendable, Equatable {
    public var workload: String
    public var mode: Mode
    public var by: String
    public var node: String
    /// Wall-clock nanoseconds.
    public var at: Int64

    public init(workload: String, mode: Mode, by: String, node: String, at: Int64) {
        self.workload = workload
        self.mode = mode
        self.by = by
        self.node = node
        self.at = at
    }
}

/// A key whose value was refused: outside the layout, not JSON, a newer
/// format version, too large, or not what its key says. Nothing of it is
/// applied; the caller logs it and goes on.
public struct ClusterProblem: Error, Sendable, Equatable, CustomStringConvertible {
    public var key: String
    public var reason: String

    public init(key: String, reason: String) {
        self.key = key
        self.reason = reason
    }

    public var description: String { "\(key): \(reason)" }
}

/// Everything the cluster store holds, at one revision.
public struct ClusterSnapshot: Sendable, Equatable {
    public var revision: Int64
    /// node -> address -> workload, as each node published it.
    public var addresses: [String: [IPAddress: String]]
    public var baselines: [String: ClusterBaseline]
    public var modes: [String: ModeSetting]
    public var problems: [ClusterProblem]

    public init(revision: Int64 = 0, addresses: [String: [IPAddress: String]] = [:], baselines: [String: ClusterBaseline] = [:],
                modes: [String: ModeSetting] = [:], problems: [ClusterProblem] = []) {
        self.revision = revision
        self.addresses = addresses
        self.baselines = baselines
        self.modes = modes
        self.problems = problems
    }

    /// address -> the one workload that owns it across the cluster. An
    /// address claimed for two different workloads (by two nodes, a stale
    /// entry of a dead node not yet expired against a new pod) names none of
    /// them: rules on it stay address rules until the claims agree again.
    public var owners: [IPAddress: String] {
        var claims: [IPAddress: Set<String>] = [:]
        for perNode in addresses.values {
            for (a, w) in perNode { claims[a, default: []].insert(w) }
        }
        var result: [IPAddress: String] = [:]
        for (a, ws) in claims where ws.count == 1 { result[a] = ws.first! }
        return result
    }

    /// Addresses claimed for more than one workload (see `owners`).
    public var conflicts: [IPAddress: Set<String>] {
        var claims: [IPAddress: Set<String>] = [:]
        for perNode in addresses.values {
            for (a, w) in perNode { claims[a, default: []].insert(w) }
        }
        return claims.filter { $0.value.count > 1 }
    }

    /// Applies one change of a watch, so that a consumer can keep a snapshot
    /// current: a `.snapshot` replaces everything.
    public mutating func apply(_ change: ClusterChange) {
        switch change {
        case let .snapshot(s):
            self = s
        case let .address(node, address, workload, revision):
            if let w = workload {
                addresses[node, default: [:]][address] = w
            } else {
                addresses[node]?[address] = nil
                if addresses[node]?.isEmpty == true { addresses[node] = nil }
            }
            self.revision = max(self.revision, revision)
        case let .baseline(workload, b, revision):
            baselines[workload] = b
            self.revision = max(self.revision, revision)
        case let .mode(workload, m, revision):
            modes[workload] = m
            self.revision = max(self.revision, revision)
        case let .problem(p, revision):
            problems.append(p)
            self.revision = max(self.revision, revision)
        case .disconnected, .resumed:
            break
        }
    }
}

/// One change seen by a watch. `revision` is the store's revision of it.
public enum ClusterChange: Sendable, Equatable {
    /// The whole state: the first thing a watch from nil delivers, and what
    /// it delivers after a compaction made it miss changes. Replace what you
    /// had with it (differences are what changed while you were not told).
    case snapshot(ClusterSnapshot)
    /// `node` published `address` for `workload`; nil: the entry is gone
    /// (withdrawn, or its lease expired).
    case address(node: String, address: IPAddress, workload: String?, revision: Int64)
    /// The workload's cluster baseline changed; nil: deleted.
    case baseline(workload: String, ClusterBaseline?, revision: Int64)
    /// The workload's cluster mode changed; nil: deleted.
    case mode(workload: String, ModeSetting?, revision: Int64)
    /// A value that was refused (nothing applied from it).
    case problem(ClusterProblem, revision: Int64)
    /// The watch lost its connection; it retries on its own. The consumer
    /// keeps what it has (fail-static) and may say it is degraded.
    case disconnected(reason: String)
    /// The watch is back and resumed after `revision` without missing anything.
    case resumed(revision: Int64)
}

public enum ClusterStoreError: Error, Sendable, Equatable, CustomStringConvertible {
    /// No endpoint answered, or none could commit (no quorum), within the
    /// request timeout.
    case unavailable(String)
    /// The store answered with an error that retrying will not cure.
    case refused(String)
    /// A value in the store is not valid (see `ClusterProblem`).
    case invalidValue(ClusterProblem)
    /// What the caller asked for breaks a limit or the key layout.
    case invalidArgument(String)
    /// A compare-and-swap kept losing to other writers.
    case conflict(String)
    case closed

    public var description: String {
        switch self {
        case let .unavailable(s): return "cluster store unavailable (no quorum or unreachable): \(s)"
        case let .refused(s): return "cluster store refused the request: \(s)"
        case let .invalidValue(p): return "invalid value in the cluster store: \(p)"
        case let .invalidArgument(s): return "invalid cluster store request: \(s)"
        case let .conflict(s): return "cluster store write kept conflicting: \(s)"
        case .closed: return "cluster store is closed"
        }
    }
}
