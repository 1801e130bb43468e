import ConnGuardCore
import ConnGuardIdentity

extension IdentityResolver: IdentitySource {
    public var trackedCgroups: Int { statistics.cachedCgroups }
}
