import ConnGuardCore
import Foundation
import Glibc
import ConnGuardTestSupport
import XCTest

/// Issue 13, hostile input and faults, as a user meets them: the real CLI,
/// the real agent on its own subtree, socket, database and pin root.
extension AgentTests {
    /// One line on stderr, a non-zero exit, no crash.
    func assertOneLineRefusal(_ r: (stdout: String, stderr: String, status: Int32), saying text: String,
                              file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertNotEqual(r.status, 0, r.stderr, file: file, line: line)
        XCTAssertTrue(r.status == 1 || r.status == 64, "exit \(r.status) (a crash is 132/134): \(r.stderr)", file: file, line: line)
        XCTAssertEqual(r.stderr.split(separator: "\n").count, 1, r.stderr, file: file, line: line)
        XCTAssertTrue(r.stderr.contains(text), "expected '\(text)' in: \(r.stderr)", file: file, line: line)
        XCTAssertFalse(r.stderr.contains("Fatal error"), r.stderr, file: file, line: line)
    }

    /// An HTTP request on the agent's socket, any method, optional body.
    func unixHTTP(_ method: String, _ path: String, body: [UInt8] = []) throws -> (status: Int, body: String) {
        try exchange(fd: unixConnect(socket), method: method, path: path, body: body)
    }

    /// A small baseline for `workload`, imported through the CLI.
    func importBaseline(_ workload: String, mode: String = "learn", port: Int = 5432, extra: [String] = []) throws
        -> (stdout: String, stderr: String, status: Int32) {
        let file = scratch + "/import-\(UInt32.random(in: 0...UInt32.max)).yaml"
        try "workload: \"\(workload)\"\nmode: \(mode)\nrules:\n  - direction: out\n    peer: 10.1.2.3\n    port: \(port)\n"
            .write(toFile: file, atomically: true, encoding: .utf8)
        return try cli(["baseline", "import", file, "--socket", socket] + extra)
    }

    // MARK: - 1. Durations range-checked where they are parsed

    func testDurationsPastTheLimitAreOneLineAndTheLimitItselfWorks() throws {
        for d in ["20000w", "200000d", "10000000000"] {
            assertOneLineRefusal(try cli(["trace", "--duration", d]), saying: "100 years")
            assertOneLineRefusal(try cli(["baseline", "prune", "W", "--unused-for", d, "--socket", socket]), saying: "100 years")
            assertOneLineRefusal(try cli(["connections", "--since", d, "--socket", socket]), saying: "100 years")
        }
        for flag in ["--learning-period", "--quiet-period", "--event-retention"] {
            assertOneLineRefusal(try cli(["agent", "--db", db, "--socket", socket, "--pin-root", pinRoot, flag, "20000w"]),
                                 saying: "100 years")
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: db), "a refused agent made its database")
        let config = scratch + "/long.yaml"
        try "learning_period: 20000w\n".write(toFile: config, atomically: true, encoding: .utf8)
        assertOneLineRefusal(try cli(["agent", "--config", config, "--db", db, "--socket", socket, "--pin-root", pinRoot]),
                             saying: "learning_period: '20000w' is longer than the longest duration allowed, 100 years")
        // "-5m": said to be negative, not "Missing value".
        let negative = try cli(["connections", "--since", "-5m", "--socket", socket])
        assertOneLineRefusal(negative, saying: "negative")

        // At the limit: accepted, and nothing traps. trace keeps running
        // until told to stop.
        let trace = try Child(binary, ["trace", "--duration", "5200w", "-o", "json", "--pid", "1"])
        usleep(1_500_000)
        XCTAssertTrue(trace.process.isRunning, "trace with a 100-year duration died")
        trace.stop(signal: SIGTERM)
        XCTAssertEqual(trace.process.terminationStatus, 0)
        // The agent with 100-year periods runs, and prunes with a 100-year age
        // (the API's own check too).
        let agent = try startAgent(extra: ["--learning-period", "5200w", "--quiet-period", "5200w"])
        defer { agent.stop(signal: SIGKILL) }
        let workload = root.relativePath + "/imported"
        XCTAssertEqual(try importBaseline(workload).status, 0)
        let pruned = try cli(["baseline", "prune", workload, "--unused-for", "5200w", "--socket", socket])
        XCTAssertEqual(pruned.status, 0, pruned.stderr)
        XCTAssertTrue(pruned.stdout.contains("removed 0 rules"), pruned.stdout)
        let api = try unixHTTP("POST", "/v1/baseline/prune?workload=\(workload)&unused_for=20000w")
        XCTAssertEqual(api.status, 400)
        XCTAssertTrue(api.body.contains("100 years"), api.body)
        XCTAssertTrue(agent.process.isRunning, "the agent survived")
    }
}

