/// Reads a cgroup v2 path the way container runtimes and the kubelet lay them
/// out, and says whether it is a container's (and which), a host process's, or
/// something that cannot be told. Pure: no file is read here; the caller says
/// which containerd namespaces exist.
///
/// Layouts recognised (paths relative to the cgroup2 mount):
///   podman, cgroupfs     /libpod_parent/libpod-<id>, <any parent>/libpod-<id>
///   podman, systemd      /machine.slice/libpod-<id>.scope (also rootless, under user.slice)
///   podman's monitor     .../libpod-conmon-<id>[.scope]           -> host (not a container)
///   docker, cgroupfs     /docker/<id>
///   docker, systemd      /system.slice/docker-<id>.scope
///   containerd (ctr, nerdctl)  /<namespace>/<id>
///   Kubernetes, systemd  /kubepods.slice[/kubepods-<qos>.slice]/kubepods[-<qos>]-pod<uid>.slice/
///                          {cri-containerd,crio,docker}-<id>.scope
///   Kubernetes, cgroupfs /kubepods[/<qos>]/pod<uid>/<id>   (also crio-<id>, libpod-<id>)
/// Anything below a container's own cgroup (crun's `container`, systemd's
/// `init.scope` in a container) belongs to that container. The first container
/// found walking from the root wins, so a cgroup a container made for a nested
/// runtime is still attributed to the outer container, which is the one this
/// node's runtime knows.
///
/// Never a wrong container: an id of the wrong length or alphabet where a
/// runtime's name promises one gives `.unknown`, not a guess.
///
/// A `.container` result is only what the name claims: anyone who may make
/// cgroups can name one `libpod-<id>.scope`. The identity is the runtime's
/// only when its metadata names this cgroup (`Identity.container`).
public enum CgroupPathParser {
    /// The containerd namespaces assumed when the caller knows of none.
    public static let defaultContainerdNamespaces: Set<String> = ["default", "k8s.io"]

    /// Longest path accepted (the kernel's PATH_MAX); longer is `.unknown`.
    public static let maximumPathLength = 4096
    /// Longest single cgroup name (NAME_MAX).
    public static let maximumNameLength = 255

    public static func parse(_ path: String, containerdNamespaces: Set<String> = defaultContainerdNamespaces) -> CgroupOrigin {
        guard !path.isEmpty, path.utf8.count <= maximumPathLength else { return .unknown(path) }
        // Split at every "/" byte, as the kernel does: a String splits by
        // Characters, and "/" followed by a combining mark is one Character,
        // which would glue a sub-cgroup named "\u{301}x" to its parent.
        let components = path.unicodeScalars.split(separator: "/").map(Substring.init)
        if components.isEmpty { return .host("/") }
        let host = CgroupOrigin.host(path.utf8.first == UInt8(ascii: "/") ? path : "/" + path)
        if components.contains(where: { $0.utf8.count > maximumNameLength || $0 == "." || $0 == ".." }) {
            return .unknown(path)
        }

        // cgroupfs layouts rooted at the top.
        if components.count >= 2 {
            let first = components[0], second = components[1]
            if first == "docker" {
                guard isFullID(second) else { return .unknown(path) }
                return container(.docker, String(second), components, upTo: 1)
            }
            if containerdNamespaces.contains(String(first)), !isSystemdUnit(first) {
                if isContainerdID(second), !isSystemdUnit(second) {
                    var ref = ContainerRef(runtime: .containerd, id: String(second), cgroupPath: prefix(components, through: 1))
                    ref.containerdNamespace = String(first)
                    return .container(ref)
                }
                return .unknown(path)
            }
        }

        for (i, c) in components.enumerated() {
            if isKubepodsRoot(c) {
                return parseKubepods(components, from: i + 1, original: path)
            }
            switch containerClaim(c) {
            case .none: continue
            case .notAContainer: return host
            case .malformed: return .unknown(path)
            case let .container(runtime, id):
                return container(runtime, id, components, upTo: i)
            }
        }
        return host
    }

    // MARK: - Kubernetes

