import ConnGuardCore
import ConnGuardStore
import ConnGuardTracer
import Foundation
import Logging

/// Counts the pipeline keeps for `connguard status`.
public struct PipelineCounts: Sendable, Equatable {
    public var connects: UInt64 = 0
    public var accepts: UInt64 = 0
    public var outOfScope: UInt64 = 0
    public var unattributed: UInt64 = 0
    /// Connections found established at start (in scope), also counted in
    /// connects and accepts.
    public var seeded: UInt64 = 0
    /// Repeats the kernel counted instead of sending (in scope or not).
    public var countedInKernel: UInt64 = 0
}

/// The agent's event path: the tracer's ring buffer, read on a thread of its
/// own (the poll blocks), then identity, verdict, storage and metrics. Nothing
/// here blocks on the database: the writer queues.
public final class EventPipeline: @unchecked Sendable {
    private let tracer: Tracer
    private let identity: IdentitySource
    private let writer: StoreWriter
    private let metrics: AgentMetrics
    private let scope: CgroupSubtree?
    private let logger: Logger
    /// What each workload resolved: fed by the DNS answers below, read to
    /// name connections' peers.
    public let names: ResolvedNames
    /// Set once the policy engine exists (it needs the store and the enforcer).
    public var policy: PolicyEngine?

    private let lock = Mutex()
    private var stopFlag = false
    private var counts = PipelineCounts()
    private var thread: Thread?
    private let finished = DispatchSemaphore(value: 0)
    public private(set) var failure: Error?

    public init(tracer: Tracer, identity: IdentitySource, writer: StoreWriter, metrics: AgentMetrics,
                scope: CgroupSubtree?, names: ResolvedNames, logger: Logger) {
        self.names = names
        self.tracer = tracer
        self.identity = identity
        self.writer = writer
        self.metrics = metrics
        self.scope = scope
        self.logger = logger
    }

    public var snapshot: PipelineCounts { lock.withLock { counts } }

    public func start() {
        let t = Thread { [self] in
            self.loop()
            self.finished.signal()
        }
        t.name = "connguard-events"
        thread = t
        t.start()
    }

    /// Stops reading after draining what the kernel holds; returns when done.
    public func stop() {
        lock.withLock { stopFlag = true }
        if thread != nil {
            finished.wait()
            thread = nil
        }
    }

    /// Feeds the connections that were established before the tracer
    /// attached through the same path as live events (scope, identity,
    /// verdict, storage, metrics); then keeps what it takes to drop their
    /// copies seen live. Call before start(), so that they come before the
    /// live events. Returns how many were in scope.
    @discardableResult
    public func feed(_ snapshot: ConnectionSnapshot) -> UInt64 {
        precondition(thread == nil, "feed() after start()")
        var tally = Tally(cells: directions.count * verdicts.count)
        for e in snapshot.events { handle(ConnectionRecord(e, source: .snapshot), &tally) }
        let seeded = tally.counts.connects + tally.counts.accepts
        tally.counts.seeded = seeded
        publish(&tally)
        var rest = snapshot
        rest.events = []
        seenAtStart = rest
        return seeded
    }

    /// What the pipeline counted since it last published: the per-event work
    /// is a few adds, and the metrics and `counts` (behind the lock) are
    /// updated once per batch.
    private struct Tally {
        var counts = PipelineCounts()
        /// Indexed by (direction, verdict), so the per-event work is one add.
        var byVerdict: [Int64]
        /// Handed to the writer a batch at a time (one lock, not one per
        /// event): when 1024 wait, and at every publish.
        var pending: [StoredConnection] = []
        init(cells: Int) {
            byVerdict = [Int64](repeating: 0, count: cells)
            pending.reserveCapacity(1024)
        }
    }
    private let directions = ConnectionEvent.Direction.allCases
    private let verdicts = Verdict.allCases

