import ConnGuardCore
import Foundation
import Glibc
import ConnGuardTestSupport
import XCTest

/// Peers by DNS name, through the agent: a real DNS server (dnslib, whose
/// answers rotate over 50 addresses) and a TCP server in a test network
/// namespace, real resolvers (glibc's getaddrinfo and getent, dig over UDP
/// and TCP, curl) in a client namespace whose process is in the test's
/// clients cgroup.
extension AgentTests {
    /// The private network of scripts/dns-test-net, and the servers in it.
    final class DNSNet {
        let name = "cg\(getpid() % 100_000)"
        let repo: String
        var servers: [Child] = []

        init(repo: String) throws {
            self.repo = repo
            let up = try Child(repo + "/scripts/dns-test-net", ["up", name])
            up.process.waitUntilExit()
            guard up.process.terminationStatus == 0 else {
                throw FileError(path: "dns-test-net up: " + String(decoding: up.stderr.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self), errno: EIO)
            }
        }

        /// The rotating DNS server on 198.18.99.2:53 (or `replay` a folder of answers).
        func startDNS(ttl: Int = 1, replay: String? = nil) throws -> Child {
            var args = ["netns", "exec", name + "-s", repo + "/scripts/dns-test-server", "--address", "198.18.99.2", "--port", "53",
                        "--ttl", String(ttl), "--pool", "50", "--per-answer", "1"]
            if let replay { args += ["--replay", replay] }
            let c = try Child("/usr/sbin/ip", args)
            servers.append(c)
            guard c.readLine()?.hasPrefix("ready") == true else { throw FileError(path: "dns-test-server", errno: EIO) }
            return c
        }

        /// Echoes on 0.0.0.0:8443 in the servers' namespace, a thread per connection.
        func startEchoServer() throws {
            let c = try Child("/usr/sbin/ip", ["netns", "exec", name + "-s", "python3", "-c", """
                import socket, threading
                def echo(c):
                    while True:
                        d = c.recv(64)
                        if not d:
                            return c.close()
                        c.sendall(d)
                s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(("0.0.0.0", 8443)); s.listen(64); print("ready", flush=True)
                while True:
                    threading.Thread(target=echo, args=(s.accept()[0],), daemon=True).start()
                """])
            servers.append(c)
            guard c.readLine() == "ready" else { throw FileError(path: "echo server", errno: EIO) }
        }

        /// Accepts and closes on 0.0.0.0:443 in the servers' namespace.
        func startTCPServer() throws {
            let c = try Child("/usr/sbin/ip", ["netns", "exec", name + "-s", "python3", "-c", """
                import socket
                s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(("0.0.0.0", 443)); s.listen(4096); print("ready", flush=True)
                while True:
                    c, _ = s.accept(); c.close()
                """])
            servers.append(c)
            guard c.readLine() == "ready" else { throw FileError(path: "tcp server", errno: EIO) }
        }

        /// Runs `argv` in the servers' namespace; its output.
        func inServers(_ argv: [String]) throws -> String {
            let c = try Child("/usr/sbin/ip", ["netns", "exec", name + "-s"] + argv)
            let out = String(decoding: c.stdout.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            c.process.waitUntilExit()
            return out
        }

        func down() {
            for s in servers { s.stop(signal: SIGKILL) }
            let d = try? Child(repo + "/scripts/dns-test-net", ["down", name])
            d?.process.waitUntilExit()
        }
    }

    var repoRoot: String {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path
    }

