import ConnGuardCore
import Foundation
import GRDB
import GRDBSQLite
import Glibc

// Queries: events and aggregates, with one builder of their conditions.
extension EventStore {
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
            guard case (let conditions, var arguments)? = try EventStore.conditions(query, on: .events, db) else { return }
            var sql = """
                SELECT e.id, e.time, e.direction, e.outcome, e.error, e.pid, e.comm, e.uid, e.cgroup_id,
                       e.netns, e.local_addr, e.local_port, e.peer_addr, e.peer_port, e.hook,
                       e.process_known, e.verdict, e.identity_id, pw.name, e.protocol, e.peer_name, e.expected_names
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

    /// What a query reads: the events (`e`) or the aggregated connections (`a`).
    enum QueryTable {
        case events, aggregates
    }

    /// The conditions of `query` on `table`, with their arguments: one
    /// builder for both, whose filters differ only where the tables do.
    /// nil when the query can match nothing (a workload never seen).
    static func conditions(_ query: ConnectionQuery, on table: QueryTable,
                           _ db: Database) throws -> ([String], [(any DatabaseValueConvertible)?])? {
        let t = table == .events ? "e" : "a"
        var conditions: [String] = []
        var arguments: [(any DatabaseValueConvertible)?] = []
        if let workload = query.workload {
            // Its id first: the (workload, time) index then serves the events.
            guard let id = try Int64.fetchOne(db, sql: "SELECT id FROM workload WHERE name = ?", arguments: [workload]) else { return nil }
            conditions.append("\(t).workload_id = ?")
            arguments.append(id)
        }
        // Aggregates know their workload's namespace; events go by identity.
        var identityQuery = query
        if table == .aggregates, let namespace = query.namespace {
            conditions.append("\(t).workload_id IN (SELECT id FROM workload WHERE namespace = ?)")
            arguments.append(namespace)
            identityQuery.namespace = nil
        }
        let (identityCondition, identityArguments) = EventStore.identityFilter(identityQuery)
        if let identityCondition {
            // The workloads of those identities too: that lets SQLite use
            // the (workload, time) index rather than scan the time range.
            conditions.append("\(t).workload_id IN (SELECT workload_id FROM identity WHERE \(identityCondition))")
            arguments += identityArguments
            if table == .events {
                conditions.append("e.identity_id IN (SELECT id FROM identity WHERE \(identityCondition))")
                arguments += identityArguments
            }
        }
        switch table {
        case .events:
            if let since = query.since { conditions.append("e.time >= ?"); arguments.append(since) }
            if let until = query.until { conditions.append("e.time < ?"); arguments.append(until) }
            if let port = query.port { conditions.append("(e.local_port = ? OR e.peer_port = ?)"); arguments += [port, port] }
            if let after = query.afterID { conditions.append("e.id > ?"); arguments.append(after) }
            if let n = query.peerName {
                if n.isPattern {
                    // One label before the pattern's parent, as rules match.
                    let suffix = String(n.text.dropFirst(1)) // ".example.test"
                    conditions.append("(e.peer_name LIKE ? ESCAPE '\\' AND instr(substr(e.peer_name, 1, length(e.peer_name) - ?), '.') = 0)")
                    arguments += ["%" + suffix.replacingOccurrences(of: "_", with: "\\_"), suffix.utf8.count]
                } else {
                    conditions.append("e.peer_name = ?")
                    arguments.append(n.text)
                }
            }
        case .aggregates:
            // Aggregates whose [first seen, last seen] overlaps the range.
            if let since = query.since { conditions.append("a.last_seen >= ?"); arguments.append(since) }
            if let until = query.until { conditions.append("a.first_seen < ?"); arguments.append(until) }
            if let port = query.port { conditions.append("a.port = ?"); arguments.append(port) }
        }
        if let peer = query.peer {
            let (condition, values) = StoreAddress.condition("\(t).peer_addr", peer)
            conditions.append(condition)
            arguments += values
        }
        if let d = query.direction { conditions.append("\(t).direction = ?"); arguments.append(StoreCode.direction(d)) }
        if let v = query.verdict { conditions.append("\(t).verdict = ?"); arguments.append(StoreCode.verdict(v)) }
        if let p = query.proto { conditions.append("\(t).protocol = ?"); arguments.append(StoreCode.proto(p)) }
        return (conditions, arguments)
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
            hook: StoreCode.hook(row[14] as Int64), processKnown: row[15], proto: StoreCode.proto(row[19] as Int64),
            peerName: row[20])
        let identity = try identities.identity(row[17] as Int64, db)
        let expected: String? = row[21]
        return StoredConnection(id: row[0], event: event, identity: identity, verdict: StoreCode.verdict(row[16] as Int64),
                                peerWorkload: row[18],
                                expectedNames: expected.map { $0.split(separator: ",").map(String.init) } ?? [])
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
            guard case (let conditions, var arguments)? = try EventStore.conditions(query, on: .aggregates, db) else { return [] }
            var sql = """
                SELECT a.id, w.name, w.namespace, a.direction, a.peer_addr, a.port, a.verdict,
                       a.first_seen, a.last_seen, a.count, a.failed, a.protocol
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
                    count: row[9], failedCount: row[10], proto: StoreCode.proto(row[11] as Int64)))
            }
            return query.last != nil ? out.reversed() : out
        }
    }
}
