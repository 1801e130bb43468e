import ConnGuardCore
import Foundation
import GRDB
import GRDBSQLite

let SQLITE_TRANSIENT = unsafeBitCast(OpaquePointer(bitPattern: -1), to: sqlite3_destructor_type.self)

/// The store's tables. Each layer registers its own migrations, named
/// "<layer>-v<N>" (this one "store-v1", "store-v2", ...; the policy layer
/// "policy-v1", ...), through `EventStore.Options.migrations`; GRDB's
/// DatabaseMigrator runs those not yet applied, in registration order, each in
/// its own transaction. A migration once released is never edited: add one.
///
/// Layout (store-v1):
/// - workload(id, name UNIQUE, namespace): names interned once, so events and
///   aggregates carry a small integer and `--workload` is one index seek.
/// - identity(id, key UNIQUE, workload_id, container_*, pod_*, cgroup_path,
///   last_event_id): the full Identity, interned; `key` is its canonical
///   JSON; one whose last event is older than every event kept is collected.
/// - event: one row per connection, kept by age and by count. Indexed by time
///   and by (workload, time) only: every index costs on each insert, and the
///   agent must take 50,000+ events a second. Addresses are
///   16-byte BLOBs (IPv4 as ::ffff:a.b.c.d), so a CIDR is a BLOB range. The
///   row keeps the local and the peer (remote) side; source and destination
///   follow from the direction. Enumerations are small integers (`StoreCode`).
/// - connection_aggregate: one row per (workload, direction, peer, port,
///   verdict) with first/last seen and counts, kept much longer.
/// - events_view: the events with names and text, for a person at sqlite3.
/// store-v2: event.peer_workload_id. store-v3: the protocol (StoreCode: 0
/// tcp, 1 udp) of events and aggregates; an aggregate is one per (workload,
/// direction, peer, port, verdict, protocol). store-v4: event.peer_name (the
/// DNS name the workload resolved to the peer) and event.expected_names (of
/// a denied connect: the names its rules on that port allow, which did not
/// give this address).
public enum StoreSchema {
    public static let storeMigrations: [String] = ["store-v1", "store-v2", "store-v3", "store-v4"]

