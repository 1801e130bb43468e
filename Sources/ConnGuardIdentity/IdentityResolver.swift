import ConnGuardCore
import Glibc
import Logging

/// Says which container, pod and workload made or accepted each connection,
/// from the cgroup id the kernel captured with it.
///
///   cgroup id --CgroupPathCache--> path --CgroupPathParser--> container ref
///             --ContainerMetadataReader (once per container)--> Identity
///
/// The hot path is one dictionary lookup under a lock: an identity is computed
/// once per cgroup and kept. What is not final is computed again later: a
/// container whose runtime files were not readable yet (retried with a
/// growing delay, never cached as missing for good), a cgroup id the kernel
/// did not know (retried after a second).
///
/// Feed it every CgroupEvent in ring-buffer order (`apply`) before the
/// connection events that follow them: a container's mkdir record comes
/// before its first connect, so the container is known by then. A removed
/// cgroup and its identity stay for the grace period, so that an event read
/// just after its container exited is still attributed.
///
/// Events that cannot be attributed get `Identity.unknown` (with the cgroup
/// path when known) and are counted, never dropped.
///
/// A container's identity comes only from its runtime's files, and only
/// for the cgroup those files put it in: a cgroup named like a container
/// (`libpod-<id>.scope`, `docker-<id>.scope`...) whose metadata is missing,
/// or names another cgroup, is named by its own full path (see
/// `Identity.container`), so a cgroup made by hand cannot take a
/// container's workload or pollute its baseline.
public final class IdentityResolver: @unchecked Sendable {
    public struct Statistics: Sendable, Equatable {
        /// Connection events resolved.
        public var events: UInt64 = 0
        /// Events of containers whose runtime files name their cgroup.
        public var containerEvents: UInt64 = 0
        public var hostEvents: UInt64 = 0
        /// Events whose workload is "unknown": the cgroup id could not be
        /// turned into a path, or the path cannot be read safely.
        public var unattributed: UInt64 = 0
        /// Events from cgroups named like a container whose runtime files
        /// were not found (yet), or name another cgroup for that container:
        /// named by their cgroup path, without container or pod. Neither
        /// container nor host events; `events` is the sum of the four kinds.
        public var unverified: UInt64 = 0
        /// Runtime files read (one per container, plus retries).
        public var metadataReads: UInt64 = 0
        public var metadataMisses: UInt64 = 0
        public var cachedCgroups = 0
        public var cachedContainers = 0
    }

    public let cgroups: CgroupPathCache
    public let readers: [ContainerMetadataReader]
    private let containerd: ContainerdReader?
    private let logger: Logger
    private let now: @Sendable () -> Int64

    /// First retry of missing metadata after this long; doubled each time up to the maximum.
    public var metadataRetryNanoseconds: Int64 = 20_000_000
    public var metadataRetryMaximumNanoseconds: Int64 = 30_000_000_000
    /// A cgroup id that could not be resolved is tried again after this long.
    public var unresolvedRetryNanoseconds: Int64 = 1_000_000_000

    private struct CgroupEntry {
        var identity: Identity
        /// nil: final; else the monotonic time after which to compute again.
        var retryAt: Int64?
        var containerID: String?
        /// How events of this cgroup are counted, worked out once.
        let category: Category

        init(identity: Identity, retryAt: Int64? = nil, containerID: String? = nil) {
            self.identity = identity
            self.retryAt = retryAt
            self.containerID = containerID
            if identity.isUnknown {
                category = .unattributed
            } else if identity.container != nil {
                category = .container
            } else {
                // A path that names a container but got a host's identity: its
                // runtime's files did not vouch for it.
                category = containerID == nil ? .host : .unverified
            }
        }
    }

    private enum Category {
        case unattributed, host, container, unverified
    }

    private struct ContainerEntry {
        var metadata: ContainerMetadata?
        var nextAttempt: Int64
        var delay: Int64
        var lastUsed: Int64
    }

    private let lock = Mutex()
    private var byCgroup: [UInt64: CgroupEntry] = [:]
    private var containers: [String: ContainerEntry] = [:]
    private var stats = Statistics()
    private var namespaces: Set<String>
    private var namespacesReadAt: Int64 = -(1 << 62)
    private var lastSweep: Int64 = 0

