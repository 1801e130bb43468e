import ConnGuardCore
import Foundation
import GRDB
import GRDBSQLite
import Glibc

/// The agent's embedded database: one SQLite file in WAL mode (readers never
/// block the writer), holding recent connection events and long-lived
/// aggregates. Safe to use from any thread; writes are serialized.
public final class EventStore: Sendable {
    public static let defaultPath = "/var/lib/connguard/connguard.db"

    public struct Options: Sendable {
        /// Open an existing database for queries only (the CLI beside a
        /// running agent): no migrations, no writes, no file created.
        public var readOnly: Bool
        /// `.normal` (default) survives a crash or kill -9 of the process
        /// with every commit; a power loss may lose the last commits but never
        /// corrupts. `.full` syncs the WAL on every commit.
        public var synchronous: Synchronous
        /// How long to wait for another process's lock, in seconds.
        public var busyTimeout: Double
        /// Later layers' migrations (baselines, rules, modes, audit log),
        /// registered after the store's own.
        public var migrations: [Migration]

        public init(readOnly: Bool = false, synchronous: Synchronous = .normal, busyTimeout: Double = 5,
                    migrations: [Migration] = []) {
            self.readOnly = readOnly
            self.synchronous = synchronous
            self.busyTimeout = busyTimeout
            self.migrations = migrations
        }
    }

    public enum Synchronous: String, Sendable {
        case normal = "NORMAL"
        case full = "FULL"
    }

    /// One schema step of a later layer, e.g. Migration("policy-v1") { db in ... }.
    public struct Migration: Sendable {
        public let identifier: String
        public let migrate: @Sendable (Database) throws -> Void
        public init(_ identifier: String, migrate: @escaping @Sendable (Database) throws -> Void) {
            self.identifier = identifier
            self.migrate = migrate
        }
    }

    public let path: String
    /// The underlying pool, for later layers' own tables in the same file.
    public let database: DatabasePool
    private let interner = Interner()

    /// Opens (creating if needed, unless read-only) the database at `path`.
    /// Missing parent directories are made with mode 0700, a new file 0600
    /// (SQLite gives its -wal and -shm files the same mode).
    public init(path: String = EventStore.defaultPath, options: Options = Options()) throws {
        guard !path.isEmpty else { throw StoreError.invalidPath(path) }
        self.path = path
        if options.readOnly {
            guard access(path, F_OK) == 0 else { throw StoreError.missing(path) }
        } else {
            try EventStore.createFile(path)
        }
        var config = Configuration()
        config.readonly = options.readOnly
        config.busyMode = .timeout(options.busyTimeout)
        config.label = "connguard-store"
        config.maximumReaderCount = 4
        let synchronous = options.synchronous.rawValue
        config.prepareDatabase { db in
            // Pages come from the OS page cache by mmap rather than a read()
            // each, and the writer keeps the hot index pages in its own cache.
            try db.execute(sql: "PRAGMA mmap_size = 268435456")
            if !db.configuration.readonly {
                try db.execute(sql: "PRAGMA synchronous = \(synchronous)")
                try db.execute(sql: "PRAGMA cache_size = -32768")
                try db.execute(sql: "PRAGMA wal_autocheckpoint = 10000")
                try db.execute(sql: "PRAGMA journal_size_limit = 67108864")
            }
        }
        do {
            database = try DatabasePool(path: path, configuration: config)
        } catch {
            throw StoreError.cannotOpen(path, String(describing: error))
        }
        let migrator = EventStore.migrator(options.migrations)
        if options.readOnly {
            let ready = try database.read { db in try migrator.hasCompletedMigrations(db) || migrator.hasBeenSuperseded(db) }
            guard ready else { throw StoreError.notInitialized(path) }
        } else {
            try migrator.migrate(database)
        }
    }

    public static func open(path: String = EventStore.defaultPath, options: Options = Options()) throws -> EventStore {
        try EventStore(path: path, options: options)
    }

    /// The store's migrations, then `extra`.
    public static func migrator(_ extra: [Migration] = []) -> DatabaseMigrator {
        var migrator = DatabaseMigrator()
        StoreSchema.registerMigrations(in: &migrator)
        for m in extra { migrator.registerMigration(m.identifier, migrate: m.migrate) }
        return migrator
    }

    /// Closes the connections (the WAL is checkpointed into the main file).
    /// Any later call throws.
    public func close() throws {
        try database.close()
    }