    /// Registers the store's own migrations; call first, then a later layer's.
    public static func registerMigrations(in migrator: inout DatabaseMigrator) {
        migrator.registerMigration("store-v1") { db in
            try db.execute(sql: """
                CREATE TABLE workload (
                    id INTEGER PRIMARY KEY,
                    name TEXT NOT NULL UNIQUE,
                    namespace TEXT
                );
                CREATE TABLE identity (
                    id INTEGER PRIMARY KEY,
                    key TEXT NOT NULL UNIQUE,
                    workload_id INTEGER NOT NULL,
                    container_id TEXT,
                    container_runtime TEXT,
                    container_name TEXT,
                    container_image TEXT,
                    pod_namespace TEXT,
                    pod_name TEXT,
                    pod_uid TEXT,
                    pod_container TEXT,
                    cgroup_path TEXT,
                    last_event_id INTEGER NOT NULL DEFAULT 0
                );
                CREATE INDEX identity_workload ON identity(workload_id);
                CREATE TABLE event (
                    id INTEGER PRIMARY KEY AUTOINCREMENT,
                    time INTEGER NOT NULL,
                    workload_id INTEGER NOT NULL,
                    identity_id INTEGER NOT NULL,
                    direction INTEGER NOT NULL,
                    outcome INTEGER NOT NULL,
                    error INTEGER NOT NULL,
                    pid INTEGER NOT NULL,
                    comm TEXT NOT NULL,
                    uid INTEGER NOT NULL,
                    cgroup_id INTEGER NOT NULL,
                    netns INTEGER NOT NULL,
                    local_addr BLOB NOT NULL,
                    local_port INTEGER NOT NULL,
                    peer_addr BLOB NOT NULL,
                    peer_port INTEGER NOT NULL,
                    hook INTEGER NOT NULL,
                    process_known INTEGER NOT NULL,
                    verdict INTEGER NOT NULL
                );
                CREATE INDEX event_time ON event(time);
                CREATE INDEX event_workload_time ON event(workload_id, time);
                CREATE TABLE connection_aggregate (
                    id INTEGER PRIMARY KEY,
                    workload_id INTEGER NOT NULL,
                    direction INTEGER NOT NULL,
                    peer_addr BLOB NOT NULL,
                    port INTEGER NOT NULL,
                    verdict INTEGER NOT NULL,
                    first_seen INTEGER NOT NULL,
                    last_seen INTEGER NOT NULL,
                    count INTEGER NOT NULL,
                    failed INTEGER NOT NULL,
                    UNIQUE (workload_id, direction, peer_addr, port, verdict)
                );
                CREATE VIEW events_view AS
                    SELECT e.id, strftime('%Y-%m-%dT%H:%M:%fZ', e.time / 1e9, 'unixepoch') AS time,
                           CASE e.direction WHEN 0 THEN 'connect' ELSE 'accept' END AS event,
                           CASE e.outcome WHEN 0 THEN 'established' WHEN 1 THEN 'failed' ELSE 'denied' END AS outcome,
                           e.error, e.pid, e.comm, e.uid, w.name AS workload,
                           i.container_name, i.pod_namespace, i.pod_name,
                           hex(e.local_addr) AS local_addr, e.local_port,
                           hex(e.peer_addr) AS peer_addr, e.peer_port,
                           CASE e.verdict WHEN 0 THEN 'allowed' WHEN 1 THEN 'would_deny' ELSE 'denied' END AS verdict
                    FROM event e
                    LEFT JOIN workload w ON w.id = e.workload_id
                    LEFT JOIN identity i ON i.id = e.identity_id;
                """)
        }
        // The workload at the other end (nullable: a peer ConnGuard does not know).
        migrator.registerMigration("store-v2") { db in
            try db.execute(sql: "ALTER TABLE event ADD COLUMN peer_workload_id INTEGER")
        }
        // UDP: the protocol of each event and aggregate (everything before
        // was TCP). The aggregate's unique key gains it, which SQLite can only
        // do by rebuilding the table; its ids are kept.
        migrator.registerMigration("store-v3") { db in
            try db.execute(sql: """
                ALTER TABLE event ADD COLUMN protocol INTEGER NOT NULL DEFAULT 0;
                CREATE TABLE connection_aggregate_v3 (
                    id INTEGER PRIMARY KEY,
                    workload_id INTEGER NOT NULL,
                    direction INTEGER NOT NULL,
                    peer_addr BLOB NOT NULL,
                    port INTEGER NOT NULL,
                    verdict INTEGER NOT NULL,
                    first_seen INTEGER NOT NULL,
                    last_seen INTEGER NOT NULL,
                    count INTEGER NOT NULL,
                    failed INTEGER NOT NULL,
                    protocol INTEGER NOT NULL DEFAULT 0,
                    UNIQUE (workload_id, direction, peer_addr, port, verdict, protocol)
                );
                INSERT INTO connection_aggregate_v3
                    (id, workload_id, direction, peer_addr, port, verdict, first_seen, last_seen, count, failed, protocol)
                    SELECT id, workload_id, direction, peer_addr, port, verdict, first_seen, last_seen, count, failed, 0
                    FROM connection_aggregate;
                DROP TABLE connection_aggregate;
                ALTER TABLE connection_aggregate_v3 RENAME TO connection_aggregate;
                """)
        }
        migrator.registerMigration("store-v4") { db in
            try db.execute(sql: """
                ALTER TABLE event ADD COLUMN peer_name TEXT;
                ALTER TABLE event ADD COLUMN expected_names TEXT;
                """)
        }
    }

    static let insertEvent = """
        INSERT INTO event (time, workload_id, identity_id, direction, outcome, error, pid, comm, uid,
                           cgroup_id, netns, local_addr, local_port, peer_addr, peer_port, hook,
                           process_known, verdict, peer_workload_id, protocol, peer_name, expected_names)
        VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
        """

    static let touchIdentity = "UPDATE identity SET last_event_id = ? WHERE id = ?"

    static let upsertAggregate = """
        INSERT INTO connection_aggregate (workload_id, direction, peer_addr, port, verdict,
                                          first_seen, last_seen, count, failed, protocol)
        VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
        ON CONFLICT (workload_id, direction, peer_addr, port, verdict, protocol) DO UPDATE SET
            first_seen = min(first_seen, excluded.first_seen),
            last_seen = max(last_seen, excluded.last_seen),
            count = count + excluded.count,
            failed = failed + excluded.failed
        """
}

/// The small integers the event table stores for enumerations. Fixed forever:
/// add new values, never renumber.
enum StoreCode {
    static func direction(_ d: ConnectionEvent.Direction) -> Int64 { d == .connect ? 0 : 1 }
    static func direction(_ c: Int64) -> ConnectionEvent.Direction { c == 0 ? .connect : .accept }

