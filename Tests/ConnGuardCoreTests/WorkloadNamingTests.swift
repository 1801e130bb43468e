import ConnGuardCore
import XCTest

final class WorkloadNamingTests: XCTestCase {
    func testOwnerFromPodNameAlone() {
        let table: [(String, WorkloadOwner.Kind, String)] = [
            ("web-7d9c8b6f5-x2x4z", .deployment, "web"),
            ("payments-api-5f7b9c6d48-qzv2k", .deployment, "payments-api"),
            ("coredns-5dd5756b68-7xkqz", .deployment, "coredns"),
            ("db-0", .statefulSet, "db"),
            ("kafka-broker-12", .statefulSet, "kafka-broker"),
            ("kube-proxy-x2x4z", .daemonSetOrJob, "kube-proxy"),
            ("fluent-bit-7bq2n", .daemonSetOrJob, "fluent-bit"),
            ("backup-29437620-kq9vz", .cronJob, "backup"),
            ("report-28529975-l4s7d", .cronJob, "report"),
            ("debug", .pod, "debug"),
            ("my-pod", .pod, "my-pod"),
            ("nginx-v2", .pod, "nginx-v2"),
            ("app-007", .pod, "app-007"),  // not an ordinal (leading zero)
            ("-x2x4z", .pod, "-x2x4z"),
            ("", .pod, ""),
        ]
        for (pod, kind, name) in table {
            let o = WorkloadNaming.owner(podName: pod)
            XCTAssertEqual(o.name, name, pod)
            XCTAssertEqual(o.kind, kind, pod)
        }
    }

    func testOwnerFromLabels() {
        XCTAssertEqual(WorkloadNaming.owner(podName: "web-7d9c8b6f5-x2x4z", labels: ["pod-template-hash": "7d9c8b6f5"]),
                       WorkloadOwner(kind: .deployment, name: "web"))
        // A hash outside the alphabet the name heuristic knows: the label decides.
        XCTAssertEqual(WorkloadNaming.owner(podName: "api-abc123-x2x4z", labels: ["pod-template-hash": "abc123"]),
                       WorkloadOwner(kind: .deployment, name: "api"))
        XCTAssertEqual(WorkloadNaming.owner(podName: "db-3", labels: ["statefulset.kubernetes.io/pod-name": "db-3", "controller-revision-hash": "db-6f9b"]),
                       WorkloadOwner(kind: .statefulSet, name: "db"))
        XCTAssertEqual(WorkloadNaming.owner(podName: "node-exporter-b5d7k", labels: ["controller-revision-hash": "6b8f", "pod-template-generation": "1"]),
                       WorkloadOwner(kind: .daemonSet, name: "node-exporter"))
        XCTAssertEqual(WorkloadNaming.owner(podName: "migrate-x2x4z", labels: ["job-name": "migrate"]),
                       WorkloadOwner(kind: .job, name: "migrate"))
        XCTAssertEqual(WorkloadNaming.owner(podName: "nightly-29437620-abcde", labels: ["batch.kubernetes.io/job-name": "nightly-29437620"]),
                       WorkloadOwner(kind: .cronJob, name: "nightly"))
        // A label that does not fit the name is ignored rather than trusted into a wrong name.
        XCTAssertEqual(WorkloadNaming.owner(podName: "web-7d9c8b6f5-x2x4z", labels: ["pod-template-hash": "other"]).name, "web")
    }

    func testReplicasAndReplacementsShareAWorkload() {
        let replicas = ["web-7d9c8b6f5-x2x4z", "web-7d9c8b6f5-q8w7n", "web-6c8d9f7b5b-zz2xk"]
        let names = Set(replicas.map { WorkloadNaming.podWorkload(namespace: "shop", owner: WorkloadNaming.owner(podName: $0).name, container: "app") })
        XCTAssertEqual(names, ["shop/web/app"])
    }

