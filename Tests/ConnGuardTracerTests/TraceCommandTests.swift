import ConnGuardCore
import ConnGuardTracer
import Foundation
import Glibc
import ConnGuardTestSupport
import XCTest

/// `connguard trace` as a user runs it: the built binary, real connections.
final class TraceCommandTests: XCTestCase {
    var binary: String { productsDirectory() + "/connguard" }

    /// Starts `connguard trace` and waits until it has attached (--verbose
    /// prints the hooks to stderr once they are attached).
    func startTrace(_ args: [String]) throws -> Child {
        let child = try Child(binary, ["trace", "--verbose"] + args)
        let fd = child.stderr.fileHandleForReading.fileDescriptor
        var seen = ""
        let deadline = Date().addingTimeInterval(15)
        while !seen.contains("hook ") && Date() < deadline {
            var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            if poll(&pfd, 1, 100) > 0 {
                var buf = [UInt8](repeating: 0, count: 4096)
                let n = read(fd, &buf, buf.count)
                if n <= 0 { break }
                seen += String(decoding: buf[0..<n], as: UTF8.self)
            }
        }
        guard seen.contains("hook ") else {
            child.stop(signal: SIGKILL)
            XCTFail("connguard trace did not attach: \(seen)")
            throw FileError(path: binary, errno: EIO)
        }
        return child
    }

