import ConnGuardCore
import Foundation

/// Takes events from the agent's event loop without ever blocking it, and
/// writes them to the store in batches on its own thread.
///
/// The queue is bounded: when the database cannot keep up and the queue is
/// full, new events are refused and counted in `Counters.dropped`; events
/// lost to a failed write are counted in `Counters.failed`. Loss is never
/// silent: the agent exports both.
public final class StoreWriter: @unchecked Sendable {
    public struct Options: Sendable {
        /// Events held in memory at most, waiting to be written.
        public var capacity: Int
        /// Write as soon as this many are waiting...
        public var batchSize: Int
        /// ...or when the oldest waiting one has waited this long.
        public var flushInterval: Duration
        /// The most events written in one transaction.
        public var maxTransaction: Int
        /// When set, `prune` runs every `pruneInterval` on a thread of its own.
        public var retention: Retention?
        public var pruneInterval: Duration
        /// Which events get a row of their own (EventSampler); nil: all.
        public var rowBudget: EventSampler.Budget?

        public init(capacity: Int = 200_000, batchSize: Int = 2_000, flushInterval: Duration = .milliseconds(250),
                    maxTransaction: Int = 20_000, retention: Retention? = nil, pruneInterval: Duration = .seconds(60),
                    rowBudget: EventSampler.Budget? = nil) {
            self.capacity = max(1, capacity)
            self.batchSize = max(1, batchSize)
            self.flushInterval = flushInterval
            self.maxTransaction = max(1, maxTransaction)
            self.retention = retention
            self.pruneInterval = pruneInterval
            self.rowBudget = rowBudget
        }
    }

    /// How long things are kept.
    public struct Retention: Sendable, Equatable {
        public var eventMaxAge: Duration
        public var maxEvents: Int
        public var aggregateMaxAge: Duration

        /// A day of events, at most a million of them; aggregates for 90 days.
        public init(eventMaxAge: Duration = .seconds(86_400), maxEvents: Int = 1_000_000,
                    aggregateMaxAge: Duration = .seconds(90 * 86_400)) {
            self.eventMaxAge = eventMaxAge
            self.maxEvents = maxEvents
            self.aggregateMaxAge = aggregateMaxAge
        }
    }

    public struct Counters: Sendable, Equatable {
        /// Events accepted into the queue (an entry of kernel-counted repeats
        /// counts as its events, here and below).
        public var accepted: UInt64 = 0
        /// Committed to the database (as a row, or in its aggregate only).
        public var written: UInt64 = 0
        /// Of those, counted in their aggregate without a row of their own
        /// (over the row budget).
        public var aggregatedOnly: UInt64 = 0
        /// Refused because the queue was full (lost).
        public var dropped: UInt64 = 0
        /// Lost because their write failed.
        public var failed: UInt64 = 0
        /// Transactions committed.
        public var transactions: UInt64 = 0
        /// Waiting in the queue or being written now.
        public var pending: Int = 0
        public var lastError: String?
        public var prunes: UInt64 = 0
        public var pruned: UInt64 = 0

        /// Everything lost, whatever the cause.
        public var lost: UInt64 { dropped + failed }
    }

    public let store: EventStore
    public let options: Options

    private let condition = NSCondition()
    private var queue: [StoredConnection] = []
    private var spare: [StoredConnection] = []
    private var counters = Counters()
    /// Events accepted / finished (written or failed) so far, for flush().
    private var acceptedSeq: UInt64 = 0
    private var finishedSeq: UInt64 = 0
    private var inFlight = 0
    private var flushWaiters = 0
    private var stopping = false
    private var running = true
    private var thread: Thread?
    private var pruneThread: Thread?
    /// The writer thread's only.
    private let sampler: EventSampler?

    public init(store: EventStore, options: Options = Options()) {
        self.store = store
        self.options = options
        sampler = options.rowBudget.map(EventSampler.init)
        queue.reserveCapacity(min(options.capacity, 65_536))
        let t = Thread { self.run() }
        t.name = "connguard-store-writer"
        thread = t
        t.start()
        if options.retention != nil {
            let p = Thread { self.runPrune() }
            p.name = "connguard-store-prune"
            pruneThread = p
            p.start()
        }
    }

    /// Queues one event; never blocks beyond a short lock. False (and
    /// counted as dropped) when the queue is full or the writer is closed.
    @discardableResult
    public func submit(_ connection: StoredConnection) -> Bool {
        condition.lock()
        defer { condition.unlock() }
        guard !stopping, queue.count + inFlight < options.capacity else {
            counters.dropped += UInt64(connection.eventCount)
            return false
        }
        queue.append(connection)
        acceptedSeq += 1
        counters.accepted += UInt64(connection.eventCount)
        // Wake the writer when the queue stops being empty (it then waits at
        // most flushInterval for more) and when a full batch is ready.
        if queue.count == 1 || queue.count == options.batchSize { condition.broadcast() }
        return true
    }

