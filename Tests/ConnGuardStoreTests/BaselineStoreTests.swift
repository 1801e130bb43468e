import ConnGuardCore
@testable import ConnGuardStore
import Foundation
import GRDB
import XCTest

private struct Injected: Error {}

final class BaselineStoreTests: StoreTestCase {
    func open(failpoint: (@Sendable (String) throws -> Void)? = nil) throws -> BaselineStore {
        let store = try EventStore(path: dbPath, options: .init(migrations: BaselineSchema.migrations))
        return BaselineStore(store: store, failpoint: failpoint)
    }

    func rule(_ peer: String, _ port: UInt16, first: Int64 = base, last: Int64 = base + second, hits: Int64 = 1,
              direction: ConnectionEvent.Direction = .connect) -> Rule {
        Rule(key: RuleKey(direction: direction, peer: Peer(description: peer)!, port: port),
             firstSeen: first, lastSeen: last, hits: hits)
    }

    func inbound(_ peer: String, _ port: UInt16) -> Rule { rule(peer, port, direction: .accept) }

    /// Every peer kind: IPv4 and IPv6 addresses, blocks of both, a workload.
    var mixedRules: [Rule] {
        [rule("10.9.0.1", 443), rule("2001:db8::5", 5432, hits: 7), inbound("10.0.0.0/8", 8080),
         rule("fd00::/64", 53), rule("workload:shop/web/app", 80, hits: 3), inbound("workload:redis", 6379),
         rule("0.0.0.0/0", 443, first: base - 5, last: base + 9 * second, hits: 1 << 40)]
    }

    func loaded(_ s: BaselineStore) throws -> [String: Baseline] {
        Dictionary(uniqueKeysWithValues: try s.loadAll().map { ($0.baseline.workload, $0.baseline) })
    }

    func testPeerDescriptionRoundTrips() {
        for text in ["10.9.0.1", "2001:db8::5", "10.0.0.0/8", "fd00::/64", "workload:shop/web/app", "workload:a:b"] {
            XCTAssertEqual(Peer(description: text)?.description, text)
        }
        XCTAssertEqual(Peer(description: "10.1.2.3/32"), .network(CIDR("10.1.2.3")!))
        XCTAssertEqual(Peer(description: "workload:x"), .workload("x"))
        for bad in ["", "workload:", "nope", "10.0.0.1/33", "10.0.0.256"] {
            XCTAssertNil(Peer(description: bad), bad)
        }
    }

    func testRoundTripEveryPeerKind() throws {
        let s = try open()
        let a = Baseline(workload: "shop/web/app", mode: .monitor, rules: mixedRules, learningSince: base,
                         lastChange: base + 10 * second, incomplete: true, lastWouldDeny: base + 20 * second)
        let b = Baseline(workload: "redis", mode: .enforce, rules: [inbound("workload:shop/web/app", 6379)],
                         learningSince: base - second)
        let c = Baseline(workload: "empty", mode: .learn, learningSince: base)
        for x in [a, b, c] { try s.save(x) }
        let all = try s.loadAll()
        XCTAssertEqual(all.map(\.baseline.workload), ["empty", "redis", "shop/web/app"])
        XCTAssertEqual(Set(all.map(\.workloadID)), [1, 2, 3])
        let back = try loaded(s)
        XCTAssertEqual(back["shop/web/app"], a)
        XCTAssertEqual(back["redis"], b)
        XCTAssertEqual(back["empty"], c)
        XCTAssertEqual(back["shop/web/app"]?.rules.count, mixedRules.count)
        try s.store.close()
    }

