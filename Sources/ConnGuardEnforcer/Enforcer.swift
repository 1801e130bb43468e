import BPFKit
import CBPFKit
import CConnGuard
import ConnGuardCore
import Glibc

/// Enforcement in the kernel (bpf/enforce.bpf.c) for one cgroup subtree: a
/// connection outside a workload's baseline fails with EPERM (connect) or
/// never reaches the server (accept).
///
/// Kernel state is authoritative. The maps and links are pinned under
/// `pinRoot`, so enforcement goes on when this object goes away, and the next
/// `open` with the same pin root adopts them without a gap (the same maps,
/// so the same policy; each link switched to the newly loaded program
/// atomically). `close(failOpen: true)` detaches and unpins everything.
///
/// Map changes are single bpf() calls and may come from any thread; reading
/// denials is for one thread at a time.
public final class Enforcer: @unchecked Sendable {
    public static let defaultPinRoot = "/sys/fs/bpf/connguard"

    /// Sizes of the kernel maps. A pinned map is reused only if its size
    /// matches: change these only together with a kill-switch.
    public struct Configuration: Sendable {
        public var pinRoot = Enforcer.defaultPinRoot
        public var unknownCgroups = UnknownCgroups.allow
        /// Attaching at the cgroup v2 root governs every process on the node.
        public var allowRoot = false
        public var maxCgroups: UInt32 = 16384
        /// Entries of rules_cidr and rules_peer. Maps pinned by an earlier
        /// agent keep the size they were made with (see `init`).
        public var maxAddressRules: UInt32 = 131_072
        public var maxPeerRules: UInt32 = 131_072
        public var maxPeerAddresses: UInt32 = 65536
        /// Denials ring buffer, bytes (a power of two, at least a page).
        public var denialRingBytes: UInt32 = 1 << 20
        /// How long an allowed name's addresses stay allowed after its last
        /// answer, at least (longer when the answer's TTL is): clients that
        /// cache past the TTL keep working.
        public var dnsFloorNanoseconds: UInt64 = 300_000_000_000
        public init() {}
    }

    /// The watched subtree's root, where the programs are attached.
    public let cgroupPath: String
    public let cgroupID: UInt64
    public let configuration: Configuration
    /// True if this enforcer took over pinned links left by an earlier one.
    public private(set) var adopted = false
    public let clock = BootClock.measure()

    private let object: BPFObject
    private let policyMap: BPFMap
    private let addressRules: BPFMap
    private let peerRules: BPFMap
    private let peerAddressMap: BPFMap
    private let decisionMap: BPFMap
    private let dropMap: BPFMap
    private let denialMap: BPFMap
    private let udpDenialRepeatMap: BPFMap
    private let nameRules: BPFMap
    private let allowedNames: BPFMap
    private let dnsGrantMap: BPFMap
    private let dnsCountMap: BPFMap
    /// The programs' links, nil until attached (see `hooksAttached`).
    /// Guarded by hookLock.
    private var links: [BPFLink]?
    private let hookLock = ConnGuardCore.Mutex()
    /// cg_enf_mkdir's attachment, while someone watches new cgroups (not pinned).
    private var birthLink: BPFLink?
    /// Guarded by stateLock (one kind of lock here: hookLock's).
    private var stateValue = State()
    private let stateLock = ConnGuardCore.Mutex()
    private func withState<T>(_ body: (inout State) throws -> T) rethrows -> T {
        try stateLock.withLock { try body(&stateValue) }
    }

    private struct State {
        var closed = false
        var undecodable: UInt64 = 0
        var arming: [Int64] = []
    }

    /// Maps shared with the kernel, pinned by these names under the pin root.
    static let pinnedMaps = ["cgroup_policy", "rules_cidr", "rules_peer", "peer_addresses",
                             "socket_owners", "denials", "decisions", "enforce_drops",
                             "names_allowed", "rules_name", "dns_grants", "dns_counts"]
    /// Programs, in attach order: bind recorders first, then the deciders.
    static let programNames = ["cg_enf_bind4", "cg_enf_bind6", "cg_enf_ingress", "cg_enf_connect4", "cg_enf_connect6",
                               "cg_enf_sendmsg4", "cg_enf_sendmsg6"]
    /// Every program name starts with this (used by the kill-switch sweep).
    public static let programPrefix = "cg_enf_"

