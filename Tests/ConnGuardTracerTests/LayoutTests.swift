import BPFKit
import CBPFKit
import CConnGuard
import ConnGuardTestSupport
import XCTest

/// The structs the kernel writes and Swift reads come from one header; this
/// checks that the BPF compile of that header (the BTF inside the embedded
/// object) lays them out as Swift's import of it does. Needs no root.
final class LayoutTests: XCTestCase {
    func testSharedStructsMatchTheObjectsBTF() throws {
        var size: UInt = 0
        let start = cg_bpf_trace_object(&size)
        let object = try BPFObject(bytes: Array(UnsafeRawBufferPointer(start: start, count: Int(size))), name: "layout")
        let btf = try XCTUnwrap(object.btf)

        func check<T>(_ type: T.Type, _ name: String, _ members: [(String, PartialKeyPath<T>)]) {
            XCTAssertEqual(cgbpf_btf_struct_info(btf, name, nil), MemoryLayout<T>.size, "size of \(name)")
            for (member, path) in members {
                XCTAssertEqual(cgbpf_btf_struct_info(btf, name, member), MemoryLayout<T>.offset(of: path).map { $0 } ?? -1,
                               "offset of \(name).\(member)")
            }
        }
        check(cg_connection_event.self, "cg_connection_event", [
            ("kind", \.kind), ("pid", \.pid), ("timestamp_ns", \.timestamp_ns), ("cgroup_id", \.cgroup_id),
            ("uid", \.uid), ("netns", \.netns), ("error", \.error), ("family", \.family), ("sport", \.sport),
            ("dport", \.dport), ("direction", \.direction), ("outcome", \.outcome), ("hook", \.hook),
            ("flags", \.flags), ("protocol", \.`protocol`), ("pad", \.pad), ("saddr", \.saddr), ("daddr", \.daddr), ("comm", \.comm),
            ("peer_cgroup_id", \.peer_cgroup_id),
        ])
        check(cg_cgroup_event.self, "cg_cgroup_event", [
            ("kind", \.kind), ("hierarchy_id", \.hierarchy_id), ("timestamp_ns", \.timestamp_ns),
            ("cgroup_id", \.cgroup_id), ("path", \.path),
        ])
        check(cg_listener_key.self, "cg_listener_key", [("netns", \.netns), ("port", \.port), ("family", \.family)])
        check(cg_listener.self, "cg_listener", [
            ("sock", \.sock), ("cgroup_id", \.cgroup_id), ("pid", \.pid), ("uid", \.uid), ("comm", \.comm),
        ])
        check(cg_repeat_key.self, "cg_repeat_key", [
            ("cgroup_id", \.cgroup_id), ("peer", \.peer), ("port", \.port), ("family", \.family),
            ("direction", \.direction), ("outcome", \.outcome), ("protocol", \.`protocol`), ("pad", \.pad),
            ("peer_cgroup_id", \.peer_cgroup_id),
        ])
        check(cg_local_flow_key.self, "cg_local_flow_key", [
            ("client", \.client), ("server", \.server), ("netns", \.netns), ("client_port", \.client_port),
            ("server_port", \.server_port),
        ])
        check(cg_connecting.self, "cg_connecting", [("cgroup_id", \.cgroup_id), ("pid", \.pid), ("uid", \.uid), ("comm", \.comm)])
    }
}
