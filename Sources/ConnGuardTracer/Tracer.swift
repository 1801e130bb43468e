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

/// A rung of the attach ladder: how connects and accepts are attributed to
/// their process. Best first.
public enum HookRung: String, CaseIterable, Sendable, CustomStringConvertible {
    /// fentry/tcp_connect + fexit/inet_csk_accept (BPF trampolines).
    case fentry
    /// kprobe/tcp_connect + kretprobe/inet_csk_accept.
    case kprobe
    /// tp_btf/inet_sock_set_state alone (the listener's owner names the acceptor).
    case tracepoint

    public var description: String { rawValue }

    /// The value of the BPF knob `attribution_hook` (enum cg_hook).
    var hookValue: UInt32 {
        switch self {
        case .fentry: CG_HOOK_FENTRY.rawValue
        case .kprobe: CG_HOOK_KPROBE.rawValue
        case .tracepoint: CG_HOOK_TP_BTF.rawValue
        }
    }

    /// Programs loaded and attached on this rung: (program, capabilities).
    /// The tracepoint always runs: it gives every rung the connect outcome,
    /// and, on the bottom rung, the caller and the accept as well.
    var plan: [(program: String, capabilities: [String])] {
        let cgroups: [(String, [String])] = [
            ("cg_tp_cgroup_mkdir", ["cgroup creation"]),
            ("cg_tp_cgroup_rmdir", ["cgroup removal"]),
        ]
        switch self {
        case .fentry:
            return [("cg_fentry_tcp_connect", ["connect"]), ("cg_fexit_inet_csk_accept", ["accept"]),
                    ("cg_tp_sock_state", ["connect outcome"])] + cgroups
        case .kprobe:
            return [("cg_kprobe_tcp_connect", ["connect"]), ("cg_kretprobe_inet_csk_accept", ["accept"]),
                    ("cg_tp_sock_state", ["connect outcome"])] + cgroups
        case .tracepoint:
            return [("cg_tp_sock_state", ["connect", "connect outcome", "accept"])] + cgroups
        }
    }

    /// Every rung-specific program in the object (off unless its rung is chosen).
    static let optionalPrograms = ["cg_fentry_tcp_connect", "cg_fexit_inet_csk_accept",
                                   "cg_kprobe_tcp_connect", "cg_kretprobe_inet_csk_accept"]
}

/// Loads the embedded trace programs into the running kernel, attaches them,
/// and reads their ring buffer. Everything it attached is detached when it is
/// closed or deinitialised; nothing is pinned, so a crash leaves nothing
/// behind either (the kernel drops links with their last file descriptor).
public final class Tracer {
    public struct Configuration: Sendable {
        /// Ring buffer size in bytes (a power of two, multiple of the page size).
        public var ringBufferBytes: UInt32 = 16 << 20
        /// Wake the reader only once this much is waiting (0: every event),
        /// at most a quarter of the ring buffer. 256 KiB is about 2,000
        /// events: under a storm about 50 wake-ups a second; against 64 KiB,
        /// 11 % less CPU per event in an interleaved A/B run.
        public var wakeupBytes: UInt64 = 256 << 10
        /// Longest a record waits when fewer than wakeupBytes are waiting.
        public var pollIntervalMilliseconds: Int32 = 100
        /// Learn listeners that existed before attach, from /proc.
        public var seedListeners = true
        /// Also find the connections established before attach, from /proc
        /// (`takeConnectionSnapshot()`): the agent stores them; `trace` shows
        /// only what it sees happen.
        public var snapshotConnections = false
        /// Use only this rung (fail if the kernel refuses it); nil: the best
        /// rung the kernel allows, found by loading and attaching.
        public var forcedRung: HookRung?
        public init() {}
    }

    public let configuration: Configuration
    public let hooks: [HookChoice]
    /// The rung in use.
    public let rung: HookRung
    /// Rungs tried before this one, and why the kernel refused each.
    public let refusedRungs: [(rung: HookRung, reason: String)]
    public let clock: BootClock
    /// Listeners learnt from /proc at start.
    public private(set) var seededListeners = 0
    private var connectionSnapshot = ConnectionSnapshot.empty

