import ConnGuardCluster
import ConnGuardCore
import ConnGuardEnforcer
import ConnGuardStore
import Foundation
import Logging

/// Baselines and modes, per workload: learns from traced connections, gives
/// each event its verdict, and keeps the kernel's enforcement maps: a policy
/// (workload and mode) for every cgroup of a known workload, and the rules of
/// every enforced workload (learn and monitor decide nothing in the kernel,
/// so their rules take no room there). The rules of all enforced workloads
/// must fit the kernel's maps: a change that would not fit is refused whole,
/// and at start an enforced workload that does not fit is held back (its
/// cgroups monitor in the kernel) and said so, so that a node is never
/// bricked by its own database.
///
/// State lives here behind one lock; the database (BaselineStore) is written
/// in batches by `tick()`, and at once for operator actions.
public final class PolicyEngine: @unchecked Sendable {
    struct Entry {
        var baseline: Baseline
        let workloadID: UInt32
        /// Rules learnt or hit since the last flush to the database.
        var pending: [RuleKey: Rule] = [:]
        /// New rules learnt in the minute that began at `windowStart` (event time).
        var windowStart: Int64 = 0
        var windowAdded = 0
        /// On a cluster: rules learnt or hit since they were last handed to
        /// the cluster baseline (hits counted since then), and whether one
        /// of them is new (a new rule goes out within a second; hits alone
        /// every few minutes).
        var outbox: [RuleKey: Rule] = [:]
        var outboxHasNew = false
        /// The cluster baseline's revision last applied, and which nodes saw
        /// each of its rules.
        var clusterRevision: Int64 = 0
        var clusterNodes: [RuleKey: Set<String>] = [:]
    }

    public struct Settings: Sendable {
        public var defaultMode: Mode = .learn
        public var promotion = PromotionPolicy()
        /// More new rules than this in a minute stop a workload's learning.
        public var maxNewRulesPerMinute = 300
        /// One node of a cluster (ClusterSync): learnt rules also go to the
        /// cluster baseline, and modes are the cluster's.
        public var clustered = false
        public init() {}
    }

    /// The kernel's rule maps could not take a change; nothing was changed.
    public struct KernelFull: Error, CustomStringConvertible {
        public let description: String
    }

    let settings: Settings
    let store: BaselineStore
    let enforcer: Enforcer?
    let identity: IdentitySource
    let logger: Logger
    /// What each workload resolved (set by the agent before events flow):
    /// the names a peer's address stands for, for monitor's verdicts.
    public var names: ResolvedNames?
    /// cgroup v2 mount + watched root, to find a workload's cgroups.
    let cgroupRootPath: String
    /// The watched subtree (nil: the whole node).
    let scope: CgroupSubtree?
    /// Where the cgroup v2 hierarchy is mounted (cgroup event paths are relative to it).
    let cgroupMount = CgroupMount.find() ?? ""
    /// The node's own network namespace: a cgroup in it (host network, host
    /// processes) has no address of its own.
    let nodeNamespace = NamespaceAddresses.ownNamespace

    private let lock = Mutex()
    private var entries: [String: Entry] = [:]
    private var byID: [UInt32: String] = [:]
    /// Which workload holds each address of this node's containers and pods,
    /// from their network namespaces; mirrored into the kernel's
    /// peer_addresses map.
    private var addresses = AddressBook()
    /// Addresses other nodes of the cluster published: address -> node ->
    /// workload.
    private var remoteClaims: [IPAddress: [String: String]] = [:]
    /// Over this node's book and the other nodes' claims, the one workload
    /// holding each address (an address claimed for two names none): what
    /// the kernel's peer_addresses map holds.
    private var owners: [IPAddress: String] = [:]
    /// Kernel ids of workloads that are only peers here (no entry).
    private var peerIDs: [String: UInt32] = [:]
    /// Workloads whose cluster baseline was applied since the last flush
    /// (their local copy is stored whole then).
    private var clusterChanged: Set<String> = []
    /// On a cluster: where this node's address changes and its automatic
    /// promotions go (set by ClusterSync before the agent runs).
    public var clusterHooks: ClusterHooks? {
        get { lock.withLock { hooks } }
        set { lock.withLock { hooks = newValue } }
    }
    private var hooks: ClusterHooks?
    /// cgroups outside the watched subtree that were seen as the local peer
    /// of a connection, and given a (learn) policy so that the kernel knows
    /// their workload.
    private var armedPeers: Set<UInt64> = []
    private var pendingWouldDeny: [String: Int64] = [:]
    /// The rules in the kernel, by enforced workload.
    private var loaded: [String: Set<EnforcementRule>] = [:]
    /// Enforced workloads whose rules did not fit the kernel at start: their
    /// cgroups are in monitor mode there until room is made.
    private var heldBack: Set<String> = []

    /// `remoteAddresses`: on a cluster, the other nodes' addresses as last
    /// known (ClusterSync's local copy), in the kernel from the start.
    public init(settings: Settings, store: BaselineStore, enforcer: Enforcer?, identity: IdentitySource,
                cgroupRootPath: String, scope: CgroupSubtree? = nil, remoteAddresses: [String: [IPAddress: String]] = [:],
                logger: Logger) throws {
        self.settings = settings
        self.store = store
        self.enforcer = enforcer
        self.identity = identity
        self.cgroupRootPath = cgroupRootPath
        self.scope = scope
        self.logger = logger
        for (b, id) in try store.loadAll() {
            entries[b.workload] = Entry(baseline: b, workloadID: id)
            byID[id] = b.workload
        }
        for (node, perNode) in remoteAddresses {
            for (a, w) in perNode { remoteClaims[a, default: [:]][node] = w }
        }
        _ = refreshOwnersLocked(remoteClaims.keys)
        scanAddresses(applyToKernel: false)
        try migrateAddressRules()
        try syncKernel()
    }

    // MARK: - Hot path (the event pipeline's thread)

    /// What the policy engine made of one connection.
    public struct Judgement: Sendable, Equatable {
        public var verdict: Verdict
        /// The workload at the other end, if ConnGuard knows it.
        public var peerWorkload: String?

        public init(verdict: Verdict, peerWorkload: String?) {
            self.verdict = verdict
            self.peerWorkload = peerWorkload
        }
    }

