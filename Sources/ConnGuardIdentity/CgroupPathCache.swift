import CConnGuardIdentity
import ConnGuardCore
import Glibc

/// cgroup v2 id -> path (relative to the cgroup2 mount), for the ids the
/// kernel puts in events.
///
/// Who writes: `seed()` walks the tree once at start; `apply(_:)` follows the
/// kernel's cgroup_mkdir/cgroup_rmdir records, in ring-buffer order, so a
/// container's cgroup is known before its first connection is read. A miss
/// (a record lost to a full ring buffer, a path truncated in the record)
/// asks the kernel for that one id with open_by_handle_at, limited per id
/// and per second; a full walk is the fallback where handles do not work,
/// at most once per `walkInterval`. The tree is never walked per event.
///
/// Who deletes: a removed cgroup is kept for `gracePeriod` (default 5 min),
/// so that an event read just after its container exited is still
/// attributed; then it is dropped.
public final class CgroupPathCache: @unchecked Sendable {
    public struct Statistics: Sendable, Equatable {
        public var seeded = 0
        public var created = 0
        public var removed = 0
        public var expired = 0
        /// Misses answered by the kernel (open_by_handle_at).
        public var handleLookups = 0
        /// Misses the kernel did not know either (the cgroup is gone).
        public var handleMisses = 0
        /// Full walks after start (fallback).
        public var walks = 0
        public var entries = 0
    }

    /// The cgroup2 mount point (absolute).
    public let mount: String
    public let gracePeriodNanoseconds: Int64
    /// The same id is asked of the kernel at most this often.
    public var retryIntervalNanoseconds: Int64 = 1_000_000_000
    /// At most this many kernel lookups per second in all.
    public var lookupsPerSecond = 500
    /// At most one fallback walk in this interval.
    public var walkIntervalNanoseconds: Int64 = 10_000_000_000

    private struct Entry {
        var path: String
        /// Monotonic time of removal; nil while the cgroup exists.
        var removedAt: Int64?
    }

    private let lock = Mutex()
    private var entries: [UInt64: Entry] = [:]
    private var failedAt: [UInt64: Int64] = [:]
    private var stats = Statistics()
    private var mountFD: Int32 = -1
    private var handlesWork = true
    private var lastWalk: Int64 = -(1 << 62)
    private var lastSweep: Int64 = 0
    private var budgetSecond: Int64 = 0
    private var budgetUsed = 0
    private let now: @Sendable () -> Int64