    func testWorkloadIDsAreStableAndNeverReused() throws {
        var s = try open()
        let a = try s.workloadID(for: "a", createWith: .learn, now: base)
        let b = try s.workloadID(for: "b", createWith: .monitor, now: base + second)
        XCTAssertEqual([a, b], [1, 2])
        XCTAssertEqual(try s.workloadID(for: "a", createWith: .enforce, now: base + 5 * second), 1)
        let created = try loaded(s)
        XCTAssertEqual(created["a"], Baseline(workload: "a", mode: .learn, learningSince: base))
        XCTAssertEqual(created["b"], Baseline(workload: "b", mode: .monitor, learningSince: base + second))
        try s.saveRules(workload: "b", [rule("10.0.0.1", 1)])
        try s.store.close()

        s = try open()
        XCTAssertEqual(try s.workloadID(for: "b", createWith: .learn, now: base), 2)
        XCTAssertEqual(try s.workloadID(for: "a", createWith: .learn, now: base), 1)
        // Deleting the newest baseline (its rules go with it) does not free its id.
        try s.store.database.write { db in try db.execute(sql: "DELETE FROM baseline WHERE workload = 'b'") }
        XCTAssertEqual(try s.store.database.read { db in try Int.fetchOne(db, sql: "SELECT count(*) FROM baseline_rule") }, 0)
        XCTAssertEqual(try s.workloadID(for: "c", createWith: .learn, now: base), 3)
        try s.store.close()

        s = try open()
        XCTAssertEqual(try s.workloadID(for: "b", createWith: .learn, now: base), 4)
        try s.save(Baseline(workload: "d", mode: .learn, learningSince: base))
        XCTAssertEqual(Dictionary(uniqueKeysWithValues: try s.loadAll().map { ($0.baseline.workload, $0.workloadID) }),
                       ["a": 1, "c": 3, "b": 4, "d": 5])
        try s.store.close()
    }

    func testSaveDeletesRemovedRulesAndUpdatesChanged() throws {
        let s = try open()
        var b = Baseline(workload: "w", mode: .learn, rules: mixedRules, learningSince: base)
        try s.save(b)
        let id = try s.workloadID(for: "w", now: 0)
        let gone = mixedRules[1].key, gone2 = mixedRules[4].key, changed = mixedRules[0].key
        b.rules[gone] = nil
        b.rules[gone2] = nil
        b.rules[changed]!.hits = 99
        b.rules[changed]!.lastSeen = base + 50 * second
        let added = inbound("192.168.1.20", 22)
        b.rules[added.key] = added
        b.mode = .monitor
        b.lastChange = base + 60 * second
        try s.save(b)
        XCTAssertEqual(try loaded(s)["w"], b)
        XCTAssertEqual(try s.workloadID(for: "w", now: 0), id)
        XCTAssertEqual(try s.store.database.read { db in try Int.fetchOne(db, sql: "SELECT count(*) FROM baseline_rule") },
                       mixedRules.count - 1)
        b.rules = [:]
        try s.save(b)
        XCTAssertEqual(try loaded(s)["w"]?.rules, [:])
        try s.store.close()
    }

    func testSaveIsAllOrNothing() throws {
        let s = try open(failpoint: { if $0 == "save.before-delete" { throw Injected() } })
        let b = Baseline(workload: "w", mode: .learn, rules: mixedRules, learningSince: base)
        XCTAssertThrowsError(try s.save(b)) { XCTAssert($0 is Injected) }
        XCTAssertTrue(try s.loadAll().isEmpty)
        try s.store.close()
    }

    func testSaveRulesUpserts() throws {
        let s = try open()
        XCTAssertThrowsError(try s.saveRules(workload: "w", [rule("10.0.0.1", 1)])) {
            XCTAssertEqual($0 as? BaselineStoreError, .unknownWorkload("w"))
        }
        _ = try s.workloadID(for: "w", createWith: .learn, now: base)
        try s.saveRules(workload: "w", [rule("10.0.0.1", 443, first: base + second, last: base + second, hits: 1),
                                        rule("workload:db", 5432, first: base + 2 * second, last: base + 2 * second, hits: 1)])
        try s.saveRules(workload: "w", [rule("10.0.0.1", 443, first: base + second, last: base + 9 * second, hits: 5),
                                        rule("fd00::1", 53, first: base + 3 * second, last: base + 3 * second, hits: 1)])
        // A stale copy never moves last_seen back.
        try s.saveRules(workload: "w", [rule("workload:db", 5432, first: base + 2 * second, last: base + second, hits: 2)])
        let b = try XCTUnwrap(try loaded(s)["w"])
        XCTAssertEqual(b.sortedRules.map { "\($0.key.peer) \($0.key.port) \($0.lastSeen - base) \($0.hits)" },
                       ["fd00::1 53 \(3 * second) 1", "10.0.0.1 443 \(9 * second) 5", "workload:db 5432 \(2 * second) 2"])
        XCTAssertEqual(b.lastChange, base + 3 * second, "moves up to the newest rule")
        XCTAssertEqual(b.learningSince, base)
        try s.store.close()
    }

