/// One connection on the agent's event path, whichever source it came from:
/// the tracer's ring buffer, the /proc snapshot at start, the kernel's repeat
/// counts, or the enforcement programs' denials. Every record takes the same
/// path (scope, identity, verdict, storage, metrics, baseline); the source
/// decides only what differs: how many events it stands for, and whether the
/// verdict is the kernel's (a denial) or the policy engine's.
public struct ConnectionRecord: Sendable, Equatable {
    public enum Source: Sendable, Equatable {
        /// One event the tracer sent.
        case traced
        /// Found established in /proc when the agent started (hook `snapshot`).
        case snapshot
        /// This many repeats of one connection, counted in the kernel
        /// instead of sent: no process, the time of the latest.
        case counted(UInt64)
        /// Refused by the enforcement programs: the kernel gave the verdict.
        case denied
    }

    public var event: ConnectionEvent
    public var source: Source

    public init(_ event: ConnectionEvent, source: Source) {
        self.event = event
        self.source = source
    }

    /// The events it stands for.
    public var count: UInt64 {
        if case let .counted(n) = source { return n }
        return 1
    }
}