    /// The workload at the other end of a connection: for a peer on this node
    /// in the same network namespace (the kernel found its socket), the
    /// workload of its cgroup; else the workload holding the peer's address,
    /// if one does. The kernel decides with the same two facts.
    public func peerWorkload(of e: ConnectionEvent) -> String? {
        if e.peerCgroupID != 0 {
            let who = identity.identity(forCgroup: e.peerCgroupID)
            return who.isUnknown ? nil : who.workload
        }
        return lock.withLock { owners[e.peer] }
    }

    /// The verdict for one traced (so: not refused) connection, learning from
    /// it in learn mode.
    /// `count`: the events `e` stands for (kernel-counted repeats of one
    /// connection all get this verdict and count as that many hits).
    public func judge(_ e: ConnectionEvent, identity who: Identity, count: Int64 = 1) -> Judgement {
        let peerWorkload = peerWorkload(of: e)
        if let w = peerWorkload, e.peerCgroupID != 0 { armPeer(cgroupID: e.peerCgroupID, workload: w) }
        guard !who.isUnknown else { return Judgement(verdict: .allowed, peerWorkload: peerWorkload) }
        func peerNames() -> [String] {
            e.direction == .connect ? names?.names(of: e.peer, for: who.workload, at: e.timeNanoseconds) ?? [] : []
        }
        var stopped: String?
        let verdict: Verdict = lock.withLock {
            // Found once by index, then changed in place: every event comes
            // here, and a copy of the entry would copy its rule table.
            guard let i = entryIndexLocked(who.workload) else { return .allowed }
            func judge(_ entry: inout Entry) -> Verdict {
                switch entry.baseline.mode {
                case .learn:
                    // A failed connect (refused, unreachable, timed out) is
                    // not what the workload normally does: it stays in the
                    // connections and aggregates, never in the baseline.
                    guard e.outcome == .established else { return .allowed }
                    let key = RuleKey(event: e, peerWorkload: peerWorkload)
                    if entry.baseline.rules[key] == nil {
                        guard entry.baseline.learningStopped == nil else { return .allowed }
                        if e.timeNanoseconds - entry.windowStart >= 60_000_000_000 {
                            entry.windowStart = e.timeNanoseconds
                            entry.windowAdded = 0
                        }
                        entry.windowAdded += 1
                        if entry.windowAdded > settings.maxNewRulesPerMinute {
                            let why = "more than \(settings.maxNewRulesPerMinute) new rules within a minute (a scan is not a baseline); "
                                + "`connguard mode \(who.workload) learn` starts learning again"
                            entry.baseline.learningStopped = why
                            entry.baseline.incomplete = true
                            stopped = why
                            return .allowed
                        }
                    }
                    let (rule, isNew) = entry.baseline.learn(key, at: e.timeNanoseconds, hits: count)
                    entry.pending[rule.key] = rule
                    if settings.clustered { Self.noteForCluster(&entry, key, at: e.timeNanoseconds, hits: count, new: isNew) }
                    return .allowed
                case .monitor:
                    if let hit = entry.baseline.recordHit(e, peerWorkload: peerWorkload, hits: count) {
                        entry.pending[hit.key] = hit
                        if settings.clustered { Self.noteForCluster(&entry, hit.key, at: e.timeNanoseconds, hits: count, new: false) }
                        return .allowed
                    }
                    // An imported block or pattern, or another name that gave this address.
                    if entry.baseline.allows(e, peerWorkload: peerWorkload, peerNames: peerNames()) { return .allowed }
                    entry.baseline.lastWouldDeny = e.timeNanoseconds
                    pendingWouldDeny[who.workload] = e.timeNanoseconds
                    return .wouldDeny
                case .enforce:
                    if let hit = entry.baseline.recordHit(e, peerWorkload: peerWorkload, hits: count) {
                        entry.pending[hit.key] = hit
                        if settings.clustered { Self.noteForCluster(&entry, hit.key, at: e.timeNanoseconds, hits: count, new: false) }
                    }
                    return .allowed
                }
            }
            return judge(&entries.values[i])
        }
        if let why = stopped {
            logger.warning("learning stopped", metadata: ["workload": "\(who.workload)", "why": "\(why)"])
            DispatchQueue.global().async { [store] in
                try? store.stopLearning(workload: who.workload, reason: why, now: BootClock.now(CLOCK_REALTIME))
            }
        }
        return Judgement(verdict: verdict, peerWorkload: peerWorkload)
    }

    /// A local peer outside the watched subtree (a host process, say) has no
    /// policy from the cgroup walk: give its cgroup one in learn mode, which
    /// decides nothing, so that the kernel knows its workload when an
    /// enforced server or client of the subtree meets it.
    private func armPeer(cgroupID: UInt64, workload: String) {
        guard let enforcer, let scope, !scope.contains(cgroupID) else { return }
        guard lock.withLock({ armedPeers.insert(cgroupID).inserted }) else { return }
        do {
            let id = try lock.withLock({ entries[workload]?.workloadID })
                ?? store.workloadID(for: workload, createWith: .learn, now: BootClock.now(CLOCK_REALTIME))
            if try enforcer.policy(cgroupID: cgroupID) == nil {
                try enforcer.setPolicy(cgroupID: cgroupID, workloadID: id, mode: .learn)
            }
        } catch {
            logger.warning("could not name the workload of peer cgroup \(cgroupID) in the kernel: \(error)")
        }
    }

    /// Where a workload's entry is, created in the default mode on first sight.
    private func entryIndexLocked(_ workload: String) -> Dictionary<String, Entry>.Index? {
        if let i = entries.index(forKey: workload) { return i }
        guard entryLocked(workload) != nil else { return nil }
        return entries.index(forKey: workload)
    }

    /// The entry for a workload, created in the default mode on first sight.
    private func entryLocked(_ workload: String) -> Entry? {
        if let e = entries[workload] { return e }
        let now = BootClock.now(CLOCK_REALTIME)
        guard let id = try? store.workloadID(for: workload, createWith: settings.defaultMode, now: now) else { return nil }
        let e = Entry(baseline: Baseline(workload: workload, mode: settings.defaultMode, learningSince: now), workloadID: id)
        entries[workload] = e
        byID[id] = workload
        // Its cgroups get their policy (in learn mode too: the kernel must
        // know their workload when they are another workload's local peer).
        // Not on this thread: it is the hot path, and this is once per workload.
        DispatchQueue.global().async { [self] in try? armWorkload(workload) }
        return e
    }