    /// Wall-clock nanoseconds since the Unix epoch.
    public static func now() -> Int64 { BootClock.now(CLOCK_REALTIME) }

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
                                   port: Int64(e.destinationPort), verdict: verdict)
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

    // MARK: - Queries

    /// Events matching `query`, oldest first (by id with `afterID`).
    public func query(_ query: ConnectionQuery) throws -> [StoredConnection] {
        var out: [StoredConnection] = []
        try self.query(query) { out.append($0) }
        return out
    }

    /// Like `query(_:)`, streaming rows to `body` instead of collecting them
    /// (`--last` results are still collected first, to turn them around).
    public func query(_ query: ConnectionQuery, each body: (StoredConnection) throws -> Void) throws {
        try query.validate()
        try database.read { db in
            var conditions: [String] = []
            var arguments: [(any DatabaseValueConvertible)?] = []
            if let workload = query.workload {
                guard let id = try Int64.fetchOne(db, sql: "SELECT id FROM workload WHERE name = ?", arguments: [workload]) else { return }
                conditions.append("e.workload_id = ?")
                arguments.append(id)
            }
            let (identityCondition, identityArguments) = EventStore.identityFilter(query)
            if let identityCondition {
                // The workloads of those identities too: that lets SQLite use
                // the (workload, time) index rather than scan the time range.
                conditions.append("e.workload_id IN (SELECT workload_id FROM identity WHERE \(identityCondition))")
                arguments += identityArguments
                conditions.append("e.identity_id IN (SELECT id FROM identity WHERE \(identityCondition))")
                arguments += identityArguments
            }
            if let since = query.since { conditions.append("e.time >= ?"); arguments.append(since) }
            if let until = query.until { conditions.append("e.time < ?"); arguments.append(until) }
            if let port = query.port { conditions.append("(e.local_port = ? OR e.peer_port = ?)"); arguments += [port, port] }
            if let peer = query.peer {
                let (condition, values) = StoreAddress.condition("e.peer_addr", peer)
                conditions.append(condition)
                arguments += values
            }
            if let d = query.direction { conditions.append("e.direction = ?"); arguments.append(StoreCode.direction(d)) }
            if let v = query.verdict { conditions.append("e.verdict = ?"); arguments.append(StoreCode.verdict(v)) }
            if let after = query.afterID { conditions.append("e.id > ?"); arguments.append(after) }

            var sql = """
                SELECT e.id, e.time, e.direction, e.outcome, e.error, e.pid, e.comm, e.uid, e.cgroup_id,
                       e.netns, e.local_addr, e.local_port, e.peer_addr, e.peer_port, e.hook,
                       e.process_known, e.verdict, e.identity_id, pw.name
                FROM event e LEFT JOIN workload pw ON pw.id = e.peer_workload_id
                """
            if !conditions.isEmpty { sql += " WHERE " + conditions.joined(separator: " AND ") }
            let newestFirst = query.last != nil
            if query.afterID != nil {
                sql += newestFirst ? " ORDER BY e.id DESC" : " ORDER BY e.id"
            } else {
                sql += newestFirst ? " ORDER BY e.time DESC, e.id DESC" : " ORDER BY e.time, e.id"
            }
            if let last = query.last { sql += " LIMIT ?"; arguments.append(last) }

            var identities = IdentityReader()
            let rows = try Row.fetchCursor(db, sql: sql, arguments: StatementArguments(arguments))
            if newestFirst {
                var collected: [StoredConnection] = []
                while let row = try rows.next() {
                    collected.append(try EventStore.decode(row, identities: &identities, db))
                }
                for c in collected.reversed() { try body(c) }
            } else {
                while let row = try rows.next() {
                    try body(try EventStore.decode(row, identities: &identities, db))
                }
            }
        }
    }

    /// The SQL condition on `identity` for the container, namespace and pod filters.
    private static func identityFilter(_ query: ConnectionQuery) -> (String?, [(any DatabaseValueConvertible)?]) {
        var conditions: [String] = []
        var arguments: [(any DatabaseValueConvertible)?] = []
        if let container = query.container {
            conditions.append("(container_name = ? OR substr(container_id, 1, ?) = ?)")
            arguments += [container, container.utf8.count, container]
        }
        if let namespace = query.namespace {
            conditions.append("pod_namespace = ?")
            arguments.append(namespace)
        }
        if let pod = query.pod {
            let parts = pod.split(separator: "/", omittingEmptySubsequences: false)
            if parts.count == 2 {
                conditions.append("(pod_namespace = ? AND pod_name = ?)")
                arguments += [String(parts[0]), String(parts[1])]
            } else {
                conditions.append("pod_name = ?")
                arguments.append(pod)
            }
        }
        return conditions.isEmpty ? (nil, []) : (conditions.joined(separator: " AND "), arguments)
    }

    private static func decode(_ row: Row, identities: inout IdentityReader, _ db: Database) throws -> StoredConnection {
        let direction = StoreCode.direction(row[2] as Int64)
        let local = StoreAddress.address(row[10] as Data)
        let localPort = UInt16(truncatingIfNeeded: row[11] as Int64)
        let peer = StoreAddress.address(row[12] as Data)
        let peerPort = UInt16(truncatingIfNeeded: row[13] as Int64)
        let accept = direction == .accept
        let event = ConnectionEvent(
            timeNanoseconds: row[1], direction: direction, outcome: StoreCode.outcome(row[3] as Int64),
            error: Int32(truncatingIfNeeded: row[4] as Int64), pid: UInt32(truncatingIfNeeded: row[5] as Int64),
            comm: row[6], uid: UInt32(truncatingIfNeeded: row[7] as Int64),
            cgroupID: UInt64(bitPattern: row[8] as Int64), netns: UInt32(truncatingIfNeeded: row[9] as Int64),
            source: accept ? peer : local, sourcePort: accept ? peerPort : localPort,
            destination: accept ? local : peer, destinationPort: accept ? localPort : peerPort,
            hook: StoreCode.hook(row[14] as Int64), processKnown: row[15])
        let identity = try identities.identity(row[17] as Int64, db)
        return StoredConnection(id: row[0], event: event, identity: identity, verdict: StoreCode.verdict(row[16] as Int64),
                                peerWorkload: row[18])
    }

    /// Aggregated connections matching `query`, by last seen, oldest first.
    /// since/until select aggregates whose [first seen, last seen] overlaps
    /// the range (their counts are totals, not counts within the range).
    /// `container` and `pod` select the aggregates of the workloads those
    /// containers or pods belong to (while their events are kept).
    public func queryAggregates(_ query: ConnectionQuery) throws -> [AggregatedConnection] {
        try query.validate()
        if query.afterID != nil { throw QueryError.unsupported("an event id (--follow) with aggregates") }
        return try database.read { db in
            var conditions: [String] = []
            var arguments: [(any DatabaseValueConvertible)?] = []
            if let workload = query.workload { conditions.append("w.name = ?"); arguments.append(workload) }
            if let namespace = query.namespace { conditions.append("w.namespace = ?"); arguments.append(namespace) }
            var identityQuery = query
            identityQuery.namespace = nil
            let (identityCondition, identityArguments) = EventStore.identityFilter(identityQuery)
            if let identityCondition {
                conditions.append("a.workload_id IN (SELECT workload_id FROM identity WHERE \(identityCondition))")
                arguments += identityArguments
            }
            if let since = query.since { conditions.append("a.last_seen >= ?"); arguments.append(since) }
            if let until = query.until { conditions.append("a.first_seen < ?"); arguments.append(until) }
            if let port = query.port { conditions.append("a.port = ?"); arguments.append(port) }
            if let peer = query.peer {
                let (condition, values) = StoreAddress.condition("a.peer_addr", peer)
                conditions.append(condition)
                arguments += values
            }
            if let d = query.direction { conditions.append("a.direction = ?"); arguments.append(StoreCode.direction(d)) }
            if let v = query.verdict { conditions.append("a.verdict = ?"); arguments.append(StoreCode.verdict(v)) }
            var sql = """
                SELECT a.id, w.name, w.namespace, a.direction, a.peer_addr, a.port, a.verdict,
                       a.first_seen, a.last_seen, a.count, a.failed
                FROM connection_aggregate a JOIN workload w ON w.id = a.workload_id
                """
            if !conditions.isEmpty { sql += " WHERE " + conditions.joined(separator: " AND ") }
            sql += query.last != nil ? " ORDER BY a.last_seen DESC, a.id DESC LIMIT ?" : " ORDER BY a.last_seen, a.id"
            if let last = query.last { arguments.append(last) }
            var out: [AggregatedConnection] = []
            let rows = try Row.fetchCursor(db, sql: sql, arguments: StatementArguments(arguments))
            while let row = try rows.next() {
                out.append(AggregatedConnection(
                    id: row[0], workload: row[1], namespace: row[2], direction: StoreCode.direction(row[3] as Int64),
                    peer: StoreAddress.address(row[4] as Data), port: UInt16(truncatingIfNeeded: row[5] as Int64),
                    verdict: StoreCode.verdict(row[6] as Int64), firstSeen: row[7], lastSeen: row[8],
                    count: row[9], failedCount: row[10]))
            }
            return query.last != nil ? out.reversed() : out
        }
    }

    // MARK: - Stats

    public struct Stats: Sendable, Equatable {
        public var events: Int
        public var aggregates: Int
        public var workloads: Int
        public var identities: Int
        /// Wall-clock nanoseconds of the oldest and newest stored event.
        public var oldestEvent: Int64?
        public var newestEvent: Int64?
        /// The largest id given so far (what `afterID` follows).
        public var lastEventID: Int64
        /// Sizes of the main file, its -wal and its -shm.
        public var databaseBytes: Int64
        public var walBytes: Int64
        public var shmBytes: Int64
        public var totalBytes: Int64 { databaseBytes + walBytes + shmBytes }
    }

    public func stats() throws -> Stats {
        var s = try database.read { db in
            Stats(events: try Int.fetchOne(db, sql: "SELECT count(*) FROM event") ?? 0,
                  aggregates: try Int.fetchOne(db, sql: "SELECT count(*) FROM connection_aggregate") ?? 0,
                  workloads: try Int.fetchOne(db, sql: "SELECT count(*) FROM workload") ?? 0,
                  identities: try Int.fetchOne(db, sql: "SELECT count(*) FROM identity") ?? 0,
                  oldestEvent: try Int64.fetchOne(db, sql: "SELECT min(time) FROM event"),
                  newestEvent: try Int64.fetchOne(db, sql: "SELECT max(time) FROM event"),
                  lastEventID: try Int64.fetchOne(db, sql: "SELECT seq FROM sqlite_sequence WHERE name = 'event'") ?? 0,
                  databaseBytes: 0, walBytes: 0, shmBytes: 0)
        }
        s.databaseBytes = EventStore.fileSize(path)
        s.walBytes = EventStore.fileSize(path + "-wal")
        s.shmBytes = EventStore.fileSize(path + "-shm")
        return s
    }

    private static func fileSize(_ path: String) -> Int64 {
        var st = stat()
        return stat(path, &st) == 0 ? Int64(st.st_size) : 0
    }

    // MARK: - Files

    private static func createFile(_ path: String) throws {
        var st = stat()
        if stat(path, &st) == 0 {
            guard (st.st_mode & S_IFMT) == S_IFREG else { throw StoreError.invalidPath(path) }
            return
        }
        var directory = ""
        let components = path.split(separator: "/", omittingEmptySubsequences: true).dropLast()
        if path.hasPrefix("/") { directory = "" } else { directory = "." }
        for component in components {
            directory += "/" + component
            if mkdir(directory, 0o700) != 0 && errno != EEXIST {
                throw StoreError.cannotCreate(directory, errno)
            }
        }
        let fd = Glibc.open(path, O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC, 0o600)
        if fd < 0 {
            if errno == EEXIST { return }
            throw StoreError.cannotCreate(path, errno)
        }
        Glibc.close(fd)
    }
}

