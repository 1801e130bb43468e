/// Which workload holds each address of this node's containers and pods, so
/// that a connection from or to one of them is a rule on that workload, not
/// on an address that changes with every restart.
///
/// Fed with what the node shows: each cgroup of a known workload, the network
/// namespace its processes are in, and that namespace's own addresses
/// (`NamespaceAddresses`). A cgroup on the node's own network namespace (host
/// network, host processes) has no address of its own and is not fed here.
/// An address is a workload's when every cgroup in every namespace holding it
/// belongs to that one workload. The containers of one Kubernetes pod share
/// its namespace, and a peer elsewhere cannot tell which of them connected:
/// their address names the pod's owner ("<namespace>/<owner>", the
/// Deployment or StatefulSet whose replicas they are), the same on every
/// replica. Any other address held for several workloads (two namespaces
/// with the same address, containers of no one pod) names none of them, and
/// rules on it stay address rules.
public struct AddressBook: Sendable, Equatable {
    public struct Member: Sendable, Equatable {
        public var workload: String
        public var namespace: UInt64
        /// For a Kubernetes pod's container: the pod's owner,
        /// "<namespace>/<owner>" (`WorkloadNaming.podOwner`).
        public var podOwner: String?
        public init(workload: String, namespace: UInt64, podOwner: String? = nil) {
            self.workload = workload
            self.namespace = namespace
            self.podOwner = podOwner
        }
    }

    /// cgroup id -> where its processes are.
    public private(set) var members: [UInt64: Member] = [:]
    /// network namespace inode -> its addresses.
    public private(set) var namespaces: [UInt64: Set<IPAddress>] = [:]
    /// The result: address -> the one workload holding it.
    public private(set) var owners: [IPAddress: String] = [:]

    public init() {}

    /// What changed in `owners`: the new owner of each address, nil where an
    /// address no longer names a workload.
    public typealias Changes = [IPAddress: String?]

    /// Records one cgroup (its workload, namespace and that namespace's
    /// addresses as just read).
    public mutating func update(cgroup: UInt64, member: Member, addresses: Set<IPAddress>) -> Changes {
        members[cgroup] = member
        namespaces[member.namespace] = addresses
        return recompute()
    }

    /// The cgroup went away (or left the namespaces this book tracks).
    public mutating func remove(cgroup: UInt64) -> Changes {
        guard let m = members.removeValue(forKey: cgroup) else { return [:] }
        if !members.values.contains(where: { $0.namespace == m.namespace }) { namespaces[m.namespace] = nil }
        return recompute()
    }

    /// Replaces everything with a full scan of the node.
    public mutating func replaceAll(members: [UInt64: Member], namespaces: [UInt64: Set<IPAddress>]) -> Changes {
        self.members = members
        self.namespaces = namespaces.filter { ns in members.values.contains { $0.namespace == ns.key } }
        return recompute()
    }

    private func namespacesHolding(_ a: IPAddress) -> Int {
        namespaces.values.filter { $0.contains(a) }.count
    }

    private mutating func recompute() -> Changes {
        var holders: [IPAddress: Set<String>] = [:]
        var ownersOf: [IPAddress: Set<String?>] = [:]
        var workloadsOf: [UInt64: Set<String>] = [:]
        var podOwnersOf: [UInt64: Set<String?>] = [:]
        for m in members.values {
            workloadsOf[m.namespace, default: []].insert(m.workload)
            podOwnersOf[m.namespace, default: []].insert(m.podOwner)
        }
        for (ns, addresses) in namespaces {
            guard let ws = workloadsOf[ns] else { continue }
            for a in addresses where !a.isLoopback && !a.isUnspecified {
                holders[a, default: []].formUnion(ws)
                ownersOf[a, default: []].formUnion(podOwnersOf[ns] ?? [])
            }
        }
        var next: [IPAddress: String] = [:]
        for (a, ws) in holders {
            if ws.count == 1 {
                next[a] = ws.first!
            } else if let pods = ownersOf[a], pods.count == 1, let pod = pods.first!, namespacesHolding(a) == 1 {
                // Containers of one pod: the pod's owner.
                next[a] = pod
            }
        }
        var changes: Changes = [:]
        for (a, w) in next where owners[a] != w { changes[a] = .some(w) }
        for a in owners.keys where next[a] == nil { changes[a] = .some(nil) }
        owners = next
        return changes
    }
}
