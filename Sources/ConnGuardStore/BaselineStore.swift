import ConnGuardCore
import Foundation
import GRDB

/// The policy layer's tables (migration "policy-v1"), in the agent's database:
/// - baseline: one row per workload; `workload_id` is the small number the
///   kernel maps use for it, given 1, 2, 3, ... and never reused, even after a
///   baseline is deleted (the next one is kept in `policy_counter`).
/// - baseline_rule: a baseline's rules; peer is `Peer.description`.
/// - audit: who changed what, append-only.
/// Migration "policy-v2" adds baseline.learning_stopped (why learning stopped
/// adding rules, or NULL).
public enum BaselineSchema {
    /// Every migration of the policy layer, in order.
    public static let migrations = [migration, learningStopped]

    static let learningStopped = EventStore.Migration("policy-v2") { db in
        try db.execute(sql: "ALTER TABLE baseline ADD COLUMN learning_stopped TEXT")
    }

    public static let migration = EventStore.Migration("policy-v1") { db in
        try db.execute(sql: """
            CREATE TABLE baseline (
                workload TEXT PRIMARY KEY,
                workload_id INTEGER NOT NULL UNIQUE,
                mode TEXT NOT NULL CHECK (mode IN ('learn', 'monitor', 'enforce')),
                learning_since INTEGER NOT NULL,
                last_change INTEGER NOT NULL,
                incomplete INTEGER NOT NULL,
                last_would_deny INTEGER
            );
            CREATE TABLE baseline_rule (
                workload_id INTEGER NOT NULL REFERENCES baseline(workload_id) ON DELETE CASCADE,
                direction TEXT NOT NULL CHECK (direction IN ('out', 'in')),
                peer TEXT NOT NULL,
                port INTEGER NOT NULL,
                proto TEXT NOT NULL,
                first_seen INTEGER NOT NULL,
                last_seen INTEGER NOT NULL,
                hits INTEGER NOT NULL,
                PRIMARY KEY (workload_id, direction, peer, port, proto)
            );
            CREATE TABLE audit (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                time INTEGER NOT NULL,
                who TEXT NOT NULL,
                workload TEXT,
                action TEXT NOT NULL,
                detail TEXT NOT NULL
            );
            CREATE INDEX audit_workload_time ON audit(workload, time);
            CREATE TABLE policy_counter (
                name TEXT PRIMARY KEY,
                value INTEGER NOT NULL
            );
            INSERT INTO policy_counter (name, value) VALUES ('workload_id', 0);
            """)
    }
}

/// One line of the audit log.
public struct AuditEntry: Sendable, Equatable {
    /// Wall-clock nanoseconds.
    public var time: Int64
    public var who: String
    public var workload: String?
    public var action: String
    public var detail: String

    public init(time: Int64, who: String, workload: String?, action: String, detail: String) {
        self.time = time
        self.who = who
        self.workload = workload
        self.action = action
        self.detail = detail
    }
}

public enum BaselineStoreError: Error, Equatable, CustomStringConvertible {
    /// No baseline row for this workload (create it with `workloadID(for:createWith:now:)`).
    case unknownWorkload(String)
    /// A stored value this version cannot read.
    case corrupt(String)
    case workloadIDsExhausted

    public var description: String {
        switch self {
        case let .unknownWorkload(w): return "\(w): no baseline for this workload"
        case let .corrupt(why): return "unreadable baseline data: \(why)"
        case .workloadIDsExhausted: return "no workload id left (2^32 - 1 given)"
        }
    }
}

/// Baselines, modes and the audit log, in the agent's database. Every method
/// is one transaction. Safe to use from any thread (writes are serialized by
/// the pool).
public final class BaselineStore: Sendable {
    public let store: EventStore
    /// Tests only: called at named points inside write transactions; throwing
    /// rolls the transaction back.
    let failpoint: (@Sendable (String) throws -> Void)?

