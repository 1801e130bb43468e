import ConnGuardCore
import Foundation
import GRDB
import GRDBSQLite
import Glibc

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
