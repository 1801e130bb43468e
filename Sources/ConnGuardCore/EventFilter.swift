import Glibc

/// Which connection events a person asked to see. Every condition that is set
/// must hold.
public struct EventFilter: Sendable {
    public var pid: UInt32?
    /// Matches either side's port.
    public var port: UInt16?
    /// Matches events whose cgroup is in this subtree.
    public var cgroups: CgroupSubtree?

    public init(pid: UInt32? = nil, port: UInt16? = nil, cgroups: CgroupSubtree? = nil) {
        self.pid = pid
        self.port = port
        self.cgroups = cgroups
    }

    public func matches(_ e: ConnectionEvent) -> Bool {
        if let pid, e.pid != pid { return false }
        if let port, e.sourcePort != port && e.destinationPort != port { return false }
        if let cgroups, !cgroups.contains(e.cgroupID) { return false }
        return true
    }
}

/// The ids of the cgroups at and below one cgroup v2 directory, kept current
/// from cgroup mkdir/rmdir events, so that a per-event check is one set lookup
/// rather than a walk of the tree.
public final class CgroupSubtree: @unchecked Sendable {
    /// The subtree's root, relative to the cgroup2 mount ("/" for all of it).
    public let relativePath: String
    private var ids: Set<UInt64>
    private let lock = Mutex()

    /// `mount` is the cgroup2 mount point, `path` absolute or relative to it.
    public init(mount: String, path: String) throws {
        let absolute = path.hasPrefix(mount) ? path : mount + (path.hasPrefix("/") ? "" : "/") + path
        let cleaned = CgroupSubtree.normalize(absolute)
        guard cleaned == mount || cleaned.hasPrefix(mount + "/") else {
            throw CgroupSubtreeError.outsideMount(path: path, mount: mount)
        }
        var st = stat()
        guard stat(cleaned, &st) == 0, (st.st_mode & S_IFMT) == S_IFDIR else {
            throw CgroupSubtreeError.notACgroup(path: path)
        }
        relativePath = cleaned == mount ? "/" : String(cleaned.dropFirst(mount.count))
        ids = CgroupSubtree.walk(cleaned)
    }

    /// A subtree with known ids (tests and callers that already walked).
    public init(relativePath: String, ids: Set<UInt64>) {
        self.relativePath = relativePath
        self.ids = ids
    }

    public func contains(_ id: UInt64) -> Bool {
        lock.withLock { ids.contains(id) }
    }

    public var count: Int { lock.withLock { ids.count } }

    /// Follows a cgroup v2 mkdir/rmdir event.
    public func apply(_ event: CgroupEvent) {
        guard event.hierarchyID == 0 else { return }  // v1 hierarchies
        guard relativePath == "/" || event.path == relativePath || event.path.hasPrefix(relativePath + "/") else { return }
        lock.withLock {
            if event.created { ids.insert(event.cgroupID) } else { ids.remove(event.cgroupID) }
        }
    }

    /// Collapses "//", "/./" and a trailing "/"; refuses nothing (".." is
    /// resolved lexically, then checked against the mount by the caller).
    static func normalize(_ path: String) -> String {
        var parts: [Substring] = []
        for p in path.split(separator: "/", omittingEmptySubsequences: true) {
            if p == "." { continue }
            if p == ".." { _ = parts.popLast(); continue }
            parts.append(p)
        }
        return "/" + parts.joined(separator: "/")
    }

    /// Inode numbers (cgroup ids) of `dir` and every directory below it.
    static func walk(_ dir: String) -> Set<UInt64> {
        var result: Set<UInt64> = []
        var stack = [dir]
        while let d = stack.popLast() {
            var st = stat()
            guard lstat(d, &st) == 0, (st.st_mode & S_IFMT) == S_IFDIR else { continue }
            result.insert(UInt64(st.st_ino))
            guard let handle = opendir(d) else { continue }
            while let entry = readdir(handle) {
                guard entry.pointee.d_type == UInt8(DT_DIR) else { continue }
                let name = withUnsafeBytes(of: entry.pointee.d_name) { cString(from: $0) }
                if name == "." || name == ".." { continue }
                stack.append(d + "/" + name)
            }
            closedir(handle)
        }
        return result
    }
}

public enum CgroupSubtreeError: Error, CustomStringConvertible {
    case outsideMount(path: String, mount: String)
    case notACgroup(path: String)

    public var description: String {
        switch self {
        case let .outsideMount(path, mount): return "\(path) is not inside the cgroup v2 mount \(mount)"
        case let .notACgroup(path): return "\(path) is not a cgroup v2 directory"
        }
    }
}

/// A pthread mutex guarding state that its owner keeps in its own stored
/// properties (Synchronization.Mutex wants the state inside it).
///
/// The pthread_mutex_t has an allocation of its own, as swift-nio's lock
/// does: the address of a class's stored property is not guaranteed stable.
/// withLock is inlinable so that it is specialized at each call: the tracer
/// and the agent take it for every event, and an unspecialized generic call
/// looks up type metadata each time.
public final class Mutex: @unchecked Sendable {
    @usableFromInline let m: UnsafeMutablePointer<pthread_mutex_t>

    public init() {
        m = .allocate(capacity: 1)
        m.initialize(to: pthread_mutex_t())
        pthread_mutex_init(m, nil)
    }

    deinit {
        pthread_mutex_destroy(m)
        m.deallocate()
    }

    @inlinable
    public func withLock<T>(_ body: () throws -> T) rethrows -> T {
        pthread_mutex_lock(m)
        defer { pthread_mutex_unlock(m) }
        return try body()
    }
}
