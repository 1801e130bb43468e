import ConnGuardCore
import XCTest

final class BaselineTests: XCTestCase {
    func connect(to address: String, port: UInt16, at t: Int64 = 1_000, sourcePort: UInt16 = 40_000) -> ConnectionEvent {
        ConnectionEvent(timeNanoseconds: t, direction: .connect, outcome: .established, pid: 1, comm: "c", uid: 0, cgroupID: 7,
                        source: IPAddress("10.0.0.1")!, sourcePort: sourcePort, destination: IPAddress(address)!, destinationPort: port)
    }

    func accept(from address: String, toPort port: UInt16, at t: Int64 = 1_000) -> ConnectionEvent {
        ConnectionEvent(timeNanoseconds: t, direction: .accept, outcome: .established, pid: 1, comm: "s", uid: 0, cgroupID: 7,
                        source: IPAddress(address)!, sourcePort: 51_000, destination: IPAddress("10.0.0.1")!, destinationPort: port)
    }

    func testLearningMakesRulesWithoutEphemeralPorts() {
        var b = Baseline(workload: "w", mode: .learn, learningSince: 0)
        XCTAssertNotNil(b.learn(connect(to: "10.0.0.5", port: 5432, sourcePort: 41_000), peerWorkload: nil))
        XCTAssertNil(b.learn(connect(to: "10.0.0.5", port: 5432, at: 2_000, sourcePort: 41_001), peerWorkload: nil), "same rule")
        XCTAssertNotNil(b.learn(accept(from: "10.0.0.9", toPort: 8080), peerWorkload: nil))
        XCTAssertEqual(b.rules.count, 2)
        let out = b.rules[RuleKey(direction: .connect, peer: .network(CIDR("10.0.0.5/32")!), port: 5432)]
        XCTAssertEqual(out?.hits, 2)
        XCTAssertEqual(out?.firstSeen, 1_000)
        XCTAssertEqual(out?.lastSeen, 2_000)
        XCTAssertNotNil(b.rules[RuleKey(direction: .accept, peer: .network(CIDR("10.0.0.9")!), port: 8080)], "inbound keyed by local port")
        XCTAssertFalse(b.rules.keys.contains { $0.port == 41_000 || $0.port == 51_000 }, "ephemeral ports never become rules")
    }

    func testAllowsMatchesPeersAndPorts() {
        var b = Baseline(workload: "w", mode: .enforce, learningSince: 0)
        b.learn(connect(to: "10.0.0.5", port: 5432), peerWorkload: nil)
        b.learn(connect(to: "10.0.0.6", port: 6379), peerWorkload: "cache")
        XCTAssertTrue(b.allows(connect(to: "10.0.0.5", port: 5432), peerWorkload: nil))
        XCTAssertFalse(b.allows(connect(to: "10.0.0.5", port: 5433), peerWorkload: nil), "other port")
        XCTAssertFalse(b.allows(connect(to: "10.0.0.7", port: 5432), peerWorkload: nil), "other address")
        XCTAssertTrue(b.allows(connect(to: "10.0.9.9", port: 6379), peerWorkload: "cache"), "the cache workload at a new address")
        XCTAssertFalse(b.allows(connect(to: "10.0.0.6", port: 6379), peerWorkload: nil), "that address no longer the cache")
        XCTAssertFalse(b.allows(accept(from: "10.0.0.5", toPort: 5432), peerWorkload: nil), "direction matters")
        b.rules[RuleKey(direction: .connect, peer: .network(CIDR("192.168.0.0/16")!), port: 443)] =
            Rule(key: RuleKey(direction: .connect, peer: .network(CIDR("192.168.0.0/16")!), port: 443), firstSeen: 0, lastSeen: 0, hits: 0)
        XCTAssertTrue(b.allows(connect(to: "192.168.44.1", port: 443), peerWorkload: nil), "an imported block")
        XCTAssertFalse(b.allows(connect(to: "192.169.0.1", port: 443), peerWorkload: nil))
    }

    func testMappedIPv6PeerIsTheIPv4Rule() {
        var b = Baseline(workload: "w", mode: .enforce, learningSince: 0)
        b.learn(connect(to: "127.0.0.1", port: 80), peerWorkload: nil)
        XCTAssertTrue(b.allows(connect(to: "::ffff:127.0.0.1", port: 80), peerWorkload: nil))
    }

    func testPruneAndDiff() {
        var b = Baseline(workload: "w", mode: .learn, learningSince: 0)
        b.learn(connect(to: "10.0.0.5", port: 1, at: 100), peerWorkload: nil)
        b.learn(connect(to: "10.0.0.5", port: 2, at: 500), peerWorkload: nil)
        XCTAssertEqual(b.added(since: 200).map(\.key.port), [2])
        let pruned = b.prune(unusedSince: 200, now: 1000)
        XCTAssertEqual(pruned.map(\.key.port), [1])
        XCTAssertEqual(b.rules.count, 1)
        XCTAssertEqual(b.lastChange, 1000)
    }

    func testPromotion() {
        let hour: Int64 = 3_600_000_000_000
        let policy = PromotionPolicy(learningPeriod: 24 * hour, quietPeriod: hour, autoEnforce: false)
        var b = Baseline(workload: "w", mode: .learn, learningSince: 0, lastChange: 0)
        XCTAssertNil(policy.promotion(for: b, now: 23 * hour), "learning period not over")
        b.lastChange = 23 * hour + hour / 2
        XCTAssertNil(policy.promotion(for: b, now: 24 * hour), "a rule was added less than the quiet period ago")
        XCTAssertEqual(policy.promotion(for: b, now: 25 * hour), .monitor)
        b.incomplete = true
        XCTAssertNil(policy.promotion(for: b, now: 100 * hour), "learning that lost events is never promoted")
        b.incomplete = false
        b.mode = .monitor
        XCTAssertNil(policy.promotion(for: b, now: 100 * hour), "enforce only with --auto-enforce")
        var auto = policy
        auto.autoEnforce = true
        b.lastWouldDeny = 99 * hour + 1
        XCTAssertNil(auto.promotion(for: b, now: 100 * hour), "a would_deny within the quiet period")
        XCTAssertEqual(auto.promotion(for: b, now: 101 * hour), .enforce)
        XCTAssertNil(PromotionPolicy().promotion(for: Baseline(workload: "w", mode: .learn, learningSince: 0), now: .max / 2),
                     "no learning period: stays in learn")
    }
}
