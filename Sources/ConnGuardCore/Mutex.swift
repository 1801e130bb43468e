import Glibc

/// A pthread mutex guarding state that its owner keeps in its own stored
/// properties (Synchronization.Mutex wants the state inside it).
///
/// The pthread_mutex_t has an allocation of its own, as swift-nio's lock
/// does: the address of a class's stored property is not guaranteed stable.
/// withLock is inlinable so that it is specialized at each call: the tracer
/// and the agent take it for every event, and an unspecialized generic call
/// looks up type metadata each time.
public final class Mutex: @unchecked Sendable {
    @usableFromInline let m: UnsafeMutablePointer<pthread_mutex_t>

    public init() {
        m = .allocate(capacity: 1)
        m.initialize(to: pthread_mutex_t())
        pthread_mutex_init(m, nil)
    }

    deinit {
        pthread_mutex_destroy(m)
        m.deallocate()
    }

    @inlinable
    public func withLock<T>(_ body: () throws -> T) rethrows -> T {
        pthread_mutex_lock(m)
        defer { pthread_mutex_unlock(m) }
        return try body()
    }
}
