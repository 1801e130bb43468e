import ConnGuardCore

/// Decides which events the store keeps one by one, as rows of `event`.
///
/// Every event is counted in its aggregate (workload, direction, peer, port,
/// verdict: count, failures, first and last seen), whatever this says. Rows
/// cost far more: an insert into two indexes, the WAL, the checkpoint, and
/// later the delete when retention drops them, about ten microseconds of CPU
/// each. A storm of 100,000 connections a second would take a whole core
/// just to keep rows that retention throws away within seconds. So, in each
/// second of event time:
///   - the first event of every connection (aggregate key) is kept, up to
///     `newConnectionsPerSecond`: a connection never seen before always
///     leaves a row with its exact time, process and ports;
///   - repeats of connections already kept that second are kept while fewer
///     than `eventsPerSecond` rows were kept in the second;
///   - the rest are kept only in their aggregate, and counted
///     (`connguard status`: events_aggregated_only; metric
///     connguard_events_aggregated_only_total).
/// Used on the writer's thread only.
public final class EventSampler {
    public struct Budget: Sendable, Equatable {
        /// Rows a second for repeats of a connection.
        public var eventsPerSecond: Int
        /// Rows a second for the first event of each connection in that
        /// second (a scan of many ports or peers). At least eventsPerSecond.
        public var newConnectionsPerSecond: Int

        public init(eventsPerSecond: Int, newConnectionsPerSecond: Int? = nil) {
            self.eventsPerSecond = max(0, eventsPerSecond)
            self.newConnectionsPerSecond = max(self.eventsPerSecond, newConnectionsPerSecond ?? 10 * self.eventsPerSecond)
        }
    }

    public let budget: Budget
    private var second: Int64 = .min
    private var kept = 0
    private var connections: Set<EventStore.AggregateKey> = []

    public init(budget: Budget) {
        self.budget = budget
    }

    /// Whether to keep a row for this event (`time`: wall-clock nanoseconds).
    func keep(_ key: EventStore.AggregateKey, at time: Int64) -> Bool {
        // Events from several CPUs come nearly, not exactly, in time order:
        // one a little late belongs to the current second, not to a new one.
        let s = time / 1_000_000_000
        if s > second {
            second = s
            kept = 0
            connections.removeAll(keepingCapacity: true)
        }
        if kept >= budget.newConnectionsPerSecond { return false }
        let isNew = connections.insert(key).inserted
        if isNew || kept < budget.eventsPerSecond {
            kept += 1
            return true
        }
        return false
    }
}
