import ConnGuardCore
@testable import ConnGuardStore
import XCTest

/// The row budget: every event counts in its aggregate; rows are kept for the
/// first event of each connection in a second and for repeats up to the
/// budget.
final class SamplerTests: StoreTestCase {
    private func key(port: Int64, workload: Int64 = 1) -> EventStore.AggregateKey {
        EventStore.AggregateKey(workload: workload, direction: 1, peerHigh: 0, peerLow: 0xffff_0a00_0001, port: port, verdict: 0, proto: 0)
    }

    func testRepeatsAreKeptUpToTheBudgetAndNewConnectionsBeyondIt() {
        let sampler = EventSampler(budget: .init(eventsPerSecond: 3, newConnectionsPerSecond: 5))
        // Second 0: five repeats of one connection: three rows.
        XCTAssertEqual((0..<5).map { sampler.keep(key(port: 443), at: base + Int64($0)) }, [true, true, true, false, false])
        // New connections in the same second: kept up to 5 rows in all.
        XCTAssertTrue(sampler.keep(key(port: 80), at: base + 10))
        XCTAssertTrue(sampler.keep(key(port: 81), at: base + 11))
        XCTAssertFalse(sampler.keep(key(port: 82), at: base + 12), "over newConnectionsPerSecond")
        XCTAssertFalse(sampler.keep(key(port: 80), at: base + 13))
        // The next second starts afresh; a late event of the previous second
        // counts in the current one rather than going back.
        XCTAssertTrue(sampler.keep(key(port: 443), at: base + second))
        XCTAssertTrue(sampler.keep(key(port: 82), at: base + second - 1))
        XCTAssertTrue(sampler.keep(key(port: 443), at: base + second + 1))
        XCTAssertFalse(sampler.keep(key(port: 443), at: base + second + 2), "a repeat after 3 rows in the second")
    }

    func testBudgetDefaultsAndClamps() {
        XCTAssertEqual(EventSampler.Budget(eventsPerSecond: 2000).newConnectionsPerSecond, 20_000)
        XCTAssertEqual(EventSampler.Budget(eventsPerSecond: 10, newConnectionsPerSecond: 5).newConnectionsPerSecond, 10)
        XCTAssertEqual(EventSampler.Budget(eventsPerSecond: -4).eventsPerSecond, 0)
    }

    func testStoreKeepsEveryEventInItsAggregateAndRowsWithinTheBudget() throws {
        let store = try EventStore(path: dbPath)
        let sampler = EventSampler(budget: .init(eventsPerSecond: 10))
        // 1000 connects to one peer:port in one second, plus one each to 50
        // other ports, in two batches.
        var batch: [StoredConnection] = (0..<1000).map { connection(base + Int64($0) * 1000, localPort: UInt16(30_000 + $0 % 20_000)) }
        batch += (0..<50).map { connection(base + 2_000_000 + Int64($0), peerPort: UInt16(8000 + $0)) }
        let first = try store.append(Array(batch[0..<600]), sampler: sampler)
        let second = try store.append(Array(batch[600...]), sampler: sampler)
        XCTAssertEqual(first.aggregatedOnly + second.aggregatedOnly, 1050 - 60)
        let rows = try store.query(ConnectionQuery())
        XCTAssertEqual(rows.count, 60, "10 rows of the repeated connection, and the first of each of 50 others")
        XCTAssertEqual(Set(rows.map(\.event.destinationPort)).count, 51)
        // Row ids handed back are those of the rows made, in order.
        XCTAssertEqual(first.ids?.count, 10)
        XCTAssertEqual(second.ids?.count, 50)
        let aggregates = try store.queryAggregates(ConnectionQuery())
        XCTAssertEqual(aggregates.count, 51)
        let busy = try XCTUnwrap(aggregates.first { $0.port == 443 })
        XCTAssertEqual(busy.count, 1000, "every event counted")
        XCTAssertEqual(busy.firstSeen, base)
        XCTAssertEqual(busy.lastSeen, base + 999 * 1000)
        XCTAssertEqual(aggregates.map(\.count).reduce(0, +), 1050)
        try store.close()
    }

    /// Repeats the kernel counted arrive as one entry that stands for many:
    /// folded into the aggregate (count, failures, last seen), never a row,
    /// and counted as that many events by the writer.
    func testKernelCountedRepeatsGoToTheAggregateOnly() throws {
        let store = try EventStore(path: dbPath)
        var repeats = connection(base + 5_000, outcome: .failed, pid: 0)
        repeats.repeatCount = 250
        let result = try store.append([connection(base), repeats], sampler: EventSampler(budget: .init(eventsPerSecond: 10)))
        XCTAssertEqual(result.aggregatedOnly, 250)
        XCTAssertEqual(result.ids?.count, 1, "only the event sent one by one has a row")
        let aggregates = try store.queryAggregates(ConnectionQuery())
        XCTAssertEqual(aggregates.map(\.count), [251])
        XCTAssertEqual(aggregates.first?.failedCount, 250)
        XCTAssertEqual(aggregates.first?.lastSeen, base + 5_000)
        try store.close()

        let writer = StoreWriter(store: try EventStore(path: dbPath), options: .init(capacity: 10))
        XCTAssertEqual(writer.submit(contentsOf: [repeats, connection(base + 6_000)]), 2)
        writer.flush()
        XCTAssertEqual(writer.snapshot.accepted, 251)
        XCTAssertEqual(writer.snapshot.written, 251)
        writer.close()
    }

    func testWithoutASamplerEveryEventGetsARow() throws {
        let store = try EventStore(path: dbPath)
        let batch = (0..<100).map { connection(base + Int64($0)) }
        let result = try store.append(batch, sampler: nil)
        XCTAssertEqual(result.aggregatedOnly, 0)
        XCTAssertEqual(result.ids?.count, 100)
        XCTAssertEqual(try store.query(ConnectionQuery()).count, 100)
        try store.close()
    }
}
