import ConnGuardCluster
import ConnGuardCore
import ConnGuardTestSupport
import Foundation
import XCTest

/// The etcd backend against a real 3-member etcd on loopback: real
/// processes, real faults (kill -9 of members), no mocks.
final class EtcdClusterStoreTests: XCTestCase {
    let web = IPAddress("198.18.0.11")!
    let db = IPAddress("198.18.0.12")!

    func testAddressesArePublishedOnChangeOnlyAndExpireAfterTheTTLWhenKeepaliveStops() async throws {
        let etcd = try EtcdCluster.start(for: self)
        let a = try etcd.store(self, node: "node-a", ttl: 3)
        let b = try etcd.store(self, node: "node-b")
        let log = WatchLog(b.watch(from: nil), test: self)

        try await a.publishAddresses([web: "shop/web", db: "shop/db"])
        let s1 = try await b.snapshot()
        XCTAssertEqual(s1.addresses["node-a"], [web: "shop/web", db: "shop/db"])
        XCTAssertEqual(s1.owners[web], "shop/web")

        // Publishing what is already there writes nothing: the revision stays.
        try await a.publishAddresses([web: "shop/web"])
        let s2 = try await b.snapshot()
        XCTAssertEqual(s2.revision, s1.revision, "an unchanged address was written again")

        try await a.publishAddresses([db: nil])
        let s3 = try await b.snapshot()
        XCTAssertEqual(s3.addresses["node-a"], [web: "shop/web"])
        let gone = await log.wait(timeout: 1) { if case .address("node-a", self.db, nil, _) = $0 { true } else { false } }
        XCTAssertNotNil(gone, "the watch did not see the withdrawn address")

        // Twice the TTL with the keepalive running: still there.
        try await Task.sleep(nanoseconds: 6_000_000_000)
        let s4 = try await b.snapshot()
        XCTAssertEqual(s4.addresses["node-a"], [web: "shop/web"], "the lease was not kept alive")

        // The node dies (kill -9: its keepalive stops, nothing is revoked).
        await a.close()
        let died = Date()
        let expired = await log.wait(timeout: 6) { if case .address("node-a", self.web, nil, _) = $0 { true } else { false } }
        let after = Date().timeIntervalSince(died)
        XCTAssertNotNil(expired, "the dead node's address did not expire")
        XCTAssertGreaterThan(after, 1.5, "the address went at once: was the lease revoked?")
        XCTAssertLessThan(after, 3 + 2.5, "the address outlived the 3 s TTL")
        let v1 = try await b.snapshot().addresses["node-a"]
        XCTAssertEqual(v1, nil)
        XCTAssertEqual(log.state.addresses["node-a"], nil)
        print("address expired \(String(format: "%.2f", after)) s after the keepalive stopped (TTL 3 s)")
    }

    func testTwoNodesMergingAtOnceLoseNothingAndTheSameRulesHitsAddUp() async throws {
        let etcd = try EtcdCluster.start(for: self)
        let a = try etcd.store(self, node: "node-a")
        let b = try etcd.store(self, node: "node-b", endpointOrder: [1, 2, 0])
        let common = RuleKey(direction: .connect, peer: .workload("shop/db"), port: 5432)
        let rounds = 30
        func own(_ i: Int, _ third: UInt8) -> RuleKey {
            RuleKey(direction: .connect, peer: .network(CIDR(address: IPAddress(ipv4: [198, 18, third, UInt8(i)]), prefixLength: 32)), port: 443)
        }
        try await withThrowingTaskGroup(of: Void.self) { g in
            for (store, third) in [(a, UInt8(1)), (b, UInt8(2))] {
                g.addTask {
                    for i in 0..<rounds {
                        let t = Int64(1_000 + i)
                        try await store.mergeRules([Rule(key: own(i, third), firstSeen: t, lastSeen: t, hits: 2),
                                                    Rule(key: common, firstSeen: t + Int64(third), lastSeen: t + 10 * Int64(third), hits: 1)],
                                                   into: "shop/web")
                    }
                }
            }
            try await g.waitForAll()
        }
        let merged = try await XCTUnwrapAsync(try await a.baseline(of: "shop/web"))
        XCTAssertEqual(merged.rules.count, 2 * rounds + 1)
        let c = try XCTUnwrap(merged.rules[common])
        XCTAssertEqual(c.rule.hits, Int64(2 * rounds), "hits of the same rule from two nodes did not add up")
        XCTAssertEqual(c.nodes, ["node-a", "node-b"])
        XCTAssertEqual(c.rule.firstSeen, 1_001)
        XCTAssertEqual(c.rule.lastSeen, 1_000 + Int64(rounds - 1) + 20)
        for i in 0..<rounds {
            XCTAssertEqual(merged.rules[own(i, 1)]?.nodes, ["node-a"])
            XCTAssertEqual(merged.rules[own(i, 2)]?.nodes, ["node-b"])
            XCTAssertEqual(merged.rules[own(i, 2)]?.rule.hits, 2)
        }
        let retries = await a.casRetries + b.casRetries
        print("\(2 * rounds) concurrent merges, \(retries) compare-and-swap retries")

        // Prune through the same CAS.
        let left = try await a.removeRules([common], from: "shop/web")
        XCTAssertEqual(left?.rules.count, 2 * rounds)
        let v2 = try await b.removeRules([common], from: "never/merged")
        XCTAssertNil(v2)
    }

