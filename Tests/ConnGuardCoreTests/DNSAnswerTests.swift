import ConnGuardCore
import Foundation
import Glibc
import XCTest

/// The DNS answer parser (connguard_dns.h, the same code as the kernel
/// side's) on messages built here, well formed and hostile.
final class DNSAnswerTests: XCTestCase {
    /// A name in wire form.
    static func name(_ text: String) -> [UInt8] {
        var out: [UInt8] = []
        for label in text.split(separator: ".") { out.append(UInt8(label.utf8.count)); out += Array(label.utf8) }
        return out + [0]
    }

    static func u16(_ v: Int) -> [UInt8] { [UInt8(v >> 8 & 0xff), UInt8(v & 0xff)] }
    static func u32(_ v: Int) -> [UInt8] { u16(v >> 16) + u16(v & 0xffff) }

    /// A response to one question for `qname`, with these answer records
    /// (owner in wire form, type, data).
    static func response(_ qname: String, qtype: Int = 1, rcode: Int = 0, flags: Int = 0x8180,
                         answers: [(owner: [UInt8], type: Int, ttl: Int, data: [UInt8])]) -> [UInt8] {
        var m = u16(0x1234) + u16(flags | rcode) + u16(1) + u16(answers.count) + u16(0) + u16(0)
        m += name(qname) + u16(qtype) + u16(1)
        for a in answers { m += a.owner + u16(a.type) + u16(1) + u32(a.ttl) + u16(a.data.count) + a.data }
        return m
    }

    static let question: [UInt8] = [0xC0, 12]  // a pointer to the question's name

    func ok(_ m: [UInt8], file: StaticString = #filePath, line: UInt = #line) throws -> DNSAnswer {
        switch DNSAnswer.parse(m) {
        case let .success(a): return a
        case let .failure(p): XCTFail("\(p)", file: file, line: line); throw p
        }
    }

    func problem(_ m: [UInt8]) -> DNSAnswer.Problem? {
        if case let .failure(p) = DNSAnswer.parse(m) { return p }
        return nil
    }

    func testAnAnswerGivesTheNameItsAddressesAndTTLs() throws {
        let a = try ok(Self.response("API.Example.Test", answers: [
            (Self.question, 1, 30, [198, 18, 1, 1]), (Self.question, 1, 60, [198, 18, 1, 2]),
            (Self.question, 28, 45, [0xfd, 0] + [UInt8](repeating: 0, count: 13) + [1]),
        ]))
        XCTAssertEqual(a.name, "api.example.test")
        XCTAssertEqual(a.id, 0x1234)
        XCTAssertEqual(a.questionType, 1)
        XCTAssertEqual(a.addresses.map(\.address.description), ["198.18.1.1", "198.18.1.2", "fd00::1"])
        XCTAssertEqual(a.addresses.map(\.ttl), [30, 60, 45])
        XCTAssertEqual(a.recordsRead, 3)
    }

    func testTheCNAMEChainIsFollowedAndNothingElseCounts() throws {
        let a = try ok(Self.response("api.example.test", answers: [
            (Self.question, 5, 300, Self.name("edge.cdn.test")),
            (Self.name("edge.cdn.test"), 5, 300, Self.name("pop1.cdn.test")),
            (Self.name("pop1.cdn.test"), 1, 20, [198, 18, 2, 1]),
            (Self.name("unrelated.test"), 1, 20, [198, 18, 9, 9]),  // not on the chain: not the name's address
        ]))
        XCTAssertEqual(a.addresses.map(\.address.description), ["198.18.2.1"])
    }

    func testHashesIgnoreCaseAndGiveTheParentForPatterns() throws {
        let lower = try ok(Self.response("api.example.test", answers: []))
        let upper = try ok(Self.response("API.EXAMPLE.TEST", answers: []))
        let parent = try ok(Self.response("example.test", answers: []))
        XCTAssertEqual(lower.nameHash, upper.nameHash)
        XCTAssertEqual(lower.parentHash, parent.nameHash, "*.example.test is matched by the parent's hash")
        XCTAssertNotEqual(try ok(Self.response("ab.c", answers: [])).nameHash, try ok(Self.response("a.bc", answers: [])).nameHash)
        XCTAssertEqual(try ok(Self.response("localhost", answers: [])).parentHash, 0)
    }

