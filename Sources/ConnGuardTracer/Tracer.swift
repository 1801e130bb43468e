import BPFKit
import CConnGuard
import ConnGuardCore
import Glibc
import Logging

/// Events lost or delivered incomplete, by reason, as counted in the kernel
/// (the `drops` map) and in user space.
public struct LossCounts: Sendable, Equatable {
    /// Ring buffer full: connection events that never reached user space.
    public var ringBufferFull: UInt64 = 0
    /// cgroup mkdir/rmdir records lost to a full ring buffer.
    public var cgroupRingBufferFull: UInt64 = 0
    /// Connects whose caller could not be remembered (delivered without pid).
    public var connectMapFull: UInt64 = 0
    /// Listeners whose owner could not be remembered (their accepts lack pid).
    public var listenerMapFull: UInt64 = 0
    /// Records user space could not decode (a bug if ever non-zero).
    public var undecodable: UInt64 = 0
    /// Times the kernel skipped one of our programs because it was already
    /// running on that CPU (a state change inside an interrupt that came
    /// during another): the kernel says nothing else about these. Each may
    /// have been a connect or accept transition, so each is a possibly lost
    /// event.
    public var recursionMisses: UInt64 = 0

    /// Events that were lost outright.
    public var lostEvents: UInt64 { ringBufferFull + undecodable }
    public init() {}
}

/// Which kernel hook serves each thing the tracer needs.
public struct HookChoice: Sendable, Equatable, CustomStringConvertible {
    /// "connect", "accept", "cgroup events".
    public let capability: String
    /// "tracepoint", "fentry", "kprobe".
    public let rung: String
    /// Program and attach point, e.g. "cg_tp_sock_state (tp_btf/inet_sock_set_state)".
    public let detail: String

    public var description: String { "\(capability): \(rung) [\(detail)]" }
}

/// Loads the embedded trace programs into the running kernel, attaches them,
/// and reads their ring buffer. Everything it attached is detached when it is
/// closed or deinitialised; nothing is pinned, so a crash leaves nothing
/// behind either (the kernel drops links with their last file descriptor).
public final class Tracer {
    public struct Configuration: Sendable {
        /// Ring buffer size in bytes (a power of two, multiple of the page size).
        public var ringBufferBytes: UInt32 = 16 << 20
        /// Wake the reader only once this much is waiting (0: every event).
        public var wakeupBytes: UInt64 = 64 << 10
        /// Longest a record waits when fewer than wakeupBytes are waiting.
        public var pollIntervalMilliseconds: Int32 = 100
        /// Learn listeners that existed before attach, from /proc.
        public var seedListeners = true
        public init() {}
    }

    public let configuration: Configuration
    public let hooks: [HookChoice]
    public let clock: BootClock
    /// Listeners learnt from /proc at start.
    public private(set) var seededListeners = 0

    private let object: BPFObject
    private var links: [BPFLink] = []
    private var reader: RingBufferReader!
    private let drops: BPFMap
    private var undecodable: UInt64 = 0
    private var handler: ((TraceRecord) -> Void)?
    private let logger: Logger