    public init(cgroups: CgroupPathCache, readers: [ContainerMetadataReader],
                logger: Logger = Logger(label: "connguard.identity"),
                now: @escaping @Sendable () -> Int64 = { BootClock.now(CLOCK_MONOTONIC) }) {
        self.cgroups = cgroups
        self.readers = readers
        self.logger = logger
        self.now = now
        containerd = readers.lazy.compactMap { $0 as? ContainerdReader }.first
        namespaces = containerd == nil ? CgroupPathParser.defaultContainerdNamespaces : []
    }

    /// A resolver for this node: the cgroup2 mount from /proc/self/mountinfo,
    /// the tree walked once, and the runtimes' usual state locations.
    public static func forThisNode(gracePeriodSeconds: Double = 300,
                                   logger: Logger = Logger(label: "connguard.identity")) throws -> IdentityResolver {
        guard let mount = CgroupMount.find() else { throw IdentityError.noCgroup2Mount }
        let cache = CgroupPathCache(mount: mount, gracePeriodSeconds: gracePeriodSeconds)
        cache.seed()
        let readers: [ContainerMetadataReader] = [ContainersStorageReader(), ContainerdReader(), DockerReader()]
        logger.debug("identity resolver ready", metadata: ["cgroup2": "\(mount)", "cgroups": "\(cache.statistics.seeded)"])
        return IdentityResolver(cgroups: cache, readers: readers, logger: logger)
    }

    /// Follows a cgroup mkdir/rmdir record. For a new container's cgroup the
    /// runtime's files are read now, while they surely exist (they are
    /// written before the runtime makes the cgroup).
    public func apply(_ event: CgroupEvent) {
        cgroups.apply(event)
        guard event.hierarchyID == 0 else { return }
        if event.created {
            lock.withLock { byCgroup[event.cgroupID] = nil }  // an id seen before it was made: compute again
            // The cache's path, not the record's: a long one is cut short in
            // the record, and the cache has asked the kernel for it whole.
            if let path = cgroups.cached(event.cgroupID)?.path, case let .container(ref) = parse(path) {
                lock.withLock { _ = containerMetadata(ref, at: now()) }
            }
        }
        let t = now()
        lock.withLock {
            if t - lastSweep >= 10_000_000_000 { sweep(t) }
        }
    }

    /// The identity of a connection event, counted in the statistics.
    public func resolve(_ e: ConnectionEvent) -> Identity {
        // Every event comes here: a cgroup already resolved for good takes one
        // lock and one lookup, without reading the clock.
        if let hit: Identity = lock.withLock({
            guard let entry = byCgroup[e.cgroupID], entry.retryAt == nil else { return nil }
            count(entry.category)
            return entry.identity
        }) {
            return hit
        }
        let entry = entry(forCgroup: e.cgroupID)
        lock.withLock { count(entry.category) }
        return entry.identity
    }

    /// Call with the lock held.
    private func count(_ category: Category) {
        stats.events += 1
        switch category {
        case .unattributed: stats.unattributed += 1
        case .host: stats.hostEvents += 1
        case .container: stats.containerEvents += 1
        case .unverified: stats.unverified += 1
        }
    }

    /// The identity of whatever runs in a cgroup (not counted).
    public func identity(forCgroup id: UInt64) -> Identity {
        entry(forCgroup: id).identity
    }

    private func entry(forCgroup id: UInt64) -> CgroupEntry {
        let t = now()
        if let hit: CgroupEntry = lock.withLock({
            guard let e = byCgroup[id] else { return nil }
            if let retryAt = e.retryAt, t >= retryAt { return nil }
            return e
        }) {
            return hit
        }

        // Slow path: once per cgroup (and per retry).
        guard let path = cgroups.path(for: id) else {
            let entry = CgroupEntry(identity: .unknown, retryAt: t + unresolvedRetryNanoseconds)
            lock.withLock { byCgroup[id] = entry }
            return entry
        }
        let entry: CgroupEntry
        switch parse(path) {
        case let .host(p):
            entry = CgroupEntry(identity: .host(cgroupPath: p))
        case let .unknown(p):
            entry = CgroupEntry(identity: Identity(workload: Identity.unknownWorkload, cgroupPath: p))
        case let .container(ref):
            entry = lock.withLock {
                let m = containerMetadata(ref, at: t)
                // Named by its path until the files are found (retried); final
                // once found, whether they name this cgroup or another.
                let identity = Identity.container(ref, metadata: m.metadata, cgroupPath: path)
                return CgroupEntry(identity: identity, retryAt: m.nextAttempt, containerID: ref.id)
            }
        }
        lock.withLock { byCgroup[id] = entry }
        return entry
    }

