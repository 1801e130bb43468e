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
        var k = key
        return try withUnsafeMutableBytes(of: &k) { kb -> V? in
            try withUnsafeTemporaryAllocation(byteCount: MemoryLayout<V>.size, alignment: MemoryLayout<V>.alignment) { vb -> V? in
                let r = bpf_map_lookup_elem(fd, kb.baseAddress, vb.baseAddress)
                if r == -ENOENT { return nil }
                try check(r, "look up in pinned map \(path)")
                return vb.load(as: V.self)
            }
        }
    }

    /// How many keys the map holds now (walks it with get_next_key: a map
    /// edited meanwhile may be off by the keys that moved).
    public func count(keySize: Int) throws -> Int {
        var n = 0
        try withUnsafeTemporaryAllocation(byteCount: keySize, alignment: 8) { cur in
            try withUnsafeTemporaryAllocation(byteCount: keySize, alignment: 8) { next in
                var prev: UnsafeMutableRawPointer? = nil
                while true {
                    let r = bpf_map_get_next_key(fd, prev, next.baseAddress)
                    if r == -ENOENT { return }
                    try check(r, "iterate pinned map \(path)")
                    n += 1
                    cur.copyMemory(from: UnsafeRawBufferPointer(next))
                    prev = cur.baseAddress
                }
            }
        }
        return n
    }
}