extension AgentTests {
    // MARK: - 4. A cut-short answer is an error

    /// A server on a real Unix socket that answers like an agent dying
    /// mid-answer: a head, part of the body, then the connection closes.
    func startDyingServer(_ path: String, answer: String) throws -> Child {
        try Child("/usr/bin/python3", ["-c", """
            import socket, os, sys
            s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen(8)
            print("ready", flush=True)
            while True:
                c, _ = s.accept(); c.recv(65536); c.sendall(sys.argv[2].encode()); c.close()
            """, path, answer])
    }

    func testAnAnswerCutShortIsOneLineAndExit1() throws {
        let cases = [
            ("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 400\r\n\r\n{\"version\": \"0.1", ["status"]),
            ("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n40\r\n{\"workload\": \"a\", \"mode\": \"learn\", \"rules\": 1}\n", ["baseline", "list"]),
            ("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", ["connections"]),
            ("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n", ["mode", "w", "enforce"]),
        ]
        for (i, (answer, args)) in cases.enumerated() {
            let path = scratch + "/dying\(i).sock"
            let server = try startDyingServer(path, answer: answer)
            defer { server.stop(signal: SIGKILL) }
            XCTAssertEqual(server.readLine(), "ready")
            let r = try cli(args + ["--socket", path])
            assertOneLineRefusal(r, saying: "before its answer was complete")
            XCTAssertEqual(r.stdout, "", "\(args): nothing printed from a cut-short answer (no table header either)")
        }
    }

    // MARK: - 5. SIGTERM with followers open

    func testSIGTERMWithFollowersStopsWithinASecondAndFollowersSayTheAgentStopped() throws {
        let agent = try startAgent()
        defer { agent.stop(signal: SIGKILL) }
        let followers = try (0..<3).map { i in
            try Child(binary, ["connections", "--follow", "--socket", socket] + (i == 0 ? ["-o", "json"] : []))
        }
        defer { followers.forEach { $0.stop(signal: SIGKILL) } }
        usleep(1_000_000)  // connected and streaming
        XCTAssertTrue(followers.allSatisfy { $0.process.isRunning })
        let start = Date()
        agent.stop(signal: SIGTERM)
        let took = Date().timeIntervalSince(start)
        XCTAssertLessThan(took, 1.0, "SIGTERM took \(took) s with followers open")
        XCTAssertEqual(agent.process.terminationStatus, 0)
        for f in followers {
            f.process.waitUntilExit()
            let err = String(decoding: f.stderr.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            XCTAssertEqual(f.process.terminationStatus, 1, err)
            XCTAssertEqual(err.split(separator: "\n").count, 1, err)
            XCTAssertTrue(err.contains("the agent stopped"), err)
        }
        print("SIGTERM with 3 followers: \(took) s")
    }
}

extension AgentTests {
    // MARK: - 2. YAML with limits

    /// "Billion laughs": `levels` anchors, each a list of 10 aliases of the
    /// one before, 10^levels nodes from a few hundred bytes.
    static func aliasBomb(levels: Int = 8) -> String {
        var text = "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n"
        for i in 1...levels {
            text += "a\(i): &a\(i) [" + Array(repeating: "*a\(i - 1)", count: 10).joined(separator: ", ") + "]\n"
        }
        return text
    }