extension StoreError {
    /// Whether `error` is SQLite saying the disk (or the file system's
    /// quota) is full: SQLITE_FULL, which it reports for ENOSPC and EDQUOT.
    public static func isDiskFull(_ error: Error) -> Bool {
        if let e = error as? DatabaseError { return e.resultCode.primaryResultCode == .SQLITE_FULL }
        if case let .cannotCreate(_, e) = error as? StoreError { return e == ENOSPC || e == EDQUOT }
        return false
    }

    /// `error` as one line for a log, saying so plainly when the disk is full.
    public static func describe(_ error: Error) -> String {
        isDiskFull(error)
            ? "the disk holding the database is full (ENOSPC, SQLITE_FULL): free space on it; events are counted as lost meanwhile (\(error))"
            : String(describing: error)
    }
}

public enum StoreError: Error, Equatable, CustomStringConvertible {
    case invalidPath(String)
    case cannotCreate(String, Int32)
    case cannotOpen(String, String)
    case missing(String)
    case notInitialized(String)
    case invalidRetention(String)

    public var description: String {
        switch self {
        case let .invalidPath(p): return "\(p): not a usable database path"
        case let .cannotCreate(p, e): return "\(p): cannot create: \(String(cString: strerror(e)))"
        case let .cannotOpen(p, why): return "\(p): cannot open the database: \(why)"
        case let .missing(p): return "\(p): no database there (is the agent running? use --db to point elsewhere)"
        case let .notInitialized(p): return "\(p): not a ConnGuard database, or one no agent of this version has set up yet"
        case let .invalidRetention(why): return "invalid retention: \(why)"
        }
    }
}

