@testable import ConnGuardAgent
import ConnGuardCluster
import ConnGuardCore
import ConnGuardStore
import Logging
import XCTest

/// The policy engine's side of a cluster, as pure logic: no kernel
/// (enforcer nil), a real database in a temporary folder.
final class ClusterPolicyTests: XCTestCase {
    final class NoIdentity: IdentitySource, @unchecked Sendable {
        func apply(_ event: CgroupEvent) {}
        func resolve(_ event: ConnectionEvent) -> Identity { .unknown }
        var trackedCgroups: Int { 0 }
        func identity(forCgroup id: UInt64) -> Identity { .unknown }
    }

    var dir: String!

    override func setUpWithError() throws {
        dir = NSTemporaryDirectory() + "cgclpol-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    }

    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    func engine(remote: [String: [IPAddress: String]] = [:]) throws -> PolicyEngine {
        let store = try EventStore(path: dir + "/db", options: .init(migrations: BaselineSchema.migrations))
        var settings = PolicyEngine.Settings()
        settings.clustered = true
        return try PolicyEngine(settings: settings, store: BaselineStore(store: store), enforcer: nil, identity: NoIdentity(),
                                cgroupRootPath: dir, remoteAddresses: remote, logger: Logger(label: "test"))
    }

    func connect(to address: String, port: UInt16, at t: Int64) -> ConnectionEvent {
        ConnectionEvent(timeNanoseconds: t, direction: .connect, outcome: .established, pid: 1, comm: "c", uid: 0, cgroupID: 7,
                        source: IPAddress("198.18.0.11")!, sourcePort: 40_000, destination: IPAddress(address)!, destinationPort: port)
    }

    func testOtherNodesAddressesNameWorkloadsUnlessClaimedTwice() throws {
        let a = IPAddress("198.18.0.21")!
        let p = try engine(remote: ["n2": [a: "shop/web/app"]])
        XCTAssertEqual(p.peerWorkload(of: connect(to: "198.18.0.21", port: 80, at: 1)), "shop/web/app", "from the local copy, at start")
        p.remoteAddressChanged(node: "n3", address: a, workload: "shop/evil/x")
        XCTAssertNil(p.peerWorkload(of: connect(to: "198.18.0.21", port: 80, at: 1)), "claimed for two workloads")
        p.remoteAddressChanged(node: "n3", address: a, workload: nil)
        XCTAssertEqual(p.peerWorkload(of: connect(to: "198.18.0.21", port: 80, at: 1)), "shop/web/app")
        p.replaceRemoteAddresses([:])
        XCTAssertNil(p.peerWorkload(of: connect(to: "198.18.0.21", port: 80, at: 1)))
        XCTAssertEqual(p.remoteAddressCount, 0)
    }

    func testLearntRulesGoOutOnceAndComeBackMerged() throws {
        let p = try engine(remote: ["n2": [IPAddress("198.18.0.21")!: "shop/web/app"]])
        let me = Identity(workload: "shop/api/client")
        XCTAssertEqual(p.judge(connect(to: "198.18.0.21", port: 8080, at: 1_000), identity: me).verdict, .allowed)
        _ = p.judge(connect(to: "198.18.0.21", port: 8080, at: 2_000), identity: me)
        var out = p.takeClusterOutbox(all: false)
        XCTAssertEqual(out.count, 1)
        XCTAssertEqual(out.first?.workload, "shop/api/client")
        XCTAssertEqual(out.first?.hasNew, true)
        let rule = try XCTUnwrap(out.first?.rules.first)
        XCTAssertEqual(rule.key.peer, .workload("shop/web/app"), "a remote pod is its workload, not its address")
        XCTAssertEqual(rule.hits, 2)
        XCTAssertTrue(p.takeClusterOutbox(all: true).isEmpty, "taken")

        // A failed merge hands them back; what was learnt meanwhile adds up.
        p.returnToOutbox("shop/api/client", out[0].rules, hasNew: true)
        _ = p.judge(connect(to: "198.18.0.21", port: 8080, at: 3_000), identity: me)
        out = p.takeClusterOutbox(all: false)
        XCTAssertEqual(out.first?.rules.first?.hits, 3)
        XCTAssertEqual(out.first?.rules.first?.lastSeen, 3_000)

        // Hits of a known rule alone wait for the periodic flush.
        _ = p.judge(connect(to: "198.18.0.21", port: 8080, at: 4_000), identity: me)
        XCTAssertTrue(p.takeClusterOutbox(all: false).isEmpty)

        // The cluster's baseline: this node's rule merged with another node's.
        var cb = ClusterBaseline(workload: "shop/api/client", revision: 10)
        cb.merge([Rule(key: rule.key, firstSeen: 1_000, lastSeen: 3_000, hits: 3)], from: "n1")
        let other = RuleKey(direction: .connect, peer: .workload("shop/db/pg"), port: 5432)
        cb.merge([Rule(key: other, firstSeen: 500, lastSeen: 600, hits: 7)], from: "n2")
        p.applyClusterBaseline(cb)
        let b = try XCTUnwrap(p.baseline("shop/api/client"))
        XCTAssertEqual(Set(b.rules.keys), [rule.key, other])
        XCTAssertEqual(b.rules[rule.key]?.hits, 4, "the cluster's 3 and the one not handed over yet")
        XCTAssertEqual(p.clusterNodes(of: "shop/api/client")[other], ["n2"])

        // An older revision (a late watch event) changes nothing.
        var old = ClusterBaseline(workload: "shop/api/client", revision: 9)
        old.merge([Rule(key: rule.key, firstSeen: 1_000, lastSeen: 1_000, hits: 1)], from: "n1")
        p.applyClusterBaseline(old)
        XCTAssertEqual(p.baseline("shop/api/client")?.rules.count, 2)
    }

    func testAWorkloadOfTheClusterIsKnownHereBeforeItsFirstPod() throws {
        let p = try engine()
        p.applyClusterMode(ModeSetting(workload: "shop/batch/job", mode: .enforce, by: "alice", node: "n3", at: 1))
        XCTAssertEqual(p.baseline("shop/batch/job")?.mode, .enforce)
        p.applyClusterMode(ModeSetting(workload: "shop/batch/job", mode: .enforce, by: "bob", node: "n1", at: 2))
        XCTAssertEqual(p.baseline("shop/batch/job")?.mode, .enforce, "the same mode again: nothing to do")
    }

    func testARuleNamesAtMostSixteenNodes() {
        var cb = ClusterBaseline(workload: "w")
        let k = RuleKey(direction: .connect, peer: .workload("dns"), port: 53)
        for n in 0..<40 { cb.merge([Rule(key: k, firstSeen: 1, lastSeen: Int64(n), hits: 1)], from: "node-\(n)") }
        XCTAssertEqual(cb.rules[k]?.nodes.count, ClusterBaseline.maxNodesPerRule)
        XCTAssertEqual(cb.rules[k]?.rule.hits, 40, "every node's hits still count")
    }
}
