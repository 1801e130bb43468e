import ConnGuardCore
import Foundation
import GRDB
import GRDBSQLite
import Glibc

// Retention: events by age and count, aggregates by age.
extension EventStore {
    // MARK: - Retention

    public struct PruneResult: Sendable, Equatable {
        public var eventsByAge = 0
        public var eventsByCount = 0
        public var aggregates = 0
        public var identities = 0
        public init() {}
    }

    /// Deletes events older than `maxAge` or beyond the newest `maxEvents`,
    /// and aggregates last seen longer than `aggregateMaxAge` ago. Works in
    /// chunks of `chunk` rows, each its own transaction, so that appends are
    /// never held up for long.
    @discardableResult
    public func prune(maxAge: Duration, maxEvents: Int, aggregateMaxAge: Duration,
                      now: Int64 = EventStore.now(), chunk: Int = 10_000) throws -> PruneResult {
        guard maxEvents >= 0 else { throw StoreError.invalidRetention("maxEvents \(maxEvents) is negative") }
        guard chunk >= 1 else { throw StoreError.invalidRetention("chunk \(chunk) is not positive") }
        let eventCutoff = try EventStore.cutoff(now: now, maxAge: maxAge)
        let aggregateCutoff = try EventStore.cutoff(now: now, maxAge: aggregateMaxAge)
        var result = PruneResult()
        while true {
            let n = try database.write { db -> Int in
                try db.execute(sql: "DELETE FROM event WHERE id IN (SELECT id FROM event WHERE time < ? ORDER BY time LIMIT ?)",
                               arguments: [eventCutoff, chunk])
                return db.changesCount
            }
            result.eventsByAge += n
            if n < chunk { break }
        }
        while true {
            let n = try database.write { db -> Int in
                let count = try Int.fetchOne(db, sql: "SELECT count(*) FROM event") ?? 0
                let excess = min(count - maxEvents, chunk)
                guard excess > 0 else { return 0 }
                try db.execute(sql: "DELETE FROM event WHERE id IN (SELECT id FROM event ORDER BY id LIMIT ?)",
                               arguments: [excess])
                return db.changesCount
            }
            result.eventsByCount += n
            if n < chunk { break }
        }
        while true {
            let n = try database.write { db -> Int in
                try db.execute(sql: """
                    DELETE FROM connection_aggregate WHERE id IN
                        (SELECT id FROM connection_aggregate WHERE last_seen < ? LIMIT ?)
                    """, arguments: [aggregateCutoff, chunk])
                return db.changesCount
            }
            result.aggregates += n
            if n < chunk { break }
        }
        if result.eventsByAge + result.eventsByCount > 0 {
            result.identities = try database.write { db -> Int in
                // Ids only grow: an identity whose last event is below the
                // oldest id kept has no event left.
                try db.execute(sql: """
                    DELETE FROM identity WHERE last_event_id <
                        (SELECT coalesce(min(id), 9223372036854775807) FROM event)
                    """)
                let n = db.changesCount
                if n > 0 { interner.reset() }
                return n
            }
        }
        return result
    }

    private static func cutoff(now: Int64, maxAge: Duration) throws -> Int64 {
        let (seconds, attoseconds) = maxAge.components
        guard seconds >= 0 else { throw StoreError.invalidRetention("a negative age") }
        let (ns, overflow) = seconds.multipliedReportingOverflow(by: 1_000_000_000)
        guard !overflow else { return Int64.min }  // older than anything: keep all
        let age = ns + attoseconds / 1_000_000_000
        let (cut, o2) = now.subtractingReportingOverflow(age)
        return o2 ? Int64.min : cut
    }
}
