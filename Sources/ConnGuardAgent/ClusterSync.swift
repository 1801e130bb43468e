import ConnGuardAgentInput
import ConnGuardCluster
import ConnGuardCore
import Foundation
import Logging
import ServiceLifecycle

/// The agent as one node of a cluster (docs/cluster.md). The policy engine
/// stays the one place that decides; this service carries its state to and
/// from the cluster store:
/// - this node's workload addresses out (as the AddressBook changes), and
///   every other node's in, into the kernel's peer-address map;
/// - rules learnt here out to the workload's cluster baseline, batched
///   (new rules within about a second, hits of known rules every few
///   minutes), and every cluster baseline in, enforced here;
/// - modes: an operator's change or an automatic promotion is made for the
///   cluster, and every mode the watch reports is applied here.
/// When the store is away it keeps what it last knew (fail-static), keeps
/// what is learnt meanwhile, says it is degraded, and catches up after.
final class ClusterSync: Service, @unchecked Sendable {
    let store: any ClusterStore
    let policy: PolicyEngine
    let logger: Logger
    let node: String
    let endpoints: [String]
    let defaultMode: Mode
    /// The other nodes' addresses as last known, so that an agent that
    /// starts while the store is away still names their workloads.
    let cachePath: String
    /// Hits of known rules go to the cluster this often (they only serve
    /// pruning); new rules within a second.
    let hitsInterval: Duration = .seconds(300)

    private let lock = Mutex()
    /// The cluster as the watch last described it (this node's entries too).
    private var view = ClusterSnapshot()
    private var synced = false
    private var cacheDirty = false
    /// Why the store is away, per signal: the watch's connection, the
    /// health check (a quorum), a write that could not be made.
    private var watchDown: String?
    private var healthDown: String?
    private var writeDown: String?
    private var degradedSince: Int64?
    private var problemsSeen: Set<String> = []
    /// Write errors already logged (a broken value would otherwise be
    /// reported at every merge attempt, each second).
    private var writeErrorsLogged: Set<String> = []
    private var conflictsReported: Set<IPAddress> = []
    private var promoting: Set<String> = []
    private var merges = 0

    private let addressChanges: AsyncStream<AddressBook.Changes>
    private let addressSink: AsyncStream<AddressBook.Changes>.Continuation
    private let promotions: AsyncStream<(String, Mode, Mode)>
    private let promotionSink: AsyncStream<(String, Mode, Mode)>.Continuation

    init(configuration c: AgentConfiguration, policy: PolicyEngine, logger: Logger) throws {
        let node = c.effectiveNodeName
        var etcd = EtcdConfiguration(endpoints: c.clusterEndpoints, leaseTTL: Int64(c.clusterLeaseTTLSeconds.rounded()))
        if c.clusterCA != nil || c.clusterCert != nil {
            etcd.tls = .init(caFile: c.clusterCA, certFile: c.clusterCert, keyFile: c.clusterKey)
        }
        do {
            store = try EtcdClusterStore(node: node, configuration: etcd)
        } catch {
            throw AgentError("cluster: \(error)")
        }
        self.policy = policy
        self.logger = logger
        self.node = node
        endpoints = c.clusterEndpoints
        defaultMode = Mode(rawValue: c.defaultMode) ?? .learn
        cachePath = Self.cachePath(c)
        (addressChanges, addressSink) = AsyncStream.makeStream(bufferingPolicy: .unbounded)
        (promotions, promotionSink) = AsyncStream.makeStream(bufferingPolicy: .unbounded)
        let addressSink = addressSink, promotionSink = promotionSink
        policy.clusterHooks = .init(publishAddresses: { addressSink.yield($0) },
                                    promote: { promotionSink.yield(($0, $1, $2)) })
    }

    func run() async throws {
        logger.info("cluster: joining", metadata: ["node": "\(node)", "endpoints": "\(endpoints.joined(separator: ","))"])
        // This node's addresses, whole: the store writes only what differs
        // from what it finds under this node's name.
        addressSink.yield(policy.localAddressOwners.mapValues { Optional($0) })
        await withDiscardingTaskGroup { group in
            group.addTask { await self.watchLoop() }
            group.addTask { await self.addressLoop() }
            group.addTask { await self.mergeLoop() }
            group.addTask { await self.promotionLoop() }
            try? await gracefulShutdown()
            group.cancelAll()
        }
        // What was learnt since the last merge, if the store is there (the
        // local database has it either way; a store that is away would only
        // make shutdown wait out its timeout).
        if degradedSinceSeconds == nil { await mergeOutbox(all: true) }
        saveCache()
        await store.close()
    }

