import CBPFKit
import CLibBPF
import Glibc

// Pinning: objects that outlive the process in bpffs, and adopting pinned
// links.

extension BPFMap {
    /// Before load: reuse the map pinned at `path` if it is there and has the
    /// same type, key, value, size and flags; otherwise create it and pin it
    /// there at load. An incompatible pinned map makes load() fail.
    public func setPinPath(_ path: String) throws {
        try check(bpf_map__set_pin_path(handle, path), "set pin path of map \(name) to \(path)")
    }

    /// The size (max_entries) of the map pinned at `path`, nil if none is.
    public static func pinnedMaxEntries(at path: String) -> UInt32? {
        let fd = bpf_obj_get(path)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var info = bpf_map_info()
        var length = UInt32(MemoryLayout<bpf_map_info>.size)
        guard bpf_obj_get_info_by_fd(fd, &info, &length) == 0 else { return nil }
        return info.max_entries
    }

    /// Whether the map was reused from, or pinned to, its pin path.
    public var isPinned: Bool { bpf_map__is_pinned(handle) }

    /// Removes the map's pin; the map lives on while something holds it.
    public func unpin() throws {
        try check(bpf_map__unpin(handle, nil), "unpin map \(name)")
    }
}

extension BPFLink {
    /// The link's file descriptor (-1 once detached).
    public var fd: Int32 { handle.map { bpf_link__fd($0) } ?? -1 }

    /// Pins the link at `path` in bpffs: the attachment then outlives this
    /// process until the pin is removed (or the link is detached).
    public func pin(at path: String) throws {
        guard let h = handle else { throw BPFError("pin \(description)", errno: EBADF) }
        try check(bpf_link__pin(h, path), "pin \(description) at \(path)")
    }

    /// Adopts the link pinned at `path`. Releasing the returned object closes
    /// our descriptor only; the pin keeps the attachment.
    public static func open(pinnedAt path: String) throws -> BPFLink {
        errno = 0
        let h = try checkPointer(bpf_link__open(path), "open pinned link \(path)")
        let link = BPFLink(handle: h, description: path)
        // A link from bpf_link__open is "disconnected" by libbpf: destroying
        // it only closes the fd, it does not detach.
        bpf_link__disconnect(h)
        return link
    }

    /// Lets the attachment outlive this object: destroying it then only closes
    /// our descriptor (what a pin or another holder needs).
    public func disconnect() {
        if let h = handle { bpf_link__disconnect(h) }
    }

    /// Atomically replaces the program behind the link (BPF_LINK_UPDATE): the
    /// hook never runs without a program.
    public func update(program: BPFProgram) throws {
        guard let h = handle else { throw BPFError("update \(description)", errno: EBADF) }
        try check(bpf_link__update_program(h, program.handle), "replace the program of \(description) with \(program.name)")
    }

    /// Detaches the program now (BPF_LINK_DETACH), even if pins or other
    /// processes hold the link, then releases it.
    public func detachNow() throws {
        guard let h = handle else { return }
        let r = bpf_link_detach(bpf_link__fd(h))
        bpf_link__destroy(h)
        handle = nil
        if r < 0 && -r != ENOLINK && -r != EINVAL {
            throw BPFError("detach \(description)", errno: -r)
        }
    }

    /// For a cgroup link, the id of the cgroup it is attached to (0 once
    /// detached); nil for any other kind of link.
    public func attachedCgroupID() throws -> UInt64? {
        let i = try info()
        return i.type == BPF_LINK_TYPE_CGROUP.rawValue ? i.cgroup.cgroup_id : nil
    }

    /// Id of the program the link runs.
    public func programID() throws -> UInt32 { try info().prog_id }

    /// Kernel facts about the link.
    public func info() throws -> bpf_link_info {
        var info = bpf_link_info()
        var len = UInt32(MemoryLayout<bpf_link_info>.size)
        try check(bpf_obj_get_info_by_fd(fd, &info, &len), "read info of \(description)")
        return info
    }
}

/// What a path in bpffs holds.
public enum BPFPinKind: String, Sendable {
    case link, map, program, other
}

extension BPFSystem {
    /// The kind of object pinned at `path`, or nil if none can be opened.
    public static func pinnedKind(_ path: String) -> BPFPinKind? {
        let fd = bpf_obj_get(path)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        // The anonymous inode's name says what the descriptor is.
        var buf = [CChar](repeating: 0, count: 64)
        let n = readlink("/proc/self/fd/\(fd)", &buf, buf.count - 1)
        guard n > 0 else { return .other }
        let target = String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        switch target {
        case "anon_inode:bpf-link": return .link
        case "anon_inode:bpf-map": return .map
        case "anon_inode:bpf-prog": return .program
        default: return .other
        }
    }

    /// Detaches the link pinned at `path` (BPF_LINK_DETACH) without removing
    /// the pin. Returns false if it held no link.
    @discardableResult
    public static func detachPinnedLink(_ path: String) throws -> Bool {
        let fd = bpf_obj_get(path)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        let r = bpf_link_detach(fd)
        if r < 0 && -r != ENOLINK && -r != EINVAL {
            throw BPFError("detach link pinned at \(path)", errno: -r)
        }
        return true
    }

    /// A loaded link: its id, program id, the program's name, and the
    /// cgroup it is attached to (0 if not a cgroup link, or the cgroup is gone).
    public struct LinkSummary: Sendable, Equatable {
        public let id: UInt32
        public let programID: UInt32
        public let programName: String
        public let cgroupID: UInt64
        /// Still attached (a detached link lives on until its last holder lets go).
        public let attached: Bool
    }

    /// Every link in the kernel, with its program's name.
    public static func links() -> [LinkSummary] {
        var found: [LinkSummary] = []
        var id: UInt32 = 0
        while bpf_link_get_next_id(id, &id) == 0 {
            let fd = bpf_link_get_fd_by_id(id)
            guard fd >= 0 else { continue }
            defer { close(fd) }
            var info = bpf_link_info()
            var len = UInt32(MemoryLayout<bpf_link_info>.size)
            guard bpf_obj_get_info_by_fd(fd, &info, &len) == 0 else { continue }
            var name = ""
            let pfd = bpf_prog_get_fd_by_id(info.prog_id)
            if pfd >= 0 {
                var pinfo = bpf_prog_info()
                var plen = UInt32(MemoryLayout<bpf_prog_info>.size)
                if bpf_obj_get_info_by_fd(pfd, &pinfo, &plen) == 0 {
                    name = withUnsafeBytes(of: pinfo.name) { String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self) }
                }
                close(pfd)
            }
            let isCgroup = info.type == BPF_LINK_TYPE_CGROUP.rawValue
            let cgroupID = isCgroup ? info.cgroup.cgroup_id : 0
            // A detached cgroup link keeps its program but reports cgroup id 0.
            found.append(LinkSummary(id: id, programID: info.prog_id, programName: name,
                                     cgroupID: cgroupID, attached: !isCgroup || cgroupID != 0))
        }
        return found
    }

    /// Detaches the link with this id (BPF_LINK_DETACH).
    public static func detachLink(id: UInt32) throws {
        let fd = bpf_link_get_fd_by_id(id)
        guard fd >= 0 else { throw BPFError("open link \(id)", errno: errno) }
        defer { close(fd) }
        let r = bpf_link_detach(fd)
        if r < 0 && -r != ENOLINK && -r != EINVAL {
            throw BPFError("detach link \(id)", errno: -r)
        }
    }
}
