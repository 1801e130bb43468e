import CConnGuard
import Glibc

/// One TCP connection made (connect) or taken (accept) on this node, or the
/// first datagram of a UDP flow (in a counting period) that a process here
/// sent (connect) or that a local server received (accept), as the kernel
/// reported it.
public struct ConnectionEvent: Sendable, Equatable {
    /// The transport protocol ("protocol" in JSON, rules and the store).
    public enum IPProtocol: String, Sendable, Codable, CaseIterable {
        case tcp
        case udp
    }

    public enum Direction: String, Sendable, Codable, CaseIterable {
        /// A process here called connect().
        case connect
        /// A listener here took a connection.
        case accept
    }

    public enum Outcome: String, Sendable, Codable, CaseIterable {
        case established
        /// Refused, unreachable, timed out or aborted; `error` says which.
        case failed
        /// Refused by ConnGuard's enforcement in the kernel: connect() failed
        /// with EPERM, or the SYN to a listener was dropped.
        case denied
    }

    /// The kernel hook that saw it (the attach ladder).
    public enum Hook: String, Sendable, Codable, CaseIterable {
        case tracepoint
        case fentry
        case kprobe
        /// cgroup/connect4, cgroup/connect6 (enforcement: a refused connect).
        case cgroupConnect = "cgroup_connect"
        /// cgroup_skb/ingress (enforcement: a dropped SYN).
        case cgroupSKB = "cgroup_skb"
        /// cgroup/connect, sendmsg, recvmsg 4/6, always allowing: UDP flows.
        case cgroupSockAddr = "cgroup_sock_addr"
        /// Not a hook: found already established in /proc when the agent
        /// started (the connect or accept happened before anything watched).
        case snapshot
        case unknown
    }

    /// Wall-clock time, nanoseconds since the Unix epoch (UTC).
    public var timeNanoseconds: Int64
    public var direction: Direction
    public var outcome: Outcome
    /// errno of a failed connect (ECONNREFUSED, ETIMEDOUT, ...), else 0.
    public var error: Int32
    /// Process that connected, or that owns the listener. 0 when not known.
    public var pid: UInt32
    public var comm: String
    public var uid: UInt32
    /// cgroup v2 id of the process (connect) or listening socket (accept).
    public var cgroupID: UInt64
    public var netns: UInt32
    /// Flow direction: for accept, source is the remote client.
    public var source: IPAddress
    public var sourcePort: UInt16
    public var destination: IPAddress
    public var destinationPort: UInt16
    public var hook: Hook
    /// False when the connect began before the tracer attached, or the
    /// listener's owner is not known: pid, comm and uid are then 0 / empty.
    public var processKnown: Bool
    /// The cgroup of the other end when it is a socket of this node in the
    /// same network namespace (loopback, the node's own address, a shared
    /// namespace): the listener of a connect to a loopback address, the
    /// client of an accept. 0 when the peer is elsewhere or was not found.
    public var peerCgroupID: UInt64
    public var proto: IPProtocol
    /// For an outbound connection to an address this workload resolved
    /// through DNS: the name it resolved most recently to that address (set
    /// in user space, from the answers the tracer passes on). nil otherwise.
    public var peerName: String?

    public var family: IPAddress.Family { source.family }

    /// The port on this node's side: the listener's for accept, ours for connect.
    public var localPort: UInt16 { direction == .accept ? destinationPort : sourcePort }
    /// The port on the other side.
    public var remotePort: UInt16 { direction == .accept ? sourcePort : destinationPort }
    public var peer: IPAddress { direction == .accept ? source : destination }

    public init(timeNanoseconds: Int64, direction: Direction, outcome: Outcome, error: Int32 = 0,
                pid: UInt32, comm: String, uid: UInt32, cgroupID: UInt64, netns: UInt32 = 0,
                source: IPAddress, sourcePort: UInt16, destination: IPAddress, destinationPort: UInt16,
                hook: Hook = .tracepoint, processKnown: Bool = true, peerCgroupID: UInt64 = 0,
                proto: IPProtocol = .tcp, peerName: String? = nil) {
        self.timeNanoseconds = timeNanoseconds
        self.direction = direction
        self.outcome = outcome
        self.error = error
        self.pid = pid
        self.comm = comm
        self.uid = uid
        self.cgroupID = cgroupID
        self.netns = netns
        self.source = source
        self.sourcePort = sourcePort
        self.destination = destination
        self.destinationPort = destinationPort
        self.hook = hook
        self.processKnown = processKnown
        self.peerCgroupID = peerCgroupID
        self.proto = proto
        self.peerName = peerName
    }
}

