import ConnGuardCore
import Foundation

/// What `connguard status` shows: the agent writes it (GET /v1/status), the
/// CLI reads it, with this one type. The JSON keys are the properties' names
/// in snake_case; absent values are written as null (`Nullable`), never left
/// out.
public struct AgentStatus: Codable, Sendable, Equatable {
    public var version: String
    public var pid: Int64
    public var startedAt: String
    public var uptimeSeconds: Int64
    public var cgroupRoot: String
    public var hookRung: String
    /// capability -> "rung detail"
    public var hooks: [String: String]
    /// Learnt from /proc at start: listeners on the whole node (their owners,
    /// for accepts), established connections in scope.
    public var listenersSeeded: Int64
    public var connectionsSeeded: Int64
    public var events: Events
    public var lost: Lost
    public var incomplete: Incomplete
    public var workloads: Int64
    public var cgroupsTracked: Int64
    public var database: DatabaseStatus
    public var metricsAddress: Nullable<String>
    public var enforcement: Enforcement
    public var dns: DNS
    /// mode -> how many workloads are in it
    public var modes: [String: Int64]
    public var audit: Audit
    /// On a cluster (--cluster-endpoints); null for a node alone.
    public var cluster: Nullable<Cluster>

    public struct Events: Codable, Sendable, Equatable {
        public var connect: Int64
        public var accept: Int64
        public var unattributed: Int64
        public var outsideCgroupRoot: Int64
        public var stored: Int64
        /// Stored in their aggregated connection only, without a row (over
        /// --individual-events-per-second).
        public var aggregatedOnly: Int64
        /// Of those, counted in the kernel (repeats that never crossed the
        /// ring buffer).
        public var countedInKernel: Int64
    }

    public struct Lost: Codable, Sendable, Equatable {
        public var total: Int64
        public var kernelRingBufferFull: Int64
        public var kernelCgroupRecords: Int64
        /// Denials that happened (the connection or datagram was refused) but
        /// whose events were lost, or could not be decoded.
        public var denials: Int64
        public var undecodable: Int64
        public var writeQueueFull: Int64
        public var writeFailed: Int64
        /// Not in total: a skipped run may have been a transition we ignore.
        public var possiblyLostKernelRecursion: Int64
    }

    public struct Incomplete: Codable, Sendable, Equatable {
        public var connectsWithoutProcess: Int64
        public var listenersWithoutOwner: Int64
        public var acceptsNamingListener: Int64
        /// UDP sockets whose role (client or server) could not be kept: taken
        /// by each datagram as what it makes them.
        public var udpSocketsWithoutRole: Int64
        /// Sockets whose binder enforcement could not record: their inbound
        /// denials carry no process.
        public var socketsWithoutBinder: Int64
    }

    public struct DatabaseStatus: Codable, Sendable, Equatable {
        public var path: String
        public var sizeBytes: Int64
        public var events: Int64
        public var connections: Int64
    }

    public struct Enforcement: Codable, Sendable, Equatable {
        public var cgroup: String
        public var pinnedAt: String
        public var adopted: Bool
        /// Attached when a workload is first enforced (learn and monitor need
        /// no kernel hook).
        public var programsAttached: Bool
        public var unknownCgroups: String
        public var onExit: String
        public var arming: Nullable<String>
        /// The rules of enforced workloads in the kernel.
        public var kernelRules: KernelRules
        /// Enforced workloads whose rules did not fit (monitored in the kernel).
        public var heldBack: [String]
        /// Inbound packets whose TCP or UDP header was not found (let through).
        public var unparsedPackets: Int64
        /// New cgroups in the subtree not reported at birth (armed later, by
        /// the agent's sweep).
        public var newCgroupsMissed: Int64
        /// UDP denials counted, not sent one by one (their flow's first denial
        /// that second was).
        public var udpDenialsCounted: Int64
    }

    /// DNS answers: read in user space (peer_name, learning by name) and by
    /// enforcement in the kernel (allowed names' addresses).
    public struct DNS: Codable, Sendable, Equatable {
        public var answers: Int64
        public var malformed: Int64
        public var notAnAnswer: Int64
        /// From resolvers outside the workload's baseline: ignored.
        public var untrusted: Int64
        /// Not passed on to user space (ring buffer full).
        public var lost: Int64
        /// Not passed on: the same answer to the same cgroup within a second.
        public var repeatsInKernel: Int64
        public var floorSeconds: Double
        /// In the kernel, for enforced workloads (pinned counters).
        public var granted: Int64
        public var addressesGranted: Int64
        public var nameNotAllowed: Int64
        public var untrustedResolver: Int64
        public var kernelMalformed: Int64
        public var grantsFull: Int64
        public var allowedByGrant: Int64
        public var kernelRepeats: Int64
    }

    public struct KernelRules: Codable, Sendable, Equatable {
        public var address: Int64
        public var addressCapacity: Int64
        public var workload: Int64
        public var workloadCapacity: Int64
    }

    public struct Cluster: Codable, Sendable, Equatable {
        public var node: String
        public var endpoints: [String]
        /// "connecting" (no answer yet), "connected", or "degraded" (the
        /// store is away: enforcing what was last known, learning locally).
        public var state: String
        public var degradedSince: Nullable<String>
        public var reason: Nullable<String>
        /// The store's revision last seen.
        public var revision: Int64
        /// Addresses other nodes published.
        public var remoteAddresses: Int64
        /// Workloads with a cluster baseline.
        public var baselines: Int64
        /// Addresses claimed for more than one workload (they name none).
        public var addressConflicts: Int64
        /// Values in the store that were refused (not applied).
        public var refusedValues: Int64
        /// Merges of learnt rules this agent made.
        public var merges: Int64
    }

    public struct Audit: Codable, Sendable, Equatable {
        /// The last entries, "who action workload detail; ...".
        public var recent: String
    }

    /// The JSON the agent answers with: one line.
    public func json() throws -> Data {
        let encoder = JSONEncoder()
        encoder.keyEncodingStrategy = .convertToSnakeCase
        return try encoder.encode(self)
    }

    /// Reads what the agent answered.
    public static func decode(_ data: Data) throws -> AgentStatus {
        let decoder = JSONDecoder()
        decoder.keyDecodingStrategy = .convertFromSnakeCase
        return try decoder.decode(AgentStatus.self, from: data)
    }
}

/// An optional value that is written as null when absent, where Codable
/// would leave the key out: consumers of the JSON see every key, always.
public struct Nullable<Wrapped: Codable & Sendable & Equatable>: Codable, Sendable, Equatable {
    public var value: Wrapped?

    public init(_ value: Wrapped?) { self.value = value }

    public init(from decoder: Decoder) throws {
        let c = try decoder.singleValueContainer()
        value = c.decodeNil() ? nil : try c.decode(Wrapped.self)
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.singleValueContainer()
        if let value { try c.encode(value) } else { try c.encodeNil() }
    }
}