    /// The connections found at start (their events already fed), to drop a
    /// live copy of one of them.
    /// Set by feed() before the event thread starts; read for every event
    /// on that thread only (so no dynamic exclusivity check).
    @exclusivity(unchecked) private var seenAtStart = ConnectionSnapshot.empty

    /// Denials from the enforcement programs, on their reader's thread: the
    /// same path as every other record, with a tally of that thread's own.
    public func handleDenials(_ events: [ConnectionEvent]) {
        var tally = Tally(cells: directions.count * verdicts.count)
        for e in events { handle(ConnectionRecord(e, source: .denied), &tally) }
        publish(&tally)
    }

    /// The one path of every record: scope, identity, verdict, then the
    /// store, the metrics and (through the verdict) the baseline.
    private func handle(_ r: ConnectionRecord, _ tally: inout Tally) {
        let n = r.count
        var e = r.event
        if case .counted = r.source { tally.counts.countedInKernel += n }
        if let scope, !scope.contains(e.cgroupID) {
            tally.counts.outOfScope += n
            return
        }
        // The time first: past the start-up window, no hashing per event.
        if r.source == .traced, e.timeNanoseconds <= seenAtStart.completedAt, seenAtStart.isSeenAgain(e) { return }
        if r.source == .denied { nameServer(&e) } else { rememberUDPServer(e) }
        let who = identity.resolve(e)
        if who.isUnknown { tally.counts.unattributed += n }
        if e.direction == .connect { e.peerName = names.name(of: e.peer, for: who.workload, at: e.timeNanoseconds) }
        var expectedNames: [String] = []
        let judged: PolicyEngine.Judgement
        if r.source == .denied {
            // The kernel decided; nothing to learn from a refusal.
            judged = PolicyEngine.Judgement(verdict: .denied, peerWorkload: policy?.peerWorkload(of: e))
            if e.direction == .connect { expectedNames = policy?.namesAllowing(e, workload: who.workload) ?? [] }
            logger.notice("denied", metadata: [
                "event": "\(e.direction.rawValue)", "workload": "\(who.workload)",
                "peer": "\(e.peer)", "peer_workload": "\(judged.peerWorkload ?? "-")",
                "port": "\(e.direction == .connect ? e.destinationPort : e.localPort)",
                "peer_name": "\(e.peerName ?? "-")",
                "not_an_address_of": "\(expectedNames.isEmpty ? "-" : expectedNames.joined(separator: ","))",
            ])
        } else {
            judged = policy?.judge(e, identity: who, count: Int64(n)) ?? PolicyEngine.Judgement(verdict: .allowed, peerWorkload: nil)
            // Connects and accepts that happened (a denial is neither).
            if e.direction == .connect { tally.counts.connects += n } else { tally.counts.accepts += n }
        }
        tally.byVerdict[directions.firstIndex(of: e.direction)! * verdicts.count + verdicts.firstIndex(of: judged.verdict)!] += Int64(n)
        let repeatCount: Int64? = if case .counted = r.source { Int64(n) } else { nil }
        tally.pending.append(StoredConnection(event: e, identity: who, verdict: judged.verdict, peerWorkload: judged.peerWorkload,
                                              repeatCount: repeatCount, expectedNames: expectedNames))
        if tally.pending.count >= 1024 { submitPending(&tally) }
    }

    /// A socket bound before the enforcement programs attached (on the first
    /// enforce) has no owner of theirs: the tracer's record of listen()
    /// names the server of a denied accept.
    private func nameServer(_ e: inout ConnectionEvent) {
        guard e.direction == .accept, !e.processKnown else { return }
        // A UDP server bound before enforcement was attached has no owner in
        // the kernel's socket storage either; the datagrams it received while
        // traced named it.
        let owner = e.proto == .udp
            ? udpLock.withLock { udpServers[UDPServer(cgroupID: e.cgroupID, port: e.localPort)] }
            : tracer.listenerOwner(netns: e.netns, port: e.localPort, family: e.family)
        guard let owner else { return }
        (e.pid, e.uid, e.comm) = (owner.pid, owner.uid, owner.comm)
        e.processKnown = true
    }

