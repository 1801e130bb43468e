import ConnGuardCore
import XCTest

final class NameBookTests: XCTestCase {
    let s: Int64 = 1_000_000_000

    func answer(_ name: String, _ addresses: [(String, UInt32)]) -> DNSAnswer {
        DNSAnswer(id: 1, name: name, questionType: 1, nameHash: 0, parentHash: 0,
                  addresses: addresses.map { .init(address: IPAddress($0.0)!, ttl: $0.1) }, recordsRead: addresses.count)
    }

    func testAnAddressIsNamedByTheNameResolvedMostRecently() {
        var book = NameBook()
        book.record(answer("api.example.test", [("198.18.1.1", 30)]), workload: "w", at: 100 * s)
        XCTAssertEqual(book.name(of: IPAddress("198.18.1.1")!, for: "w", at: 101 * s), "api.example.test")
        XCTAssertNil(book.name(of: IPAddress("198.18.1.1")!, for: "other", at: 101 * s), "per workload")
        book.record(answer("cdn.example.test", [("198.18.1.1", 30)]), workload: "w", at: 102 * s)
        XCTAssertEqual(book.name(of: IPAddress("198.18.1.1")!, for: "w", at: 103 * s), "cdn.example.test")
        XCTAssertEqual(book.resolutions(workload: "w", at: 103 * s).map(\.resolution.name), ["api.example.test", "cdn.example.test"])
    }

    func testAddressesHoldForTheLongerOfTheTTLAndTheFloor() {
        var book = NameBook(floorNanoseconds: 60 * s)
        book.record(answer("short.test", [("198.18.1.1", 1)]), workload: "w", at: 0)
        book.record(answer("long.test", [("198.18.1.2", 600)]), workload: "w", at: 0)
        XCTAssertEqual(book.name(of: IPAddress("198.18.1.1")!, for: "w", at: 59 * s), "short.test", "TTL 1 s, kept for the floor")
        XCTAssertNil(book.name(of: IPAddress("198.18.1.1")!, for: "w", at: 61 * s))
        XCTAssertEqual(book.name(of: IPAddress("198.18.1.2")!, for: "w", at: 599 * s), "long.test")
        book.expire(at: 61 * s)
        XCTAssertEqual(book.entries["w"]?.count, 1)
        book.expire(at: 601 * s)
        XCTAssertNil(book.entries["w"])
    }

    func testBoundedPerWorkload() {
        var book = NameBook(maxAddressesPerWorkload: 100)
        for i in 0..<1000 {
            book.record(answer("n\(i).test", [("198.18.\(i / 256).\(i % 256)", 30)]), workload: "w", at: Int64(i) * s)
        }
        XCTAssertEqual(book.entries["w"]?.count, 100)
        XCTAssertEqual(book.name(of: IPAddress("198.18.3.231")!, for: "w", at: 1000 * s), "n999.test", "the newest stay")
        XCTAssertNil(book.name(of: IPAddress("198.18.0.0")!, for: "w", at: 1000 * s))
    }
}
