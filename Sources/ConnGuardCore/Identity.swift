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
///
/// A value with its fields in one shared, immutable box: every event carries
/// an identity (into the writer's queue, the policy engine, the JSON line),
/// and copying a box is one reference count, where copying the ten strings
/// inside would be ten. Setting a field makes a new box.
public struct Identity: Sendable, Hashable, Codable {
    private final class Fields: Sendable {
        let workload: String
        let container: ContainerInfo?
        let pod: PodInfo?
        let cgroupPath: String?

        init(workload: String, container: ContainerInfo?, pod: PodInfo?, cgroupPath: String?) {
            self.workload = workload
            self.container = container
            self.pod = pod
            self.cgroupPath = cgroupPath
        }
    }

    private var fields: Fields

    /// Stable across restarts and replicas: "<namespace>/<owner>/<container>"
    /// for a pod, the container's name (or image) for a plain container, the
    /// cgroup path for a host process. "unknown" when the cgroup could not be
    /// resolved (counted, never dropped).
    public var workload: String {
        get { fields.workload }
        set { fields = Fields(workload: newValue, container: container, pod: pod, cgroupPath: cgroupPath) }
    }

    public var container: ContainerInfo? {
        get { fields.container }
        set { fields = Fields(workload: workload, container: newValue, pod: pod, cgroupPath: cgroupPath) }
    }

    public var pod: PodInfo? {
        get { fields.pod }
        set { fields = Fields(workload: workload, container: container, pod: newValue, cgroupPath: cgroupPath) }
    }

    /// The cgroup v2 path relative to the mount, when known.
    public var cgroupPath: String? {
        get { fields.cgroupPath }
        set { fields = Fields(workload: workload, container: container, pod: pod, cgroupPath: newValue) }
    }

    public init(workload: String, container: ContainerInfo? = nil, pod: PodInfo? = nil, cgroupPath: String? = nil) {
        fields = Fields(workload: workload, container: container, pod: pod, cgroupPath: cgroupPath)
    }

    public static let unknownWorkload = "unknown"
    public static let unknown = Identity(workload: unknownWorkload)

    public var isUnknown: Bool { workload == Identity.unknownWorkload }

    public static func == (a: Identity, b: Identity) -> Bool {
        a.fields === b.fields
            || (a.workload == b.workload && a.container == b.container && a.pod == b.pod && a.cgroupPath == b.cgroupPath)
    }

    public func hash(into h: inout Hasher) {
        h.combine(workload)
        h.combine(container)
        h.combine(pod)
        h.combine(cgroupPath)
    }

    private enum CodingKeys: String, CodingKey {
        case workload, container, pod, cgroupPath
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        self.init(workload: try c.decode(String.self, forKey: .workload),
                  container: try c.decodeIfPresent(ContainerInfo.self, forKey: .container),
                  pod: try c.decodeIfPresent(PodInfo.self, forKey: .pod),
                  cgroupPath: try c.decodeIfPresent(String.self, forKey: .cgroupPath))
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(workload, forKey: .workload)
        try c.encodeIfPresent(container, forKey: .container)
        try c.encodeIfPresent(pod, forKey: .pod)
        try c.encodeIfPresent(cgroupPath, forKey: .cgroupPath)
    }
}

/// What ConnGuard decided about a connection: allowed, or outside the baseline in monitor (would_deny) or enforce (denied) mode.
public enum Verdict: String, Sendable, Hashable, Codable, CaseIterable {
    /// Allowed: learning, inside the baseline, or not under policy.
    case allowed
    /// Outside the baseline of a workload in monitor mode: let through, reported.
    case wouldDeny = "would_deny"
    /// Outside the baseline of a workload in enforce mode: refused in the kernel.
    case denied
}