// MARK: - Interning

/// Workload and identity ids already in the database, so that appending an
/// event costs no lookup. Touched only inside write transactions.
struct InternCache {
    var identities: [Identity: (identity: Int64, workload: Int64)] = [:]
    var workloads: [String: (id: Int64, hasNamespace: Bool)] = [:]
    /// The last identity seen per cgroup: checking it costs an equality test
    /// (instant when the resolver hands out the same strings each time)
    /// rather than hashing every string of the identity.
    var byCgroup: [UInt64: (identity: Identity, ids: (identity: Int64, workload: Int64))] = [:]

    mutating func ids(for identity: Identity, cgroup: UInt64, _ db: Database) throws -> (identity: Int64, workload: Int64) {
        if let hit = byCgroup[cgroup], hit.identity == identity { return hit.ids }
        let ids = try ids(for: identity, db)
        if byCgroup.count >= 65_536 { byCgroup.removeAll(keepingCapacity: true) }
        byCgroup[cgroup] = (identity, ids)
        return ids
    }

    mutating func ids(for identity: Identity, _ db: Database) throws -> (identity: Int64, workload: Int64) {
        if let ids = identities[identity] { return ids }
        let workload = try workloadID(identity.workload, namespace: identity.pod?.namespace, db)
        let key = InternCache.key(identity)
        let id: Int64
        if let existing = try Int64.fetchOne(db.cachedStatement(sql: "SELECT id FROM identity WHERE key = ?"), arguments: [key]) {
            id = existing
        } else {
            try db.cachedStatement(sql: """
                INSERT INTO identity (key, workload_id, container_id, container_runtime, container_name,
                                      container_image, pod_namespace, pod_name, pod_uid, pod_container, cgroup_path)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                """).execute(arguments: [key, workload, identity.container?.id, identity.container?.runtime.rawValue,
                                 identity.container?.name, identity.container?.image, identity.pod?.namespace,
                                 identity.pod?.name, identity.pod?.uid, identity.pod?.container, identity.cgroupPath])
            id = db.lastInsertedRowID
        }
        identities[identity] = (id, workload)
        return (id, workload)
    }

