import BPFKit
import Glibc

/// Why enforcement could not start or a change could not be made. Each
/// description is one line an operator can act on.
public enum EnforcerError: Error, CustomStringConvertible {
    /// The pin root is not on a BPF filesystem.
    case bpffsNotMounted(String)
    /// The path is not a directory of the cgroup v2 hierarchy.
    case notACgroup2Directory(String)
    /// Attaching at the cgroup v2 root would govern every process on the node.
    case rootAttachRefused(String)
    /// The pin root holds links attached to another cgroup.
    case pinnedElsewhere(pinRoot: String, pinnedCgroupID: UInt64, requestedCgroupID: UInt64)
    /// Pinned maps from an earlier version (other sizes or layout) cannot be reused.
    case incompatiblePins(pinRoot: String, BPFError)
    case load(BPFError)
    case attach(BPFError)
    /// A kernel map is full.
    case mapFull(String)
    case invalidArgument(String)
    /// The enforcer was closed.
    case closed

    public var description: String {
        switch self {
        case let .bpffsNotMounted(p):
            return "\(p) is not on a BPF filesystem: mount it with `mount -t bpf bpf /sys/fs/bpf`"
        case let .notACgroup2Directory(p):
            return "\(p) is not a cgroup v2 directory"
        case let .rootAttachRefused(p):
            return "refusing to enforce at the cgroup v2 root \(p), which governs every process on the node; pass allowRoot: true to mean it"
        case let .pinnedElsewhere(root, pinned, requested):
            return "\(root) holds enforcement attached to cgroup \(pinned), not \(requested); remove it first (kill-switch) or use another pin root"
        case let .incompatiblePins(root, e):
            return "the maps pinned under \(root) do not match this version (\(e)); remove them with the kill-switch, then start again"
        case let .load(e):
            if e.isPermissionDenied {
                return "the kernel refused to load ConnGuard's enforcement programs (\(e)): run as root"
            }
            return "the kernel rejected ConnGuard's enforcement programs (\(e)); the verifier log says why"
        case let .attach(e):
            return "could not attach an enforcement program (\(e)): this kernel may lack cgroup/connect or cgroup_skb hooks"
        case let .mapFull(m):
            return "the kernel map \(m) is full: raise its size in the enforcer's configuration"
        case let .invalidArgument(s):
            return s
        case .closed:
            return "the enforcer was closed"
        }
    }

    /// libbpf's log (the verifier's output on a rejected load).
    public var log: String {
        switch self {
        case let .load(e), let .attach(e), let .incompatiblePins(_, e): return e.log
        default: return ""
        }
    }
}
