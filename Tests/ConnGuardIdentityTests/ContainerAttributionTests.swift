import ConnGuardCore
import ConnGuardIdentity
import Foundation
import Glibc
import XCTest

/// Real containers (podman with runc, containerd's ctr) make and take real
/// connections on 127.0.0.1 while the real tracer runs; every connect and
/// accept must name the right container, runtime and workload. Root only
/// (see Privileged); everything made here is removed, even on failure.
final class ContainerAttributionTests: XCTestCase {
    static let image = "localhost/bb:latest"
    let tag = "cgid\(getpid())x\(UInt16.random(in: 0...0xffff))"

    /// Starts a loopback server in a podman container (host network):
    /// answers every connection with "hi".
    func podmanServer(_ name: String, port: UInt16, extra: [String] = []) throws -> String {
        let r = Shell.run(["podman", "run", "-d", "--name", name, "--network", "host"] + extra
            + [Self.image, "sh", "-c", "while :; do echo hi | nc -l -p \(port); done"])
        guard r.status == 0 else { throw Failure("podman run \(name): \(r.stderr)") }
        XCTAssertTrue(Ports.waitListening(port), "server \(name) never listened on \(port)")
        return r.trimmed
    }

    /// A client container whose first action is the connect.
    func podmanClient(_ name: String, port: UInt16, extra: [String] = []) throws -> String {
        let r = Shell.run(["podman", "run", "-d", "--name", name, "--network", "host"] + extra
            + [Self.image, "sh", "-c", "nc -w 3 127.0.0.1 \(port)"])
        guard r.status == 0 else { throw Failure("podman run \(name): \(r.stderr)") }
        Shell.run(["podman", "wait", name], timeout: 20)
        return r.trimmed
    }

    func removePodman(_ names: String...) {
        for n in names { Shell.run(["podman", "rm", "-f", "-t", "0", n]) }
    }

    /// The connect to `port` and the accept that answered it.
    func pair(_ session: TraceSession, port: UInt16, file: StaticString = #filePath, line: UInt = #line) -> (TraceSession.Seen, TraceSession.Seen)? {
        guard let connect = session.waitFor({ $0.event.direction == .connect && $0.event.destinationPort == port && $0.event.outcome == .established }) else {
            XCTFail("no connect event to port \(port) (events: \(session.all.count), tracer error: \(String(describing: session.error)))", file: file, line: line)
            return nil
        }
        guard let accept = session.waitFor({ $0.event.direction == .accept && $0.event.destinationPort == port && $0.event.sourcePort == connect.event.sourcePort }) else {
            XCTFail("no accept event for the connect from port \(connect.event.sourcePort)", file: file, line: line)
            return nil
        }
        return (connect, accept)
    }

    // MARK: - podman

    func testPodmanClientAndServerAreNamed() throws {
        try Privileged.requireContainers()
        let port = Ports.free()
        let session = try TraceSession(ports: [port])
        defer { session.close() }
        let server = "\(tag)-srv", client = "\(tag)-cli"
        defer { removePodman(client, server) }

        let serverID = try podmanServer(server, port: port)
        let clientID = try podmanClient(client, port: port)
        guard let (connect, accept) = pair(session, port: port) else { return }

        XCTAssertEqual(connect.identity.container?.id, clientID)
        XCTAssertEqual(connect.identity.container?.runtime, .podman)
        XCTAssertEqual(connect.identity.container?.name, client)
        XCTAssertEqual(connect.identity.container?.image, Self.image)
        XCTAssertEqual(connect.identity.workload, client)
        XCTAssertNil(connect.identity.pod)
        XCTAssertEqual(connect.event.comm, "nc")

        XCTAssertEqual(accept.identity.container?.id, serverID)
        XCTAssertEqual(accept.identity.container?.runtime, .podman)
        XCTAssertEqual(accept.identity.container?.name, server)
        XCTAssertEqual(accept.identity.workload, server)
        XCTAssertEqual(session.resolver.statistics.unverified, 0)
    }