    public init(configuration: Configuration = .init(), logger: Logger = Logger(label: "connguard.tracer")) throws {
        try Prerequisites.check()
        self.configuration = configuration
        self.logger = logger
        clock = BootClock.measure()

        var size: UInt = 0
        let start = cg_bpf_trace_object(&size)
        let bytes = Array(UnsafeRawBufferPointer(start: start, count: Int(size)))
        object = try BPFObject(bytes: bytes, name: "connguard_trace")
        try object.map("events").setMaxEntries(configuration.ringBufferBytes)
        try object.setReadOnlyGlobal("wakeup_data_size", configuration.wakeupBytes)
        do {
            try object.load()
        } catch let e as BPFError {
            throw TracerError.load(e)
        }
        drops = try object.map("drops")

        let plan: [(program: String, capability: [String])] = [
            ("cg_tp_sock_state", ["connect", "accept"]),
            ("cg_tp_cgroup_mkdir", ["cgroup creation"]),
            ("cg_tp_cgroup_rmdir", ["cgroup removal"]),
        ]
        var chosen: [HookChoice] = []
        for step in plan {
            let program = try object.program(step.program)
            do {
                links.append(try program.attach())
            } catch let e as BPFError {
                links.forEach { $0.detach() }
                throw TracerError.attach(e)
            }
            for c in step.capability {
                chosen.append(HookChoice(capability: c, rung: "tracepoint", detail: "\(program.name) (\(program.sectionName))"))
            }
        }
        hooks = chosen

        reader = try RingBufferReader(map: try object.map("events")) { [unowned self] bytes in
            do {
                let record = try TraceRecord.decode(bytes, clock: self.clock)
                self.handler?(record)
            } catch {
                self.undecodable += 1
            }
        }

        // After attach, so that a listener made meanwhile is recorded by the
        // kernel; seeds never overwrite those (BPF_NOEXIST).
        if configuration.seedListeners {
            let seeds = ListenerSeeder.discover(cgroupMount: CgroupMount.find())
            seededListeners = ListenerSeeder.seed(seeds, into: try object.map("listeners"))
        }
        logger.debug("tracer attached", metadata: ["hooks": "\(hooks.map(\.description))", "seeded_listeners": "\(seededListeners)"])
    }

    deinit { close() }

    /// Delivers records to `onRecord` on the calling thread until `shouldStop`
    /// returns true (checked at least every pollIntervalMilliseconds). Calls
    /// `onIdle` after each batch, e.g. to flush output. Drains what is left
    /// in the ring buffer before returning.
    public func run(shouldStop: () -> Bool, onRecord: @escaping (TraceRecord) -> Void, onIdle: () -> Void = {}) throws {
        handler = onRecord
        defer { handler = nil }
        while !shouldStop() {
            try reader.poll(timeoutMilliseconds: configuration.pollIntervalMilliseconds)
            onIdle()
        }
        try reader.drain()
        onIdle()
    }

    /// Reads the kernel's loss counters.
    public func lossCounts() throws -> LossCounts {
        var c = LossCounts()
        c.ringBufferFull = try drops.perCPUSum(index: UInt32(CG_DROP_RINGBUF_FULL.rawValue))
        c.connectMapFull = try drops.perCPUSum(index: UInt32(CG_DROP_CONNECT_MAP_FULL.rawValue))
        c.listenerMapFull = try drops.perCPUSum(index: UInt32(CG_DROP_LISTENER_MAP_FULL.rawValue))
        c.cgroupRingBufferFull = try drops.perCPUSum(index: UInt32(CG_DROP_CGROUP_RINGBUF_FULL.rawValue))
        c.undecodable = undecodable
        for p in object.programs {
            if let info = try? p.info() { c.recursionMisses += info.recursion_misses }
        }
        return c
    }

    /// Detaches every program. Idempotent.
    public func close() {
        for l in links { l.detach() }
        links.removeAll()
    }

    /// The loaded programs (for run-time statistics).
    public var programs: [BPFProgram] { object.programs }
}

public enum TracerError: Error, CustomStringConvertible {
    case load(BPFError)
    case attach(BPFError)

    public var description: String {
        switch self {
        case let .load(e):
            if e.isPermissionDenied {
                return "the kernel refused to load ConnGuard's BPF programs (\(e)): run as root, and check that kernel.unprivileged_bpf_disabled or a security module does not forbid BPF"
            }
            return "the kernel rejected ConnGuard's BPF programs (\(e)); run with --verbose for the verifier log"
        case let .attach(e):
            return "could not attach a BPF program (\(e)): this kernel may lack the hook; `connguard probe` shows what it supports"
        }
    }

    /// libbpf's log (verifier output), for --verbose.
    public var log: String {
        switch self {
        case let .load(e), let .attach(e): return e.log
        }
    }
}