    /// `store` must have been opened with `BaselineSchema.migrations`.
    public convenience init(store: EventStore) {
        self.init(store: store, failpoint: nil)
    }

    init(store: EventStore, failpoint: (@Sendable (String) throws -> Void)?) {
        self.store = store
        self.failpoint = failpoint
    }

    private var database: DatabasePool { store.database }

    // MARK: - Reading

    /// Every baseline with its rules and workload id, by workload name.
    public func loadAll() throws -> [(baseline: Baseline, workloadID: UInt32)] {
        try database.read { db in
            var out: [(baseline: Baseline, workloadID: UInt32)] = []
            var index: [Int64: Int] = [:]
            let rows = try Row.fetchCursor(db, sql: """
                SELECT workload, workload_id, mode, learning_since, last_change, incomplete, last_would_deny, learning_stopped
                FROM baseline ORDER BY workload
                """)
            while let row = try rows.next() {
                let workload: String = row[0]
                let id: Int64 = row[1]
                let modeText: String = row[2]
                guard let mode = Mode(rawValue: modeText) else {
                    throw BaselineStoreError.corrupt("\(workload): mode \"\(modeText)\"")
                }
                index[id] = out.count
                out.append((Baseline(workload: workload, mode: mode, learningSince: row[3], lastChange: row[4],
                                     incomplete: (row[5] as Int64) != 0, lastWouldDeny: row[6], learningStopped: row[7]),
                            UInt32(truncatingIfNeeded: id)))
            }
            let rules = try Row.fetchCursor(db, sql: """
                SELECT workload_id, direction, peer, port, proto, first_seen, last_seen, hits FROM baseline_rule
                """)
            while let row = try rules.next() {
                guard let i = index[row[0]] else { continue }  // the foreign key makes this unreachable
                let rule = try BaselineStore.decodeRule(row, workload: out[i].baseline.workload)
                out[i].baseline.rules[rule.key] = rule
            }
            return out
        }
    }

    /// The workload's id, creating its baseline (in `mode`, learning since
    /// `now`, no rules) if it has none.
    public func workloadID(for workload: String, createWith mode: Mode = .learn, now: Int64) throws -> UInt32 {
        if let id = try database.read({ db in try Int64.fetchOne(db, sql: "SELECT workload_id FROM baseline WHERE workload = ?",
                                                                 arguments: [workload]) }) {
            return UInt32(truncatingIfNeeded: id)
        }
        return try database.write { db in
            if let id = try BaselineStore.existingID(workload, db) { return UInt32(truncatingIfNeeded: id) }
            let id = try BaselineStore.allocateID(db)
            try db.execute(sql: """
                INSERT INTO baseline (workload, workload_id, mode, learning_since, last_change, incomplete, last_would_deny)
                VALUES (?, ?, ?, ?, ?, 0, NULL)
                """, arguments: [workload, id, mode.rawValue, now, now])
            return UInt32(truncatingIfNeeded: id)
        }
    }

    /// The newest `limit` entries, newest first; only `workload`'s if given.
    public func audit(limit: Int, workload: String? = nil) throws -> [AuditEntry] {
        try database.read { db in
            var sql = "SELECT time, who, workload, action, detail FROM audit"
            var arguments: StatementArguments = []
            if let workload {
                sql += " WHERE workload = ?"
                arguments += [workload]
            }
            sql += " ORDER BY time DESC, id DESC LIMIT ?"
            arguments += [max(0, limit)]
            return try Row.fetchAll(db, sql: sql, arguments: arguments).map {
                AuditEntry(time: $0[0], who: $0[1], workload: $0[2], action: $0[3], detail: $0[4])
            }
        }
    }

    // MARK: - Writing