    static func linkPin(_ root: String, _ program: String) -> String { "\(root)/link_\(program)" }

    /// Loads (or adopts) enforcement for the cgroup subtree at `cgroupPath`.
    public static func open(cgroupPath: String, pinRoot: String = defaultPinRoot,
                            unknown: UnknownCgroups = .allow, allowRoot: Bool = false,
                            maxRules: UInt32 = Configuration().maxAddressRules,
                            dnsFloorNanoseconds: UInt64 = Configuration().dnsFloorNanoseconds) throws -> Enforcer {
        var c = Configuration()
        c.dnsFloorNanoseconds = dnsFloorNanoseconds
        c.pinRoot = pinRoot
        c.unknownCgroups = unknown
        c.allowRoot = allowRoot
        c.maxAddressRules = maxRules
        c.maxPeerRules = maxRules
        return try Enforcer(cgroupPath: cgroupPath, configuration: c)
    }

    /// Whether this kernel takes the enforcement programs (its verifier
    /// accepts every one of them): nil if so, else why not. Loads them into
    /// maps of its own, attaches and pins nothing, and lets them go.
    public static func checkLoads() -> String? {
        var size: UInt = 0
        let start = cg_bpf_enforce_object(&size)
        do {
            let object = try BPFObject(bytes: Array(UnsafeRawBufferPointer(start: start, count: Int(size))), name: "connguard_enforce_probe")
            try object.map("denials").setMaxEntries(1 << 16)
            try object.load()
            return nil
        } catch let e as BPFError {
            return e.description
        } catch {
            return "\(error)"
        }
    }

    /// How many rules each rule map holds: what was asked, or the size of the
    /// map pinned by an earlier agent, which is adopted as it is (its rules
    /// enforce right now; a new size takes the kill-switch and a restart).
    public private(set) var ruleCapacity: (address: UInt32, workload: UInt32) = (0, 0)

    public init(cgroupPath: String, configuration: Configuration = .init()) throws {
        let dir = try CgroupDirectory(cgroupPath)
        if dir.isRoot && !configuration.allowRoot {
            throw EnforcerError.rootAttachRefused(cgroupPath)
        }
        self.cgroupPath = cgroupPath
        cgroupID = dir.id
        self.configuration = configuration
        let root = configuration.pinRoot
        try Self.preparePinRoot(root)
        let pinRootExisted = Self.pinRootHasEntries(root)

        var size: UInt = 0
        let start = cg_bpf_enforce_object(&size)
        object = try BPFObject(bytes: Array(UnsafeRawBufferPointer(start: start, count: Int(size))), name: "connguard_enforce")
        try object.setReadOnlyGlobal("unknown_deny", UInt8(configuration.unknownCgroups == .deny ? 1 : 0))
        try object.setReadOnlyGlobal("watch_level", UInt32(dir.level))
        try object.setReadOnlyGlobal("watch_root_id", dir.id)
        try object.setReadOnlyGlobal("dns_floor_ns", configuration.dnsFloorNanoseconds)
        try object.map("cgroup_policy").setMaxEntries(configuration.maxCgroups)
        let addressSize = BPFMap.pinnedMaxEntries(at: "\(root)/rules_cidr") ?? configuration.maxAddressRules
        let workloadSize = BPFMap.pinnedMaxEntries(at: "\(root)/rules_peer") ?? configuration.maxPeerRules
        try object.map("rules_cidr").setMaxEntries(addressSize)
        try object.map("rules_peer").setMaxEntries(workloadSize)
        ruleCapacity = (addressSize, workloadSize)
        try object.map("peer_addresses").setMaxEntries(configuration.maxPeerAddresses)
        try object.map("denials").setMaxEntries(configuration.denialRingBytes)
        for name in Self.pinnedMaps {
            try object.map(name).setPinPath("\(root)/\(name)")
        }
        do {
            try object.load()
        } catch let e as BPFError {
            // libbpf refuses a pinned map whose definition differs.
            if pinRootExisted && e.log.contains("compat") { throw EnforcerError.incompatiblePins(pinRoot: root, e) }
            throw EnforcerError.load(e)
        }
        policyMap = try object.map("cgroup_policy")
        addressRules = try object.map("rules_cidr")
        peerRules = try object.map("rules_peer")
        peerAddressMap = try object.map("peer_addresses")
        decisionMap = try object.map("decisions")
        dropMap = try object.map("enforce_drops")
        denialMap = try object.map("denials")
        udpDenialRepeatMap = try object.map("udp_denial_repeats")
        nameRules = try object.map("rules_name")
        allowedNames = try object.map("names_allowed")
        dnsGrantMap = try object.map("dns_grants")
        dnsCountMap = try object.map("dns_counts")

        // Links: an earlier enforcer's pinned links are adopted now (they
        // enforce already). Otherwise the programs are attached when first
        // needed: learn and monitor need nothing of them, and a connect hook
        // and a per-packet ingress hook cost every connection of the subtree
        // several percent.
        let pinned = Self.programNames.contains { access(Self.linkPin(root, $0), F_OK) == 0 }
        if pinned || configuration.unknownCgroups == .deny {
            do {
                (links, adopted) = try attachHooks()
            } catch {
                if !pinRootExisted { _ = try? Enforcer.removeAll(pinRoot: root, sweepUnpinnedLinks: false) }
                throw error
            }
        }
    }