    /// `now` is a monotonic clock in nanoseconds (tests pass their own).
    public init(mount: String, gracePeriodSeconds: Double = 300,
                now: @escaping @Sendable () -> Int64 = { BootClock.now(CLOCK_MONOTONIC) }) {
        self.mount = mount.count > 1 && mount.hasSuffix("/") ? String(mount.dropLast()) : mount
        gracePeriodNanoseconds = Int64(gracePeriodSeconds * 1e9)
        self.now = now
        mountFD = open(self.mount, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        // Handles of type FILEID_KERNFS mean something only on cgroupfs.
        handlesWork = mountFD >= 0 && cg_is_cgroup2(mountFD) == 1
    }

    deinit { if mountFD >= 0 { close(mountFD) } }

    /// Walks the tree once and records every cgroup. Returns how many.
    @discardableResult
    public func seed() -> Int {
        let found = CgroupPathCache.walk(mount: mount)
        return lock.withLock {
            for (id, path) in found where entries[id] == nil {
                entries[id] = Entry(path: path)
            }
            stats.seeded = found.count
            return found.count
        }
    }

    /// Follows a cgroup_mkdir / cgroup_rmdir record (v1 hierarchies ignored).
    public func apply(_ event: CgroupEvent) {
        guard event.hierarchyID == 0 else { return }
        let t = now()
        // The record holds at most CG_CGROUP_PATH_LEN - 1 bytes of path: a
        // path that long may be cut short, so ask the kernel for the real one.
        let truncated = event.path.utf8.count >= 255
        if event.created, truncated {
            _ = lookupInKernel(event.cgroupID, at: t, force: true)
            return
        }
        lock.withLock {
            if event.created {
                entries[event.cgroupID] = Entry(path: normalized(event.path))
                failedAt[event.cgroupID] = nil
                stats.created += 1
            } else if var e = entries[event.cgroupID] {
                e.removedAt = t
                entries[event.cgroupID] = e
                stats.removed += 1
            } else if !truncated {
                // Removed before we knew it: remember it for the grace period
                // all the same (an event may still name it).
                entries[event.cgroupID] = Entry(path: normalized(event.path), removedAt: t)
                stats.removed += 1
            }
            sweepIfDue(t)
        }
    }

    /// The path of a cgroup, from the cache or, on a miss, from the kernel.
    public func path(for id: UInt64) -> String? {
        if let p = lock.withLock({ entries[id]?.path }) { return p }
        return lookupInKernel(id, at: now(), force: false)
    }

    /// Only what is cached, and whether the cgroup was removed.
    public func cached(_ id: UInt64) -> (path: String, removed: Bool)? {
        lock.withLock { entries[id].map { ($0.path, $0.removedAt != nil) } }
    }

    public func isRemoved(_ id: UInt64) -> Bool {
        lock.withLock { entries[id]?.removedAt != nil }
    }

    public var statistics: Statistics {
        lock.withLock {
            var s = stats
            s.entries = entries.count
            return s
        }
    }

    /// Drops removed cgroups whose grace period is over (done by itself every
    /// few seconds; public for tests and for callers that want it now).
    public func expire() {
        lock.withLock { sweep(now()) }
    }

    // MARK: - misses

    private func lookupInKernel(_ id: UInt64, at t: Int64, force: Bool) -> String? {
        let allowed: Bool = lock.withLock {
            if !force, let last = failedAt[id], t - last < retryIntervalNanoseconds { return false }
            let second = t / 1_000_000_000
            if second != budgetSecond { budgetSecond = second; budgetUsed = 0 }
            guard budgetUsed < lookupsPerSecond else { return false }
            budgetUsed += 1
            return true
        }
        guard allowed else { return nil }

        if lock.withLock({ handlesWork }), mountFD >= 0 {
            let fd = cg_open_cgroup_by_id(mountFD, id)
            if fd >= 0 {
                defer { close(fd) }
                if let resolved = pathOfDescriptor(fd) {
                    lock.withLock {
                        entries[id] = Entry(path: resolved.path, removedAt: resolved.deleted ? t : nil)
                        failedAt[id] = nil
                        stats.handleLookups += 1
                    }
                    return resolved.path
                }
            } else if -fd == EOPNOTSUPP || -fd == EPERM || -fd == EINVAL || -fd == ENOSYS || -fd == EBADF {
                // Not a kernfs mount, no CAP_DAC_READ_SEARCH, or an old kernel.
                lock.withLock { handlesWork = false }
            }
        }
        if !lock.withLock({ handlesWork }) {
            let walk: Bool = lock.withLock {
                guard t - lastWalk >= walkIntervalNanoseconds else { return false }
                lastWalk = t
                return true
            }
            if walk {
                let found = CgroupPathCache.walk(mount: mount)
                lock.withLock {
                    for (i, p) in found where entries[i] == nil { entries[i] = Entry(path: p) }
                    stats.walks += 1
                }
                if let p = found[id] { return p }
            }
        }
        lock.withLock {
            failedAt[id] = t
            stats.handleMisses += 1
            if failedAt.count > 10_000 { failedAt = failedAt.filter { t - $0.value < retryIntervalNanoseconds } }
        }
        return nil
    }

    /// readlink(/proc/self/fd/N) -> path relative to the mount.
    private func pathOfDescriptor(_ fd: Int32) -> (path: String, deleted: Bool)? {
        var buf = [UInt8](repeating: 0, count: 8192)
        let n = readlink("/proc/self/fd/\(fd)", &buf, buf.count - 1)
        guard n > 0 else { return nil }
        var full = String(decoding: buf[0..<n], as: UTF8.self)
        var deleted = false
        if full.hasSuffix(" (deleted)") {
            deleted = true
            full.removeLast(" (deleted)".count)
        }
        if full == mount { return ("/", deleted) }
        guard full.hasPrefix(mount + "/") else { return nil }  // another namespace's view
        return (String(full.dropFirst(mount.count)), deleted)
    }

    // MARK: - expiry

    private func sweepIfDue(_ t: Int64) {
        if t - lastSweep >= 10_000_000_000 { sweep(t) }
    }

    private func sweep(_ t: Int64) {
        lastSweep = t
        let before = entries.count
        entries = entries.filter { _, e in e.removedAt.map { t - $0 < gracePeriodNanoseconds } ?? true }
        stats.expired += before - entries.count
    }

    private func normalized(_ p: String) -> String {
        p.isEmpty ? "/" : (p.hasPrefix("/") ? p : "/" + p)
    }

    /// id -> path of every cgroup under `mount`.
    static func walk(mount: String) -> [UInt64: String] {
        Dictionary(walkCgroups(mount).map { ($0.id, $0.relativePath) }, uniquingKeysWith: { a, _ in a })
    }
}