    /// The client's very first action is the connect, a few milliseconds
    /// after its cgroup appears: the mkdir record, read before the connect,
    /// has made the cgroup known, so the connect is attributed.
    func testContainerThatConnectsAtOnceIsAttributed() throws {
        try Privileged.requireContainers()
        let port = Ports.free()
        let session = try TraceSession(ports: [port])
        defer { session.close() }
        let server = "\(tag)-srv2", client = "\(tag)-quick"
        defer { removePodman(client, server) }

        _ = try podmanServer(server, port: port)
        let clientID = try podmanClient(client, port: port)
        guard let (connect, _) = pair(session, port: port) else { return }
        XCTAssertEqual(connect.identity.container?.id, clientID)
        XCTAssertEqual(connect.identity.workload, client)

        // How soon after the container's cgroup appeared did it connect?
        let cgroup = try XCTUnwrap(session.cgroupCreated(pathSuffix: "libpod-\(clientID)"), "no cgroup_mkdir record for the client")
        XCTAssertEqual(cgroup.cgroupID, connect.event.cgroupID)
        let startedAt = Shell.run(["podman", "inspect", "-f", "{{.State.StartedAt.UnixNano}}", client]).trimmed
        let gapFromStart = Int64(startedAt).map { Double(connect.event.timeNanoseconds - $0) / 1e6 }
        let gapFromCgroup = Double(connect.event.timeNanoseconds - cgroup.timeNanoseconds) / 1e6
        print("quick client: connect \(String(format: "%.1f", gapFromCgroup)) ms after its cgroup was made, "
              + "\(gapFromStart.map { String(format: "%.1f", $0) } ?? "?") ms after podman's StartedAt")
        XCTAssertLessThan(gapFromStart ?? 0, 50, "the client should connect within 50 ms of starting")
    }

    /// A container under a kubelet-like cgroup parent, with the annotations a
    /// CRI runtime writes: the pod, its namespace and uid, and a workload
    /// named after the Deployment.
    func testKubernetesLikeContainersAreNamedByPodAndOwner() throws {
        try Privileged.requireContainers()
        let port = Ports.free()
        let session = try TraceSession(ports: [port])
        defer { session.close() }
        let ns = "connguard-test"
        let serverUID = UUID().uuidString.lowercased(), clientUID = UUID().uuidString.lowercased()
        let server = "\(tag)-k8s-web", client = "\(tag)-k8s-api"
        // podman makes the parent folders in every hierarchy; remove what was
        // not there before (rmdir leaves them if someone else uses them now).
        let mount = try XCTUnwrap(CgroupMount.find())
        let hadKubepods = access(mount + "/kubepods", F_OK) == 0
        let hadBestEffort = access(mount + "/kubepods/besteffort", F_OK) == 0
        defer {
            removePodman(client, server)
            CgroupMounts.remove("/kubepods/besteffort/pod\(serverUID)")
            CgroupMounts.remove("/kubepods/besteffort/pod\(clientUID)")
            for m in CgroupMounts.all() {
                if !hadBestEffort { rmdir(m + "/kubepods/besteffort") }
                if !hadKubepods { rmdir(m + "/kubepods") }
            }
            XCTAssertNotEqual(access(mount + "/kubepods/besteffort/pod\(serverUID)", F_OK), 0, "pod cgroup left behind")
        }
        func kube(pod: String, uid: String, container: String) -> [String] {
            ["--cgroup-parent", "/kubepods/besteffort/pod\(uid)",
             "--annotation", "io.kubernetes.pod.namespace=\(ns)",
             "--annotation", "io.kubernetes.pod.name=\(pod)",
             "--annotation", "io.kubernetes.pod.uid=\(uid)",
             "--annotation", "io.kubernetes.container.name=\(container)",
             "--annotation", "io.kubernetes.cri.sandbox-name=\(pod)",
             "--annotation", "io.kubernetes.cri.sandbox-namespace=\(ns)",
             "--annotation", "io.kubernetes.cri.container-name=\(container)"]
        }
        let serverID = try podmanServer(server, port: port, extra: kube(pod: "web-7d9c8b6f5-x2x4z", uid: serverUID, container: "app"))
        let clientID = try podmanClient(client, port: port, extra: kube(pod: "api-0", uid: clientUID, container: "client"))
        guard let (connect, accept) = pair(session, port: port) else { return }

        XCTAssertEqual(accept.identity.workload, "\(ns)/web/app")
        XCTAssertEqual(accept.identity.container?.id, serverID)
        XCTAssertEqual(accept.identity.container?.runtime, .podman)
        XCTAssertEqual(accept.identity.pod, PodInfo(namespace: ns, name: "web-7d9c8b6f5-x2x4z", uid: serverUID, container: "app"))
        XCTAssertEqual(accept.identity.cgroupPath, "/kubepods/besteffort/pod\(serverUID)/libpod-\(serverID)")

        XCTAssertEqual(connect.identity.workload, "\(ns)/api/client")  // a StatefulSet's pod
        XCTAssertEqual(connect.identity.container?.id, clientID)
        XCTAssertEqual(connect.identity.pod?.uid, clientUID)
        XCTAssertEqual(connect.identity.pod?.name, "api-0")

        // The filters `connguard trace` offers select them.
        XCTAssertTrue(IdentityFilter(namespace: ns).matches(accept.identity))
        XCTAssertTrue(IdentityFilter(workload: "\(ns)/web/app").matches(accept.identity))
        XCTAssertTrue(IdentityFilter(container: String(serverID.prefix(8))).matches(accept.identity))
        XCTAssertFalse(IdentityFilter(workload: "\(ns)/web/app").matches(connect.identity))
    }