    // MARK: - New cgroups (the enforcer's cgroup watcher thread)

    /// A cgroup appeared: if it belongs to a workload in monitor or enforce
    /// mode, arm it at once. Returns the latency from creation, if armed.
    @discardableResult
    public func cgroupCreated(_ c: CgroupEvent) -> Int64? {
        guard c.created, c.hierarchyID == 0, let enforcer else { return nil }
        identity.apply(c)
        let who = identity.identity(forCgroup: c.cgroupID)
        guard !who.isUnknown else { return nil }
        // Its addresses name its workload from its first connection, even
        // for a workload seen for the first time.
        watchForAddresses(cgroupID: c.cgroupID, path: cgroupMount + c.path, workload: who.workload, podOwner: Self.podOwner(who))
        let entry: Entry? = lock.withLock { entries[who.workload] ?? (settings.defaultMode != .learn ? entryLocked(who.workload) : nil) }
        guard let entry else { return nil }
        let mode = lock.withLock { kernelModeLocked(entry) }
        let latency = try? enforcer.arm(cgroupID: c.cgroupID, workloadID: entry.workloadID, mode: mode,
                                        createdAtWallNanoseconds: c.timeNanoseconds)
        return entry.baseline.mode == .learn ? nil : latency
    }

    /// A cgroup went away: its addresses no longer name its workload, and its
    /// policy goes from the kernel.
    public func cgroupRemoved(_ cgroupID: UInt64) {
        let changes = lock.withLock { () -> AddressBook.Changes in
            armedPeers.remove(cgroupID)
            return localAddressesChangedLocked(addresses.remove(cgroup: cgroupID))
        }
        applyAddressChanges(changes)
        _ = try? enforcer?.removePolicy(cgroupID: cgroupID)
    }

    // MARK: - Operator actions (API)

    public struct Summary: Sendable {
        public let workload: String
        public let mode: Mode
        public let rules: Int
        public let lastChange: Int64
        public let incomplete: Bool
    }

    public func list() -> [Summary] {
        lock.withLock {
            entries.values.map {
                Summary(workload: $0.baseline.workload, mode: $0.baseline.mode, rules: $0.baseline.rules.count,
                        lastChange: $0.baseline.lastChange, incomplete: $0.baseline.incomplete)
            }.sorted { $0.workload < $1.workload }
        }
    }

    public func baseline(_ workload: String) -> Baseline? { lock.withLock { entries[workload]?.baseline } }

    public func setMode(_ workload: String, _ mode: Mode, who: String, reason: String) throws {
        let now = BootClock.now(CLOCK_REALTIME)
        try flush()
        guard let (old, current) = lock.withLock({ entries[workload].map { ($0.baseline.mode, $0.baseline) } }) else {
            throw APIError.notFound("no workload named '\(workload)' (see `connguard baseline list`)")
        }
        // Into enforce: its rules into the kernel first (refused whole if
        // they do not fit), so that it is never enforced without them.
        if mode == .enforce { try loadRules(workload, current) }
        do {
            try store.setMode(workload: workload, mode: mode, who: who, now: now, reason: reason)
        } catch {
            if old != .enforce { unloadRules(workload) }
            throw error
        }
        lock.withLock {
            guard var e = entries[workload] else { return }
            e.baseline.mode = mode
            e.baseline.lastChange = now
            if mode == .learn {
                // Learning (again), on the operator's word: from now, whole.
                e.baseline.learningSince = now
                e.baseline.incomplete = false
                e.baseline.learningStopped = nil
                e.windowAdded = 0
            }
            entries[workload] = e
        }
        try armWorkload(workload)
        if mode != .enforce { unloadRules(workload) }
        logger.notice("mode changed", metadata: ["workload": "\(workload)", "mode": "\(mode.rawValue)", "by": "\(who)", "reason": "\(reason)"])
    }

    /// Replaces a workload's baseline (rules and mode) as a whole: one
    /// transaction over the database and the kernel. What would not fit the
    /// kernel is refused before anything changes; a failure in the kernel
    /// puts the database (and the kernel) back as they were.
    public func importBaseline(_ b: Baseline, who: String) throws {
        let now = BootClock.now(CLOCK_REALTIME)
        try flush()
        let before = lock.withLock { entries[b.workload] }
        if b.mode == .enforce { try checkCapacity(b.workload, keys: Set(b.rules.keys)) }
        try store.replace(b, who: who, now: now)
        let id = try store.workloadID(for: b.workload, createWith: b.mode, now: now)
        var imported = b
        imported.lastChange = now
        lock.withLock {
            entries[b.workload] = Entry(baseline: imported, workloadID: id)  // nothing pending
            byID[id] = b.workload
        }
        do {
            if b.mode == .enforce { try loadRules(b.workload, imported) } else { unloadRules(b.workload) }
            try armWorkload(b.workload)
        } catch {
            // Back as it was: the database, the engine, the kernel.
            logger.error("baseline import undone: the kernel refused it", metadata: ["workload": "\(b.workload)", "error": "\(error)"])
            if let before {
                try? store.replace(before.baseline, who: "connguard (undoing a failed import)", now: now)
                lock.withLock { entries[b.workload] = Entry(baseline: before.baseline, workloadID: before.workloadID) }
                if before.baseline.mode == .enforce { try? loadRules(b.workload, before.baseline) } else { unloadRules(b.workload) }
            } else {
                try? store.delete(workload: b.workload, who: "connguard", now: now, why: "a failed import undone")
                lock.withLock { entries[b.workload] = nil }
                unloadRules(b.workload)
            }
            try? armWorkload(b.workload)
            throw error
        }
    }

