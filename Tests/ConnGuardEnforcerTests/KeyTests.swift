import BPFKit
import CBPFKit
import CConnGuard
import ConnGuardCore
@testable import ConnGuardEnforcer
import ConnGuardTestSupport
import XCTest

/// How rules become kernel keys, and the shared structs' layout in the
/// enforcement object's BTF. No root needed.
final class KeyTests: XCTestCase {
    func testIPv4CIDRIsAMappedPrefix() throws {
        let r = EnforcementRule(workloadID: 3, direction: .connect, port: 443, peer: .cidr(CIDR("10.1.0.0/16")!))
        var k = try XCTUnwrap(r.cidrKey)
        XCTAssertEqual(k.prefixlen, 64 + 96 + 16)
        XCTAssertEqual(k.workload_id, 3)
        XCTAssertEqual(k.direction, UInt8(CG_DIRECTION_CONNECT.rawValue))
        XCTAssertEqual(k.port, 443)
        XCTAssertEqual(withUnsafeBytes(of: &k.addr) { Array($0) }, [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 1, 0, 0])
        XCTAssertNil(r.peerKey)
        XCTAssertEqual(EnforcementRule(k), r)
    }

    func testIPv6AndExactAddressesRoundTrip() throws {
        for text in ["fd00::/8", "::1/128", "2001:db8::5", "127.0.0.1", "0.0.0.0/0", "::/0"] {
            let r = EnforcementRule(workloadID: 1, direction: .accept, port: 80, peer: .cidr(CIDR(text)!))
            XCTAssertEqual(EnforcementRule(try XCTUnwrap(r.cidrKey)), r, text)
        }
        XCTAssertEqual(EnforcementRule(workloadID: 1, direction: .accept, port: 80, peer: .cidr(CIDR("::1")!)).cidrKey?.prefixlen, 64 + 128)
    }

    func testPeerWorkloadRuleKey() throws {
        let r = EnforcementRule(workloadID: 4, direction: .accept, port: 8080, peer: .workload(9))
        let k = try XCTUnwrap(r.peerKey)
        XCTAssertEqual(k.workload_id, 4)
        XCTAssertEqual(k.peer_workload_id, 9)
        XCTAssertEqual(k.direction, UInt8(CG_DIRECTION_ACCEPT.rawValue))
        XCTAssertNil(r.cidrKey)
        XCTAssertEqual(EnforcementRule(k), r)
    }

    /// The protocol is part of the exact-match bits: a UDP rule and a TCP
    /// rule on the same peer and port are different keys.
    func testProtocolIsInTheKey() throws {
        let tcp = EnforcementRule(workloadID: 3, direction: .connect, port: 53, peer: .cidr(CIDR("10.0.0.2")!))
        let udp = EnforcementRule(workloadID: 3, direction: .connect, port: 53, peer: .cidr(CIDR("10.0.0.2")!), proto: .udp)
        let kt = try XCTUnwrap(tcp.cidrKey), ku = try XCTUnwrap(udp.cidrKey)
        XCTAssertEqual(kt.protocol, 6)
        XCTAssertEqual(ku.protocol, 17)
        XCTAssertEqual(EnforcementRule(ku), udp)
        let pw = EnforcementRule(workloadID: 3, direction: .accept, port: 5353, peer: .workload(4), proto: .udp)
        XCTAssertEqual(try XCTUnwrap(pw.peerKey).protocol, 17)
        XCTAssertEqual(EnforcementRule(try XCTUnwrap(pw.peerKey)), pw)
        var legacy = kt
        legacy.protocol = 0 // a key pinned before protocols: not read as either
        XCTAssertNil(EnforcementRule(legacy))
    }

    func testAddressKeyMapsIPv4() {
        XCTAssertEqual(AddressKey.bytes(IPAddress("192.0.2.1")!), [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 192, 0, 2, 1])
        XCTAssertEqual(AddressKey.address(AddressKey.tuple(IPAddress("192.0.2.1")!)), IPAddress("192.0.2.1"))
        XCTAssertEqual(AddressKey.address(AddressKey.tuple(IPAddress("fd00::7")!)), IPAddress("fd00::7"))
    }

    func testLatencySummary() throws {
        let s = try XCTUnwrap(LatencySummary(nanoseconds: (1...100).map { Int64($0) * 1000 }))
        XCTAssertEqual(s.count, 100)
        XCTAssertEqual(s.medianNanoseconds, 51_000)
        XCTAssertEqual(s.p99Nanoseconds, 99_000)
        XCTAssertEqual(s.maxNanoseconds, 100_000)
    }

    func testSharedStructsMatchTheEnforceObjectsBTF() throws {
        var size: UInt = 0
        let start = cg_bpf_enforce_object(&size)
        let object = try BPFObject(bytes: Array(UnsafeRawBufferPointer(start: start, count: Int(size))), name: "layout")
        let btf = try XCTUnwrap(object.btf)

        func check<T>(_ type: T.Type, _ name: String, _ members: [(String, PartialKeyPath<T>)]) {
            XCTAssertEqual(cgbpf_btf_struct_info(btf, name, nil), MemoryLayout<T>.size, "size of \(name)")
            for (member, path) in members {
                XCTAssertEqual(cgbpf_btf_struct_info(btf, name, member), MemoryLayout<T>.offset(of: path) ?? -1, "offset of \(name).\(member)")
            }
        }
        check(cg_connection_event.self, "cg_connection_event", [
            ("kind", \.kind), ("pid", \.pid), ("timestamp_ns", \.timestamp_ns), ("cgroup_id", \.cgroup_id),
            ("uid", \.uid), ("netns", \.netns), ("error", \.error), ("family", \.family), ("sport", \.sport),
            ("dport", \.dport), ("direction", \.direction), ("outcome", \.outcome), ("hook", \.hook),
            ("flags", \.flags), ("protocol", \.`protocol`), ("saddr", \.saddr), ("daddr", \.daddr), ("comm", \.comm),
            ("peer_cgroup_id", \.peer_cgroup_id),
        ])
        check(cg_cgroup_policy.self, "cg_cgroup_policy", [("workload_id", \.workload_id), ("mode", \.mode), ("pad", \.pad)])
        check(cg_rule_key.self, "cg_rule_key", [
            ("prefixlen", \.prefixlen), ("workload_id", \.workload_id), ("direction", \.direction),
            ("protocol", \.`protocol`), ("port", \.port), ("addr", \.addr),
        ])
        check(cg_peer_rule_key.self, "cg_peer_rule_key", [
            ("workload_id", \.workload_id), ("peer_workload_id", \.peer_workload_id), ("port", \.port),
            ("direction", \.direction), ("protocol", \.`protocol`),
        ])
        check(cg_rule.self, "cg_rule", [("flags", \.flags)])
        check(cg_socket_owner.self, "cg_socket_owner", [("pid", \.pid), ("uid", \.uid), ("comm", \.comm)])
    }
}
