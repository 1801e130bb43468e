import ConnGuardEnforcer
import Glibc

/// One agent per pin root and per API socket. A second agent on the same
/// node state would store every event twice, fight the first over the pinned
/// enforcement and take over its socket: it is refused before it changes
/// anything. The pins are claimed with a PinRootLock; an agent with other pins
/// may still answer on the same socket, which is checked by connecting to it.
final class AgentInstanceLock {
    private let pins: PinRootLock

    init(pinRoot: String, socketPath: String) throws {
        do {
            pins = try PinRootLock(pinRoot: pinRoot)
        } catch {
            throw AgentError("another agent is running with the pins in \(pinRoot): stop it first, or give this one its own --pin-root, --db and --socket")
        }
        if Self.someoneAnswers(socketPath) {
            pins.release()
            throw AgentError("another agent answers on \(socketPath): stop it first, or give this one its own --socket")
        }
    }

    /// Lets go of the pins (at shutdown, after enforcement is closed).
    func release() { pins.release() }

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