    /// Stores `b` whole: the baseline row (created if new) and exactly its
    /// rules (new ones inserted, changed ones updated, those no longer in
    /// `b` deleted).
    public func save(_ b: Baseline) throws {
        try database.write { db in
            let id = try BaselineStore.upsertRow(b, lastChange: b.lastChange, db)
            var existing: [StoredKey: (firstSeen: Int64, lastSeen: Int64, hits: Int64)] = [:]
            let rows = try Row.fetchCursor(db, sql: """
                SELECT direction, peer, port, proto, first_seen, last_seen, hits FROM baseline_rule WHERE workload_id = ?
                """, arguments: [id])
            while let row = try rows.next() {
                existing[StoredKey(direction: row[0], peer: row[1], port: row[2], proto: row[3])] = (row[4], row[5], row[6])
            }
            let insert = try db.cachedStatement(sql: BaselineStore.insertRule)
            let update = try db.cachedStatement(sql: """
                UPDATE baseline_rule SET first_seen = ?, last_seen = ?, hits = ?
                WHERE workload_id = ? AND direction = ? AND peer = ? AND port = ? AND proto = ?
                """)
            for rule in b.rules.values {
                let k = StoredKey(rule.key)
                if let old = existing.removeValue(forKey: k) {
                    if old != (rule.firstSeen, rule.lastSeen, rule.hits) {
                        try update.execute(arguments: [rule.firstSeen, rule.lastSeen, rule.hits,
                                                       id, k.direction, k.peer, k.port, k.proto])
                    }
                } else {
                    try insert.execute(arguments: [id, k.direction, k.peer, k.port, k.proto,
                                                   rule.firstSeen, rule.lastSeen, rule.hits])
                }
            }
            try failpoint?("save.before-delete")
            let delete = try db.cachedStatement(sql: """
                DELETE FROM baseline_rule WHERE workload_id = ? AND direction = ? AND peer = ? AND port = ? AND proto = ?
                """)
            for k in existing.keys {
                try delete.execute(arguments: [id, k.direction, k.peer, k.port, k.proto])
            }
        }
    }

    /// Upserts these rules of an existing baseline (the learning hot path).
    /// A rule's values are its current totals, as `Baseline` keeps them:
    /// hits is replaced, first_seen only moves back and last_seen only
    /// forward. The baseline's last_change moves up to the newest first_seen
    /// among them, so a reload does not think learning has been quiet.
    public func saveRules(workload: String, _ rules: [Rule]) throws {
        guard !rules.isEmpty else { return }
        try database.write { db in
            guard let id = try BaselineStore.existingID(workload, db) else { throw BaselineStoreError.unknownWorkload(workload) }
            let upsert = try db.cachedStatement(sql: BaselineStore.insertRule + """
                 ON CONFLICT (workload_id, direction, peer, port, proto) DO UPDATE SET
                    first_seen = min(first_seen, excluded.first_seen),
                    last_seen = max(last_seen, excluded.last_seen),
                    hits = excluded.hits
                """)
            var newest = Int64.min
            for rule in rules {
                let k = StoredKey(rule.key)
                try upsert.execute(arguments: [id, k.direction, k.peer, k.port, k.proto, rule.firstSeen, rule.lastSeen, rule.hits])
                newest = max(newest, rule.firstSeen)
            }
            try db.execute(sql: "UPDATE baseline SET last_change = max(last_change, ?) WHERE workload_id = ?",
                           arguments: [newest, id])
        }
    }

    /// Moves a workload to `mode` and logs it (action "mode", detail
    /// "learn -> enforce (reason)"). Back to learn restarts learning:
    /// learning_since = now, incomplete cleared (rules are kept).
    public func setMode(workload: String, mode: Mode, who: String, now: Int64, reason: String) throws {
        try database.write { db in
            guard let oldText = try String.fetchOne(db, sql: "SELECT mode FROM baseline WHERE workload = ?", arguments: [workload]) else {
                throw BaselineStoreError.unknownWorkload(workload)
            }
            if mode == .learn {
                try db.execute(sql: """
                    UPDATE baseline SET mode = ?, last_change = ?, learning_since = ?, incomplete = 0, learning_stopped = NULL
                    WHERE workload = ?
                    """, arguments: [mode.rawValue, now, now, workload])
            } else {
                try db.execute(sql: "UPDATE baseline SET mode = ?, last_change = ? WHERE workload = ?",
                               arguments: [mode.rawValue, now, workload])
            }
            var detail = "\(oldText) -> \(mode.rawValue)"
            if !reason.isEmpty { detail += " (\(reason))" }
            try BaselineStore.insertAudit(AuditEntry(time: now, who: who, workload: workload, action: "mode", detail: detail), db)
        }
    }

