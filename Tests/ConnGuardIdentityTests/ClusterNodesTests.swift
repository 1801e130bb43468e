import ConnGuardCore
import ConnGuardTestSupport
import Foundation
import Glibc
import XCTest

/// Issue 15 end to end: a real 3-member etcd on loopback and three "nodes"
/// on this machine, each a cgroup subtree of this test's with an agent of its
/// own (--cgroup-root, pin root, socket, database, --node-name). Pods are
/// podman containers with the Kubernetes annotations, under their node's
/// subtree, each in a network namespace of its own on a private bridge
/// (198.18.0.0/15, nothing routed out). Enforcement is attached to each
/// node's subtree only; everything is removed at the end, also on failure.
final class ClusterNodesTests: XCTestCase {
    static let image = "localhost/bb:latest"
    let tag = "cgcl\(getpid())x\(UInt16.random(in: 0...0xffff))"
    var scratch: String { NSTemporaryDirectory() + tag }
    var binary: String {
        let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? ""
        var dir = (exe as NSString).deletingLastPathComponent
        if dir.hasSuffix(".xctest") { dir = (dir as NSString).deletingLastPathComponent }
        return dir + "/connguard"
    }
    let nodes = ["a", "b", "c"]
    var agents: [String: pid_t] = [:]
    var containers: [String] = []
    let networks = PodNetworks()
    var etcd: EtcdCluster!
    let k8sNamespace = "shop"
    let leaseTTL = 3

    func parent(_ node: String) -> String { "/\(tag)\(node)" }
    func socket(_ node: String) -> String { scratch + "/\(node).sock" }
    func pinRoot(_ node: String) -> String { "/sys/fs/bpf/\(tag)\(node)" }

    override func setUpWithError() throws {
        try Privileged.requireContainers()
        try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
        guard let mount = CgroupMount.find() else { throw Failure("no cgroup2") }
        for n in nodes { XCTAssertEqual(mkdir(mount + parent(n), 0o755), 0) }
        etcd = try EtcdCluster.start(for: self)
    }

    override func tearDown() {
        for pid in agents.values { kill(pid, SIGKILL) }
        for pid in agents.values { var s: Int32 = 0; waitpid(pid, &s, 0) }
        for c in containers { Shell.run(["podman", "rm", "-f", "-t", "0", c]) }
        networks.removeAll()
        for n in nodes {
            Shell.run([binary, "kill-switch", "--pin-root", pinRoot(n), "--pin-root-only"])
            XCTAssertFalse(FileManager.default.fileExists(atPath: pinRoot(n)), "pins left behind")
            CgroupMounts.remove(parent(n))
        }
        try? FileManager.default.removeItem(atPath: scratch)
    }

    // MARK: helpers

    func startAgent(_ node: String) throws {
        agents[node] = try AgentProcess.start(binary: binary, arguments: [
            "--db", scratch + "/\(node).db", "--socket", socket(node), "--cgroup-root", parent(node), "--pin-root", pinRoot(node),
            "--cluster-endpoints", etcd.endpoints.joined(separator: ","), "--node-name", "node-\(node)",
            "--cluster-lease-ttl", "\(leaseTTL)s", "--log-level", "info",
        ], socket: socket(node), log: scratch + "/\(node).log")
    }

    func log(_ node: String) -> String { (try? readFile(scratch + "/\(node).log")) ?? "" }

    @discardableResult
    func cg(_ node: String, _ args: [String]) -> Shell.Result {
        Shell.run([binary] + args + ["--socket", socket(node)], timeout: 30)
    }