/// A DNS message that a socket of the node received from port 53, as the
/// tracer passed it on, and what the parser read in it.
public struct DNSMessage: Sendable, Equatable {
    public var timeNanoseconds: Int64
    /// The receiving socket's cgroup: the workload that resolved.
    public var cgroupID: UInt64
    public var resolver: IPAddress
    public var resolverPort: UInt16
    public var proto: ConnectionEvent.IPProtocol
    public var answer: Result<DNSAnswer, DNSAnswer.Problem>

    public init(timeNanoseconds: Int64, cgroupID: UInt64, resolver: IPAddress, resolverPort: UInt16,
                proto: ConnectionEvent.IPProtocol, answer: Result<DNSAnswer, DNSAnswer.Problem>) {
        self.timeNanoseconds = timeNanoseconds
        self.cgroupID = cgroupID
        self.resolver = resolver
        self.resolverPort = resolverPort
        self.proto = proto
        self.answer = answer
    }
}

/// A cgroup appeared or went away (any hierarchy; v2 is hierarchy 0).
public struct CgroupEvent: Sendable, Equatable {
    public var timeNanoseconds: Int64
    public var created: Bool
    public var hierarchyID: UInt32
    public var cgroupID: UInt64
    /// Relative to the hierarchy's root, e.g. "/kubepods/besteffort/pod.../<id>".
    public var path: String

    public init(timeNanoseconds: Int64, created: Bool, hierarchyID: UInt32, cgroupID: UInt64, path: String) {
        self.timeNanoseconds = timeNanoseconds
        self.created = created
        self.hierarchyID = hierarchyID
        self.cgroupID = cgroupID
        self.path = path
    }
}

/// A decoded ring-buffer record.
public enum TraceRecord: Sendable, Equatable {
    case connection(ConnectionEvent)
    case cgroup(CgroupEvent)
    case dns(DNSMessage)
}

public enum RecordDecodingError: Error, Equatable {
    case tooShort(Int)
    case unknownKind(UInt32)
    case badField(String)
}

extension TraceRecord {
    /// Decodes one record as the BPF programs wrote it (connguard.h).
    public static func decode(_ bytes: UnsafeRawBufferPointer, clock: BootClock) throws -> TraceRecord {
        guard bytes.count >= 4 else { throw RecordDecodingError.tooShort(bytes.count) }
        let kind = bytes.loadUnaligned(as: UInt32.self)
        switch kind {
        case UInt32(CG_RECORD_CONNECTION.rawValue):
            guard bytes.count >= MemoryLayout<cg_connection_event>.size else {
                throw RecordDecodingError.tooShort(bytes.count)
            }
            let raw = bytes.loadUnaligned(as: cg_connection_event.self)
            return .connection(try ConnectionEvent(raw, clock: clock))
        case UInt32(CG_RECORD_CGROUP_MKDIR.rawValue), UInt32(CG_RECORD_CGROUP_RMDIR.rawValue):
            guard bytes.count >= MemoryLayout<cg_cgroup_event>.size else {
                throw RecordDecodingError.tooShort(bytes.count)
            }
            let raw = bytes.loadUnaligned(as: cg_cgroup_event.self)
            var r = raw
            let path = withUnsafeBytes(of: &r.path) { cString(from: $0) }
            return .cgroup(CgroupEvent(
                timeNanoseconds: clock.wallNanoseconds(bootNanoseconds: raw.timestamp_ns),
                created: kind == UInt32(CG_RECORD_CGROUP_MKDIR.rawValue),
                hierarchyID: raw.hierarchy_id, cgroupID: raw.cgroup_id, path: path))
        case UInt32(CG_RECORD_DNS_MESSAGE.rawValue):
            guard bytes.count >= MemoryLayout<cg_dns_message>.size else { throw RecordDecodingError.tooShort(bytes.count) }
            let header = bytes.loadUnaligned(as: cg_dns_message.self)
            guard let proto = ConnectionEvent.IPProtocol(kernel: header.protocol) else {
                throw RecordDecodingError.badField("protocol \(header.protocol)")
            }
            // Parsed where it lies, as far as the kernel copied it.
            let start = MemoryLayout<cg_dns_message>.offset(of: \cg_dns_message.data)!
            let data = UnsafeRawBufferPointer(rebasing: bytes[start ..< start + Int(min(header.len, UInt32(CG_DNS_MAX_BYTES)))])
            return .dns(DNSMessage(
                timeNanoseconds: clock.wallNanoseconds(bootNanoseconds: header.timestamp_ns), cgroupID: header.cgroup_id,
                resolver: withUnsafeBytes(of: header.resolver) { IPAddress(ipv6: Array($0)) }, resolverPort: header.resolver_port,
                proto: proto, answer: DNSAnswer.parse(data, messageLength: Int(header.message_len))))
        default:
            throw RecordDecodingError.unknownKind(kind)
        }
    }
}