    public var statistics: Statistics {
        lock.withLock {
            var s = stats
            s.cachedCgroups = byCgroup.count
            s.cachedContainers = containers.count
            return s
        }
    }

    // MARK: - parsing with the node's containerd namespaces

    private func parse(_ path: String) -> CgroupOrigin {
        let t = now()
        let known = lock.withLock { () -> Set<String>? in
            t - namespacesReadAt < 1_000_000_000 ? namespaces : nil
        } ?? refreshNamespaces(at: t)
        let origin = CgroupPathParser.parse(path, containerdNamespaces: known)
        // "/<x>/<y>" may be a containerd namespace made a moment ago: look again
        // before calling it a host process (a cheap readdir, limited to 20/s).
        if case .host = origin, let first = path.split(separator: "/").first,
           !known.contains(String(first)), !first.hasSuffix(".slice"), !first.hasSuffix(".service"), !first.hasSuffix(".scope"),
           path.split(separator: "/").count >= 2, containerd != nil,
           lock.withLock({ t - namespacesReadAt >= 50_000_000 }) {
            let fresh = refreshNamespaces(at: t)
            if fresh.contains(String(first)) { return CgroupPathParser.parse(path, containerdNamespaces: fresh) }
        }
        return origin
    }

    private func refreshNamespaces(at t: Int64) -> Set<String> {
        let fresh = containerd?.namespaces() ?? []
        let merged = containerd == nil ? CgroupPathParser.defaultContainerdNamespaces : fresh
        lock.withLock {
            namespaces = merged
            namespacesReadAt = t
        }
        return merged
    }

    // MARK: - metadata, once per container (call with the lock held)

    /// nextAttempt is nil once the metadata is complete: found, and saying
    /// which cgroup is the container's (without that it vouches for no
    /// cgroup, so it is read again, as missing files are).
    private func containerMetadata(_ ref: ContainerRef, at t: Int64) -> (metadata: ContainerMetadata?, nextAttempt: Int64?) {
        if var e = containers[ref.id] {
            e.lastUsed = t
            containers[ref.id] = e
            if e.metadata?.cgroupPath != nil { return (e.metadata, nil) }
            if t < e.nextAttempt { return (e.metadata, e.nextAttempt) }
        }
        var found: ContainerMetadata?
        let ordered = readers.filter { r in ref.runtime.map { r.runtimes.contains($0) } ?? false }
            + readers.filter { r in !(ref.runtime.map { r.runtimes.contains($0) } ?? false) }
        for r in ordered {
            if let m = r.metadata(for: ref) {
                found = m
                break
            }
        }
        stats.metadataReads += 1
        var e = containers[ref.id] ?? ContainerEntry(metadata: nil, nextAttempt: t, delay: metadataRetryNanoseconds / 2, lastUsed: t)
        if found != nil { e.metadata = found }
        if e.metadata?.cgroupPath != nil {
            containers[ref.id] = e
            return (e.metadata, nil)
        }
        stats.metadataMisses += 1
        e.delay = min(e.delay * 2, metadataRetryMaximumNanoseconds)
        e.nextAttempt = t + e.delay
        logger.debug("container metadata not readable yet", metadata: ["id": "\(ref.id)", "retry_ms": "\(e.delay / 1_000_000)"])
        containers[ref.id] = e
        return (e.metadata, e.nextAttempt)
    }

    // MARK: - expiry

    private func sweep(_ t: Int64) {
        lastSweep = t
        cgroups.expire()
        // Identities of cgroups the path cache forgot (removed, grace over).
        byCgroup = byCgroup.filter { id, _ in cgroups.cached(id) != nil }
        let live = Set(byCgroup.values.compactMap(\.containerID))
        let grace = cgroups.gracePeriodNanoseconds
        containers = containers.filter { id, e in live.contains(id) || t - e.lastUsed < grace }
    }
}

public enum IdentityError: Error, CustomStringConvertible {
    case noCgroup2Mount

    public var description: String {
        switch self {
        case .noCgroup2Mount: return "no cgroup v2 hierarchy is mounted (see /proc/self/mountinfo); events cannot be attributed to containers"
        }
    }
}
