import ConnGuardCore
import Foundation
import Glibc

/// Reads what one container runtime keeps on the node about its containers.
/// No API server, no daemon socket: only the runtime's files, read once per
/// container (IdentityResolver caches the answer). Each reader fills
/// `ContainerMetadata.cgroupPath` from those files when they say it: without
/// it the metadata vouches for no cgroup.
public protocol ContainerMetadataReader: Sendable {
    /// The runtimes whose containers this reader knows.
    var runtimes: Set<ContainerInfo.Runtime> { get }
    /// The container's metadata, or nil when the runtime's files for it do
    /// not exist (not yet written, already removed, or not this runtime's).
    func metadata(for ref: ContainerRef) -> ContainerMetadata?
}

// MARK: - podman and CRI-O (containers/storage)

/// podman and CRI-O share containers/storage:
///   <graphroot>/<driver>-containers/containers.json   id, names, image, metadata (name, image-name)
///   <graphroot>/<driver>-containers/<id>/userdata/config.json   podman's OCI spec
///   <runroot>/<driver>-containers/<id>/userdata/config.json     CRI-O's OCI spec
/// graphroot, runroot and driver come from /etc/containers/storage.conf
/// (defaults /var/lib/containers/storage, /run/containers/storage, overlay).
/// The spec's annotations say which runtime made it ("io.container.manager":
/// "libpod" for podman, io.kubernetes.cri-o.ContainerType for CRI-O) and hold
/// the Kubernetes pod, namespace, uid and container name. CRI-O keeps the pod's
/// labels in its sandbox's io.kubernetes.cri-o.Labels. The spec's
/// linux.cgroupsPath says which cgroup is the container's.
public final class ContainersStorageReader: ContainerMetadataReader, @unchecked Sendable {
    public let runtimes: Set<ContainerInfo.Runtime> = [.podman, .crio]
    public let graphRoot: String
    public let runRoot: String
    public let drivers: [String]

    private let lock = ConnGuardCore.Mutex()
    private var index: [String: StorageRecord] = [:]
    private var indexStamp: [String: FileStamp] = [:]

    struct StorageRecord {
        var names: [String]
        var imageName: String?
        var name: String?
    }

    public init(graphRoot: String? = nil, runRoot: String? = nil, driver: String? = nil,
                storageConf: String = "/etc/containers/storage.conf") {
        let conf = (try? readFile(storageConf)).map(ContainersStorageReader.parseStorageConf) ?? [:]
        self.graphRoot = graphRoot ?? conf["graphroot"] ?? "/var/lib/containers/storage"
        self.runRoot = runRoot ?? conf["runroot"] ?? "/run/containers/storage"
        if let d = driver ?? conf["driver"], !d.isEmpty {
            drivers = [d]
        } else {
            drivers = ["overlay", "vfs", "btrfs", "zfs"]
        }
    }

    public func metadata(for ref: ContainerRef) -> ContainerMetadata? {
        guard CgroupPathParser.isFullID(ref.id) else { return nil }
        var spec: [String: Any]?
        for driver in drivers {
            for root in [graphRoot, runRoot] {
                if let s = readJSONObject("\(root)/\(driver)-containers/\(ref.id)/userdata/config.json") {
                    spec = s
                    break
                }
            }
            if spec != nil { break }
        }
        let record = storageRecord(ref.id)
        guard spec != nil || record != nil else { return nil }

        let annotations = (spec?["annotations"] as? [String: String]) ?? [:]
        let runtime: ContainerInfo.Runtime
        if annotations["io.container.manager"] == "libpod" {
            runtime = .podman
        } else if annotations[KubernetesAnnotations.crioContainerType] != nil {
            runtime = .crio
        } else {
            runtime = ref.runtime.flatMap { runtimes.contains($0) ? $0 : nil } ?? .podman
        }
        var m = ContainerMetadata(runtime: runtime, id: ref.id, annotations: annotations, cgroupPath: specCgroupPath(spec))
        m.name = record?.name ?? record?.names.first
        m.image = record?.imageName ?? KubernetesAnnotations.image(annotations)
        if runtime == .crio, let sandbox = annotations[KubernetesAnnotations.crioSandboxID],
           CgroupPathParser.isFullID(sandbox) {
            m.podLabels = crioPodLabels(sandbox: sandbox)
        }
        return m
    }

