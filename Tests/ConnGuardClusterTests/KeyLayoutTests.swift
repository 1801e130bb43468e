import ConnGuardCore
@testable import ConnGuardCluster
import Foundation
import XCTest

/// The key layout and the value format, without etcd.
final class KeyLayoutTests: XCTestCase {
    let layout = KeyLayout()

    func testKeysRoundTrip() {
        let a = IPAddress("198.18.0.11")!
        XCTAssertEqual(layout.addressKey(node: "n1", address: a), "/connguard/v1/addresses/n1/198.18.0.11")
        XCTAssertEqual(try layout.parse("/connguard/v1/addresses/n1/198.18.0.11").get(), .address(node: "n1", address: a))
        XCTAssertEqual(try layout.parse("/connguard/v1/addresses/n1/fd00::1").get(), .address(node: "n1", address: IPAddress("fd00::1")!))
        XCTAssertEqual(try layout.parse("/connguard/v1/baselines/shop/web/nginx").get(), .baseline(workload: "shop/web/nginx"))
        XCTAssertEqual(try layout.parse("/connguard/v1/modes//user.slice/x.scope").get(), .mode(workload: "/user.slice/x.scope"))
        for bad in ["/connguard/v2/modes/x", "/connguard/v1/other/x", "/connguard/v1/addresses/n1/not-an-ip",
                    "/connguard/v1/addresses/n1", "/connguard/v1/baselines/", "/elsewhere"] {
            guard case let .failure(p) = layout.parse(bad) else { return XCTFail("\(bad) parsed") }
            XCTAssertTrue(p.reason.contains("outside the key layout"), p.reason)
        }
    }

    func testBaselineValueRoundTripsAndRefusesWhatIsNotValid() throws {
        let k1 = RuleKey(direction: .connect, peer: .workload("shop/db"), port: 5432)
        let k2 = RuleKey(direction: .accept, peer: .network(CIDR("10.0.0.0/8")!), port: 80)
        var b = ClusterBaseline(workload: "shop/web")
        b.merge([Rule(key: k1, firstSeen: 5, lastSeen: 9, hits: 3)], from: "a")
        b.merge([Rule(key: k1, firstSeen: 2, lastSeen: 7, hits: 4), Rule(key: k2, firstSeen: 1, lastSeen: 1, hits: 1)], from: "b")
        XCTAssertEqual(b.rules[k1], ClusterRule(rule: Rule(key: k1, firstSeen: 2, lastSeen: 9, hits: 7), nodes: ["a", "b"]))
        let data = Values.baselineData(b)
        let key = layout.baselineKey("shop/web")
        let back = try Values.baseline(data, key: key, workload: "shop/web", revision: 0, limits: ValueLimits()).get()
        XCTAssertEqual(back, b)

        func reason(_ text: String, limits: ValueLimits = ValueLimits(), workload: String = "shop/web") -> String {
            guard case let .failure(p) = Values.baseline(Data(text.utf8), key: key, workload: workload, revision: 0, limits: limits) else { return "accepted" }
            return p.reason
        }
        XCTAssertTrue(reason("not json").contains("not a JSON object"))
        XCTAssertTrue(reason(#"{"workload":"shop/web","rules":[]}"#).contains("no format version"))
        XCTAssertTrue(reason(#"{"v":2,"workload":"shop/web","rules":[]}"#).contains("newer than this agent's"))
        XCTAssertTrue(reason(#"{"v":1,"workload":"other","rules":[]}"#).contains("not its key's"))
        XCTAssertTrue(reason(#"{"v":1,"workload":"shop/web"}"#).contains("missing rules"))
        XCTAssertTrue(reason(String(decoding: data, as: UTF8.self), limits: ValueLimits(maxValueBytes: 10)).contains("over the limit"))
        XCTAssertTrue(reason(String(decoding: data, as: UTF8.self), limits: ValueLimits(maxRules: 1)).contains("over the limit of 1"))
        XCTAssertTrue(reason(#"{"v":1,"workload":"shop/web","rules":[{"dir":"up","peer":"1.2.3.4","port":1,"proto":"tcp","first":1,"last":1,"hits":1,"nodes":["a"]}]}"#).contains("direction"))
    }

    func testRangeEnd() {
        XCTAssertEqual(B64.rangeEnd("/a/").string, "/a0")
    }
}
