import ConnGuardCore
@testable import ConnGuardStore
import Foundation
import GRDB
import XCTest

final class EventStoreTests: StoreTestCase {
    func testOpenMakesPrivateDirectoriesAndFiles() throws {
        let path = directory + "/var/lib/connguard/connguard.db"
        let store = try EventStore(path: path)
        try store.append([connection(base)])
        for (p, mode) in [(directory + "/var", 0o700), (directory + "/var/lib", 0o700), (directory + "/var/lib/connguard", 0o700),
                          (path, 0o600), (path + "-wal", 0o600), (path + "-shm", 0o600)] {
            var st = stat()
            XCTAssertEqual(stat(p, &st), 0, p)
            XCTAssertEqual(Int(st.st_mode) & 0o777, mode, p)
        }
        let journal = try store.database.read { db in try String.fetchOne(db, sql: "PRAGMA journal_mode") }
        XCTAssertEqual(journal, "wal")
        try store.close()
    }

    func testRoundTripKeepsEveryField() throws {
        let store = try EventStore(path: dbPath)
        var batch = dataset(count: 300)
        var odd = connection(base + 1, .accept, local: "fd00::9", localPort: 8443, peer: "2001:db8::1", peerPort: 61000,
                             outcome: .failed, identity: dockerC, verdict: .denied, pid: 0, comm: "we\u{1}ird\"name")
        odd.event.hook = .unknown
        batch.append(odd)
        batch.sort { $0.event.timeNanoseconds < $1.event.timeNanoseconds }
        let stored = numbered(batch, try store.append(batch))
        let back = try store.query(ConnectionQuery())
        XCTAssertEqual(back.count, stored.count)
        XCTAssertEqual(back, expected(stored, ConnectionQuery()))
        try store.close()
    }

    /// The hook codes in existing databases keep their meaning: new hooks
    /// get new codes, never an old one.
    func testHookCodesAreFixed() throws {
        let fixed: [(ConnectionEvent.Hook, Int64)] = [
            (.tracepoint, 0), (.fentry, 1), (.kprobe, 2), (.unknown, 3), (.cgroupConnect, 4), (.cgroupSKB, 5), (.snapshot, 6),
            (.cgroupSockAddr, 7),
        ]
        XCTAssertEqual(Set(fixed.map(\.0.rawValue)), Set(ConnectionEvent.Hook.allCases.map(\.rawValue)), "every hook has a code here")
        for (hook, code) in fixed {
            XCTAssertEqual(StoreCode.hook(hook), code, "\(hook)")
            XCTAssertEqual(StoreCode.hook(code), hook, "\(code)")
        }
        XCTAssertEqual(StoreCode.hook(99), .unknown, "a code from a later version")
        let store = try EventStore(path: dbPath)
        let batch = fixed.enumerated().map { i, h in
            var c = connection(base + Int64(i) * second)
            c.event.hook = h.0
            return c
        }
        _ = try store.append(batch)
        XCTAssertEqual(try store.query(ConnectionQuery()).map(\.event.hook).sorted { $0.rawValue < $1.rawValue },
                       fixed.map(\.0).sorted { $0.rawValue < $1.rawValue })
        try store.close()
    }

