import Glibc

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
    static func walk(_ dir: String) -> Set<UInt64> { Set(walkCgroups(dir).map(\.id)) }
}