    // MARK: - In: the watch

    private func watchLoop() async {
        for await change in store.watch(from: nil) {
            if Task.isCancelled { break }
            switch change {
            case let .snapshot(s):
                reconcile(s)
            case let .address(node, address, workload, _):
                lock.withLock {
                    view.apply(change)
                    cacheDirty = true
                }
                if node != self.node { policy.remoteAddressChanged(node: node, address: address, workload: workload) }
                reportConflict(address)
            case let .baseline(workload, b, _):
                lock.withLock { view.apply(change) }
                if let b {
                    policy.applyClusterBaseline(b)
                } else {
                    logger.warning("cluster: a workload's baseline was deleted from the store; this node keeps enforcing its local copy",
                                   metadata: ["workload": "\(workload)"])
                }
            case let .mode(workload, m, _):
                lock.withLock { view.apply(change) }
                if let m {
                    policy.applyClusterMode(m)
                } else {
                    logger.warning("cluster: a workload's mode was deleted from the store; this node keeps its current mode", metadata: ["workload": "\(workload)"])
                }
            case let .problem(p, _):
                report(p)
            case let .disconnected(reason):
                setDown(\.watchDown, reason)
            case .resumed:
                setDown(\.watchDown, nil)
            }
        }
    }

    /// A whole view (the first answer, or after a compaction): replaces the
    /// other nodes' addresses, and applies every baseline and mode (those
    /// already applied are skipped by revision or value).
    private func reconcile(_ s: ClusterSnapshot) {
        lock.withLock {
            view = s
            synced = true
            cacheDirty = true
        }
        setDown(\.watchDown, nil)
        policy.replaceRemoteAddresses(s.addresses.filter { $0.key != node })
        for b in s.baselines.values { policy.applyClusterBaseline(b) }
        for m in s.modes.values { policy.applyClusterMode(m) }
        for p in s.problems { report(p) }
        for a in s.conflicts.keys { reportConflict(a) }
        logger.info("cluster: in sync", metadata: [
            "revision": "\(s.revision)", "nodes": "\(s.addresses.count)", "baselines": "\(s.baselines.count)", "modes": "\(s.modes.count)",
            "remote_addresses": "\(policy.remoteAddressCount)",
        ])
    }

    /// A value the store refused: logged once, nothing applied from it.
    private func report(_ p: ClusterProblem) {
        guard lock.withLock({ problemsSeen.insert(p.description).inserted }) else { return }
        logger.error("cluster: refused a value in the store; nothing of it is applied", metadata: ["key": "\(p.key)", "why": "\(p.reason)"])
    }

    /// An address claimed for two workloads names neither (rules on it stay
    /// address rules) until the claims agree: logged once per address.
    private func reportConflict(_ a: IPAddress) {
        let claims = lock.withLock { () -> Set<String>? in
            // This address's claims only: once per watched change, over
            // every node's (a dictionary lookup per node).
            var c: Set<String> = []
            for perNode in view.addresses.values { if let w = perNode[a] { c.insert(w) } }
            guard c.count > 1 else { conflictsReported.remove(a); return nil }
            return conflictsReported.insert(a).inserted ? c : nil
        }
        guard let claims else { return }
        logger.warning("cluster: an address is claimed for more than one workload; it names none of them until the claims agree",
                       metadata: ["address": "\(a)", "workloads": "\(claims.sorted().joined(separator: ", "))"])
    }

    // MARK: - Out: addresses, rules, promotions

    private func addressLoop() async {
        for await changes in addressChanges {
            if Task.isCancelled { break }
            do {
                try await store.publishAddresses(changes)
            } catch {
                // Kept by the store, which writes the whole set again once it can.
                noteWriteFailure(error, "publishing this node's addresses")
            }
        }
    }

    private func mergeLoop() async {
        var lastHits = ContinuousClock.now
        var tick = 0
        while !Task.isCancelled {
            try? await Task.sleep(for: .seconds(1))
            if Task.isCancelled { break }
            tick += 1
            let all = ContinuousClock.now - lastHits >= hitsInterval
            if all { lastHits = .now }
            await mergeOutbox(all: all)
            if tick % 2 == 0 {
                do {
                    try await store.checkHealth()
                    setDown(\.healthDown, nil)
                    setDown(\.writeDown, nil)
                } catch {
                    setDown(\.healthDown, "\(error)")
                }
            }
            if tick % 60 == 0 { saveCache() }
        }
    }