    /// Replaces a workload's baseline (rules, mode, times, flags) with `b`,
    /// atomically, creating it if new, and logs it (action "import", detail
    /// "N rules"; and action "mode" when the mode changes, or a new workload's). last_change becomes `now`; the workload keeps its id.
    public func replace(_ b: Baseline, who: String, now: Int64) throws {
        try database.write { db in
            let oldMode = try String.fetchOne(db, sql: "SELECT mode FROM baseline WHERE workload = ?", arguments: [b.workload])
            let id = try BaselineStore.upsertRow(b, lastChange: now, db)
            try db.execute(sql: "DELETE FROM baseline_rule WHERE workload_id = ?", arguments: [id])
            let insert = try db.cachedStatement(sql: BaselineStore.insertRule)
            for (i, rule) in b.sortedRules.enumerated() {
                if i == b.rules.count / 2 { try failpoint?("replace.half-inserted") }
                let k = StoredKey(rule.key)
                try insert.execute(arguments: [id, k.direction, k.peer, k.port, k.proto, rule.firstSeen, rule.lastSeen, rule.hits])
            }
            try failpoint?("replace.before-audit")
            // Every mode change is audited as one, whatever made it.
            if oldMode != b.mode.rawValue {
                try BaselineStore.insertAudit(AuditEntry(time: now, who: who, workload: b.workload, action: "mode",
                                                         detail: "\(oldMode ?? "none") -> \(b.mode.rawValue) (import)"), db)
            }
            try BaselineStore.insertAudit(AuditEntry(time: now, who: who, workload: b.workload, action: "import",
                                                     detail: "\(b.rules.count) rules"), db)
        }
    }

    /// Flags these workloads' baselines as possibly missing rules (events
    /// were lost). Names without a baseline are ignored.
    /// Removes a workload's baseline and rules (undoing the import that made
    /// it); audited. Its id is never given again.
    public func delete(workload: String, who: String, now: Int64, why: String) throws {
        try database.write { db in
            try db.execute(sql: "DELETE FROM baseline WHERE workload = ?", arguments: [workload])
            try BaselineStore.insertAudit(AuditEntry(time: now, who: who, workload: workload, action: "delete", detail: why), db)
        }
    }

    /// Learning stopped adding rules to `workload`'s baseline, for `reason`
    /// (also marks it incomplete, and is audited).
    public func stopLearning(workload: String, reason: String, now: Int64) throws {
        try database.write { db in
            try db.execute(sql: "UPDATE baseline SET incomplete = 1, learning_stopped = ? WHERE workload = ?", arguments: [reason, workload])
            try BaselineStore.insertAudit(AuditEntry(time: now, who: "connguard", workload: workload, action: "learning stopped",
                                                     detail: reason), db)
        }
    }

    public func markIncomplete(workloads: [String]) throws {
        guard !workloads.isEmpty else { return }
        try database.write { db in
            let update = try db.cachedStatement(sql: "UPDATE baseline SET incomplete = 1 WHERE workload = ?")
            for w in workloads { try update.execute(arguments: [w]) }
        }
    }

    /// Notes a would_deny at `at` (kept only if newer than the one stored).
    public func recordWouldDeny(workload: String, at: Int64) throws {
        try database.write { db in
            try db.execute(sql: """
                UPDATE baseline SET last_would_deny = max(coalesce(last_would_deny, ?), ?) WHERE workload = ?
                """, arguments: [at, at, workload])
        }
    }