    func testModeSetOnOneNodeIsReadOnAnotherAndWatchedWithinASecond() async throws {
        let etcd = try EtcdCluster.start(for: self)
        let a = try etcd.store(self, node: "node-a")
        let c = try etcd.store(self, node: "node-c", endpointOrder: [2, 0, 1])
        let log = WatchLog(c.watch(from: nil), test: self)
        _ = await log.wait(timeout: 5) { if case .snapshot = $0 { true } else { false } }

        let before = now()
        let set = Date()
        let m = try await a.setMode(.enforce, of: "shop/web", by: "alice")
        let seen = await log.wait(timeout: 1) { if case .mode("shop/web", let s?, _) = $0 { s.mode == .enforce } else { false } }
        let latency = Date().timeIntervalSince(set)
        XCTAssertNotNil(seen, "the mode was not delivered within 1 s")
        XCTAssertLessThan(latency, 1)
        let read = try await XCTUnwrapAsync(try await c.mode(of: "shop/web"))
        XCTAssertEqual(read, m)
        XCTAssertEqual(read.by, "alice")
        XCTAssertEqual(read.node, "node-a")
        XCTAssertGreaterThanOrEqual(read.at, before)
        XCTAssertEqual(log.state.modes["shop/web"]?.mode, .enforce)
        let v3 = try await c.mode(of: "shop/other")
        XCTAssertNil(v3)
        print("mode delivered by the watch \(String(format: "%.1f", latency * 1000)) ms after the set")
    }

    func testWatchResumesWithoutLossOrRepeatWhenItsMemberIsKilledAndRestarted() async throws {
        let etcd = try EtcdCluster.start(for: self)
        // The watcher talks to m1 first; the writer to m2.
        let watcher = try etcd.store(self, node: "node-w", endpointOrder: [0, 1, 2])
        let writer = try etcd.store(self, node: "node-x", endpointOrder: [1, 2, 0])
        let log = WatchLog(watcher.watch(from: nil), test: self)
        _ = await log.wait(timeout: 5) { if case .snapshot = $0 { true } else { false } }
        try await writer.setMode(.monitor, of: "w1", by: "t")
        let v4 = await log.wait(timeout: 2) { if case .mode("w1", _, _) = $0 { true } else { false } }
        XCTAssertNotNil(v4)

        etcd.kill(0)
        for w in ["w2", "w3"] { try await writer.setMode(.enforce, of: w, by: "t") }
        let v5 = await log.wait(timeout: 5) { if case .mode("w3", _, _) = $0 { true } else { false } }
        XCTAssertNotNil(v5,
                        "the watch did not resume on another member")
        try etcd.restart(0)
        try etcd.waitHealthy(timeout: 20)
        try await writer.setMode(.learn, of: "w4", by: "t")
        let v6 = await log.wait(timeout: 3) { if case .mode("w4", _, _) = $0 { true } else { false } }
        XCTAssertNotNil(v6)

        let modes = log.all.compactMap { c -> String? in if case let .mode(w, _, _) = c { w } else { nil } }
        XCTAssertEqual(modes, ["w1", "w2", "w3", "w4"], "a change was missed or delivered twice")
        XCTAssertTrue(log.all.contains { if case .disconnected = $0 { true } else { false } })
        XCTAssertTrue(log.all.contains { if case .resumed = $0 { true } else { false } })
        XCTAssertEqual(log.state.modes.count, 4)
    }