    /// containers.json, re-read only when it changed.
    private func storageRecord(_ id: String) -> StorageRecord? {
        lock.withLock {
            if let r = index[id] { return r }
            for driver in drivers {
                let path = "\(graphRoot)/\(driver)-containers/containers.json"
                guard let stamp = FileStamp(path), stamp != indexStamp[path] else { continue }
                indexStamp[path] = stamp
                guard let list = readJSON(path) as? [[String: Any]] else { continue }
                for item in list {
                    guard let cid = item["id"] as? String else { continue }
                    var r = StorageRecord(names: item["names"] as? [String] ?? [])
                    if let meta = item["metadata"] as? String, let data = meta.data(using: .utf8),
                       let m = try? JSONSerialization.jsonObject(with: data) as? [String: Any] {
                        r.imageName = m["image-name"] as? String
                        // CRI-O's "name" is the kubelet's k8s_<container>_<pod>_... form;
                        // its "metadata-name" is the container's own.
                        r.name = (m["metadata-name"] as? String) ?? (m["name"] as? String)
                    }
                    index[cid] = r
                }
            }
            return index[id]
        }
    }

    private func crioPodLabels(sandbox: String) -> [String: String] {
        for driver in drivers {
            for root in [runRoot, graphRoot] {
                guard let spec = readJSONObject("\(root)/\(driver)-containers/\(sandbox)/userdata/config.json"),
                      let a = spec["annotations"] as? [String: String] else { continue }
                if let text = a[KubernetesAnnotations.crioLabels], let data = text.data(using: .utf8),
                   let labels = try? JSONSerialization.jsonObject(with: data) as? [String: String] {
                    return labels
                }
            }
        }
        return [:]
    }

    /// The few `key = "value"` lines of storage.conf we need (TOML, flat).
    static func parseStorageConf(_ text: String) -> [String: String] {
        var out: [String: String] = [:]
        var section = ""
        for raw in text.split(separator: "\n") {
            let line = raw.trimmingCharacters(in: .whitespaces)
            if line.hasPrefix("[") { section = line; continue }
            guard section == "[storage]", !line.hasPrefix("#"),
                  let eq = line.firstIndex(of: "=") else { continue }
            let key = line[..<eq].trimmingCharacters(in: .whitespaces)
            var value = line[line.index(after: eq)...].trimmingCharacters(in: .whitespaces)
            if let hash = value.firstIndex(of: "#"), !value.hasPrefix("\"") || value[..<hash].filter({ $0 == "\"" }).count % 2 == 0 {
                value = String(value[..<hash]).trimmingCharacters(in: .whitespaces)
            }
            if value.count >= 2, value.hasPrefix("\""), value.hasSuffix("\"") { value = String(value.dropFirst().dropLast()) }
            if ["graphroot", "runroot", "driver"].contains(key) { out[key] = value }
        }
        return out
    }
}

// MARK: - containerd (ctr, nerdctl, Kubernetes through the CRI plugin)

/// containerd writes each task's OCI bundle under its state directory:
///   /run/containerd/io.containerd.runtime.v2.task/<namespace>/<id>/config.json
///   (io.containerd.runtime.v1.linux/ for the old shim)
/// The CRI plugin's annotations (io.kubernetes.cri.*) name the pod, its
/// namespace and uid, the container and the image; nerdctl's "nerdctl/name"
/// names a nerdctl container. A container made with ctr has no annotations:
/// its id is the name its user gave. Images of such containers are only in
/// containerd's metadata database, which is not read (image stays empty).
/// The bundle's linux.cgroupsPath says which cgroup is the container's.
public final class ContainerdReader: ContainerMetadataReader, @unchecked Sendable {
    public let runtimes: Set<ContainerInfo.Runtime> = [.containerd]
    public let stateRoot: String

    public init(stateRoot: String = "/run/containerd") {
        self.stateRoot = stateRoot
    }

    private var taskDirs: [String] {
        ["\(stateRoot)/io.containerd.runtime.v2.task", "\(stateRoot)/io.containerd.runtime.v1.linux"]
    }

    /// The namespaces that have tasks now (the first level of the task dirs).
    /// nil when containerd keeps no state on this node.
    public func namespaces() -> Set<String>? {
        var found: Set<String> = []
        var any = false
        for dir in taskDirs {
            guard let names = subdirectories(dir) else { continue }
            any = true
            found.formUnion(names)
        }
        return any ? found : nil
    }