    public func prune(_ workload: String, unusedForSeconds: Double, who: String) throws -> [Rule] {
        let now = BootClock.now(CLOCK_REALTIME)
        try flush()
        let pruned: [Rule]? = lock.withLock {
            guard var e = entries[workload] else { return nil }
            let p = e.baseline.prune(unusedSince: now - DurationParser.nanoseconds(unusedForSeconds), now: now)
            entries[workload] = e
            return p
        }
        guard let pruned else { throw APIError.notFound("no workload named '\(workload)'") }
        try afterPrune(workload, detail: "\(pruned.count) rules unused for \(Int(unusedForSeconds))s", who: who, now: now)
        return pruned
    }

    /// Removes these rules (a prune decided for the cluster: the cluster
    /// baseline lost them first, and its watch may already have brought
    /// that here).
    public func remove(_ rules: [Rule], from workload: String, detail: String, who: String) throws {
        let now = BootClock.now(CLOCK_REALTIME)
        try flush()
        let known = lock.withLock { () -> Bool in
            guard entries[workload] != nil else { return false }
            for r in rules {
                entries[workload]!.baseline.rules[r.key] = nil
                entries[workload]!.outbox[r.key] = nil
            }
            entries[workload]!.baseline.lastChange = now
            return true
        }
        guard known else { throw APIError.notFound("no workload named '\(workload)'") }
        try afterPrune(workload, detail: detail, who: who, now: now)
    }

    private func afterPrune(_ workload: String, detail: String, who: String, now: Int64) throws {
        if let b = baseline(workload) { try store.save(b) }
        try store.appendAudit(AuditEntry(time: now, who: who, workload: workload, action: "prune", detail: detail))
        if let b = baseline(workload), b.mode == .enforce, !isHeldBack(workload) { try loadRules(workload, b) }  // fewer: always fits
    }

    // MARK: - Background work

    /// Persists learnt rules, applies automatic promotions and marks baselines
    /// that learnt while events were lost. Called every few seconds.
    public func tick(eventsLostSinceLastTick: Bool) {
        let now = BootClock.now(CLOCK_REALTIME)
        if eventsLostSinceLastTick {
            let learning = lock.withLock { () -> [String] in
                var names: [String] = []
                for (w, var e) in entries where e.baseline.mode == .learn && !e.baseline.incomplete {
                    e.baseline.incomplete = true
                    entries[w] = e
                    names.append(w)
                }
                return names
            }
            if !learning.isEmpty {
                try? store.markIncomplete(workloads: learning)
                logger.warning("events were lost while learning: these baselines are marked incomplete and will not be promoted automatically",
                               metadata: ["workloads": "\(learning.count)"])
            }
        }
        try? flush()
        // Addresses change without a cgroup event (a namespace given another
        // address, a container that joined late): a full read every tick.
        scanAddresses()
        let promotions: [(String, Mode)] = lock.withLock {
            entries.values.compactMap { e in settings.promotion.promotion(for: e.baseline, now: now).map { (e.baseline.workload, $0) } }
        }
        for (w, m) in promotions {
            if let hooks = clusterHooks {
                // Decided once for the cluster: the first node to ask wins;
                // every node (this one too) then follows the watch.
                guard let from = baseline(w)?.mode else { continue }
                hooks.promote(w, from, m)
            } else {
                try? setMode(w, m, who: "connguard", reason: "automatic promotion")
            }
        }
    }

    /// Writes learnt rules and hit counts to the database.
    public func flush() throws {
        let (rules, wouldDeny, whole): ([String: [RuleKey: Rule]], [String: Int64], [Baseline]) = lock.withLock {
            var rules: [String: [RuleKey: Rule]] = [:]
            for i in entries.indices where !entries.values[i].pending.isEmpty {
                rules[entries.keys[i]] = entries.values[i].pending
                entries.values[i].pending.removeAll()
            }
            let whole = clusterChanged.compactMap { entries[$0]?.baseline }
            clusterChanged.removeAll()
            defer { pendingWouldDeny.removeAll() }
            return (rules, pendingWouldDeny, whole)
        }
        // Cluster baselines applied since the last flush: stored whole, once
        // each however often they changed (every node's merge reaches every
        // agent).
        for b in whole { try store.save(b) }
        for (w, r) in rules where !r.isEmpty && !whole.contains(where: { $0.workload == w }) { try store.saveRules(workload: w, Array(r.values)) }
        for (w, t) in wouldDeny { try store.recordWouldDeny(workload: w, at: t) }
    }

    // MARK: - Kernel mirror

    /// At start: the rules of every enforced workload that fits (the ones
    /// enforced longest first; a workload's rules go in whole or not at all),
    /// the policies of every cgroup of a known workload, and the workloads'
    /// addresses. What the last agent left in the maps and is not wanted now
    /// goes: first the rules of workloads no longer enforced (removing them
    /// refuses nothing), then, once the wanted ones are in, stale ones of
    /// enforced workloads.
    func syncKernel() throws {
        guard let enforcer else { return }
        let enforced = lock.withLock {
            entries.values.filter { $0.baseline.mode == .enforce }.sorted { ($0.baseline.lastChange, $0.workloadID) < ($1.baseline.lastChange, $1.workloadID) }
        }
        let capacity = enforcer.ruleCapacity
        var wanted: [String: Set<EnforcementRule>] = [:]
        var used = (address: 0, workload: 0)
        var held: [String] = []
        for e in enforced {
            let rules = Set(e.baseline.rules.keys.compactMap { kernelRule($0, workloadID: e.workloadID) })
            let n = Self.counts(rules)
            if used.address + n.address > Int(capacity.address) || used.workload + n.workload > Int(capacity.workload) {
                held.append(e.baseline.workload)
                continue
            }
            used = (used.address + n.address, used.workload + n.workload)
            wanted[e.baseline.workload] = rules
        }
        let wantedIDs = Set(enforced.filter { wanted[$0.baseline.workload] != nil }.map(\.workloadID))
        let present = try enforcer.rules()
        let all = wanted.values.reduce(into: Set<EnforcementRule>()) { $0.formUnion($1) }
        for r in present where !wantedIDs.contains(r.workloadID) { _ = try enforcer.remove(r) }
        for r in all.subtracting(present) { try enforcer.add(r) }
        for r in present where wantedIDs.contains(r.workloadID) && !all.contains(r) { _ = try enforcer.remove(r) }
        lock.withLock {
            loaded = wanted
            heldBack = Set(held)
        }
        for w in held {
            logger.critical("enforced workload held back: its rules do not fit the kernel's maps, so its cgroups are in monitor mode there (see `connguard status`)",
                            metadata: ["workload": "\(w)", "capacity": "\(capacity.address) address rules, \(capacity.workload) workload rules"])
        }
        try armAll()
        // The pinned map may hold addresses from the last agent: exactly the
        // book's, now.
        let owners = lock.withLock { self.owners }
        var ids: [IPAddress: UInt32] = [:]
        for (a, w) in owners { if let id = workloadID(w) { ids[a] = id } }
        for (a, id) in try enforcer.peerAddresses() where ids[a] != id { _ = try enforcer.removePeerAddress(a) }
        for (a, id) in ids { try enforcer.setPeerAddress(a, workloadID: id) }
        releaseUnusedPrograms()
    }

