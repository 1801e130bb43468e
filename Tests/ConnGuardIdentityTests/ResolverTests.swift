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
        ], "linux": ["cgroupsPath": "machine.slice:libpod:\(id)"]])
        let reader = ContainersStorageReader(graphRoot: root + "/graph", runRoot: root + "/run", storageConf: "/nonexistent")
        let m = try XCTUnwrap(reader.metadata(for: ContainerRef(runtime: .podman, id: id, cgroupPath: "/x")))
        XCTAssertEqual(m.runtime, .podman)
        XCTAssertEqual(m.name, "srv")
        XCTAssertEqual(m.image, "localhost/bb:latest")
        XCTAssertEqual(m.cgroupPath, "/machine.slice/libpod-\(id).scope")
        let own = "/machine.slice/libpod-\(id).scope"
        let identity = Identity.container(ContainerRef(runtime: .podman, id: id, cgroupPath: own), metadata: m, cgroupPath: own)
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
        ], "linux": ["cgroupsPath": "/kubepods/besteffort/pod11111111-2222-3333-4444-555555555555/crio-\(id)"]])
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
        try write("containerd/io.containerd.runtime.v2.task/default/c1/config.json", ["ociVersion": "1.0.2", "linux": ["cgroupsPath": "/default/c1"]])
        try write("containerd/io.containerd.runtime.v2.task/k8s.io/\(Self.id)/config.json", ["annotations": [
            "io.kubernetes.cri.container-type": "container", "io.kubernetes.cri.sandbox-name": "web-7d9c8b6f5-x2x4z",
            "io.kubernetes.cri.sandbox-namespace": "shop", "io.kubernetes.cri.sandbox-uid": "u",
            "io.kubernetes.cri.container-name": "app", "io.kubernetes.cri.image-name": "registry.example/web:1.4",
        ], "linux": ["cgroupsPath": "/kubepods/x/\(Self.id)"]])
        let reader = ContainerdReader(stateRoot: root + "/containerd")
        XCTAssertEqual(reader.namespaces(), ["default", "k8s.io"])
        let ctr = try XCTUnwrap(reader.metadata(for: ContainerRef(runtime: .containerd, id: "c1", cgroupPath: "/default/c1", containerdNamespace: "default")))
        XCTAssertEqual(ctr.name, "c1")
        XCTAssertNil(ctr.image)
        XCTAssertEqual(ctr.cgroupPath, "/default/c1")
        // The kubelet's cgroupfs layout names no namespace and no runtime.
        let cri = try XCTUnwrap(reader.metadata(for: ContainerRef(runtime: nil, id: Self.id, cgroupPath: "/kubepods/x")))
        XCTAssertEqual(cri.name, "app")
        XCTAssertEqual(Identity.container(ContainerRef(runtime: nil, id: Self.id, cgroupPath: "/kubepods/x/\(Self.id)"), metadata: cri, cgroupPath: nil).workload, "shop/web/app")
        XCTAssertNil(ContainerdReader(stateRoot: root + "/none").namespaces())
    }

    func testDockerConfig() throws {
        try write("docker/containers/\(Self.id)/config.v2.json", ["Name": "/web", "Config": ["Image": "nginx:1.25", "Labels": ["a": "b"]]])
        let reader = DockerReader(root: root + "/docker", bundleRoots: [root + "/containerd/moby", root + "/docker-containerd/moby"])
        let ref = ContainerRef(runtime: .docker, id: Self.id, cgroupPath: "/system.slice/docker-\(Self.id).scope")
        var m = try XCTUnwrap(reader.metadata(for: ref))
        XCTAssertEqual(m.name, "web")
        XCTAssertEqual(m.image, "nginx:1.25")
        XCTAssertNil(m.cgroupPath)  // no task bundle: no word on the cgroup
        XCTAssertEqual(Identity.container(ref, metadata: m, cgroupPath: ref.cgroupPath).workload, ref.cgroupPath)
        // the spec dockerd gave containerd says where the container is
        try write("docker-containerd/moby/\(Self.id)/config.json", ["linux": ["cgroupsPath": "system.slice:docker:\(Self.id)"]])
        m = try XCTUnwrap(reader.metadata(for: ref))
        XCTAssertEqual(m.cgroupPath, ref.cgroupPath)
        XCTAssertEqual(Identity.container(ref, metadata: m, cgroupPath: ref.cgroupPath).workload, "web")
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

        // mkdir before the runtime wrote its files: named by its path, no container
        resolver.apply(CgroupEvent(timeNanoseconds: 0, created: true, hierarchyID: 0, cgroupID: 500, path: "/libpod_parent/libpod-\(id)"))
        var identity = resolver.resolve(event(cgroup: 500))
        XCTAssertNil(identity.container)
        XCTAssertEqual(identity.workload, "/libpod_parent/libpod-\(id)")

        // the files appear; the next attempt after the back-off reads them
        try write("graph/overlay-containers/containers.json", [["id": id, "names": ["srv"], "metadata": #"{"image-name":"localhost/bb:latest","name":"srv"}"#]])
        try write("graph/overlay-containers/\(id)/userdata/config.json", ["annotations": ["io.container.manager": "libpod"],
                                                                          "linux": ["cgroupsPath": "/libpod_parent/libpod-\(id)"]])
        clock.advance(seconds: 0.05)
        identity = resolver.resolve(event(cgroup: 500))
        XCTAssertEqual(identity.workload, "srv")
        XCTAssertEqual(identity.container?.id, id)
        XCTAssertEqual(identity.container?.runtime, .podman)
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
        XCTAssertEqual(s.containerEvents, 3)
        XCTAssertEqual(s.hostEvents, 1)
        XCTAssertEqual(s.unattributed, 2)
        XCTAssertEqual(s.unverified, 1)

        // after the grace period, forgotten
        clock.advance(seconds: 300)
        resolver.apply(CgroupEvent(timeNanoseconds: 0, created: true, hierarchyID: 0, cgroupID: 602, path: "/x"))
        XCTAssertNil(cache.cached(500))
    }

    func testResolverLearnsContainerdNamespacesAsTheyAppear() throws {
        let clock = TestClock()
        let cache = CgroupPathCache(mount: root + "/cg", now: { clock.t })
        try write("containerd/io.containerd.runtime.v2.task/default/keep/config.json", ["linux": ["cgroupsPath": "/default/keep"]])
        let resolver = IdentityResolver(cgroups: cache, readers: [ContainerdReader(stateRoot: root + "/containerd")], now: { clock.t })
        resolver.apply(CgroupEvent(timeNanoseconds: 0, created: true, hierarchyID: 0, cgroupID: 700, path: "/default/keep"))
        XCTAssertEqual(resolver.resolve(event(cgroup: 700)).workload, "keep")
        // a namespace made a moment ago
        try write("containerd/io.containerd.runtime.v2.task/team/web/config.json", ["annotations": ["nerdctl/name": "web-1"],
                                                                                  "linux": ["cgroupsPath": "/team/web"]])
        clock.advance(seconds: 0.1)
        resolver.apply(CgroupEvent(timeNanoseconds: 0, created: true, hierarchyID: 0, cgroupID: 701, path: "/team/web"))
        let identity = resolver.resolve(event(cgroup: 701))
        XCTAssertEqual(identity.container?.runtime, .containerd)
        XCTAssertEqual(identity.workload, "web-1")
        // and what is not a namespace stays a host cgroup
        resolver.apply(CgroupEvent(timeNanoseconds: 0, created: true, hierarchyID: 0, cgroupID: 702, path: "/mine/thing"))
        XCTAssertEqual(resolver.resolve(event(cgroup: 702)).workload, "/mine/thing")
    }

    /// Issue 13, item 8: cgroups made by hand and named after a real
    /// container (each runtime's pattern, and a rootless user's) get neither
    /// its workload nor its id; only the cgroup its runtime's spec names does.
    func testCgroupsNamedAfterAContainerAreNamedByTheirPath() throws {
        let clock = TestClock()
        let id = Self.id
        let real = "/libpod_parent/libpod-\(id)"
        try write("graph/overlay-containers/containers.json", [["id": id, "names": ["srv"], "metadata": #"{"image-name":"localhost/bb:latest","name":"srv"}"#]])
        try write("graph/overlay-containers/\(id)/userdata/config.json", ["annotations": ["io.container.manager": "libpod"],
                                                                          "linux": ["cgroupsPath": real]])
        let cache = CgroupPathCache(mount: root + "/cg", now: { clock.t })
        let resolver = IdentityResolver(cgroups: cache, readers: [
            ContainersStorageReader(graphRoot: root + "/graph", runRoot: root + "/run", driver: "overlay", storageConf: "/nonexistent"),
            ContainerdReader(stateRoot: root + "/containerd"), DockerReader(root: root + "/docker", bundleRoots: []),
        ], now: { clock.t })
        let lookAlikes = [
            "/mine/docker-\(id).scope", "/mine/libpod-\(id).scope", "/mine/cri-containerd-\(id).scope",
            "/mine/user.slice/libpod-\(id).scope", "/docker/\(id)", "/system.slice/docker-\(id).scope",
            "/kubepods/besteffort/pod11111111-2222-3333-4444-555555555555/\(id)",
            "/kubepods.slice/kubepods-pod11111111_2222_3333_4444_555555555555.slice/cri-containerd-\(id).scope",
            "/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-\(id).scope",
        ]
        // the look-alikes first, so none can take a slot the real one fills later
        for (i, path) in lookAlikes.enumerated() {
            resolver.apply(CgroupEvent(timeNanoseconds: 0, created: true, hierarchyID: 0, cgroupID: 800 + UInt64(i), path: path))
            let identity = resolver.resolve(event(cgroup: 800 + UInt64(i)))
            XCTAssertEqual(identity.workload, path)
            XCTAssertNil(identity.container, path)
            XCTAssertNil(identity.pod, path)
        }
        resolver.apply(CgroupEvent(timeNanoseconds: 0, created: true, hierarchyID: 0, cgroupID: 900, path: real))
        let identity = resolver.resolve(event(cgroup: 900))
        XCTAssertEqual(identity.workload, "srv")
        XCTAssertEqual(identity.container?.id, id)
        // and later, still: a found mismatch is final, not retried into the container
        clock.advance(seconds: 60)
        for i in lookAlikes.indices { XCTAssertNil(resolver.resolve(event(cgroup: 800 + UInt64(i))).container) }
        let s = resolver.statistics
        XCTAssertEqual(s.unverified, UInt64(2 * lookAlikes.count))
        XCTAssertEqual(s.containerEvents, 1)
    }

    /// Metadata that says nothing of the cgroup (a spec not written yet) is
    /// read again, and the container is named once it does.
    func testMetadataWithoutACgroupIsReadAgain() throws {
        let clock = TestClock()
        let id = Self.id
        try write("graph/overlay-containers/containers.json", [["id": id, "names": ["srv"]]])
        let cache = CgroupPathCache(mount: root + "/cg", now: { clock.t })
        let resolver = IdentityResolver(cgroups: cache, readers: [
            ContainersStorageReader(graphRoot: root + "/graph", runRoot: root + "/run", driver: "overlay", storageConf: "/nonexistent"),
        ], now: { clock.t })
        resolver.apply(CgroupEvent(timeNanoseconds: 0, created: true, hierarchyID: 0, cgroupID: 910, path: "/libpod_parent/libpod-\(id)"))
        XCTAssertEqual(resolver.resolve(event(cgroup: 910)).workload, "/libpod_parent/libpod-\(id)")
        try write("graph/overlay-containers/\(id)/userdata/config.json", ["linux": ["cgroupsPath": "/libpod_parent/libpod-\(id)"]])
        clock.advance(seconds: 0.05)
        XCTAssertEqual(resolver.resolve(event(cgroup: 910)).workload, "srv")
    }

    func event(cgroup: UInt64) -> ConnectionEvent {
        ConnectionEvent(timeNanoseconds: 0, direction: .connect, outcome: .established, pid: 1, comm: "x", uid: 0, cgroupID: cgroup,
                        source: IPAddress(ipv4: [127, 0, 0, 1]), sourcePort: 1, destination: IPAddress(ipv4: [127, 0, 0, 1]), destinationPort: 2)
    }
}