    private static func parseKubepods(_ components: [Substring], from start: Int, original: String) -> CgroupOrigin {
        var i = start
        var qos: KubernetesQoS?
        var podUID: String?
        // Optional QoS level, then the pod.
        while i < components.count, podUID == nil {
            let c = components[i]
            if let q = KubernetesQoS(cgroupfsName: c) ?? KubernetesQoS(systemdSlice: c) {
                guard qos == nil else { return .unknown(original) }
                qos = q
            } else if let uid = CgroupPathParser.podUID(from: c) {
                podUID = uid
            } else {
                return .unknown(original)  // kubelet's tree, but not a layout it makes
            }
            i += 1
        }
        guard let podUID, i < components.count else { return .unknown(original) }  // the pod's own cgroup
        let c = components[i]
        let runtime: ContainerInfo.Runtime?
        let id: String
        switch containerClaim(c) {
        case let .container(r, cid):
            runtime = r
            id = cid
        case .notAContainer:
            return .host("/" + components.joined(separator: "/"))
        case .malformed:
            return .unknown(original)
        case .none:
            // cgroupfs driver: the bare id; containerd, or docker through cri-dockerd.
            guard isFullID(c) else { return .unknown(original) }
            runtime = nil
            id = String(c)
        }
        var ref = ContainerRef(runtime: runtime, id: id, cgroupPath: prefix(components, through: i))
        ref.podUID = podUID
        ref.qos = qos ?? .guaranteed
        return .container(ref)
    }

    static func isKubepodsRoot(_ c: Substring) -> Bool {
        // "kubepods" (cgroupfs), "kubepods.slice" (systemd), and kubelets run
        // with --cgroup-root, e.g. "kubelet-kubepods.slice" or ".../kubepods".
        c == "kubepods" || c == "kubepods.slice" || (c.hasSuffix("-kubepods.slice") && c.utf8.count < 64)
    }

    /// "pod<uid>" (cgroupfs) or "kubepods-<qos>-pod<uid_with_underscores>.slice" (systemd).
    static func podUID(from c: Substring) -> String? {
        var raw: Substring
        if c.hasSuffix(".slice") {
            let name = c.dropLast(".slice".count)
            guard name.hasPrefix("kubepods") || name.contains("-kubepods"),
                  let r = name.firstRange(of: "-pod") else { return nil }
            raw = name[r.upperBound...]
            let uid = String(raw.map { $0 == "_" ? "-" : $0 })
            return isPodUID(uid) ? uid : nil
        }
        guard c.hasPrefix("pod") else { return nil }
        raw = c.dropFirst(3)
        return isPodUID(raw) ? String(raw) : nil
    }

    /// A pod uid: a UUID (36 characters), or the 32 hex digits the kubelet
    /// gives static pods.
    static func isPodUID<S: StringProtocol>(_ s: S) -> Bool {
        let b = Array(s.utf8)
        if b.count == 32 { return b.allSatisfy(isLowerHex) }
        guard b.count == 36 else { return false }
        for (i, ch) in b.enumerated() {
            if i == 8 || i == 13 || i == 18 || i == 23 {
                if ch != UInt8(ascii: "-") { return false }
            } else if !isLowerHex(ch) {
                return false
            }
        }
        return true
    }

    // MARK: - Names runtimes give a container's cgroup

    enum Claim: Equatable {
        /// Not a runtime's name.
        case none
        /// A runtime's helper, not a container (conmon).
        case notAContainer
        /// A runtime's name with an id that is not one.
        case malformed
        case container(ContainerInfo.Runtime, String)
    }

    private static let prefixes: [(String, ContainerInfo.Runtime)] = [
        ("libpod-", .podman),
        ("cri-containerd-", .containerd),
        ("crio-", .crio),
        ("docker-", .docker),
    ]

    static func containerClaim(_ c: Substring) -> Claim {
        for (p, runtime) in prefixes where c.hasPrefix(p) {
            var rest = c.dropFirst(p.count)
            let scope = rest.hasSuffix(".scope")
            if scope { rest = rest.dropLast(".scope".count) }
            if rest.hasPrefix("conmon-") { return .notAContainer }
            if isFullID(rest) { return .container(runtime, String(rest)) }
            // "docker-<id>.scope" always claims a container; a cgroupfs-style
            // name claims one only for libpod and crio, whose names have no dot.
            // "docker-compose@x.service" is just a host unit.
            if scope { return .malformed }
            if rest.contains(".") || runtime == .docker || runtime == .containerd { return .none }
            return .malformed
        }
        return .none
    }

    // MARK: - helpers