    private let object: BPFObject
    private var links: [BPFLink]
    private var reader: RingBufferReader!
    private let drops: BPFMap
    // Read for every record, on the polling thread only (run() is not
    // reentrant): no dynamic exclusivity check per access.
    @exclusivity(unchecked) private var undecodable: UInt64 = 0
    @exclusivity(unchecked) private var handler: ((TraceRecord) -> Void)?
    private let logger: Logger

    public init(configuration: Configuration = .init(), logger: Logger = Logger(label: "connguard.tracer")) throws {
        try Prerequisites.check()
        self.configuration = configuration
        self.logger = logger
        clock = BootClock.measure()

        var refused: [(rung: HookRung, reason: String)] = []
        var attached: (object: BPFObject, links: [BPFLink], hooks: [HookChoice], rung: HookRung)?
        for rung in configuration.forcedRung.map({ [$0] }) ?? HookRung.allCases {
            do {
                let (o, l, h) = try Tracer.open(rung: rung, configuration: configuration)
                attached = (o, l, h, rung)
                break
            } catch let e as TracerError {
                if configuration.forcedRung != nil { throw TracerError.rungRefused(rung, e) }
                // The bottom rung failing is not a fallback case: report it as is.
                if rung == .tracepoint { throw e }
                refused.append((rung, e.shortReason))
                logger.debug("hook rung refused", metadata: ["rung": "\(rung)", "reason": "\(e.shortReason)"])
            }
        }
        guard let attached else { throw TracerError.noRung }
        object = attached.object
        links = attached.links
        hooks = attached.hooks
        rung = attached.rung
        refusedRungs = refused
        drops = try object.map("drops")

        // unowned(unsafe): the reader belongs to this tracer and calls back
        // only from inside run(), so self is alive; a checked unowned
        // reference would cost an atomic retain and release per record.
        reader = try RingBufferReader(map: try object.map("events")) { [unowned(unsafe) self] bytes in
            do {
                let record = try TraceRecord.decode(bytes, clock: self.clock)
                self.handler?(record)
            } catch {
                self.undecodable += 1
            }
        }

        // After attach, so that a listener made meanwhile is recorded by the
        // kernel (seeds never overwrite those: BPF_NOEXIST), and a connection
        // made meanwhile is seen live (ConnectionSnapshot tells the copies
        // apart). One walk of /proc serves both; listeners are read either
        // way, since they tell accepts from connects.
        if configuration.seedListeners || configuration.snapshotConnections {
            let started = clock.wallNanoseconds(bootNanoseconds: UInt64(BootClock.now(CLOCK_BOOTTIME)))
            let states: Set<UInt8> = configuration.snapshotConnections
                ? [ProcNetTCP.State.listen, ProcNetTCP.State.established] : [ProcNetTCP.State.listen]
            let found = ProcSockets.read(cgroupMount: CgroupMount.find(), states: states)
            if configuration.seedListeners {
                seededListeners = ListenerSeeder.seed(ListenerSeeder.seeds(from: found), into: try object.map("listeners"))
            }
            if configuration.snapshotConnections {
                connectionSnapshot = ConnectionSnapshot(
                    events: ProcNetTCP.establishedConnections(found.sockets, owners: found.owners, time: started),
                    completedAt: clock.wallNanoseconds(bootNanoseconds: UInt64(BootClock.now(CLOCK_BOOTTIME))))
            }
        }
        logger.debug("tracer attached", metadata: [
            "rung": "\(rung)", "forced": "\(configuration.forcedRung != nil)",
            "refused": "\(refusedRungs.map { "\($0.rung): \($0.reason)" })",
            "hooks": "\(hooks.map(\.description))", "seeded_listeners": "\(seededListeners)",
            "established_at_start": "\(connectionSnapshot.events.count)"])
    }

    deinit { close() }