    /// Address/CIDR rules and workload rules in `rules`.
    private static func counts(_ rules: Set<EnforcementRule>) -> (address: Int, workload: Int) {
        let address = rules.filter { if case .cidr = $0.peer { return true } else { return false } }.count
        return (address, rules.count - address)
    }

    /// Enforced workloads' rules in the kernel, other than `workload`'s.
    private func othersLoaded(_ workload: String) -> (address: Int, workload: Int) {
        lock.withLock {
            var o = (address: 0, workload: 0)
            for (w, r) in loaded where w != workload {
                let n = Self.counts(r)
                o = (o.address + n.address, o.workload + n.workload)
            }
            return o
        }
    }

    /// Whether the kernel can take `keys` as `workload`'s rules, beside
    /// every other enforced workload's.
    private func checkCapacity(_ workload: String, keys: Set<RuleKey>) throws {
        guard let enforcer else { return }
        let capacity = enforcer.ruleCapacity
        let others = othersLoaded(workload)
        var wanted = (address: 0, workload: 0)
        for k in keys { if case .network = k.peer { wanted.address += 1 } else { wanted.workload += 1 } }
        guard others.address + wanted.address > Int(capacity.address) || others.workload + wanted.workload > Int(capacity.workload) else { return }
        throw KernelFull(description: "the kernel's rule maps cannot take \(workload)'s \(keys.count) rules: other enforced workloads use "
            + "\(others.address) of \(capacity.address) address rules and \(others.workload) of \(capacity.workload) workload rules "
            + "(this one needs \(wanted.address) and \(wanted.workload)); nothing was changed. Prune or shrink baselines, "
            + "or start the agent with a larger --max-kernel-rules (after the kill-switch: pinned maps keep their size)")
    }

    /// Puts exactly `b`'s rules in the kernel for `workload` (checked
    /// first). New rules go in before stale ones leave, so that nothing both
    /// baselines allow is refused meanwhile, when there is room for both at
    /// once; otherwise the stale ones leave first.
    private func loadRules(_ workload: String, _ b: Baseline) throws {
        guard let enforcer, let id = lock.withLock({ entries[workload]?.workloadID }) else { return }
        try checkCapacity(workload, keys: Set(b.rules.keys))
        let rules = Set(b.rules.keys.compactMap { kernelRule($0, workloadID: id) })
        let current = lock.withLock { loaded[workload] ?? [] }
        let others = othersLoaded(workload)
        let peak = Self.counts(current.union(rules)), capacity = enforcer.ruleCapacity
        do {
            if others.address + peak.address > Int(capacity.address) || others.workload + peak.workload > Int(capacity.workload) {
                for r in current.subtracting(rules) { _ = try enforcer.remove(r) }
            }
            _ = try enforcer.replaceRules(workloadID: id, with: rules)
        } catch {
            throw KernelFull(description: "the kernel refused \(workload)'s rules (\(error)); nothing was changed")
        }
        lock.withLock {
            loaded[workload] = rules
            heldBack.remove(workload)
        }
    }

    /// Takes `workload`'s rules out of the kernel (it is no longer enforced).
    private func unloadRules(_ workload: String) {
        guard let enforcer, let id = lock.withLock({ entries[workload]?.workloadID ?? byID.first { $0.value == workload }?.key }) else { return }
        lock.withLock { _ = loaded.removeValue(forKey: workload) }
        do {
            _ = try enforcer.replaceRules(workloadID: id, with: [])
        } catch {
            logger.warning("could not remove \(workload)'s rules from the kernel: \(error)")
        }
    }

    private func isHeldBack(_ workload: String) -> Bool { lock.withLock { heldBack.contains(workload) } }

    /// For status and metrics: rules in the kernel, its capacity, and the
    /// enforced workloads held back for want of room.
    public struct KernelRules: Sendable {
        public var address: Int
        public var workload: Int
        public var addressCapacity: Int
        public var workloadCapacity: Int
        public var heldBack: [String]
    }

    public var kernelRules: KernelRules {
        let capacity = enforcer?.ruleCapacity ?? (address: 0, workload: 0)
        return lock.withLock {
            var n = (address: 0, workload: 0)
            for r in loaded.values {
                let c = Self.counts(r)
                n = (n.address + c.address, n.workload + c.workload)
            }
            return KernelRules(address: n.address, workload: n.workload, addressCapacity: Int(capacity.address),
                               workloadCapacity: Int(capacity.workload), heldBack: heldBack.sorted())
        }
    }

    /// Sets the kernel policy of every cgroup of this workload: its mode, and
    /// which workload it is (learn decides nothing, but names the workload
    /// when one of its processes is another workload's local peer).
    func armWorkload(_ workload: String) throws {
        guard let enforcer else { return }
        guard let (mode, id) = lock.withLock({ entries[workload].map { (kernelModeLocked($0), $0.workloadID) } }) else { return }
        for c in walkCgroups() where c.workload == workload {
            try enforcer.setPolicy(cgroupID: c.id, workloadID: id, mode: mode)
        }
        if mode != .enforce { releaseUnusedPrograms() }
    }

    /// The mode the kernel gets for a workload: its own, but monitor for an
    /// enforced workload held back (its rules are not in the kernel).
    private func kernelModeLocked(_ e: Entry) -> Mode {
        e.baseline.mode == .enforce && heldBack.contains(e.baseline.workload) ? .monitor : e.baseline.mode
    }

