import BPFKit
import ConnGuardCore
import ConnGuardEnforcer
import ConnGuardStore
import ConnGuardTracer
import Foundation
import Hummingbird
import Logging
import Metrics
import NIOCore
import Prometheus
import ServiceLifecycle

/// The node agent: loads and attaches the programs once, turns events into
/// stored, attributed connections, answers the CLI on a Unix socket, serves
/// metrics, and shuts down cleanly on SIGTERM/SIGINT (drains the ring buffer,
/// flushes the database, detaches, removes its socket).
public final class Agent: @unchecked Sendable {
    public let configuration: AgentConfiguration
    public let store: EventStore
    let writer: StoreWriter
    let tracer: Tracer
    let pipeline: EventPipeline
    /// What each workload resolved through DNS (`connguard dns`, peer_name).
    let names: ResolvedNames
    let identity: IdentitySource
    let metrics: AgentMetrics
    let enforcer: Enforcer?
    public let policy: PolicyEngine
    /// On a cluster (--cluster-endpoints): the link to the other nodes.
    let cluster: ClusterSync?
    let logger: Logger
    let startedAt = Date()
    private let instanceLock: AgentInstanceLock
    /// Who may read and who may change, from the socket and admin groups.
    let access: APIAccess
    let version: String
    private var statsToken: Int32 = -1

