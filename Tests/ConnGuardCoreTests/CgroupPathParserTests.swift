import ConnGuardCore
import XCTest

final class CgroupPathParserTests: XCTestCase {
    static let id = "4a04ae49dddc73ce1db925cad68df4084299dc3763adbd7f80699fe4607b8e49"
    static let id2 = "eb29d410202f96d86de030c5b5a5e3fb53cf05170da46e7e6d7ef378fbda3d74"
    static let uid = "1a2b3c4d-5e6f-4a1b-8c9d-0e1f2a3b4c5d"
    static let uidUnderscored = "1a2b3c4d_5e6f_4a1b_8c9d_0e1f2a3b4c5d"

    /// What a test expects: a container (runtime, id, pod uid, qos, own path), host, or unknown.
    enum Want: Equatable, CustomStringConvertible {
        case container(ContainerInfo.Runtime?, String, pod: String? = nil, qos: KubernetesQoS? = nil, path: String? = nil, ns: String? = nil)
        case host
        case unknown

        var description: String {
            switch self {
            case let .container(r, id, pod, qos, path, ns):
                return "container(\(r?.rawValue ?? "nil"), \(id.prefix(12)), pod: \(pod ?? "-"), qos: \(qos?.rawValue ?? "-"), path: \(path ?? "-"), ns: \(ns ?? "-"))"
            case .host: return "host"
            case .unknown: return "unknown"
            }
        }
    }

    func check(_ path: String, _ want: Want, namespaces: Set<String> = CgroupPathParser.defaultContainerdNamespaces,
               file: StaticString = #filePath, line: UInt = #line) {
        let got = CgroupPathParser.parse(path, containerdNamespaces: namespaces)
        switch (got, want) {
        case let (.container(ref), .container(runtime, id, pod, qos, ownPath, ns)):
            XCTAssertEqual(ref.runtime, runtime, "runtime of \(path)", file: file, line: line)
            XCTAssertEqual(ref.id, id, "id of \(path)", file: file, line: line)
            XCTAssertEqual(ref.podUID, pod, "pod uid of \(path)", file: file, line: line)
            XCTAssertEqual(ref.qos, qos, "qos of \(path)", file: file, line: line)
            if let ownPath { XCTAssertEqual(ref.cgroupPath, ownPath, "container path of \(path)", file: file, line: line) }
            XCTAssertEqual(ref.containerdNamespace, ns, "namespace of \(path)", file: file, line: line)
        case let (.host(p), .host):
            XCTAssertTrue(p.hasPrefix("/"), "host path \(p)", file: file, line: line)
        case (.unknown, .unknown):
            break
        default:
            XCTFail("\(path.prefix(200)): got \(got), want \(want)", file: file, line: line)
        }
    }

