import BPFKit
import CConnGuard
import ConnGuardCore
import Glibc

/// Events of one connection that the kernel counted instead of sending
/// (`Tracer.Configuration.countRepeats`): everything the aggregate of a
/// connection needs, without the process (each was a repeat of an event that
/// was sent with it).
public struct RepeatCount: Sendable, Equatable {
    public var cgroupID: UInt64
    public var direction: ConnectionEvent.Direction
    public var outcome: ConnectionEvent.Outcome
    /// The remote side: the destination of a connect, the client of an accept.
    public var peer: IPAddress
    /// The service port (the event's destination port).
    public var port: UInt16
    public var count: UInt64
    /// Wall-clock nanoseconds of the latest of them.
    public var lastSeenNanoseconds: Int64
    public var hook: ConnectionEvent.Hook
    /// As in the events it stands for (`ConnectionEvent.peerCgroupID`).
    public var peerCgroupID: UInt64 = 0
    /// UDP datagrams are always counted; TCP repeats only with `countRepeats`.
    public var proto: ConnectionEvent.IPProtocol = .tcp

    /// The record that stands for all of them: the connection's fields, no
    /// process, the time of the latest, and the unspecified address on this
    /// node's side (the aggregate does not keep it).
    public var record: ConnectionRecord {
        let here = peer.family == .ipv4 ? IPAddress(ipv4: 0) : IPAddress(high: 0, low: 0)
        let event = ConnectionEvent(
            timeNanoseconds: lastSeenNanoseconds, direction: direction, outcome: outcome, pid: 0, comm: "", uid: 0,
            cgroupID: cgroupID, source: direction == .accept ? peer : here, sourcePort: 0,
            destination: direction == .accept ? here : peer, destinationPort: port, hook: hook, processKnown: false,
            peerCgroupID: peerCgroupID, proto: proto)
        return ConnectionRecord(event, source: .counted(count))
    }
}

/// The kernel side of repeat counting: two per-CPU maps, one counting while
/// the other is read. See `count_repeats` in bpf/trace.bpf.c.
final class RepeatCounter {
    private let slot: BPFMap
    private var counting: BPFMap
    private var idle: BPFMap
    private let clock: BootClock
    private let hook: ConnectionEvent.Hook
    /// Counted events whose key user space could not read (a bug if ever
    /// non-zero); reported with the tracer's undecodable records.
    private(set) var undecodable: UInt64 = 0

    init(object: BPFObject, clock: BootClock, hook: ConnectionEvent.Hook) throws {
        slot = try object.map("repeats")
        counting = try object.map("repeats_a")
        idle = try object.map("repeats_b")
        self.clock = clock
        self.hook = hook
    }

    /// Points the kernel at the idle map, then reads and empties the one it
    /// counted in. The update of an array of maps returns only once every
    /// program that may still hold the old map has finished (the kernel waits
    /// for an RCU grace period), so no count lands in it while it is read.
    func take() throws -> [RepeatCount] {
        try slot.update(key: UInt32(0), value: UInt32(idle.fd))
        let full = counting
        counting = idle
        idle = full
        var result: [RepeatCount] = []
        for key in try full.keys(as: cg_repeat_key.self) {
            guard let perCPU = try full.perCPUValues(key: key, as: cg_repeat_count.self) else { continue }
            try full.delete(key: key)
            let count = perCPU.reduce(0) { $0 &+ $1.count }
            guard count > 0 else { continue }
            guard let r = repeatCount(key, count: count, lastBoot: perCPU.map(\.last_ns).max() ?? 0) else {
                undecodable += count
                continue
            }
            result.append(r)
        }
        return result
    }

    private func repeatCount(_ key: cg_repeat_key, count: UInt64, lastBoot: UInt64) -> RepeatCount? {
        guard let peer = withUnsafeBytes(of: key.peer, { IPAddress(family: Int32(key.family), networkBytes: $0.baseAddress!) }),
              let direction = ConnectionEvent.Direction(kernel: key.direction),
              let outcome = ConnectionEvent.Outcome(kernel: key.outcome),
              let proto = ConnectionEvent.IPProtocol(kernel: key.protocol)
        else { return nil }
        // The kernel does not date UDP datagrams (a clock read would double
        // their cost): they are dated now, at most a second after the last.
        let lastSeen = proto == .udp ? BootClock.now(CLOCK_REALTIME) : clock.wallNanoseconds(bootNanoseconds: lastBoot)
        return RepeatCount(cgroupID: key.cgroup_id, direction: direction, outcome: outcome, peer: peer, port: key.port,
                           count: count, lastSeenNanoseconds: lastSeen,
                           hook: proto == .udp ? .cgroupSockAddr : hook,
                           peerCgroupID: key.peer_cgroup_id, proto: proto)
    }
}