    func testEveryFilterNarrowsAsSpecified() throws {
        let store = try EventStore(path: dbPath)
        let data = dataset(count: 1200)
        var all: [StoredConnection] = []
        for chunk in stride(from: 0, to: data.count, by: 250) {
            let batch = Array(data[chunk..<min(chunk + 250, data.count)])
            all += numbered(batch, try store.append(batch))
        }
        let mid = all[all.count / 2].event.timeNanoseconds
        let queries: [(String, ConnectionQuery)] = [
            ("since", ConnectionQuery(since: mid)),
            ("until", ConnectionQuery(until: mid)),
            ("since+until", ConnectionQuery(since: mid - 100 * second, until: mid + 100 * second)),
            ("last", ConnectionQuery(last: 17)),
            ("last more than all", ConnectionQuery(last: 1_000_000)),
            ("workload", ConnectionQuery(workload: "shop/web/app")),
            ("workload unknown", ConnectionQuery(workload: Identity.unknownWorkload)),
            ("workload absent", ConnectionQuery(workload: "nope")),
            ("container name", ConnectionQuery(container: "redis")),
            ("container name shared by replicas", ConnectionQuery(container: "app")),
            ("container id prefix", ConnectionQuery(container: "a1a1a1")),
            ("container id full", ConnectionQuery(container: String(repeating: "b7", count: 32))),
            ("container absent", ConnectionQuery(container: "zzz")),
            ("namespace", ConnectionQuery(namespace: "shop")),
            ("pod name in two namespaces", ConnectionQuery(pod: "web-0")),
            ("pod namespace/name", ConnectionQuery(pod: "billing/web-0")),
            ("port local or remote", ConnectionQuery(port: 443)),
            ("ephemeral port", ConnectionQuery(port: 40_001)),
            ("port 0 (none)", ConnectionQuery(port: 0)),
            ("peer /32", ConnectionQuery(peer: CIDR("10.9.0.1")!)),
            ("peer /16", ConnectionQuery(peer: CIDR("10.9.0.0/16")!)),
            ("peer /8", ConnectionQuery(peer: CIDR("10.0.0.0/8")!)),
            ("peer v4 /0", ConnectionQuery(peer: CIDR("0.0.0.0/0")!)),
            ("peer v6 /64", ConnectionQuery(peer: CIDR("fd00::/64")!)),
            ("peer v6 /128", ConnectionQuery(peer: CIDR("2001:db8::5")!)),
            ("peer v6 /0", ConnectionQuery(peer: CIDR("::/0")!)),
            ("peer odd prefix", ConnectionQuery(peer: CIDR("10.9.0.0/21")!)),
            ("direction in", ConnectionQuery(direction: .accept)),
            ("direction out", ConnectionQuery(direction: .connect)),
            ("verdict", ConnectionQuery(verdict: .wouldDeny)),
            ("afterID", ConnectionQuery(afterID: all[700].id!)),
            ("afterID + last", ConnectionQuery(last: 5, afterID: all[700].id!)),
            ("afterID past the end", ConnectionQuery(afterID: all.last!.id!)),
            ("all together", ConnectionQuery(since: all[100].event.timeNanoseconds, until: all[1100].event.timeNanoseconds,
                                             last: 3, workload: "shop/web/app", container: "app", namespace: "shop",
                                             pod: "shop/web-1", port: 443, peer: CIDR("10.0.0.0/8")!, direction: .connect,
                                             verdict: .allowed)),
            ("benchmark shape", ConnectionQuery(since: mid, workload: "billing/api/api")),
            ("benchmark shape, last", ConnectionQuery(since: mid, last: 10, workload: "billing/api/api")),
        ]
        for (name, q) in queries {
            let want = expected(all, q)
            let got = try store.query(q)
            XCTAssertEqual(got.map(\.id), want.map(\.id), name)
            XCTAssertEqual(got, want, name)
            let expectEmpty = q.workload == "nope" || q.container == "zzz" || q.port == 0 || q.afterID == all.last!.id!
            if !expectEmpty && q != ConnectionQuery(last: 1_000_000) {
                XCTAssertFalse(got.isEmpty, "\(name): the data set should exercise this filter")
                XCTAssertLessThan(got.count, all.count + (q.peer == nil && q.last == nil ? 0 : 1), name)
            }
            var streamed: [StoredConnection] = []
            try store.query(q) { streamed.append($0) }
            XCTAssertEqual(streamed, got, name)
        }
        try store.close()
    }

