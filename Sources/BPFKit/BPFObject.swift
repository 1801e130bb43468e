import CBPFKit
import CLibBPF
import Glibc

/// A BPF object file (ELF), opened from bytes: open, configure (map sizes,
/// read-only globals, which programs load), load, then attach programs.
/// Closing it (deinit) unloads programs and maps that nothing else holds.
public final class BPFObject {
    let handle: OpaquePointer
    public let name: String
    /// The bytes must outlive the object until load (libbpf does not copy them
    /// for every section); we keep a copy.
    private let bytes: [UInt8]

    public init(bytes: [UInt8], name: String) throws {
        _ = LibbpfLog.installed
        self.bytes = bytes
        self.name = name
        errno = 0
        let h = bytes.withUnsafeBytes { buf in
            cgbpf_open_mem(buf.baseAddress, buf.count, name)
        }
        self.handle = try checkPointer(h, "open BPF object \(name)")
    }

    deinit {
        bpf_object__close(handle)
    }

    public func program(_ name: String) throws -> BPFProgram {
        errno = 0
        let p = try checkPointer(bpf_object__find_program_by_name(handle, name), "find program \(name)")
        return BPFProgram(handle: p, object: self)
    }

    public var programs: [BPFProgram] {
        var result: [BPFProgram] = []
        var p = bpf_object__next_program(handle, nil)
        while let cur = p {
            result.append(BPFProgram(handle: cur, object: self))
            p = bpf_object__next_program(handle, cur)
        }
        return result
    }

    public func map(_ name: String) throws -> BPFMap {
        errno = 0
        let m = try checkPointer(bpf_object__find_map_by_name(handle, name), "find map \(name)")
        return BPFMap(handle: m, object: self)
    }

    /// Sets a `const volatile` global (in .rodata) before load.
    public func setReadOnlyGlobal<T: FixedWidthInteger>(_ name: String, _ value: T) throws {
        var offset = 0
        var size = 0
        try check(cgbpf_datasec_var(handle, ".rodata", name, &offset, &size), "find global \(name)")
        guard size == MemoryLayout<T>.size else {
            throw BPFError("set global \(name): it is \(size) bytes, not \(MemoryLayout<T>.size)", errno: EINVAL)
        }
        let rodata = try map(".rodata")
        var mapSize = 0
        guard let constBase = bpf_map__initial_value(rodata.handle, &mapSize), offset + size <= mapSize else {
            throw BPFError("set global \(name)", errno: EINVAL, log: LibbpfLog.take())
        }
        // Before load this is libbpf's writable copy of .rodata (what skeletons write to).
        UnsafeMutableRawPointer(mutating: constBase).storeBytes(of: value, toByteOffset: offset, as: T.self)
    }

    /// Loads every program whose autoload is on, and creates the maps. On a
    /// rejection the error carries the verifier log.
    public func load() throws {
        _ = LibbpfLog.take()
        try check(bpf_object__load(handle), "load BPF object \(name)")
    }

    /// The object's BTF (types of the programs, maps and shared structs).
    public var btf: OpaquePointer? { bpf_object__btf(handle) }
}

/// One program of a BPFObject. Valid while its object is.
public struct BPFProgram {
    let handle: OpaquePointer
    unowned let object: BPFObject

    public var name: String { String(cString: bpf_program__name(handle)) }
    public var sectionName: String { String(cString: bpf_program__section_name(handle)) }
    public var fd: Int32 { bpf_program__fd(handle) }

    /// Whether load() loads this program; off for rungs not chosen.
    public var autoload: Bool {
        get { bpf_program__autoload(handle) }
        nonmutating set { bpf_program__set_autoload(handle, newValue) }
    }

    /// Attaches where its section name says (tp_btf/..., fentry/..., kprobe/...).
    public func attach() throws -> BPFLink {
        errno = 0
        let l = try checkPointer(bpf_program__attach(handle), "attach \(name) (\(sectionName))")
        return BPFLink(handle: l, description: "\(name) (\(sectionName))")
    }

    /// Attaches a cgroup program (cgroup/connect4, cgroup_skb/ingress, ...) to
    /// the cgroup v2 directory open at `cgroupFD`.
    public func attach(cgroupFD: Int32, cgroupPath: String) throws -> BPFLink {
        errno = 0
        let l = try checkPointer(bpf_program__attach_cgroup(handle, cgroupFD), "attach \(name) to cgroup \(cgroupPath)")
        return BPFLink(handle: l, description: "\(name) on \(cgroupPath)")
    }

    public func attachKprobe(function: String, returnProbe: Bool) throws -> BPFLink {
        errno = 0
        let l = try checkPointer(cgbpf_attach_kprobe(handle, returnProbe ? 1 : 0, function), "attach \(name) to \(function)")
        return BPFLink(handle: l, description: "\(name) on \(function)")
    }

    /// Runs the loaded program `repeat` times on `data` in the kernel
    /// (BPF_PROG_TEST_RUN), unattached. For skb programs `data` is an
    /// Ethernet frame. Returns the program's verdict and the mean time per run.
    public func testRun(data: [UInt8], repeat count: Int32 = 1) throws -> (result: UInt32, nanosecondsPerRun: UInt32) {
        var result: UInt32 = 0
        var duration: UInt32 = 0
        try check(data.withUnsafeBytes { cgbpf_test_run(fd, $0.baseAddress, $0.count, count, &result, &duration) },
                  "test-run \(name)")
        return (result, duration)
    }

    /// Kernel statistics of this program (run count and time, when
    /// kernel.bpf_stats_enabled is 1).
    public func info() throws -> bpf_prog_info {
        var info = bpf_prog_info()
        var len = UInt32(MemoryLayout<bpf_prog_info>.size)
        try check(bpf_obj_get_info_by_fd(fd, &info, &len), "read info of \(name)")
        return info
    }
}

/// An attachment. Destroying it (deinit or detach()) detaches the program,
/// unless it was pinned.
public final class BPFLink {
    /// nil once detached or released (BPFPins.swift).
    var handle: OpaquePointer?
    public let description: String

    init(handle: OpaquePointer, description: String) {
        self.handle = handle
        self.description = description
    }

    public func detach() {
        if let h = handle {
            bpf_link__destroy(h)
            handle = nil
        }
    }

    deinit { detach() }
}

