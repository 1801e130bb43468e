import ConnGuardCore
import Foundation
import Glibc
import XCTest

/// Issue 5 end to end: the agent (the built binary) watches a cgroup subtree
/// of this test's own; podman containers run under it (--cgroup-parent) and
/// make real loopback connections; the agent learns, monitors and enforces.
/// Enforcement is attached to that subtree only and pinned under a test pin
/// root; everything is removed at the end, also on failure.
final class EnforcementTests: XCTestCase {
    static let image = "localhost/bb:latest"
    let tag = "cgenf\(getpid())x\(UInt16.random(in: 0...0xffff))"
    var parent: String { "/\(tag)" }
    var scratch: String { NSTemporaryDirectory() + tag }
    var socket: String { scratch + "/api.sock" }
    var pinRoot: String { "/sys/fs/bpf/\(tag)" }
    var binary: String {
        let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? ""
        var dir = (exe as NSString).deletingLastPathComponent
        if dir.hasSuffix(".xctest") { dir = (dir as NSString).deletingLastPathComponent }
        return dir + "/connguard"
    }
    var containers: [String] = []
    var agentPID: Int32 = 0
    let networks = PodNetworks()

    override func setUpWithError() throws {
        try Privileged.requireContainers()
        try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
        guard let mount = CgroupMount.find() else { throw Failure("no cgroup2") }
        XCTAssertEqual(mkdir(mount + parent, 0o755), 0)
    }

    override func tearDown() {
        if agentPID > 0 { kill(agentPID, SIGKILL) }
        for c in containers { Shell.run(["podman", "rm", "-f", "-t", "0", c]) }
        networks.removeAll()
        Shell.run([binary, "kill-switch", "--pin-root", pinRoot, "--pin-root-only"])
        XCTAssertFalse(FileManager.default.fileExists(atPath: pinRoot), "pins left behind")
        CgroupMounts.remove(parent)
        try? FileManager.default.removeItem(atPath: scratch)
    }

    // MARK: helpers

    func startAgent() throws {
        agentPID = try AgentProcess.start(binary: binary, arguments: ["--db", scratch + "/db", "--socket", socket, "--cgroup-root", parent,
                                                                      "--pin-root", pinRoot, "--log-level", "warning"],
                                          socket: socket, log: scratch + "/agent.log")
    }

    func stopAgent(_ signal: Int32) {
        kill(agentPID, signal)
        var status: Int32 = 0
        waitpid(agentPID, &status, 0)
        agentPID = 0
    }

    @discardableResult
    func cg(_ args: [String], timeout: Double = 30) -> Shell.Result {
        Shell.run([binary] + args + ["--socket", socket], timeout: timeout)
    }

    /// A server container: answers "hi" on `port`, forever.
    func server(_ name: String, port: UInt16) throws {
        let r = Shell.run(["podman", "run", "-d", "--name", name, "--network", "host", "--cgroup-parent", parent,
                           Self.image, "sh", "-c", "while :; do echo hi | nc -l -p \(port); done"])
        guard r.status == 0 else { throw Failure("podman run \(name): \(r.stderr)") }
        containers.append(name)
        XCTAssertTrue(Ports.waitListening(port))
    }

    /// A client container whose first action is to connect; returns what nc printed.
    func client(_ name: String, port: UInt16) -> Shell.Result {
        containers.append(name)
        return Shell.run(["podman", "run", "--rm", "--name", name, "--network", "host", "--cgroup-parent", parent,
                          Self.image, "sh", "-c", "nc -w 2 127.0.0.1 \(port)"], timeout: 30)
    }

    func connections(_ args: [String]) -> [[String: Any]] {
        let r = cg(["connections", "-o", "json"] + args)
        XCTAssertEqual(r.status, 0, r.stderr)
        return r.stdout.split(separator: "\n").compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
    }