    func testAnAliasBombIsRefusedQuicklyWithOneLine() throws {
        let agent = try startAgent()
        defer { agent.stop(signal: SIGKILL) }
        let bomb = Self.aliasBomb()
        XCTAssertLessThan(bomb.utf8.count, 600)
        let file = scratch + "/bomb.yaml"
        try bomb.write(toFile: file, atomically: true, encoding: .utf8)
        let start = Date()
        let r = try cli(["baseline", "import", file, "--socket", socket])
        let took = Date().timeIntervalSince(start)
        assertOneLineRefusal(r, saying: "expands to more than 2000000 nodes")
        XCTAssertLessThan(took, 5, "the refusal took \(took) s")
        print("alias bomb (\(bomb.utf8.count) bytes) refused in \(took) s")
        // Nested too deep, within libyaml's own limit.
        let deep = scratch + "/deep.yaml"
        try ("workload: w\nmode: learn\nrules: " + String(repeating: "[", count: 100) + String(repeating: "]", count: 100) + "\n")
            .write(toFile: deep, atomically: true, encoding: .utf8)
        assertOneLineRefusal(try cli(["baseline", "import", deep, "--socket", socket]), saying: "nested deeper than 32 levels")
        // The agent is unharmed, and an honest file with an alias imports.
        let honest = scratch + "/alias.yaml"
        let workload = root.relativePath + "/aliased"
        try """
            workload: "\(workload)"
            mode: learn
            rules:
              - &r {direction: out, peer: 10.1.2.3, port: 443}
              - {direction: out, peer: 10.1.2.4, port: 443}
            """.write(toFile: honest, atomically: true, encoding: .utf8)
        let ok = try cli(["baseline", "import", honest, "--socket", socket])
        XCTAssertEqual(ok.status, 0, ok.stderr)
        XCTAssertTrue(ok.stdout.contains("imported 2 rules"), ok.stdout)
        XCTAssertEqual(try rules(workload, "out", port: 443).count, 2)
        // A config file is read the same way.
        let config = scratch + "/bomb-config.yaml"
        try bomb.write(toFile: config, atomically: true, encoding: .utf8)
        assertOneLineRefusal(try cli(["agent", "--config", config, "--db", scratch + "/c.db", "--socket", scratch + "/c.sock",
                                      "--pin-root", pinRoot + "-c"]), saying: "expands to more than")
    }
}

extension AgentTests {
    // MARK: - 6. --socket-group leaves a folder it did not make alone

    func testSocketGroupChangesOnlyAFolderTheAgentMade() throws {
        // A folder that was there: the agent must not chown or chmod it.
        let shared = scratch + "/shared"
        XCTAssertEqual(mkdir(shared, 0o1777), 0)
        chmod(shared, 0o1777)
        var before = stat()
        XCTAssertEqual(stat(shared, &before), 0)
        let sharedSocket = shared + "/api.sock"
        let agent = try Child(binary, ["agent", "--db", db, "--socket", sharedSocket, "--socket-group", "nogroup",
                                       "--cgroup-root", root.relativePath, "--log-level", "warning", "--pin-root", pinRoot])
        defer { agent.stop(signal: SIGKILL) }
        try waitFor("the socket") { (try? cli(["status", "--socket", sharedSocket]).status) == 0 }
        var after = stat()
        XCTAssertEqual(stat(shared, &after), 0)
        XCTAssertEqual(after.st_mode, before.st_mode, "mode of a folder the agent did not make changed")
        XCTAssertEqual(after.st_uid, before.st_uid)
        XCTAssertEqual(after.st_gid, before.st_gid, "group of a folder the agent did not make changed")
        // The socket itself is the agent's: 0660, the group's.
        var sock = stat()
        XCTAssertEqual(stat(sharedSocket, &sock), 0)
        XCTAssertEqual(sock.st_mode & 0o777, 0o660)
        XCTAssertEqual(sock.st_gid, getgrnam("nogroup").pointee.gr_gid)
        agent.stop(signal: SIGTERM)

        // A folder the agent makes is its own: 0750 and the group's.
        let made = scratch + "/made"
        let second = try Child(binary, ["agent", "--db", db, "--socket", made + "/api.sock", "--socket-group", "nogroup",
                                        "--cgroup-root", root.relativePath, "--log-level", "warning", "--pin-root", pinRoot])
        defer { second.stop(signal: SIGKILL) }
        try waitFor("the socket") { (try? cli(["status", "--socket", made + "/api.sock"]).status) == 0 }
        var m = stat()
        XCTAssertEqual(stat(made, &m), 0)
        XCTAssertEqual(m.st_mode & 0o777, 0o750)
        XCTAssertEqual(m.st_gid, getgrnam("nogroup").pointee.gr_gid)
        second.stop(signal: SIGTERM)
    }

