import Glibc

/// One agent per pin root: a flock(2) on the pin root folder (bpffs allows
/// it), held for the holder's life and dropped by the kernel however it ends,
/// kill -9 included, so there is no stale lock file to clean up.
public final class PinRootLock {
    /// Another process holds the lock.
    public struct Held: Error {}

    public let pinRoot: String
    private var fd: Int32 = -1

    /// Takes the lock, making the folder if it is missing. Where the folder
    /// cannot be made (bpffs not mounted, say) there is nothing to lock, and
    /// the enforcer reports what is wrong when it opens.
    public init(pinRoot: String) throws {
        self.pinRoot = pinRoot
        guard mkdir(pinRoot, 0o700) == 0 || errno == EEXIST else { return }
        fd = Glibc.open(pinRoot, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if fd >= 0 && flock(fd, LOCK_EX | LOCK_NB) != 0 {
            let held = errno == EWOULDBLOCK
            Glibc.close(fd)
            fd = -1
            if held { throw Held() }
        }
    }

    deinit { release() }

    /// Lets go of the lock, and removes the folder if nothing is pinned in it
    /// (made for the lock, or emptied by a fail-open close).
    public func release() {
        guard fd >= 0 else { return }
        Glibc.close(fd)
        fd = -1
        rmdir(pinRoot) // only if empty
    }

    /// Whether some process holds the lock on `pinRoot`.
    public static func isHeld(_ pinRoot: String) -> Bool {
        let fd = Glibc.open(pinRoot, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { return false }
        defer { Glibc.close(fd) } // our own lock, if taken, goes with the fd
        return flock(fd, LOCK_EX | LOCK_NB) != 0 && errno == EWOULDBLOCK
    }
}
