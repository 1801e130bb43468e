/// What a container runtime keeps on the node about one container, already
/// read from its files (ConnGuardIdentity reads them; this is the pure part
/// that turns them into an Identity).
public struct ContainerMetadata: Sendable, Hashable {
    public var runtime: ContainerInfo.Runtime
    public var id: String
    /// The runtime's name for it (podman/docker --name, ctr's id, the CRI's container name).
    public var name: String?
    public var image: String?
    /// The OCI spec's annotations (config.json), where the Kubernetes ones live.
    public var annotations: [String: String]
    /// The pod's labels, when the runtime keeps them on the node (CRI-O).
    public var podLabels: [String: String]
    /// The container's own cgroup, as the runtime was told to make it (the
    /// OCI spec's linux.cgroupsPath, see `cgroupPath(ociCgroupsPath:)`),
    /// relative to the cgroup2 mount. nil when the runtime's files do not
    /// say: such metadata cannot vouch for any cgroup.
    public var cgroupPath: String?

    public init(runtime: ContainerInfo.Runtime, id: String, name: String? = nil, image: String? = nil,
                annotations: [String: String] = [:], podLabels: [String: String] = [:], cgroupPath: String? = nil) {
        self.runtime = runtime
        self.id = id
        self.name = name
        self.image = image
        self.annotations = annotations
        self.podLabels = podLabels
        self.cgroupPath = cgroupPath
    }

    /// Whether this metadata is the runtime's word for the container whose
    /// own cgroup the path parser found: same id, and the runtime put that
    /// container in exactly that cgroup. A cgroup's name alone proves
    /// nothing (anyone with a delegated subtree can make `libpod-<id>.scope`),
    /// so a second cgroup claiming the same id never matches.
    public func names(_ ref: ContainerRef) -> Bool {
        guard let cgroupPath else { return false }
        return id == ref.id && cgroupPath == ref.cgroupPath
    }

    /// The OCI spec's `linux.cgroupsPath`, as a path relative to the cgroup2
    /// mount, in the two forms runc, crun and containerd's shims accept:
    ///   "/kubepods/besteffort/pod<uid>/libpod-<id>"   cgroupfs: the path itself
    ///   "machine.slice:libpod:<id>"                  systemd: "<slice>:<prefix>:<name>",
    ///       the cgroup "/machine.slice/libpod-<id>.scope"; a slice with dashes
    ///       nests ("kubepods-besteffort-pod<uid>.slice" is
    ///       "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod<uid>.slice"),
    ///       an empty slice is runc's default, system.slice
    /// nil for what cannot be placed from the file alone: a relative cgroupfs
    /// path (relative to the runtime's own cgroup), a slice as the name, a
    /// malformed value.
    public static func cgroupPath(ociCgroupsPath value: String) -> String? {
        guard !value.isEmpty, value.utf8.count <= CgroupPathParser.maximumPathLength else { return nil }
        if value.hasPrefix("/") {
            let parts = value.split(separator: "/")
            guard !parts.isEmpty, !parts.contains(where: { $0 == "." || $0 == ".." }) else { return nil }
            return "/" + parts.joined(separator: "/")
        }
        let fields = value.split(separator: ":", omittingEmptySubsequences: false)
        guard fields.count == 3, !fields[2].isEmpty, !fields[2].hasSuffix(".slice"),
              !fields.contains(where: { $0.contains("/") }),
              let slice = expandSlice(fields[0].isEmpty ? "system.slice" : fields[0]) else { return nil }
        let unit = fields[1].isEmpty ? "\(fields[2]).scope" : "\(fields[1])-\(fields[2]).scope"
        return slice + "/" + unit
    }

    /// systemd's slice nesting: "a-b-c.slice" lives in "/a.slice/a-b.slice/a-b-c.slice";
    /// "-.slice" is the root.
    static func expandSlice(_ slice: Substring) -> String? {
        guard slice.hasSuffix(".slice") else { return nil }
        let name = slice.dropLast(".slice".count)
        if name == "-" { return "" }
        let words = name.split(separator: "-", omittingEmptySubsequences: false)
        guard !words.contains(where: \.isEmpty) else { return nil }  // "a--b", "-a", "a-"
        var path = "", prefix = ""
        for w in words {
            prefix = prefix.isEmpty ? String(w) : prefix + "-" + w
            path += "/" + prefix + ".slice"
        }
        return path
    }
}