    // MARK: - 10. One database, one agent

    func testASecondAgentOnTheSameDatabaseIsRefusedBeforeItChangesAnything() throws {
        let agent = try startAgent()
        defer { agent.stop(signal: SIGKILL) }
        let otherPins = pinRoot + "-db"
        let otherSocket = scratch + "/other.sock"
        var before = stat()
        XCTAssertEqual(stat(db, &before), 0)
        let r = try cli(["agent", "--db", db, "--socket", otherSocket, "--pin-root", otherPins, "--cgroup-root", root.relativePath])
        XCTAssertEqual(r.status, 1, r.stderr)
        XCTAssertEqual(r.stderr.split(separator: "\n").count, 1, r.stderr)
        XCTAssertTrue(r.stderr.contains("another agent is running with the database \(db)"), r.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: otherPins), "the refused agent left its pin root")
        XCTAssertFalse(FileManager.default.fileExists(atPath: otherSocket), "the refused agent made a socket")
        var after = stat()
        XCTAssertEqual(stat(db, &after), 0)
        XCTAssertEqual(after.st_mtim.tv_sec, before.st_mtim.tv_sec)
        XCTAssertEqual(after.st_size, before.st_size)
        XCTAssertEqual(try cli(["status", "--socket", socket]).status, 0, "the first agent still answers")
        // Once the first has stopped (even by kill -9), the database is free.
        agent.stop(signal: SIGKILL)
        let next = try startAgent()
        next.stop(signal: SIGTERM)
        XCTAssertEqual(next.process.terminationStatus, 0)
    }
}

extension AgentTests {
    // MARK: - 11. Control characters and bidi overrides never reach the terminal raw

    func testHostileNamesAreEscapedInTablesStatusAndErrors() throws {
        let agent = try startAgent()
        defer { agent.stop(signal: SIGKILL) }
        // C1 CSI (U+009B) and a right-to-left override: allowed in a name, shown escaped.
        let workload = root.relativePath + "/evil\u{9b}2J\u{202e}txt.exe"
        // YAML takes these only as escapes in a double-quoted scalar.
        let imported = try importBaseline(root.relativePath + "/evil\\u009b2J\\u202etxt.exe")
        XCTAssertEqual(imported.status, 0, imported.stderr)
        let hostile: [Unicode.Scalar] = ["\u{1b}", "\r", "\u{9b}", "\u{7f}", "\u{202a}", "\u{202e}", "\u{2066}", "\u{2069}"]
        func assertClean(_ text: String, _ what: String, file: StaticString = #filePath, line: UInt = #line) {
            for c in hostile { XCTAssertFalse(text.unicodeScalars.contains(c), "\(what) shows U+\(String(c.value, radix: 16)) raw: \(text.debugDescription)", file: file, line: line) }
        }
        let list = try cli(["baseline", "list", "--socket", socket])
        XCTAssertEqual(list.status, 0, list.stderr)
        assertClean(list.stdout, "baseline list")
        XCTAssertTrue(list.stdout.contains("evil\\u{9b}2J\\u{202e}txt.exe"), list.stdout)
        let show = try cli(["baseline", "show", workload, "--socket", socket])
        assertClean(show.stdout, "baseline show")
        let status = try cli(["status", "--socket", socket])
        XCTAssertEqual(status.status, 0, status.stderr)
        assertClean(status.stdout, "status (its audit line names the workload)")
        XCTAssertTrue(status.stdout.contains("\\u{202e}"), status.stdout)
        // JSON keeps the name exactly (JSON may carry these characters; its
        // escaper escapes what RFC 8259 requires).
        let json = try cli(["baseline", "list", "--socket", socket, "-o", "json"])
        let names = json.stdout.split(separator: "\n").compactMap {
            (try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any])?["workload"] as? String
        }
        XCTAssertTrue(names.contains(workload), json.stdout)
        // Errors that quote what the user typed: ESC and CR are not echoed.
        for args in [["mode", "x\u{1b}[31mred\rforged", "enforce"], ["baseline", "show", "x\u{1b}]0;title\u{7}"],
                     ["connections", "--since", "\u{1b}[2J"], ["connections", "--workload", "\u{9b}1;1H", "--peer", "1.2.3.4/99"]] {
            let r = try cli(args + ["--socket", socket])
            XCTAssertNotEqual(r.status, 0, "\(args)")
            XCTAssertEqual(r.stderr.split(separator: "\n").count, 1, r.stderr)
            assertClean(r.stderr, "error for \(args)")
        }
    }
}