    func testRuntimeLayouts() {
        let id = Self.id, uid = Self.uid, u_ = Self.uidUnderscored
        let table: [(String, Want)] = [
            // podman / libpod
            ("/libpod_parent/libpod-\(id)", .container(.podman, id, path: "/libpod_parent/libpod-\(id)")),
            ("/machine.slice/libpod-\(id).scope", .container(.podman, id, path: "/machine.slice/libpod-\(id).scope")),
            ("/machine.slice/machine-libpod_pod_\(Self.id2).slice/libpod-\(id).scope", .container(.podman, id)),
            ("/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-\(id).scope", .container(.podman, id)),
            ("/libpod_parent/libpod-conmon-\(id)", .host),
            ("/machine.slice/libpod-conmon-\(id).scope", .host),
            ("/libpod_parent", .host),
            // docker
            ("/docker/\(id)", .container(.docker, id, path: "/docker/\(id)")),
            ("/system.slice/docker-\(id).scope", .container(.docker, id)),
            ("/system.slice/docker.service", .host),
            ("/system.slice/docker-compose@web.service", .host),
            // containerd (ctr, nerdctl)
            ("/default/c1", .container(.containerd, "c1", path: "/default/c1", ns: "default")),
            ("/k8s.io/\(id)", .container(.containerd, id, ns: "k8s.io")),
            ("/default/my.app_1-x", .container(.containerd, "my.app_1-x", ns: "default")),
            ("/buildkit/worker-1", .container(.containerd, "worker-1", ns: "buildkit"), ),
            ("/default", .host),
            // Kubernetes, systemd driver
            ("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod\(u_).slice/cri-containerd-\(id).scope",
             .container(.containerd, id, pod: uid, qos: .besteffort)),
            ("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod\(u_).slice/crio-\(id).scope",
             .container(.crio, id, pod: uid, qos: .burstable)),
            ("/kubepods.slice/kubepods-pod\(u_).slice/docker-\(id).scope",
             .container(.docker, id, pod: uid, qos: .guaranteed)),
            ("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod\(u_).slice/crio-conmon-\(id).scope", .host),
            ("/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod\(u_).slice/cri-containerd-\(id).scope",
             .container(.containerd, id, pod: uid, qos: .besteffort)),  // kind: a kubelet with --cgroup-root
            // Kubernetes, cgroupfs driver
            ("/kubepods/besteffort/pod\(uid)/\(id)", .container(nil, id, pod: uid, qos: .besteffort, path: "/kubepods/besteffort/pod\(uid)/\(id)")),
            ("/kubepods/burstable/pod\(uid)/\(id)", .container(nil, id, pod: uid, qos: .burstable)),
            ("/kubepods/pod\(uid)/\(id)", .container(nil, id, pod: uid, qos: .guaranteed)),
            ("/kubepods/besteffort/pod\(uid)/crio-\(id)", .container(.crio, id, pod: uid, qos: .besteffort)),
            ("/kubepods/besteffort/pod\(uid)/libpod-\(id)", .container(.podman, id, pod: uid, qos: .besteffort)),
            ("/kubepods/burstable/pod0123456789abcdef0123456789abcdef/\(id)", .container(nil, id, pod: "0123456789abcdef0123456789abcdef", qos: .burstable)),
            // sub-cgroups a runtime made inside the container's (crun, systemd in a container)
            ("/libpod_parent/libpod-\(id)/container", .container(.podman, id, path: "/libpod_parent/libpod-\(id)")),
            ("/machine.slice/libpod-\(id).scope/container/init.scope", .container(.podman, id, path: "/machine.slice/libpod-\(id).scope")),
            ("/kubepods/besteffort/pod\(uid)/\(id)/sub", .container(nil, id, pod: uid, qos: .besteffort, path: "/kubepods/besteffort/pod\(uid)/\(id)")),
            ("/docker/\(id)/docker/\(Self.id2)", .container(.docker, id, path: "/docker/\(id)")),  // outer container wins
            ("/default/c1/inner", .container(.containerd, "c1", path: "/default/c1", ns: "default")),
            // host processes
            ("/", .host),
            ("/system.slice/nginx.service", .host),
            ("/user.slice/user-0.slice/session-1.scope", .host),
            ("/init.scope", .host),
            ("/connguard-test/abc", .host),
        ]
        for (path, want) in table { check(path, want, namespaces: ["default", "k8s.io", "buildkit"]) }
    }

    func testContainerdNamespacesComeFromTheCaller() {
        check("/default/c1", .host, namespaces: [])
        check("/team/web", .container(.containerd, "web", ns: "team"), namespaces: ["team"])
        check("/team/web", .host, namespaces: ["default"])
        // A namespace that exists, with a name containerd would refuse: not a container.
        check("/default/-bad", .unknown)
        check("/default/bad-", .unknown)
        check("/default/" + String(repeating: "a", count: 77), .unknown)
        check("/default/a b", .unknown)
    }

    // Found by the cgroup-path fuzz target: split by Characters, "/" and a
    // combining mark after it were one, so a sub-cgroup a container names
    // "\u{301}x" hid the container (and a host path got a second "/").
    func testASlashBeforeACombiningMarkStillSeparates() {
        let id = Self.id
        check("/docker/\(id)/\u{301}x", .container(.docker, id, path: "/docker/\(id)"))
        check("/system.slice/docker-\(id).scope/\u{301}", .container(.docker, id, path: "/system.slice/docker-\(id).scope"))
        XCTAssertEqual(CgroupPathParser.parse("\u{301}x"), .host("/\u{301}x"))
        XCTAssertEqual(CgroupPathParser.parse("/\u{301}x"), .host("/\u{301}x"))
    }

