import ConnGuardCore
import Foundation
import XCTest

final class OutputTests: XCTestCase {
    func event(comm: String = "nginx", error: Int32 = 0) -> ConnectionEvent {
        ConnectionEvent(
            timeNanoseconds: 1_795_744_140_123_456_789, direction: .connect, outcome: error == 0 ? .established : .failed,
            error: error, pid: 31, comm: comm, uid: 0, cgroupID: 8812, netns: 4026531840,
            source: IPAddress("fd00::5")!, sourcePort: 51000, destination: IPAddress("fd00::6")!, destinationPort: 5432)
    }

    func testJSONLineHasTheDocumentedKeys() throws {
        var out: [UInt8] = []
        var w = JSONLineWriter()
        w.append(event(error: ECONNREFUSED), extra: [("workload", .string("db/x")), ("pod", .null)], to: &out)
        XCTAssertEqual(out.last, UInt8(ascii: "\n"))
        XCTAssertEqual(out.filter { $0 == UInt8(ascii: "\n") }.count, 1)
        let obj = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(out)) as? [String: Any])
        for key in ["time", "event", "outcome", "pid", "comm", "uid", "cgroup_id", "family", "src", "sport", "dst", "dport"] {
            XCTAssertNotNil(obj[key], "missing \(key)")
        }
        XCTAssertEqual(obj["time"] as? String, "2026-11-27T01:49:00.123456Z")
        XCTAssertEqual(obj["event"] as? String, "connect")
        XCTAssertEqual(obj["outcome"] as? String, "failed")
        XCTAssertEqual(obj["error"] as? String, "ECONNREFUSED")
        XCTAssertEqual(obj["family"] as? String, "ipv6")
        XCTAssertEqual(obj["src"] as? String, "fd00::5")
        XCTAssertEqual(obj["dport"] as? Int, 5432)
        XCTAssertEqual(obj["cgroup_id"] as? Int, 8812)
        XCTAssertEqual(obj["workload"] as? String, "db/x")
        XCTAssertTrue(obj["pod"] is NSNull)
        // RFC 3339, parseable
        let f = ISO8601DateFormatter()
        f.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        XCTAssertNotNil(f.date(from: obj["time"] as! String))
    }

    func testEveryHookHasItsJSONName() throws {
        for hook in ConnectionEvent.Hook.allCases {
            var e = event()
            e.hook = hook
            var out: [UInt8] = []
            var w = JSONLineWriter()
            w.append(e, to: &out)
            let obj = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(out)) as? [String: Any])
            XCTAssertEqual(obj["hook"] as? String, hook.rawValue)
        }
        XCTAssertEqual(ConnectionEvent.Hook.snapshot.rawValue, "snapshot")
    }

    func testJSONEscapesEveryControlCharacter() throws {
        let nasty = (0..<32).map { String(UnicodeScalar(UInt8($0))) }.joined() + "\"\\\u{7f}é"
        var out: [UInt8] = []
        var w = JSONLineWriter()
        w.append(event(comm: nasty), to: &out)
        XCTAssertEqual(out.filter { $0 == UInt8(ascii: "\n") }.count, 1, "a raw newline would split the line")
        let obj = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(out)) as? [String: Any])
        XCTAssertEqual(obj["comm"] as? String, nasty)
    }

    func testDecimalAndTimeEdges() throws {
        var e = event()
        e.pid = UInt32.max
        e.cgroupID = UInt64.max
        e.timeNanoseconds = 0
        var out: [UInt8] = []
        var w = JSONLineWriter()
        w.append(e, to: &out)
        let text = String(decoding: out, as: UTF8.self)
        XCTAssertTrue(text.contains("\"pid\":4294967295"))
        XCTAssertTrue(text.contains("\"cgroup_id\":18446744073709551615"))
        XCTAssertTrue(text.contains("\"time\":\"1970-01-01T00:00:00.000000Z\""))
    }

    func testTableColumnsLineUp() {
        var t = TableWriter()
        var out: [UInt8] = []
        t.header(to: &out)
        t.append(event(), to: &out)
        var e2 = event()
        e2.source = IPAddress("10.0.0.1")!
        e2.destination = IPAddress("10.0.0.2")!
        e2.processKnown = false
        t.append(e2, to: &out)
        let lines = String(decoding: out, as: UTF8.self).split(separator: "\n").map(String.init)
        XCTAssertEqual(lines.count, 3)
        let destColumn = lines[0].range(of: "DESTINATION")!.lowerBound.utf16Offset(in: lines[0])
        XCTAssertTrue(lines[1].dropFirst(destColumn).hasPrefix("[fd00::6]:5432"), lines[1])
        XCTAssertTrue(lines[2].dropFirst(destColumn).hasPrefix("10.0.0.2:5432"), lines[2])
        XCTAssertTrue(lines[2].contains(" ? "), "unknown process shown as ?")
    }
}