    func testAggregatesCountAcrossBatches() throws {
        let store = try EventStore(path: dbPath)
        // The same outgoing connection in three batches, one of them failed.
        try store.append([connection(base + 10 * second, localPort: 41_000), connection(base + 5 * second, localPort: 41_001)])
        try store.append([connection(base + 20 * second, localPort: 41_002, outcome: .failed)])
        try store.append([connection(base + 15 * second, localPort: 41_003),
                          // another replica of the same workload: same aggregate
                          connection(base + 16 * second, identity: podA1),
                          // other verdict, other peer, other port, other direction: other aggregates
                          connection(base + 16 * second, verdict: .wouldDeny),
                          connection(base + 17 * second, peer: "10.9.0.2"),
                          connection(base + 18 * second, peerPort: 80),
                          // accepted: the peer is the client, the port the local listener's
                          connection(base + 19 * second, .accept, local: "10.0.0.5", localPort: 8080, peer: "172.16.0.9", peerPort: 55_555),
                          connection(base + 21 * second, .accept, local: "10.0.0.5", localPort: 8080, peer: "172.16.0.9", peerPort: 55_556,
                                     identity: podB)])
        let aggregates = try store.queryAggregates(ConnectionQuery())
        XCTAssertEqual(aggregates.count, 6)
        let main = try XCTUnwrap(aggregates.first { $0.peer == ip("10.9.0.1") && $0.port == 443 && $0.verdict == .allowed })
        XCTAssertEqual(main.workload, "shop/web/app")
        XCTAssertEqual(main.namespace, "shop")
        XCTAssertEqual(main.direction, .connect)
        XCTAssertEqual(main.count, 5)
        XCTAssertEqual(main.failedCount, 1)
        XCTAssertEqual(main.firstSeen, base + 5 * second)
        XCTAssertEqual(main.lastSeen, base + 20 * second)
        let accepted = try XCTUnwrap(aggregates.first { $0.direction == .accept && $0.workload == "shop/web/app" })
        XCTAssertEqual(accepted.peer, ip("172.16.0.9"))
        XCTAssertEqual(accepted.port, 8080)
        XCTAssertEqual(accepted.count, 1)
        XCTAssertEqual(aggregates.reduce(0) { $0 + $1.count }, 10)

        // Filters on aggregates.
        XCTAssertEqual(try store.queryAggregates(ConnectionQuery(workload: "billing/api/api")).map(\.port), [8080])
        XCTAssertEqual(try store.queryAggregates(ConnectionQuery(namespace: "billing")).count, 1)
        XCTAssertEqual(try store.queryAggregates(ConnectionQuery(pod: "shop/web-1")).count, 5)
        XCTAssertEqual(try store.queryAggregates(ConnectionQuery(container: "api")).count, 1)
        XCTAssertEqual(try store.queryAggregates(ConnectionQuery(port: 80)).count, 1)
        XCTAssertEqual(try store.queryAggregates(ConnectionQuery(peer: CIDR("172.16.0.0/12")!)).count, 2)
        XCTAssertEqual(try store.queryAggregates(ConnectionQuery(direction: .accept)).count, 2)
        XCTAssertEqual(try store.queryAggregates(ConnectionQuery(verdict: .wouldDeny)).count, 1)
        // Overlap with the time range.
        XCTAssertEqual(try store.queryAggregates(ConnectionQuery(since: base + 20 * second)).count, 2)
        XCTAssertEqual(try store.queryAggregates(ConnectionQuery(until: base + 16 * second)).count, 1)
        let lastTwo = try store.queryAggregates(ConnectionQuery(last: 2))
        XCTAssertEqual(lastTwo.map(\.lastSeen), [base + 20 * second, base + 21 * second])
        XCTAssertThrowsError(try store.queryAggregates(ConnectionQuery(afterID: 1)))
        // JSON of an aggregate.
        let json = try JSONSerialization.jsonObject(with: Data(main.jsonLine.utf8)) as? [String: Any]
        XCTAssertEqual(json?["count"] as? Int, 5)
        XCTAssertEqual(json?["peer"] as? String, "10.9.0.1")
        XCTAssertEqual(json?["first_seen"] as? String, "2027-01-15T08:00:05.000000Z")
        try store.close()
    }