    /// Adopts the pinned links (switching each to the programs just loaded,
    /// atomically), attaches and pins the missing ones. On failure, undoes
    /// what it made; what was pinned before stays as it was.
    private func attachHooks() throws -> (links: [BPFLink], adopted: Bool) {
        let root = configuration.pinRoot
        var attached: [BPFLink] = []
        var created: [String] = []
        var adoptedAny = false
        do {
            let cgroupFD = Glibc.open(cgroupPath, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
            guard cgroupFD >= 0 else { throw EnforcerError.notACgroup2Directory(cgroupPath) }
            defer { Glibc.close(cgroupFD) }
            for name in Self.programNames {
                let program = try object.program(name)
                let pin = Self.linkPin(root, name)
                if access(pin, F_OK) == 0 {
                    let link = try BPFLink.open(pinnedAt: pin)
                    let pinnedCgroup = try link.attachedCgroupID() ?? 0
                    if pinnedCgroup != cgroupID {
                        throw EnforcerError.pinnedElsewhere(pinRoot: root, pinnedCgroupID: pinnedCgroup, requestedCgroupID: cgroupID)
                    }
                    do { try link.update(program: program) } catch let e as BPFError { throw EnforcerError.attach(e) }
                    attached.append(link)
                    adoptedAny = true
                } else {
                    let link: BPFLink
                    do {
                        link = try program.attach(cgroupFD: cgroupFD, cgroupPath: cgroupPath)
                        try link.pin(at: pin)
                    } catch let e as BPFError { throw EnforcerError.attach(e) }
                    link.disconnect()
                    created.append(pin)
                    attached.append(link)
                }
            }
        } catch {
            for pin in created { _ = try? BPFSystem.detachPinnedLink(pin); unlink(pin) }
            throw error
        }
        return (attached, adoptedAny)
    }

    /// Whether the enforcement programs are attached to the subtree: from the
    /// first cgroup put in enforce mode (or from the start with unknown
    /// cgroups denied, or pinned links to adopt) until released
    /// (`releaseProgramsIfUnused`) or a fail-open close.
    public var hooksAttached: Bool { hookLock.withLock { links != nil } }

    /// Detaches the programs and removes their pins when nothing needs them:
    /// no cgroup in enforce mode and unknown cgroups allowed (learn and
    /// monitor decide nothing in the kernel). The next enforce policy attaches
    /// them again. Returns whether it detached them.
    @discardableResult
    public func releaseProgramsIfUnused() throws -> Bool {
        try ensureOpen()
        guard configuration.unknownCgroups == .allow else { return false }
        // Under hookLock, as setPolicy's attach-and-write: an enforce policy
        // cannot be written between the scan and the detach.
        return try hookLock.withLock {
            guard let attached = links, try !policies().values.contains(where: { $0.mode == .enforce }) else { return false }
            for l in attached { try l.detachNow() }
            for name in Self.programNames { unlink(Self.linkPin(configuration.pinRoot, name)) }
            links = nil
            return true
        }
    }

    deinit {
        // Leave the pins: the kernel keeps enforcing with no agent.
        for l in links ?? [] { l.disconnect() }
    }

    /// Stops using the kernel objects. failOpen: false leaves everything pinned
    /// and attached (enforcement continues with no agent; the next `open`
    /// adopts it). failOpen: true detaches every program and removes every pin
    /// under the pin root. Idempotent.
    public func close(failOpen: Bool) throws {
        let already = withState { s -> Bool in
            defer { s.closed = true }
            return s.closed
        }
        if already && !failOpen { return }
        birthLink?.detach()
        birthLink = nil
        try hookLock.withLock {
            if failOpen {
                for l in links ?? [] { try l.detachNow() }
                links = nil
                _ = try Enforcer.removeAll(pinRoot: configuration.pinRoot, sweepUnpinnedLinks: false)
            } else {
                for l in links ?? [] { l.disconnect() }
                links = nil
            }
        }
    }

    private func ensureOpen() throws {
        if withState({ $0.closed }) { throw EnforcerError.closed }
    }

    // MARK: - Policy of cgroups

    /// Puts a cgroup (and its descendants without a policy of their own)
    /// under a workload's policy. Takes effect at the next connect() or SYN.
    public func setPolicy(cgroupID: UInt64, workloadID: UInt32, mode: Mode) throws {
        try ensureOpen()
        var v = cg_cgroup_policy()
        v.workload_id = workloadID
        v.mode = mode.kernelValue
        // An enforce policy needs the programs: attached first, so that it is
        // enforced from the moment it is written, and under hookLock, so that
        // a release cannot come in between.
        try hookLock.withLock {
            if mode == .enforce && links == nil { links = try attachHooks().links }
            try update(policyMap, key: cgroupID, value: v)
        }
    }

    /// The same, naming the cgroup by path; returns its id.
    @discardableResult
    public func setPolicy(cgroupPath: String, workloadID: UInt32, mode: Mode) throws -> UInt64 {
        let id = try CgroupDirectory(cgroupPath).id
        try setPolicy(cgroupID: id, workloadID: workloadID, mode: mode)
        return id
    }

    /// Arms a cgroup that just appeared, and records how long after its
    /// creation (`createdAtWallNanoseconds`, e.g. CgroupEvent.timeNanoseconds)
    /// the policy was in force. Returns that latency in nanoseconds.
    @discardableResult
    public func arm(cgroupID: UInt64, workloadID: UInt32, mode: Mode, createdAtWallNanoseconds: Int64) throws -> Int64 {
        try setPolicy(cgroupID: cgroupID, workloadID: workloadID, mode: mode)
        let latency = BootClock.now(CLOCK_REALTIME) - createdAtWallNanoseconds
        withState { s in
            s.arming.append(latency)
            if s.arming.count > 4096 { s.arming.removeFirst(s.arming.count - 4096) }
        }
        return latency
    }

    /// Creation-to-armed latencies recorded by `arm` (the last 4096).
    public func armingLatency() -> LatencySummary? {
        LatencySummary(nanoseconds: withState { $0.arming })
    }

    /// Removes a cgroup's policy; false if it had none.
    @discardableResult
    public func removePolicy(cgroupID: UInt64) throws -> Bool {
        try ensureOpen()
        return try policyMap.delete(key: cgroupID)
    }

    public func policy(cgroupID: UInt64) throws -> CgroupPolicy? {
        try ensureOpen()
        guard let v = try policyMap.lookup(key: cgroupID, as: cg_cgroup_policy.self) else { return nil }
        return CgroupPolicy(workloadID: v.workload_id, mode: Mode(kernel: v.mode) ?? .enforce)
    }

    /// Every cgroup with a policy.
    public func policies() throws -> [UInt64: CgroupPolicy] {
        var out: [UInt64: CgroupPolicy] = [:]
        for id in try policyMap.keys(as: UInt64.self) {
            if let p = try policy(cgroupID: id) { out[id] = p }
        }
        return out
    }

    // MARK: - Rules

    public func add(_ rule: EnforcementRule) throws {
        try ensureOpen()
        var value = cg_rule()
        value.flags = 0
        if let k = rule.cidrKey {
            try update(addressRules, key: k, value: value)
        } else if let k = rule.peerKey {
            try update(peerRules, key: k, value: value)
        } else if let k = rule.nameKey, let n = rule.allowedNameKey {
            try update(allowedNames, key: n, value: UInt32(1))
            try update(nameRules, key: k, value: value)
        }
    }

    /// Removes a rule; false if it was not there.
    @discardableResult
    public func remove(_ rule: EnforcementRule) throws -> Bool {
        try ensureOpen()
        if let k = rule.cidrKey { return try addressRules.delete(key: k) }
        if let k = rule.peerKey { return try peerRules.delete(key: k) }
        if let k = rule.nameKey, let n = rule.allowedNameKey {
            let removed = try nameRules.delete(key: k)
            // The name stays allowed while another of its rules (another port) does.
            let others = try nameRules.keys(as: cg_name_rule_key.self).contains {
                $0.workload_id == k.workload_id && $0.name_hash == k.name_hash && $0.pattern == k.pattern
            }
            if !others { _ = try allowedNames.delete(key: n) }
            return removed
        }
        return false
    }

    /// The rules in the kernel, of one workload or of all.
    public func rules(workloadID: UInt32? = nil) throws -> Set<EnforcementRule> {
        try ensureOpen()
        var out = Set<EnforcementRule>()
        for k in try addressRules.keys(as: cg_rule_key.self) where workloadID == nil || k.workload_id == workloadID {
            if let r = EnforcementRule(k) { out.insert(r) }
        }
        for k in try peerRules.keys(as: cg_peer_rule_key.self) where workloadID == nil || k.workload_id == workloadID {
            if let r = EnforcementRule(k) { out.insert(r) }
        }
        for k in try nameRules.keys(as: cg_name_rule_key.self) where workloadID == nil || k.workload_id == workloadID {
            if let r = EnforcementRule(k) { out.insert(r) }
        }
        return out
    }

    // MARK: - DNS grants

    /// An address that answers for allowed names granted a workload.
    public struct DNSGrant: Sendable, Equatable {
        public struct Name: Sendable, Equatable {
            public var hash: UInt64
            public var pattern: Bool
            /// CLOCK_BOOTTIME nanoseconds.
            public var expiresBootNanoseconds: UInt64
            public var ttl: UInt32
        }
        public var workloadID: UInt32
        public var address: IPAddress
        public var names: [Name]
    }

    /// The grants in the kernel (slots that ended left out).
    public func dnsGrants(nowBoot: UInt64 = UInt64(BootClock.now(CLOCK_BOOTTIME))) throws -> [DNSGrant] {
        try ensureOpen()
        var out: [DNSGrant] = []
        for k in try dnsGrantMap.keys(as: cg_dns_grant_key.self) {
            guard let v = try dnsGrantMap.lookup(key: k, as: cg_dns_grant.self) else { continue }
            let names = Self.names(of: v).filter { $0.expiresBootNanoseconds > nowBoot }
            guard !names.isEmpty else { continue }
            out.append(DNSGrant(workloadID: k.workload_id, address: AddressKey.address(k.addr), names: names))
        }
        return out
    }

    private static func names(of v: cg_dns_grant) -> [DNSGrant.Name] {
        withUnsafeBytes(of: v) { raw in
            raw.bindMemory(to: cg_dns_grant_name.self).compactMap { n in
                n.expires_ns == 0 ? nil
                    : DNSGrant.Name(hash: n.name_hash, pattern: n.pattern != 0, expiresBootNanoseconds: n.expires_ns, ttl: n.ttl)
            }
        }
    }

    /// Deletes the grants whose every name ended (the kernel ignores them
    /// already; this keeps the map from filling). Returns how many went.
    @discardableResult
    public func sweepDNSGrants(nowBoot: UInt64 = UInt64(BootClock.now(CLOCK_BOOTTIME))) throws -> Int {
        try ensureOpen()
        var n = 0
        for k in try dnsGrantMap.keys(as: cg_dns_grant_key.self) {
            guard let v = try dnsGrantMap.lookup(key: k, as: cg_dns_grant.self) else { continue }
            if Self.names(of: v).allSatisfy({ $0.expiresBootNanoseconds <= nowBoot }), try dnsGrantMap.delete(key: k) { n += 1 }
        }
        return n
    }

    /// What became of the DNS answers enforced workloads received.
    public func dnsCounts() throws -> DNSCounts {
        try ensureOpen()
        func n(_ c: cg_dns_count) throws -> UInt64 { try dnsCountMap.perCPUSum(index: c.rawValue) }
        return DNSCounts(granted: try n(CG_DNS_COUNT_GRANTED), addressesGranted: try n(CG_DNS_COUNT_ADDRESSES),
                         nameNotAllowed: try n(CG_DNS_COUNT_NOT_ALLOWED), untrustedResolver: try n(CG_DNS_COUNT_UNTRUSTED),
                         malformed: try n(CG_DNS_COUNT_MALFORMED), notAnAnswer: try n(CG_DNS_COUNT_NOT_ANSWER),
                         grantsFull: try n(CG_DNS_COUNT_GRANTS_FULL), allowedByGrant: try n(CG_DNS_COUNT_ALLOWED_CONNECTS),
                         repeats: try n(CG_DNS_COUNT_REPEATS))
    }

    /// Makes a workload's rules exactly `rules` (a baseline import). New rules
    /// go in before stale ones leave, so a connection allowed by both the old
    /// and the new baseline is never refused meanwhile.
    @discardableResult
    public func replaceRules(workloadID: UInt32, with rules: some Sequence<EnforcementRule>) throws -> (added: Int, removed: Int) {
        let wanted = Set(rules)
        if let stray = wanted.first(where: { $0.workloadID != workloadID }) {
            throw EnforcerError.invalidArgument("replaceRules(workloadID: \(workloadID)) was given a rule of workload \(stray.workloadID)")
        }
        let current = try self.rules(workloadID: workloadID)
        let toAdd = wanted.subtracting(current)
        let toRemove = current.subtracting(wanted)
        for r in toAdd { try add(r) }
        for r in toRemove { try remove(r) }
        return (toAdd.count, toRemove.count)
    }

    // MARK: - Peer addresses

    /// Says that `address` belongs to workload `workloadID` (for rules whose
    /// peer is a workload).
    public func setPeerAddress(_ address: IPAddress, workloadID: UInt32) throws {
        try ensureOpen()
        try update(peerAddressMap, key: AddressKey.tuple(address), value: workloadID)
    }

    @discardableResult
    public func removePeerAddress(_ address: IPAddress) throws -> Bool {
        try ensureOpen()
        return try peerAddressMap.delete(key: AddressKey.tuple(address))
    }

    public func peerAddresses() throws -> [IPAddress: UInt32] {
        try ensureOpen()
        var out: [IPAddress: UInt32] = [:]
        for k in try peerAddressMap.keys(as: KernelAddress.self) {
            if let w = try peerAddressMap.lookup(key: k, as: UInt32.self) { out[AddressKey.address(k)] = w }
        }
        return out
    }

    // MARK: - Counters

    /// What the programs decided since they were first loaded under this pin
    /// root (the counters are pinned too).
    public func decisionCounts() throws -> DecisionCounts {
        try ensureOpen()
        func n(_ d: cg_decision) throws -> UInt64 { try decisionMap.perCPUSum(index: d.rawValue) }
        return DecisionCounts(
            connect: .init(allowed: try n(CG_DECISION_CONNECT_ALLOWED), denied: try n(CG_DECISION_CONNECT_DENIED),
                           notEnforced: try n(CG_DECISION_CONNECT_NOT_ENFORCED), unknownCgroup: try n(CG_DECISION_CONNECT_UNKNOWN)),
            accept: .init(allowed: try n(CG_DECISION_ACCEPT_ALLOWED), denied: try n(CG_DECISION_ACCEPT_DENIED),
                          notEnforced: try n(CG_DECISION_ACCEPT_NOT_ENFORCED), unknownCgroup: try n(CG_DECISION_ACCEPT_UNKNOWN)))
    }

    public func dropCounts() throws -> EnforcementDropCounts {
        try ensureOpen()
        func n(_ d: cg_enforce_drop_reason) throws -> UInt64 { try dropMap.perCPUSum(index: d.rawValue) }
        return EnforcementDropCounts(
            lostDenials: try n(CG_ENF_DROP_RINGBUF_FULL), ownerNotRecorded: try n(CG_ENF_DROP_OWNER_STORAGE),
            unparsedPackets: try n(CG_ENF_DROP_UNPARSED), lostNewCgroups: try n(CG_ENF_DROP_BIRTH_RINGBUF_FULL),
            undecodable: withState { $0.undecodable },
            udpDenialRepeats: try udpDenialRepeatMap.perCPUSum(index: 0))
    }

    // MARK: - Denials

    /// A reader of the denials ring buffer, for one thread. Denials made while
    /// no agent ran wait in the pinned ring buffer and come first.
    public func denialReader() throws -> DenialReader {
        try ensureOpen()
        return try DenialReader(enforcer: self, map: denialMap) { bytes, clock in
            if case let .connection(e)? = try? TraceRecord.decode(bytes, clock: clock) { return e }
            return nil
        }
    }

    /// The loaded programs (to measure them with BPFProgram.testRun).
    public var programs: [BPFProgram] { object.programs }

    /// Starts reporting cgroups created in the watched subtree, at once and on
    /// a ring buffer of their own (the tracer's cgroup events wait behind
    /// every connection on the node). The agent arms each with `arm`.
    /// One watcher per enforcer; it stops at close.
    public func watchNewCgroups() throws -> NewCgroupReader {
        try ensureOpen()
        if birthLink == nil {
            do {
                birthLink = try object.program("cg_enf_mkdir").attach()
            } catch let e as BPFError {
                throw EnforcerError.attach(e)
            }
        }
        return try NewCgroupReader(enforcer: self, map: try object.map("cgroup_births")) { bytes, clock in
            if case let .cgroup(c)? = try? TraceRecord.decode(bytes, clock: clock) { return c }
            return nil
        }
    }

    func countUndecodable() { withState { $0.undecodable += 1 } }

    // MARK: -

    private func update<K: BitwiseCopyable, V: BitwiseCopyable>(_ map: BPFMap, key: K, value: V) throws {
        do {
            try map.update(key: key, value: value)
        } catch let e as BPFError where e.errno == E2BIG || e.errno == ENOMEM || e.errno == ENOSPC {
            throw EnforcerError.mapFull(map.name)
        }
    }

    static func preparePinRoot(_ root: String) throws {
        let parent = root.hasSuffix("/") ? String(root.dropLast()) : root
        let dirname = parent.split(separator: "/", omittingEmptySubsequences: false).dropLast().joined(separator: "/")
        guard FileSystem.isBPF(dirname.isEmpty ? "/" : dirname) else { throw EnforcerError.bpffsNotMounted(dirname) }
        if mkdir(root, 0o700) != 0 && errno != EEXIST {
            throw EnforcerError.invalidArgument("cannot create pin root \(root): \(String(cString: strerror(errno)))")
        }
        guard FileSystem.isBPF(root) else { throw EnforcerError.bpffsNotMounted(root) }
    }

    static func pinRootHasEntries(_ root: String) -> Bool {
        !(listDirectory(root) ?? []).isEmpty
    }
}

/// Decisions of the enforcement programs, by direction.
public struct DecisionCounts: Sendable, Equatable {
    public struct Direction: Sendable, Equatable {
        /// Enforce mode, inside the baseline.
        public var allowed: UInt64
        /// Refused (EPERM, or SYN dropped).
        public var denied: UInt64
        /// Learn or monitor mode: let through.
        public var notEnforced: UInt64
        /// No policy for the cgroup or its ancestors: let through (unless `--unknown deny`, then counted as denied).
        public var unknownCgroup: UInt64
    }
    public var connect: Direction
    public var accept: Direction
}

/// What enforcement could not report or check. Never silent.
public struct EnforcementDropCounts: Sendable, Equatable {
    /// Denials that happened but whose events were lost (ring buffer full).
    public var lostDenials: UInt64
    /// Sockets whose binder could not be recorded (their inbound denials lack a pid).
    public var ownerNotRecorded: UInt64
    /// Inbound packets whose TCP header was not found (let through).
    public var unparsedPackets: UInt64
    /// New cgroups in the subtree that were not reported (their ring buffer was full).
    public var lostNewCgroups: UInt64
    /// Denial records user space could not decode (a bug if ever non-zero).
    public var undecodable: UInt64
    /// UDP denials counted, not reported: their flow's first denial in that
    /// second was (not pinned: since this enforcer loaded).
    public var udpDenialRepeats: UInt64 = 0
}

/// What became of the DNS answers that enforced workloads received (read
/// in the kernel, before the socket had them). Pinned: since the pin root
/// was made.
public struct DNSCounts: Sendable, Equatable, Codable {
    /// Answers for an allowed name, from a trusted resolver: their addresses granted.
    public var granted: UInt64
    /// Addresses granted or renewed.
    public var addressesGranted: UInt64
    /// Answers for names no rule names: nothing granted.
    public var nameNotAllowed: UInt64
    /// Answers from a resolver outside the workload's baseline: ignored.
    public var untrustedResolver: UInt64
    /// Answers the parser refused: ignored.
    public var malformed: UInt64
    /// Error answers (NXDOMAIN), queries, answers without addresses.
    public var notAnAnswer: UInt64
    /// Addresses that could not be granted: the grant map was full.
    public var grantsFull: UInt64
    /// Connects and datagrams allowed by a grant.
    public var allowedByGrant: UInt64
    /// The same answer to the same workload within a second: not parsed
    /// again (its grants were made by the first).
    public var repeats: UInt64