    func testPlainContainers() {
        let id = String(repeating: "ab", count: 32)
        XCTAssertEqual(WorkloadNaming.containerWorkload(name: "postgres", image: "docker.io/library/postgres:16", id: id), "postgres")
        XCTAssertEqual(WorkloadNaming.containerWorkload(name: "quirky_hopper", image: "docker.io/library/postgres:16", id: id), "docker.io/library/postgres")
        XCTAssertEqual(WorkloadNaming.containerWorkload(name: "happy_path", image: nil, id: id), "happy_path")  // nothing better
        XCTAssertEqual(WorkloadNaming.containerWorkload(name: nil, image: "registry:5000/team/app:1.2@sha256:\(id)", id: id), "registry:5000/team/app")
        XCTAssertEqual(WorkloadNaming.containerWorkload(name: String(id.prefix(12)), image: "localhost/bb:latest", id: id), "localhost/bb")
        XCTAssertEqual(WorkloadNaming.containerWorkload(name: id, image: nil, id: id), id)
        XCTAssertEqual(WorkloadNaming.containerWorkload(name: nil, image: "sha256:\(id)", id: id), "container:abababababab")
        XCTAssertEqual(WorkloadNaming.containerWorkload(name: "c1", image: nil, id: "c1"), "c1")
        XCTAssertTrue(WorkloadNaming.isGeneratedName("quirky_hopper"))
        XCTAssertTrue(WorkloadNaming.isGeneratedName("zen_turing2"))
        XCTAssertFalse(WorkloadNaming.isGeneratedName("my_db"))
        XCTAssertFalse(WorkloadNaming.isGeneratedName("quirky_"))
        XCTAssertFalse(WorkloadNaming.isGeneratedName("quirky_hopper_x"))
    }

    func testIdentityOfContainers() {
        let id = String(repeating: "cd", count: 32)
        let uid = "1a2b3c4d-5e6f-4a1b-8c9d-0e1f2a3b4c5d"
        // containerd's CRI plugin
        var ref = ContainerRef(runtime: nil, id: id, cgroupPath: "/kubepods/besteffort/pod\(uid)/\(id)", podUID: uid, qos: .besteffort)
        let cri = ContainerMetadata(runtime: .containerd, id: id, annotations: [
            "io.kubernetes.cri.container-type": "container",
            "io.kubernetes.cri.sandbox-name": "web-7d9c8b6f5-x2x4z",
            "io.kubernetes.cri.sandbox-namespace": "shop",
            "io.kubernetes.cri.sandbox-uid": uid,
            "io.kubernetes.cri.container-name": "app",
            "io.kubernetes.cri.image-name": "registry.example/web:1.4",
        ], cgroupPath: ref.cgroupPath)
        var identity = Identity.container(ref, metadata: cri, cgroupPath: ref.cgroupPath)
        XCTAssertEqual(identity.workload, "shop/web/app")
        XCTAssertEqual(identity.pod, PodInfo(namespace: "shop", name: "web-7d9c8b6f5-x2x4z", uid: uid, container: "app"))
        XCTAssertEqual(identity.container, ContainerInfo(id: id, runtime: .containerd, name: "app", image: "registry.example/web:1.4"))

        // CRI-O's keys, uid only in the cgroup path, labels from the sandbox
        let crio = ContainerMetadata(runtime: .crio, id: id, name: "db", annotations: [
            "io.kubernetes.pod.name": "db-2", "io.kubernetes.pod.namespace": "data",
            "io.kubernetes.container.name": "db", "io.kubernetes.cri-o.ContainerType": "container",
        ], podLabels: ["statefulset.kubernetes.io/pod-name": "db-2"], cgroupPath: ref.cgroupPath)
        ref.runtime = .crio
        identity = Identity.container(ref, metadata: crio, cgroupPath: nil)
        XCTAssertEqual(identity.workload, "data/db/db")
        XCTAssertEqual(identity.pod?.uid, uid)
        XCTAssertEqual(identity.container?.runtime, .crio)

        // the sandbox (pause) container
        let sandbox = ContainerMetadata(runtime: .containerd, id: id, annotations: [
            "io.kubernetes.cri.container-type": "sandbox", "io.kubernetes.cri.sandbox-name": "web-7d9c8b6f5-x2x4z",
            "io.kubernetes.cri.sandbox-namespace": "shop",
        ], cgroupPath: ref.cgroupPath)
        XCTAssertEqual(Identity.container(ref, metadata: sandbox, cgroupPath: nil).workload, "shop/web/POD")

        // a plain podman container
        let podman = ContainerMetadata(runtime: .podman, id: id, name: "srv", image: "localhost/bb:latest",
                                       cgroupPath: "/libpod_parent/libpod-\(id)")
        identity = Identity.container(ContainerRef(runtime: .podman, id: id, cgroupPath: "/libpod_parent/libpod-\(id)"), metadata: podman,
                                      cgroupPath: "/libpod_parent/libpod-\(id)/container")
        XCTAssertEqual(identity.workload, "srv")
        XCTAssertNil(identity.pod)
        XCTAssertEqual(identity.cgroupPath, "/libpod_parent/libpod-\(id)/container")

        XCTAssertEqual(Identity.host(cgroupPath: "/system.slice/nginx.service").workload, "/system.slice/nginx.service")
    }

