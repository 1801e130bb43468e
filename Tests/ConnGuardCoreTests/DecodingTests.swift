import CConnGuard
import ConnGuardCore
import Glibc
import XCTest

final class DecodingTests: XCTestCase {
    let clock = BootClock(offsetNanoseconds: 1_700_000_000_000_000_000)

    func rawConnect(family: Int32 = AF_INET) -> cg_connection_event {
        var r = cg_connection_event()
        r.kind = UInt32(CG_RECORD_CONNECTION.rawValue)
        r.pid = 4242
        r.timestamp_ns = 5_000_000_123
        r.cgroup_id = 777
        r.uid = 1000
        r.netns = 4026531840
        r.family = UInt16(family)
        r.sport = 40000
        r.dport = 443
        r.direction = UInt8(CG_DIRECTION_CONNECT.rawValue)
        r.outcome = UInt8(CG_OUTCOME_ESTABLISHED.rawValue)
        r.hook = UInt8(CG_HOOK_TP_BTF.rawValue)
        r.protocol = 6 // IPPROTO_TCP
        withUnsafeMutableBytes(of: &r.comm) { $0.copyBytes(from: Array("curl".utf8)) }
        return r
    }

    /// The protocol byte: TCP 6, UDP 17 (with the sock_addr hook); anything
    /// else is a record this version cannot read, refused rather than guessed.
    func testProtocolIsDecodedAndAnUnknownOneRefused() throws {
        var r = rawConnect()
        r.protocol = 17
        r.hook = UInt8(CG_HOOK_CGROUP_SOCK_ADDR.rawValue)
        guard case let .connection(e) = try decode(r) else { return XCTFail("not a connection") }
        XCTAssertEqual(e.proto, .udp)
        XCTAssertEqual(e.hook, .cgroupSockAddr)
        var out: [UInt8] = []
        var w = JSONLineWriter()
        w.append(e, to: &out)
        XCTAssertTrue(String(decoding: out, as: UTF8.self).contains(#""protocol":"udp""#))
        r.protocol = 0
        XCTAssertThrowsError(try decode(r))
    }

    func decode(_ raw: cg_connection_event) throws -> TraceRecord {
        var r = raw
        return try withUnsafeBytes(of: &r) { try TraceRecord.decode($0, clock: clock) }
    }

    func testConnectIPv4() throws {
        var raw = rawConnect()
        withUnsafeMutableBytes(of: &raw.saddr) { $0.copyBytes(from: [10, 0, 0, 1]) }
        withUnsafeMutableBytes(of: &raw.daddr) { $0.copyBytes(from: [10, 0, 0, 2]) }
        guard case let .connection(e) = try decode(raw) else { return XCTFail("not a connection") }
        XCTAssertEqual(e.direction, .connect)
        XCTAssertEqual(e.outcome, .established)
        XCTAssertEqual(e.pid, 4242)
        XCTAssertEqual(e.comm, "curl")
        XCTAssertEqual(e.uid, 1000)
        XCTAssertEqual(e.cgroupID, 777)
        XCTAssertEqual(e.source.description, "10.0.0.1")
        XCTAssertEqual(e.destination.description, "10.0.0.2")
        XCTAssertEqual(e.sourcePort, 40000)
        XCTAssertEqual(e.destinationPort, 443)
        XCTAssertEqual(e.timeNanoseconds, 1_700_000_005_000_000_123)
        XCTAssertTrue(e.processKnown)
        XCTAssertEqual(e.peer.description, "10.0.0.2")
        XCTAssertEqual(e.remotePort, 443)
    }

    func testMappedIPv6IsReportedAsIPv4() throws {
        var raw = rawConnect(family: AF_INET6)
        let mapped: [UInt8] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 127, 0, 0, 1]
        withUnsafeMutableBytes(of: &raw.saddr) { $0.copyBytes(from: mapped) }
        withUnsafeMutableBytes(of: &raw.daddr) { $0.copyBytes(from: mapped) }
        guard case let .connection(e) = try decode(raw) else { return XCTFail() }
        XCTAssertEqual(e.family, .ipv4)
        XCTAssertEqual(e.destination.description, "127.0.0.1")
    }

    func testAcceptFlagsAndFailure() throws {
        var raw = rawConnect()
        raw.direction = UInt8(CG_DIRECTION_ACCEPT.rawValue)
        raw.flags = UInt8(CG_FLAG_LISTENER_UNKNOWN.rawValue)
        guard case let .connection(a) = try decode(raw) else { return XCTFail() }
        XCTAssertEqual(a.direction, .accept)
        XCTAssertFalse(a.processKnown)
        XCTAssertEqual(a.localPort, 443)
        XCTAssertEqual(a.remotePort, 40000)

        raw = rawConnect()
        raw.outcome = UInt8(CG_OUTCOME_FAILED.rawValue)
        raw.error = ECONNREFUSED
        guard case let .connection(f) = try decode(raw) else { return XCTFail() }
        XCTAssertEqual(f.outcome, .failed)
        XCTAssertEqual(ErrnoName.name(f.error), "ECONNREFUSED")
    }

    func testHostileCommIsKeptButEscaped() throws {
        var raw = rawConnect()
        let comm: [UInt8] = [0x22, 0x5c, 0x0a, 0x1b, 0xff, 0x41, 0]  // " \ LF ESC invalid-UTF8 A
        withUnsafeMutableBytes(of: &raw.comm) { $0.copyBytes(from: comm) }
        guard case let .connection(e) = try decode(raw) else { return XCTFail() }
        XCTAssertEqual(e.comm.unicodeScalars.count, 6)
        var out: [UInt8] = []
        var w = JSONLineWriter()
        w.append(e, to: &out)
        let obj = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(out)) as? [String: Any])
        XCTAssertEqual(obj["comm"] as? String, e.comm)
        XCTAssertEqual(HumanText.escape(e.comm), "\"\\\\n\\x1b\u{FFFD}A")
    }

    func testMalformedRecordsAreErrors() {
        var raw = rawConnect()
        raw.family = 99
        XCTAssertThrowsError(try decode(raw))
        raw = rawConnect()
        raw.direction = 9
        XCTAssertThrowsError(try decode(raw))
        raw = rawConnect()
        raw.kind = 12345
        XCTAssertThrowsError(try decode(raw)) { XCTAssertEqual($0 as? RecordDecodingError, .unknownKind(12345)) }
        let short: [UInt8] = [1, 0, 0, 0, 9, 9]
        XCTAssertThrowsError(try short.withUnsafeBytes { try TraceRecord.decode($0, clock: clock) })
        XCTAssertThrowsError(try [UInt8]().withUnsafeBytes { try TraceRecord.decode($0, clock: clock) })
    }

    func testCgroupRecord() throws {
        var raw = cg_cgroup_event()
        raw.kind = UInt32(CG_RECORD_CGROUP_MKDIR.rawValue)
        raw.cgroup_id = 99
        raw.hierarchy_id = 0
        let path = "/libpod_parent/libpod-abc"
        withUnsafeMutableBytes(of: &raw.path) { $0.copyBytes(from: Array(path.utf8)) }
        let record = try withUnsafeBytes(of: &raw) { try TraceRecord.decode($0, clock: clock) }
        XCTAssertEqual(record, .cgroup(CgroupEvent(timeNanoseconds: clock.offsetNanoseconds, created: true, hierarchyID: 0, cgroupID: 99, path: path)))
    }

    func testBootClockMeasuresRealtimeOffset() {
        let c = BootClock.measure()
        let boot = BootClock.now(CLOCK_BOOTTIME)
        let wall = BootClock.now(CLOCK_REALTIME)
        XCTAssertLessThan(abs(c.wallNanoseconds(bootNanoseconds: UInt64(boot)) - wall), 50_000_000)
    }
}

import Foundation