    public func appendAudit(_ e: AuditEntry) throws {
        try database.write { db in try BaselineStore.insertAudit(e, db) }
    }

    // MARK: - Helpers

    /// A rule's primary key as stored.
    private struct StoredKey: Hashable {
        var direction: String
        var peer: String
        var port: Int64
        var proto: String

        init(direction: String, peer: String, port: Int64, proto: String) {
            self.direction = direction
            self.peer = peer
            self.port = port
            self.proto = proto
        }

        init(_ k: RuleKey) {
            self.init(direction: k.direction.ruleName, peer: k.peer.description, port: Int64(k.port), proto: k.proto)
        }
    }

    private static let insertRule = """
        INSERT INTO baseline_rule (workload_id, direction, peer, port, proto, first_seen, last_seen, hits)
        VALUES (?, ?, ?, ?, ?, ?, ?, ?)
        """

    private static func decodeRule(_ row: Row, workload: String) throws -> Rule {
        let directionText: String = row[1]
        let peerText: String = row[2]
        let port: Int64 = row[3]
        guard let direction = ConnectionEvent.Direction(ruleName: directionText) else {
            throw BaselineStoreError.corrupt("\(workload): rule direction \"\(directionText)\"")
        }
        guard let peer = Peer(description: peerText) else {
            throw BaselineStoreError.corrupt("\(workload): rule peer \"\(peerText)\"")
        }
        guard let p = UInt16(exactly: port) else {
            throw BaselineStoreError.corrupt("\(workload): rule port \(port)")
        }
        return Rule(key: RuleKey(direction: direction, peer: peer, port: p, proto: row[4]),
                    firstSeen: row[5], lastSeen: row[6], hits: row[7])
    }

    private static func existingID(_ workload: String, _ db: Database) throws -> Int64? {
        try Int64.fetchOne(db.cachedStatement(sql: "SELECT workload_id FROM baseline WHERE workload = ?"), arguments: [workload])
    }

    /// The next workload id: above every id ever given, even of deleted baselines.
    private static func allocateID(_ db: Database) throws -> Int64 {
        try db.execute(sql: """
            UPDATE policy_counter SET value = max(value, (SELECT coalesce(max(workload_id), 0) FROM baseline)) + 1
            WHERE name = 'workload_id'
            """)
        guard let id = try Int64.fetchOne(db, sql: "SELECT value FROM policy_counter WHERE name = 'workload_id'") else {
            throw BaselineStoreError.corrupt("policy_counter has no workload_id")
        }
        guard id <= Int64(UInt32.max) else { throw BaselineStoreError.workloadIDsExhausted }
        return id
    }

    /// Writes `b`'s row (not its rules), creating it with a new id if
    /// needed; returns the id.
    private static func upsertRow(_ b: Baseline, lastChange: Int64, _ db: Database) throws -> Int64 {
        let arguments: StatementArguments = [b.mode.rawValue, b.learningSince, lastChange, b.incomplete ? 1 : 0, b.lastWouldDeny,
                                             b.learningStopped]
        if let id = try existingID(b.workload, db) {
            try db.execute(sql: """
                UPDATE baseline SET mode = ?, learning_since = ?, last_change = ?, incomplete = ?, last_would_deny = ?,
                                    learning_stopped = ?
                WHERE workload_id = ?
                """, arguments: arguments + [id])
            return id
        }
        let id = try allocateID(db)
        try db.execute(sql: """
            INSERT INTO baseline (mode, learning_since, last_change, incomplete, last_would_deny, learning_stopped, workload, workload_id)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?)
            """, arguments: arguments + [b.workload, id])
        return id
    }

    private static func insertAudit(_ e: AuditEntry, _ db: Database) throws {
        try db.execute(sql: "INSERT INTO audit (time, who, workload, action, detail) VALUES (?, ?, ?, ?, ?)",
                       arguments: [e.time, e.who, e.workload, e.action, e.detail])
    }
}