    /// Everything that can fail at start fails here, with one clear message,
    /// before anything is left half-done.
    public init(configuration: AgentConfiguration, identity: IdentitySource, version: String, logger: Logger) throws {
        var configuration = configuration
        self.identity = identity
        self.version = version
        self.logger = logger
        let problems = configuration.validate()
        if !problems.isEmpty { throw ConfigurationError(problems: problems) }
        access = try APIAccess(socketGroup: configuration.socketGroup, adminGroup: configuration.adminGroup)
        // Whatever is at the socket path is replaced at start and removed at
        // exit: only ever a socket (a typo must not cost a file).
        var st = stat()
        if lstat(configuration.socketPath, &st) == 0 && (st.st_mode & S_IFMT) != S_IFSOCK {
            throw AgentError("--socket: \(configuration.socketPath) exists and is not a socket; remove it or choose another path")
        }

        // Scope: the watched cgroup subtree, absolute (under the cgroup2
        // mount) or relative to the mount, as `trace --cgroup` takes it;
        // kept relative from here on. Checked before anything is claimed.
        var scope: CgroupSubtree?
        if configuration.cgroupRoot != "/" {
            guard let mount = CgroupMount.find() else { throw AgentError("no cgroup v2 hierarchy is mounted; --cgroup-root needs one") }
            do {
                let subtree = try CgroupSubtree(mount: mount, path: configuration.cgroupRoot)
                configuration.cgroupRoot = subtree.relativePath
                if subtree.relativePath != "/" { scope = subtree }
            } catch {
                throw AgentError("--cgroup-root: \(error)")
            }
        }
        self.configuration = configuration
        instanceLock = try AgentInstanceLock(pinRoot: configuration.pinRoot, socketPath: configuration.socketPath,
                                             databasePath: configuration.databasePath)

        do {
            store = try EventStore(path: configuration.databasePath, options: .init(migrations: BaselineSchema.migrations))
        } catch {
            throw AgentError("cannot open the database \(configuration.databasePath): \(error)")
        }
        // What start has made so far, undone in reverse if a later step fails.
        var undo = Undo()
        let writer = StoreWriter(store: store, options: .init(
            capacity: configuration.writeQueueCapacity,
            retention: .init(eventMaxAge: .seconds(configuration.eventRetentionSeconds),
                             maxEvents: configuration.eventRetentionCount,
                             aggregateMaxAge: .seconds(configuration.aggregateRetentionSeconds)),
            rowBudget: configuration.individualEventsPerSecond > 0
                ? .init(eventsPerSecond: configuration.individualEventsPerSecond) : nil))
        undo.add { writer.close() }

        var tracerConfig = Tracer.Configuration()
        tracerConfig.ringBufferBytes = configuration.ringBufferMiB << 20
        tracerConfig.snapshotConnections = true
        tracerConfig.acceptAttribution = AcceptAttribution(rawValue: configuration.acceptAttribution) ?? .caller
        // The row budget also bounds what crosses the ring buffer: the kernel
        // counts the other repeats of a connection (0: every event, one by one).
        tracerConfig.countRepeats = configuration.individualEventsPerSecond > 0
        tracerConfig.repeatsSentPerSecond = configuration.individualEventsPerSecond
        tracerConfig.dnsAnswers = configuration.dnsNames
        let tracer = try undo.step("") {
            if let h = configuration.hooks {
                guard let rung = HookRung(rawValue: h) else { throw PrerequisiteError("hooks: \(h) is not one of fentry, kprobe, tracepoint") }
                tracerConfig.forcedRung = rung
            }
            return try Tracer(configuration: tracerConfig, logger: logger)
        }
        undo.add { tracer.close() }

        // Enforcement: attached at the watched root, pinned so that it holds
        // while the agent is away; an agent that finds the pins adopts them.
        let rootPath = try undo.step("") { () throws -> String in
            guard let mount = CgroupMount.find() else { throw AgentError("no cgroup v2 hierarchy is mounted") }
            return configuration.cgroupRoot == "/" ? mount : mount + configuration.cgroupRoot
        }
        let enforcer = try undo.step("enforcement: ") {
            try Enforcer.open(cgroupPath: rootPath, pinRoot: configuration.pinRoot,
                              unknown: configuration.unknownCgroups == "deny" ? .deny : .allow,
                              allowRoot: configuration.cgroupRoot == "/", maxRules: UInt32(configuration.maxKernelRules),
                              dnsFloorNanoseconds: UInt64(DurationParser.nanoseconds(configuration.dnsFloorSeconds)))
        }
        undo.add { [failOpen = configuration.failOpen] in try? enforcer.close(failOpen: failOpen) }
        if configuration.unknownCgroups == "deny" {
            logger.critical("--unknown deny: connections from cgroups ConnGuard does not know are REFUSED under \(rootPath)")
        }
        var settings = PolicyEngine.Settings()
        settings.defaultMode = Mode(rawValue: configuration.defaultMode) ?? .learn
        settings.maxNewRulesPerMinute = configuration.maxNewRulesPerMinute
        settings.clustered = !configuration.clusterEndpoints.isEmpty
        settings.promotion = PromotionPolicy(
            learningPeriod: configuration.learningPeriodSeconds.map(DurationParser.nanoseconds),
            quietPeriod: DurationParser.nanoseconds(configuration.quietPeriodSeconds), autoEnforce: configuration.autoEnforce)
        let baselines = BaselineStore(store: store)
        let remote = settings.clustered ? ClusterSync.lastKnownAddresses(configuration, logger: logger) : [:]
        let policy = try undo.step("baselines: ") {
            try PolicyEngine(settings: settings, store: baselines, enforcer: enforcer,
                             identity: identity, cgroupRootPath: rootPath, scope: scope, remoteAddresses: remote, logger: logger)
        }
        // Before any event: the engine sends this node's addresses and
        // promotions to the cluster from the start.
        cluster = try settings.clustered ? undo.step("") { try ClusterSync(configuration: configuration, policy: policy, logger: logger) } : nil
        self.writer = writer
        self.tracer = tracer
        self.enforcer = enforcer
        self.policy = policy
        metrics = AgentMetrics(clustered: settings.clustered)
        names = ResolvedNames(floorNanoseconds: DurationParser.nanoseconds(configuration.dnsFloorSeconds))
        pipeline = EventPipeline(tracer: tracer, identity: identity, writer: writer, metrics: metrics, scope: scope,
                                 names: names, logger: logger)
        pipeline.policy = policy
        policy.names = names
        // Per-program run time and count, for the metrics: held while this fd
        // is open. Opt-in: the kernel's timing of each run costs more than
        // most of the programs (~75 ns a run here).
        if configuration.programStats { statsToken = BPFSystem.enableRunTimeStatistics() }
    }

