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
        ])
        var identity = Identity.container(ref, metadata: cri, cgroupPath: ref.cgroupPath)
        XCTAssertEqual(identity.workload, "shop/web/app")
        XCTAssertEqual(identity.pod, PodInfo(namespace: "shop", name: "web-7d9c8b6f5-x2x4z", uid: uid, container: "app"))
        XCTAssertEqual(identity.container, ContainerInfo(id: id, runtime: .containerd, name: "app", image: "registry.example/web:1.4"))

        // CRI-O's keys, uid only in the cgroup path, labels from the sandbox
        let crio = ContainerMetadata(runtime: .crio, id: id, name: "db", annotations: [
            "io.kubernetes.pod.name": "db-2", "io.kubernetes.pod.namespace": "data",
            "io.kubernetes.container.name": "db", "io.kubernetes.cri-o.ContainerType": "container",
        ], podLabels: ["statefulset.kubernetes.io/pod-name": "db-2"])
        ref.runtime = .crio
        identity = Identity.container(ref, metadata: crio, cgroupPath: nil)
        XCTAssertEqual(identity.workload, "data/db/db")
        XCTAssertEqual(identity.pod?.uid, uid)
        XCTAssertEqual(identity.container?.runtime, .crio)

        // the sandbox (pause) container
        let sandbox = ContainerMetadata(runtime: .containerd, id: id, annotations: [
            "io.kubernetes.cri.container-type": "sandbox", "io.kubernetes.cri.sandbox-name": "web-7d9c8b6f5-x2x4z",
            "io.kubernetes.cri.sandbox-namespace": "shop",
        ])
        XCTAssertEqual(Identity.container(ref, metadata: sandbox, cgroupPath: nil).workload, "shop/web/POD")

        // a plain podman container
        let podman = ContainerMetadata(runtime: .podman, id: id, name: "srv", image: "localhost/bb:latest")
        identity = Identity.container(ContainerRef(runtime: .podman, id: id, cgroupPath: "/libpod_parent/libpod-\(id)"), metadata: podman, cgroupPath: "/x")
        XCTAssertEqual(identity.workload, "srv")
        XCTAssertNil(identity.pod)
        XCTAssertEqual(identity.cgroupPath, "/x")

        // no metadata (yet): still the container, by id
        identity = Identity.container(ContainerRef(runtime: .docker, id: id, cgroupPath: "/docker/\(id)"), metadata: nil, cgroupPath: nil)
        XCTAssertEqual(identity.workload, "container:cdcdcdcdcdcd")
        XCTAssertEqual(identity.container?.runtime, .docker)
        XCTAssertFalse(identity.isUnknown)

        XCTAssertEqual(Identity.host(cgroupPath: "/system.slice/nginx.service").workload, "/system.slice/nginx.service")
    }
}