/// A real unprivileged user (and groups) in the user database, for the
/// length of a test.
final class TestUser {
    let name: String
    let uid: uid_t
    let gid: gid_t
    private var groups: [String] = []

    static func run(_ args: [String]) throws {
        let c = try Child(args[0], Array(args.dropFirst()))
        c.process.waitUntilExit()
        guard c.process.terminationStatus == 0 else {
            throw FileError(path: args.joined(separator: " "), errno: EINVAL)
        }
    }

    static func makeGroup() throws -> String {
        let name = "cgt\(UInt32.random(in: 0...99_999_999))"
        try run(["/usr/sbin/groupadd", name])
        return name
    }

    static func removeGroup(_ name: String) { try? run(["/usr/sbin/groupdel", name]) }

    /// A user whose supplementary groups (in /etc/group) are `groups`.
    init(groups: [String]) throws {
        name = "cgu\(UInt32.random(in: 0...99_999_999))"
        var args = ["/usr/sbin/useradd", "-M", "-N", "-g", "nogroup", "-s", "/usr/sbin/nologin"]
        if !groups.isEmpty { args += ["-G", groups.joined(separator: ",")] }
        try Self.run(args + [name])
        let pw = try XCTUnwrap(getpwnam(name))
        uid = pw.pointee.pw_uid
        gid = pw.pointee.pw_gid
    }

    func remove() { try? Self.run(["/usr/sbin/userdel", name]) }

    /// argv that runs `command` as this user: its own uid and primary group,
    /// and its supplementary groups from the group database, or `kernelGroups`
    /// instead (what the kernel sees, whatever the database says).
    func argv(_ command: [String], kernelGroups: [String]? = nil) -> [String] {
        let groups = kernelGroups.map { $0.isEmpty ? ["--clear-groups"] : ["--groups=" + $0.joined(separator: ",")] } ?? ["--init-groups"]
        return ["/usr/bin/setpriv", "--reuid=\(uid)", "--regid=\(gid)"] + groups + ["--inh-caps=-all", "--"] + command
    }
}

extension AgentTests {
    // MARK: - 7. Who is asking comes from the kernel; readers and admins

    func cliAs(_ user: TestUser, _ args: [String], kernelGroups: [String]? = nil) throws -> (stdout: String, stderr: String, status: Int32) {
        let argv = user.argv([binary] + args + ["--socket", socket], kernelGroups: kernelGroups)
        return try cliArgv(argv)
    }

    func cliArgv(_ argv: [String]) throws -> (stdout: String, stderr: String, status: Int32) {
        let c = try Child(argv[0], Array(argv.dropFirst()))
        let out = c.stdout.fileHandleForReading.readDataToEndOfFile()
        let err = c.stderr.fileHandleForReading.readDataToEndOfFile()
        c.process.waitUntilExit()
        return (String(decoding: out, as: UTF8.self), String(decoding: err, as: UTF8.self), c.process.terminationStatus)
    }