    /// Runs until SIGTERM or SIGINT.
    public func run() async throws {
        let socketPath = configuration.socketPath
        try prepareSocketDirectory()
        // Connections that were open before the tracer attached, stored and
        // learnt like the rest, before any live event.
        let seeded = pipeline.feed(tracer.takeConnectionSnapshot())
        // Idle connections are closed, so that clients that connect and send
        // nothing (or half a request) cannot pile up; a response in progress
        // (a --follow stream) is never idle.
        let idle = TimeAmount.nanoseconds(DurationParser.nanoseconds(configuration.apiIdleTimeoutSeconds))
        let api = Application(
            router: APIRoutes.build(agent: self, access: access),
            server: .http1(configuration: .init(idleTimeout: idle)),
            configuration: .init(address: .unixDomainSocket(path: socketPath), serverName: nil),
            onServerRunning: { [configuration, access, logger] _ in
                Agent.secureSocket(configuration, gid: access.socketGID, logger: logger)
            },
            logger: logger)
        var services: [any Service] = [PipelineService(agent: self), EnforcementService(agent: self), api]
        if let cluster { services.append(cluster) }
        if let m = configuration.metricsAddress, let address = MetricsAddress(m) {
            services.append(Application(
                router: metricsRouter(),
                configuration: .init(address: .hostname(address.host, port: address.port), serverName: nil),
                logger: logger))
        }
        let group = ServiceGroup(configuration: .init(
            services: services.map { .init(service: $0) },
            gracefulShutdownSignals: [.sigterm, .sigint],
            logger: logger))
        logger.info("agent started", metadata: [
            "version": "\(version)", "database": "\(configuration.databasePath)", "socket": "\(socketPath)",
            "metrics": "\(configuration.metricsAddress ?? "off")", "cgroup_root": "\(configuration.cgroupRoot)",
            "hook_rung": "\(tracer.rung)\(configuration.hooks != nil ? " (forced)" : "")",
            "hook_rungs_refused": "\(tracer.refusedRungs.map { "\($0.rung): \($0.reason)" }.joined(separator: "; "))",
            "hooks": "\(tracer.hooks.map(\.description).joined(separator: "; "))",
            "listeners_seeded": "\(tracer.seededListeners)",
            "connections_seeded": "\(seeded)",
        ])
        defer {
            unlink(socketPath)
            if statsToken >= 0 { close(statsToken) }
        }
        try await group.run()
        logger.info("agent stopped")
    }

    /// Called by the pipeline service on shutdown: drain, flush, detach.
    func shutdown() {
        pipeline.stop()
        try? policy.flush()
        writer.flush()
        writer.close()
        tracer.close()
        do {
            try enforcer?.close(failOpen: configuration.failOpen)
            logger.info(configuration.failOpen ? "enforcement detached (--fail-open)" : "enforcement left pinned; the next agent adopts it")
        } catch {
            logger.error("closing enforcement: \(error)")
        }
        // After the close: a fail-open close emptied the pin root, which goes too.
        instanceLock.release()
        let c = pipeline.snapshot
        logger.info("events drained and stored", metadata: ["connects": "\(c.connects)", "accepts": "\(c.accepts)"])
    }

    private func metricsRouter() -> Router<BasicRequestContext> {
        let router = Router()
        router.get("/metrics") { [self] _, _ -> Response in
            refreshMetrics()
            return Response(status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                            body: .init(byteBuffer: ByteBuffer(string: metrics.render())))
        }
        return router
    }

    /// Brings values read from the kernel and the database up to date.
    func refreshMetrics() {
        if let loss = try? tracer.lossCounts() {
            let w = writer.snapshot
            metrics.update(loss: loss, writeQueueLost: w.lost, aggregatedOnly: w.aggregatedOnly)
        }
        if let drops = try? enforcer?.dropCounts() { metrics.update(enforcementDrops: drops) }
        metrics.update(dns: names.snapshot, lost: (try? tracer.lossCounts().dnsRingBufferFull) ?? 0,
                       repeats: (try? tracer.dnsRepeats()) ?? 0, kernel: (try? enforcer?.dnsCounts()) ?? nil)
        metrics.update(programStats: tracer.programs.compactMap { p in
            guard let info = try? p.info() else { return nil }
            return (p.name, info.run_cnt, info.run_time_ns, info.recursion_misses)
        })
        metrics.update(kernelRules: policy.kernelRules)
        if let cluster { metrics.update(cluster: cluster.status(), degradedSinceSeconds: cluster.degradedSinceSeconds) }
        if let s = try? store.stats() {
            metrics.update(storedEvents: s.events, storedAggregates: s.aggregates, databaseBytes: Int(s.totalBytes),
                           cgroups: identity.trackedCgroups, queueDepth: writer.snapshot.pending)
        }
    }