    func rules(_ workload: String) -> [[String: Any]] {
        let r = cg(["baseline", "show", workload, "-o", "json"])
        guard r.status == 0, let o = try? JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any] else { return [] }
        return o["rules"] as? [[String: Any]] ?? []
    }

    func waitFor(_ what: String, timeout: Double = 15, _ condition: () -> Bool) {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if condition() { return }
            usleep(200_000)
        }
        XCTFail("timed out waiting for \(what)")
    }

    /// Runs a container of the busybox image in network namespace `ns`.
    @discardableResult
    func run(_ name: String, in ns: String, detached: Bool, _ command: String, timeout: Double = 30) -> Shell.Result {
        if !containers.contains(name) { containers.append(name) }
        return Shell.run(["podman", "run"] + (detached ? ["-d"] : ["--rm"]) + ["--name", name, "--network", "ns:/run/netns/\(ns)",
                          "--cgroup-parent", parent, Self.image, "sh", "-c", command], timeout: timeout)
    }

    func kernelPeerAddresses() -> [String] { pinnedPeerAddresses(pinRoot: pinRoot) }

    // MARK: the tests

    /// The case a rollout hits: client and server containers, each in a pod
    /// network namespace of its own, learnt and enforced; the client
    /// container is replaced (new address) and still served; a container of
    /// another workload at the old client's address is refused and the
    /// denial names both workloads; the client replaced again while the agent
    /// is stopped is served once the agent is back.
    func testPeersAreWorkloadsAcrossReplacementsAndNewAddresses() throws {
        try startAgent()
        let br = try networks.bridge()
        let app = "\(tag)-app", web = "\(tag)-web", intruder = "\(tag)-intruder"
        let server = try networks.pod("s", "198.18.0.21", bridge: br)
        XCTAssertEqual(run(web, in: server, detached: true, "while :; do echo hi | nc -l -p 8080; done").status, 0)
        waitFor("the server listening") {
            // busybox nc listens on [::]:8080, which takes IPv4 too.
            Shell.run(["ip", "netns", "exec", server, "cat", "/proc/net/tcp", "/proc/net/tcp6"]).stdout
                .split(separator: "\n").contains { $0.contains(":1F90 ") && $0.contains(" 0A ") }
        }
        let ask = "nc -w 3 198.18.0.21 8080"

        // Learn, by workload in both directions.
        var client = try networks.pod("c1", "198.18.0.11", bridge: br)
        XCTAssertEqual(run(app, in: client, detached: false, ask).trimmed, "hi")
        waitFor("the server's inbound rule on the client's workload") {
            rules(web).contains { $0["direction"] as? String == "in" && $0["peer"] as? String == "workload:\(app)" && $0["port"] as? Int == 8080 }
        }
        waitFor("the client's outbound rule on the server's workload") {
            rules(app).contains { $0["direction"] as? String == "out" && $0["peer"] as? String == "workload:\(web)" && $0["port"] as? Int == 8080 }
        }
        XCTAssertFalse(rules(web).contains { ($0["peer"] as? String)?.hasPrefix("198.18.") == true }, "no rule names a pod address: \(rules(web))")
        let shown = cg(["baseline", "show", web]).stdout + cg(["baseline", "show", app]).stdout
        XCTAssertTrue(shown.contains("in   workload:\(app)"), shown)
        XCTAssertTrue(shown.contains("out  workload:\(web)"), shown)
        XCTAssertEqual(cg(["mode", app, "enforce"]).status, 0)
        XCTAssertEqual(cg(["mode", web, "enforce"]).status, 0)

        // A rollout: the client container is replaced, with a new address.
        networks.remove(client)
        client = try networks.pod("c2", "198.18.0.12", bridge: br)
        XCTAssertEqual(run(app, in: client, detached: false, ask).trimmed, "hi", "the replaced client is served from its first connect")

        // Another workload takes the old client's address: refused.
        let stolen = try networks.pod("c1b", "198.18.0.11", bridge: br)
        XCTAssertEqual(run(intruder, in: stolen, detached: false, ask).trimmed, "", "another workload at the old address is refused")
        waitFor("the denial, naming both workloads") {
            connections(["--verdict", "denied", "--direction", "in", "--workload", web]).contains {
                $0["src"] as? String == "198.18.0.11" && $0["peer_workload"] as? String == intruder
            }
        }
        let table = cg(["connections", "--verdict", "denied", "--workload", web]).stdout
        XCTAssertTrue(table.contains("PEER WORKLOAD") && table.contains(intruder), table)

        // Replaced again while the agent is away: the new address is unknown
        // to the kernel until the agent returns and finds it.
        stopAgent(SIGTERM)
        networks.remove(client)
        networks.remove(stolen)
        client = try networks.pod("c3", "198.18.0.13", bridge: br)
        XCTAssertEqual(run(app, in: client, detached: true, "sleep 600").status, 0)
        let away = Shell.run(["podman", "exec", app, "nc", "-w", "2", "198.18.0.21", "8080"], timeout: 20)
        XCTAssertEqual(away.trimmed, "", "an address no agent has seen is not a workload's")
        try startAgent()
        waitFor("the new address in the kernel, the old ones gone") {
            let a = kernelPeerAddresses()
            return a.contains("198.18.0.13") && !a.contains("198.18.0.12") && !a.contains("198.18.0.11")
        }
        let back = Shell.run(["podman", "exec", app, "nc", "-w", "3", "198.18.0.21", "8080"], timeout: 20)
        XCTAssertEqual(back.trimmed, "hi", "served once the agent is back")

        // A baseline from before (or an import) naming, by address, a peer
        // that is a workload of this node is moved to that workload at the
        // next start, with its counts.
        let exported = cg(["baseline", "export", web])
        XCTAssertEqual(exported.status, 0, exported.stderr)
        let legacy = exported.stdout + "  - {direction: in, peer: 198.18.0.13, port: 9090}\n"
        try legacy.write(toFile: scratch + "/legacy.yaml", atomically: true, encoding: .utf8)
        let imported = cg(["baseline", "import", scratch + "/legacy.yaml"])
        XCTAssertEqual(imported.status, 0, imported.stderr + "\n" + legacy)
        XCTAssertTrue(rules(web).contains { $0["peer"] as? String == "198.18.0.13" })
        stopAgent(SIGTERM)
        try startAgent()
        XCTAssertTrue(rules(web).contains { $0["peer"] as? String == "workload:\(app)" && $0["port"] as? Int == 9090 },
                      "migrated: \(rules(web))")
        XCTAssertFalse(rules(web).contains { $0["peer"] as? String == "198.18.0.13" })
        XCTAssertTrue(((try? readFile(scratch + "/agent.log")) ?? "").contains("now names the workload that holds its address"))
        stopAgent(SIGTERM)
    }

    func testLearnMonitorEnforceAcrossRestarts() throws {
        try startAgent()
        let allowed = Ports.free(), other = Ports.free()
        let client = "\(tag)-client", web = "\(tag)-web", extra = "\(tag)-extra"
        try server(web, port: allowed)
        try server(extra, port: other)

        // Learn: the client talks to the web server.
        XCTAssertEqual(self.client(client, port: allowed).trimmed, "hi")
        waitFor("the client's rule") { rules(client).contains { $0["port"] as? Int == Int(allowed) && $0["direction"] as? String == "out" } }
        waitFor("the server's rule") { rules(web).contains { $0["port"] as? Int == Int(allowed) && $0["direction"] as? String == "in" } }

        // Monitor: the new destination is let through and reported would_deny.
        XCTAssertEqual(cg(["mode", client, "monitor"]).status, 0)
        XCTAssertEqual(self.client(client, port: other).trimmed, "hi")
        waitFor("would_deny") { !connections(["--verdict", "would_deny", "--workload", client, "--port", String(other)]).isEmpty }

        // Enforce: a replacement container of the workload is enforced from
        // its first connect; the learnt connection still works.
        XCTAssertEqual(cg(["mode", client, "enforce"]).status, 0)
        XCTAssertEqual(self.client(client, port: allowed).trimmed, "hi", "the learnt connection still works")
        let refused = self.client(client, port: other)
        XCTAssertTrue(refused.stderr.contains("not permitted") || refused.stdout.contains("not permitted"),
                      "connect() failed with EPERM: \(refused.stdout) \(refused.stderr)")
        var denied: [[String: Any]] = []
        waitFor("denied event") {
            denied = connections(["--verdict", "denied", "--port", String(other)])
            return !denied.isEmpty
        }
        let d = try XCTUnwrap(denied.first)
        XCTAssertEqual(d["event"] as? String, "connect")
        XCTAssertEqual(d["workload"] as? String, client)
        XCTAssertEqual((d["container"] as? [String: Any])?["name"] as? String, client)
        XCTAssertEqual((d["container"] as? [String: Any])?["runtime"] as? String, "podman")
        XCTAssertEqual(d["dport"] as? Int, Int(other))

        // Inbound: the web server, enforced, accepts only the peers it learnt,
        // by workload (over loopback every local process shares 127.0.0.1):
        // a new container of the learnt client gets in, a container of
        // another workload on the same address does not, and neither does a
        // SYN from 127.0.0.2; each refusal is reported.
        XCTAssertTrue(rules(web).contains { $0["peer"] as? String == "workload:\(client)" && $0["direction"] as? String == "in" },
                      "the server's inbound rule names its client's workload: \(rules(web))")
        XCTAssertEqual(cg(["mode", web, "enforce"]).status, 0)
        XCTAssertEqual(self.client(client, port: allowed).trimmed, "hi", "the learnt client's workload still gets in")
        XCTAssertEqual(self.client("\(tag)-client2", port: allowed).trimmed, "", "another workload on 127.0.0.1 is refused")
        waitFor("denied accept of the other workload, naming both") {
            connections(["--verdict", "denied", "--direction", "in", "--workload", web]).contains {
                $0["peer_workload"] as? String == "\(tag)-client2"
            }
        }
        let probe = Shell.run(["python3", "-c", """
            import socket
            s = socket.socket(); s.settimeout(2); s.bind(("127.0.0.2", 0))
            try:
                s.connect(("127.0.0.1", \(allowed))); print("connected")
            except Exception as e:
                print(type(e).__name__)
            """], timeout: 20)
        XCTAssertTrue(["timeout", "TimeoutError"].contains(probe.trimmed), "the SYN is dropped: \(probe.stdout) \(probe.stderr)")
        waitFor("denied accept") {
            connections(["--verdict", "denied", "--direction", "in", "--workload", web]).contains { $0["src"] as? String == "127.0.0.2" }
        }

        // Restart while enforcing: enforcement holds while the agent is away
        // (for the containers it armed; one created meanwhile is armed when
        // the agent returns), and the baseline is unchanged afterwards.
        let long = Shell.run(["podman", "run", "-d", "--name", client, "--network", "host", "--cgroup-parent", parent,
                              Self.image, "sleep", "600"])
        XCTAssertEqual(long.status, 0, long.stderr)
        waitFor("the long-running client armed") {
            let r = Shell.run(["podman", "exec", client, "nc", "-w", "2", "127.0.0.1", String(other)], timeout: 20)
            return r.stderr.contains("not permitted")
        }
        let before = rules(client).count
        for signal in [SIGTERM, SIGKILL] {
            stopAgent(signal)
            let r = Shell.run(["podman", "exec", client, "nc", "-w", "2", "127.0.0.1", String(other)], timeout: 20)
            XCTAssertTrue(r.stderr.contains("not permitted"), "enforced with no agent (signal \(signal)): \(r.stdout) \(r.stderr)")
            let ok = Shell.run(["podman", "exec", client, "nc", "-w", "2", "127.0.0.1", String(allowed)], timeout: 20)
            XCTAssertEqual(ok.trimmed, "hi", "allowed with no agent (signal \(signal))")
            try startAgent()
            XCTAssertEqual(rules(client).count, before, "baseline unchanged after restart (signal \(signal))")
            let status = cg(["status", "-o", "json"])
            let s = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(status.stdout.utf8)) as? [String: Any])
            XCTAssertEqual((s["enforcement"] as? [String: Any])?["adopted"] as? Bool, true)
        }
        Shell.run(["podman", "rm", "-f", "-t", "0", client])

        // Bad policy files change nothing.
        let bad = [
            "workload: \(client)\nmode: enforce\nrules:\n  - {direction: out, peer: 10.0.0.0/33, port: 80}\n  - {direction: sideways, peer: 1.2.3.4, port: 0}\n",
            "not: [valid\n",
            "workload: \(client)\nmode: enforce\nrules: {}\nextra: 1\n",
            String(repeating: "x", count: 17 << 20),
        ]
        for (i, text) in bad.enumerated() {
            let path = scratch + "/bad\(i).yaml"
            try text.write(toFile: path, atomically: true, encoding: .utf8)
            let r = cg(["baseline", "import", path])
            XCTAssertEqual(r.status, 1, "bad file \(i) refused")
            XCTAssertFalse(r.stderr.isEmpty)
            XCTAssertEqual(rules(client).count, before, "nothing changed by bad file \(i)")
        }
        // A good one round-trips.
        let exported = cg(["baseline", "export", client])
        XCTAssertEqual(exported.status, 0)
        try exported.stdout.write(toFile: scratch + "/good.yaml", atomically: true, encoding: .utf8)
        XCTAssertEqual(cg(["baseline", "import", scratch + "/good.yaml"]).status, 0)
        XCTAssertEqual(rules(client).count, before)
        XCTAssertTrue(cg(["status"]).stdout.contains("enforce"))
        stopAgent(SIGTERM)
    }
}
