import ConnGuardCore
import ConnGuardEnforcer
import ConnGuardStore
import Foundation
import Logging

/// Baselines and modes, per workload: learns from traced connections, gives
/// each event its verdict, and keeps the kernel's enforcement maps a mirror of
/// the baselines (rules always; cgroup policies for every cgroup of a workload
/// in monitor or enforce mode).
///
/// State lives here behind one lock; the database (BaselineStore) is written
/// in batches by `tick()`, and at once for operator actions.
public final class PolicyEngine: @unchecked Sendable {
    struct Entry {
        var baseline: Baseline
        let workloadID: UInt32
        /// Rules learnt or hit since the last flush to the database.
        var pending: [RuleKey: Rule] = [:]
    }

    public struct Settings: Sendable {
        public var defaultMode: Mode = .learn
        public var promotion = PromotionPolicy()
        public init() {}
    }

    let settings: Settings
    let store: BaselineStore
    let enforcer: Enforcer?
    let identity: IdentitySource
    let logger: Logger
    /// cgroup v2 mount + watched root, to find a workload's cgroups.
    let cgroupRootPath: String

    private let lock = Mutex()
    private var entries: [String: Entry] = [:]
    private var byID: [UInt32: String] = [:]
    /// Non-loopback local addresses at which a workload accepted: a connect to
    /// one of them reaches that workload (peer generalisation).
    private var addressOwners: [IPAddress: String] = [:]
    private var pendingWouldDeny: [String: Int64] = [:]

    public init(settings: Settings, store: BaselineStore, enforcer: Enforcer?, identity: IdentitySource,
                cgroupRootPath: String, logger: Logger) throws {
        self.settings = settings
        self.store = store
        self.enforcer = enforcer
        self.identity = identity
        self.cgroupRootPath = cgroupRootPath
        self.logger = logger
        for (b, id) in try store.loadAll() {
            entries[b.workload] = Entry(baseline: b, workloadID: id)
            byID[id] = b.workload
        }
        try syncKernel()
    }

    // MARK: - Hot path (the event pipeline's thread)

    /// The verdict for one traced (so: not refused) connection, learning from
    /// it in learn mode.
    /// `count`: the events `e` stands for (kernel-counted repeats of one
    /// connection all get this verdict and count as that many hits).
    public func verdict(for e: ConnectionEvent, identity who: Identity, count: Int64 = 1) -> Verdict {
        guard !who.isUnknown else { return .allowed }
        var newRule: (Rule, UInt32)?
        var newOwner: (IPAddress, UInt32)?
        let verdict: Verdict = lock.withLock {
            if e.direction == .accept, !e.destination.isLoopback, addressOwners[e.destination] != who.workload,
               !e.destination.isUnspecified {
                addressOwners[e.destination] = who.workload
                if let id = entries[who.workload]?.workloadID { newOwner = (e.destination, id) }
            }
            // Found once by index, then changed in place: every event comes
            // here, and a copy of the entry would copy its rule table.
            guard let i = entryIndexLocked(who.workload) else { return .allowed }
            let peerWorkload = e.peer.isLoopback ? nil : addressOwners[e.peer]
            func judge(_ entry: inout Entry) -> Verdict {
                switch entry.baseline.mode {
                case .learn:
                    let (rule, isNew) = entry.baseline.learn(RuleKey(event: e, peerWorkload: peerWorkload), at: e.timeNanoseconds, hits: count)
                    if isNew { newRule = (rule, entry.workloadID) }
                    entry.pending[rule.key] = rule
                    return .allowed
                case .monitor:
                    if let hit = entry.baseline.recordHit(e, peerWorkload: peerWorkload, hits: count) {
                        entry.pending[hit.key] = hit
                        return .allowed
                    }
                    if entry.baseline.allows(e, peerWorkload: peerWorkload) { return .allowed }  // an imported block
                    entry.baseline.lastWouldDeny = e.timeNanoseconds
                    pendingWouldDeny[who.workload] = e.timeNanoseconds
                    return .wouldDeny
                case .enforce:
                    if let hit = entry.baseline.recordHit(e, peerWorkload: peerWorkload, hits: count) { entry.pending[hit.key] = hit }
                    return .allowed
                }
            }
            return judge(&entries.values[i])
        }
        if let (rule, id) = newRule, let k = kernelRule(rule.key, workloadID: id) {
            do { try enforcer?.add(k) } catch { logger.warning("kernel rule not added: \(error)") }
        }
        if let (address, id) = newOwner {
            try? enforcer?.setPeerAddress(address, workloadID: id)
        }
        return verdict
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
        if settings.defaultMode != .learn {
            // Arm its cgroups now (outside the hot path would be nicer; this is once per workload).
            DispatchQueue.global().async { [self] in try? armWorkload(workload) }
        }
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
        let entry: Entry? = lock.withLock { entries[who.workload] ?? (settings.defaultMode != .learn ? entryLocked(who.workload) : nil) }
        guard let entry, entry.baseline.mode != .learn else { return nil }
        return try? enforcer.arm(cgroupID: c.cgroupID, workloadID: entry.workloadID,
                                 mode: EnforcementMode(entry.baseline.mode), createdAtWallNanoseconds: c.timeNanoseconds)
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
        let exists = lock.withLock { entries[workload] != nil }
        guard exists else { throw APIError.notFound("no workload named '\(workload)' (see `connguard baseline list`)") }
        try store.setMode(workload: workload, mode: mode, who: who, now: now, reason: reason)
        lock.withLock {
            guard var e = entries[workload] else { return }
            let old = e.baseline.mode
            e.baseline.mode = mode
            e.baseline.lastChange = now
            if mode == .learn && old != .learn {
                e.baseline.learningSince = now
                e.baseline.incomplete = false
            }
            entries[workload] = e
        }
        try armWorkload(workload)
        logger.notice("mode changed", metadata: ["workload": "\(workload)", "mode": "\(mode.rawValue)", "by": "\(who)", "reason": "\(reason)"])
    }