    /// What `connguard dns` shows: for each workload, name and address it
    /// resolved (and that still holds), the answer's TTL and what is left of
    /// it, until when the address is held (max(TTL, floor)), the workload's
    /// rules on that name, and whether the kernel holds the address for it
    /// (an enforced workload, an allowed name, a trusted resolver).
    func dnsLines(workload: String?, name: String?) -> [JSONValue] {
        let now = BootClock.now(CLOCK_REALTIME)
        let grants = (try? enforcer?.dnsGrants()) ?? []
        var granted: [UInt32: [IPAddress: [Enforcer.DNSGrant.Name]]] = [:]
        for g in grants { granted[g.workloadID, default: [:]][g.address] = g.names }
        let boot = BootClock.now(CLOCK_BOOTTIME)
        return names.resolutions(workload: workload, name: name, at: now).map { (w, address, r) in
            let rules = (policy.baseline(w)?.sortedRules ?? []).filter { rule in
                if case let .name(n) = rule.key.peer { return n.matches(r.name) } else { return false }
            }
            let dnsName = DNSName(r.name)
            let kernel = policy.kernelWorkloadID(w).flatMap { granted[$0]?[address] }?.filter { g in
                guard let dnsName else { return false }
                return g.pattern ? rules.contains { rule in
                    if case let .name(n) = rule.key.peer { return n.isPattern && n.kernelHash == g.hash } else { return false }
                } : g.hash == dnsName.kernelHash
            }.map(\.expiresBootNanoseconds).max()
            let ttlLeft = max(0, (r.answeredAt + Int64(r.ttl) * 1_000_000_000 - now) / 1_000_000_000)
            return JSONValue.object([
                ("workload", .string(w)), ("name", .string(r.name)), ("address", .string(address.description)),
                ("ttl", .int(Int64(r.ttl))), ("ttl_left", .int(ttlLeft)),
                ("answered_at", .string(BaselineFile.rfc3339(r.answeredAt))), ("held_until", .string(BaselineFile.rfc3339(r.expires))),
                ("rules", .array(rules.map { .string("\($0.key.direction.ruleName) \($0.key.peer) \($0.key.port)/\($0.key.proto)") })),
                ("allowed_in_kernel_until", kernel.map { .string(BaselineFile.rfc3339(Int64($0) - boot + now)) } ?? .null),
            ])
        }
    }