    func testAWatchFromACompactedRevisionListsAgainAndReconciles() async throws {
        let etcd = try EtcdCluster.start(for: self)
        let s = try etcd.store(self, node: "node-a")
        let old = try await s.setMode(.enforce, of: "gone", by: "t")
        _ = old
        let r0 = try await s.snapshot().revision
        XCTAssertEqual(etcd.etcdctl(["del", "/connguard/v1/modes/gone"]).0, 0)
        try await s.setMode(.monitor, of: "kept", by: "t")
        let r1 = try await s.snapshot().revision
        XCTAssertEqual(etcd.etcdctl(["compact", "\(r1)"]).0, 0)

        // A consumer that last saw r0 (with "gone" in its view) resumes there.
        let log = WatchLog(s.watch(from: r0), test: self)
        let snap = await log.wait(timeout: 5) { if case .snapshot = $0 { true } else { false } }
        guard case let .snapshot(state)? = snap else { return XCTFail("no new listing after the compaction: \(log.all)") }
        XCTAssertGreaterThanOrEqual(state.revision, r1)
        XCTAssertNil(state.modes["gone"], "the deletion missed during the compaction was not reconciled")
        XCTAssertEqual(state.modes["kept"]?.mode, .monitor)
        // And it goes on watching from there.
        try await s.setMode(.enforce, of: "after", by: "t")
        let v7 = await log.wait(timeout: 2) { if case .mode("after", _, _) = $0 { true } else { false } }
        XCTAssertNotNil(v7)
        XCTAssertEqual(Set(log.state.modes.keys), ["kept", "after"])
    }

    func testOneMemberDownChangesNothingTwoDownFailWritesClearlyAndRestoredWorksAgain() async throws {
        let etcd = try EtcdCluster.start(for: self)
        // m1 first, so that every call has to fail over from the dead member.
        let a = try etcd.store(self, node: "node-a", endpointOrder: [0, 1, 2])
        let b = try etcd.store(self, node: "node-b", endpointOrder: [2, 1, 0])
        let log = WatchLog(b.watch(from: nil), test: self)
        _ = await log.wait(timeout: 5) { if case .snapshot = $0 { true } else { false } }
        let rule = Rule(key: RuleKey(direction: .connect, peer: .workload("shop/db"), port: 5432), firstSeen: 1, lastSeen: 1, hits: 1)

        etcd.kill(0)
        let t0 = Date()
        try await a.publishAddresses([web: "shop/web"])
        try await a.mergeRules([rule], into: "shop/web")
        try await a.setMode(.enforce, of: "shop/web", by: "t")
        let v8 = try await a.mode(of: "shop/web")?.mode
        XCTAssertEqual(v8, .enforce)
        let v9 = try await a.baseline(of: "shop/web")?.rules.count
        XCTAssertEqual(v9, 1)
        let v10 = await log.wait(timeout: 2) { if case .mode("shop/web", _, _) = $0 { true } else { false } }
        XCTAssertNotNil(v10)
        XCTAssertEqual(log.state.addresses["node-a"], [web: "shop/web"])
        print("with one member down: publish, merge, set, read and watch in \(String(format: "%.2f", Date().timeIntervalSince(t0))) s")

        // No quorum: writes fail with a clear error within the 4 s request timeout.
        etcd.kill(1)
        for (what, op) in [("setMode", { try await a.setMode(.learn, of: "shop/web", by: "t") as Any }),
                           ("mergeRules", { try await a.mergeRules([rule], into: "shop/web") as Any }),
                           ("publishAddresses", { try await a.publishAddresses([self.db: "shop/db"]) as Any })] {
            let start = Date()
            do {
                _ = try await op()
                XCTFail("\(what) succeeded without quorum")
            } catch let e as ClusterStoreError {
                guard case .unavailable = e else { return XCTFail("\(what): \(e)") }
                XCTAssertTrue(e.description.contains("no quorum or unreachable"), e.description)
            }
            let took = Date().timeIntervalSince(start)
            XCTAssertLessThan(took, 5, "\(what) took \(took) s to fail")
            print("without quorum, \(what) failed in \(String(format: "%.2f", took)) s")
        }

        // Restored: writes work again, and the address published during the
        // outage is written by the store on its own (nothing lost).
        try etcd.restart(0)
        try etcd.restart(1)
        try etcd.waitHealthy(timeout: 20)
        try await a.setMode(.learn, of: "shop/web", by: "t")
        let v11 = try await b.mode(of: "shop/web")?.mode
        XCTAssertEqual(v11, .learn)
        let synced = await log.wait(timeout: 8) { if case .address("node-a", self.db, "shop/db", _) = $0 { true } else { false } }
        XCTAssertNotNil(synced, "the address published during the outage was not written after it")
        let v12 = try await b.snapshot().addresses["node-a"]
        XCTAssertEqual(v12, [web: "shop/web", db: "shop/db"])
    }