    /// Queues several; returns how many were taken (the rest are dropped).
    @discardableResult
    public func submit<S: Collection>(contentsOf connections: S) -> Int where S.Element == StoredConnection {
        condition.lock()
        defer { condition.unlock() }
        let wasEmpty = queue.isEmpty
        let room = stopping ? 0 : max(0, options.capacity - queue.count - inFlight)
        let taken = min(room, connections.count)
        queue.append(contentsOf: connections.prefix(taken))
        acceptedSeq += UInt64(taken)
        // Counters count events: an entry of kernel-counted repeats is many.
        counters.accepted += UInt64(connections.prefix(taken).reduce(0) { $0 + $1.eventCount })
        counters.dropped += UInt64(connections.dropFirst(taken).reduce(0) { $0 + $1.eventCount })
        if (wasEmpty && taken > 0) || queue.count >= options.batchSize { condition.broadcast() }
        return taken
    }

    /// Waits until every event accepted before the call is written (or
    /// counted as failed).
    public func flush() {
        condition.lock()
        defer { condition.unlock() }
        let target = acceptedSeq
        flushWaiters += 1
        condition.broadcast()
        while finishedSeq < target && running { condition.wait() }
        flushWaiters -= 1
    }

    /// Flushes, then stops the threads. Later submits are dropped (counted).
    public func close() {
        condition.lock()
        stopping = true
        condition.broadcast()
        while running { condition.wait() }
        condition.unlock()
        pruneStop.lock()
        pruneStopped = true
        pruneStop.broadcast()
        while pruneThread != nil && !pruneExited { pruneStop.wait() }
        pruneStop.unlock()
    }

    public var snapshot: Counters {
        condition.lock()
        defer { condition.unlock() }
        var c = counters
        c.pending = queue.count + inFlight
        return c
    }

    // MARK: - The writing thread

    private func run() {
        let interval = Double(options.flushInterval.components.seconds)
            + Double(options.flushInterval.components.attoseconds) / 1e18
        condition.lock()
        while true {
            while queue.isEmpty && !stopping { condition.wait() }
            if queue.isEmpty && stopping { break }
            let deadline = Date(timeIntervalSinceNow: interval)
            while queue.count < options.batchSize && !stopping && flushWaiters == 0 {
                if !condition.wait(until: deadline) { break }
            }
            swap(&queue, &spare)
            let batch = spare
            spare.removeAll(keepingCapacity: true)
            inFlight = batch.count
            condition.unlock()

            var written = 0, failed = 0, transactions = 0, aggregatedOnly = 0
            var lastError: String?
            var start = 0
            while start < batch.count {
                let end = min(start + options.maxTransaction, batch.count)
                let events = batch[start..<end].reduce(0) { $0 + $1.eventCount }
                do {
                    aggregatedOnly += try store.append(Array(batch[start..<end]), sampler: sampler).aggregatedOnly
                    written += events
                    transactions += 1
                } catch {
                    failed += events
                    lastError = StoreError.describe(error)
                }
                start = end
            }

            condition.lock()
            inFlight = 0
            counters.written += UInt64(written)
            counters.aggregatedOnly += UInt64(aggregatedOnly)
            counters.failed += UInt64(failed)
            counters.transactions += UInt64(transactions)
            if let lastError { counters.lastError = lastError }
            finishedSeq += UInt64(batch.count)
            condition.broadcast()
        }
        running = false
        condition.broadcast()
        condition.unlock()
    }

    // MARK: - Retention

    private let pruneStop = NSCondition()
    private var pruneStopped = false
    private var pruneExited = false

    private func runPrune() {
        guard let retention = options.retention else { return }
        let interval = Double(options.pruneInterval.components.seconds)
            + Double(options.pruneInterval.components.attoseconds) / 1e18
        while true {
            do {
                let r = try store.prune(maxAge: retention.eventMaxAge, maxEvents: retention.maxEvents,
                                        aggregateMaxAge: retention.aggregateMaxAge)
                condition.lock()
                counters.prunes += 1
                counters.pruned += UInt64(r.eventsByAge + r.eventsByCount)
                condition.unlock()
            } catch {
                condition.lock()
                counters.lastError = "prune: " + StoreError.describe(error)
                condition.unlock()
            }
            pruneStop.lock()
            let deadline = Date(timeIntervalSinceNow: max(0.01, interval))
            while !pruneStopped {
                if !pruneStop.wait(until: deadline) { break }
            }
            let stop = pruneStopped
            pruneStop.unlock()
            if stop { break }
        }
        pruneStop.lock()
        pruneExited = true
        pruneStop.broadcast()
        pruneStop.unlock()
    }
}
