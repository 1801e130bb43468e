/// Which workloads a person asked to see (`--container`, `--workload`,
/// `--namespace`). Every condition that is set must hold.
public struct IdentityFilter: Sendable, Equatable {
    /// A container's name, or a prefix of its id.
    public var container: String?
    public var workload: String?
    /// A Kubernetes namespace.
    public var namespace: String?

    public init(container: String? = nil, workload: String? = nil, namespace: String? = nil) {
        self.container = container
        self.workload = workload
        self.namespace = namespace
    }

    public var isEmpty: Bool { container == nil && workload == nil && namespace == nil }

    public func matches(_ identity: Identity) -> Bool {
        if let container {
            guard let c = identity.container else { return false }
            let byName = c.name == container || identity.pod?.container == container
            let byID = !container.isEmpty && c.id.hasPrefix(container.lowercased())
            if !byName && !byID { return false }
        }
        if let workload, identity.workload != workload { return false }
        if let namespace, identity.pod?.namespace != namespace { return false }
        return true
    }
}

extension Identity {
    /// The keys `connguard trace -o json` adds to an event: "workload",
    /// "container" (id, runtime, name, image) and "pod" (namespace, name,
    /// uid, container), the last two null when not known.
    public var jsonFields: [(String, JSONValue)] {
        let container: JSONValue = self.container.map { c in
            .object([("id", .string(c.id)), ("runtime", .string(c.runtime.rawValue)),
                     ("name", c.name.map(JSONValue.string) ?? .null), ("image", c.image.map(JSONValue.string) ?? .null)])
        } ?? .null
        let pod: JSONValue = self.pod.map { p in
            .object([("namespace", .string(p.namespace)), ("name", .string(p.name)),
                     ("uid", .string(p.uid)), ("container", .string(p.container))])
        } ?? .null
        return [("workload", .string(workload)), ("container", container), ("pod", pod)]
    }

    /// The CONTAINER column: its name, else the short id; "-" for a host process.
    public var containerColumn: String {
        guard let c = container else { return "-" }
        return c.name ?? String(c.id.prefix(12))
    }
}