    static func outcome(_ o: ConnectionEvent.Outcome) -> Int64 {
        switch o {
        case .established: return 0
        case .failed: return 1
        case .denied: return 2
        }
    }
    static func outcome(_ c: Int64) -> ConnectionEvent.Outcome {
        switch c {
        case 0: return .established
        case 1: return .failed
        default: return .denied
        }
    }

    static func verdict(_ v: Verdict) -> Int64 {
        switch v {
        case .allowed: return 0
        case .wouldDeny: return 1
        case .denied: return 2
        }
    }
    static func verdict(_ c: Int64) -> Verdict {
        switch c {
        case 0: return .allowed
        case 1: return .wouldDeny
        default: return .denied
        }
    }

    static func proto(_ p: ConnectionEvent.IPProtocol) -> Int64 { p == .tcp ? 0 : 1 }
    static func proto(_ c: Int64) -> ConnectionEvent.IPProtocol { c == 1 ? .udp : .tcp }

    static func hook(_ h: ConnectionEvent.Hook) -> Int64 {
        switch h {
        case .tracepoint: return 0
        case .fentry: return 1
        case .kprobe: return 2
        case .unknown: return 3
        case .cgroupConnect: return 4
        case .cgroupSKB: return 5
        case .snapshot: return 6
        case .cgroupSockAddr: return 7
        }
    }
    static func hook(_ c: Int64) -> ConnectionEvent.Hook {
        switch c {
        case 0: return .tracepoint
        case 1: return .fentry
        case 2: return .kprobe
        case 4: return .cgroupConnect
        case 5: return .cgroupSKB
        case 6: return .snapshot
        case 7: return .cgroupSockAddr
        default: return .unknown
        }
    }
}

/// Addresses as 16 bytes, IPv4 mapped into ::ffff:0:0/96. Ordered as BLOBs
/// (memcmp), so every CIDR is one contiguous range.
enum StoreAddress {
    /// 16 bytes, big-endian halves, without an allocation.
    struct Raw {
        var high: UInt64
        var low: UInt64

        init(high: UInt64, low: UInt64) {
            self.high = high
            self.low = low
        }

        /// IPv4 as ::ffff:a.b.c.d, the form IPAddress keeps.
        init(_ a: IPAddress) {
            high = a.high
            low = a.low
        }

        func bind(_ statement: OpaquePointer?, _ index: Int32) {
            var bytes = (high.bigEndian, low.bigEndian)
            withUnsafeBytes(of: &bytes) { _ = sqlite3_bind_blob(statement, index, $0.baseAddress, 16, SQLITE_TRANSIENT) }
        }

        var data: Data {
            var bytes = (high.bigEndian, low.bigEndian)
            return withUnsafeBytes(of: &bytes) { Data($0) }
        }
    }

    static func bytes(_ a: IPAddress) -> [UInt8] { a.mappedBytes }

    static func data(_ a: IPAddress) -> Data { Data(bytes(a)) }

    static func address(_ d: Data) -> IPAddress {
        let b = [UInt8](d)
        if b.count == 16 { return IPAddress(ipv6: b) }  // folds the mapped form back to IPv4
        if b.count == 4 { return IPAddress(ipv4: b) }
        return IPAddress(ipv4: [0, 0, 0, 0])
    }

    /// The lowest and highest 16-byte values inside `cidr`.
    static func range(_ cidr: CIDR) -> (low: Data, high: Data) {
        let low = bytes(cidr.network)
        let prefix = cidr.prefixLength + (cidr.network.family == .ipv4 ? 96 : 0)
        var high = low
        for i in 0..<16 {
            let bitsHere = max(0, min(8, prefix - i * 8))
            high[i] |= bitsHere >= 8 ? 0 : UInt8(truncatingIfNeeded: 0xff >> bitsHere)
        }
        return (Data(low), Data(high))
    }

    static let mappedLow = Data([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 0, 0])
    static let mappedHigh = Data([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff])

    /// SQL that `column` is inside `cidr`. An IPv6 block wide enough to hold
    /// ::ffff:0:0/96 still matches no IPv4 address, as `CIDR.contains` says.
    static func condition(_ column: String, _ cidr: CIDR) -> (String, [(any DatabaseValueConvertible)?]) {
        let r = range(cidr)
        if cidr.network.family == .ipv6
            && !r.high.lexicographicallyPrecedes(mappedLow) && !mappedHigh.lexicographicallyPrecedes(r.low) {
            return ("(\(column) BETWEEN ? AND ? AND \(column) NOT BETWEEN ? AND ?)", [r.low, r.high, mappedLow, mappedHigh])
        }
        return ("\(column) BETWEEN ? AND ?", [r.low, r.high])
    }
}
