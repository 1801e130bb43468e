import ConnGuardCore
import ConnGuardStore
import ConnGuardTracer
import Foundation
import Logging

/// Resolves who made a connection; implemented by ConnGuardIdentity's resolver.
public protocol IdentitySource: AnyObject, Sendable {
    /// Follows cgroup creation and removal, in ring-buffer order, so that a
    /// container's cgroup is known before its first connection is resolved.
    func apply(_ event: CgroupEvent)
    func resolve(_ event: ConnectionEvent) -> Identity
    /// cgroups currently known.
    var trackedCgroups: Int { get }
    /// Who a cgroup belongs to (for arming the cgroups of a workload).
    func identity(forCgroup id: UInt64) -> Identity
}

/// Counts the pipeline keeps for `connguard status`.
public struct PipelineCounts: Sendable, Equatable {
    public var connects: UInt64 = 0
    public var accepts: UInt64 = 0
    public var outOfScope: UInt64 = 0
    public var unattributed: UInt64 = 0
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
    /// Set once the policy engine exists (it needs the store and the enforcer).
    public var policy: PolicyEngine?

    private let lock = Mutex()
    private var stopFlag = false
    private var counts = PipelineCounts()
    private var thread: Thread?
    private let finished = DispatchSemaphore(value: 0)
    public private(set) var failure: Error?

    public init(tracer: Tracer, identity: IdentitySource, writer: StoreWriter, metrics: AgentMetrics,
                scope: CgroupSubtree?, logger: Logger) {
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

    private func loop() {
        // Per-batch tallies, published to metrics once per poll round rather
        // than per event.
        var batch = PipelineCounts()
        // Indexed by (direction, verdict), so the per-event work is one add.
        let directions = ConnectionEvent.Direction.allCases, verdicts = Verdict.allCases
        var byVerdict = [Int64](repeating: 0, count: directions.count * verdicts.count)
        // Handed to the writer a batch at a time (one lock, not one per
        // event), at the end of every poll round and whenever 1024 wait.
        var pending: [StoredConnection] = []
        pending.reserveCapacity(1024)
        func submitPending() {
            guard !pending.isEmpty else { return }
            writer.submit(contentsOf: pending)
            pending.removeAll(keepingCapacity: true)
        }
        do {
            try tracer.run(
                shouldStop: { self.lock.withLock { self.stopFlag } },
                onRecord: { record in
                    switch record {
                    case let .cgroup(c):
                        self.scope?.apply(c)
                        self.identity.apply(c)
                    case let .connection(e):
                        if let scope = self.scope, !scope.contains(e.cgroupID) {
                            batch.outOfScope += 1
                            return
                        }
                        let who = self.identity.resolve(e)
                        if who.isUnknown { batch.unattributed += 1 }
                        let verdict = self.policy?.verdict(for: e, identity: who) ?? .allowed
                        if e.direction == .connect { batch.connects += 1 } else { batch.accepts += 1 }
                        byVerdict[directions.firstIndex(of: e.direction)! * verdicts.count + verdicts.firstIndex(of: verdict)!] += 1
                        pending.append(StoredConnection(event: e, identity: who, verdict: verdict))
                        if pending.count >= 1024 { submitPending() }
                    }
                },
                onIdle: {
                    submitPending()
                    guard batch != PipelineCounts() else { return }
                    for (i, n) in byVerdict.enumerated() where n > 0 {
                        self.metrics.countEvent(directions[i / verdicts.count], verdicts[i % verdicts.count], by: n)
                    }
                    self.metrics.countUnattributed(by: Int64(batch.unattributed))
                    self.lock.withLock {
                        self.counts.connects += batch.connects
                        self.counts.accepts += batch.accepts
                        self.counts.outOfScope += batch.outOfScope
                        self.counts.unattributed += batch.unattributed
                    }
                    batch = PipelineCounts()
                    for i in byVerdict.indices { byVerdict[i] = 0 }
                })
        } catch {
            logger.error("event pipeline stopped: \(error)")
            failure = error
        }
    }
}