    enum CodingKeys: String, CodingKey {
        case granted, addressesGranted = "addresses_granted", nameNotAllowed = "name_not_allowed",
             untrustedResolver = "untrusted_resolver", malformed, notAnAnswer = "not_an_answer",
             grantsFull = "grants_full", allowedByGrant = "allowed_by_grant", repeats
    }
}

/// Median and tail of a set of latencies.
public struct LatencySummary: Sendable, Equatable, CustomStringConvertible {
    public let count: Int
    public let medianNanoseconds: Int64
    public let p99Nanoseconds: Int64
    public let maxNanoseconds: Int64

    public init?(nanoseconds: [Int64]) {
        guard !nanoseconds.isEmpty else { return nil }
        let s = nanoseconds.sorted()
        count = s.count
        medianNanoseconds = s[s.count / 2]
        p99Nanoseconds = s[min(s.count - 1, Int((Double(s.count) * 0.99).rounded(.up)) - 1)]
        maxNanoseconds = s[s.count - 1]
    }

    public var description: String {
        func us(_ n: Int64) -> String { String(Double(n) / 1000) }
        return "n=\(count) median=\(us(medianNanoseconds))µs p99=\(us(p99Nanoseconds))µs max=\(us(maxNanoseconds))µs"
    }
}

/// Reads one of enforcement's ring buffers, each record decoded as a `T`;
/// what cannot be decoded is counted, never dropped silently.
public final class EnforcementReader<T> {
    private let enforcer: Enforcer
    private var reader: RingBufferReader!
    private var pending: [T] = []