    public func metadata(for ref: ContainerRef) -> ContainerMetadata? {
        guard CgroupPathParser.isContainerdID(ref.id) else { return nil }
        var candidates: [String] = []
        if let ns = ref.containerdNamespace {
            candidates = [ns]
        } else {
            candidates = ["k8s.io"] + (namespaces() ?? []).filter { $0 != "k8s.io" }.sorted()
        }
        for ns in candidates where CgroupPathParser.isContainerdID(ns) {
            for dir in taskDirs {
                guard let spec = readJSONObject("\(dir)/\(ns)/\(ref.id)/config.json") else { continue }
                let a = (spec["annotations"] as? [String: String]) ?? [:]
                var m = ContainerMetadata(runtime: .containerd, id: ref.id, annotations: a, cgroupPath: specCgroupPath(spec))
                m.name = a[KubernetesAnnotations.criContainerName] ?? a[KubernetesAnnotations.nerdctlName]
                    ?? (CgroupPathParser.isFullID(ref.id) ? nil : ref.id)
                m.image = KubernetesAnnotations.image(a)
                return m
            }
        }
        return nil
    }
}

// MARK: - docker

/// dockerd keeps each container's configuration in
///   /var/lib/docker/containers/<id>/config.v2.json
/// ("Name": "/web", "Config": {"Image": ..., "Labels": {...}}). Containers made
/// by the kubelet through cri-dockerd carry the pod in their labels
/// (io.kubernetes.pod.name, io.kubernetes.pod.namespace, ...).
/// config.v2.json does not say which cgroup the container is in; the OCI
/// spec dockerd hands containerd does, in containerd's task bundle of the
/// "moby" namespace (`bundleRoots`: the system containerd's, and the one
/// dockerd runs itself when there is none).
public final class DockerReader: ContainerMetadataReader, @unchecked Sendable {
    public let runtimes: Set<ContainerInfo.Runtime> = [.docker]
    public let root: String
    public let bundleRoots: [String]

    public init(root: String = "/var/lib/docker",
                bundleRoots: [String] = ["/run/containerd/io.containerd.runtime.v2.task/moby",
                                         "/run/docker/containerd/daemon/io.containerd.runtime.v2.task/moby"]) {
        self.root = root
        self.bundleRoots = bundleRoots
    }

    public func metadata(for ref: ContainerRef) -> ContainerMetadata? {
        guard CgroupPathParser.isFullID(ref.id),
              let c = readJSONObject("\(root)/containers/\(ref.id)/config.v2.json") else { return nil }
        let config = c["Config"] as? [String: Any] ?? [:]
        let labels = config["Labels"] as? [String: String] ?? [:]
        let spec = bundleRoots.lazy.compactMap { readJSONObject("\($0)/\(ref.id)/config.json") }.first
        var m = ContainerMetadata(runtime: .docker, id: ref.id, annotations: labels, cgroupPath: specCgroupPath(spec))
        if let name = c["Name"] as? String {
            m.name = name.hasPrefix("/") ? String(name.dropFirst()) : name
        }
        m.image = config["Image"] as? String
        return m
    }
}

// MARK: - files

/// The cgroup an OCI spec (config.json) puts its container in: the one
/// thing in a runtime's files that ties the container to a cgroup, so that
/// a cgroup merely named after the container is not taken for it.
func specCgroupPath(_ spec: [String: Any]?) -> String? {
    guard let linux = spec?["linux"] as? [String: Any], let value = linux["cgroupsPath"] as? String else { return nil }
    return ContainerMetadata.cgroupPath(ociCgroupsPath: value)
}

struct FileStamp: Equatable {
    var mtimeSeconds: Int
    var mtimeNanoseconds: Int
    var size: Int
    var inode: UInt64

    init?(_ path: String) {
        var st = stat()
        guard stat(path, &st) == 0 else { return nil }
        mtimeSeconds = Int(st.st_mtim.tv_sec)
        mtimeNanoseconds = Int(st.st_mtim.tv_nsec)
        size = Int(st.st_size)
        inode = UInt64(st.st_ino)
    }
}

/// A JSON file's top-level value, or nil when missing or not JSON (a file
/// being written is read again later).
func readJSON(_ path: String) -> Any? {
    guard let text = try? readFile(path), let data = text.data(using: .utf8) else { return nil }
    return try? JSONSerialization.jsonObject(with: data)
}

func readJSONObject(_ path: String) -> [String: Any]? {
    readJSON(path) as? [String: Any]
}

/// Names of the subdirectories of `dir`, or nil when it does not exist.
func subdirectories(_ dir: String) -> [String]? {
    listDirectory(dir).map { $0.filter(\.isDirectory).map(\.name) }
}