    mutating func workloadID(_ name: String, namespace: String?, _ db: Database) throws -> Int64 {
        if let w = workloads[name], w.hasNamespace || namespace == nil { return w.id }
        let id: Int64
        if let row = try Row.fetchOne(db.cachedStatement(sql: "SELECT id, namespace FROM workload WHERE name = ?"), arguments: [name]) {
            id = row[0]
            if namespace != nil && (row[1] as String?) == nil {
                try db.execute(sql: "UPDATE workload SET namespace = ? WHERE id = ?", arguments: [namespace, id])
            }
        } else {
            try db.cachedStatement(sql: "INSERT INTO workload (name, namespace) VALUES (?, ?)").execute(arguments: [name, namespace])
            id = db.lastInsertedRowID
        }
        workloads[name] = (id, namespace != nil)
        return id
    }

    /// Canonical text of an identity: sorted-key JSON.
    static func key(_ identity: Identity) -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        let data = (try? encoder.encode(identity)) ?? Data(identity.workload.utf8)
        return String(decoding: data, as: UTF8.self)
    }
}

final class Interner: @unchecked Sendable {
    private let lock = ConnGuardCore.Mutex()
    private var cache = InternCache()

    func withCache<T>(_ body: (inout InternCache) throws -> T) rethrows -> T {
        try lock.withLock { try body(&cache) }
    }

    func reset() {
        lock.withLock { cache = InternCache() }
    }
}

/// Identities read while decoding one query's rows.
struct IdentityReader {
    private var known: [Int64: Identity] = [:]

    mutating func identity(_ id: Int64, _ db: Database) throws -> Identity {
        if let i = known[id] { return i }
        var identity = Identity.unknown
        if let row = try Row.fetchOne(db.cachedStatement(sql: """
            SELECT w.name, i.container_id, i.container_runtime, i.container_name, i.container_image,
                   i.pod_namespace, i.pod_name, i.pod_uid, i.pod_container, i.cgroup_path
            FROM identity i LEFT JOIN workload w ON w.id = i.workload_id WHERE i.id = ?
            """), arguments: [id]) {
            var container: ContainerInfo?
            if let cid = row[1] as String? {
                container = ContainerInfo(id: cid, runtime: ContainerInfo.Runtime(rawValue: row[2] as String? ?? "") ?? .containerd,
                                          name: row[3], image: row[4])
            }
            var pod: PodInfo?
            if let ns = row[5] as String?, let name = row[6] as String? {
                pod = PodInfo(namespace: ns, name: name, uid: row[7] as String? ?? "", container: row[8] as String? ?? "")
            }
            identity = Identity(workload: row[0] as String? ?? Identity.unknownWorkload, container: container, pod: pod,
                                cgroupPath: row[9])
        }
        known[id] = identity
        return identity
    }
}
