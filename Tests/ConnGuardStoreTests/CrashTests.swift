import ConnGuardCore
@testable import ConnGuardStore
import Foundation
import GRDB
import XCTest

/// A writer killed with SIGKILL in the middle of a stream of commits leaves a
/// database that passes SQLite's integrity check and holds every batch it had
/// reported committed, each batch whole (no half transactions).
final class CrashTests: StoreTestCase {
    static let batchSize = 2_000

    /// connguard-store-crashtest sits beside the test bundle in the build folder.
    func helperPath() throws -> String {
        let me = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")
        let path = URL(fileURLWithPath: me).deletingLastPathComponent().appendingPathComponent("connguard-store-crashtest").path
        guard FileManager.default.isExecutableFile(atPath: path) else {
            XCTFail("no \(path): build it with `swift build --product connguard-store-crashtest`")
            throw CocoaError(.fileNoSuchFile)
        }
        return path
    }

    func testKill9LosesNothingCommitted() throws {
        let helper = try helperPath()
        var committed: Set<Int> = []
        var rng = Rng(UInt64(getpid()))
        let rounds = 6
        for round in 0..<rounds {
            let first = round * 1_000_000
            let process = Process()
            process.executableURL = URL(fileURLWithPath: helper)
            process.arguments = [dbPath, String(first), String(CrashTests.batchSize)]
            let pipe = Pipe()
            process.standardOutput = pipe
            try process.run()

            // Wait for a few commits, then kill it mid-stream, at a varying moment.
            var text = ""
            var seenThisRound = 0
            let deadline = Date().addingTimeInterval(120)
            let wanted = 3 + round * 2
            while seenThisRound < wanted && Date() < deadline {
                let data = pipe.fileHandleForReading.availableData
                if data.isEmpty { break }  // the helper died on its own
                text += String(decoding: data, as: UTF8.self)
                seenThisRound = text.split(separator: "\n").count
            }
            usleep(UInt32(rng.below(20_000)))  // land anywhere in the next transaction
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
            XCTAssertEqual(process.terminationReason, .uncaughtSignal, "round \(round): the helper ended by itself")
            XCTAssertEqual(process.terminationStatus, SIGKILL)
            // Lines already in the pipe were printed after their commit.
            text += String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            var lines = text.split(separator: "\n", omittingEmptySubsequences: false)
            if lines.last?.isEmpty == false && !text.hasSuffix("\n") { lines.removeLast() }  // a torn last line
            for line in lines where line.hasPrefix("committed ") {
                committed.insert(Int(line.dropFirst("committed ".count))!)
            }
            XCTAssertGreaterThanOrEqual(committed.filter { $0 >= first }.count, wanted, "round \(round)")

            // The WAL is still there: the database was not closed.
            XCTAssertTrue(FileManager.default.fileExists(atPath: dbPath + "-wal"), "round \(round)")

            // Reopen as the restarted agent would.
            let store = try EventStore(path: dbPath)
            let integrity = try store.database.read { db in try String.fetchAll(db, sql: "PRAGMA integrity_check") }
            XCTAssertEqual(integrity, ["ok"], "round \(round)")
            let perBatch = try store.database.read { db in
                try Row.fetchAll(db, sql: "SELECT pid, count(*) FROM event GROUP BY pid").map { ($0[0] as Int, $0[1] as Int) }
            }
            let present = Dictionary(uniqueKeysWithValues: perBatch)
            for batch in committed {
                XCTAssertEqual(present[batch], CrashTests.batchSize, "round \(round): committed batch \(batch)")
            }
            for (batch, count) in present {
                XCTAssertEqual(count, CrashTests.batchSize, "round \(round): batch \(batch) is torn")
            }
            // Events and aggregates were written in the same transactions.
            let (events, aggregated) = try store.database.read { db in
                (try Int.fetchOne(db, sql: "SELECT count(*) FROM event")!,
                 try Int.fetchOne(db, sql: "SELECT sum(count) FROM connection_aggregate")!)
            }
            XCTAssertEqual(events, aggregated, "round \(round)")
            XCTAssertEqual(events, present.count * CrashTests.batchSize)
            // And it takes new writes.
            if round == rounds - 1 {
                try store.append([connection(base)])
                XCTAssertEqual(try store.stats().events, events + 1)
            }
            try store.close()
        }
    }
}