    func testAggregatesMatchEventsOnALargerSet() throws {
        let store = try EventStore(path: dbPath)
        let data = dataset(count: 2000, seed: 7)
        for chunk in stride(from: 0, to: data.count, by: 300) {
            try store.append(Array(data[chunk..<min(chunk + 300, data.count)]))
        }
        struct Key: Hashable { var w: String; var d: ConnectionEvent.Direction; var p: IPAddress; var port: UInt16; var v: Verdict }
        var want: [Key: (Int64, Int64, Int64, Int64)] = [:]
        for c in data {
            let k = Key(w: c.identity.workload, d: c.event.direction, p: c.event.peer, port: c.event.destinationPort, v: c.verdict)
            let t = c.event.timeNanoseconds
            let f: Int64 = c.event.outcome == .failed ? 1 : 0
            if let o = want[k] { want[k] = (min(o.0, t), max(o.1, t), o.2 + 1, o.3 + f) } else { want[k] = (t, t, 1, f) }
        }
        let got = try store.queryAggregates(ConnectionQuery())
        XCTAssertEqual(got.count, want.count)
        for a in got {
            let w = want[Key(w: a.workload, d: a.direction, p: a.peer, port: a.port, v: a.verdict)]
            XCTAssertEqual(w?.0, a.firstSeen)
            XCTAssertEqual(w?.1, a.lastSeen)
            XCTAssertEqual(w?.2, a.count)
            XCTAssertEqual(w?.3, a.failedCount)
        }
        try store.close()
    }

    func testRetentionByAgeAndCount() throws {
        let store = try EventStore(path: dbPath)
        let now = base + 10_000 * second
        // 100 old events (older than an hour), 300 recent ones.
        var batch: [StoredConnection] = []
        for i in 0..<100 { batch.append(connection(now - 7200 * second + Int64(i), peer: "10.1.0.\(i % 5)", identity: podB)) }
        for i in 0..<300 { batch.append(connection(now - 600 * second + Int64(i), peer: "10.2.0.\(i % 5)")) }
        try store.append(batch)

        var r = try store.prune(maxAge: .seconds(3600), maxEvents: 1000, aggregateMaxAge: .seconds(86_400), now: now, chunk: 7)
        XCTAssertEqual(r.eventsByAge, 100)
        XCTAssertEqual(r.eventsByCount, 0)
        XCTAssertEqual(r.aggregates, 0)
        XCTAssertEqual(r.identities, 1)  // podB had only old events
        XCTAssertEqual(try store.query(ConnectionQuery()).count, 300)
        XCTAssertTrue(try store.query(ConnectionQuery()).allSatisfy { $0.event.timeNanoseconds >= now - 3600 * second })
        // Aggregates outlive their events.
        XCTAssertEqual(try store.queryAggregates(ConnectionQuery(workload: "billing/api/api")).reduce(0) { $0 + $1.count }, 100)

        r = try store.prune(maxAge: .seconds(3600), maxEvents: 120, aggregateMaxAge: .seconds(86_400), now: now, chunk: 50)
        XCTAssertEqual(r.eventsByCount, 180)
        let left = try store.query(ConnectionQuery())
        XCTAssertEqual(left.count, 120)
        XCTAssertEqual(left.first?.event.timeNanoseconds, now - 600 * second + 180)  // the newest were kept

        // Aggregates by their own age.
        r = try store.prune(maxAge: .seconds(3600), maxEvents: 120, aggregateMaxAge: .seconds(3600), now: now)
        XCTAssertEqual(r.aggregates, 5)
        XCTAssertEqual(try store.queryAggregates(ConnectionQuery()).count, 5)

        // An identity removed by the collection above is interned afresh.
        try store.append([connection(now, identity: podB)])
        XCTAssertEqual(try store.query(ConnectionQuery(workload: "billing/api/api")).map(\.identity), [podB])

        // maxEvents 0 empties the table; ids keep growing.
        let lastID = try store.stats().lastEventID
        r = try store.prune(maxAge: .seconds(3600), maxEvents: 0, aggregateMaxAge: .seconds(86_400), now: now)
        XCTAssertEqual(try store.stats().events, 0)
        let ids = try XCTUnwrap(try store.append([connection(now)]))
        XCTAssertGreaterThan(ids.lowerBound, lastID)

        XCTAssertThrowsError(try store.prune(maxAge: .seconds(1), maxEvents: -1, aggregateMaxAge: .seconds(1)))
        XCTAssertThrowsError(try store.prune(maxAge: .seconds(-1), maxEvents: 1, aggregateMaxAge: .seconds(1)))
        // A huge age keeps everything rather than overflowing.
        r = try store.prune(maxAge: .seconds(Int64.max), maxEvents: 10, aggregateMaxAge: .seconds(Int64.max), now: now)
        XCTAssertEqual(r.eventsByAge + r.aggregates, 0)
        try store.close()
    }

