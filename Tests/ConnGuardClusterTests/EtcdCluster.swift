import ConnGuardCluster
import ConnGuardCore
import ConnGuardTestSupport
import Foundation
import Glibc
import XCTest

/// What a watch delivered, in order, read by the test while it runs.
final class WatchLog: @unchecked Sendable {
    private let lock = Mutex()
    private var changes: [ClusterChange] = []
    private var task: Task<Void, Never>?
    /// The consumer's view, kept with `ClusterSnapshot.apply` as the agent would.
    private var view = ClusterSnapshot()

    init(_ stream: AsyncStream<ClusterChange>, test: XCTestCase) {
        task = Task { [weak self] in
            for await c in stream {
                guard let self else { return }
                self.lock.withLock {
                    self.changes.append(c)
                    self.view.apply(c)
                }
            }
        }
        test.addTeardownBlock { [task] in task?.cancel() }
    }

    var all: [ClusterChange] { lock.withLock { changes } }
    var state: ClusterSnapshot { lock.withLock { view } }

    /// Waits until some change delivered so far satisfies `match`; returns it.
    func wait(timeout: Double, _ match: (ClusterChange) -> Bool) async -> ClusterChange? {
        let end = Date().addingTimeInterval(timeout)
        repeat {
            if let c = all.first(where: match) { return c }
            try? await Task.sleep(nanoseconds: 10_000_000)
        } while Date() < end
        return all.first(where: match)
    }
}

func now() -> Int64 { Int64(Date().timeIntervalSince1970 * 1e9) }
