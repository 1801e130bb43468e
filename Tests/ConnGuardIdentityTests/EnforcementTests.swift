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

    override func setUpWithError() throws {
        try Privileged.requireContainers()
        try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
        guard let mount = CgroupMount.find() else { throw Failure("no cgroup2") }
        XCTAssertEqual(mkdir(mount + parent, 0o755), 0)
    }

    override func tearDown() {
        if agentPID > 0 { kill(agentPID, SIGKILL) }
        for c in containers { Shell.run(["podman", "rm", "-f", "-t", "0", c]) }
        Shell.run([binary, "kill-switch", "--pin-root", pinRoot, "--pin-root-only"])
        XCTAssertFalse(FileManager.default.fileExists(atPath: pinRoot), "pins left behind")
        CgroupMounts.remove(parent)
        try? FileManager.default.removeItem(atPath: scratch)
    }

    // MARK: helpers

    func startAgent() throws {
        var pid: pid_t = 0
        let args = [binary, "agent", "--db", scratch + "/db", "--socket", socket, "--cgroup-root", parent,
                    "--pin-root", pinRoot, "--log-level", "warning"]
        let argv: [UnsafeMutablePointer<CChar>?] = args.map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        posix_spawn_file_actions_addopen(&actions, 1, scratch + "/agent.log", O_WRONLY | O_CREAT | O_APPEND, 0o600)
        posix_spawn_file_actions_addopen(&actions, 2, scratch + "/agent.log", O_WRONLY | O_CREAT | O_APPEND, 0o600)
        XCTAssertEqual(posix_spawn(&pid, binary, &actions, nil, argv, environ), 0)
        posix_spawn_file_actions_destroy(&actions)
        agentPID = pid
        let deadline = Date().addingTimeInterval(20)
        while Date() < deadline {
            if cg(["status", "-o", "json"]).status == 0 { return }
            usleep(100_000)
        }
        throw Failure("agent did not start: \((try? readFile(scratch + "/agent.log")) ?? "")")
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

    // MARK: the test

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
