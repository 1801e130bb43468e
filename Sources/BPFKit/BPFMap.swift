import CBPFKit
import CLibBPF
import Glibc

// A map of a loaded object, and what user space does with the maps it
// shares with the kernel: update, look up, delete, iterate.

/// One map of a BPFObject.
public struct BPFMap {
    let handle: OpaquePointer
    unowned let object: BPFObject

    public var name: String { String(cString: bpf_map__name(handle)) }
    public var fd: Int32 { bpf_map__fd(handle) }
    public var maxEntries: UInt32 { bpf_map__max_entries(handle) }

    /// Before load only.
    public func setMaxEntries(_ n: UInt32) throws {
        try check(bpf_map__set_max_entries(handle, n), "set size of map \(name)")
    }

    public enum UpdateFlags: UInt64 {
        case any = 0      // BPF_ANY
        case noExist = 1  // BPF_NOEXIST: fail with EEXIST if the key is there
        case exist = 2    // BPF_EXIST
    }

    public func update<K: BitwiseCopyable, V: BitwiseCopyable>(key: K, value: V, flags: UpdateFlags = .any) throws {
        try withUnsafeBytes(of: key) { k in
            try withUnsafeBytes(of: value) { v in
                try check(bpf_map_update_elem(fd, k.baseAddress, v.baseAddress, flags.rawValue), "update map \(name)")
            }
        }
    }

    /// Every CPU's value at `key` of a per-CPU map (nil if the key is not
    /// there). V's size must be a multiple of 8, as the kernel lays them out.
    public func perCPUValues<K: BitwiseCopyable, V: BitwiseCopyable>(key: K, as: V.Type = V.self) throws -> [V]? {
        precondition(MemoryLayout<V>.stride % 8 == 0, "per-CPU values are 8-byte aligned")
        let cpus = try BPFSystem.possibleCPUs()
        return try withUnsafeBytes(of: key) { k in
            try withUnsafeTemporaryAllocation(of: V.self, capacity: cpus) { values in
                let r = bpf_map_lookup_elem(fd, k.baseAddress, values.baseAddress)
                if r == -ENOENT { return nil }
                try check(r, "read map \(name)")
                return Array(values)
            }
        }
    }

    /// Sums a per-CPU array of UInt64 counters at `index`.
    public func perCPUSum(index: UInt32) throws -> UInt64 {
        let cpus = try BPFSystem.possibleCPUs()
        var values = [UInt64](repeating: 0, count: cpus)
        var key = index
        try check(bpf_map_lookup_elem(fd, &key, &values), "read map \(name)")
        return values.reduce(0, &+)
    }

    /// The value at `key`, or nil if there is none.
    public func lookup<K: BitwiseCopyable, V: BitwiseCopyable>(key: K, as: V.Type = V.self) throws -> V? {
        try MapCalls.lookup(fd, key: key, as: V.self, "map \(name)")
    }

    /// Deletes `key`; false if it was not there.
    @discardableResult
    public func delete<K: BitwiseCopyable>(key: K) throws -> Bool {
        var k = key
        let r = withUnsafeMutableBytes(of: &k) { bpf_map_delete_elem(fd, $0.baseAddress) }
        if r == -ENOENT { return false }
        try check(r, "delete from map \(name)")
        return true
    }

    /// Every key, in the map's order. A map edited meanwhile may skip or
    /// repeat keys (the kernel's get_next_key semantics).
    public func keys<K: BitwiseCopyable>(as: K.Type) throws -> [K] {
        try MapCalls.keys(fd, as: K.self, "map \(name)")
    }
}

/// The calls on a map's fd, for a loaded object's maps (`BPFMap`) and for
/// maps opened by their pin (`BPFPinnedMap`).
enum MapCalls {
    static func lookup<K: BitwiseCopyable, V: BitwiseCopyable>(_ fd: Int32, key: K, as: V.Type, _ what: @autoclosure () -> String) throws -> V? {
        var k = key
        return try withUnsafeMutableBytes(of: &k) { kb -> V? in
            try withUnsafeTemporaryAllocation(byteCount: MemoryLayout<V>.size, alignment: MemoryLayout<V>.alignment) { vb -> V? in
                let r = bpf_map_lookup_elem(fd, kb.baseAddress, vb.baseAddress)
                if r == -ENOENT { return nil }
                try check(r, "look up in \(what())")
                return vb.load(as: V.self)
            }
        }
    }

    static func keys<K: BitwiseCopyable>(_ fd: Int32, as: K.Type, _ what: @autoclosure () -> String) throws -> [K] {
        var result: [K] = []
        try withUnsafeTemporaryAllocation(byteCount: MemoryLayout<K>.size, alignment: MemoryLayout<K>.alignment) { cur in
            try withUnsafeTemporaryAllocation(byteCount: MemoryLayout<K>.size, alignment: MemoryLayout<K>.alignment) { next in
                var prev: UnsafeMutableRawPointer? = nil
                while true {
                    let r = bpf_map_get_next_key(fd, prev, next.baseAddress)
                    if r == -ENOENT { return }
                    try check(r, "iterate \(what())")
                    let key = next.load(as: K.self)
                    result.append(key)
                    cur.storeBytes(of: key, as: K.self)
                    prev = cur.baseAddress
                }
            }
        }
        return result
    }
}
