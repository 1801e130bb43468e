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
    /// uid, container), the last two null when not known. Written straight
    /// into the line, each key preceded by a comma: this runs for every event
    /// the tracer prints.
    func putJSONFields(_ w: inout LineCursor) {
        w.put(#","workload":"#)
        w.string(workload)
        w.put(#","container":"#)
        Self.putObject(&w, container.map { c -> [(key: StaticString, value: String?)] in [("id", c.id), ("runtime", c.runtime.rawValue), ("name", c.name), ("image", c.image)] })
        w.put(#","pod":"#)
        Self.putObject(&w, pod.map { p -> [(key: StaticString, value: String?)] in [("namespace", p.namespace), ("name", p.name), ("uid", p.uid), ("container", p.container)] })
    }

    /// A JSON object of string fields, or null.
    private static func putObject(_ w: inout LineCursor, _ fields: [(key: StaticString, value: String?)]?) {
        guard let fields else { return w.put("null") }
        for (i, f) in fields.enumerated() {
            w.put(i == 0 ? "{\"" : ",\"")
            w.put(f.key)
            w.put("\":")
            w.string(f.value)
        }
        w.put("}")
    }

    /// The most bytes putJSONFields can write.
    var jsonFieldsBound: Int {
        var n = 128 + LineCursor.stringBound(workload)
        if let c = container {
            n += LineCursor.stringBound(c.id) + LineCursor.stringBound(c.runtime.rawValue)
                + LineCursor.stringBound(c.name) + LineCursor.stringBound(c.image)
        }
        if let p = pod {
            n += LineCursor.stringBound(p.namespace) + LineCursor.stringBound(p.name)
                + LineCursor.stringBound(p.uid) + LineCursor.stringBound(p.container)
        }
        return n
    }

    /// The CONTAINER column: its name, else the short id; "-" for a host process.
    public var containerColumn: String {
        guard let c = container else { return "-" }
        return c.name ?? String(c.id.prefix(12))
    }
}
