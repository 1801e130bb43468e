import ConnGuardCore
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
}