    /// Runs `argv` in the clients' cgroup and network namespace (glibc reads
    /// the test network's resolv.conf there); stdout and exit status.
    func inClients(_ net: DNSNet, _ argv: [String], timeout: Double = 120) throws -> (out: String, status: Int32) {
        let c = try Child("/bin/sh", ["-c", "echo $$ > \(clients.path)/cgroup.procs && exec ip netns exec \(net.name)-c \"$@\"", "sh"] + argv)
        let pid = c.pid
        let watchdog = DispatchWorkItem { kill(pid, SIGKILL) }
        DispatchQueue.global().asyncAfter(deadline: .now() + timeout, execute: watchdog)
        defer { watchdog.cancel() }
        let out = String(decoding: c.stdout.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        c.process.waitUntilExit()
        return (out.trimmingCharacters(in: .whitespacesAndNewlines), c.process.terminationStatus)
    }

    /// Python in the clients: `rounds` times, resolve api.example.test with
    /// getaddrinfo and connect at once to the answer; prints
    /// "refused R other O last ADDRESS".
    func resolveThenConnect(_ net: DNSNet, rounds: Int, name: String = "api.example.test") throws -> (refused: Int, other: Int, out: String) {
        let r = try inClients(net, ["python3", "-c", """
            import socket
            refused = other = 0; last = ""
            for i in range(\(rounds)):
                a = socket.getaddrinfo("\(name)", 443, socket.AF_INET, socket.SOCK_STREAM)[0][4]; last = a[0]
                s = socket.socket()
                try:
                    s.connect(a)
                except PermissionError:
                    refused += 1
                except OSError:
                    other += 1
                s.close()
            print("refused", refused, "other", other, "last", last)
            """])
        let f = r.out.split(separator: " ")
        guard f.count == 6, let refused = Int(f[1]), let other = Int(f[3]) else { XCTFail("client said: \(r.out)"); return (-1, -1, r.out) }
        return (refused, other, r.out)
    }

    /// One connect to address:443 from the clients: "ok", "PermissionError", ...
    func connectOnce(_ net: DNSNet, _ address: String) throws -> String {
        try inClients(net, ["python3", "-c", """
            import socket
            s = socket.socket(); s.settimeout(3)
            try:
                s.connect(("\(address)", 443)); print("ok")
            except Exception as e:
                print(type(e).__name__)
            """]).out
    }

    func statusJSON() throws -> [String: Any] {
        let st = try cli(["status", "--socket", socket, "-o", "json"])
        return try XCTUnwrap(JSONSerialization.jsonObject(with: Data(st.stdout.utf8)) as? [String: Any], st.stderr)
    }

    /// Learn by name, then enforce by name: the baseline's rule on
    /// api.example.test:443 (not on any of its addresses) lets 10,000
    /// resolve-then-connect rounds through with the answer rotating over 50
    /// addresses, none refused; glibc's getent, dig over TCP and curl work
    /// too; an address the name never gave is refused (EPERM, denied, with
    /// the name it did not match); an answer with TTL 1 s holds for the
    /// floor (4 s here), not after, and a connection made within it is not
    /// cut when it ends; `connguard dns` shows it all.
    func testNamesAreLearntThenEnforcedWithoutARace() throws {
        let agent = try startAgent(extra: ["--dns-floor", "4s"])
        defer { agent.stop(signal: SIGKILL) }
        let net = try DNSNet(repo: repoRoot)
        defer { net.down() }
        _ = try net.startDNS(ttl: 1)
        try net.startTCPServer()
        try net.startEchoServer()
        let client = clients.relativePath
        /// Resolves, connects to port 8443 and echoes; then (`hold`) connects
        /// again to the same address 2 s and 5.5 s after the answer, and
        /// echoes on the first connection at the end: "ADDRESS r2 r5.5 echo".
        func echoAndCache(hold: Bool) throws -> [String] {
            try inClients(net, ["python3", "-c", """
                import socket, time
                a = socket.getaddrinfo("api.example.test", 8443, socket.AF_INET, socket.SOCK_STREAM)[0][4]; t = time.monotonic()
                def once():
                    s = socket.socket(); s.settimeout(3)
                    try:
                        s.connect(a); return "ok"
                    except Exception as e:
                        return type(e).__name__
                    finally:
                        s.close()
                kept = socket.create_connection(a, timeout=3); kept.sendall(b"1"); kept.recv(8)
                if not \(hold ? "True" : "False"):
                    print(a[0]); raise SystemExit
                time.sleep(2); first = once()
                time.sleep(max(0, t + 5.5 - time.monotonic())); second = once()
                kept.sendall(b"ping"); print(a[0], first, second, "echo" if kept.recv(8) == b"ping" else "cut")
                """]).out.split(separator: " ").map(String.init)
        }

        // Learn: the name, the resolver over UDP and TCP.
        XCTAssertEqual(try resolveThenConnect(net, rounds: 5).refused, 0)
        XCTAssertEqual(try echoAndCache(hold: false).count, 1)
        XCTAssertTrue(try inClients(net, ["getent", "ahostsv4", "api.example.test"]).out.contains("198.18.100."))
        XCTAssertTrue(try inClients(net, ["dig", "+tcp", "+short", "api.example.test", "@198.18.99.2"]).out.hasPrefix("198.18.100."))
        try waitFor("rules on the name and the resolver") {
            let out = try rules(client, "out", port: 443), dns = try rules(client, "out", port: 53), echo = try rules(client, "out", port: 8443)
            return out.contains { $0["peer"] as? String == "name:api.example.test" }
                && Set(dns.compactMap { $0["protocol"] as? String }) == ["udp", "tcp"]
                && echo.contains { $0["peer"] as? String == "name:api.example.test" }
        }
        let learnt = try rules(client, "out", port: 443)
        XCTAssertEqual(learnt.map { $0["peer"] as? String }, ["name:api.example.test"], "a rule on the name, none on its addresses: \(learnt)")
        // Connections say the name, and are found by it (and by a pattern).
        let named = try connections(["--peer-name", "api.example.test", "--workload", client])
        XCTAssertGreaterThanOrEqual(named.count, 5)
        XCTAssertTrue(named.allSatisfy { $0["peer_name"] as? String == "api.example.test" && ($0["dst"] as? String)?.hasPrefix("198.18.100.") == true })
        XCTAssertEqual(try connections(["--peer-name", "*.example.test", "--workload", client]).count, named.count)
        let wide = try cli(["connections", "--socket", socket, "--peer-name", "*.test"])
        XCTAssertNotEqual(wide.status, 0, "a pattern on a top-level domain is refused")
        XCTAssertTrue(wide.stderr.contains("--peer-name"), wide.stderr)
        let table = try cli(["connections", "--socket", socket, "--peer-name", "api.example.test"]).stdout
        XCTAssertTrue(table.contains(":443 (api.example.test)"), table)
        // The export writes it as people write it, and reads it back.
        let yaml = try cli(["baseline", "export", client, "--socket", socket]).stdout
        XCTAssertTrue(yaml.contains("peer: {name: \"api.example.test\"}"), yaml)

        XCTAssertEqual(try cli(["mode", client, "enforce", "--socket", socket]).status, 0)
        let rounds = try resolveThenConnect(net, rounds: 10_000)
        XCTAssertEqual(rounds.refused, 0, "resolve-then-connect refused: \(rounds.out)")
        XCTAssertEqual(rounds.other, 0, rounds.out)
        XCTAssertTrue(try inClients(net, ["getent", "ahostsv4", "api.example.test"]).out.contains("198.18.100."))
        let viaTCP = try inClients(net, ["dig", "+tcp", "+short", "api.example.test", "@198.18.99.2"]).out
        XCTAssertTrue(viaTCP.hasPrefix("198.18.100."), viaTCP)
        XCTAssertEqual(try connectOnce(net, viaTCP), "ok", "an address from an answer over TCP")
        let viaUDP = try inClients(net, ["dig", "+short", "api.example.test", "@198.18.99.2"]).out
        XCTAssertTrue(viaUDP.hasPrefix("198.18.100.") && viaUDP != viaTCP, viaUDP)
        XCTAssertEqual(try connectOnce(net, viaUDP), "ok", "an address from dig's answer (an unconnected UDP socket)")
        // curl resolves and connects; the server closes at once: exit 52
        // (empty reply) or 56 (reset), not 7 (could not connect).
        let curl = try inClients(net, ["curl", "-s", "-o", "/dev/null", "--max-time", "3", "http://api.example.test:443/"]).status
        XCTAssertTrue([52, 56].contains(curl), "curl exit \(curl)")

        // An address the name never gave.
        XCTAssertEqual(try connectOnce(net, "198.18.100.200"), "PermissionError")
        try waitFor("the denial, with the name it did not match") {
            try connections(["--verdict", "denied", "--workload", client]).contains {
                $0["dst"] as? String == "198.18.100.200" && $0["error"] as? String == "EPERM"
                    && ($0["expected_names"] as? [String]) == ["api.example.test"] && $0["peer_name"] is NSNull
            }
        }

        // TTL 1 s, a client that caches: allowed within the floor, refused
        // after; the connection it made within the floor goes on.
        sleep(5) // every earlier grant has ended
        let cached = try echoAndCache(hold: true)
        XCTAssertEqual(cached.count, 4, "\(cached)")
        XCTAssertEqual(Array(cached.dropFirst()), ["ok", "PermissionError", "echo"],
                       "2 s after a TTL-1 answer: within the 4 s floor; 5.5 s after: not; the connection made before: not cut")

        // connguard dns: what was resolved, and which rules it feeds.
        XCTAssertEqual(try resolveThenConnect(net, rounds: 1).refused, 0)
        let dns = try cli(["dns", "--socket", socket, "--workload", client, "-o", "json"])
        XCTAssertEqual(dns.status, 0, dns.stderr)
        let lines = try dns.stdout.split(separator: "\n").map { try XCTUnwrap(JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]) }
        XCTAssertFalse(lines.isEmpty)
        for l in lines {
            XCTAssertEqual(l["name"] as? String, "api.example.test")
            XCTAssertEqual(l["ttl"] as? Int, 1)
            XCTAssertEqual(l["rules"] as? [String], ["out name:api.example.test 443/tcp", "out name:api.example.test 8443/tcp"])
            XCTAssertTrue((l["address"] as? String)?.hasPrefix("198.18.100.") == true)
        }
        XCTAssertTrue(lines.contains { $0["allowed_in_kernel_until"] is String }, "the newest answer's address is held in the kernel: \(lines)")
        let table2 = try cli(["dns", "--socket", socket, "--name", "api.example.test"])
        XCTAssertTrue(table2.stdout.contains("api.example.test") && table2.stdout.contains("KERNEL UNTIL"), table2.stdout)
        XCTAssertNotEqual(try cli(["dns", "--socket", socket, "--name", "not a name"]).status, 0)

        let st = try statusJSON()
        let d = try XCTUnwrap(st["dns"] as? [String: Any])
        // The rotation repeats every 50 answers, within a second: the kernel
        // parsed each distinct answer once a second (granted) and left the
        // repeats (their grants stand); every answer is one or the other.
        let granted = d["granted"] as? Int ?? 0, repeats = d["kernel_repeats"] as? Int ?? 0
        XCTAssertGreaterThanOrEqual(granted + repeats, 10_000, "\(d)")
        XCTAssertGreaterThanOrEqual(granted, 50, "every address granted at least once: \(d)")
        XCTAssertGreaterThanOrEqual(d["allowed_by_grant"] as? Int ?? 0, 10_000, "\(d)")
        XCTAssertGreaterThan(d["repeats_in_kernel"] as? Int ?? 0, 0, "the tracer passed each repeat on once a second only: \(d)")
        XCTAssertEqual(d["lost"] as? Int, 0)
        XCTAssertEqual(d["grants_full"] as? Int, 0)
        XCTAssertEqual((st["lost"] as? [String: Any])?["total"] as? Int, 0)
        // And for Prometheus.
        let metrics = try httpGet(port: metricsPort, path: "/metrics")
        func metric(_ outcome: String) -> Double {
            metrics.split(separator: "\n").first { $0.hasPrefix("connguard_dns_answers_total{") && $0.contains("stage=\"kernel\"") && $0.contains("outcome=\"\(outcome)\"") }
                .flatMap { Double($0.split(separator: " ").last ?? "") } ?? 0
        }
        XCTAssertGreaterThanOrEqual(metric("granted") + metric("repeat_not_parsed"), 10_000, metrics)
        XCTAssertTrue(metrics.contains("connguard_dns_connects_allowed_total"), metrics)
        _ = try cli(["mode", client, "learn", "--socket", socket])
    }

