import ConnGuardCore
import Foundation
import Glibc
import ConnGuardTestSupport
import XCTest

/// Issue 13 (3, 9): a baseline change is one transaction over the database
/// and the kernel, a node is never bricked by its own database, and learning
/// keeps failed connects and scans out of the baseline.
extension AgentTests {
    /// A baseline file of `count` outbound address rules.
    func bigBaseline(_ workload: String, mode: String, count: Int, base: Int = 0) throws -> String {
        var text = "workload: \"\(workload)\"\nmode: \(mode)\nrules:\n"
        for i in base..<(base + count) { text += "  - {direction: out, peer: 198.19.\(i / 250).\(i % 250 + 1), port: 443}\n" }
        let file = scratch + "/big-\(workload.count)-\(count)-\(base)-\(mode).yaml"
        try text.write(toFile: file, atomically: true, encoding: .utf8)
        return file
    }

    func statusObject() throws -> [String: Any] {
        let r = try cli(["status", "--socket", socket, "-o", "json"])
        return try XCTUnwrap(JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any])
    }

    func kernelRules() throws -> [String: Int] {
        let e = try statusObject()["enforcement"] as? [String: Any]
        return (e?["kernel_rules"] as? [String: Int]) ?? [:]
    }

    func ruleCount(_ workload: String) throws -> Int? {
        let r = try cli(["baseline", "show", workload, "--socket", socket, "-o", "json"])
        guard r.status == 0, let o = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any] else { return nil }
        return (o["rules"] as? [Any])?.count
    }

    func testABaselineThatDoesNotFitTheKernelIsRefusedWholeAndNeverBricksTheNode() throws {
        var agent = try startAgent(extra: ["--max-kernel-rules", "2048"])
        XCTAssertEqual(try kernelRules()["address_capacity"], 2048)
        // Only enforced workloads' rules are in the kernel: a large learn
        // baseline takes no room there.
        XCTAssertEqual(try cli(["baseline", "import", try bigBaseline("big", mode: "learn", count: 3000), "--socket", socket]).status, 0)
        XCTAssertEqual(try kernelRules()["address"], 0)
        // ... and cannot be enforced: refused, nothing changed.
        let refusedMode = try cli(["mode", "big", "enforce", "--socket", socket])
        assertOneLineRefusal(refusedMode, saying: "cannot take big's 3000 rules")
        XCTAssertTrue(try cli(["baseline", "show", "big", "--socket", socket]).stdout.contains("mode: learn"))
        // Two that fit alone, not together: the second import is refused whole.
        XCTAssertEqual(try cli(["baseline", "import", try bigBaseline("one", mode: "enforce", count: 1200), "--socket", socket]).status, 0)
        XCTAssertEqual(try kernelRules()["address"], 1200)
        let second = try cli(["baseline", "import", try bigBaseline("two", mode: "enforce", count: 1200, base: 1200), "--socket", socket])
        assertOneLineRefusal(second, saying: "nothing was changed")
        XCTAssertNil(try ruleCount("two"), "the refused import left no baseline")
        XCTAssertEqual(try kernelRules()["address"], 1200, "nor any rule in the kernel")
        let audit = try cli(["status", "--socket", socket]).stdout
        XCTAssertFalse(audit.contains("import 1200 rules two"), audit)
        // Replacing the enforced one with a larger one that fits: fine.
        XCTAssertEqual(try cli(["baseline", "import", try bigBaseline("one", mode: "enforce", count: 1900), "--socket", socket]).status, 0)
        XCTAssertEqual(try kernelRules()["address"], 1900)
        // Leaving enforce frees its room.
        XCTAssertEqual(try cli(["mode", "one", "monitor", "--socket", socket]).status, 0)
        XCTAssertEqual(try kernelRules()["address"], 0)
        XCTAssertEqual(try cli(["mode", "one", "enforce", "--socket", socket]).status, 0)
        XCTAssertEqual(try cli(["baseline", "import", try bigBaseline("two", mode: "learn", count: 1000, base: 2000), "--socket", socket]).status, 0)
        agent.stop(signal: SIGTERM)

        // The database now holds more enforced rules than a smaller kernel
        // map takes: after the kill-switch (new maps, smaller), the agent
        // still starts, enforces what fits whole, and says what it held back.
        XCTAssertEqual(try cli(["kill-switch", "--pin-root", pinRoot, "--pin-root-only"]).status, 0)
        agent = try startAgent(extra: ["--max-kernel-rules", "1024"])
        let s = try statusObject()
        let enforcement = try XCTUnwrap(s["enforcement"] as? [String: Any])
        XCTAssertEqual(enforcement["held_back"] as? [String], ["one"], "\(enforcement)")
        XCTAssertEqual(try kernelRules()["address"], 0)
        XCTAssertTrue(try cli(["status", "--socket", socket]).stdout.contains("held back"))
        let metrics = try httpGet(port: metricsPort, path: "/metrics")
        XCTAssertTrue(metrics.contains("connguard_workloads_held_back 1"), metrics)
        // Room is made (a smaller baseline): enforced again, at once.
        XCTAssertEqual(try cli(["baseline", "import", try bigBaseline("one", mode: "enforce", count: 500), "--socket", socket]).status, 0)
        XCTAssertEqual((try statusObject()["enforcement"] as? [String: Any])?["held_back"] as? [String], [])
        XCTAssertEqual(try kernelRules()["address"], 500)
        agent.stop(signal: SIGTERM)

        // Pins of another size are adopted as they are (they enforce now).
        agent = try startAgent(extra: ["--max-kernel-rules", "4096"])
        XCTAssertEqual(try kernelRules()["address_capacity"], 1024)
        XCTAssertEqual(try kernelRules()["address"], 500)
        agent.stop(signal: SIGTERM)
    }

    func testLearningKeepsFailedConnectsAndScansOutOfTheBaseline() throws {
        let agent = try startAgent(extra: ["--max-new-rules-per-minute", "20"])
        defer { agent.stop(signal: SIGKILL) }
        let workload = clients.relativePath
        // A scan of closed ports: every connect refused, none learnt.
        var closed: [UInt16] = []
        for _ in 0..<200 {
            let (fd, p) = try Net.listener(address: "127.0.0.1")
            close(fd)
            closed.append(p)
        }
        let scan = "import socket\nfor p in \(closed):\n    try:\n        socket.create_connection(('127.0.0.1', p), timeout=1).close()\n    except OSError:\n        pass\n"
        let c = try Child("/bin/sh", ["-c", "echo $$ > \(clients.path)/cgroup.procs && exec python3 -c \"$0\"", scan])
        c.process.waitUntilExit()
        try waitFor("the refused connects stored") {
            try connections(["--workload", workload, "--aggregate"]).reduce(0) { $0 + ($1["failed"] as? Int ?? 0) } >= 200
        }
        XCTAssertEqual(try ruleCount(workload) ?? 0, 0, "refused connects are not a baseline")

        // Established connections to more new peers than the limit in a minute: learning stops.
        var servers: [Int32] = []
        defer { servers.forEach { close($0) } }
        var ports: [UInt16] = []
        for _ in 0..<40 {
            let (fd, p) = try Net.listener(address: "127.0.0.1")
            servers.append(fd)
            ports.append(p)
        }
        let many = "import socket\nfor p in \(ports):\n    socket.create_connection(('127.0.0.1', p)).close()\n"
        let m = try Child("/bin/sh", ["-c", "echo $$ > \(clients.path)/cgroup.procs && exec python3 -c \"$0\"", many])
        m.process.waitUntilExit()
        try waitFor("learning stopped") { try cli(["baseline", "show", workload, "--socket", socket]).stdout.contains("learning stopped") }
        XCTAssertEqual(try ruleCount(workload), 20, "no more than the limit")
        let list = try cli(["baseline", "list", "--socket", socket]).stdout
        XCTAssertTrue(list.contains("*"), "marked incomplete: \(list)")
        XCTAssertTrue(try cli(["status", "--socket", socket]).stdout.contains("learning stopped"))
        // The operator starts learning again.
        XCTAssertEqual(try cli(["mode", workload, "learn", "--socket", socket]).status, 0)
        try connectFromClients(port: ports[39])
        try waitFor("learning again") { try ruleCount(workload) == 21 }
        XCTAssertFalse(try cli(["baseline", "show", workload, "--socket", socket]).stdout.contains("learning stopped"))
    }
}