    /// With no workload enforced, the kernel's enforcement programs only cost
    /// every connection of the subtree: detach them until one is.
    private func releaseUnusedPrograms() {
        do {
            if try enforcer?.releaseProgramsIfUnused() == true {
                logger.info("enforcement programs detached: no workload is in enforce mode")
            }
        } catch {
            logger.warning("could not check whether enforcement programs are still needed: \(error)")
        }
    }

    func armAll() throws {
        guard let enforcer else { return }
        for c in walkCgroups() {
            guard let (mode, id) = lock.withLock({ entries[c.workload].map { (kernelModeLocked($0), $0.workloadID) } }) else { continue }
            try enforcer.setPolicy(cgroupID: c.id, workloadID: id, mode: mode)
        }
    }

    /// A cgroup of the watched subtree that belongs to a known workload.
    private struct WatchedCgroup {
        var id: UInt64
        var path: String
        var workload: String
        /// A pod container's pod owner (AddressBook.Member.podOwner).
        var podOwner: String?
    }

    /// Every cgroup under the watched root whose workload is known.
    private func walkCgroups() -> [WatchedCgroup] {
        ConnGuardCore.walkCgroups(cgroupRootPath).compactMap { c in
            let who = identity.identity(forCgroup: c.id)
            return who.isUnknown ? nil : WatchedCgroup(id: c.id, path: c.path, workload: who.workload, podOwner: Self.podOwner(who))
        }
    }

    private static func podOwner(_ who: Identity) -> String? {
        who.pod.flatMap { WorkloadNaming.podOwner(workload: who.workload, pod: $0) }
    }

    // MARK: - Workloads' addresses

    /// The network namespace of a cgroup's processes and that namespace's
    /// addresses; nil when it has no process, or its processes are on the
    /// node's own network (no address of their own).
    private func namespaceOf(cgroupPath path: String) -> (namespace: UInt64, addresses: Set<IPAddress>)? {
        guard let procs = try? readFile(path + "/cgroup.procs") else { return nil }
        for line in procs.split(separator: "\n") {
            guard let pid = Int32(line), let ns = NamespaceAddresses.namespace(ofProcess: pid) else { continue }
            if ns == nodeNamespace { return nil }
            guard let a = NamespaceAddresses.addresses(ofProcess: pid) else { continue }  // exited meanwhile
            return (ns, a)
        }
        return nil
    }

    /// Reads every known workload's addresses from the node (every few
    /// seconds, and at start), and brings the book and the kernel up to date.
    func scanAddresses(applyToKernel: Bool = true) {
        var members: [UInt64: AddressBook.Member] = [:]
        var namespaces: [UInt64: Set<IPAddress>] = [:]
        for c in walkCgroups() {
            guard let (ns, a) = namespaceOf(cgroupPath: c.path) else { continue }
            members[c.id] = AddressBook.Member(workload: c.workload, namespace: ns, podOwner: c.podOwner)
            namespaces[ns] = a
        }
        let changes = lock.withLock { localAddressesChangedLocked(addresses.replaceAll(members: members, namespaces: namespaces)) }
        if applyToKernel { applyAddressChanges(changes) }
    }

    /// A new cgroup of a known workload: its first process joins it a little
    /// after the cgroup is made (the runtime's init, which then enters the
    /// container's network namespace, before the container's own program
    /// starts). Watch for it, briefly, so that the container's addresses name
    /// its workload before its first connection. A process still on the
    /// node's network after the watch is a host-network container (the
    /// periodic scan covers one that moves later).
    private func watchForAddresses(cgroupID: UInt64, path: String, workload: String, podOwner: String?) {
        DispatchQueue.global().async { [self] in
            let start = BootClock.now(CLOCK_MONOTONIC)
            var pause: useconds_t = 500
            while BootClock.now(CLOCK_MONOTONIC) - start < 5_000_000_000 {
                guard access(path + "/cgroup.procs", F_OK) == 0 else { return }  // the cgroup is gone
                if let (ns, a) = namespaceOf(cgroupPath: path) {
                    let changes = lock.withLock {
                        localAddressesChangedLocked(addresses.update(cgroup: cgroupID, member: .init(workload: workload, namespace: ns, podOwner: podOwner),
                                                                     addresses: a))
                    }
                    applyAddressChanges(changes)
                    return
                }
                usleep(pause)
                pause = min(pause * 2, 50_000)
            }
        }
    }

    /// The number the kernel knows `workload` by, if it has one.
    public func kernelWorkloadID(_ workload: String) -> UInt32? { workloadID(workload) }

    private func workloadID(_ workload: String) -> UInt32? {
        if let id = lock.withLock({ entries[workload]?.workloadID ?? peerIDs[workload] }) { return id }
        guard let id = try? store.workloadID(for: workload, createWith: .learn, now: BootClock.now(CLOCK_REALTIME)) else { return nil }
        lock.withLock { peerIDs[workload] = id }
        return id
    }

    /// This node's book changed: tell the cluster, and return what changed
    /// in `owners` (the kernel's view).
    private func localAddressesChangedLocked(_ local: AddressBook.Changes) -> AddressBook.Changes {
        guard !local.isEmpty else { return [:] }
        hooks?.publishAddresses(local)
        return refreshOwnersLocked(local.keys)
    }

    /// Brings `owners` up to date for these addresses; returns what changed.
    private func refreshOwnersLocked(_ changed: some Sequence<IPAddress>) -> AddressBook.Changes {
        var out: AddressBook.Changes = [:]
        for a in changed {
            var holders: Set<String> = []
            if let w = addresses.owners[a] { holders.insert(w) }
            if let claims = remoteClaims[a] { holders.formUnion(claims.values) }
            let owner = holders.count == 1 ? holders.first : nil
            guard owners[a] != owner else { continue }
            owners[a] = owner
            out[a] = .some(owner)
        }
        return out
    }

    private func applyAddressChanges(_ changes: AddressBook.Changes) {
        guard !changes.isEmpty else { return }
        for (address, owner) in changes {
            do {
                if let owner, let id = workloadID(owner) {
                    try enforcer?.setPeerAddress(address, workloadID: id)
                    logger.debug("address names a workload", metadata: ["address": "\(address)", "workload": "\(owner)"])
                } else {
                    _ = try enforcer?.removePeerAddress(address)
                    logger.debug("address no longer names a workload", metadata: ["address": "\(address)"])
                }
            } catch {
                logger.warning("could not update the kernel's peer addresses: \(error)")
            }
        }
    }