    func testSetModeAuditsAndRestartsLearning() throws {
        let s = try open()
        try s.save(Baseline(workload: "w", mode: .learn, rules: mixedRules, learningSince: base, incomplete: true))
        XCTAssertThrowsError(try s.setMode(workload: "nope", mode: .enforce, who: "op", now: base, reason: "")) {
            XCTAssertEqual($0 as? BaselineStoreError, .unknownWorkload("nope"))
        }
        try s.setMode(workload: "w", mode: .monitor, who: "agent", now: base + 10 * second, reason: "learning period over")
        var b = try XCTUnwrap(try loaded(s)["w"])
        XCTAssertEqual(b.mode, .monitor)
        XCTAssertEqual(b.lastChange, base + 10 * second)
        XCTAssertEqual(b.learningSince, base)
        XCTAssertTrue(b.incomplete)
        try s.setMode(workload: "w", mode: .enforce, who: "uid 0", now: base + 20 * second, reason: "")
        try s.setMode(workload: "w", mode: .learn, who: "uid 0", now: base + 30 * second, reason: "new release")
        b = try XCTUnwrap(try loaded(s)["w"])
        XCTAssertEqual(b.mode, .learn)
        XCTAssertEqual(b.learningSince, base + 30 * second)
        XCTAssertEqual(b.lastChange, base + 30 * second)
        XCTAssertFalse(b.incomplete)
        XCTAssertEqual(b.rules.count, mixedRules.count, "rules are kept")
        XCTAssertEqual(try s.audit(limit: 10, workload: "w"), [
            AuditEntry(time: base + 30 * second, who: "uid 0", workload: "w", action: "mode", detail: "enforce -> learn (new release)"),
            AuditEntry(time: base + 20 * second, who: "uid 0", workload: "w", action: "mode", detail: "monitor -> enforce"),
            AuditEntry(time: base + 10 * second, who: "agent", workload: "w", action: "mode",
                       detail: "learn -> monitor (learning period over)"),
        ])
        try s.store.close()
    }

    func testReplaceSwapsRulesAtomically() throws {
        let failing = FailSwitch()
        let s = try open(failpoint: { point in if failing.on && point == "replace.half-inserted" { throw Injected() } })
        let old = Baseline(workload: "w", mode: .learn, rules: mixedRules, learningSince: base)
        try s.save(old)
        let newRules = (1...20).map { rule("10.1.0.\($0)", 443) } + [rule("workload:other", 80)]
        let imported = Baseline(workload: "w", mode: .enforce, rules: newRules, learningSince: base - second)

        failing.on = true
        XCTAssertThrowsError(try s.replace(imported, who: "op", now: base + 100 * second)) { XCTAssert($0 is Injected) }
        XCTAssertEqual(try loaded(s)["w"], old, "a failed import leaves the baseline as it was")
        XCTAssertEqual(try s.audit(limit: 10, workload: nil), [])

        failing.on = false
        try s.replace(imported, who: "op", now: base + 100 * second)
        var expected = imported
        expected.lastChange = base + 100 * second
        XCTAssertEqual(try loaded(s)["w"], expected)
        XCTAssertEqual(try s.audit(limit: 10, workload: "w"),
                       [AuditEntry(time: base + 100 * second, who: "op", workload: "w", action: "import", detail: "21 rules"),
                        // The import changed the mode: audited as a mode change too.
                        AuditEntry(time: base + 100 * second, who: "op", workload: "w", action: "mode", detail: "learn -> enforce (import)")])
        // A new workload by import gets the next id.
        try s.replace(Baseline(workload: "new", mode: .monitor, learningSince: base), who: "op", now: base + 101 * second)
        XCTAssertEqual(try s.workloadID(for: "new", now: 0), 2)
        XCTAssertEqual(try s.audit(limit: 1, workload: nil).first?.detail, "0 rules")
        try s.store.close()
    }