    // MARK: - containerd

    func testContainerdClientAndServerAreNamed() throws {
        try Privileged.requireContainers()
        let port = Ports.free()
        let session = try TraceSession(ports: [port])
        defer { session.close() }
        let server = "\(tag)-ctr-srv", client = "\(tag)-ctr-cli"
        func remove(_ name: String) {
            Shell.run(["ctr", "task", "kill", "-s", "SIGKILL", name])
            for _ in 0..<50 {
                if Shell.run(["ctr", "task", "rm", "-f", name]).status == 0 { break }
                if !Shell.run(["ctr", "task", "ls", "-q"]).stdout.split(separator: "\n").contains(Substring(name)) { break }
                usleep(100_000)
            }
            Shell.run(["ctr", "containers", "rm", name])
        }
        defer { remove(client); remove(server) }

        var r = Shell.run(["ctr", "run", "-d", "--net-host", Self.image, server, "sh", "-c", "while :; do echo hi | nc -l -p \(port); done"])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(Ports.waitListening(port), "containerd server never listened")
        r = Shell.run(["ctr", "run", "--rm", "--net-host", Self.image, client, "sh", "-c", "nc -w 3 127.0.0.1 \(port)"], timeout: 30)
        XCTAssertEqual(r.status, 0, r.stderr)
        guard let (connect, accept) = pair(session, port: port) else { return }

        XCTAssertEqual(connect.identity.container?.id, client)
        XCTAssertEqual(connect.identity.container?.runtime, .containerd)
        XCTAssertEqual(connect.identity.container?.name, client)
        XCTAssertEqual(connect.identity.workload, client)
        XCTAssertEqual(connect.identity.cgroupPath, "/default/\(client)")

        XCTAssertEqual(accept.identity.container?.id, server)
        XCTAssertEqual(accept.identity.container?.runtime, .containerd)
        XCTAssertEqual(accept.identity.workload, server)
    }

    // MARK: - the cgroup path cache on the real hierarchy

    /// A cgroup made without the tracer seeing it (a lost record) is found by
    /// asking the kernel for its id, not by walking the tree.
    func testMissIsAnsweredByTheKernelWithoutAWalk() throws {
        try Privileged.requireRoot()
        let mount = try XCTUnwrap(CgroupMount.find())
        let cache = CgroupPathCache(mount: mount)
        cache.seed()
        let relative = "/\(tag)-cache"
        XCTAssertEqual(Glibc.mkdir(mount + relative, 0o755), 0, String(cString: strerror(errno)))
        defer { rmdir(mount + relative) }
        var st = stat()
        XCTAssertEqual(stat(mount + relative, &st), 0)
        XCTAssertEqual(cache.path(for: UInt64(st.st_ino)), relative)
        XCTAssertEqual(cache.statistics.handleLookups, 1)
        XCTAssertEqual(cache.statistics.walks, 0)
        XCTAssertNil(cache.path(for: UInt64.max - 1))

        // A path longer than a cgroup_mkdir record holds (255 bytes): the
        // record's cut-short path is not trusted, the kernel's is.
        let long = relative + "/" + String(repeating: "a", count: 200) + "/" + String(repeating: "b", count: 100)
        XCTAssertEqual(Glibc.mkdir(mount + relative + "/" + String(repeating: "a", count: 200), 0o755), 0)
        XCTAssertEqual(Glibc.mkdir(mount + long, 0o755), 0)
        defer {
            rmdir(mount + long)
            rmdir(mount + relative + "/" + String(repeating: "a", count: 200))
        }
        XCTAssertEqual(stat(mount + long, &st), 0)
        cache.apply(CgroupEvent(timeNanoseconds: 0, created: true, hierarchyID: 0, cgroupID: UInt64(st.st_ino), path: String(long.prefix(255))))
        XCTAssertEqual(cache.cached(UInt64(st.st_ino))?.path, long)
    }
}

struct Failure: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}