    /// Baselines from before peers were named by workload in both
    /// directions may name, by address, a peer that is a known workload of
    /// this node: such a rule becomes a rule on that workload, with its
    /// counts, so that it follows the workload to its next address.
    private func migrateAddressRules() throws {
        let owners = lock.withLock { self.owners }
        guard !owners.isEmpty else { return }
        var changed: [Baseline] = []
        lock.withLock {
            for i in entries.indices {
                var b = entries.values[i].baseline
                var moved: [(RuleKey, RuleKey)] = []
                for (key, rule) in b.rules {
                    guard case let .network(c) = key.peer, c.prefixLength == (c.network.family == .ipv4 ? 32 : 128),
                          let w = owners[c.network] else { continue }
                    var to = key
                    to.peer = .workload(w)
                    b.rules[key] = nil
                    if var existing = b.rules[to] {
                        existing.hits += rule.hits
                        existing.firstSeen = min(existing.firstSeen, rule.firstSeen)
                        existing.lastSeen = max(existing.lastSeen, rule.lastSeen)
                        b.rules[to] = existing
                    } else {
                        b.rules[to] = Rule(key: to, firstSeen: rule.firstSeen, lastSeen: rule.lastSeen, hits: rule.hits)
                    }
                    moved.append((key, to))
                }
                guard !moved.isEmpty else { continue }
                entries.values[i].baseline = b
                changed.append(b)
                for (from, to) in moved {
                    logger.warning("baseline rule now names the workload that holds its address", metadata: [
                        "workload": "\(b.workload)", "from": "\(from.direction.ruleName) \(from.peer) port \(from.port)",
                        "to": "\(to.peer)",
                    ])
                }
            }
        }
        for b in changed { try store.save(b) }
    }

    // MARK: - The cluster (ClusterSync's side)

    /// Where a clustered engine sends what it cannot decide alone.
    public struct ClusterHooks: Sendable {
        /// This node's workload addresses changed (AddressBook's changes);
        /// called under the engine's lock: must only queue.
        public var publishAddresses: @Sendable (AddressBook.Changes) -> Void
        /// An automatic promotion (workload, from, to), decided once for
        /// the cluster.
        public var promote: @Sendable (String, Mode, Mode) -> Void

        public init(publishAddresses: @escaping @Sendable (AddressBook.Changes) -> Void,
                    promote: @escaping @Sendable (String, Mode, Mode) -> Void) {
            self.publishAddresses = publishAddresses
            self.promote = promote
        }
    }

    private static func noteForCluster(_ entry: inout Entry, _ key: RuleKey, at t: Int64, hits: Int64, new: Bool) {
        if var r = entry.outbox[key] {
            r.hits += hits
            r.firstSeen = min(r.firstSeen, t)
            r.lastSeen = max(r.lastSeen, t)
            entry.outbox[key] = r
        } else {
            entry.outbox[key] = Rule(key: key, firstSeen: t, lastSeen: t, hits: hits)
        }
        if new { entry.outboxHasNew = true }
    }

    /// This node's own workload addresses (what it publishes, whole).
    public var localAddressOwners: [IPAddress: String] { lock.withLock { addresses.owners } }

    /// Addresses other nodes published, and how many name a workload here.
    public var remoteAddressCount: Int { lock.withLock { remoteClaims.count } }

    /// Replaces every other node's claims (a watch's snapshot).
    public func replaceRemoteAddresses(_ byNode: [String: [IPAddress: String]]) {
        var claims: [IPAddress: [String: String]] = [:]
        for (node, perNode) in byNode {
            for (a, w) in perNode { claims[a, default: [:]][node] = w }
        }
        let changes = lock.withLock { () -> AddressBook.Changes in
            let touched = Set(remoteClaims.keys).union(claims.keys)
            remoteClaims = claims
            return refreshOwnersLocked(touched)
        }
        applyAddressChanges(changes)
    }

    /// One other node published `address` for `workload` (nil: withdrawn, or its lease expired).
    public func remoteAddressChanged(node: String, address: IPAddress, workload: String?) {
        let changes = lock.withLock { () -> AddressBook.Changes in
            if let workload {
                remoteClaims[address, default: [:]][node] = workload
            } else {
                remoteClaims[address]?[node] = nil
                if remoteClaims[address]?.isEmpty == true { remoteClaims[address] = nil }
            }
            return refreshOwnersLocked([address])
        }
        applyAddressChanges(changes)
    }

    /// What this node learnt for the cluster since it last handed it over:
    /// each workload with a new rule, or, with `all`, every workload with
    /// anything (hits of known rules). Taken: hand back what fails with
    /// `returnToOutbox`.
    public func takeClusterOutbox(all: Bool) -> [(workload: String, rules: [Rule], hasNew: Bool)] {
        lock.withLock {
            var out: [(String, [Rule], Bool)] = []
            for i in entries.indices where !entries.values[i].outbox.isEmpty && (all || entries.values[i].outboxHasNew) {
                out.append((entries.keys[i], Array(entries.values[i].outbox.values), entries.values[i].outboxHasNew))
                entries.values[i].outbox.removeAll()
                entries.values[i].outboxHasNew = false
            }
            return out
        }
    }

    /// Rules whose merge failed (the cluster store is away): kept, and
    /// merged with what is learnt meanwhile, for the next attempt.
    public func returnToOutbox(_ workload: String, _ rules: [Rule], hasNew: Bool) {
        lock.withLock {
            guard entries[workload] != nil else { return }
            for r in rules {
                if var o = entries[workload]!.outbox[r.key] {
                    o.hits += r.hits
                    o.firstSeen = min(o.firstSeen, r.firstSeen)
                    o.lastSeen = max(o.lastSeen, r.lastSeen)
                    entries[workload]!.outbox[r.key] = o
                } else {
                    entries[workload]!.outbox[r.key] = r
                }
            }
            if hasNew { entries[workload]!.outboxHasNew = true }
        }
    }