    func status(_ node: String) -> [String: Any] {
        let r = cg(node, ["status", "-o", "json"])
        return (try? JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any]) ?? [:]
    }

    func cluster(_ node: String) -> [String: Any] { status(node)["cluster"] as? [String: Any] ?? [:] }

    func rules(_ node: String, _ workload: String) -> [[String: Any]] {
        let r = cg(node, ["baseline", "show", workload, "-o", "json"])
        guard r.status == 0, let o = try? JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any] else { return [] }
        return o["rules"] as? [[String: Any]] ?? []
    }

    func mode(_ node: String, _ workload: String) -> String? {
        let r = cg(node, ["baseline", "show", workload, "-o", "json"])
        guard r.status == 0, let o = try? JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any] else { return nil }
        return o["mode"] as? String
    }

    func denials(_ node: String, _ args: [String] = []) -> [[String: Any]] {
        let r = cg(node, ["connections", "-o", "json", "--verdict", "denied"] + args)
        return r.stdout.split(separator: "\n").compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
    }

    @discardableResult
    func waitFor(_ what: String, timeout: Double = 15, _ condition: () -> Bool) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if condition() { return true }
            usleep(100_000)
        }
        XCTFail("timed out waiting for \(what)")
        return false
    }

    func kernelPeerAddresses(_ node: String) -> Set<String> { Set(pinnedPeerAddresses(pinRoot: pinRoot(node))) }

    func removePod(_ name: String, network ns: String) {
        Shell.run(["podman", "rm", "-f", "-t", "0", name])
        containers.removeAll { $0 == name }
        networks.remove(ns)
    }

    /// A pod (one container) of `pod` on `node`, in network namespace `ns`,
    /// named as Kubernetes names it: workload = namespace/owner/container.
    func pod(_ name: String, node: String, pod: String, container: String, in ns: String, uid: String = UUID().uuidString.lowercased(),
             _ command: String) throws {
        containers.append(name)
        let r = Shell.run(["podman", "run", "-d", "--name", name, "--network", "ns:/run/netns/\(ns)",
                           "--cgroup-parent", parent(node) + "/kubepods/besteffort/pod\(uid)",
                           "--annotation", "io.kubernetes.pod.namespace=\(k8sNamespace)", "--annotation", "io.kubernetes.pod.name=\(pod)",
                           "--annotation", "io.kubernetes.pod.uid=\(uid)", "--annotation", "io.kubernetes.container.name=\(container)",
                           "--annotation", "io.kubernetes.cri.sandbox-name=\(pod)", "--annotation", "io.kubernetes.cri.sandbox-namespace=\(k8sNamespace)",
                           "--annotation", "io.kubernetes.cri.container-name=\(container)",
                           Self.image, "sh", "-c", command])
        guard r.status == 0 else { throw Failure("podman run \(name): \(r.stderr)") }
    }

    /// `nc` from a running container; true when it connected.
    func connect(_ container: String, _ address: String, _ port: Int) -> Shell.Result {
        Shell.run(["podman", "exec", container, "nc", "-w", "2", address, String(port)], timeout: 20)
    }

    func listening(_ ns: String, _ port: Int) -> Bool {
        let hex = String(format: ":%04X ", port)
        return Shell.run(["ip", "netns", "exec", ns, "cat", "/proc/net/tcp", "/proc/net/tcp6"]).stdout
            .split(separator: "\n").contains { $0.contains(hex) && $0.contains(" 0A ") }
    }

    // MARK: the test

    /// One cluster, one policy: workloads named across nodes, one mode and
    /// one merged baseline for all replicas, a server rescheduled to another
    /// node, etcd losing members and quorum, a node's agent killed, and
    /// hostile values in etcd.
    func testOneClusterOnePolicy() throws {
        for n in nodes { try startAgent(n) }
        for n in nodes { waitFor("node \(n) in sync") { cluster(n)["state"] as? String == "connected" } }
        let client = "\(k8sNamespace)/api/client", server = "\(k8sNamespace)/web/app"
        let br = try networks.bridge()

        // A server pod on node B (ports 8080 and 9090), a client replica on A.
        let serverNet = try networks.pod("web1", "198.18.0.21", bridge: br)
        try pod("\(tag)-web1", node: "b", pod: "web-7d9c8b6f5-x2x4z", container: "app", in: serverNet,
                "(while :; do echo hi | nc -l -p 9090; done) & while :; do echo hi | nc -l -p 8080; done")
        let client0Net = try networks.pod("api0", "198.18.0.11", bridge: br)
        try pod("\(tag)-api0", node: "a", pod: "api-0", container: "client", in: client0Net, "sleep 100000")
        waitFor("server listening") { listening(serverNet, 8080) && listening(serverNet, 9090) }
        // Each node learns the other's pod address from the cluster.
        waitFor("A knows B's pod address") { kernelPeerAddresses("a").contains("198.18.0.21") }
        XCTAssertEqual(connect("\(tag)-api0", "198.18.0.21", 8080).stdout, "hi\n")

        // 1. A's baseline names the server as a workload, not an IP.
        waitFor("A's rule on the server workload") {
            rules("a", client).contains { $0["peer"] as? String == "workload:\(server)" && $0["port"] as? Int == 8080 }
        }
        XCTAssertFalse(rules("a", client).contains { ($0["peer"] as? String ?? "").contains("198.18.") }, "\(rules("a", client))")

        // A pod of two containers (a database and its sidecar) on C: its
        // address names the pod's owner, as every replica would.
        let dbNet = try networks.pod("db0", "198.18.0.51", bridge: br)
        let dbUID = UUID().uuidString.lowercased()
        try pod("\(tag)-db0", node: "c", pod: "db-0", container: "pg", in: dbNet, uid: dbUID, "while :; do echo hi | nc -l -p 5432; done")
        try pod("\(tag)-db0-proxy", node: "c", pod: "db-0", container: "proxy", in: dbNet, uid: dbUID, "sleep 100000")
        waitFor("db listening") { listening(dbNet, 5432) }
        waitFor("A knows the db pod by its owner") { kernelPeerAddresses("a").contains("198.18.0.51") }
        XCTAssertEqual(connect("\(tag)-api0", "198.18.0.51", 5432).stdout, "hi\n")
        waitFor("A's rule on the db pod's owner") {
            rules("a", client).contains { $0["peer"] as? String == "workload:\(k8sNamespace)/db" && $0["port"] as? Int == 5432 }
        }

        // A second replica on B learns a rule of its own: merged into the one
        // cluster baseline, shown on A with the node that saw it.
        let client1Net = try networks.pod("api1", "198.18.0.12", bridge: br)
        try pod("\(tag)-api1", node: "b", pod: "api-1", container: "client", in: client1Net, "sleep 100000")
        waitFor("B's replica address known to B") { cluster("b")["state"] as? String == "connected" && status("b")["workloads"] as? Int ?? 0 >= 2 }
        usleep(500_000)
        XCTAssertEqual(connect("\(tag)-api1", "198.18.0.21", 9090).stdout, "hi\n")
        waitFor("B's rule in A's baseline, seen by node-b", timeout: 10) {
            rules("a", client).contains { $0["port"] as? Int == 9090 && ($0["nodes"] as? [String]) == ["node-b"] && $0["peer"] as? String == "workload:\(server)" }
        }
        XCTAssertTrue(rules("a", client).contains { $0["port"] as? Int == 8080 && ($0["nodes"] as? [String]) == ["node-a"] })
        let table = cg("a", ["baseline", "show", client]).stdout
        XCTAssertTrue(table.contains("NODES") && table.contains("node-b"), table)

        // 2. `mode client enforce` on node C: in force on A within 1 s.
        let start = Date()
        let set = cg("c", ["mode", client, "enforce"])
        XCTAssertEqual(set.status, 0, set.stderr)
        waitFor("enforce on A", timeout: 5) { mode("a", client) == "enforce" }
        let took = Date().timeIntervalSince(start)
        XCTAssertLessThan(took, 1.0, "mode reached A after \(took) s")
        XCTAssertEqual(mode("b", client), "enforce")
        // A's audit log says who, from which node, and when.
        let audit = (status("a")["audit"] as? [String: Any])?["recent"] as? String ?? ""
        XCTAssertTrue(audit.contains("on node-c mode \(client) learn -> enforce (cluster: set on node node-c at 20"), audit)

        // Enforced: the learnt peers work, a new port is refused in the kernel.
        XCTAssertEqual(connect("\(tag)-api0", "198.18.0.21", 8080).stdout, "hi\n")
        XCTAssertEqual(connect("\(tag)-api0", "198.18.0.21", 9090).stdout, "hi\n", "the rule learnt on B is enforced on A")
        let refused = connect("\(tag)-api0", "198.18.0.21", 7070)
        XCTAssertNotEqual(refused.status, 0)
        XCTAssertTrue(refused.stderr.contains("not permitted"), refused.stderr)

        // 4. A new replica on B, enforced from its first connect with the merged baseline.
        let client2Net = try networks.pod("api2", "198.18.0.13", bridge: br)
        try pod("\(tag)-api2", node: "b", pod: "api-2", container: "client", in: client2Net,
                "nc -w 2 198.18.0.21 8080; echo first=$?; nc -w 2 198.18.0.21 7070; echo second=$?; sleep 100000")
        var out = ""
        waitFor("the new replica's first connects") {
            out = Shell.run(["podman", "logs", "\(tag)-api2"]).stdout + Shell.run(["podman", "logs", "\(tag)-api2"]).stderr
            return out.contains("second=")
        }
        XCTAssertTrue(out.contains("hi") && out.contains("first=0"), out)
        XCTAssertTrue(out.contains("second=1") && out.contains("not permitted"), out)

        // 3. The server moves to node C with a new address: no denial for the
        // enforced client; whoever takes the old address is refused.
        removePod("\(tag)-web1", network: serverNet)
        let movedNet = try networks.pod("web2", "198.18.0.31", bridge: br)
        try pod("\(tag)-web2", node: "c", pod: "web-7d9c8b6f5-b7k9p", container: "app", in: movedNet,
                "(while :; do echo hi | nc -l -p 9090; done) & while :; do echo hi | nc -l -p 8080; done")
        waitFor("moved server listening") { listening(movedNet, 8080) }
        let moved = Date()
        waitFor("A's kernel knows the server's new address", timeout: 5) {
            kernelPeerAddresses("a").contains("198.18.0.31") && !kernelPeerAddresses("a").contains("198.18.0.21")
        }
        print("server's new address in A's kernel \(Int(Date().timeIntervalSince(moved) * 1000)) ms after it listened")
        let deniedBefore = denials("a").count
        XCTAssertEqual(connect("\(tag)-api0", "198.18.0.31", 8080).stdout, "hi\n")
        XCTAssertEqual(connect("\(tag)-api1", "198.18.0.31", 8080).stdout, "hi\n")
        let intruderNet = try networks.pod("evil", "198.18.0.21", bridge: br)
        try pod("\(tag)-evil", node: "b", pod: "evil-0", container: "nc", in: intruderNet, "while :; do echo hi | nc -l -p 8080; done")
        waitFor("intruder listening") { listening(intruderNet, 8080) }
        waitFor("the old address now names the intruder on A") { kernelPeerAddresses("a").contains("198.18.0.21") }
        let intruded = connect("\(tag)-api0", "198.18.0.21", 8080)
        XCTAssertNotEqual(intruded.status, 0, "the enforced client reached the intruder at the server's old address")
        XCTAssertTrue(intruded.stderr.contains("not permitted"), intruded.stderr)
        waitFor("a denial naming the intruder") {
            denials("a", ["--port", "8080"]).contains { $0["peer_workload"] as? String == "\(k8sNamespace)/evil/nc" }
        }
        XCTAssertEqual(denials("a", ["--port", "8080"]).filter { $0["peer"] as? String == "198.18.0.31" }.count, 0, "the moved server was refused")
        XCTAssertGreaterThan(denials("a").count, deniedBefore)

        // 5. One etcd member killed: nothing changes.
        etcd.kill(0)
        sleep(3)
        for n in nodes { XCTAssertEqual(cluster(n)["state"] as? String, "connected", "node \(n) with one member down: \(cluster(n))") }
        XCTAssertEqual(connect("\(tag)-api0", "198.18.0.31", 8080).stdout, "hi\n")

        // Two killed: agents keep enforcing and say degraded; a learning
        // workload keeps learning locally.
        etcd.kill(1)
        for n in nodes { waitFor("node \(n) degraded", timeout: 15) { cluster(n)["state"] as? String == "degraded" } }
        let human = cg("a", ["status"]).stdout
        XCTAssertTrue(human.contains("cluster:    degraded since"), human)
        XCTAssertEqual(connect("\(tag)-api0", "198.18.0.31", 8080).stdout, "hi\n", "fail-static: still served")
        XCTAssertNotEqual(connect("\(tag)-api0", "198.18.0.31", 7070).status, 0, "fail-static: still refused")
        // The server (in learn mode) learns a new client on C meanwhile.
        let probeNet = try networks.pod("probe", "198.18.0.41", bridge: br)
        try pod("\(tag)-probe", node: "c", pod: "probe-0", container: "probe", in: probeNet, "sleep 100000")
        usleep(500_000)
        XCTAssertEqual(connect("\(tag)-probe", "198.18.0.31", 8080).stdout, "hi\n")
        waitFor("C learnt it locally") { rules("c", server).contains { $0["peer"] as? String == "workload:\(k8sNamespace)/probe/probe" } }

        // An agent that starts while etcd has no quorum starts from its local
        // copy: modes, baselines, and the other nodes' addresses.
        let stopping = Date()
        kill(agents["b"]!, SIGTERM)
        var exit: Int32 = 0
        waitpid(agents["b"]!, &exit, 0)
        XCTAssertLessThan(Date().timeIntervalSince(stopping), 10, "a degraded agent's shutdown waited out the store")
        try startAgent("b")
        XCTAssertNotEqual(cluster("b")["state"] as? String, "connected")
        XCTAssertEqual(mode("b", client), "enforce")
        XCTAssertTrue(kernelPeerAddresses("b").contains("198.18.0.31"), "\(kernelPeerAddresses("b"))")
        XCTAssertEqual(connect("\(tag)-api2", "198.18.0.31", 8080).stdout, "hi\n", "restarted without etcd: the moved server is still a workload")
        XCTAssertNotEqual(connect("\(tag)-api2", "198.18.0.31", 7070).status, 0)

        // Restored: what was learnt meanwhile is in the cluster baseline.
        try etcd.restart(0)
        try etcd.restart(1)
        try etcd.waitHealthy(timeout: 20)
        for n in nodes { waitFor("node \(n) connected again", timeout: 20) { cluster(n)["state"] as? String == "connected" } }
        waitFor("the rule learnt during the outage, in the cluster", timeout: 15) {
            let (_, v) = etcd.etcdctl(["get", "/connguard/v1/baselines/\(server)", "--print-value-only"])
            return v.contains("probe") && v.contains("node-c")
        }
        waitFor("and on A") { rules("a", server).contains { $0["peer"] as? String == "workload:\(k8sNamespace)/probe/probe" } }

        // 7. Hostile values: refused, logged, nothing changed, agents running.
        let before = rules("a", client).count
        let hostile: [(String, String)] = [
            ("/connguard/v1/baselines/\(client)", "not json"),
            ("/connguard/v1/modes/\(client)", #"{"v":2,"workload":"\#(client)","mode":"learn","by":"x","node":"x","at":1}"#),
            ("/connguard/v1/elsewhere/x", #"{"v":1}"#),
            ("/connguard/v1/addresses/node-x/198.18.0.11", #"{"v":1,"workload":"\#(k8sNamespace)/evil/nc"}"#),
        ]
        for (k, v) in hostile { XCTAssertEqual(etcd.etcdctl(["put", k, v]).0, 0) }
        // A baseline of millions of rules: over the value limit.
        let huge = #"{"v":1,"workload":"\#(client)","rules":["# + String(repeating: #"{"dir":"out","peer":"10.0.0.1","port":1,"proto":"tcp","first":1,"last":1,"hits":1,"nodes":["x"]},"#, count: 12_000) + "{}]}"
        let tmp = scratch + "/huge.json"
        FileManager.default.createFile(atPath: tmp, contents: Data(huge.utf8))
        _ = etcd.etcdctl(["put", "/connguard/v1/baselines/\(k8sNamespace)/huge/x"], stdin: Data(huge.utf8))
        waitFor("every hostile value refused and logged on A", timeout: 10) {
            let l = log("a")
            return l.contains("/connguard/v1/baselines/\(client)") && l.contains("/connguard/v1/modes/\(client)")
                && l.contains("/connguard/v1/elsewhere/x") && l.contains("claimed for more than one workload")
                && l.contains("/connguard/v1/baselines/\(k8sNamespace)/huge/x")
        }
        XCTAssertEqual(mode("a", client), "enforce", "a newer-version mode value was applied")
        XCTAssertEqual(rules("a", client).count, before, "a broken baseline value was applied")
        for n in nodes { XCTAssertEqual(kill(agents[n]!, 0), 0, "agent \(n) died") }
        XCTAssertEqual(connect("\(tag)-api0", "198.18.0.31", 8080).stdout, "hi\n")
        XCTAssertGreaterThanOrEqual(cluster("a")["refused_values"] as? Int ?? 0, 3)

        // 6. kill -9 of A's agent: its addresses leave B's kernel after the TTL.
        // (First the forged claim goes, and A's own claim names its workload again.)
        XCTAssertEqual(etcd.etcdctl(["del", "/connguard/v1/addresses/node-x/198.18.0.11"]).0, 0)
        waitFor("A's client address back in B's kernel") { kernelPeerAddresses("b").contains("198.18.0.11") }
        kill(agents["a"]!, SIGKILL)
        var st: Int32 = 0
        waitpid(agents["a"]!, &st, 0)
        agents["a"] = nil
        let killed = Date()
        waitFor("A's addresses gone from B's kernel", timeout: Double(leaseTTL) + 10) {
            !kernelPeerAddresses("b").contains("198.18.0.11") && !kernelPeerAddresses("c").contains("198.18.0.11")
        }
        let gone = Date().timeIntervalSince(killed)
        print("A's addresses left the other kernels \(String(format: "%.1f", gone)) s after kill -9 (TTL \(leaseTTL) s)")
        XCTAssertGreaterThan(gone, 0.5)
    }

    /// Import and prune act on the cluster baseline, from any node; an
    /// automatic promotion is decided once for the cluster (one write in
    /// etcd), and every node follows it.
    func testImportPruneAndPromotionAreTheClusters() throws {
        let two = ["a", "b"]
        for n in two {
            agents[n] = try AgentProcess.start(binary: binary, arguments: [
                "--db", scratch + "/\(n).db", "--socket", socket(n), "--cgroup-root", parent(n), "--pin-root", pinRoot(n),
                "--cluster-endpoints", etcd.endpoints.joined(separator: ","), "--node-name", "node-\(n)",
                "--learning-period", "4s", "--quiet-period", "1s",
            ], socket: socket(n), log: scratch + "/\(n).log")
        }
        for n in two { waitFor("node \(n) in sync") { cluster(n)["state"] as? String == "connected" } }
        let w = "\(k8sNamespace)/batch/job"
        let file = scratch + "/import.yaml"
        try """
        workload: \(w)
        mode: learn
        rules:
          - {direction: out, peer: "workload:\(k8sNamespace)/db/postgres", port: 5432, protocol: tcp, first_seen: 2020-01-01T00:00:00Z, last_seen: 2020-01-02T00:00:00Z, hits: 3}
          - {direction: out, peer: 198.18.7.0/24, port: 443, protocol: tcp}
        """.write(toFile: file, atomically: true, encoding: .utf8)
        let imported = cg("b", ["baseline", "import", file])
        XCTAssertEqual(imported.status, 0, imported.stderr)
        waitFor("the import on A") { rules("a", w).count == 2 }
        XCTAssertEqual(Set(rules("a", w).compactMap { $0["peer"] as? String }), ["workload:\(k8sNamespace)/db/postgres", "198.18.7.0/24"])

        // Promotion: both nodes reach the learning period at about the same
        // time; one decides, once, and both follow.
        waitFor("monitor on both", timeout: 15) { mode("a", w) == "monitor" && mode("b", w) == "monitor" }
        let (_, kv) = etcd.etcdctl(["get", "/connguard/v1/modes/\(w)", "-w", "json"])
        let o = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(kv.utf8)) as? [String: Any])
        let entry = try XCTUnwrap((o["kvs"] as? [[String: Any]])?.first)
        XCTAssertEqual(entry["version"] as? Int, 2, "the import's mode, then one promotion: \(kv)")
        sleep(3)
        XCTAssertEqual(mode("a", w), "monitor")
        let (_, after) = etcd.etcdctl(["get", "/connguard/v1/modes/\(w)", "-w", "json"])
        XCTAssertTrue(after.contains("\"version\":2"), "promoted more than once: \(after)")

        // Prune on A: the rule unused since 2020 leaves the cluster baseline.
        let pruned = cg("a", ["baseline", "prune", w, "--unused-for", "30d"])
        XCTAssertEqual(pruned.status, 0, pruned.stderr)
        XCTAssertTrue(pruned.stdout.contains("removed 1 rules"), pruned.stdout)
        waitFor("the prune on B") { rules("b", w).count == 1 }
        let (_, value) = etcd.etcdctl(["get", "/connguard/v1/baselines/\(w)", "--print-value-only"])
        let left = (try? JSONSerialization.jsonObject(with: Data(value.utf8)) as? [String: Any])?["rules"] as? [[String: Any]] ?? []
        XCTAssertEqual(left.compactMap { $0["peer"] as? String }, ["198.18.7.0/24"], value)

        // With the store away, a cluster action is refused whole: one line, nothing changed.
        for i in 0..<3 { etcd.kill(i) }
        let refused = cg("a", ["mode", w, "enforce"])
        XCTAssertNotEqual(refused.status, 0)
        XCTAssertTrue(refused.stderr.contains("unavailable") && refused.stderr.contains("not changed"), refused.stderr)
        XCTAssertEqual(refused.stderr.split(separator: "\n").count, 1, refused.stderr)
        XCTAssertEqual(mode("a", w), "monitor")
    }

    /// A malformed endpoint stops the agent with one line; one that does not
    /// answer does not: the agent starts on its own, degraded, and says why
    /// in one log line.
    func testWrongEndpoints() throws {
        let bad = Shell.run([binary, "agent", "--cluster-endpoints", "etcd-0:2379", "--db", scratch + "/x.db", "--socket", socket("a"),
                             "--cgroup-root", parent("a"), "--pin-root", pinRoot("a")])
        XCTAssertEqual(bad.status, 1)
        XCTAssertEqual(bad.stderr.split(separator: "\n").count, 1, bad.stderr)
        XCTAssertTrue(bad.stderr.contains("'etcd-0:2379' is not an etcd client URL"), bad.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: scratch + "/x.db"), "nothing made before the check")

        let closed = EtcdCluster.freePorts(1)[0]
        agents["a"] = try AgentProcess.start(binary: binary, arguments: [
            "--db", scratch + "/a.db", "--socket", socket("a"), "--cgroup-root", parent("a"), "--pin-root", pinRoot("a"),
            "--cluster-endpoints", "http://127.0.0.1:\(closed)", "--node-name", "node-a",
        ], socket: socket("a"), log: scratch + "/a.log")
        waitFor("degraded", timeout: 15) { cluster("a")["state"] as? String == "degraded" }
        let line = log("a").split(separator: "\n").filter { $0.contains("cluster: degraded") }
        XCTAssertEqual(line.count, 1, log("a"))
        XCTAssertTrue(line.first?.contains("127.0.0.1:\(closed)") == true, "\(line)")
        XCTAssertTrue(cg("a", ["status"]).stdout.contains("cluster:    degraded since"))
    }
}