    /// Replaces a workload's baseline (rules and mode) as a whole.
    public func importBaseline(_ b: Baseline, who: String) throws {
        let now = BootClock.now(CLOCK_REALTIME)
        try flush()
        try store.replace(b, who: who, now: now)
        let id = try store.workloadID(for: b.workload, createWith: b.mode, now: now)
        var imported = b
        imported.lastChange = now
        lock.withLock {
            entries[b.workload] = Entry(baseline: imported, workloadID: id)  // nothing pending
            byID[id] = b.workload
        }
        try syncRules(b.workload)
        try armWorkload(b.workload)
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
        if let b = baseline(workload) { try store.save(b) }
        try store.appendAudit(AuditEntry(time: now, who: who, workload: workload, action: "prune", detail: "\(pruned.count) rules unused for \(Int(unusedForSeconds))s"))
        try syncRules(workload)
        return pruned
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
        let promotions: [(String, Mode)] = lock.withLock {
            entries.values.compactMap { e in settings.promotion.promotion(for: e.baseline, now: now).map { (e.baseline.workload, $0) } }
        }
        for (w, m) in promotions {
            try? setMode(w, m, who: "connguard", reason: "automatic promotion")
        }
    }

    /// Writes learnt rules and hit counts to the database.
    public func flush() throws {
        let (rules, wouldDeny): ([String: [RuleKey: Rule]], [String: Int64]) = lock.withLock {
            var rules: [String: [RuleKey: Rule]] = [:]
            for i in entries.indices where !entries.values[i].pending.isEmpty {
                rules[entries.keys[i]] = entries.values[i].pending
                entries.values[i].pending.removeAll()
            }
            defer { pendingWouldDeny.removeAll() }
            return (rules, pendingWouldDeny)
        }
        for (w, r) in rules where !r.isEmpty { try store.saveRules(workload: w, Array(r.values)) }
        for (w, t) in wouldDeny { try store.recordWouldDeny(workload: w, at: t) }
    }

    // MARK: - Kernel mirror

    /// At start: every baseline's rules, and the policies of every cgroup of
    /// a workload in monitor or enforce mode.
    func syncKernel() throws {
        guard enforcer != nil else { return }
        let workloads = lock.withLock { Array(entries.keys) }
        for w in workloads { try syncRules(w) }
        try armAll()
        releaseUnusedPrograms()
    }

    func syncRules(_ workload: String) throws {
        guard let enforcer, let (b, id) = lock.withLock({ entries[workload].map { ($0.baseline, $0.workloadID) } }) else { return }
        let rules = b.rules.keys.compactMap { kernelRule($0, workloadID: id) }
        _ = try enforcer.replaceRules(workloadID: id, with: rules)
    }

    /// Sets (or clears) the kernel policy of every cgroup of this workload.
    func armWorkload(_ workload: String) throws {
        guard let enforcer else { return }
        guard let (mode, id) = lock.withLock({ entries[workload].map { ($0.baseline.mode, $0.workloadID) } }) else { return }
        for cgroupID in cgroups(of: workload) {
            if mode == .learn {
                _ = try enforcer.removePolicy(cgroupID: cgroupID)
            } else {
                try enforcer.setPolicy(cgroupID: cgroupID, workloadID: id, mode: EnforcementMode(mode))
            }
        }
        if mode != .enforce { releaseUnusedPrograms() }
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
        for (cgroupID, who) in walkCgroups() {
            guard let (mode, id) = lock.withLock({ entries[who].map { ($0.baseline.mode, $0.workloadID) } }) else { continue }
            if mode != .learn { try enforcer.setPolicy(cgroupID: cgroupID, workloadID: id, mode: EnforcementMode(mode)) }
        }
    }

    private func cgroups(of workload: String) -> [UInt64] {
        walkCgroups().filter { $0.1 == workload }.map(\.0)
    }

    /// (cgroup id, workload) for every cgroup under the watched root.
    private func walkCgroups() -> [(UInt64, String)] {
        var result: [(UInt64, String)] = []
        var stack = [cgroupRootPath]
        while let dir = stack.popLast() {
            var st = stat()
            guard stat(dir, &st) == 0 else { continue }
            let who = identity.identity(forCgroup: UInt64(st.st_ino))
            if !who.isUnknown { result.append((UInt64(st.st_ino), who.workload)) }
            if let names = try? FileManager.default.contentsOfDirectory(atPath: dir) {
                for n in names where access(dir + "/" + n + "/cgroup.procs", F_OK) == 0 { stack.append(dir + "/" + n) }
            }
        }
        return result
    }

    private func kernelRule(_ k: RuleKey, workloadID: UInt32) -> EnforcementRule? {
        let peer: RulePeer
        switch k.peer {
        case let .network(c): peer = .cidr(c)
        case let .workload(w):
            guard let id = lock.withLock({ entries[w]?.workloadID }) ?? (try? store.workloadID(for: w, createWith: .learn, now: BootClock.now(CLOCK_REALTIME))) else { return nil }
            peer = .workload(id)
        }
        return EnforcementRule(workloadID: workloadID, direction: k.direction == .outbound ? .connect : .accept, port: k.port, peer: peer)
    }
}

extension EnforcementMode {
    init(_ m: Mode) {
        switch m {
        case .learn: self = .learn
        case .monitor: self = .monitor
        case .enforce: self = .enforce
        }
    }
}
