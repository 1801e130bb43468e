import ConnGuardCore
import ConnGuardIdentity

/// Resolves who made a connection; implemented by ConnGuardIdentity's resolver.
public protocol IdentitySource: AnyObject, Sendable {
    /// Follows cgroup creation and removal, in ring-buffer order, so that a
    /// container's cgroup is known before its first connection is resolved.
    func apply(_ event: CgroupEvent)
    func resolve(_ event: ConnectionEvent) -> Identity
    /// cgroups currently known.
    var trackedCgroups: Int { get }
    /// Who a cgroup belongs to (for arming the cgroups of a workload).
    func identity(forCgroup id: UInt64) -> Identity
}

extension IdentityResolver: IdentitySource {
    public var trackedCgroups: Int { statistics.cachedCgroups }
}
