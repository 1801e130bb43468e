import ConnGuardCore
import Foundation
import Glibc
import ConnGuardTestSupport
import XCTest

/// The agent as operators run it: the built binary, in a cgroup subtree of
/// the test's own, with a temporary database and socket; real connections;
/// the CLI's query commands.
final class AgentTests: XCTestCase {
    var binary: String { productsDirectory() + "/connguard" }
    var scratch = ""
    var root: TestCgroup!
    var clients: TestCgroup!
    var metricsPort: UInt16 = 0

    override func setUpWithError() throws {
        try requireRoot()
        scratch = NSTemporaryDirectory() + "connguard-agent-test-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
        root = try TestCgroup("agent")
        clients = try root.child("clients")
        let (fd, port) = try Net.listener(family: AF_INET, address: "127.0.0.1")
        close(fd)
        metricsPort = port
    }

    override func tearDown() {
        // Enforcement stays pinned after the agent exits (by design): remove it.
        _ = try? cli(["kill-switch", "--pin-root", pinRoot, "--pin-root-only"])
        XCTAssertFalse(FileManager.default.fileExists(atPath: pinRoot), "pins left behind")
        clients?.remove()
        root?.remove()
        try? FileManager.default.removeItem(atPath: scratch)
    }

    var socket: String { scratch + "/api.sock" }
    var db: String { scratch + "/db.sqlite" }
    var pinRoot: String { "/sys/fs/bpf/connguard-test" + (scratch as NSString).lastPathComponent }

    func startAgent(extra: [String] = []) throws -> Child {
        let agent = try Child(binary, ["agent", "--db", db, "--socket", socket, "--cgroup-root", root.relativePath,
                                       "--metrics-address", "127.0.0.1:\(metricsPort)", "--log-level", "warning",
                                       "--pin-root", pinRoot] + extra)
        let deadline = Date().addingTimeInterval(20)
        while Date() < deadline {
            if access(socket, F_OK) == 0, (try? cli(["status", "--socket", socket, "-o", "json"]).status) == 0 { return agent }
            if !agent.process.isRunning { break }
            usleep(50_000)
        }
        agent.stop(signal: SIGKILL)
        let err = String(decoding: agent.stderr.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        XCTFail("agent did not come up: \(err)")
        throw FileError(path: socket, errno: ETIMEDOUT)
    }

    /// Runs the CLI; returns stdout, stderr and exit status.
    @discardableResult
    func cli(_ args: [String]) throws -> (stdout: String, stderr: String, status: Int32) {
        let c = try Child(binary, args)
        // A command that hangs is a failure, not a stuck test run.
        let pid = c.pid
        let watchdog = DispatchWorkItem { kill(pid, SIGKILL) }
        DispatchQueue.global().asyncAfter(deadline: .now() + 60, execute: watchdog)
        defer { watchdog.cancel() }
        let out = c.stdout.fileHandleForReading.readDataToEndOfFile()
        let err = c.stderr.fileHandleForReading.readDataToEndOfFile()
        c.process.waitUntilExit()
        return (String(decoding: out, as: UTF8.self), String(decoding: err, as: UTF8.self), c.process.terminationStatus)
    }

    func connections(_ args: [String]) throws -> [[String: Any]] {
        let r = try cli(["connections", "--socket", socket, "-o", "json"] + args)
        XCTAssertEqual(r.status, 0, r.stderr)
        return try r.stdout.split(separator: "\n").map {
            try XCTUnwrap(JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any])
        }
    }

