import ConnGuardCore
import Foundation
import GRDB
import GRDBSQLite
import Glibc

// Appending events: one transaction per batch, events and their aggregates.
extension EventStore {
    // MARK: - Writing

    /// Stores a batch in one transaction: all of it or, on error, none of it.
    /// Inserts the events and folds them into the aggregates. Sets nothing
    /// on the values passed; returns the ids given, in order (consecutive).
    @discardableResult
    public func append(_ batch: [StoredConnection]) throws -> ClosedRange<Int64>? {
        try append(batch, sampler: nil).ids
    }

    /// What one append did.
    public struct AppendResult: Sendable, Equatable {
        /// The ids of the rows made, in order (consecutive); nil if none.
        public var ids: ClosedRange<Int64>?
        /// Events counted in their aggregate only, without a row (the sampler
        /// said no).
        public var aggregatedOnly: Int
    }

    /// Stores a batch in one transaction, keeping a row only for the events
    /// `sampler` chooses (all of them without one); every event is folded
    /// into its aggregate.
    public func append(_ batch: [StoredConnection], sampler: EventSampler?) throws -> AppendResult {
        guard !batch.isEmpty else { return AppendResult(ids: nil, aggregatedOnly: 0) }
        do {
            return try database.write { db in
                try interner.withCache { cache in
                    try EventStore.append(batch, sampler: sampler, cache: &cache, db)
                }
            }
        } catch {
            interner.reset()  // ids made in a rolled-back transaction are gone
            throw error
        }
    }

    struct AggregateKey: Hashable {
        var workload: Int64
        var direction: Int64
        var peerHigh: UInt64
        var peerLow: UInt64
        var port: Int64
        var verdict: Int64
        var proto: Int64
    }

    private struct AggregateValue {
        var first: Int64
        var last: Int64
        var count: Int64
        var failed: Int64
    }

    private static func step(_ statement: OpaquePointer?, _ db: Database, _ sql: String) throws {
        let rc = sqlite3_step(statement)
        guard rc == SQLITE_DONE else {
            throw DatabaseError(resultCode: ResultCode(rawValue: rc),
                                message: String(cString: sqlite3_errmsg(db.sqliteConnection)), sql: sql)
        }
    }

    /// The hot path (50,000+ events a second): values are bound straight on
    /// the SQLite statement, without GRDB's boxed arguments.
    private static func append(_ batch: [StoredConnection], sampler: EventSampler?, cache: inout InternCache,
                               _ db: Database) throws -> AppendResult {
        // GRDB finalizes a statement when its object goes: keep them for the
        // whole of this function, whose raw pointers they own.
        let statements = (insert: try db.makeStatement(sql: StoreSchema.insertEvent),
                          upsert: try db.makeStatement(sql: StoreSchema.upsertAggregate),
                          touch: try db.makeStatement(sql: StoreSchema.touchIdentity))
        return try withExtendedLifetime(statements) {
            try append(batch, sampler: sampler, cache: &cache, db, insert: statements.insert.sqliteStatement,
                       upsert: statements.upsert.sqliteStatement, touch: statements.touch.sqliteStatement)
        }
    }