    /// One compare-and-swap per workload that learnt something; what fails
    /// goes back to the policy engine and is merged with what comes next.
    private func mergeOutbox(all: Bool) async {
        var batch = policy.takeClusterOutbox(all: all)[...]
        while let (workload, rules, hasNew) = batch.popFirst() {
            do {
                let merged = try await store.mergeRules(rules, into: workload)
                lock.withLock { merges += 1 }
                policy.applyClusterBaseline(merged)
            } catch {
                policy.returnToOutbox(workload, rules, hasNew: hasNew)
                noteWriteFailure(error, "merging learnt rules of \(workload)")
                if case ClusterStoreError.unavailable = error {
                    // The rest would wait out the same timeout: next time.
                    for (w, r, n) in batch { policy.returnToOutbox(w, r, hasNew: n) }
                    return
                }
            }
        }
    }

    private func promotionLoop() async {
        for await (workload, from, to) in promotions {
            if Task.isCancelled { break }
            guard lock.withLock({ promoting.insert(workload).inserted }) else { continue }
            defer { _ = lock.withLock { promoting.remove(workload) } }
            do {
                if let m = try await store.promote(workload, from: from, to: to, unsetMeans: defaultMode, by: "connguard") {
                    logger.notice("cluster: automatic promotion decided for the cluster", metadata: [
                        "workload": "\(workload)", "from": "\(from.rawValue)", "to": "\(to.rawValue)"])
                    policy.applyClusterMode(m)
                }
                // nil: another node decided first, or an operator changed
                // the mode; the watch brings it.
            } catch {
                noteWriteFailure(error, "promoting \(workload)")
            }
        }
    }

    private func noteWriteFailure(_ error: Error, _ what: String) {
        if case ClusterStoreError.unavailable = error {
            setDown(\.writeDown, "\(what): \(error)")
        } else {
            let line = "\(what) failed: \(error)"
            let first = lock.withLock { () -> Bool in
                if writeErrorsLogged.count > 1000 { writeErrorsLogged.removeAll() }
                return writeErrorsLogged.insert(line).inserted
            }
            if first { logger.error("cluster: \(line) (kept here and tried again; logged once)") }
        }
    }

    // MARK: - Operator actions (the API, on any node)

    /// Sets the workload's mode for the whole cluster, then here.
    func setMode(_ workload: String, _ mode: Mode, who: String) async throws {
        guard policy.baseline(workload) != nil else { throw APIError.notFound("no workload named '\(workload)' (see `connguard baseline list`)") }
        if mode == .enforce { try policy.checkCanEnforce(workload) }
        let m: ModeSetting
        do {
            m = try await store.setMode(mode, of: workload, by: who)
        } catch {
            throw unavailable(error, "the mode is the cluster's and was not changed")
        }
        try policy.setMode(workload, mode, who: "\(who) on \(m.node)", reason: "operator, for the cluster")
    }

    /// An import replaces the workload's cluster baseline and sets its mode
    /// for the cluster, then here.
    func importBaseline(_ b: Baseline, who: String) async throws {
        if b.mode == .enforce { try policy.checkCanEnforce(b.workload, rules: Set(b.rules.keys)) }
        let merged: ClusterBaseline
        do {
            merged = try await store.replaceRules(Array(b.rules.values), of: b.workload)
            if lock.withLock({ view.modes[b.workload]?.mode }) != b.mode || policy.baseline(b.workload)?.mode != b.mode {
                _ = try await store.setMode(b.mode, of: b.workload, by: who)
            }
        } catch {
            throw unavailable(error, "nothing was imported")
        }
        try policy.importBaseline(b, who: "\(who) on \(node)")
        policy.applyClusterBaseline(merged)
    }

    /// Prunes the workload's cluster baseline, then here.
    func prune(_ workload: String, unusedForSeconds: Double, who: String) async throws -> [Rule] {
        let candidates = try policy.pruneCandidates(workload, unusedForSeconds: unusedForSeconds)
        let left: ClusterBaseline?
        do {
            left = try await store.removeRules(Set(candidates.map(\.key)), from: workload)
        } catch {
            throw unavailable(error, "nothing was pruned")
        }
        try policy.remove(candidates, from: workload, detail: "\(candidates.count) rules unused for \(Int(unusedForSeconds))s, for the cluster",
                          who: "\(who) on \(node)")
        if let left { policy.applyClusterBaseline(left) }
        return candidates
    }

