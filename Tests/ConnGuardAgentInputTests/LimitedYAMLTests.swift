import ConnGuardAgentInput
import ConnGuardCore
import XCTest

/// Regressions found by the fuzz targets (Fuzz/), for the parsers of what
/// reaches the agent from outside.
final class LimitedYAMLTests: XCTestCase {
    // Found by the yaml and baseline fuzz targets: Yams' base-60 ints trap on
    // overflow, so one scalar in an imported baseline killed the agent.
    func testBase60IntsThatDoNotFitAreRefusedNotATrap() throws {
        XCTAssertThrowsError(try LimitedYAML.load("1111111111111111111:1")) { error in
            XCTAssertTrue(error is LimitedYAML.Refused, "\(error)")
            XCTAssertTrue("\(error)".contains("base-60"), "\(error)")
        }
        XCTAssertThrowsError(try LimitedYAML.load("x: 1:0:0:0:0:0:0:0:0:0:0:0"))
        // With the digit separators YAML 1.1 allows (found by the yaml target).
        XCTAssertThrowsError(try LimitedYAML.load("+11310_11111113100111:00")) { error in
            XCTAssertTrue("\(error)".contains("base-60"), "\(error)")
        }
        XCTAssertEqual(try LimitedYAML.load("1_0:30") as? Int, 630)
        // The ones that fit read as Yams reads them.
        XCTAssertEqual(try LimitedYAML.load("1:30") as? Int, 90)
        XCTAssertEqual(try LimitedYAML.load("-1:00:01") as? Int, -3601)
        XCTAssertEqual(try LimitedYAML.load("x: 190:20:30") as? [String: Int], ["x": 685_230])
        let file = """
            workload: w
            mode: learn
            rules:
              - {direction: out, peer: 10.0.0.1, port: 80, hits: 3709537095161595517:7:7:7}
            """
        XCTAssertThrowsError(try BaselineFile.parse(file, now: 0)) { error in
            XCTAssertTrue("\(error)".contains("base-60"), "\(error)")
        }
        XCTAssertThrowsError(try AgentConfiguration.load(yaml: "event_retention_count: 99999999999999:0:0"))
    }
}

/// Rules on DNS names in baseline files: written as people write them, read
/// back the same; a name on an inbound rule, or a bad name, is refused.
final class BaselineFileNameTests: XCTestCase {
    func testRulesOnNamesRoundTrip() throws {
        let file = """
            workload: shop/web
            mode: enforce
            rules:
              - {direction: out, peer: {name: API.example.test}, port: 443}
              - {direction: out, peer: {name: "*.cdn.test"}, port: 443}
              - {direction: out, peer: "name:s3.example.test", port: 443, protocol: tcp}
            """
        let b = try BaselineFile.parse(file, now: 0)
        XCTAssertEqual(Set(b.rules.keys.map(\.peer.description)), ["name:api.example.test", "name:*.cdn.test", "name:s3.example.test"])
        let again = try BaselineFile.parse(BaselineFile.export(b), now: 0)
        XCTAssertEqual(Set(again.rules.keys), Set(b.rules.keys))
        XCTAssertTrue(BaselineFile.export(b).contains("peer: {name: \"*.cdn.test\"}"))
    }

    func testBadNamesAndInboundNamesAreRefused() {
        for rule in ["{direction: in, peer: {name: api.example.test}, port: 443}",
                     "{direction: out, peer: {name: \"*.test\"}, port: 443}",
                     "{direction: out, peer: {name: \"a b\"}, port: 443}",
                     "{direction: out, peer: {name: x, other: y}, port: 443}"] {
            XCTAssertThrowsError(try BaselineFile.parse("workload: w\nmode: learn\nrules:\n  - \(rule)\n", now: 0), rule) { error in
                XCTAssertTrue("\(error)".contains("peer"), "\(error)")
            }
        }
    }
}
