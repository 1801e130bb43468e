import ConnGuardCore
import Foundation
import XCTest

final class IdentityOutputTests: XCTestCase {
    let id = String(repeating: "ab", count: 32)

    var podIdentity: Identity {
        Identity(workload: "shop/web/app", container: ContainerInfo(id: id, runtime: .containerd, name: "app", image: "web:1"),
                 pod: PodInfo(namespace: "shop", name: "web-7d9c8b6f5-x2x4z", uid: "u-1", container: "app"), cgroupPath: "/kubepods/x")
    }

    func testFilters() {
        let host = Identity.host(cgroupPath: "/system.slice/nginx.service")
        XCTAssertTrue(IdentityFilter().matches(host))
        XCTAssertTrue(IdentityFilter(container: "app").matches(podIdentity))
        XCTAssertTrue(IdentityFilter(container: "ababab").matches(podIdentity))
        XCTAssertTrue(IdentityFilter(container: "ABABAB").matches(podIdentity))
        XCTAssertFalse(IdentityFilter(container: "abx").matches(podIdentity))
        XCTAssertFalse(IdentityFilter(container: "app").matches(host))
        XCTAssertTrue(IdentityFilter(workload: "/system.slice/nginx.service").matches(host))
        XCTAssertFalse(IdentityFilter(workload: "shop/web").matches(podIdentity))
        XCTAssertTrue(IdentityFilter(workload: "shop/web/app", namespace: "shop").matches(podIdentity))
        XCTAssertFalse(IdentityFilter(namespace: "shop").matches(host))
        XCTAssertFalse(IdentityFilter(namespace: "default").matches(podIdentity))
        XCTAssertTrue(IdentityFilter(workload: "unknown").matches(.unknown))
    }

    func testJSONKeys() throws {
        let e = ConnectionEvent(timeNanoseconds: 1_700_000_000_000_000_000, direction: .accept, outcome: .established,
                                pid: 7, comm: "srv", uid: 0, cgroupID: 42, source: IPAddress(ipv4: [127, 0, 0, 1]), sourcePort: 5000,
                                destination: IPAddress(ipv4: [127, 0, 0, 1]), destinationPort: 80)
        var writer = JSONLineWriter()
        var out: [UInt8] = []
        writer.append(e, identity: podIdentity, to: &out)
        writer.append(e, identity: Identity.host(cgroupPath: "/a\"b"), to: &out)
        let lines = String(decoding: out, as: UTF8.self).split(separator: "\n")
        XCTAssertEqual(lines.count, 2)
        let first = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(lines[0].utf8)) as? [String: Any])
        XCTAssertEqual(first["workload"] as? String, "shop/web/app")
        XCTAssertEqual(first["cgroup_id"] as? Int, 42)  // existing keys kept
        let container = try XCTUnwrap(first["container"] as? [String: Any])
        XCTAssertEqual(container["id"] as? String, id)
        XCTAssertEqual(container["runtime"] as? String, "containerd")
        XCTAssertEqual(container["name"] as? String, "app")
        XCTAssertEqual(container["image"] as? String, "web:1")
        let pod = try XCTUnwrap(first["pod"] as? [String: Any])
        XCTAssertEqual(pod as? [String: String], ["namespace": "shop", "name": "web-7d9c8b6f5-x2x4z", "uid": "u-1", "container": "app"])
        let second = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(lines[1].utf8)) as? [String: Any])
        XCTAssertEqual(second["workload"] as? String, "/a\"b")
        XCTAssertTrue(second["container"] is NSNull)
        XCTAssertTrue(second["pod"] is NSNull)
    }

    func testContainerColumn() {
        XCTAssertEqual(podIdentity.containerColumn, "app")
        XCTAssertEqual(Identity(workload: "w", container: ContainerInfo(id: id, runtime: .docker)).containerColumn, "abababababab")
        XCTAssertEqual(Identity.unknown.containerColumn, "-")
    }
}