    func testReadersQueryAdminsChangeAndTheAuditNamesTheKernelsUser() throws {
        let readers = try TestUser.makeGroup()
        defer { TestUser.removeGroup(readers) }
        let admins = try TestUser.makeGroup()
        defer { TestUser.removeGroup(admins) }
        let reader = try TestUser(groups: [readers])
        defer { reader.remove() }
        let admin = try TestUser(groups: [readers, admins])  // readers: to reach the socket
        defer { admin.remove() }
        let outsider = try TestUser(groups: [])
        defer { outsider.remove() }

        let agent = try startAgent(extra: ["--socket-group", readers, "--admin-group", admins])
        defer { agent.stop(signal: SIGKILL) }
        let workload = root.relativePath + "/guarded"
        XCTAssertEqual(try importBaseline(workload).status, 0)

        // A reader: queries work; changes are refused with 403 and one line.
        for args in [["status"], ["baseline", "list"], ["baseline", "show", workload], ["connections", "--last", "5"]] {
            let r = try cliAs(reader, args)
            XCTAssertEqual(r.status, 0, "\(args): \(r.stderr)")
        }
        let file = scratch + "/reader.yaml"
        try "workload: \"\(workload)\"\nmode: enforce\nrules: []\n".write(toFile: file, atomically: true, encoding: .utf8)
        chmod(file, 0o644)
        for args in [["mode", workload, "monitor"], ["baseline", "import", file], ["baseline", "prune", workload, "--unused-for", "1s"]] {
            let r = try cliAs(reader, args)
            assertOneLineRefusal(r, saying: "may not change modes or baselines")
            XCTAssertTrue(r.stderr.contains(admins), r.stderr)
        }
        XCTAssertEqual(try rules(workload, "out", port: 5432).count, 1, "the refused import and prune changed nothing")
        let raw = try reader.argv(["/usr/bin/python3", "-c", """
            import socket, sys
            s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])
            s.sendall(b"POST /v1/mode?workload=x&mode=enforce HTTP/1.1\\r\\nHost: l\\r\\nConnection: close\\r\\nContent-Length: 0\\r\\n\\r\\n")
            print(s.makefile("rb").read().decode())
            """, socket])
        let http = try cliArgv(raw)
        XCTAssertTrue(http.stdout.hasPrefix("HTTP/1.1 403"), http.stdout)
        XCTAssertTrue(http.stdout.contains("{\"error\":"), http.stdout)

        // Claiming to be someone else in the request is refused, not believed.
        let claim = try unixHTTP("POST", "/v1/mode?workload=\(workload)&mode=learn&who=mallory")
        XCTAssertEqual(claim.status, 400, claim.body)
        XCTAssertTrue(claim.body.contains("unknown parameter 'who'"), claim.body)

        // Kernel groups that the database does not back: the socket lets it
        // in, the agent does not.
        let sneaky = try cliAs(outsider, ["status"], kernelGroups: [readers])
        assertOneLineRefusal(sneaky, saying: "may not query the agent")
        // No group at all: the socket itself refuses.
        let locked = try cliAs(outsider, ["status"], kernelGroups: [])
        assertOneLineRefusal(locked, saying: "no permission")

        // An admin: allowed, and audited under the kernel's uid, name and pid.
        // SUDO_USER is no longer believed.
        let argv = ["/usr/bin/env", "SUDO_USER=mallory"] + [binary, "mode", workload, "monitor", "--socket", socket]
        let changed = try cliArgv(admin.argv(argv))
        XCTAssertEqual(changed.status, 0, changed.stderr)
        try "workload: \"\(workload)\"\nmode: enforce\nrules:\n  - {direction: out, peer: 10.9.9.9, port: 80}\n"
            .write(toFile: file, atomically: true, encoding: .utf8)
        let imported = try cliAs(admin, ["baseline", "import", file])
        XCTAssertEqual(imported.status, 0, imported.stderr)
        let pruned = try cliAs(admin, ["baseline", "prune", workload, "--unused-for", "100w"])
        XCTAssertEqual(pruned.status, 0, pruned.stderr)
        _ = try cli(["mode", workload, "learn", "--socket", socket])  // root; and nothing left enforced

        let (status, body) = try unixHTTPGet(socket: socket, path: "/v1/audit?limit=20&workload=" + workload)
        XCTAssertEqual(status, 200, body)
        let entries = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(body.utf8)) as? [[String: Any]])
        let byAdmin = entries.filter { ($0["who"] as? String)?.hasPrefix("\(admin.name) (uid \(admin.uid), pid ") == true }
        XCTAssertEqual(Set(byAdmin.compactMap { $0["action"] as? String }), ["mode", "import", "prune"], "\(entries)")
        // The import changed monitor -> enforce: audited as a mode change too.
        XCTAssertTrue(byAdmin.contains { $0["action"] as? String == "mode" && ($0["detail"] as? String ?? "").contains("monitor -> enforce (import)") },
                      "\(byAdmin)")
        XCTAssertFalse(body.contains("mallory"), body)
        XCTAssertTrue(entries.contains { ($0["who"] as? String)?.hasPrefix("root (uid 0, pid ") == true }, "\(entries)")
    }
}