    private static func container(_ runtime: ContainerInfo.Runtime, _ id: String, _ components: [Substring], upTo i: Int) -> CgroupOrigin {
        .container(ContainerRef(runtime: runtime, id: id, cgroupPath: prefix(components, through: i)))
    }

    private static func prefix(_ components: [Substring], through i: Int) -> String {
        "/" + components[0...i].joined(separator: "/")
    }

    /// 64 lowercase hex digits: the ids podman, docker, containerd's CRI and CRI-O make.
    public static func isFullID<S: StringProtocol>(_ s: S) -> Bool {
        s.utf8.count == 64 && s.utf8.allSatisfy(isLowerHex)
    }

    /// containerd's identifier rule (pkg/identifiers): letters, digits, '.',
    /// '_' and '-', starting and ending with a letter or digit, at most 76.
    public static func isContainerdID<S: StringProtocol>(_ s: S) -> Bool {
        let b = Array(s.utf8)
        guard !b.isEmpty, b.count <= 76, isAlnum(b.first!), isAlnum(b.last!) else { return false }
        return b.allSatisfy { isAlnum($0) || $0 == UInt8(ascii: ".") || $0 == UInt8(ascii: "_") || $0 == UInt8(ascii: "-") }
    }

    static func isSystemdUnit<S: StringProtocol>(_ s: S) -> Bool {
        s.hasSuffix(".slice") || s.hasSuffix(".scope") || s.hasSuffix(".service")
    }

    @inline(__always) static func isLowerHex(_ c: UInt8) -> Bool {
        (c >= UInt8(ascii: "0") && c <= UInt8(ascii: "9")) || (c >= UInt8(ascii: "a") && c <= UInt8(ascii: "f"))
    }

    @inline(__always) static func isAlnum(_ c: UInt8) -> Bool {
        (c >= UInt8(ascii: "0") && c <= UInt8(ascii: "9")) || (c >= UInt8(ascii: "a") && c <= UInt8(ascii: "z"))
            || (c >= UInt8(ascii: "A") && c <= UInt8(ascii: "Z"))
    }
}

/// What a cgroup path says about the processes in it.
public enum CgroupOrigin: Sendable, Hashable {
    /// A container's cgroup, or one below it.
    case container(ContainerRef)
    /// A process of the node itself, named by its cgroup path ("/system.slice/nginx.service").
    case host(String)
    /// A path that looks like a runtime's but cannot be read safely (malformed
    /// id, too long, the kubelet's tree without a container).
    case unknown(String)
}

/// A container as its cgroup path names it, before any metadata is read.
public struct ContainerRef: Sendable, Hashable {
    /// nil when the layout does not say (the kubelet's cgroupfs layout, with
    /// a bare id, is used by containerd and by docker through cri-dockerd).
    public var runtime: ContainerInfo.Runtime?
    public var id: String
    /// The container's own cgroup (without any sub-cgroup the event came from).
    public var cgroupPath: String
    public var podUID: String?
    public var qos: KubernetesQoS?
    /// For containerd's `/<namespace>/<id>` layout.
    public var containerdNamespace: String?

    public init(runtime: ContainerInfo.Runtime?, id: String, cgroupPath: String,
                podUID: String? = nil, qos: KubernetesQoS? = nil, containerdNamespace: String? = nil) {
        self.runtime = runtime
        self.id = id
        self.cgroupPath = cgroupPath
        self.podUID = podUID
        self.qos = qos
        self.containerdNamespace = containerdNamespace
    }
}

/// The kubelet's quality-of-service classes, each a level of its cgroup tree
/// (guaranteed pods sit directly under kubepods).
public enum KubernetesQoS: String, Sendable, Hashable, Codable {
    case guaranteed
    case burstable
    case besteffort

    init?(cgroupfsName c: Substring) {
        switch c {
        case "burstable": self = .burstable
        case "besteffort": self = .besteffort
        default: return nil
        }
    }

    /// "kubepods-burstable.slice", or "kubelet-kubepods-burstable.slice"
    /// under a kubelet run with --cgroup-root (kind).
    init?(systemdSlice c: Substring) {
        if c == "kubepods-burstable.slice" || c.hasSuffix("-kubepods-burstable.slice") {
            self = .burstable
        } else if c == "kubepods-besteffort.slice" || c.hasSuffix("-kubepods-besteffort.slice") {
            self = .besteffort
        } else {
            return nil
        }
    }
}
