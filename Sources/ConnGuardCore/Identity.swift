/// Who made or accepted a connection, in the words of the person on call:
/// which container, which pod, which workload. Resolved in user space from the
/// cgroup id the kernel captured (see ConnGuardIdentity).

/// A container as its runtime knows it.
public struct ContainerInfo: Sendable, Hashable, Codable {
    public enum Runtime: String, Sendable, Hashable, Codable, CaseIterable {
        case podman
        case docker
        case containerd
        case crio = "cri-o"
    }

    /// Full container id (64 hex characters for the runtimes we know).
    public var id: String
    public var runtime: Runtime
    public var name: String?
    public var image: String?

    public init(id: String, runtime: Runtime, name: String? = nil, image: String? = nil) {
        self.id = id
        self.runtime = runtime
        self.name = name
        self.image = image
    }
}

/// The Kubernetes pod a container belongs to, from the runtime's annotations.
public struct PodInfo: Sendable, Hashable, Codable {
    public var namespace: String
    public var name: String
    public var uid: String
    /// The container's name within the pod spec.
    public var container: String

    public init(namespace: String, name: String, uid: String, container: String) {
        self.namespace = namespace
        self.name = name
        self.uid = uid
        self.container = container
    }
}

/// Everything known about the origin of one event.
public struct Identity: Sendable, Hashable, Codable {
    /// Stable across restarts and replicas: "<namespace>/<owner>/<container>"
    /// for a pod, the container's name (or image) for a plain container, the
    /// cgroup path for a host process. "unknown" when the cgroup could not be
    /// resolved (counted, never dropped).
    public var workload: String
    public var container: ContainerInfo?
    public var pod: PodInfo?
    /// The cgroup v2 path relative to the mount, when known.
    public var cgroupPath: String?

    public init(workload: String, container: ContainerInfo? = nil, pod: PodInfo? = nil, cgroupPath: String? = nil) {
        self.workload = workload
        self.container = container
        self.pod = pod
        self.cgroupPath = cgroupPath
    }

    public static let unknownWorkload = "unknown"
    public static let unknown = Identity(workload: unknownWorkload)

    public var isUnknown: Bool { workload == Identity.unknownWorkload }
}

/// What ConnGuard decided about a connection (issue 5 fills in the last two).
public enum Verdict: String, Sendable, Hashable, Codable, CaseIterable {
    /// Allowed: learning, inside the baseline, or not under policy.
    case allowed
    /// Outside the baseline of a workload in monitor mode: let through, reported.
    case wouldDeny = "would_deny"
    /// Outside the baseline of a workload in enforce mode: refused in the kernel.
    case denied
}