/// The annotations runtimes write into a container's OCI spec for Kubernetes.
/// containerd's CRI plugin writes io.kubernetes.cri.*; CRI-O and podman the
/// io.kubernetes.pod.* / io.kubernetes.container.* keys.
public enum KubernetesAnnotations {
    public static let criSandboxName = "io.kubernetes.cri.sandbox-name"
    public static let criSandboxNamespace = "io.kubernetes.cri.sandbox-namespace"
    public static let criSandboxUID = "io.kubernetes.cri.sandbox-uid"
    public static let criContainerName = "io.kubernetes.cri.container-name"
    public static let criContainerType = "io.kubernetes.cri.container-type"
    public static let criImageName = "io.kubernetes.cri.image-name"
    public static let podName = "io.kubernetes.pod.name"
    public static let podNamespace = "io.kubernetes.pod.namespace"
    public static let podUID = "io.kubernetes.pod.uid"
    public static let containerName = "io.kubernetes.container.name"
    public static let crioContainerType = "io.kubernetes.cri-o.ContainerType"
    public static let crioImageName = "io.kubernetes.cri-o.ImageName"
    public static let crioSandboxID = "io.kubernetes.cri-o.SandboxID"
    public static let crioLabels = "io.kubernetes.cri-o.Labels"
    public static let nerdctlName = "nerdctl/name"

    /// The pod a container belongs to, or nil when the annotations name none.
    /// `podUIDFromPath` (from the kubelet's cgroup path) fills a missing uid.
    public static func pod(_ a: [String: String], podUIDFromPath: String? = nil, containerName fallback: String? = nil) -> PodInfo? {
        guard let namespace = nonEmpty(a[criSandboxNamespace]) ?? nonEmpty(a[podNamespace]),
              let name = nonEmpty(a[criSandboxName]) ?? nonEmpty(a[podName]) else { return nil }
        let uid = nonEmpty(a[criSandboxUID]) ?? nonEmpty(a[podUID]) ?? podUIDFromPath ?? ""
        let container = nonEmpty(a[criContainerName]) ?? nonEmpty(a[containerName])
            ?? (isSandbox(a) ? "POD" : nil) ?? nonEmpty(fallback) ?? ""
        return PodInfo(namespace: namespace, name: name, uid: uid, container: container)
    }

    /// The pod's sandbox ("pause") container rather than one of its containers.
    public static func isSandbox(_ a: [String: String]) -> Bool {
        a[criContainerType] == "sandbox" || a[crioContainerType] == "sandbox"
    }

    public static func image(_ a: [String: String]) -> String? {
        nonEmpty(a[criImageName]) ?? nonEmpty(a[crioImageName])
    }

    private static func nonEmpty(_ s: String?) -> String? {
        guard let s, !s.isEmpty else { return nil }
        return s
    }
}

extension Identity {
    /// The identity of whatever runs in a cgroup whose path names a
    /// container (`ref`): that container's, only when the runtime's own
    /// metadata was found and names this very cgroup (`ContainerMetadata.names`).
    /// Otherwise the cgroup is named by its full path, like a host process's,
    /// with no container and no pod: the id in a cgroup's name is only a
    /// claim, and anyone allowed to make cgroups can make that name, so it
    /// must not buy another container's workload, baseline or mode.
    /// `cgroupPath` is the event's cgroup (ref's own or one below it).
    public static func container(_ ref: ContainerRef, metadata: ContainerMetadata?, cgroupPath: String?) -> Identity {
        guard let metadata, metadata.names(ref) else {
            return .host(cgroupPath: cgroupPath ?? ref.cgroupPath)
        }
        let annotations = metadata.annotations
        var info = ContainerInfo(id: ref.id, runtime: metadata.runtime, name: metadata.name,
                                 image: metadata.image ?? KubernetesAnnotations.image(annotations))
        let pod = KubernetesAnnotations.pod(annotations, podUIDFromPath: ref.podUID, containerName: info.name)
        let workload: String
        if let pod {
            let owner = WorkloadNaming.owner(podName: pod.name, labels: metadata.podLabels)
            workload = WorkloadNaming.podWorkload(namespace: pod.namespace, owner: owner.name, container: pod.container)
            if info.name == nil || info.name == ref.id { info.name = pod.container }
        } else {
            workload = WorkloadNaming.containerWorkload(name: info.name, image: info.image, id: ref.id)
        }
        return Identity(workload: workload, container: info, pod: pod, cgroupPath: cgroupPath)
    }

    /// A process of the node itself.
    public static func host(cgroupPath: String) -> Identity {
        Identity(workload: cgroupPath, cgroupPath: cgroupPath)
    }
}