    func testReopenKeepsDataAndIDs() throws {
        var store = try EventStore(path: dbPath)
        let first = numbered([connection(base), connection(base + 1, identity: host)], try store.append([connection(base), connection(base + 1, identity: host)]))
        try store.close()
        XCTAssertThrowsError(try store.query(ConnectionQuery()))

        store = try EventStore(path: dbPath)
        XCTAssertEqual(try store.query(ConnectionQuery()), first)
        let more = try XCTUnwrap(try store.append([connection(base + 2, identity: host)]))
        XCTAssertEqual(more.lowerBound, first.last!.id! + 1)
        XCTAssertEqual(try store.query(ConnectionQuery(afterID: first.last!.id!)).count, 1)
        XCTAssertEqual(try store.queryAggregates(ConnectionQuery()).map(\.count), [1, 2])
        let stats = try store.stats()
        XCTAssertEqual(stats.events, 3)
        XCTAssertEqual(stats.aggregates, 2)
        XCTAssertEqual(stats.workloads, 2)
        XCTAssertEqual(stats.oldestEvent, base)
        XCTAssertEqual(stats.newestEvent, base + 2)
        XCTAssertEqual(stats.lastEventID, more.upperBound)
        XCTAssertGreaterThan(stats.totalBytes, 0)
        XCTAssertEqual(stats.totalBytes, stats.databaseBytes + stats.walBytes + stats.shmBytes)
        try store.close()
    }

    func testReadOnlyOpenBesideAWriter() throws {
        XCTAssertThrowsError(try EventStore(path: dbPath, options: .init(readOnly: true))) { error in
            XCTAssertEqual(error as? StoreError, .missing(dbPath))
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: dbPath))
        let writer = try EventStore(path: dbPath)
        try writer.append([connection(base)])
        let reader = try EventStore(path: dbPath, options: .init(readOnly: true))
        XCTAssertEqual(try reader.query(ConnectionQuery()).count, 1)
        try writer.append([connection(base + 1)])
        XCTAssertEqual(try reader.query(ConnectionQuery()).count, 2)
        XCTAssertThrowsError(try reader.append([connection(base + 2)]))
        try reader.close()
        try writer.close()