    /// Makes sure a workload of the cluster has an entry here (created as
    /// on first sight, in the default mode; its cluster mode then moves it),
    /// so that its first cgroup on this node is armed at once with the
    /// cluster's baseline and mode.
    private func ensureEntry(_ workload: String) -> Bool {
        lock.withLock { entryLocked(workload) != nil }
    }

    /// The workload's cluster baseline (from the watch, or the answer to a
    /// merge of this node's): it becomes this node's baseline, with what
    /// this node learnt and has not handed over yet, is stored as the local
    /// copy (an agent that starts while the cluster store is away starts
    /// from it), and, if the workload is enforced, goes into the kernel.
    /// An older revision than the one applied is ignored.
    public func applyClusterBaseline(_ cb: ClusterBaseline) {
        guard ensureEntry(cb.workload) else { return }
        let applied: Baseline? = lock.withLock {
            guard var e = entries[cb.workload], cb.revision > e.clusterRevision else { return nil }
            var rules: [RuleKey: Rule] = [:]
            for (k, r) in cb.rules { rules[k] = r.rule }
            for (k, d) in e.outbox {
                if var r = rules[k] {
                    r.hits += d.hits
                    r.lastSeen = max(r.lastSeen, d.lastSeen)
                    rules[k] = r
                } else if let local = e.baseline.rules[k] {
                    rules[k] = local
                }
            }
            if let newest = rules.values.map(\.firstSeen).max() { e.baseline.lastChange = max(e.baseline.lastChange, newest) }
            e.baseline.rules = rules
            e.clusterRevision = cb.revision
            e.clusterNodes = cb.rules.mapValues(\.nodes)
            e.pending.removeAll()  // stored whole at the next flush
            entries[cb.workload] = e
            clusterChanged.insert(cb.workload)
            return e.baseline
        }
        guard let b = applied else { return }
        guard b.mode == .enforce, !isHeldBack(b.workload) else { return }
        do {
            try loadRules(b.workload, b)
        } catch {
            logger.critical("the cluster baseline of an enforced workload does not fit this node's kernel: it is enforced with its previous rules here",
                            metadata: ["workload": "\(b.workload)", "error": "\(error)"])
        }
    }

    /// Which nodes saw each rule of the workload's cluster baseline.
    public func clusterNodes(of workload: String) -> [RuleKey: Set<String>] {
        lock.withLock { entries[workload]?.clusterNodes ?? [:] }
    }

    /// The workload's cluster mode (from the watch, or this node's own
    /// change): applied here unless it is already the mode, audited with
    /// who set it, on which node, when.
    public func applyClusterMode(_ m: ModeSetting) {
        // Moved by setMode, which puts its rules in the kernel and arms its cgroups.
        guard ensureEntry(m.workload) else { return }
        guard baseline(m.workload)?.mode != m.mode else { return }
        do {
            try setMode(m.workload, m.mode, who: "\(m.by) on \(m.node)", reason: "cluster: set on node \(m.node) at \(RFC3339.string(m.at))")
        } catch {
            logger.critical("could not apply the cluster's mode on this node", metadata: [
                "workload": "\(m.workload)", "mode": "\(m.mode.rawValue)", "error": "\(error)"])
        }
    }

    /// What `prune` would remove now (nothing is changed).
    public func pruneCandidates(_ workload: String, unusedForSeconds: Double) throws -> [Rule] {
        guard var b = baseline(workload) else { throw APIError.notFound("no workload named '\(workload)'") }
        let now = BootClock.now(CLOCK_REALTIME)
        return b.prune(unusedSince: now - DurationParser.nanoseconds(unusedForSeconds), now: now)
    }

    /// Whether `workload` could be enforced here now with `rules` (nil:
    /// its baseline's), beside every other enforced workload's: checked
    /// before a cluster-wide change.
    public func checkCanEnforce(_ workload: String, rules: Set<RuleKey>? = nil) throws {
        if let rules { return try checkCapacity(workload, keys: rules) }
        guard let b = baseline(workload) else { throw APIError.notFound("no workload named '\(workload)' (see `connguard baseline list`)") }
        try checkCapacity(workload, keys: Set(b.rules.keys))
    }

    /// Whether DNS answers from `resolver` may name `workload`'s peers: in
    /// learn mode (or for a workload without a baseline) any resolver it
    /// asked; otherwise only one its baseline lets it use, as enforcement
    /// decides in the kernel. A forged answer from elsewhere names nothing.
    public func trustsResolver(_ resolver: IPAddress, port: UInt16, proto: ConnectionEvent.IPProtocol, workload: String) -> Bool {
        guard let b = baseline(workload), b.mode != .learn else { return true }
        let query = ConnectionEvent(timeNanoseconds: 0, direction: .connect, outcome: .established, pid: 0, comm: "", uid: 0,
                                    cgroupID: 0, source: resolver, sourcePort: 0, destination: resolver, destinationPort: port,
                                    proto: proto)
        return b.allows(query, peerWorkload: lock.withLock { owners[resolver] })
    }

    /// For a denied connect: the names whose rules (this port and protocol)
    /// would have allowed it had DNS given the workload this address.
    public func namesAllowing(_ e: ConnectionEvent, workload: String) -> [String] {
        guard let b = baseline(workload) else { return [] }
        return b.rules.keys.compactMap { k in
            guard k.direction == .connect, k.port == e.remotePort, k.proto == e.proto.rawValue, case let .name(n) = k.peer else { return nil }
            return n.text
        }.sorted()
    }

    private func kernelRule(_ k: RuleKey, workloadID: UInt32) -> EnforcementRule? {
        let peer: RulePeer
        switch k.peer {
        case let .network(c): peer = .cidr(c)
        case let .workload(w):
            guard let id = self.workloadID(w) else { return nil }
            peer = .workload(id)
        case let .name(n):
            guard k.direction == .connect else { return nil }
            peer = .name(hash: n.kernelHash, pattern: n.isPattern)
        }
        guard let proto = ConnectionEvent.IPProtocol(rawValue: k.proto) else { return nil }
        return EnforcementRule(workloadID: workloadID, direction: k.direction, port: k.port, peer: peer, proto: proto)
    }
}
