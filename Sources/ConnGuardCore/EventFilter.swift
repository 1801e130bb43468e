import Glibc

/// Which connection events a person asked to see. Every condition that is set
/// must hold.
public struct EventFilter: Sendable {
    public var pid: UInt32?
    /// Matches either side's port.
    public var port: UInt16?
    /// Matches events whose cgroup is in this subtree.
    public var cgroups: CgroupSubtree?
    public var proto: ConnectionEvent.IPProtocol?
    /// Matches connections whose peer_name is this name (or matches this pattern).
    public var peerName: DNSName?

    public init(pid: UInt32? = nil, port: UInt16? = nil, cgroups: CgroupSubtree? = nil,
                proto: ConnectionEvent.IPProtocol? = nil, peerName: DNSName? = nil) {
        self.pid = pid
        self.port = port
        self.cgroups = cgroups
        self.proto = proto
        self.peerName = peerName
    }

    public func matches(_ e: ConnectionEvent) -> Bool {
        if let proto, e.proto != proto { return false }
        if let pid, e.pid != pid { return false }
        if let port, e.sourcePort != port && e.destinationPort != port { return false }
        if let cgroups, !cgroups.contains(e.cgroupID) { return false }
        if let peerName, !(e.peerName.map(peerName.matches) ?? false) { return false }
        return true
    }
}


public enum CgroupSubtreeError: Error, CustomStringConvertible {
    case outsideMount(path: String, mount: String)
    case notACgroup(path: String)

    public var description: String {
        switch self {
        case let .outsideMount(path, mount): return "\(path) is not inside the cgroup v2 mount \(mount)"
        case let .notACgroup(path): return "\(path) is not a cgroup v2 directory"
        }
    }
}
