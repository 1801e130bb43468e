import ConnGuardCore
import XCTest

/// Rules on names: what a name or pattern is, what it matches, the hash the
/// kernel keys it by (the parser's, for the same name), and the verdicts of
/// a baseline that holds them.
final class DNSNameTests: XCTestCase {
    func testNamesAndPatternsAreCheckedAndLowercased() {
        XCTAssertEqual(DNSName("API.Example.Test.")?.text, "api.example.test")
        XCTAssertEqual(DNSName("*.example.test")?.isPattern, true)
        for bad in ["", ".", "a..b", "*.test", "*", "a.*.test", "exa mple.test", "x." + String(repeating: "a", count: 64),
                    String(repeating: "a.", count: 127) + "aa", "*example.test", "-\u{7}.test"] {
            XCTAssertNil(DNSName(bad), bad)
        }
        XCTAssertNotNil(DNSName(String(repeating: "a", count: 63) + ".test"))
    }

    func testAPatternIsOneLabelDeep() throws {
        let p = try XCTUnwrap(DNSName("*.example.test"))
        XCTAssertTrue(p.matches("api.example.test"))
        XCTAssertFalse(p.matches("example.test"))
        XCTAssertFalse(p.matches("a.b.example.test"))
        XCTAssertFalse(p.matches("evilexample.test"))
        XCTAssertTrue(try XCTUnwrap(DNSName("api.example.test")).matches("api.example.test"))
        XCTAssertFalse(try XCTUnwrap(DNSName("api.example.test")).matches("www.example.test"))
    }

    /// The kernel matches an answer to a rule by hash: the rule's must be
    /// the one the parser computes for the answer's question.
    func testTheKernelHashIsTheParsersHash() throws {
        let m = DNSAnswerTests.response("Api.Example.Test", answers: [(DNSAnswerTests.question, 1, 30, [198, 18, 100, 1])])
        guard case let .success(a) = DNSAnswer.parse(m) else { return XCTFail("not parsed") }
        XCTAssertEqual(try XCTUnwrap(DNSName("api.example.test")).kernelHash, a.nameHash)
        XCTAssertEqual(try XCTUnwrap(DNSName("*.example.test")).kernelHash, a.parentHash)
        XCTAssertEqual(try XCTUnwrap(DNSName("example.test")).kernelHash, a.parentHash, "a pattern is keyed by its parent's hash (and a flag)")
    }

    func testPeersByNameReadAndWriteAsText() throws {
        XCTAssertEqual(Peer(description: "name:api.example.test"), .name(try XCTUnwrap(DNSName("api.example.test"))))
        XCTAssertEqual(Peer(description: "name:*.example.test")?.description, "name:*.example.test")
        XCTAssertNil(Peer(description: "name:"))
        XCTAssertNil(Peer(description: "name:not a name"))
    }

    /// A connection to an address DNS gave is learnt as a rule on the name;
    /// that rule, or a pattern, allows any address the name gives later;
    /// any allowed name of several that gave the address is enough.
    func testABaselineLearnsAndAllowsByName() throws {
        func connect(_ to: String, port: UInt16 = 443, name: String?) -> ConnectionEvent {
            ConnectionEvent(timeNanoseconds: 1, direction: .connect, outcome: .established, pid: 1, comm: "c", uid: 0, cgroupID: 1,
                            source: IPAddress("198.18.99.1")!, sourcePort: 40000, destination: IPAddress(to)!, destinationPort: port,
                            peerName: name)
        }
        var b = Baseline(workload: "w", mode: .learn, learningSince: 0)
        let rule = try XCTUnwrap(b.learn(connect("198.18.100.1", name: "api.example.test"), peerWorkload: nil))
        XCTAssertEqual(rule.key.peer.description, "name:api.example.test")
        XCTAssertEqual(b.learn(connect("198.18.100.9", name: "api.example.test"), peerWorkload: nil), nil, "the same rule")
        XCTAssertEqual(b.learn(connect("198.18.1.1", name: nil), peerWorkload: nil)?.key.peer.description, "198.18.1.1",
                       "an address no answer explains stays an address rule")
        // A workload peer wins over a name.
        XCTAssertEqual(b.learn(connect("198.18.2.2", name: "db.example.test"), peerWorkload: "shop/db")?.key.peer.description, "workload:shop/db")

        XCTAssertTrue(b.allows(connect("198.18.100.42", name: "api.example.test"), peerWorkload: nil, peerNames: ["api.example.test"]))
        XCTAssertFalse(b.allows(connect("198.18.100.42", name: nil), peerWorkload: nil, peerNames: []))
        XCTAssertFalse(b.allows(connect("198.18.100.42", port: 80, name: "api.example.test"), peerWorkload: nil, peerNames: ["api.example.test"]))
        XCTAssertTrue(b.allows(connect("198.18.100.42", name: "cdn.other.test"), peerWorkload: nil, peerNames: ["cdn.other.test", "api.example.test"]),
                      "another name that gave the address is allowed")
        b.rules[RuleKey(direction: .connect, peer: .name(try XCTUnwrap(DNSName("*.other.test"))), port: 443)] =
            Rule(key: RuleKey(direction: .connect, peer: .name(try XCTUnwrap(DNSName("*.other.test"))), port: 443), firstSeen: 0, lastSeen: 0, hits: 0)
        XCTAssertTrue(b.allows(connect("198.18.7.7", name: "cdn.other.test"), peerWorkload: nil, peerNames: ["cdn.other.test"]))
        XCTAssertFalse(b.allows(connect("198.18.7.7", name: "a.cdn.other.test"), peerWorkload: nil, peerNames: ["a.cdn.other.test"]))
    }
}