    init(enforcer: Enforcer, map: BPFMap, decode: @escaping (UnsafeRawBufferPointer, BootClock) -> T?) throws {
        self.enforcer = enforcer
        reader = try RingBufferReader(map: map) { [unowned self] bytes in
            if let value = decode(bytes, self.enforcer.clock) {
                self.pending.append(value)
            } else {
                self.enforcer.countUndecodable()
            }
        }
    }

    /// Waits up to `timeoutMilliseconds` for records and returns those ready.
    public func poll(timeoutMilliseconds: Int32) throws -> [T] {
        try reader.poll(timeoutMilliseconds: timeoutMilliseconds)
        defer { pending.removeAll() }
        return pending
    }
}

/// Refusals, as ConnectionEvents with outcome `.denied`.
public typealias DenialReader = EnforcementReader<ConnectionEvent>
/// The cgroups created in the watched subtree (paths relative to the cgroup v2 mount).
public typealias NewCgroupReader = EnforcementReader<CgroupEvent>

/// A cgroup v2 directory: its id, its depth below the mount, whether it is the root.
struct CgroupDirectory {
    let path: String
    let id: UInt64
    let level: Int
    let isRoot: Bool

    init(_ path: String) throws {
        var st = stat()
        guard stat(path, &st) == 0, (st.st_mode & S_IFMT) == S_IFDIR, FileSystem.isCgroup2(path),
              let mount = CgroupMount.find(), let real = realpath(path, nil), let realMount = realpath(mount, nil)
        else { throw EnforcerError.notACgroup2Directory(path) }
        let p = String(cString: real)
        let m = String(cString: realMount)
        free(real)
        free(realMount)
        guard p == m || p.hasPrefix(m + "/") else { throw EnforcerError.notACgroup2Directory(path) }
        self.path = path
        id = UInt64(st.st_ino)
        level = p.dropFirst(m.count).split(separator: "/").count
        isRoot = level == 0
    }
}

enum FileSystem {
    static let bpfMagic: Int = 0xcafe_4a11      // BPF_FS_MAGIC, include/uapi/linux/magic.h
    static let cgroup2Magic: Int = 0x6367_7270  // CGROUP2_SUPER_MAGIC

    static func type(_ path: String) -> Int? {
        let t = cgbpf_fs_type(path)
        return t < 0 ? nil : t
    }

    static func isBPF(_ path: String) -> Bool { type(path) == bpfMagic }
    static func isCgroup2(_ path: String) -> Bool { type(path) == cgroup2Magic }
}