    func testFlagsAndAuditQueries() throws {
        let s = try open()
        for w in ["a", "b"] { _ = try s.workloadID(for: w, createWith: .monitor, now: base) }
        try s.markIncomplete(workloads: ["a", "missing"])
        try s.recordWouldDeny(workload: "b", at: base + 5 * second)
        try s.recordWouldDeny(workload: "b", at: base + 3 * second)
        let all = try loaded(s)
        XCTAssertEqual(all["a"]?.incomplete, true)
        XCTAssertEqual(all["b"]?.incomplete, false)
        XCTAssertNil(all["a"]?.lastWouldDeny)
        XCTAssertEqual(all["b"]?.lastWouldDeny, base + 5 * second)

        let entries = (0..<5).map {
            AuditEntry(time: base + Int64($0) * second, who: "agent", workload: $0 % 2 == 0 ? "a" : nil, action: "note",
                       detail: "n\($0)")
        }
        for e in entries.shuffled() { try s.appendAudit(e) }
        XCTAssertEqual(try s.audit(limit: 3, workload: nil), entries.reversed().prefix(3).map { $0 })
        XCTAssertEqual(try s.audit(limit: 10, workload: "a"), [entries[4], entries[2], entries[0]])
        XCTAssertEqual(try s.audit(limit: 0, workload: nil), [])
        try s.store.close()
    }

    func testReopenKeepsEverything() throws {
        var s = try open()
        let a = Baseline(workload: "shop/web/app", mode: .enforce, rules: mixedRules, learningSince: base,
                         lastChange: base + second, incomplete: true, lastWouldDeny: base + 2 * second)
        try s.save(a)
        _ = try s.workloadID(for: "later", createWith: .learn, now: base + 3 * second)
        try s.saveRules(workload: "later", [rule("8.8.8.8", 53, first: base + 4 * second)])
        try s.setMode(workload: "later", mode: .monitor, who: "op", now: base + 5 * second, reason: "r")
        let before = try s.loadAll()
        let audit = try s.audit(limit: 100, workload: nil)
        try s.store.close()

        s = try open()
        let after = try s.loadAll()
        XCTAssertEqual(after.map(\.baseline), before.map(\.baseline))
        XCTAssertEqual(after.map(\.workloadID), before.map(\.workloadID))
        XCTAssertEqual(after.first { $0.baseline.workload == "shop/web/app" }?.baseline, a)
        XCTAssertEqual(try s.audit(limit: 100, workload: nil), audit)
        XCTAssertEqual(audit.count, 1)
        try s.store.close()
    }

    func testTenThousandRules() throws {
        let s = try open()
        var rules: [Rule] = []
        for i in 0..<10_000 {
            let peer = i % 3 == 0 ? "workload:w\(i % 97)" : i % 3 == 1 ? "10.\(i >> 8 & 255).\(i & 255).1" : "fd00::\(String(i, radix: 16))"
            rules.append(rule(peer, UInt16(1 + i % 60_000), hits: Int64(i), direction: i % 2 == 0 ? .connect : .accept))
        }
        var b = Baseline(workload: "big", mode: .learn, rules: rules, learningSince: base)
        XCTAssertEqual(b.rules.count, 10_000)
        var t = Date()
        try s.save(b)
        print("BaselineStore: save of 10,000 new rules: \(Int(Date().timeIntervalSince(t) * 1000)) ms")
        for k in b.rules.keys.prefix(1000) { b.rules[k]!.hits += 1 }
        for k in Array(b.rules.keys.suffix(500)) { b.rules[k] = nil }
        t = Date()
        try s.save(b)
        print("BaselineStore: save of 10,000 rules, 1,000 changed, 500 removed: \(Int(Date().timeIntervalSince(t) * 1000)) ms")
        t = Date()
        try s.saveRules(workload: "big", Array(b.rules.values))
        print("BaselineStore: saveRules of 9,500 rules: \(Int(Date().timeIntervalSince(t) * 1000)) ms")
        t = Date()
        let back = try loaded(s)
        print("BaselineStore: loadAll of 9,500 rules: \(Int(Date().timeIntervalSince(t) * 1000)) ms")
        XCTAssertEqual(back["big"], b)
        try s.store.close()
    }
}

/// A flag the failpoint closure reads (set from the test, on one thread).
private final class FailSwitch: @unchecked Sendable {
    var on = false
}