    /// A forged answer (from a resolver outside the baseline, to a port the
    /// workload takes datagrams on) names nothing and allows nothing; the
    /// fuzz corpus replayed as answers from the trusted resolver crashes
    /// nothing, is counted, and resolving works on.
    func testForgedAndMalformedAnswersAreIgnored() throws {
        let agent = try startAgent(extra: ["--dns-floor", "4s"])
        defer { agent.stop(signal: SIGKILL) }
        let net = try DNSNet(repo: repoRoot)
        defer { net.down() }
        let dns = try net.startDNS(ttl: 30)
        try net.startTCPServer()
        let client = clients.relativePath
        /// The clients' UDP socket on port 5300 takes one datagram; then connects to what it named.
        func receiveOn5300(_ then: String) throws -> Child {
            let c = try Child("/bin/sh", ["-c", "echo $$ > \(clients.path)/cgroup.procs && exec ip netns exec \(net.name)-c python3 -c \"$0\"", """
                import socket
                u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("0.0.0.0", 5300)); u.settimeout(10)
                print("bound", flush=True)
                d, a = u.recvfrom(2048); print("got", a[0], a[1], flush=True)
                s = socket.socket(); s.settimeout(3)
                try:
                    s.connect(("\(then)", 443)); print("ok")
                except Exception as e:
                    print(type(e).__name__)
                """])
            XCTAssertEqual(c.readLine(), "bound")
            return c
        }
        /// From 198.18.99.3:`port`: a DNS answer naming api.example.test 198.18.100.200.
        func forge(port: Int) throws {
            _ = try net.inServers(["/usr/bin/python3", "-c", """
                import socket
                from dnslib import DNSRecord, RR, A, QTYPE
                q = DNSRecord.question("api.example.test"); r = q.reply()
                r.add_answer(RR("api.example.test", QTYPE.A, rdata=A("198.18.100.200"), ttl=300))
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("198.18.99.3", \(port)))
                s.sendto(r.pack(), ("198.18.99.1", 5300))
                """])
        }

        // Learn: the name, the resolver, and datagrams from 198.18.99.3 to port 5300.
        XCTAssertEqual(try resolveThenConnect(net, rounds: 3).refused, 0)
        let learning = try receiveOn5300("198.18.100.1")
        try forge(port: 4000)
        XCTAssertEqual(learning.readLine(), "got 198.18.99.3 4000")
        learning.process.waitUntilExit()
        try waitFor("the rules") {
            try rules(client, "in", port: 5300).contains { $0["peer"] as? String == "198.18.99.3" }
                && rules(client, "out", port: 443).contains { $0["peer"] as? String == "name:api.example.test" }
                && !rules(client, "out", port: 53).isEmpty
        }
        XCTAssertEqual(try cli(["mode", client, "enforce", "--socket", socket]).status, 0)

        // The forged answer comes in (the inbound rule lets it), from port 53
        // of a resolver the workload may not use: ignored.
        let before = try statusJSON()["dns"] as? [String: Any] ?? [:]
        let victim = try receiveOn5300("198.18.100.200")
        try forge(port: 53)
        XCTAssertEqual(victim.readLine(), "got 198.18.99.3 53")
        XCTAssertEqual(victim.readLine(), "PermissionError", "an address only a forged answer gave")
        try waitFor("the forged answer counted, in the kernel and in user space") {
            let d = try statusJSON()["dns"] as? [String: Any] ?? [:]
            return (d["untrusted_resolver"] as? Int ?? 0) > (before["untrusted_resolver"] as? Int ?? 0)
                && (d["untrusted"] as? Int ?? 0) > (before["untrusted"] as? Int ?? 0)
        }
        let shown = try cli(["dns", "--socket", socket, "-o", "json"]).stdout
        XCTAssertFalse(shown.contains("198.18.100.200"), "a forged answer names nothing: \(shown)")
        try waitFor("the denial") {
            try connections(["--verdict", "denied", "--workload", client]).contains {
                $0["dst"] as? String == "198.18.100.200" && $0["peer_name"] is NSNull
            }
        }

        // The fuzz corpus, each file an answer from the trusted resolver.
        dns.stop(signal: SIGKILL)
        let corpus = repoRoot + "/Fuzz/corpus/dns"
        let files = try FileManager.default.contentsOfDirectory(atPath: corpus).count
        XCTAssertGreaterThan(files, 100)
        let replay = try net.startDNS(replay: corpus)
        let asked = try inClients(net, ["python3", "-c", """
            import socket
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2); got = 0
            q = bytes.fromhex("abcd01000001000000000000") + b"\\x03api\\x07example\\x04test\\x00\\x00\\x01\\x00\\x01"
            for i in range(\(files)):
                s.sendto(q, ("198.18.99.2", 53))
                try:
                    s.recv(4096); got += 1
                except socket.timeout:
                    pass
            print(got)
            """])
        XCTAssertEqual(asked.out, String(files), "every corpus answer reached the client")
        XCTAssertEqual(replay.readLine(), "replayed \(files)")
        replay.stop(signal: SIGKILL)
        XCTAssertTrue(agent.process.isRunning, "the agent survived the corpus")
        try waitFor("the malformed answers counted") {
            let d = try statusJSON()["dns"] as? [String: Any] ?? [:]
            return (d["kernel_malformed"] as? Int ?? 0) > 0 && (d["malformed"] as? Int ?? 0) > 0
        }
        // Resolving works on.
        _ = try net.startDNS(ttl: 30)
        let after = try resolveThenConnect(net, rounds: 20)
        XCTAssertEqual(after.refused, 0, after.out)
        XCTAssertEqual((try statusJSON()["lost"] as? [String: Any])?["total"] as? Int, 0)
        _ = try cli(["mode", client, "learn", "--socket", socket])
    }
}