    func testErrorAnswersAndQueriesAreNotAnswers() {
        XCTAssertEqual(problem(Self.response("nx.example.test", rcode: 3, answers: [])), .notAnAnswer(rcode: 3))
        XCTAssertEqual(problem(Self.response("q.example.test", flags: 0x0100, answers: [])), .notAnAnswer(rcode: 0))
    }

    func testHostileMessagesAreRefusedWithAReason() {
        // A pointer to itself, and two pointing at each other: loops.
        var selfLoop = Self.response("a.test", answers: [])
        selfLoop += [0xC0, UInt8(selfLoop.count)] + Self.u16(1) + Self.u16(1) + Self.u32(1) + Self.u16(4) + [1, 2, 3, 4]
        selfLoop[7] = 1
        XCTAssertEqual(problem(selfLoop), .malformed("a compression pointer that does not point back (a loop), or too many"))
        // A forward pointer in the question.
        var forward = Self.u16(1) + Self.u16(0x8180) + Self.u16(1) + Self.u16(0) + Self.u16(0) + Self.u16(0)
        forward += [0xC0, 14, 0, 0, 0, 1, 0, 1]
        XCTAssertNotNil(problem(forward))
        // A label of 64 bytes (reserved type 0x40), a name over 253 characters.
        var label = Self.u16(1) + Self.u16(0x8180) + Self.u16(1) + Self.u16(0) + Self.u16(0) + Self.u16(0)
        label += [64] + [UInt8](repeating: 0x61, count: 64) + [0] + Self.u16(1) + Self.u16(1)
        XCTAssertEqual(problem(label), .malformed("a reserved label type"))
        let long = Array(repeating: String(repeating: "a", count: 63), count: 5).joined(separator: ".")
        XCTAssertEqual(problem(Self.response(long, answers: [])), .malformed("a name longer than 253 characters"))
        // Lengths past the end.
        let whole = Self.response("a.test", answers: [(Self.question, 1, 1, [1, 2, 3, 4])])
        XCTAssertEqual(problem(Array(whole.dropLast(2))), .malformed("a record's data of the wrong length or past the end"))
        XCTAssertEqual(problem(Array(whole.prefix(8))), .malformed("a length goes past the end"))
        XCTAssertEqual(problem(Self.response("a.test", answers: [(Self.question, 1, 1, [1, 2, 3])])),
                       .malformed("a record's data of the wrong length or past the end"))
        // A CNAME whose name runs past its record.
        XCTAssertNotNil(problem(Self.response("a.test", answers: [(Self.question, 5, 1, Self.name("b.test") + [0, 0])])))
        XCTAssertNotNil(problem([]))
    }

    func testAtMostSixteenAddressesAndThirtyTwoRecords() throws {
        let many = (0..<40).map { i in (owner: Self.question, type: 1, ttl: 5, data: [198, 18, 3, UInt8(i)]) }
        let a = try ok(Self.response("many.test", answers: many))
        XCTAssertEqual(a.addresses.count, 16)
        XCTAssertEqual(a.recordsRead, 32)
    }

    // MARK: a real server's answers

    /// A query for `name` (type `qtype`), as a stub resolver sends it.
    static func query(_ name: String, qtype: Int = 1, id: Int = 0x4242) -> [UInt8] {
        u16(id) + u16(0x0100) + u16(1) + u16(0) + u16(0) + u16(0) + Self.name(name) + u16(qtype) + u16(1)
    }