extension ConnectionEvent {
    public init(_ raw: cg_connection_event, clock: BootClock) throws {
        let family = Int32(raw.family)
        guard let src = withUnsafeBytes(of: raw.saddr, { IPAddress(family: family, networkBytes: $0.baseAddress!) }),
              let dst = withUnsafeBytes(of: raw.daddr, { IPAddress(family: family, networkBytes: $0.baseAddress!) })
        else {
            throw RecordDecodingError.badField("family \(raw.family)")
        }
        guard let direction = Direction(kernel: raw.direction) else {
            throw RecordDecodingError.badField("direction \(raw.direction)")
        }
        guard let outcome = Outcome(kernel: raw.outcome) else { throw RecordDecodingError.badField("outcome \(raw.outcome)") }
        guard let proto = IPProtocol(kernel: raw.protocol) else { throw RecordDecodingError.badField("protocol \(raw.protocol)") }
        let hook = Hook(kernel: raw.hook)
        let unknownMask = UInt8(CG_FLAG_PROCESS_UNKNOWN.rawValue | CG_FLAG_LISTENER_UNKNOWN.rawValue)
        self.init(
            timeNanoseconds: clock.wallNanoseconds(bootNanoseconds: raw.timestamp_ns),
            direction: direction, outcome: outcome, error: raw.error,
            pid: raw.pid, comm: withUnsafeBytes(of: raw.comm) { cString(from: $0) }, uid: raw.uid,
            cgroupID: raw.cgroup_id, netns: raw.netns,
            source: src, sourcePort: raw.sport, destination: dst, destinationPort: raw.dport,
            hook: hook, processKnown: raw.flags & unknownMask == 0, peerCgroupID: raw.peer_cgroup_id,
            proto: proto)
    }
}

/// Text up to the first NUL; invalid UTF-8 (a comm can hold any bytes) is
/// repaired with U+FFFD rather than dropped.
public func cString(from bytes: UnsafeRawBufferPointer) -> String {
    let end = bytes.firstIndex(of: 0) ?? bytes.count
    return String(decoding: bytes[0..<end], as: UTF8.self)
}

/// Converts the kernel's CLOCK_BOOTTIME stamps (bpf_ktime_get_boot_ns) to wall
/// time. The offset is measured once; a later change of the wall clock (NTP
/// step) is not followed, which keeps event times monotonic within a run.
public struct BootClock: Sendable {
    public let offsetNanoseconds: Int64

    public init(offsetNanoseconds: Int64) { self.offsetNanoseconds = offsetNanoseconds }

    /// Measures realtime - boottime, taking the tightest of a few samples.
    public static func measure() -> BootClock {
        var best: (gap: Int64, offset: Int64) = (.max, 0)
        for _ in 0..<5 {
            let b1 = now(CLOCK_BOOTTIME)
            let r = now(CLOCK_REALTIME)
            let b2 = now(CLOCK_BOOTTIME)
            let gap = b2 - b1
            if gap < best.gap { best = (gap, r - (b1 + gap / 2)) }
        }
        return BootClock(offsetNanoseconds: best.offset)
    }

    public func wallNanoseconds(bootNanoseconds: UInt64) -> Int64 {
        Int64(bitPattern: bootNanoseconds) &+ offsetNanoseconds
    }

    public static func now(_ clock: clockid_t) -> Int64 {
        var ts = timespec()
        clock_gettime(clock, &ts)
        return Int64(ts.tv_sec) * 1_000_000_000 + Int64(ts.tv_nsec)
    }
}
