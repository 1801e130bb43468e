import CBPFKit
import CLibBPF
import Glibc

/// A map pinned in bpffs by another process (an agent), opened by its path:
/// what a benchmark or a diagnostic reads without loading the object that
/// made it. `BPFMap` needs the object; this needs only the pin.
public final class BPFPinnedMap: @unchecked Sendable {
    public let path: String
    public let fd: Int32

    public init(path: String) throws {
        let fd = bpf_obj_get(path)
        if fd < 0 { throw BPFError("open pinned map \(path)", errno: errno == 0 ? ENOENT : errno) }
        self.path = path
        self.fd = fd
    }

    deinit { close(fd) }

    /// The value at `key`, or nil if there is none.
    public func lookup<K: BitwiseCopyable, V: BitwiseCopyable>(key: K, as: V.Type = V.self) throws -> V? {
        try MapCalls.lookup(fd, key: key, as: V.self, "pinned map \(path)")
    }

    /// Every key, as `BPFMap.keys` (a map edited meanwhile may skip or
    /// repeat keys).
    public func keys<K: BitwiseCopyable>(as: K.Type) throws -> [K] {
        try MapCalls.keys(fd, as: K.self, "pinned map \(path)")
    }
}
