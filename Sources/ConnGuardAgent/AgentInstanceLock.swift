import Glibc

/// One agent per pin root and per API socket. A second agent on the same
/// node state would store every event twice, fight the first over the pinned
/// enforcement and take over its socket: it is refused before it changes
/// anything.
///
/// The lock is a flock(2) on the pin root directory (bpffs allows it), held
/// for the agent's life and released by the kernel however the agent ends,
/// kill -9 included: no stale lock file to clean up. An agent with other pins
/// may still answer on the same socket, which is checked by connecting to it.
final class AgentInstanceLock {
    private var fd: Int32 = -1
    /// The pin root made here, to be removed again if nothing was pinned in it.
    private var madePinRoot: String?

    init(pinRoot: String, socketPath: String) throws {
        if mkdir(pinRoot, 0o700) == 0 {
            madePinRoot = pinRoot
        } else if errno != EEXIST {
            // bpffs missing or the like: the enforcer reports it, in full.
            return
        }
        fd = open(pinRoot, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if fd >= 0 && flock(fd, LOCK_EX | LOCK_NB) != 0 {
            let busy = errno == EWOULDBLOCK
            release()
            if busy {
                throw AgentError("another agent is running with the pins in \(pinRoot): stop it first, or give this one its own --pin-root, --db and --socket")
            }
        }
        if Self.someoneAnswers(socketPath) {
            release()
            throw AgentError("another agent answers on \(socketPath): stop it first, or give this one its own --socket")
        }
    }

    deinit { release() }

    private func release() {
        if fd >= 0 { close(fd) }
        fd = -1
        if let made = madePinRoot { rmdir(made) } // only if still empty
        madePinRoot = nil
    }

    /// Whether a process accepts connections on the Unix socket at `path` (a
    /// socket file left by an agent that died does not: connect is refused).
    static func someoneAnswers(_ path: String) -> Bool {
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: addr.sun_path) else { return false }
        withUnsafeMutableBytes(of: &addr.sun_path) { $0.copyBytes(from: bytes) }
        let s = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard s >= 0 else { return false }
        defer { close(s) }
        return withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(s, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        } == 0
    }
}