    /// Opens a fresh object with only `rung`'s programs on, loads and
    /// attaches them. On any failure everything is released.
    static func open(rung: HookRung, configuration: Configuration) throws -> (BPFObject, [BPFLink], [HookChoice]) {
        var size: UInt = 0
        let start = cg_bpf_trace_object(&size)
        let bytes = Array(UnsafeRawBufferPointer(start: start, count: Int(size)))
        let object = try BPFObject(bytes: bytes, name: "connguard_trace")
        try object.map("events").setMaxEntries(configuration.ringBufferBytes)
        try object.setReadOnlyGlobal("wakeup_data_size", min(configuration.wakeupBytes, UInt64(configuration.ringBufferBytes) / 4))
        try object.setReadOnlyGlobal("attribution_hook", rung.hookValue)
        let wanted = Set(rung.plan.map(\.program))
        for p in object.programs { p.autoload = wanted.contains(p.name) || !HookRung.optionalPrograms.contains(p.name) }
        do {
            try object.load()
        } catch let e as BPFError {
            throw TracerError.load(e)
        }
        var links: [BPFLink] = []
        var chosen: [HookChoice] = []
        for step in rung.plan {
            let program = try object.program(step.program)
            do {
                links.append(try program.attach())
            } catch let e as BPFError {
                links.forEach { $0.detach() }
                throw TracerError.attach(e)
            }
            let section = program.sectionName.hasPrefix("?") ? String(program.sectionName.dropFirst()) : program.sectionName
            for c in step.capabilities {
                chosen.append(HookChoice(capability: c, rung: c == "connect outcome" || c.hasPrefix("cgroup") ? "tracepoint" : rung.rawValue,
                                         detail: "\(program.name) (\(section))"))
            }
        }
        return (object, links, chosen)
    }

    /// Delivers records to `onRecord` on the calling thread until `shouldStop`
    /// returns true (checked at least every pollIntervalMilliseconds). Calls
    /// `onIdle` after each batch, e.g. to flush output. Drains what is left
    /// in the ring buffer before returning.
    ///
    /// `onRecord` is not escaping: it is kept for the ring buffer's callback
    /// only while run() runs. So the variables a caller's closure captures
    /// stay on the caller's stack, statically checked, rather than in boxes
    /// with a dynamic exclusivity check on every event.
    public func run(shouldStop: () -> Bool, onRecord: (TraceRecord) -> Void, onIdle: () -> Void = {}) throws {
        try withoutActuallyEscaping(onRecord) { onRecord in
            handler = onRecord
            defer { handler = nil }
            while !shouldStop() {
                try reader.poll(timeoutMilliseconds: configuration.pollIntervalMilliseconds)
                onIdle()
            }
            try reader.drain()
            onIdle()
        }
    }

    /// The connections found established at start (`snapshotConnections`),
    /// handed over once: the tracer keeps none of them.
    public func takeConnectionSnapshot() -> ConnectionSnapshot {
        defer { connectionSnapshot = .empty }
        return connectionSnapshot
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
    public var programs: [BPFProgram] { object.programs.filter(\.autoload) }
}

public enum TracerError: Error, CustomStringConvertible {
    case load(BPFError)
    case attach(BPFError)
    /// A forced rung (--hooks) that this kernel does not allow.
    indirect case rungRefused(HookRung, TracerError)
    case noRung

    /// Why, in a few words (for logs and `connguard probe`).
    public var shortReason: String {
        switch self {
        case let .load(e): return "load refused (\(e))"
        case let .attach(e): return "attach refused (\(e))"
        case let .rungRefused(_, e): return e.shortReason
        case .noRung: return "no rung loaded"
        }
    }

    public var description: String {
        switch self {
        case let .load(e):
            if e.isPermissionDenied {
                return "the kernel refused to load ConnGuard's BPF programs (\(e)): run as root, and check that kernel.unprivileged_bpf_disabled or a security module does not forbid BPF"
            }
            return "the kernel rejected ConnGuard's BPF programs (\(e)); run with --verbose for the verifier log"
        case let .attach(e):
            return "could not attach a BPF program (\(e)): this kernel may lack the hook; `connguard probe` shows what it supports"
        case let .rungRefused(rung, e):
            return "this kernel does not allow the \(rung) hooks (\(e.shortReason)); `connguard probe` shows which rungs it allows"
        case .noRung:
            return "no hook rung could be loaded; `connguard probe` shows why"
        }
    }

    /// libbpf's log (verifier output), for --verbose.
    public var log: String {
        switch self {
        case let .load(e), let .attach(e): return e.log
        case let .rungRefused(_, e): return e.log
        case .noRung: return ""
        }
    }
}