    func testHostileValuesAreReportedAsProblemsAndNotApplied() async throws {
        let etcd = try EtcdCluster.start(for: self)
        let s = try etcd.store(self, node: "node-a")
        try await s.setMode(.enforce, of: "shop/web", by: "t")
        let log = WatchLog(s.watch(from: nil), test: self)
        _ = await log.wait(timeout: 5) { if case .snapshot = $0 { true } else { false } }

        let newer = #"{"v":2,"workload":"shop/db","rules":[]}"#
        let huge = "{\"v\":1,\"workload\":\"shop/big\",\"rules\":[],\"pad\":\"" + String(repeating: "x", count: 1_200_000) + "\"}"
        let hostile: [(key: String, value: String, reason: String)] = [
            ("/connguard/v1/modes/shop/web", "not json {", "not a JSON object"),
            ("/connguard/v1/baselines/shop/db", newer, "newer than this agent's"),
            ("/connguard/v1/elsewhere/x", #"{"v":1}"#, "outside the key layout"),
            ("/connguard/v1/addresses/node-z/not-an-ip", #"{"v":1,"workload":"w"}"#, "outside the key layout"),
            ("/connguard/v1/baselines/shop/big", huge, "over the limit"),
        ]
        for h in hostile {
            let (status, out) = etcd.etcdctl(["put", h.key], stdin: Data(h.value.utf8))
            XCTAssertEqual(status, 0, out)
        }
        for h in hostile {
            let p = await log.wait(timeout: 3) { if case let .problem(p, _) = $0 { p.key == h.key } else { false } }
            guard case let .problem(problem, _)? = p else { XCTFail("\(h.key) was not reported"); continue }
            XCTAssertTrue(problem.reason.contains(h.reason), "\(h.key): \(problem.reason)")
        }
        // Nothing applied: the consumer still has the last valid mode, and no baseline.
        XCTAssertEqual(log.state.modes["shop/web"]?.mode, .enforce)
        XCTAssertTrue(log.state.baselines.isEmpty)
        XCTAssertTrue(log.state.addresses.isEmpty)
        // A fresh listing leaves them out and lists them.
        let snap = try await s.snapshot()
        XCTAssertEqual(Set(snap.problems.map(\.key)), Set(hostile.map(\.key)))
        XCTAssertNil(snap.modes["shop/web"])
        XCTAssertTrue(snap.baselines.isEmpty)
        // Reads refuse them; a merge never overwrites a value it cannot read (it may be a newer agent's).
        do { _ = try await s.mode(of: "shop/web"); XCTFail("read a mode that is not JSON") } catch ClusterStoreError.invalidValue {}
        do { _ = try await s.mergeRules([], into: "shop/db"); XCTFail("merged into a newer version") } catch ClusterStoreError.invalidValue {}
        XCTAssertTrue(etcd.etcdctl(["get", "--print-value-only", "/connguard/v1/baselines/shop/db"]).1.contains(#""v":2"#))
        // And the store goes on.
        try await s.setMode(.monitor, of: "shop/web", by: "t")
        let v13 = await log.wait(timeout: 2) { if case .mode("shop/web", let m?, _) = $0 { m.mode == .monitor } else { false } }
        XCTAssertNotNil(v13)
        XCTAssertEqual(log.state.modes["shop/web"]?.mode, .monitor)
    }
}

func XCTUnwrapAsync<T>(_ value: @autoclosure () async throws -> T?, file: StaticString = #filePath, line: UInt = #line) async throws -> T {
    let v = try await value()
    return try XCTUnwrap(v, file: file, line: line)
}