    // MARK: - a container's identity only from its runtime's metadata (issue 13, item 8)

    static let realID = String(repeating: "ab", count: 32)
    /// Where podman (systemd manager) put the real container.
    static let realCgroup = "/machine.slice/libpod-\(realID).scope"
    /// Cgroups that anyone allowed to make cgroups can name after it.
    static let lookAlikes = [
        "/system.slice/docker-\(realID).scope",
        "/test/libpod-\(realID).scope",
        "/libpod_parent/libpod-\(realID)",
        "/system.slice/cri-containerd-\(realID).scope",
        "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1a2b3c4d_5e6f_4a1b_8c9d_0e1f2a3b4c5d.slice/cri-containerd-\(realID).scope",
        "/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-\(realID).scope",
        "/docker/\(realID)",
    ]

    func ref(_ path: String, file: StaticString = #filePath, line: UInt = #line) -> ContainerRef? {
        guard case let .container(r) = CgroupPathParser.parse(path) else {
            XCTFail("\(path) should look like a container's", file: file, line: line)
            return nil
        }
        XCTAssertEqual(r.id, Self.realID, file: file, line: line)
        return r
    }

    func assertNamedByPath(_ identity: Identity, _ path: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(identity.workload, path, file: file, line: line)
        XCTAssertEqual(identity.cgroupPath, path, file: file, line: line)
        XCTAssertNil(identity.container, file: file, line: line)
        XCTAssertNil(identity.pod, file: file, line: line)
    }

    func testContainerLookingCgroupWithoutMetadataIsNamedByItsFullPath() {
        for path in Self.lookAlikes + [Self.realCgroup] {
            guard let r = ref(path) else { continue }
            assertNamedByPath(Identity.container(r, metadata: nil, cgroupPath: path), path)
            // a cgroup below it, by its own full path
            assertNamedByPath(Identity.container(r, metadata: nil, cgroupPath: path + "/init.scope"), path + "/init.scope")
        }
    }

    func testMetadataThatNamesAnotherCgroupDoesNotVouchForThisOne() {
        let real = ContainerMetadata(runtime: .podman, id: Self.realID, name: "web", image: "localhost/bb:latest",
                                     annotations: ["io.kubernetes.pod.namespace": "shop", "io.kubernetes.pod.name": "web-0"],
                                     cgroupPath: Self.realCgroup)
        for path in Self.lookAlikes {
            guard let r = ref(path) else { continue }
            assertNamedByPath(Identity.container(r, metadata: real, cgroupPath: path), path)
            XCTAssertFalse(real.names(r), path)
        }
        // the right cgroup but metadata that does not say which cgroup, or is another container's
        guard let r = ref(Self.realCgroup) else { return }
        var unplaced = real
        unplaced.cgroupPath = nil
        assertNamedByPath(Identity.container(r, metadata: unplaced, cgroupPath: Self.realCgroup), Self.realCgroup)
        var other = real
        other.id = String(repeating: "cd", count: 32)
        assertNamedByPath(Identity.container(r, metadata: other, cgroupPath: Self.realCgroup), Self.realCgroup)
    }