    private static func append(_ batch: [StoredConnection], sampler: EventSampler?, cache: inout InternCache,
                               _ db: Database, insert stmt: SQLiteStatement, upsert: SQLiteStatement,
                               touch: SQLiteStatement) throws -> AppendResult {
        var aggregates: [AggregateKey: AggregateValue] = [:]
        var firstID: Int64?, lastID: Int64 = 0
        var aggregatedOnly = 0
        var previous: (identity: Identity, ids: (identity: Int64, workload: Int64))?
        var lastEventOfIdentity: [Int64: Int64] = [:]
        for c in batch {
            let ids: (identity: Int64, workload: Int64)
            if let p = previous, p.identity == c.identity {
                ids = p.ids
            } else {
                ids = try cache.ids(for: c.identity, cgroup: c.event.cgroupID, db)
                previous = (c.identity, ids)
            }
            let e = c.event
            let accept = e.direction == .accept
            let local = StoreAddress.Raw(accept ? e.destination : e.source)
            let peer = StoreAddress.Raw(accept ? e.source : e.destination)
            let direction = StoreCode.direction(e.direction)
            let verdict = StoreCode.verdict(c.verdict)
            let key = AggregateKey(workload: ids.workload, direction: direction, peerHigh: peer.high, peerLow: peer.low,
                                   port: Int64(e.destinationPort), verdict: verdict, proto: StoreCode.proto(e.proto))
            let n = c.repeatCount ?? 1
            let failed: Int64 = e.outcome == .failed ? n : 0
            let t = e.timeNanoseconds
            if let i = aggregates.index(forKey: key) {
                aggregates.values[i].first = min(aggregates.values[i].first, t)
                aggregates.values[i].last = max(aggregates.values[i].last, t)
                aggregates.values[i].count += n
                aggregates.values[i].failed += failed
            } else {
                aggregates[key] = AggregateValue(first: t, last: t, count: n, failed: failed)
            }
            if c.repeatCount != nil {
                aggregatedOnly += Int(n)
                continue
            }
            if let sampler, !sampler.keep(key, at: t) {
                aggregatedOnly += 1
                continue
            }
            sqlite3_reset(stmt)
            sqlite3_bind_int64(stmt, 1, e.timeNanoseconds)
            sqlite3_bind_int64(stmt, 2, ids.workload)
            sqlite3_bind_int64(stmt, 3, ids.identity)
            sqlite3_bind_int64(stmt, 4, direction)
            sqlite3_bind_int64(stmt, 5, StoreCode.outcome(e.outcome))
            sqlite3_bind_int64(stmt, 6, Int64(e.error))
            sqlite3_bind_int64(stmt, 7, Int64(e.pid))
            var comm = e.comm
            comm.withUTF8 { u in
                u.withMemoryRebound(to: CChar.self) { c in
                    if let p = c.baseAddress, c.count > 0 {
                        _ = sqlite3_bind_text(stmt, 8, p, Int32(c.count), SQLITE_TRANSIENT)
                    } else {
                        _ = sqlite3_bind_text(stmt, 8, "", 0, SQLITE_TRANSIENT)
                    }
                }
            }
            sqlite3_bind_int64(stmt, 9, Int64(e.uid))
            sqlite3_bind_int64(stmt, 10, Int64(bitPattern: e.cgroupID))
            sqlite3_bind_int64(stmt, 11, Int64(e.netns))
            local.bind(stmt, 12)
            sqlite3_bind_int64(stmt, 13, Int64(e.localPort))
            peer.bind(stmt, 14)
            sqlite3_bind_int64(stmt, 15, Int64(e.remotePort))
            sqlite3_bind_int64(stmt, 16, StoreCode.hook(e.hook))
            sqlite3_bind_int64(stmt, 17, e.processKnown ? 1 : 0)
            sqlite3_bind_int64(stmt, 18, verdict)
            if let w = c.peerWorkload {
                sqlite3_bind_int64(stmt, 19, try cache.workloadID(w, namespace: nil, db))
            } else {
                sqlite3_bind_null(stmt, 19)
            }
            sqlite3_bind_int64(stmt, 20, StoreCode.proto(e.proto))
            for (i, text) in [(Int32(21), e.peerName), (22, c.expectedNames.isEmpty ? nil : c.expectedNames.joined(separator: ","))] {
                if var t = text {
                    t.withUTF8 { u in
                        u.withMemoryRebound(to: CChar.self) { p in _ = sqlite3_bind_text(stmt, i, p.baseAddress, Int32(p.count), SQLITE_TRANSIENT) }
                    }
                } else {
                    sqlite3_bind_null(stmt, i)
                }
            }
            try step(stmt, db, StoreSchema.insertEvent)
            let rowID = db.lastInsertedRowID
            if firstID == nil { firstID = rowID }
            lastID = rowID
            lastEventOfIdentity[ids.identity] = rowID
        }
        sqlite3_reset(stmt)
        sqlite3_clear_bindings(stmt)
        for (k, v) in aggregates {
            sqlite3_reset(upsert)
            sqlite3_bind_int64(upsert, 1, k.workload)
            sqlite3_bind_int64(upsert, 2, k.direction)
            StoreAddress.Raw(high: k.peerHigh, low: k.peerLow).bind(upsert, 3)
            sqlite3_bind_int64(upsert, 4, k.port)
            sqlite3_bind_int64(upsert, 5, k.verdict)
            sqlite3_bind_int64(upsert, 6, v.first)
            sqlite3_bind_int64(upsert, 7, v.last)
            sqlite3_bind_int64(upsert, 8, v.count)
            sqlite3_bind_int64(upsert, 9, v.failed)
            sqlite3_bind_int64(upsert, 10, k.proto)
            try step(upsert, db, StoreSchema.upsertAggregate)
        }
        for (identity, event) in lastEventOfIdentity {
            sqlite3_reset(touch)
            sqlite3_bind_int64(touch, 1, event)
            sqlite3_bind_int64(touch, 2, identity)
            try step(touch, db, StoreSchema.touchIdentity)
        }
        return AppendResult(ids: firstID.map { $0...lastID }, aggregatedOnly: aggregatedOnly)
    }
}