    /// What `connguard status` shows.
    func status() -> AgentStatus {
        let c = pipeline.snapshot
        let loss = (try? tracer.lossCounts()) ?? LossCounts()
        let drops = (try? enforcer?.dropCounts()) ?? nil
        let w = writer.snapshot
        let s = try? store.stats()
        let summaries = policy.list()
        let kernel = policy.kernelRules
        let dnsSeen = names.snapshot
        let dnsKernel = (try? enforcer?.dnsCounts()) ?? nil
        func n<T: BinaryInteger>(_ v: T) -> Int64 { Int64(clamping: v) }
        let recent = (try? BaselineStore(store: store).audit(limit: 5, workload: nil)
            .map { "\($0.who) \($0.action) \($0.workload ?? "") \($0.detail)" }.joined(separator: "; ")) ?? ""
        return AgentStatus(
            version: version, pid: n(getpid()), startedAt: ISO8601DateFormatter().string(from: startedAt),
            uptimeSeconds: Int64(Date().timeIntervalSince(startedAt)), cgroupRoot: configuration.cgroupRoot,
            hookRung: tracer.rung.rawValue,
            hooks: Dictionary(tracer.hooks.map { ($0.capability, "\($0.rung) \($0.detail)") }, uniquingKeysWith: { a, _ in a }),
            listenersSeeded: n(tracer.seededListeners), connectionsSeeded: n(c.seeded),
            events: .init(connect: n(c.connects), accept: n(c.accepts), unattributed: n(c.unattributed),
                          outsideCgroupRoot: n(c.outOfScope), stored: n(w.written), aggregatedOnly: n(w.aggregatedOnly),
                          countedInKernel: n(c.countedInKernel)),
            lost: .init(total: n(loss.lostEvents + w.lost + (drops?.lostDenials ?? 0) + (drops?.undecodable ?? 0)),
                        kernelRingBufferFull: n(loss.ringBufferFull), kernelCgroupRecords: n(loss.cgroupRingBufferFull),
                        denials: n((drops?.lostDenials ?? 0) + (drops?.undecodable ?? 0)), undecodable: n(loss.undecodable),
                        writeQueueFull: n(w.dropped), writeFailed: n(w.failed), possiblyLostKernelRecursion: n(loss.recursionMisses)),
            incomplete: .init(connectsWithoutProcess: n(loss.connectMapFull), listenersWithoutOwner: n(loss.listenerMapFull),
                              acceptsNamingListener: n(loss.acceptMapFull), udpSocketsWithoutRole: n(loss.udpRoleStorage),
                              socketsWithoutBinder: n(drops?.ownerNotRecorded ?? 0)),
            workloads: n(s?.workloads ?? 0), cgroupsTracked: n(identity.trackedCgroups),
            database: .init(path: configuration.databasePath, sizeBytes: s?.totalBytes ?? 0, events: n(s?.events ?? 0),
                            connections: n(s?.aggregates ?? 0)),
            metricsAddress: Nullable(configuration.metricsAddress),
            enforcement: .init(
                cgroup: enforcer?.cgroupPath ?? "", pinnedAt: configuration.pinRoot, adopted: enforcer?.adopted ?? false,
                programsAttached: enforcer?.hooksAttached ?? false, unknownCgroups: configuration.unknownCgroups,
                onExit: configuration.failOpen ? "detach (fail open)" : "stay pinned",
                arming: Nullable(enforcer?.armingLatency()?.description),
                kernelRules: .init(address: n(kernel.address), addressCapacity: n(kernel.addressCapacity),
                                   workload: n(kernel.workload), workloadCapacity: n(kernel.workloadCapacity)),
                heldBack: kernel.heldBack, unparsedPackets: n(drops?.unparsedPackets ?? 0),
                newCgroupsMissed: n(drops?.lostNewCgroups ?? 0), udpDenialsCounted: n(drops?.udpDenialRepeats ?? 0)),
            dns: .init(answers: n(dnsSeen.answers), malformed: n(dnsSeen.malformed), notAnAnswer: n(dnsSeen.notAnAnswer),
                       untrusted: n(dnsSeen.untrusted),
                       lost: n(loss.dnsRingBufferFull), repeatsInKernel: n((try? tracer.dnsRepeats()) ?? 0),
                       floorSeconds: configuration.dnsFloorSeconds,
                       granted: n(dnsKernel?.granted ?? 0), addressesGranted: n(dnsKernel?.addressesGranted ?? 0),
                       nameNotAllowed: n(dnsKernel?.nameNotAllowed ?? 0), untrustedResolver: n(dnsKernel?.untrustedResolver ?? 0),
                       kernelMalformed: n(dnsKernel?.malformed ?? 0), grantsFull: n(dnsKernel?.grantsFull ?? 0),
                       allowedByGrant: n(dnsKernel?.allowedByGrant ?? 0), kernelRepeats: n(dnsKernel?.repeats ?? 0)),
            modes: Dictionary(uniqueKeysWithValues: Mode.allCases.map { m in (m.rawValue, n(summaries.filter { $0.mode == m }.count)) }),
            audit: .init(recent: recent),
            cluster: Nullable(cluster?.status()))
    }

    /// The socket's folder: made root-only (0700) if missing, and with a
    /// socket group 0750 owned by that group, but only if it is the agent's
    /// own: the default /run/connguard, or one it made just now. A folder
    /// that was there already (`--socket /tmp/x.sock`: /tmp) belongs to
    /// someone else and is left exactly as it is.
    private func prepareSocketDirectory() throws {
        let dir = (configuration.socketPath as NSString).deletingLastPathComponent
        let created = mkdir(dir, 0o700) == 0
        if !created && errno != EEXIST {
            throw AgentError("cannot create \(dir): \(String(cString: strerror(errno)))")
        }
        let ownsDirectory = created || dir == (AgentConfiguration().socketPath as NSString).deletingLastPathComponent
        if let gid = access.socketGID {
            if ownsDirectory {
                chown(dir, 0, gid)
                chmod(dir, 0o750)
            } else {
                logger.notice("the socket's folder was not made by the agent: its owner and mode are left as they are; the socket group needs search permission on it",
                              metadata: ["folder": "\(dir)"])
            }
        }
    }

