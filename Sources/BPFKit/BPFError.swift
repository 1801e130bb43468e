import CBPFKit
import Glibc

/// A failed libbpf or bpf() call, with the errno it returned and what libbpf
/// printed meanwhile (for a load, the verifier log: where it rejected a
/// program is in its last lines).
public struct BPFError: Error, CustomStringConvertible, Sendable {
    /// What was being done, e.g. "load trace" or "attach cg_tp_sock_state".
    public let operation: String
    public let errno: Int32
    /// libbpf's output during the call; may be empty.
    public let log: String

    public init(_ operation: String, errno: Int32, log: String = "") {
        self.operation = operation
        self.errno = errno
        self.log = log
    }

    /// The call was refused for lack of privilege.
    public var isPermissionDenied: Bool { errno == EPERM || errno == EACCES }
    /// The kernel does not support what was asked (program or map type, hook, helper).
    public var isNotSupported: Bool { errno == EOPNOTSUPP || errno == ENOTSUP || errno == EINVAL || errno == ENOENT || errno == E2BIG }

    public var description: String {
        "\(operation): \(String(cString: strerror(errno)))"
    }

    /// The last `count` non-empty lines of the log, for a one-screen explanation.
    public func logTail(_ count: Int = 20) -> String {
        let lines = log.split(separator: "\n", omittingEmptySubsequences: true)
        return lines.suffix(count).joined(separator: "\n")
    }
}

/// libbpf's messages are kept in memory, not printed to stderr; each failed
/// call takes them into its BPFError.
enum LibbpfLog {
    static let installed: Void = { cgbpf_log_install() }()

    static func take() -> String {
        _ = installed
        guard let p = cgbpf_log_take() else { return "" }
        defer { free(p) }
        return String(cString: p)
    }
}

/// libbpf 1.x returns -errno from int functions and sets errno with NULL from
/// pointer functions; both end up here.
@inline(__always)
func check(_ result: Int32, _ operation: @autoclosure () -> String) throws {
    if result < 0 {
        throw BPFError(operation(), errno: -result, log: LibbpfLog.take())
    }
}

@inline(__always)
func checkPointer<T>(_ result: T?, _ operation: @autoclosure () -> String) throws -> T {
    guard let result else {
        let e = errno == 0 ? EINVAL : errno
        throw BPFError(operation(), errno: e, log: LibbpfLog.take())
    }
    return result
}