    private func unavailable(_ error: Error, _ consequence: String) -> Error {
        if let e = error as? ClusterStoreError {
            if case .unavailable = e { setDown(\.writeDown, "\(e)") }
            return APIError.unavailable("\(e); \(consequence)")
        }
        return error
    }

    // MARK: - Degraded or not

    private func setDown(_ signal: ReferenceWritableKeyPath<ClusterSync, String?>, _ reason: String?) {
        let now = BootClock.now(CLOCK_REALTIME)
        let (was, isNow) = lock.withLock { () -> (Bool, Bool) in
            let was = degradedSince != nil
            self[keyPath: signal] = reason
            let down = watchDown != nil || healthDown != nil || writeDown != nil
            if down && degradedSince == nil { degradedSince = now }
            if !down { degradedSince = nil }
            return (was, down)
        }
        if !was && isNow {
            logger.warning("cluster: degraded; enforcing what was last known, learning locally until the store is back",
                           metadata: ["why": "\(reason ?? "")"])
        } else if was && !isNow {
            logger.notice("cluster: connected again; what was learnt meanwhile is merged")
        }
    }

    func status() -> AgentStatus.Cluster {
        lock.withLock {
            let reason = watchDown ?? healthDown ?? writeDown
            return AgentStatus.Cluster(
                node: node, endpoints: endpoints,
                state: degradedSince != nil ? "degraded" : (synced ? "connected" : "connecting"),
                degradedSince: Nullable(degradedSince.map(RFC3339.string)), reason: Nullable(reason),
                revision: view.revision, remoteAddresses: Int64(policy.remoteAddressCount),
                baselines: Int64(view.baselines.count), addressConflicts: Int64(view.conflicts.count),
                refusedValues: Int64(problemsSeen.count), merges: Int64(merges))
        }
    }

    /// Wall-clock seconds since the store has been away (nil: it is not).
    var degradedSinceSeconds: Double? { lock.withLock { degradedSince.map { Double($0) / 1e9 } } }

    // MARK: - The local copy of the other nodes' addresses

    private struct Cache: Codable {
        var v = 1
        var node: String
        var revision: Int64
        var addresses: [String: [String: String]]
    }

    static func cachePath(_ c: AgentConfiguration) -> String { c.databasePath + ".cluster-addresses.json" }

    /// The other nodes' addresses as this node last knew them (saved every
    /// minute and at exit), for the kernel from the start: the watch replaces
    /// them with the store's as soon as it answers.
    static func lastKnownAddresses(_ c: AgentConfiguration, logger: Logger) -> [String: [IPAddress: String]] {
        let path = cachePath(c)
        guard let data = FileManager.default.contents(atPath: path) else { return [:] }
        guard let cache = try? JSONDecoder().decode(Cache.self, from: data), cache.v == 1 else {
            logger.warning("cluster: the local copy of other nodes' addresses cannot be read; starting without it", metadata: ["file": "\(path)"])
            return [:]
        }
        let node = c.effectiveNodeName
        var byNode: [String: [IPAddress: String]] = [:]
        var count = 0
        for (n, perNode) in cache.addresses where n != node {
            for (a, w) in perNode {
                guard let ip = IPAddress(a) else { continue }
                byNode[n, default: [:]][ip] = w
                count += 1
            }
        }
        logger.info("cluster: other nodes' addresses as last known, until the store answers", metadata: [
            "revision": "\(cache.revision)", "addresses": "\(count)"])
        return byNode
    }

    private func saveCache() {
        let c: Cache? = lock.withLock {
            guard synced, cacheDirty else { return nil }
            cacheDirty = false
            return Cache(node: node, revision: view.revision,
                         addresses: view.addresses.mapValues { Dictionary(uniqueKeysWithValues: $0.map { ($0.key.description, $0.value) }) })
        }
        guard let c, let data = try? JSONEncoder().encode(c) else { return }
        let tmp = cachePath + ".tmp"
        guard FileManager.default.createFile(atPath: tmp, contents: data, attributes: [.posixPermissions: 0o600]),
              rename(tmp, cachePath) == 0 else {
            logger.warning("cluster: could not write the local copy of other nodes' addresses", metadata: ["file": "\(cachePath)"])
            return
        }
    }
}