    func finish(_ child: Child) -> (stdout: String, stderr: String, status: Int32) {
        kill(child.pid, SIGINT)
        child.process.waitUntilExit()
        let out = String(decoding: child.stdout.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        let err = String(decoding: child.stderr.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        return (out, err, child.process.terminationStatus)
    }

    func testJSONOutputWithPortFilter() throws {
        try requireRoot()
        let (lfd, port) = try Net.listener(family: AF_INET, address: "127.0.0.1")
        defer { close(lfd) }
        let (otherFD, otherPort) = try Net.listener(family: AF_INET, address: "127.0.0.1")
        defer { close(otherFD) }
        let child = try startTrace(["-o", "json", "--port", String(port)])
        for p in [port, otherPort] {
            let cfd = try Net.connect(family: AF_INET, address: "127.0.0.1", port: p)
            close(accept(p == port ? lfd : otherFD, nil, nil))
            close(cfd)
        }
        usleep(300_000)
        let result = finish(child)
        XCTAssertEqual(result.status, 0, result.stderr)
        let lines = result.stdout.split(separator: "\n")
        XCTAssertEqual(lines.count, 2, "only the filtered port's connect and accept: \(result.stdout)")
        var events: [String] = []
        for line in lines {
            let obj = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
            for key in ["time", "event", "outcome", "pid", "comm", "uid", "cgroup_id", "family", "src", "sport", "dst", "dport"] {
                XCTAssertNotNil(obj[key], "missing \(key) in \(line)")
            }
            XCTAssertEqual(obj["dport"] as? Int, Int(port))
            XCTAssertEqual(obj["pid"] as? Int, Int(getpid()))
            events.append(obj["event"] as? String ?? "")
        }
        XCTAssertEqual(events.sorted(), ["accept", "connect"])
        XCTAssertTrue(result.stderr.contains("0 lost"), result.stderr)
        XCTAssertTrue(result.stderr.contains("2 shown"), result.stderr)
    }

    func testCgroupFilterAndTableOutput() throws {
        try requireRoot()
        let cgroup = try TestCgroup("filter")
        defer { cgroup.remove() }
        let child = try startTrace(["--cgroup", cgroup.relativePath, "--duration", "30"])
        // A client inside the cgroup, and the same connection from outside it.
        let (lfd, port) = try Net.listener(family: AF_INET, address: "127.0.0.1")
        defer { close(lfd) }
        let inside = try Child("/bin/sh", ["-c", "echo $$ > \(cgroup.path)/cgroup.procs && exec python3 -c 'import socket; socket.create_connection((\"127.0.0.1\", \(port))).close()'"])
        inside.process.waitUntilExit()
        XCTAssertEqual(inside.process.terminationStatus, 0)
        close(accept(lfd, nil, nil))
        let outside = try Net.connect(family: AF_INET, address: "127.0.0.1", port: port)
        close(accept(lfd, nil, nil))
        close(outside)
        usleep(300_000)
        let result = finish(child)
        XCTAssertEqual(result.status, 0, result.stderr)
        let rows = result.stdout.split(separator: "\n").map(String.init)
        XCTAssertTrue(rows.first?.hasPrefix("TIME") == true, "table header: \(result.stdout)")
        let dataRows = rows.dropFirst().filter { $0.contains(":\(port)") }
        XCTAssertEqual(dataRows.count, 1, "only the connect from inside the cgroup: \(result.stdout)")
        XCTAssertTrue(dataRows.first?.contains("python3") == true)
        XCTAssertTrue(dataRows.first?.contains(cgroup.relativePath) == true, "the workload of a host process is its cgroup path")
    }

    func testDurationStopsByItself() throws {
        try requireRoot()
        let start = Date()
        // Filtered to a pid with no connections: an unread pipe must not fill up.
        let child = try Child(binary, ["trace", "--duration", "1", "-o", "json", "--pid", "1"])
        child.process.waitUntilExit()
        XCTAssertEqual(child.process.terminationStatus, 0)
        XCTAssertLessThan(Date().timeIntervalSince(start), 10)
        let err = String(decoding: child.stderr.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        XCTAssertTrue(err.contains("events seen"), err)
    }

    /// Not root: one line saying what is missing, exit non-zero, no trace.
    func testNotRootIsAOneLineError() throws {
        try requireRoot()  // needs root to drop to another user
        let child = try Child("/usr/bin/setpriv", ["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all",
                                                   binary, "trace", "--duration", "1"])
        child.process.waitUntilExit()
        let err = String(decoding: child.stderr.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        XCTAssertEqual(child.process.terminationStatus, 1)
        XCTAssertEqual(err.split(separator: "\n").count, 1, err)
        XCTAssertTrue(err.contains("needs root"), err)
    }

    /// `--hooks RUNG` that this kernel refuses is one line naming the rung and
    /// exit 1; one it allows traces with that rung; an unknown rung is a usage error.
    func testForcedHooks() throws {
        try requireRoot()
        for rung in HookRung.allCases {
            let child = try Child(binary, ["trace", "--hooks", rung.rawValue, "--duration", "1", "-o", "json"])
            child.process.waitUntilExit()
            let err = String(decoding: child.stderr.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            if child.process.terminationStatus == 0 {
                XCTAssertTrue(err.contains("events seen"), err)
                continue
            }
            XCTAssertNotEqual(rung, .tracepoint, "the bottom rung works here: \(err)")
            XCTAssertEqual(child.process.terminationStatus, 1)
            XCTAssertEqual(err.split(separator: "\n").count, 1, err)
            XCTAssertTrue(err.contains("does not allow the \(rung.rawValue) hooks"), err)
        }
        let bad = try Child(binary, ["trace", "--hooks", "ebpf-magic", "--duration", "1"])
        bad.process.waitUntilExit()
        XCTAssertNotEqual(bad.process.terminationStatus, 0)
    }

    /// A DNS answer names the peer of the connection that follows it, for
    /// the workload that resolved (a process in a test cgroup: a resolver
    /// on 127.0.0.78:53 answers api.example.test with 127.0.0.1); in JSON,
    /// in the table, and for --peer-name, which leaves out the same
    /// connection from a workload that resolved nothing.
    func testDNSAnswersNameThePeer() throws {
        try requireRoot()
        let cgroup = try TestCgroup("resolver-client")
        defer { cgroup.remove() }
        let dns = try Child("/usr/bin/python3", ["-c", """
            import socket
            from dnslib import DNSRecord, RR, A, QTYPE
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.78", 53)); print("ready", flush=True)
            while True:
                q, a = s.recvfrom(2048); r = DNSRecord.parse(q).reply()
                r.add_answer(RR(r.q.qname, QTYPE.A, rdata=A("127.0.0.1"), ttl=60)); s.sendto(r.pack(), a)
            """])
        defer { dns.stop(signal: SIGKILL) }
        XCTAssertEqual(dns.readLine(), "ready")
        let (lfd, port) = try Net.listener(family: AF_INET, address: "127.0.0.1")
        defer { close(lfd) }
        for (format, filter) in [("json", []), ("json", ["--peer-name", "*.example.test"]), ("table", [])] {
            let child = try startTrace(["-o", format, "--port", String(port)] + filter)
            let resolver = try Child("/bin/sh", ["-c", "echo $$ > \(cgroup.path)/cgroup.procs && exec /usr/bin/python3 -c \"$0\"", """
                import socket
                from dnslib import DNSRecord
                a = DNSRecord.parse(DNSRecord.question("api.example.test").send("127.0.0.78", 53, timeout=3)).a.rdata
                socket.create_connection((str(a), \(port))).close()
                """])
            resolver.process.waitUntilExit()
            XCTAssertEqual(resolver.process.terminationStatus, 0)
            close(accept(lfd, nil, nil))
            let plain = try Net.connect(family: AF_INET, address: "127.0.0.1", port: port) // from this process: no lookup
            close(accept(lfd, nil, nil))
            close(plain)
            usleep(300_000)
            let result = finish(child)
            XCTAssertEqual(result.status, 0, result.stderr)
            let lines = result.stdout.split(separator: "\n").map(String.init)
            if format == "table" {
                XCTAssertEqual(lines.filter { $0.contains("127.0.0.1:\(port) (api.example.test)") }.count, 1, result.stdout)
                continue
            }
            let rows = try lines.map { try XCTUnwrap(JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]) }
            let connects = rows.filter { $0["event"] as? String == "connect" }
            let named = connects.filter { $0["peer_name"] as? String == "api.example.test" }
            XCTAssertEqual(named.count, 1, result.stdout)
            XCTAssertEqual(named.first?["comm"] as? String, "python3")
            if filter.isEmpty {
                XCTAssertEqual(connects.count, 2, "and the connect without a lookup, peer_name null: \(result.stdout)")
                XCTAssertEqual(connects.filter { $0["peer_name"] is NSNull }.count, 1)
                XCTAssertTrue(rows.allSatisfy { $0.keys.contains("peer_name") })
            } else {
                XCTAssertEqual(rows.count, 1, "--peer-name: only the named connect: \(result.stdout)")
            }
        }
    }

    func testBadArgumentsAreRejected() throws {
        for args in [["trace", "--duration", "soon"], ["trace", "--port", "70000"], ["trace", "-o", "xml"],
                     ["trace", "--cgroup", "/definitely/not/a/cgroup"], ["trace", "--cgroup", "../../../etc"],
                     ["trace", "--pid", "-1"], ["trace", "--peer-name", "*.test"], ["trace", "--peer-name", "a..b"], ["frobnicate"]] {
            let child = try Child(binary, args)
            child.process.waitUntilExit()
            let err = String(decoding: child.stderr.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            XCTAssertNotEqual(child.process.terminationStatus, 0, "\(args)")
            XCTAssertFalse(err.isEmpty, "\(args) says why")
            XCTAssertFalse(err.contains("Fatal error") || err.contains("Stack dump"), "\(args): \(err)")
        }
    }
}