    func testMetadataThatNamesThisCgroupGivesTheRuntimesIdentity() throws {
        let plain = ContainerMetadata(runtime: .podman, id: Self.realID, name: "web", image: "localhost/bb:latest", cgroupPath: Self.realCgroup)
        let r = try XCTUnwrap(ref(Self.realCgroup))
        XCTAssertTrue(plain.names(r))
        var identity = Identity.container(r, metadata: plain, cgroupPath: Self.realCgroup)
        XCTAssertEqual(identity.workload, "web")
        XCTAssertEqual(identity.container, ContainerInfo(id: Self.realID, runtime: .podman, name: "web", image: "localhost/bb:latest"))
        // anything below the container's own cgroup is the container
        identity = Identity.container(r, metadata: plain, cgroupPath: Self.realCgroup + "/container")
        XCTAssertEqual(identity.workload, "web")
        XCTAssertEqual(identity.cgroupPath, Self.realCgroup + "/container")

        // a pod, with the systemd cgroup driver: the spec's "slice:prefix:id" form
        let uid = "1a2b3c4d-5e6f-4a1b-8c9d-0e1f2a3b4c5d"
        let podPath = Self.lookAlikes[4]
        let pod = ContainerMetadata(runtime: .containerd, id: Self.realID, annotations: [
            "io.kubernetes.cri.sandbox-name": "web-7d9c8b6f5-x2x4z", "io.kubernetes.cri.sandbox-namespace": "shop",
            "io.kubernetes.cri.container-name": "app",
        ], cgroupPath: ContainerMetadata.cgroupPath(ociCgroupsPath: "kubepods-besteffort-pod\(uid.replacingOccurrences(of: "-", with: "_")).slice:cri-containerd:\(Self.realID)"))
        identity = Identity.container(try XCTUnwrap(ref(podPath)), metadata: pod, cgroupPath: podPath)
        XCTAssertEqual(identity.workload, "shop/web/app")
        XCTAssertEqual(identity.pod?.uid, uid)
        XCTAssertEqual(identity.container?.id, Self.realID)
    }

    func testOCICgroupsPath() {
        let id = Self.realID
        let table: [(String, String?)] = [
            ("/libpod_parent/libpod-\(id)", "/libpod_parent/libpod-\(id)"),
            ("/kubepods/besteffort/pod1/\(id)", "/kubepods/besteffort/pod1/\(id)"),
            ("//default//c1/", "/default/c1"),
            ("machine.slice:libpod:\(id)", "/machine.slice/libpod-\(id).scope"),
            ("system.slice:docker:\(id)", "/system.slice/docker-\(id).scope"),
            (":docker:\(id)", "/system.slice/docker-\(id).scope"),  // runc's default slice
            ("kubepods-burstable-podx.slice:crio:\(id)", "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-podx.slice/crio-\(id).scope"),
            ("kubelet-kubepods-podx.slice:cri-containerd:\(id)", "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-podx.slice/cri-containerd-\(id).scope"),
            ("-.slice:p:n", "/p-n.scope"),
            ("x.slice::n", "/x.slice/n.scope"),
            ("libpod_parent/libpod-\(id)", nil),  // relative to the runtime's own cgroup
            ("/a/../b", nil),
            ("", nil),
            ("machine.slice:libpod", nil),
            ("machine:libpod:\(id)", nil),
            ("a--b.slice:p:n", nil),
            ("machine.slice:libpod:", nil),
            ("machine.slice:p:sub.slice", nil),
            ("machine.slice:p/q:n", nil),
        ]
        for (value, path) in table {
            XCTAssertEqual(ContainerMetadata.cgroupPath(ociCgroupsPath: value), path, value)
        }
    }
}