    func testMalformedAndHostilePaths() {
        let id = Self.id, uid = Self.uid
        let table: [(String, Want)] = [
            ("", .unknown),
            ("//", .host),
            // ids of the wrong length or alphabet where a runtime promises one
            ("/libpod_parent/libpod-\(id.dropLast())", .unknown),
            ("/libpod_parent/libpod-\(id)0", .unknown),
            ("/libpod_parent/libpod-\(id.uppercased())", .unknown),
            ("/machine.slice/libpod-xyz.scope", .unknown),
            ("/system.slice/docker-\(id.prefix(12)).scope", .unknown),
            ("/system.slice/cri-containerd-\(id)z.scope", .unknown),
            ("/docker/\(id.prefix(12))", .unknown),
            ("/docker/\(id)g", .unknown),
            ("/docker/../\(id)", .unknown),
            ("/kubepods/besteffort/pod\(uid)/\(id.dropLast(2))", .unknown),
            ("/kubepods/besteffort/pod\(uid)", .unknown),  // the pod's own cgroup
            ("/kubepods/besteffort", .unknown),
            ("/kubepods", .unknown),
            ("/kubepods/besteffort/podnot-a-uid/\(id)", .unknown),
            ("/kubepods/besteffort/pod\(uid.uppercased())/\(id)", .unknown),
            ("/kubepods/besteffort/besteffort/pod\(uid)/\(id)", .unknown),
            ("/kubepods/weird/pod\(uid)/\(id)", .unknown),
            ("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-podzzzz.slice/cri-containerd-\(id).scope", .unknown),
            // odd characters: a host cgroup, by its path
            ("/system.slice/evil\nname.service", .host),
            ("/system.slice/\u{1b}[2Jclear.service", .host),
            ("/system.slice/ünïcödé-🙂.service", .host),
            ("/system.slice/with space/and\ttab", .host),
            ("/libpod_parent/libpod-\(id)\u{0}", .unknown),
            // very long
            ("/" + String(repeating: "a", count: 256), .unknown),
            ("/" + String(repeating: "a/", count: 3000), .unknown),
            ("/" + String(repeating: "x/", count: 100) + "libpod-\(id)", .container(.podman, id)),
            (String(repeating: "/", count: 5000), .unknown),
        ]
        for (path, want) in table { check(path, want) }
    }

    /// Random paths made of the pieces the parser looks for never crash it,
    /// and every container it reports has an id that is really in the path
    /// at a place a runtime puts one.
    func testRandomPathsNeverYieldAForeignContainer() {
        var rng = SplitMix64(seed: 0x5eed)
        let pieces = ["kubepods", "kubepods.slice", "besteffort", "burstable", "pod\(Self.uid)", "docker", "default",
                      "libpod-\(Self.id)", "libpod-conmon-\(Self.id)", "crio-\(Self.id).scope", "docker-\(Self.id).scope",
                      Self.id, String(Self.id.prefix(63)), "system.slice", "x.service", "..", ".", "", "\u{0}", "é",
                      "cri-containerd-\(Self.id2).scope", "kubepods-besteffort-pod\(Self.uidUnderscored).slice"]
        for _ in 0..<20_000 {
            let n = Int(rng.next() % 7)
            var path = ""
            for _ in 0..<n { path += "/" + pieces[Int(rng.next() % UInt64(pieces.count))] }
            if case let .container(ref) = CgroupPathParser.parse(path) {
                XCTAssertTrue(ref.id == Self.id || ref.id == Self.id2 || ref.id == "c1" || CgroupPathParser.isContainerdID(ref.id), path)
                XCTAssertTrue(path.contains(ref.id), path)
                let normalized = "/" + path.split(separator: "/").joined(separator: "/")
                XCTAssertTrue(normalized.hasPrefix(ref.cgroupPath), path)
            }
        }
    }
}

/// A small deterministic generator for the fuzz-like tests.
struct SplitMix64 {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9e3779b97f4a7c15
        var z = state
        z = (z ^ (z >> 30)) &* 0xbf58476d1ce4e5b9
        z = (z ^ (z >> 27)) &* 0x94d049bb133111eb
        return z ^ (z >> 31)
    }
}