    /// The socket: 0600 root-only, or 0660 with the socket group (the admin
    /// group if there is no socket group). What each may do is APIAccess's.
    static func secureSocket(_ c: AgentConfiguration, gid: gid_t?, logger: Logger) {
        if let gid {
            chown(c.socketPath, 0, gid)
            chmod(c.socketPath, 0o660)
        } else {
            chmod(c.socketPath, 0o600)
        }
        logger.debug("API listening", metadata: ["socket": "\(c.socketPath)"])
    }
}

/// Reads denials and new cgroups from the enforcement programs, each on a
/// thread of its own (the polls block), and runs the policy engine's
/// periodic work, until shutdown.
struct EnforcementService: Service {
    let agent: Agent

    func run() async throws {
        guard let enforcer = agent.enforcer else { return }
        let stop = StopFlag()
        // Each reader is used by its one thread only.
        nonisolated(unsafe) let denials = try enforcer.denialReader()
        nonisolated(unsafe) let births = try enforcer.watchNewCgroups()
        let denialThread = Thread {
            while !stop.isSet {
                guard let events = try? denials.poll(timeoutMilliseconds: 100), !events.isEmpty else { continue }
                agent.pipeline.handleDenials(events)
            }
        }
        let birthThread = Thread {
            while !stop.isSet {
                guard let created = try? births.poll(timeoutMilliseconds: 100) else { continue }
                for c in created { agent.policy.cgroupCreated(c) }
            }
        }
        denialThread.start()
        birthThread.start()
        var lastLost: UInt64 = (try? agent.tracer.lossCounts().lostEvents) ?? 0
        var lastFailed: UInt64 = 0
        var ticks = 0
        while !Task.isShuttingDownGracefully && !Task.isCancelled {
            // Woken by SIGTERM too: shutdown must not wait out the 2 s.
            try? await cancelWhenGracefulShutdown { try await Task.sleep(for: .seconds(2)) }
            if Task.isShuttingDownGracefully { break }
            let lost = ((try? agent.tracer.lossCounts().lostEvents) ?? 0) + agent.writer.snapshot.lost
            agent.policy.tick(eventsLostSinceLastTick: lost > lastLost)
            lastLost = lost
            // Grants and names past max(TTL, floor): the kernel ignores
            // ended grants already; this keeps both bounded.
            ticks += 1
            if ticks % 15 == 0 {
                do { try agent.enforcer?.sweepDNSGrants() } catch { agent.logger.warning("sweeping DNS grants: \(error)") }
                agent.names.expire(at: BootClock.now(CLOCK_REALTIME))
            }
            // Failed writes are counted in status and the metrics; the log
            // says why, at most once per tick (a full disk by name).
            let w = agent.writer.snapshot
            if w.failed > lastFailed {
                agent.logger.error("events could not be stored", metadata: [
                    "events_lost": "\(w.failed - lastFailed)", "error": "\(w.lastError ?? "unknown")"])
                lastFailed = w.failed
            }
        }
        stop.set()
        _ = (denials, births)
    }
}

final class StopFlag: @unchecked Sendable {
    private let lock = Mutex()
    private var value = false
    var isSet: Bool { lock.withLock { value } }
    func set() { lock.withLock { value = true } }
}

/// Runs the event pipeline inside the service group; on graceful shutdown,
/// drains and flushes before returning.
struct PipelineService: Service {
    let agent: Agent

    func run() async throws {
        agent.pipeline.start()
        try? await gracefulShutdown()
        agent.shutdown()
        if let failure = agent.pipeline.failure { throw failure }
    }
}

public struct AgentError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// What the agent's start made so far, undone in reverse order when a later
/// step fails, so that a failed start leaves nothing behind.
struct Undo {
    private var steps: [() -> Void] = []

    mutating func add(_ step: @escaping () -> Void) { steps.append(step) }

    /// Runs `body`; if it throws, undoes everything and throws its error as
    /// one line, after `prefix`.
    func step<T>(_ prefix: String, _ body: () throws -> T) throws -> T {
        do {
            return try body()
        } catch {
            for s in steps.reversed() { s() }
            if let e = error as? AgentError, prefix.isEmpty { throw e }
            throw AgentError("\(prefix)\(error)")
        }
    }
}
