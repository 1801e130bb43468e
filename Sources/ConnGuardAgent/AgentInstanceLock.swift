import ConnGuardEnforcer
import Glibc

/// One agent per pin root, per API socket and per database. A second agent
/// on the same node state would store every event twice, fight the first over
/// the pinned enforcement and take over its socket: it is refused before it
/// changes anything. The pins are claimed with a PinRootLock; an agent with
/// other pins may still answer on the same socket, which is checked by
/// connecting to it; the database is claimed with a flock(2) on a lock file
/// beside it (`DB.lock`), which the kernel drops however the agent ends. Not
/// on the database file itself: closing any other descriptor of that file
/// would drop the POSIX locks SQLite holds on it.
final class AgentInstanceLock {
    private let pins: PinRootLock
    private var databaseLock: Int32 = -1

    init(pinRoot: String, socketPath: String, databasePath: String) throws {
        do {
            pins = try PinRootLock(pinRoot: pinRoot)
        } catch {
            throw AgentError("another agent is running with the pins in \(pinRoot): stop it first, or give this one its own --pin-root, --db and --socket")
        }
        if Self.someoneAnswers(socketPath) {
            pins.release()
            throw AgentError("another agent answers on \(socketPath): stop it first, or give this one its own --socket")
        }
        do {
            databaseLock = try Self.lockDatabase(databasePath)
        } catch {
            pins.release()
            throw error
        }
    }

    /// Lets go of the pins (at shutdown, after enforcement is closed) and of
    /// the database.
    func release() {
        pins.release()
        if databaseLock >= 0 { close(databaseLock) }
        databaseLock = -1
    }

    deinit { if databaseLock >= 0 { close(databaseLock) } }

    /// The lock file is made (and its folder, as the store would) only when
    /// no other agent holds it; one that does already made it.
    private static func lockDatabase(_ databasePath: String) throws -> Int32 {
        let path = databasePath + ".lock"
        var fd = open(path, O_RDWR | O_CLOEXEC | O_NOFOLLOW)
        if fd < 0 && errno == ENOENT {
            var directory = ""
            for component in path.split(separator: "/").dropLast() {
                directory += "/" + component
                _ = mkdir(directory, 0o700)
            }
            fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0o600)
        }
        guard fd >= 0 else {
            throw AgentError("cannot open the database lock \(path): \(String(cString: strerror(errno)))")
        }
        if flock(fd, LOCK_EX | LOCK_NB) != 0 {
            let e = errno
            close(fd)
            if e == EWOULDBLOCK {
                throw AgentError("another agent is running with the database \(databasePath): stop it first, or give this one its own --db")
            }
            throw AgentError("cannot lock \(path): \(String(cString: strerror(e)))")
        }
        return fd
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
