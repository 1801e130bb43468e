import ConnGuardCore
@testable import ConnGuardIdentity
import Foundation
import Glibc
import XCTest

/// The resolver, the path cache and the runtime readers on files laid out as
/// the runtimes lay them out, in a temporary folder. No root needed.
final class ResolverTests: XCTestCase {
    static let id = "4a04ae49dddc73ce1db925cad68df4084299dc3763adbd7f80699fe4607b8e49"
    static let sandboxID = "eb29d410202f96d86de030c5b5a5e3fb53cf05170da46e7e6d7ef378fbda3d74"
    var root = ""

    override func setUpWithError() throws {
        root = NSTemporaryDirectory() + "connguard-identity-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(atPath: root)
    }

    func write(_ relative: String, _ object: Any) throws {
        let path = root + "/" + relative
        try FileManager.default.createDirectory(atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        let data = try JSONSerialization.data(withJSONObject: object)
        try data.write(to: URL(fileURLWithPath: path))
    }

    func mkdir(_ relative: String) throws -> UInt64 {
        let path = root + "/" + relative
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        var st = stat()
        XCTAssertEqual(stat(path, &st), 0)
        return UInt64(st.st_ino)
    }

    // MARK: readers

    func testPodmanStorage() throws {
        let id = Self.id
        try write("graph/overlay-containers/containers.json", [[
            "id": id, "names": ["srv"], "image": "679b",
            "metadata": #"{"image-name":"localhost/bb:latest","image-id":"679b","name":"srv","created-at":1}"#,
        ]])
        try write("graph/overlay-containers/\(id)/userdata/config.json", ["annotations": [
            "io.container.manager": "libpod",
            "io.kubernetes.pod.namespace": "shop", "io.kubernetes.pod.name": "web-7d9c8b6f5-x2x4z",
            "io.kubernetes.pod.uid": "11111111-2222-3333-4444-555555555555", "io.kubernetes.container.name": "app",
        ]])
        let reader = ContainersStorageReader(graphRoot: root + "/graph", runRoot: root + "/run", storageConf: "/nonexistent")
        let m = try XCTUnwrap(reader.metadata(for: ContainerRef(runtime: .podman, id: id, cgroupPath: "/x")))
        XCTAssertEqual(m.runtime, .podman)
        XCTAssertEqual(m.name, "srv")
        XCTAssertEqual(m.image, "localhost/bb:latest")
        let identity = Identity.container(ContainerRef(runtime: .podman, id: id, cgroupPath: "/x"), metadata: m, cgroupPath: "/x")
        XCTAssertEqual(identity.workload, "shop/web/app")
        XCTAssertEqual(identity.pod?.uid, "11111111-2222-3333-4444-555555555555")
        XCTAssertNil(reader.metadata(for: ContainerRef(runtime: .podman, id: Self.sandboxID, cgroupPath: "/y")))
        XCTAssertNil(reader.metadata(for: ContainerRef(runtime: .podman, id: "../../etc", cgroupPath: "/y")))
    }

    func testCRIOStorageWithSandboxLabels() throws {
        let id = Self.id, sandbox = Self.sandboxID
        try write("run/overlay-containers/\(id)/userdata/config.json", ["annotations": [
            "io.kubernetes.cri-o.ContainerType": "container", "io.kubernetes.cri-o.SandboxID": sandbox,
            "io.kubernetes.pod.namespace": "data", "io.kubernetes.pod.name": "db-2",
            "io.kubernetes.container.name": "postgres", "io.kubernetes.cri-o.ImageName": "docker.io/library/postgres:16",
        ]])
        try write("run/overlay-containers/\(sandbox)/userdata/config.json", ["annotations": [
            "io.kubernetes.cri-o.ContainerType": "sandbox",
            "io.kubernetes.cri-o.Labels": #"{"app":"db","statefulset.kubernetes.io/pod-name":"db-2"}"#,
        ]])
        let reader = ContainersStorageReader(graphRoot: root + "/graph", runRoot: root + "/run", driver: "overlay", storageConf: "/nonexistent")
        let ref = ContainerRef(runtime: .crio, id: id, cgroupPath: "/kubepods/besteffort/pod11111111-2222-3333-4444-555555555555/crio-\(id)",
                               podUID: "11111111-2222-3333-4444-555555555555", qos: .besteffort)
        let m = try XCTUnwrap(reader.metadata(for: ref))
        XCTAssertEqual(m.runtime, .crio)
        XCTAssertEqual(m.podLabels["statefulset.kubernetes.io/pod-name"], "db-2")
        let identity = Identity.container(ref, metadata: m, cgroupPath: ref.cgroupPath)
        XCTAssertEqual(identity.workload, "data/db/postgres")
        XCTAssertEqual(identity.container?.image, "docker.io/library/postgres:16")
        XCTAssertEqual(identity.pod?.uid, "11111111-2222-3333-4444-555555555555")
    }

    func testStorageConf() {
        let conf = """
        [storage]
        driver = "vfs"   # comment
        runroot = "/run/x"
        graphroot = "/var/x#y"
        [storage.options]
        graphroot = "/nope"
        """
        XCTAssertEqual(ContainersStorageReader.parseStorageConf(conf), ["driver": "vfs", "runroot": "/run/x", "graphroot": "/var/x#y"])
    }

    func testContainerdBundles() throws {
        try write("containerd/io.containerd.runtime.v2.task/default/c1/config.json", ["ociVersion": "1.0.2"])
        try write("containerd/io.containerd.runtime.v2.task/k8s.io/\(Self.id)/config.json", ["annotations": [
            "io.kubernetes.cri.container-type": "container", "io.kubernetes.cri.sandbox-name": "web-7d9c8b6f5-x2x4z",
            "io.kubernetes.cri.sandbox-namespace": "shop", "io.kubernetes.cri.sandbox-uid": "u",
            "io.kubernetes.cri.container-name": "app", "io.kubernetes.cri.image-name": "registry.example/web:1.4",
        ]])
        let reader = ContainerdReader(stateRoot: root + "/containerd")
        XCTAssertEqual(reader.namespaces(), ["default", "k8s.io"])
        let ctr = try XCTUnwrap(reader.metadata(for: ContainerRef(runtime: .containerd, id: "c1", cgroupPath: "/default/c1", containerdNamespace: "default")))
        XCTAssertEqual(ctr.name, "c1")
        XCTAssertNil(ctr.image)
        // The kubelet's cgroupfs layout names no namespace and no runtime.
        let cri = try XCTUnwrap(reader.metadata(for: ContainerRef(runtime: nil, id: Self.id, cgroupPath: "/kubepods/x")))
        XCTAssertEqual(cri.name, "app")
        XCTAssertEqual(Identity.container(ContainerRef(runtime: nil, id: Self.id, cgroupPath: "/k"), metadata: cri, cgroupPath: nil).workload, "shop/web/app")
        XCTAssertNil(ContainerdReader(stateRoot: root + "/none").namespaces())
    }

    func testDockerConfig() throws {
        try write("docker/containers/\(Self.id)/config.v2.json", ["Name": "/web", "Config": ["Image": "nginx:1.25", "Labels": ["a": "b"]]])
        let m = try XCTUnwrap(DockerReader(root: root + "/docker").metadata(for: ContainerRef(runtime: .docker, id: Self.id, cgroupPath: "/docker/x")))
        XCTAssertEqual(m.name, "web")
        XCTAssertEqual(m.image, "nginx:1.25")
    }

    // MARK: path cache and resolver

    /// A monotonic clock the test moves.
    final class TestClock: @unchecked Sendable {
        var t: Int64 = 1_000_000_000_000
        func advance(seconds: Double) { t += Int64(seconds * 1e9) }
    }

    func testPathCacheFollowsEventsAndKeepsRemovedForTheGracePeriod() throws {
        let clock = TestClock()
        let mount = root + "/cg"
        let seeded = try mkdir("cg/system.slice/a.service")
        let cache = CgroupPathCache(mount: mount, gracePeriodSeconds: 300, now: { clock.t })
        XCTAssertGreaterThanOrEqual(cache.seed(), 3)
        XCTAssertEqual(cache.path(for: seeded), "/system.slice/a.service")

        cache.apply(CgroupEvent(timeNanoseconds: 0, created: true, hierarchyID: 0, cgroupID: 77, path: "/libpod_parent/libpod-x"))
        cache.apply(CgroupEvent(timeNanoseconds: 0, created: true, hierarchyID: 3, cgroupID: 78, path: "/v1/only"))
        XCTAssertEqual(cache.path(for: 77), "/libpod_parent/libpod-x")
        XCTAssertNil(cache.cached(78))
        cache.apply(CgroupEvent(timeNanoseconds: 0, created: false, hierarchyID: 0, cgroupID: 77, path: "/libpod_parent/libpod-x"))
        clock.advance(seconds: 299)
        cache.expire()
        XCTAssertEqual(cache.cached(77)?.removed, true)
        clock.advance(seconds: 2)
        cache.expire()
        XCTAssertNil(cache.cached(77))
        XCTAssertEqual(cache.statistics.expired, 1)
    }

    func testPathCacheMissFallsBackToALimitedWalk() throws {
        let clock = TestClock()
        let mount = root + "/cg"
        _ = try mkdir("cg")
        let cache = CgroupPathCache(mount: mount, now: { clock.t })
        cache.seed()
        let late = try mkdir("cg/late/child")  // no event for it: a lost record
        XCTAssertEqual(cache.path(for: late), "/late/child")  // not a cgroupfs: handles fail, one walk
        XCTAssertEqual(cache.statistics.walks, 1)
        let later = try mkdir("cg/later")
        XCTAssertNil(cache.path(for: later))  // the next walk waits for the interval
        clock.advance(seconds: 11)
        XCTAssertEqual(cache.path(for: later), "/later")
        XCTAssertEqual(cache.statistics.walks, 2)
    }

    func testResolverAttributesANewContainerAndRetriesMissingMetadata() throws {
        let clock = TestClock()
        let id = Self.id
        let cache = CgroupPathCache(mount: root + "/cg", now: { clock.t })
        let reader = ContainersStorageReader(graphRoot: root + "/graph", runRoot: root + "/run", driver: "overlay", storageConf: "/nonexistent")
        let resolver = IdentityResolver(cgroups: cache, readers: [reader, ContainerdReader(stateRoot: root + "/containerd")], now: { clock.t })

        // mkdir before the runtime wrote its files: attributed to the id at once
        resolver.apply(CgroupEvent(timeNanoseconds: 0, created: true, hierarchyID: 0, cgroupID: 500, path: "/libpod_parent/libpod-\(id)"))
        var identity = resolver.resolve(event(cgroup: 500))
        XCTAssertEqual(identity.container?.id, id)
        XCTAssertEqual(identity.container?.runtime, .podman)
        XCTAssertEqual(identity.workload, "container:4a04ae49dddc")

        // the files appear; the next attempt after the back-off reads them
        try write("graph/overlay-containers/containers.json", [["id": id, "names": ["srv"], "metadata": #"{"image-name":"localhost/bb:latest","name":"srv"}"#]])
        try write("graph/overlay-containers/\(id)/userdata/config.json", ["annotations": ["io.container.manager": "libpod"]])
        clock.advance(seconds: 0.05)
        identity = resolver.resolve(event(cgroup: 500))
        XCTAssertEqual(identity.workload, "srv")
        XCTAssertEqual(identity.container?.image, "localhost/bb:latest")

        // a sub-cgroup of the same container (crun's "container")
        resolver.apply(CgroupEvent(timeNanoseconds: 0, created: true, hierarchyID: 0, cgroupID: 501, path: "/libpod_parent/libpod-\(id)/container"))
        XCTAssertEqual(resolver.resolve(event(cgroup: 501)).workload, "srv")

        // exited: still attributed during the grace period
        resolver.apply(CgroupEvent(timeNanoseconds: 0, created: false, hierarchyID: 0, cgroupID: 501, path: "/libpod_parent/libpod-\(id)/container"))
        resolver.apply(CgroupEvent(timeNanoseconds: 0, created: false, hierarchyID: 0, cgroupID: 500, path: "/libpod_parent/libpod-\(id)"))
        try FileManager.default.removeItem(atPath: root + "/graph")
        clock.advance(seconds: 60)
        XCTAssertEqual(resolver.resolve(event(cgroup: 500)).workload, "srv")

        // host and unknown, counted
        resolver.apply(CgroupEvent(timeNanoseconds: 0, created: true, hierarchyID: 0, cgroupID: 600, path: "/system.slice/nginx.service"))
        XCTAssertEqual(resolver.resolve(event(cgroup: 600)).workload, "/system.slice/nginx.service")
        XCTAssertTrue(resolver.resolve(event(cgroup: 999_999)).isUnknown)
        resolver.apply(CgroupEvent(timeNanoseconds: 0, created: true, hierarchyID: 0, cgroupID: 601, path: "/docker/abc"))
        let odd = resolver.resolve(event(cgroup: 601))
        XCTAssertTrue(odd.isUnknown)
        XCTAssertEqual(odd.cgroupPath, "/docker/abc")

        let s = resolver.statistics
        XCTAssertEqual(s.events, 7)
        XCTAssertEqual(s.containerEvents, 4)
        XCTAssertEqual(s.hostEvents, 1)
        XCTAssertEqual(s.unattributed, 2)
        XCTAssertEqual(s.withoutMetadata, 1)

        // after the grace period, forgotten
        clock.advance(seconds: 300)
        resolver.apply(CgroupEvent(timeNanoseconds: 0, created: true, hierarchyID: 0, cgroupID: 602, path: "/x"))
        XCTAssertNil(cache.cached(500))
    }

    func testResolverLearnsContainerdNamespacesAsTheyAppear() throws {
        let clock = TestClock()
        let cache = CgroupPathCache(mount: root + "/cg", now: { clock.t })
        try write("containerd/io.containerd.runtime.v2.task/default/keep/config.json", [:] as [String: Any])
        let resolver = IdentityResolver(cgroups: cache, readers: [ContainerdReader(stateRoot: root + "/containerd")], now: { clock.t })
        resolver.apply(CgroupEvent(timeNanoseconds: 0, created: true, hierarchyID: 0, cgroupID: 700, path: "/default/keep"))
        XCTAssertEqual(resolver.resolve(event(cgroup: 700)).workload, "keep")
        // a namespace made a moment ago
        try write("containerd/io.containerd.runtime.v2.task/team/web/config.json", ["annotations": ["nerdctl/name": "web-1"]])
        clock.advance(seconds: 0.1)
        resolver.apply(CgroupEvent(timeNanoseconds: 0, created: true, hierarchyID: 0, cgroupID: 701, path: "/team/web"))
        let identity = resolver.resolve(event(cgroup: 701))
        XCTAssertEqual(identity.container?.runtime, .containerd)
        XCTAssertEqual(identity.workload, "web-1")
        // and what is not a namespace stays a host cgroup
        resolver.apply(CgroupEvent(timeNanoseconds: 0, created: true, hierarchyID: 0, cgroupID: 702, path: "/mine/thing"))
        XCTAssertEqual(resolver.resolve(event(cgroup: 702)).workload, "/mine/thing")
    }

    func event(cgroup: UInt64) -> ConnectionEvent {
        ConnectionEvent(timeNanoseconds: 0, direction: .connect, outcome: .established, pid: 1, comm: "x", uid: 0, cgroupID: cgroup,
                        source: IPAddress(ipv4: [127, 0, 0, 1]), sourcePort: 1, destination: IPAddress(ipv4: [127, 0, 0, 1]), destinationPort: 2)
    }
}
