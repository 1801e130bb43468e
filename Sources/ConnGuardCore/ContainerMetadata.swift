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

    public init(runtime: ContainerInfo.Runtime, id: String, name: String? = nil, image: String? = nil,
                annotations: [String: String] = [:], podLabels: [String: String] = [:]) {
        self.runtime = runtime
        self.id = id
        self.name = name
        self.image = image
        self.annotations = annotations
        self.podLabels = podLabels
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
    /// The identity of a container, from its cgroup path and (when the
    /// runtime's files could be read) its metadata.
    public static func container(_ ref: ContainerRef, metadata: ContainerMetadata?, cgroupPath: String?) -> Identity {
        let runtime = metadata?.runtime ?? ref.runtime ?? .containerd
        let annotations = metadata?.annotations ?? [:]
        var info = ContainerInfo(id: ref.id, runtime: runtime, name: metadata?.name,
                                 image: metadata?.image ?? KubernetesAnnotations.image(annotations))
        let pod = KubernetesAnnotations.pod(annotations, podUIDFromPath: ref.podUID, containerName: info.name)
        let workload: String
        if let pod {
            let owner = WorkloadNaming.owner(podName: pod.name, labels: metadata?.podLabels ?? [:])
            workload = WorkloadNaming.podWorkload(namespace: pod.namespace, owner: owner.name, container: pod.container)
            if info.name == nil || info.name == ref.id { info.name = pod.container }
        } else if metadata != nil {
            workload = WorkloadNaming.containerWorkload(name: info.name, image: info.image, id: ref.id)
        } else {
            // The runtime's files are gone or not yet written: still a
            // container, named by its id until the metadata can be read.
            workload = "container:" + String(ref.id.prefix(12))
        }
        return Identity(workload: workload, container: info, pod: pod, cgroupPath: cgroupPath)
    }

    /// A process of the node itself.
    public static func host(cgroupPath: String) -> Identity {
        Identity(workload: cgroupPath, cgroupPath: cgroupPath)
    }
}
