/// The connections that were already established when the tracer attached,
/// read from /proc, and what it takes not to count one of them twice.
///
/// /proc is read after the programs are attached, so that no connection falls
/// between the snapshot and the live stream. The price is an overlap: a
/// connection made while /proc was being read is both seen live and found
/// established. `isSeenAgain` recognises the live copy of a snapshot event:
/// an established event of the same direction and flow, stamped no later
/// than the end of the walk (a later one is a new connection).
public struct ConnectionSnapshot: Sendable {
    /// `hook: .snapshot`, timed at the start of the walk.
    public var events: [ConnectionEvent]
    /// Wall-clock nanoseconds (the tracer's clock) when the walk ended.
    public let completedAt: Int64
    private let flows: Set<Flow>

    struct Flow: Hashable {
        var direction: ConnectionEvent.Direction
        var netns: UInt32
        var source: IPAddress
        var sourcePort: UInt16
        var destination: IPAddress
        var destinationPort: UInt16

        init(_ e: ConnectionEvent) {
            direction = e.direction
            netns = e.netns
            source = e.source
            sourcePort = e.sourcePort
            destination = e.destination
            destinationPort = e.destinationPort
        }
    }

    public init(events: [ConnectionEvent], completedAt: Int64) {
        self.events = events
        self.completedAt = completedAt
        flows = Set(events.map(Flow.init))
    }

    public static let empty = ConnectionSnapshot(events: [], completedAt: .min)

    /// Whether a live event is one of the snapshot's connections, seen again.
    public func isSeenAgain(_ live: ConnectionEvent) -> Bool {
        live.timeNanoseconds <= completedAt && live.outcome == .established && flows.contains(Flow(live))
    }
}