        // A plain SQLite file that is not ours.
        let other = directory + "/other.db"
        let q = try DatabaseQueue(path: other)
        try q.write { db in try db.execute(sql: "CREATE TABLE t (x)") }
        try q.close()
        XCTAssertThrowsError(try EventStore(path: other, options: .init(readOnly: true))) { error in
            XCTAssertEqual(error as? StoreError, .notInitialized(other))
        }
        XCTAssertThrowsError(try EventStore(path: directory))  // a directory
        XCTAssertThrowsError(try EventStore(path: ""))
    }

    func testLaterLayersAddTheirOwnMigrations() throws {
        let policy = EventStore.Migration("policy-v1") { db in
            try db.execute(sql: "CREATE TABLE baseline (workload_id INTEGER NOT NULL, peer_addr BLOB, port INTEGER)")
        }
        var store = try EventStore(path: dbPath, options: .init(migrations: [policy]))
        try store.append([connection(base)])
        try store.database.write { db in try db.execute(sql: "INSERT INTO baseline VALUES (1, NULL, 443)") }
        try store.close()
        // A later version adds a step; the first is not run again.
        let policy2 = EventStore.Migration("policy-v2") { db in
            try db.execute(sql: "ALTER TABLE baseline ADD COLUMN mode TEXT")
        }
        store = try EventStore(path: dbPath, options: .init(migrations: [policy, policy2]))
        XCTAssertEqual(try store.database.read { db in try Int.fetchOne(db, sql: "SELECT count(*) FROM baseline WHERE mode IS NULL") }, 1)
        let applied = try store.database.read { db in try EventStore.migrator([policy, policy2]).appliedIdentifiers(db) }
        XCTAssertEqual(Set(applied), ["store-v1", "store-v2", "store-v3", "store-v4", "policy-v1", "policy-v2"])
        try store.close()
        // The CLI, which knows only the store's migrations, still opens it.
        let cli = try EventStore(path: dbPath, options: .init(readOnly: true))
        XCTAssertEqual(try cli.query(ConnectionQuery()).count, 1)
        try cli.close()
    }

    func testBadQueriesAreClearErrors() throws {
        let store = try EventStore(path: dbPath)
        try store.append(dataset(count: 20))
        let bad: [(ConnectionQuery, QueryError)] = [
            (ConnectionQuery(last: 0), .invalidLast(0)),
            (ConnectionQuery(last: -5), .invalidLast(-5)),
            (ConnectionQuery(last: Int.min), .invalidLast(Int.min)),
            (ConnectionQuery(since: base + 10, until: base), .invertedTimeRange(since: base + 10, until: base)),
            (ConnectionQuery(since: -1), .timeOutOfRange("since", -1)),
            (ConnectionQuery(until: Int64.min), .timeOutOfRange("until", Int64.min)),
            (ConnectionQuery(port: 65536), .invalidPort(65536)),
            (ConnectionQuery(port: -1), .invalidPort(-1)),
            (ConnectionQuery(port: Int.max), .invalidPort(Int.max)),
            (ConnectionQuery(afterID: -1), .invalidAfterID(-1)),
            (ConnectionQuery(workload: ""), .emptyValue("workload")),
            (ConnectionQuery(container: ""), .emptyValue("container")),
            (ConnectionQuery(pod: "a/b/c"), .invalidPod("a/b/c")),
            (ConnectionQuery(pod: "/b"), .invalidPod("/b")),
        ]
        for (q, want) in bad {
            XCTAssertThrowsError(try store.query(q), "\(q)") { XCTAssertEqual($0 as? QueryError, want) }
            XCTAssertThrowsError(try store.queryAggregates(q), "\(q)") { XCTAssertEqual($0 as? QueryError, want) }
            XCTAssertFalse(want.description.isEmpty)
        }
        // Huge but valid numbers work.
        XCTAssertEqual(try store.query(ConnectionQuery(last: Int.max)).count, 20)
        XCTAssertEqual(try store.query(ConnectionQuery(since: Int64.max)).count, 0)
        XCTAssertEqual(try store.query(ConnectionQuery(until: Int64.max)).count, 20)
        XCTAssertEqual(try store.query(ConnectionQuery(afterID: Int64.max)).count, 0)
        XCTAssertEqual(try store.queryAggregates(ConnectionQuery(last: Int.max)).isEmpty, false)
        XCTAssertEqual(try store.query(ConnectionQuery(since: base, until: base)).count, 0)
        // Relative times ("15m" ago): TimeArgument, in ConnGuardCore (RangeTests).
        try store.close()
    }

    /// UDP and TCP to the same peer and port are two aggregates (store-v3),
    /// and `proto` filters events and aggregates.
    func testProtocolKeepsAggregatesApartAndFilters() throws {
        let store = try EventStore(path: dbPath)
        var udp = connection(base + 1, peerPort: 53)
        udp.event.proto = .udp
        var counted = connection(base + 2, peerPort: 53)
        counted.event.proto = .udp
        counted.repeatCount = 99
        try store.append([connection(base, peerPort: 53), udp, counted])
        XCTAssertEqual(try store.query(ConnectionQuery(proto: .udp)).map(\.event.proto), [.udp])
        XCTAssertEqual(try store.query(ConnectionQuery(proto: .tcp)).count, 1)
        let aggregates = try store.queryAggregates(ConnectionQuery())
        XCTAssertEqual(aggregates.count, 2)
        XCTAssertEqual(aggregates.first { $0.proto == .udp }?.count, 100)
        XCTAssertEqual(aggregates.first { $0.proto == .tcp }?.count, 1)
        XCTAssertEqual(try store.queryAggregates(ConnectionQuery(proto: .udp)).map(\.count), [100])
        XCTAssertTrue(aggregates.first { $0.proto == .udp }!.jsonLine.contains(#""protocol":"udp""#))
        try store.close()
    }

    func testJSONHasTheTraceKeysAndIdentity() throws {
        let store = try EventStore(path: dbPath)
        try store.append([connection(base, outcome: .failed, identity: podA0, verdict: .wouldDeny),
                          connection(base + 1, identity: host, peerWorkload: "shop/db/postgres")])
        let rows = try store.query(ConnectionQuery())
        let traceKeys: Set<String> = ["time", "event", "outcome", "error", "pid", "comm", "uid", "cgroup_id", "family", "src",
                                      "sport", "dst", "dport", "netns", "hook", "process_known", "protocol", "peer_name"]
        let pod = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(rows[0].jsonLine.utf8)) as? [String: Any])
        XCTAssertEqual(Set(pod.keys), traceKeys.union(["workload", "container", "pod", "verdict", "peer_workload"]))
        XCTAssertEqual(pod["workload"] as? String, "shop/web/app")
        XCTAssertEqual(pod["verdict"] as? String, "would_deny")
        XCTAssertEqual(pod["error"] as? String, "ECONNREFUSED")
        XCTAssertTrue(rows[0].jsonLine.contains(#""cgroup_id":18446744073709551600,"#))
        let container = try XCTUnwrap(pod["container"] as? [String: Any])
        XCTAssertEqual(container["id"] as? String, podA0.container?.id)
        XCTAssertEqual(container["runtime"] as? String, "containerd")
        XCTAssertEqual(container["name"] as? String, "app")
        XCTAssertEqual(container["image"] as? String, "web:1")
        let podObject = try XCTUnwrap(pod["pod"] as? [String: Any])
        XCTAssertEqual(podObject as? [String: String], ["namespace": "shop", "name": "web-0", "uid": "uid-a0", "container": "app"])
        let hostLine = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(rows[1].jsonLine.utf8)) as? [String: Any])
        XCTAssertTrue(hostLine["container"] is NSNull)
        XCTAssertTrue(hostLine["pod"] is NSNull)
        // The workload at the other end, when known; null when not.
        XCTAssertTrue(pod["peer_workload"] is NSNull)
        XCTAssertEqual(hostLine["peer_workload"] as? String, "shop/db/postgres")
        XCTAssertEqual(rows[1].peerWorkload, "shop/db/postgres")

        // Codable round trip.
        let data = try JSONEncoder().encode(rows)
        XCTAssertEqual(try JSONDecoder().decode([StoredConnection].self, from: data), rows)
        let aggregates = try store.queryAggregates(ConnectionQuery())
        XCTAssertEqual(try JSONDecoder().decode([AggregatedConnection].self, from: JSONEncoder().encode(aggregates)), aggregates)
        try store.close()
    }

    func testAddressRanges() {
        func hex(_ d: Data) -> String { d.map { String(format: "%02x", $0) }.joined() }
        var r = StoreAddress.range(CIDR("10.1.0.0/16")!)
        XCTAssertEqual(hex(r.low), "00000000000000000000ffff0a010000")
        XCTAssertEqual(hex(r.high), "00000000000000000000ffff0a01ffff")
        r = StoreAddress.range(CIDR("0.0.0.0/0")!)
        XCTAssertEqual(hex(r.low), "00000000000000000000ffff00000000")
        XCTAssertEqual(hex(r.high), "00000000000000000000ffffffffffff")
        r = StoreAddress.range(CIDR("fd00::/7")!)
        XCTAssertEqual(hex(r.low), "fc000000000000000000000000000000")
        XCTAssertEqual(hex(r.high), "fdffffffffffffffffffffffffffffff")
        XCTAssertEqual(StoreAddress.address(StoreAddress.data(ip("1.2.3.4"))), ip("1.2.3.4"))
        XCTAssertEqual(StoreAddress.address(StoreAddress.data(ip("::1"))), ip("::1"))
    }
}
