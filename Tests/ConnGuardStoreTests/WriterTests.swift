import ConnGuardCore
@testable import ConnGuardStore
import Foundation
import XCTest

final class StoreWriterTests: StoreTestCase {
    func testFlushWritesEverythingInBatches() throws {
        let store = try EventStore(path: dbPath)
        let writer = StoreWriter(store: store, options: .init(batchSize: 500, flushInterval: .seconds(10), maxTransaction: 700))
        let data = dataset(count: 5_000)
        for c in data { XCTAssertTrue(writer.submit(c)) }
        writer.flush()
        var c = writer.snapshot
        XCTAssertEqual(c.accepted, 5_000)
        XCTAssertEqual(c.written, 5_000)
        XCTAssertEqual(c.lost, 0)
        XCTAssertEqual(c.pending, 0)
        XCTAssertGreaterThanOrEqual(c.transactions, 8)  // at most 700 a transaction
        XCTAssertEqual(try store.query(ConnectionQuery()).count, 5_000)
        XCTAssertEqual(try store.queryAggregates(ConnectionQuery()).reduce(0) { $0 + $1.count }, 5_000)

        XCTAssertEqual(writer.submit(contentsOf: data.prefix(10)), 10)
        writer.close()
        c = writer.snapshot
        XCTAssertEqual(c.written, 5_010)  // close flushes
        XCTAssertFalse(writer.submit(data[0]))  // closed: refused and counted
        XCTAssertEqual(writer.snapshot.dropped, 1)
        writer.flush()  // returns at once after close
        try store.close()
    }

    func testFlushesOnItsOwnAfterTheInterval() throws {
        let store = try EventStore(path: dbPath)
        let writer = StoreWriter(store: store, options: .init(batchSize: 1_000, flushInterval: .milliseconds(50)))
        writer.submit(connection(base))
        writer.submit(connection(base + 1))
        let deadline = Date().addingTimeInterval(10)
        while try store.query(ConnectionQuery()).count < 2 && Date() < deadline { usleep(10_000) }
        XCTAssertEqual(try store.query(ConnectionQuery()).count, 2)
        XCTAssertEqual(writer.snapshot.written, 2)
        writer.close()
        try store.close()
    }

    func testAFullQueueDropsAndCountsWithoutBlocking() throws {
        let store = try EventStore(path: dbPath)
        let writer = StoreWriter(store: store, options: .init(capacity: 100, batchSize: 1_000_000, flushInterval: .seconds(60)))
        let data = dataset(count: 1_000)
        let taken = writer.submit(contentsOf: data)
        XCTAssertEqual(taken, 100)
        var accepted = 0
        for c in data.prefix(50) where writer.submit(c) { accepted += 1 }
        XCTAssertEqual(accepted, 0)
        var c = writer.snapshot
        XCTAssertEqual(c.accepted, 100)
        XCTAssertEqual(c.dropped, 950)
        XCTAssertEqual(c.lost, 950)
        writer.flush()
        c = writer.snapshot
        XCTAssertEqual(c.written, 100)
        XCTAssertEqual(try store.stats().events, 100)
        // Room again after the flush.
        XCTAssertTrue(writer.submit(data[0]))
        writer.close()
        try store.close()
    }

    func testProducerIsNeverHeldUpByASlowDatabase() throws {
        let store = try EventStore(path: dbPath)
        let writer = StoreWriter(store: store, options: .init(capacity: 20_000, batchSize: 1_000))
        // Hold the database's write lock, as a long checkpoint or a slow disk would.
        let locked = DispatchSemaphore(value: 0)
        let release = DispatchSemaphore(value: 0)
        Thread {
            try? store.database.write { _ in
                locked.signal()
                release.wait()
            }
        }.start()
        locked.wait()
        let data = dataset(count: 30_000)
        let start = Date()
        for c in data { writer.submit(c) }
        let elapsed = Date().timeIntervalSince(start)
        XCTAssertLessThan(elapsed, 2.0, "submit must not wait for the database")
        let c = writer.snapshot
        XCTAssertEqual(c.accepted + c.dropped, 30_000)
        XCTAssertGreaterThanOrEqual(c.dropped, 10_000)
        release.signal()
        writer.flush()
        XCTAssertEqual(writer.snapshot.written, c.accepted)
        XCTAssertEqual(UInt64(try store.stats().events), c.accepted)
        writer.close()
        try store.close()
    }

    func testFailedWritesAreCounted() throws {
        let store = try EventStore(path: dbPath)
        let writer = StoreWriter(store: store, options: .init(batchSize: 10))
        try store.close()  // every append now fails
        writer.submit(contentsOf: dataset(count: 25))
        writer.flush()
        let c = writer.snapshot
        XCTAssertEqual(c.written, 0)
        XCTAssertEqual(c.failed, 25)
        XCTAssertEqual(c.lost, 25)
        XCTAssertNotNil(c.lastError)
        writer.close()
    }

    func testPrunesOnItsOwn() throws {
        let store = try EventStore(path: dbPath)
        let writer = StoreWriter(store: store, options: .init(
            batchSize: 100, retention: .init(eventMaxAge: .seconds(3600), maxEvents: 50, aggregateMaxAge: .seconds(86_400)),
            pruneInterval: .milliseconds(20)))
        let now = EventStore.now()
        writer.submit(contentsOf: (0..<300).map { connection(now - Int64($0) * second) })
        writer.submit(connection(now - 7200 * second))  // too old
        writer.flush()
        // Wait for a whole prune pass that started after everything was written.
        let after = writer.snapshot.prunes
        let deadline = Date().addingTimeInterval(10)
        while writer.snapshot.prunes < after + 2 && Date() < deadline { usleep(10_000) }
        XCTAssertGreaterThanOrEqual(writer.snapshot.prunes, after + 2)
        // 50, or 49 when the old event was among the 50 kept by count in an
        // earlier pass and went by age in a later one.
        let left = try store.stats().events
        XCTAssertTrue((49...50).contains(left), "\(left)")
        XCTAssertTrue(try store.query(ConnectionQuery()).allSatisfy { $0.event.timeNanoseconds > now - 3600 * second })
        XCTAssertEqual(writer.snapshot.pruned, UInt64(301 - left))
        writer.close()
        try store.close()
    }
}