    /// The process that last received a traced datagram on each UDP server
    /// port, by cgroup (bounded: emptied past 65,536 entries).
    private struct UDPServer: Hashable {
        var cgroupID: UInt64
        var port: UInt16
    }

    private let udpLock = Mutex()
    private var udpServers: [UDPServer: (pid: UInt32, uid: UInt32, comm: String)] = [:]

    private func rememberUDPServer(_ e: ConnectionEvent) {
        guard e.proto == .udp, e.direction == .accept, e.processKnown, e.pid != 0 else { return }
        let key = UDPServer(cgroupID: e.cgroupID, port: e.localPort)
        udpLock.withLock {
            if udpServers[key]?.pid == e.pid { return }
            if udpServers.count >= 65_536 { udpServers.removeAll() }
            udpServers[key] = (e.pid, e.uid, e.comm)
        }
    }

    /// Folds in what the kernel counted instead of sending (once a second,
    /// and at the end).
    private func takeRepeats(_ tally: inout Tally) throws {
        for r in try tracer.takeRepeats() { handle(r.record, &tally) }
        lastRepeatsTaken = BootClock.now(CLOCK_MONOTONIC)
    }
    @exclusivity(unchecked) private var lastRepeatsTaken: Int64 = 0

    private func submitPending(_ tally: inout Tally) {
        guard !tally.pending.isEmpty else { return }
        writer.submit(contentsOf: tally.pending)
        tally.pending.removeAll(keepingCapacity: true)
    }

    private func publish(_ tally: inout Tally) {
        submitPending(&tally)
        guard tally.counts != PipelineCounts() else { return }
        for (i, n) in tally.byVerdict.enumerated() where n > 0 {
            metrics.countEvent(directions[i / verdicts.count], verdicts[i % verdicts.count], by: n)
        }
        metrics.countUnattributed(by: Int64(tally.counts.unattributed))
        lock.withLock {
            counts.connects += tally.counts.connects
            counts.accepts += tally.counts.accepts
            counts.outOfScope += tally.counts.outOfScope
            counts.unattributed += tally.counts.unattributed
            counts.seeded += tally.counts.seeded
            counts.countedInKernel += tally.counts.countedInKernel
        }
        tally.counts = PipelineCounts()
        for i in tally.byVerdict.indices { tally.byVerdict[i] = 0 }
    }

    private func loop() {
        // Published once per poll round rather than per event.
        var tally = Tally(cells: directions.count * verdicts.count)
        do {
            try tracer.run(
                shouldStop: { self.lock.withLock { self.stopFlag } },
                onRecord: { record in
                    switch record {
                    case let .cgroup(c):
                        self.scope?.apply(c)
                        self.identity.apply(c)
                        if !c.created, c.hierarchyID == 0 { self.policy?.cgroupRemoved(c.cgroupID) }
                    case let .connection(e):
                        self.handle(ConnectionRecord(e, source: .traced), &tally)
                    case let .dns(m):
                        if let scope = self.scope, !scope.contains(m.cgroupID) { return }
                        let who = self.identity.identity(forCgroup: m.cgroupID).workload
                        let trusted = self.policy?.trustsResolver(m.resolver, port: m.resolverPort, proto: m.proto, workload: who) ?? true
                        self.names.record(m, workload: who, trusted: trusted)
                    }
                },
                onIdle: {
                    if BootClock.now(CLOCK_MONOTONIC) - self.lastRepeatsTaken >= 1_000_000_000 {
                        do { try self.takeRepeats(&tally) } catch { self.logger.error("reading the kernel's repeat counts: \(error)") }
                    }
                    self.publish(&tally)
                })
            try takeRepeats(&tally)
            publish(&tally)
        } catch {
            logger.error("event pipeline stopped: \(error)")
            failure = error
        }
    }
}