    /// The baseline rules of `workload` in `direction` ("in", "out") for `port`
    /// (none while the workload has no baseline yet).
    func rules(_ workload: String, _ direction: String, port: UInt16) throws -> [[String: Any]] {
        let r = try cli(["baseline", "show", workload, "--socket", socket, "-o", "json"])
        guard r.status == 0 else { return [] }
        let o = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any]
        return (o?["rules"] as? [[String: Any]] ?? []).filter { $0["direction"] as? String == direction && $0["port"] as? Int == Int(port) }
    }

    /// Makes `count` connections to 127.0.0.1:port from a process inside the clients cgroup.
    func connectFromClients(port: UInt16, count: Int = 1) throws {
        let script = "import socket\nfor _ in range(\(count)):\n    socket.create_connection(('127.0.0.1', \(port))).close()\n"
        let c = try Child("/bin/sh", ["-c", "echo $$ > \(clients.path)/cgroup.procs && exec python3 -c \"$0\"", script])
        c.process.waitUntilExit()
        XCTAssertEqual(c.process.terminationStatus, 0)
    }

    /// A server in the root test cgroup that accepts and closes forever.
    /// `dualStack`: an IPv6 socket on [::] that also takes IPv4.
    func startServer(dualStack: Bool = false) throws -> (Child, UInt16) {
        let listen = dualStack
            ? "s = socket.socket(socket.AF_INET6); s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0); s.bind((\"::\", 0)); s.listen(512)"
            : "s = socket.socket(); s.bind((\"127.0.0.1\", 0)); s.listen(512)"
        let server = try Child("/bin/sh", ["-c", """
            echo $$ > \(root.path)/cgroup.procs && exec python3 -c '
            import socket
            \(listen)
            print(s.getsockname()[1], flush=True)
            while True:
                c, _ = s.accept(); c.close()
            '
            """])
        let port = try XCTUnwrap(server.readLine().flatMap { UInt16($0) })
        return (server, port)
    }

    func waitFor(_ description: String, timeout: Double = 10, _ condition: () throws -> Bool) rethrows {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if try condition() { return }
            usleep(100_000)
        }
        XCTFail("timed out waiting for \(description)")
    }

    func testStoresQueriesFiltersAndExportsMetrics() throws {
        let agent = try startAgent(extra: ["--program-stats"])
        defer { agent.stop(signal: SIGKILL) }
        let (server, port) = try startServer()
        defer { server.stop(signal: SIGKILL) }
        try connectFromClients(port: port, count: 3)

        var rows: [[String: Any]] = []
        try waitFor("6 stored events") {
            rows = try connections(["--port", String(port)])
            return rows.count >= 6
        }
        XCTAssertEqual(rows.count, 6)
        let connects = rows.filter { $0["event"] as? String == "connect" }
        let accepts = rows.filter { $0["event"] as? String == "accept" }
        XCTAssertEqual(connects.count, 3)
        XCTAssertEqual(accepts.count, 3)
        for r in connects {
            XCTAssertEqual(r["workload"] as? String, clients.relativePath, "a host process's workload is its cgroup path")
            XCTAssertEqual(r["comm"] as? String, "python3")
            XCTAssertEqual(r["cgroup_id"] as? Int, Int(clients.id))
            XCTAssertEqual(r["dport"] as? Int, Int(port))
            XCTAssertEqual(r["verdict"] as? String, "allowed")
            for key in ["time", "outcome", "pid", "uid", "family", "src", "sport", "dst"] { XCTAssertNotNil(r[key], key) }
        }
        for r in accepts {
            XCTAssertEqual(r["workload"] as? String, root.relativePath)
            XCTAssertEqual(r["pid"] as? Int, Int(server.pid))
        }

        // Filters narrow.
        XCTAssertEqual(try connections(["--port", String(port), "--direction", "in"]).count, 3)
        XCTAssertEqual(try connections(["--port", String(port), "--workload", clients.relativePath]).count, 3)
        XCTAssertEqual(try connections(["--port", String(port), "--last", "2"]).count, 2)
        XCTAssertEqual(try connections(["--port", String(port), "--peer", "10.0.0.0/8"]).count, 0)
        XCTAssertEqual(try connections(["--port", String(port), "--peer", "127.0.0.0/8"]).count, 6)
        XCTAssertEqual(try connections(["--port", String(port), "--verdict", "denied"]).count, 0)
        XCTAssertEqual(try connections(["--port", String(port), "--until", "1h"]).count, 0)
        XCTAssertEqual(try connections(["--port", String(port), "--since", "1h"]).count, 6)
        let agg = try connections(["--port", String(port), "--aggregate"])
        XCTAssertEqual(agg.count, 2, "one outbound and one inbound aggregate: \(agg)")
        XCTAssertEqual(agg.compactMap { $0["count"] as? Int }.sorted(), [3, 3])
        // The same as a table: one row each way.
        let aggTable = try cli(["connections", "--socket", socket, "--port", String(port), "--aggregate"])
        let aggRows = aggTable.stdout.split(separator: "\n").dropFirst().map { $0.split(separator: " ", omittingEmptySubsequences: true) }
        XCTAssertEqual(aggRows.map { String($0[1]) }.sorted(), ["in", "out"], aggTable.stdout)

        // Table output for a person.
        let table = try cli(["connections", "--socket", socket, "--port", String(port)])
        XCTAssertEqual(table.status, 0)
        XCTAssertTrue(table.stdout.hasPrefix("TIME"), table.stdout)
        XCTAssertEqual(table.stdout.split(separator: "\n").count, 7)

        // Metrics: Prometheus text, counters matching what we did (the agent
        // watches only our subtree).
        let metrics = try httpGet(port: metricsPort, path: "/metrics")
        XCTAssertEqual(metricValue(metrics, #"connguard_events_total{event="connect",verdict="allowed"}"#), 3)
        XCTAssertEqual(metricValue(metrics, #"connguard_events_total{event="accept",verdict="allowed"}"#), 3)
        XCTAssertEqual(metricValue(metrics, #"connguard_events_lost_total{stage="kernel",reason="ring_buffer_full"}"#), 0)
        XCTAssertNotNil(metricValue(metrics, "connguard_database_size_bytes"))
        XCTAssertTrue(metrics.contains("# TYPE connguard_events_total counter"))
        XCTAssertGreaterThan(metricValue(metrics, #"connguard_bpf_program_runs_total{program="cg_tp_sock_state"}"#) ?? 0, 0)

        // Status.
        let status = try cli(["status", "--socket", socket, "-o", "json"])
        let s = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(status.stdout.utf8)) as? [String: Any])
        XCTAssertEqual((s["events"] as? [String: Any])?["connect"] as? Int, 3)
        XCTAssertEqual((s["lost"] as? [String: Any])?["total"] as? Int, 0)
        XCTAssertEqual((s["lost"] as? [String: Any])?["denials"] as? Int, 0)
        XCTAssertEqual((s["incomplete"] as? [String: Any])?["udp_sockets_without_role"] as? Int, 0)
        XCTAssertEqual((s["enforcement"] as? [String: Any])?["udp_denials_counted"] as? Int, 0)
        XCTAssertEqual(metricValue(metrics, #"connguard_events_lost_total{stage="kernel",reason="denial_ring_buffer_full"}"#), 0)
        XCTAssertEqual(metricValue(metrics, #"connguard_events_incomplete_total{reason="udp_role_storage"}"#), 0)
        XCTAssertNotNil(s["version"])
        let human = try cli(["status", "--socket", socket])
        XCTAssertTrue(human.stdout.contains("up since"), human.stdout)
    }

    func testOverTheRowBudgetEventsAreCountedInTheirAggregate() throws {
        // 5 rows a second for repeats: 60 connections in well under a second
        // leave a handful of rows, and the aggregate counts every one.
        let agent = try startAgent(extra: ["--individual-events-per-second", "5"])
        defer { agent.stop(signal: SIGKILL) }
        let (server, port) = try startServer()
        defer { server.stop(signal: SIGKILL) }
        try connectFromClients(port: port, count: 60)

        var agg: [[String: Any]] = []
        try waitFor("120 events in the aggregates") {
            agg = try connections(["--port", String(port), "--aggregate"])
            return agg.compactMap { $0["count"] as? Int }.reduce(0, +) == 120
        }
        XCTAssertEqual(agg.compactMap { $0["count"] as? Int }.sorted(), [60, 60])
        let rows = try connections(["--port", String(port)])
        XCTAssertGreaterThanOrEqual(rows.count, 2, "each direction's first event has a row")
        XCTAssertLessThan(rows.count, 120, "repeats over the budget have no row")

        let status = try cli(["status", "--socket", socket, "-o", "json"])
        let s = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(status.stdout.utf8)) as? [String: Any])
        let events = try XCTUnwrap(s["events"] as? [String: Any])
        XCTAssertEqual(events["stored"] as? Int, 120, "every event stored, as a row or a count")
        XCTAssertEqual(events["aggregated_only"] as? Int, 120 - rows.count)
        // Most repeats never left the kernel: it counted them (budget 5 a
        // second split over the CPUs, plus the first of each connection).
        let inKernel = try XCTUnwrap(events["counted_in_kernel"] as? Int)
        XCTAssertGreaterThan(inKernel, 60, "repeats counted in the kernel")
        XCTAssertLessThanOrEqual(inKernel, 120 - rows.count)
        XCTAssertEqual((s["lost"] as? [String: Any])?["total"] as? Int, 0)
        let metrics = try httpGet(port: metricsPort, path: "/metrics")
        XCTAssertEqual(metricValue(metrics, "connguard_events_aggregated_only_total"), Double(120 - rows.count))
        let human = try cli(["status", "--socket", socket])
        XCTAssertTrue(human.stdout.contains("\(120 - rows.count) as counts only"), human.stdout)
    }

    func testFollowDeliversNewConnections() throws {
        let agent = try startAgent()
        defer { agent.stop(signal: SIGKILL) }
        let (server, port) = try startServer()
        defer { server.stop(signal: SIGKILL) }
        try connectFromClients(port: port)  // before --follow: not replayed
        try waitFor("first connection stored") { try connections(["--port", String(port)]).count >= 2 }

        let follow = try Child(binary, ["connections", "--socket", socket, "--follow", "-o", "json", "--port", String(port), "--direction", "out"])
        defer { follow.stop(signal: SIGKILL) }
        usleep(500_000)
        try connectFromClients(port: port)
        let line = try XCTUnwrap(follow.readLine(timeout: 10), "follow delivered nothing")
        let obj = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
        XCTAssertEqual(obj["event"] as? String, "connect")
        XCTAssertEqual(obj["dport"] as? Int, Int(port))
        XCTAssertNil(follow.readLine(timeout: 1), "only the new one, once")
        follow.stop(signal: SIGINT)
        XCTAssertEqual(follow.process.terminationStatus, 0)
    }

    func testDataSurvivesSIGTERMAndKill9() throws {
        let (server, port) = try startServer()
        defer { server.stop(signal: SIGKILL) }
        var agent = try startAgent()
        try connectFromClients(port: port, count: 2)
        try waitFor("stored") { try connections(["--port", String(port)]).count >= 4 }
        agent.stop(signal: SIGTERM)
        XCTAssertEqual(agent.process.terminationStatus, 0, "clean exit on SIGTERM")
        XCTAssertNotEqual(access(socket, F_OK), 0, "socket removed on exit")

        agent = try startAgent()
        XCTAssertEqual(try connections(["--port", String(port)]).count, 4, "kept across a restart")
        try connectFromClients(port: port, count: 1)
        try waitFor("stored after restart") { try connections(["--port", String(port)]).count >= 6 }
        agent.stop(signal: SIGKILL)

        agent = try startAgent()
        defer { agent.stop(signal: SIGKILL) }
        XCTAssertEqual(try connections(["--port", String(port)]).count, 6, "committed data kept across kill -9")
    }

    /// Connections open before the agent started: found in /proc at start,
    /// stored with hook "snapshot" and full attribution, counted in status;
    /// a client outside --cgroup-root is left out; live events follow.
    func testConnectionsOpenBeforeTheAgentStartedAreSnapshotted() throws {
        // A dual-stack server in the root test cgroup that keeps what it accepts.
        let server = try Child("/bin/sh", ["-c", "echo $$ > \(root.path)/cgroup.procs && exec python3 -c \"$0\"", """
            import socket
            s = socket.socket(socket.AF_INET6)
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            s.bind(("::", 0)); s.listen(64)
            print(s.getsockname()[1], flush=True)
            held = []
            while True:
                c, _ = s.accept(); held.append(c); print("accepted", flush=True)
            """])
        defer { server.stop(signal: SIGKILL) }
        let port = try XCTUnwrap(server.readLine().flatMap { UInt16($0) })
        // A client in the clients cgroup: one IPv4 connection (IPv4-mapped on
        // the server's side) and one IPv6; then it forks, so that two
        // processes hold both sockets.
        let client = try Child("/bin/sh", ["-c", "echo $$ > \(clients.path)/cgroup.procs && exec python3 -c \"$0\"", """
            import os, socket, time
            a = socket.create_connection(("127.0.0.1", \(port)))
            b = socket.create_connection(("::1", \(port)))
            child = os.fork()
            if child == 0:
                # Keep only the two sockets: an inherited descriptor (the test's
                # pipes, Foundation's watch on the parent) would outlive the parent.
                low, high = sorted((a.fileno(), b.fileno()))
                os.closerange(3, low); os.closerange(low + 1, high); os.closerange(high + 1, os.sysconf("SC_OPEN_MAX"))
                null = os.open(os.devnull, os.O_RDWR)
                for fd in (0, 1, 2): os.dup2(null, fd)
                time.sleep(3600)
                os._exit(0)
            print(a.getsockname()[1], b.getsockname()[1], child, flush=True)
            time.sleep(3600)
            """])
        defer { client.stop(signal: SIGKILL) }
        let line = try XCTUnwrap(client.readLine(), "the client did not connect")
        let fields = line.split(separator: " ").compactMap { Int($0) }
        guard fields.count == 3 else { return XCTFail("client said: \(line)") }
        let (port4, port6, forked) = (fields[0], fields[1], Int32(fields[2]))
        defer { kill(forked, SIGKILL) }
        // And one from this process, outside the agent's cgroup root.
        let outsider = try Net.connect(family: AF_INET, address: "127.0.0.1", port: port)
        XCTAssertGreaterThanOrEqual(outsider, 0)
        defer { close(outsider) }
        let outsiderPort = Int(Net.localPort(outsider))
        for _ in 0..<3 { XCTAssertEqual(server.readLine(), "accepted") }

        let agent = try startAgent()
        defer { agent.stop(signal: SIGKILL) }
        var rows: [[String: Any]] = []
        try waitFor("the 5 connections in scope stored") {
            rows = try connections(["--port", String(port)])
            return rows.count >= 5
        }
        XCTAssertEqual(rows.count, 5, "2 connects and 3 accepts, not the outsider's connect: \(rows)")
        for r in rows {
            XCTAssertEqual(r["hook"] as? String, "snapshot")
            XCTAssertEqual(r["outcome"] as? String, "established")
            XCTAssertEqual(r["process_known"] as? Bool, true)
            XCTAssertEqual(r["comm"] as? String, "python3")
            XCTAssertEqual(r["uid"] as? Int, Int(geteuid()))
            XCTAssertEqual(r["dport"] as? Int, Int(port))
            XCTAssertEqual(r["verdict"] as? String, "allowed")
        }
        func row(_ event: String, sport: Int) -> [String: Any]? {
            rows.first { $0["event"] as? String == event && $0["sport"] as? Int == sport }
        }
        // The connect side: the client's workload, the lowest pid of the two holders.
        for (sport, family, address) in [(port4, "ipv4", "127.0.0.1"), (port6, "ipv6", "::1")] {
            let c = try XCTUnwrap(row("connect", sport: sport), "connect from port \(sport): \(rows)")
            XCTAssertEqual(c["pid"] as? Int, Int(min(client.pid, forked)))
            XCTAssertEqual(c["workload"] as? String, clients.relativePath)
            XCTAssertEqual(c["cgroup_id"] as? Int, Int(clients.id))
            XCTAssertEqual(c["family"] as? String, family)
            XCTAssertEqual(c["src"] as? String, address)
            XCTAssertEqual(c["dst"] as? String, address)
        }
        // The accept side: the server, the client as source; the IPv4
        // connection the IPv6 socket took is reported as IPv4.
        for (sport, family, address) in [(port4, "ipv4", "127.0.0.1"), (port6, "ipv6", "::1"), (outsiderPort, "ipv4", "127.0.0.1")] {
            let a = try XCTUnwrap(row("accept", sport: sport), "accept from port \(sport): \(rows)")
            XCTAssertEqual(a["pid"] as? Int, Int(server.pid))
            XCTAssertEqual(a["workload"] as? String, root.relativePath)
            XCTAssertEqual(a["cgroup_id"] as? Int, Int(root.id))
            XCTAssertEqual(a["family"] as? String, family)
            XCTAssertEqual(a["src"] as? String, address)
            XCTAssertEqual(a["dst"] as? String, address)
        }
        XCTAssertNil(row("connect", sport: outsiderPort), "outside --cgroup-root")
        let table = try cli(["connections", "--socket", socket, "--port", String(port)])
        XCTAssertEqual(table.stdout.components(separatedBy: "established at start").count - 1, 5, table.stdout)

        // Counted in status.
        let status = try cli(["status", "--socket", socket, "-o", "json"])
        let s = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(status.stdout.utf8)) as? [String: Any])
        XCTAssertEqual(s["connections_seeded"] as? Int, 5)
        XCTAssertGreaterThanOrEqual(s["listeners_seeded"] as? Int ?? 0, 1)
        XCTAssertGreaterThanOrEqual((s["events"] as? [String: Any])?["outside_cgroup_root"] as? Int ?? 0, 1)
        let human = try cli(["status", "--socket", socket])
        XCTAssertTrue(human.stdout.contains("5 established connections"), human.stdout)

        // Learnt like live events (learn mode): inbound to the port for the
        // server, outbound to it for the client. Both ends are on this node,
        // so each rule names the other's workload, once for both addresses;
        // the outsider's connection is a rule of its own.
        let inbound = try rules(root.relativePath, "in", port: port)
        XCTAssertEqual(inbound.count, 2, "\(inbound)")
        XCTAssertTrue(inbound.contains { $0["peer"] as? String == "workload:\(clients.relativePath)" }, "\(inbound)")
        let outbound = try rules(clients.relativePath, "out", port: port)
        XCTAssertEqual(outbound.map { $0["peer"] as? String }, ["workload:\(root.relativePath)"])

        // Live events follow, from the tracer's hook.
        try connectFromClients(port: port)
        try waitFor("the live connection stored") {
            rows = try connections(["--port", String(port)])
            return rows.count >= 7
        }
        XCTAssertEqual(rows.count, 7)
        let live = rows.filter { $0["hook"] as? String != "snapshot" }
        XCTAssertEqual(live.compactMap { $0["event"] as? String }.sorted(), ["accept", "connect"])
        XCTAssertTrue(live.allSatisfy { $0["hook"] as? String == s["hook_rung"] as? String }, "\(live)")
    }

    func testASecondAgentIsRefusedAndTheFirstKeepsRunning() throws {
        let agent = try startAgent()
        defer { agent.stop(signal: SIGKILL) }
        // The same pins, another database and socket.
        let samePins = try cli(["agent", "--db", scratch + "/second.db", "--socket", scratch + "/second.sock",
                                "--pin-root", pinRoot, "--cgroup-root", root.relativePath])
        XCTAssertEqual(samePins.status, 1, samePins.stderr)
        XCTAssertEqual(samePins.stderr.split(separator: "\n").count, 1, samePins.stderr)
        XCTAssertTrue(samePins.stderr.contains("another agent is running with the pins in \(pinRoot)"), samePins.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: scratch + "/second.db"), "the refused agent made its database")
        // The same socket, other pins: refused, and those pins not left behind.
        let otherPins = pinRoot + "-second"
        let sameSocket = try cli(["agent", "--db", scratch + "/second.db", "--socket", socket,
                                  "--pin-root", otherPins, "--cgroup-root", root.relativePath])
        XCTAssertEqual(sameSocket.status, 1, sameSocket.stderr)
        XCTAssertTrue(sameSocket.stderr.contains("another agent answers on \(socket)"), sameSocket.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: otherPins), "the refused agent left \(otherPins)")
        // The first agent still answers on its socket, with its programs attached.
        let status = try cli(["status", "--socket", socket, "-o", "json"])
        XCTAssertEqual(status.status, 0, status.stderr)
        XCTAssertTrue(agent.process.isRunning)
        // The kill-switch empties the pin root but keeps the running agent's
        // lock on it: a second agent is still refused.
        XCTAssertEqual(try cli(["kill-switch", "--pin-root", pinRoot, "--pin-root-only"]).status, 0)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: pinRoot), [])
        let afterKillSwitch = try cli(["agent", "--db", scratch + "/second.db", "--socket", scratch + "/second.sock",
                                       "--pin-root", pinRoot, "--cgroup-root", root.relativePath])
        XCTAssertEqual(afterKillSwitch.status, 1, afterKillSwitch.stderr)
        XCTAssertTrue(afterKillSwitch.stderr.contains("another agent is running"), afterKillSwitch.stderr)
        // Once it has stopped, an agent starts on the same pins and socket.
        agent.stop(signal: SIGTERM)
        _ = try startAgent().stop(signal: SIGTERM)
    }

    /// Enforcement programs attach only when a workload is first enforced, so
    /// a server that was already listening has no owner recorded by them; its
    /// inbound denials name it from the tracer's record of listen().
    func testAnInboundDenialNamesAServerThatListenedBeforeEnforcement() throws {
        let agent = try startAgent()
        defer { agent.stop(signal: SIGKILL) }
        // Both listening before anything is enforced; the second on [::],
        // taking IPv4 too (the tracer records it as an IPv6 listener).
        let (server, port) = try startServer()
        defer { server.stop(signal: SIGKILL) }
        let (dualServer, dualPort) = try startServer(dualStack: true)
        defer { dualServer.stop(signal: SIGKILL) }
        let workload = root.relativePath
        try connectFromClients(port: port)
        try waitFor("the server's inbound rule") { try !rules(workload, "in", port: port).isEmpty }
        let armed = try cli(["mode", workload, "enforce", "--socket", socket])
        XCTAssertEqual(armed.status, 0, armed.stderr)
        for (owner, p) in [(server, port), (dualServer, dualPort)] {
            // A peer it never saw: the SYN is dropped, and reported.
            let probe = try Child("/usr/bin/python3", ["-c", """
                import socket
                s = socket.socket(); s.settimeout(1); s.bind(("127.0.0.2", 0))
                try:
                    s.connect(("127.0.0.1", \(p))); print("connected")
                except Exception as e:
                    print(type(e).__name__)
                """])
            XCTAssertTrue(["timeout", "TimeoutError"].contains(probe.readLine() ?? ""), "the SYN to \(p) is dropped")
            var denied: [[String: Any]] = []
            try waitFor("the denied accept on \(p)") {
                denied = try connections(["--verdict", "denied", "--direction", "in", "--port", String(p)])
                return !denied.isEmpty
            }
            let d = try XCTUnwrap(denied.first)
            XCTAssertEqual(d["src"] as? String, "127.0.0.2")
            XCTAssertEqual(d["workload"] as? String, workload)
            XCTAssertEqual(d["pid"] as? Int, Int(owner.pid), "the server on \(p) is named: \(d)")
            XCTAssertEqual(d["comm"] as? String, "python3")
        }
        _ = try cli(["mode", workload, "learn", "--socket", socket])
    }

    /// Peers on this node are named by their cgroup, not by 127.0.0.1 or
    /// ::1, which every local process shares: a server and two clients in
    /// three cgroups of the subtree; one client learnt; the enforced server
    /// serves the learnt client's workload (also from a new process), drops
    /// the other and reports it denied, naming both workloads.
    func testSameNodeClientsAreNamedByTheirCgroup() throws {
        let agent = try startAgent()
        defer { agent.stop(signal: SIGKILL) }
        let srv = try root.child("server"), learnt = try root.child("learnt"), other = try root.child("other")
        defer { [srv, learnt, other].forEach { $0.remove() } }
        let server = try Child("/bin/sh", ["-c", """
            echo $$ > \(srv.path)/cgroup.procs && exec python3 -c '
            import socket
            s = socket.socket(socket.AF_INET6); s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            s.bind(("::", 0)); s.listen(64)
            print(s.getsockname()[1], flush=True)
            while True:
                c, _ = s.accept(); c.close()
            '
            """])
        defer { server.stop(signal: SIGKILL) }
        let port = try XCTUnwrap(server.readLine().flatMap { UInt16($0) })
        /// One connect from a new process in `cgroup`: "ok", or the exception's name.
        func connect(from cgroup: TestCgroup, to address: String) throws -> String {
            let c = try Child("/bin/sh", ["-c", "echo $$ > \(cgroup.path)/cgroup.procs && exec python3 -c \"$0\"", """
                import socket
                s = socket.socket(socket.AF_INET6 if ":" in "\(address)" else socket.AF_INET); s.settimeout(1.5)
                try:
                    s.connect(("\(address)", \(port))); print("ok")
                except Exception as e:
                    print(type(e).__name__)
                """])
            defer { c.stop(signal: SIGKILL) }
            return c.readLine(timeout: 10) ?? "no answer"
        }
        let serverWorkload = srv.relativePath, learntWorkload = learnt.relativePath, otherWorkload = other.relativePath
        for address in ["127.0.0.1", "::1"] { XCTAssertEqual(try connect(from: learnt, to: address), "ok") }
        try waitFor("the server's rule on its client's workload") {
            try rules(serverWorkload, "in", port: port).contains { $0["peer"] as? String == "workload:\(learntWorkload)" }
        }
        try waitFor("the client's rule on its server's workload") {
            try rules(learntWorkload, "out", port: port).contains { $0["peer"] as? String == "workload:\(serverWorkload)" }
        }
        XCTAssertEqual(try rules(serverWorkload, "in", port: port).count, 1, "one rule, on the workload, for both addresses")
        let shown = try cli(["baseline", "show", serverWorkload, "--socket", socket]).stdout
        XCTAssertTrue(shown.contains("in   workload:\(learntWorkload)"), shown)

        XCTAssertEqual(try cli(["mode", serverWorkload, "enforce", "--socket", socket]).status, 0)
        for address in ["127.0.0.1", "::1"] {
            XCTAssertEqual(try connect(from: learnt, to: address), "ok", "\(address): the learnt workload, from a new process")
            XCTAssertEqual(try connect(from: other, to: address), "TimeoutError", "\(address): another local workload is dropped")
            try waitFor("the denial of \(address), naming both workloads") {
                try connections(["--verdict", "denied", "--direction", "in", "--workload", serverWorkload]).contains {
                    $0["src"] as? String == address && $0["peer_workload"] as? String == otherWorkload
                }
            }
        }
        _ = try cli(["mode", serverWorkload, "learn", "--socket", socket])
    }

    /// UDP end to end through the agent: a client and a server in cgroups
    /// of the subtree learn their flow as udp rules (on the service port,
    /// never the client's ephemeral one); enforced, the learnt flow keeps
    /// working, a new peer port gets EPERM at sendto() and at connect(), and
    /// a datagram from an address outside the server's baseline is dropped;
    /// each refusal is a denied event naming the process.
    func testUDPIsLearntThenEnforced() throws {
        let agent = try startAgent()
        defer { agent.stop(signal: SIGKILL) }
        let serverGroup = try root.child("udpserver")
        defer { serverGroup.remove() }
        let server = try Child("/bin/sh", ["-c", """
            echo $$ > \(serverGroup.path)/cgroup.procs && exec python3 -c '
            import socket
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0))
            print(s.getsockname()[1], flush=True)
            while True:
                d, a = s.recvfrom(2048); s.sendto(b"pong:" + d, a)
            '
            """])
        defer { server.stop(signal: SIGKILL) }
        let port = try XCTUnwrap(server.readLine().flatMap { UInt16($0) })
        /// From the clients cgroup (or `source`), one datagram; the reply or the error.
        func ask(_ p: UInt16, connected: Bool = false, source: String = "127.0.0.1") throws -> String {
            let script = """
                import socket, sys
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(1); s.bind(("\(source)", 0))
                try:
                    if \(connected ? "True" : "False"):
                        s.connect(("127.0.0.1", \(p))); s.send(b"ping")
                    else:
                        s.sendto(b"ping", ("127.0.0.1", \(p)))
                    print(s.recv(64).decode())
                except Exception as e:
                    print(type(e).__name__)
                """
            let c = try Child("/bin/sh", ["-c", "echo $$ > \(clients.path)/cgroup.procs && exec python3 -c \"$0\"", script])
            defer { c.process.waitUntilExit() }
            return c.readLine() ?? ""
        }
        XCTAssertEqual(try ask(port), "pong:ping")
        XCTAssertEqual(try ask(port, connected: true), "pong:ping")
        let client = clients.relativePath, serverWorkload = serverGroup.relativePath
        try waitFor("the udp rules of both") {
            try !rules(client, "out", port: port).filter { $0["protocol"] as? String == "udp" }.isEmpty
                && !rules(serverWorkload, "in", port: port).filter { $0["protocol"] as? String == "udp" }.isEmpty
        }
        let show = try cli(["baseline", "show", client, "-o", "json", "--socket", socket]).stdout
        let all = (try JSONSerialization.jsonObject(with: Data(show.utf8)) as? [String: Any])?["rules"] as? [[String: Any]] ?? []
        XCTAssertEqual(Set(all.compactMap { $0["port"] as? Int }), [Int(port)], "no rule on an ephemeral port: \(all)")
        let udpRows = try connections(["--protocol", "udp", "--workload", client])
        XCTAssertFalse(udpRows.isEmpty)
        XCTAssertTrue(udpRows.allSatisfy { $0["protocol"] as? String == "udp" })

        for w in [client, serverWorkload] {
            let r = try cli(["mode", w, "enforce", "--socket", socket])
            XCTAssertEqual(r.status, 0, r.stderr)
        }
        XCTAssertEqual(try ask(port), "pong:ping", "the learnt flow, enforced")
        XCTAssertEqual(try ask(port, connected: true), "pong:ping")
        let other = port == 65535 ? port - 1 : port + 1
        XCTAssertEqual(try ask(other), "PermissionError", "sendto() to a new peer port")
        XCTAssertEqual(try ask(other, connected: true), "PermissionError", "connect() to a new peer port")
        XCTAssertEqual(try ask(port, source: "127.0.0.2"), "TimeoutError", "a datagram from outside the server's baseline is dropped")
        try waitFor("the denials") {
            let out = try connections(["--verdict", "denied", "--protocol", "udp", "--workload", client]).filter {
                $0["dport"] as? Int == Int(other) && $0["comm"] as? String == "python3" && $0["error"] as? String == "EPERM"
            }
            let inbound = try connections(["--verdict", "denied", "--protocol", "udp", "--direction", "in", "--workload", serverWorkload])
            return !out.isEmpty && inbound.contains { $0["pid"] as? Int == Int(server.pid) && $0["src"] as? String == "127.0.0.2" }
        }
        // Denials of one flow within a second: one event, the rest counted,
        // and the count shows in status.
        for _ in 0..<4 { XCTAssertEqual(try ask(other), "PermissionError") }
        let st = try cli(["status", "--socket", socket, "-o", "json"])
        let stj = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(st.stdout.utf8)) as? [String: Any])
        XCTAssertGreaterThan((stj["enforcement"] as? [String: Any])?["udp_denials_counted"] as? Int ?? 0, 0, st.stdout)
        XCTAssertEqual((stj["lost"] as? [String: Any])?["denials"] as? Int, 0)
        for w in [client, serverWorkload] { _ = try cli(["mode", w, "learn", "--socket", socket]) }
    }

    func testBadInputIsRefusedWithOneLine() throws {
        let agent = try startAgent()
        defer { agent.stop(signal: SIGKILL) }
        for args in [["--since", "yesterday"], ["--last", "0"], ["--last", "99999999999999999999"], ["--port", "0"],
                     ["--peer", "10.0.0.0/33"], ["--direction", "sideways"], ["--verdict", "maybe"], ["--follow", "--aggregate"]] {
            let r = try cli(["connections", "--socket", socket] + args)
            XCTAssertNotEqual(r.status, 0, "\(args)")
            XCTAssertFalse(r.stderr.isEmpty, "\(args)")
            XCTAssertFalse(r.stderr.contains("Fatal error"), "\(args): \(r.stderr)")
        }
        // The API itself refuses unknown fields and bad values with a JSON error.
        for query in ["bogus=1", "last=-5", "since=15x", "port=99999", "last=1&last=2", "peer=300.1.1.1"] {
            let (status, body) = try unixHTTPGet(socket: socket, path: "/v1/connections?" + query)
            XCTAssertEqual(status, 400, query)
            XCTAssertTrue(body.contains("\"error\""), "\(query): \(body)")
        }
        // No agent: one line, non-zero.
        let none = try cli(["status", "--socket", scratch + "/nothing.sock"])
        XCTAssertEqual(none.status, 1)
        XCTAssertEqual(none.stderr.split(separator: "\n").count, 1, none.stderr)
        XCTAssertTrue(none.stderr.contains("not running"), none.stderr)
        // Agent flags.
        for args in [["--metrics-address", "nowhere"], ["--cgroup-root", "/no/such/cgroup"], ["--log-level", "loud"],
                     ["--config", "/no/such/file.yaml"]] {
            let r = try cli(["agent", "--db", scratch + "/x.db", "--socket", scratch + "/x.sock", "--pin-root", pinRoot] + args)
            XCTAssertEqual(r.status, 1, "\(args): \(r.stderr)")
            XCTAssertEqual(r.stderr.split(separator: "\n").count, 1, "\(args): \(r.stderr)")
        }
        let badConfig = scratch + "/bad.yaml"
        try "databse: /tmp/x\nring_buffer_mib: 3\n".write(toFile: badConfig, atomically: true, encoding: .utf8)
        let r = try cli(["agent", "--config", badConfig])
        XCTAssertEqual(r.status, 1)
        XCTAssertTrue(r.stderr.contains("databse") && r.stderr.contains("ring_buffer_mib"), "every problem listed: \(r.stderr)")
    }

    // MARK: - helpers

    func metricValue(_ text: String, _ series: String) -> Double? {
        for line in text.split(separator: "\n") where line.hasPrefix(series + " ") {
            return Double(line.dropFirst(series.count + 1))
        }
        return nil
    }

    func httpGet(port: UInt16, path: String) throws -> String {
        let fd = try Net.connect(family: AF_INET, address: "127.0.0.1", port: port)
        XCTAssertGreaterThanOrEqual(fd, 0)
        return try exchange(fd: fd, path: path).body
    }

    func unixHTTPGet(socket: String, path: String) throws -> (Int, String) {
        let r = try exchange(fd: unixConnect(socket), path: path)
        return (r.status, r.body)
    }

    /// A connected Unix socket to `path`.
    func unixConnect(_ path: String) -> Int32 {
        let fd = Glibc.socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &addr.sun_path) { $0.copyBytes(from: Array(path.utf8) + [0]) }
        let ok = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
            Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
        XCTAssertEqual(ok, 0)
        return fd
    }

    /// One HTTP request; the server closes after answering (Connection: close).
    func exchange(fd: Int32, method: String = "GET", path: String, body: [UInt8] = []) throws -> (status: Int, body: String) {
        defer { close(fd) }
        var timeout = timeval(tv_sec: 10, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        let head = "\(method) \(path) HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: \(body.count)\r\n\r\n"
        let request = Array(head.utf8) + body
        var sent = 0
        while sent < request.count {
            let n = request[sent...].withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            if n <= 0 { break }
            sent += n
        }
        var data: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = read(fd, &buf, buf.count)
            if n <= 0 { break }
            data += buf[0..<n]
        }
        let text = String(decoding: data, as: UTF8.self)
        let status = Int(text.split(separator: " ").dropFirst().first ?? "") ?? 0
        let body = text.components(separatedBy: "\r\n\r\n").dropFirst().joined(separator: "\r\n\r\n")
        return (status, body)
    }
}