    /// The answers of scripts/dns-test-server (dnslib, another implementation
    /// than ours), over UDP and TCP: the rotation, the CNAME chain, AAAA and
    /// NXDOMAIN read as the server meant them.
    func testAnswersOfARealServer() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        guard FileManager.default.fileExists(atPath: "/usr/bin/python3"),
              (try? Self.run("/usr/bin/python3", ["-c", "import dnslib"])) == 0 else {
            if ProcessInfo.processInfo.environment["CI"] == "true" { XCTFail("python3-dnslib is missing (scripts/setup installs it)"); return }
            throw XCTSkip("python3-dnslib is missing (scripts/setup installs it)")
        }
        let server = Process()
        server.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        let port = Int.random(in: 20_000...40_000)
        server.arguments = [root.appendingPathComponent("scripts/dns-test-server").path, "--port", String(port), "--ttl", "7", "--pool", "5"]
        let out = Pipe()
        server.standardOutput = out
        try server.run()
        defer { server.terminate(); server.waitUntilExit() }
        let ready = String(decoding: out.fileHandleForReading.availableData, as: UTF8.self)
        XCTAssertTrue(ready.hasPrefix("ready"), ready)

        var seen: [String] = []
        for _ in 0..<3 {
            let a = try ok(try Self.udp(Self.query("API.example.test"), port: port))
            XCTAssertEqual(a.name, "api.example.test")
            XCTAssertEqual(a.addresses.map(\.ttl), [7, 7])
            seen += a.addresses.map(\.address.description)
        }
        XCTAssertEqual(seen, ["198.18.100.1", "198.18.100.2", "198.18.100.3", "198.18.100.4", "198.18.100.5", "198.18.100.1"], "the rotation")
        let chain = try ok(try Self.tcp(Self.query("www.example.test", qtype: 28), port: port))
        XCTAssertEqual(chain.name, "www.example.test")
        XCTAssertEqual(chain.addresses.map(\.address.description), ["fd00::100:2", "fd00::100:3"], "AAAA through the CNAME, over TCP")
        XCTAssertEqual(problem(try Self.udp(Self.query("nope.test"), port: port)), .notAnAnswer(rcode: 3))
    }

    static func run(_ tool: String, _ args: [String]) throws -> Int32 {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: tool)
        p.arguments = args
        p.standardError = FileHandle.nullDevice
        try p.run()
        p.waitUntilExit()
        return p.terminationStatus
    }

    struct NoAnswer: Error {}

    static func loopback(_ port: Int) -> sockaddr_in {
        var a = sockaddr_in()
        a.sin_family = sa_family_t(AF_INET)
        a.sin_port = in_port_t(UInt16(port).bigEndian)
        a.sin_addr.s_addr = inet_addr("127.0.0.1")
        return a
    }

    static func udp(_ query: [UInt8], port: Int) throws -> [UInt8] {
        let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
        defer { close(fd) }
        var tv = timeval(tv_sec: 3, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        var a = loopback(port)
        let sent = withUnsafePointer(to: &a) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { sendto(fd, query, query.count, 0, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard sent == query.count else { throw NoAnswer() }
        var buf = [UInt8](repeating: 0, count: 4096)
        let n = recv(fd, &buf, buf.count, 0)
        guard n > 0 else { throw NoAnswer() }
        return Array(buf.prefix(n))
    }

    static func tcp(_ query: [UInt8], port: Int) throws -> [UInt8] {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var tv = timeval(tv_sec: 3, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        var a = loopback(port)
        let c = withUnsafePointer(to: &a) { p in p.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        guard c == 0 else { throw NoAnswer() }
        let framed = u16(query.count) + query
        guard send(fd, framed, framed.count, 0) == framed.count else { throw NoAnswer() }
        var got: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 4096)
        while got.count < 2 || got.count < 2 + (Int(got[0]) << 8 | Int(got[1])) {
            let n = recv(fd, &buf, buf.count, 0)
            guard n > 0 else { throw NoAnswer() }
            got += buf.prefix(n)
        }
        return Array(got.dropFirst(2))
    }
}