extension AgentTests {
    // MARK: - 12. Smaller fixes

    /// An agent with exactly these arguments, up when `status` answers on `socketPath`.
    func startAgent(arguments: [String], socket socketPath: String) throws -> Child {
        let agent = try Child(binary, ["agent"] + arguments)
        let deadline = Date().addingTimeInterval(20)
        while Date() < deadline {
            if (try? cli(["status", "--socket", socketPath, "-o", "json"]).status) == 0 { return agent }
            if !agent.process.isRunning { break }
            usleep(50_000)
        }
        agent.stop(signal: SIGKILL)
        let err = String(decoding: agent.stderr.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        XCTFail("agent did not come up: \(err)")
        throw FileError(path: socketPath, errno: ETIMEDOUT)
    }

    func testAnAbsoluteCgroupRootIsTheSameSubtree() throws {
        let agent = try startAgent(arguments: ["--db", db, "--socket", socket, "--cgroup-root", root.path,
                                               "--log-level", "warning", "--pin-root", pinRoot], socket: socket)
        defer { agent.stop(signal: SIGKILL) }
        let status = try cli(["status", "--socket", socket, "-o", "json"])
        let s = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(status.stdout.utf8)) as? [String: Any])
        XCTAssertEqual(s["cgroup_root"] as? String, root.relativePath)
        XCTAssertEqual((s["enforcement"] as? [String: Any])?["cgroup"] as? String, root.path)
        let (server, port) = try startServer()
        defer { server.stop(signal: SIGKILL) }
        try connectFromClients(port: port)
        try waitFor("the connect, attributed") {
            try connections(["--port", String(port), "--direction", "out"]).first?["workload"] as? String == clients.relativePath
        }
        // Outside the mount: refused, one line.
        assertOneLineRefusal(try cli(["agent", "--db", scratch + "/o.db", "--socket", scratch + "/o.sock", "--pin-root", pinRoot + "-o",
                                      "--cgroup-root", "/etc"]), saying: "--cgroup-root")
    }

    func testSmallerHostileInputs() throws {
        let agent = try startAgent(extra: ["--api-idle-timeout", "1s"])
        defer { agent.stop(signal: SIGKILL) }
        // Times far ahead, offsets past ±23:59, negative values.
        assertOneLineRefusal(try cli(["connections", "--since", "9999-01-01T00:00:00Z", "--socket", socket]), saying: "too far ahead")
        assertOneLineRefusal(try cli(["connections", "--since", "2026-11-27T03:09:00+24:00", "--socket", socket]),
                             saying: "the UTC offset must be between -23:59 and +23:59")
        assertOneLineRefusal(try cli(["connections", "--port", "-1", "--socket", socket]), saying: "--port must be from 1 to 65535")
        assertOneLineRefusal(try cli(["baseline", "diff", "w", "--since", "-5m", "--socket", socket]), saying: "negative")
        let api = try unixHTTP("GET", "/v1/connections?since=2026-11-27T03:09:00-25:00")
        XCTAssertEqual(api.status, 400)
        XCTAssertTrue(api.body.contains("UTC offset"), api.body)

        // --socket at something that is not a socket.
        let file = scratch + "/not-a-socket"
        try "keep me\n".write(toFile: file, atomically: true, encoding: .utf8)
        let notSocket = try cli(["status", "--socket", file])
        assertOneLineRefusal(notSocket, saying: "is not a socket")
        XCTAssertFalse(notSocket.stderr.contains("Connection refused"), notSocket.stderr)
        assertOneLineRefusal(try cli(["agent", "--db", scratch + "/n.db", "--socket", file, "--pin-root", pinRoot + "-n"]),
                             saying: "exists and is not a socket")
        XCTAssertEqual(try String(contentsOfFile: file, encoding: .utf8), "keep me\n", "the agent left the file alone")

        // 404 and 405 with JSON bodies.
        let missing = try unixHTTP("GET", "/v2/nothing")
        XCTAssertEqual(missing.status, 404)
        XCTAssertTrue(missing.body.contains("\"error\""), missing.body)
        let wrong = try unixHTTP("DELETE", "/v1/status")
        XCTAssertEqual(wrong.status, 405)
        XCTAssertTrue(wrong.body.contains("\"error\""), wrong.body)
        let postToGet = try unixHTTP("POST", "/v1/connections")
        XCTAssertEqual(postToGet.status, 405, postToGet.body)

        // The agent's --help says enforcement stays pinned.
        let help = try cli(["agent", "--help"])
        XCTAssertTrue(help.stdout.contains("enforcement stays pinned"), help.stdout)
        XCTAssertTrue(help.stdout.contains("unless --fail-open"), help.stdout)

        // Idle API connections are closed; a --follow stream that is sending is not.
        let fd = Glibc.socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &addr.sun_path) { $0.copyBytes(from: Array(socket.utf8) + [0]) }
        XCTAssertEqual(withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
            Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }, 0)
        _ = "GET /v1/sta".withCString { write(fd, $0, strlen($0)) }  // half a request, then nothing
        var timeout = timeval(tv_sec: 10, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        let start = Date()
        var byte: UInt8 = 0
        XCTAssertEqual(read(fd, &byte, 1), 0, "the agent closes an idle connection")
        XCTAssertLessThan(Date().timeIntervalSince(start), 5)
        let follower = try Child(binary, ["connections", "--follow", "--socket", socket])
        defer { follower.stop(signal: SIGKILL) }
        usleep(3_000_000)
        XCTAssertTrue(follower.process.isRunning, "a --follow stream was closed as idle")
    }

    func testAFullDiskIsNamedInTheLog() throws {
        let disk = scratch + "/small"
        XCTAssertEqual(mkdir(disk, 0o700), 0)
        XCTAssertEqual(try Child("/bin/mount", ["-t", "tmpfs", "-o", "size=4m", "tmpfs", disk]).waitStatus(), 0)
        defer { _ = try? Child("/bin/umount", ["-l", disk]).waitStatus() }
        let diskSocket = scratch + "/full.sock"
        let agent = try startAgent(arguments: ["--db", disk + "/db.sqlite", "--socket", diskSocket, "--cgroup-root", root.relativePath,
                                               "--log-level", "warning", "--pin-root", pinRoot,
                                               "--individual-events-per-second", "0"], socket: diskSocket)
        defer { agent.stop(signal: SIGKILL) }
        // Fill what is left.
        _ = try Child("/bin/dd", ["if=/dev/zero", "of=" + disk + "/filler", "bs=64k"]).waitStatus()
        let (server, port) = try startServer()
        defer { server.stop(signal: SIGKILL) }
        try connectFromClients(port: port, count: 3000)
        var status: [String: Any] = [:]
        try waitFor("failed writes", timeout: 20) {
            let r = try cli(["status", "--socket", diskSocket, "-o", "json"])
            status = (try? JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any]) ?? [:]
            return ((status["lost"] as? [String: Any])?["write_failed"] as? Int ?? 0) > 0
        }
        usleep(2_500_000)  // the next tick logs it
        agent.stop(signal: SIGTERM)
        let log = String(decoding: agent.stderr.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        XCTAssertTrue(log.contains("the disk holding the database is full (ENOSPC"), log)
    }
}

extension Child {
    /// Waits for the process; its exit status.
    func waitStatus() -> Int32 {
        process.waitUntilExit()
        return process.terminationStatus
    }
}
