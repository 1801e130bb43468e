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
    /// Accepts that could not wait for accept() (the `accepting` map was
    /// full): sent at once, naming the listener's owner.
    public var acceptMapFull: UInt64 = 0
    /// UDP sockets whose role (client or server) could not be remembered:
    /// taken as what each call made them, so a reply may show as a flow.
    public var udpRoleStorage: UInt64 = 0
    /// DNS answers not passed on (ring buffer full): the names they gave are
    /// not known to user space (peer_name, learning by name). Enforcement
    /// reads answers in the kernel and is not affected.
    public var dnsRingBufferFull: UInt64 = 0
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
    public let rung: HookRung
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
    /// tp_btf/inet_sock_set_state, with the syscall tracepoints on accept()
    /// and accept4() naming the acceptor where tracefs allows them.
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

    /// The event hook that names a connection's process on this rung.
    public var eventHook: ConnectionEvent.Hook {
        switch self {
        case .fentry: .fentry
        case .kprobe: .kprobe
        case .tracepoint: .tracepoint
        }
    }

    /// Programs loaded and attached on this rung: (program, capabilities,
    /// the rung the program belongs to). The tracepoint always runs: it
    /// gives every rung the connect outcome and the cgroup events, and, on
    /// the bottom rung, the caller and the accept as well.
    var plan: [(program: String, capabilities: [String], rung: HookRung)] {
        let always: [(String, [String], HookRung)] = [
            ("cg_tp_cgroup_mkdir", ["cgroup creation"], .tracepoint),
            ("cg_tp_cgroup_rmdir", ["cgroup removal"], .tracepoint),
        ]
        switch self {
        case .fentry:
            return [("cg_fentry_tcp_connect", ["connect"], .fentry), ("cg_fexit_inet_csk_accept", ["accept"], .fentry),
                    ("cg_tp_sock_state", ["connect outcome"], .tracepoint)] + always
        case .kprobe:
            return [("cg_kprobe_tcp_connect", ["connect"], .kprobe), ("cg_kretprobe_inet_csk_accept", ["accept"], .kprobe),
                    ("cg_tp_sock_state", ["connect outcome"], .tracepoint)] + always
        case .tracepoint:
            return [("cg_tp_sock_state", ["connect", "connect outcome", "accept"], .tracepoint)] + always
        }
    }

    /// Every rung-specific program in the object (off unless its rung is chosen).
    static let optionalPrograms = ["cg_fentry_tcp_connect", "cg_fexit_inet_csk_accept",
                                   "cg_kprobe_tcp_connect", "cg_kretprobe_inet_csk_accept"]
        + acceptCallPrograms

    /// On the tracepoint rung, the programs on accept()'s and accept4()'s
    /// exit that name the accepting process.
    static let acceptCallPrograms = ["cg_tp_accept4_exit", "cg_tp_accept_exit"]

    /// UDP, on every rung: cgroup sock_addr programs that always allow,
    /// attached at the cgroup v2 root (bpf/trace.bpf.c, "UDP").
    static let udpPrograms = ["cg_udp_connect4", "cg_udp_connect6", "cg_udp_sendmsg4", "cg_udp_sendmsg6",
                              "cg_udp_recvmsg4", "cg_udp_recvmsg6"]
    /// Passes DNS answers on; at the cgroup root like the UDP programs.
    static let dnsProgram = "cg_dns_answers"
}

/// Which process an accept event names.
public enum AcceptAttribution: String, CaseIterable, Sendable {
    /// The process whose accept() returned the connection. The fentry and
    /// kprobe rungs always do this; the tracepoint rung does it with the
    /// syscall tracepoints on accept() and accept4(), and falls back to the
    /// listener's owner where the kernel lacks them.
    case caller
    /// The process that called listen() on the listening socket (cheaper on
    /// the tracepoint rung: no syscall tracepoints; wrong for servers whose
    /// workers accept on a socket their parent listened on).
    case listener
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
        /// Which process accept events name (matters on the tracepoint rung).
        public var acceptAttribution = AcceptAttribution.caller
        /// How long an accept waits for accept() to return it before it is
        /// sent naming the listener's owner (tracepoint rung, `caller`).
        public var acceptWaitNanoseconds: UInt64 = 1_000_000_000
        /// Count repeats of a connection in the kernel instead of sending
        /// each (see `takeRepeats()`): the first event of each connection
        /// between two takes, and `repeatsSentPerSecond` others a second,
        /// still come one by one. For the agent, which keeps aggregates; off
        /// for `connguard trace`, which shows every event.
        public var countRepeats = false
        /// Repeats sent one by one a second, for the node (split over CPUs).
        public var repeatsSentPerSecond = 2_000
        /// Pass on the DNS answers sockets receive (TraceRecord.dns), so
        /// that connections name their peer by the name resolved for it.
        public var dnsAnswers = true
        public init() {}
    }

    public let configuration: Configuration
    public let hooks: [HookChoice]
    /// The rung in use.
    public let rung: HookRung
    /// Rungs tried before this one, and why the kernel refused each.
    public let refusedRungs: [(rung: HookRung, reason: String)]
    /// Why accept events name the listener's owner although the caller of
    /// accept() was asked for (the kernel lacks the syscall tracepoints).
    public let acceptAttributionFallback: String?
    public let clock: BootClock
    /// Listeners learnt from /proc at start.
    public private(set) var seededListeners = 0
    private var connectionSnapshot = ConnectionSnapshot.empty

    private let object: BPFObject
    private var links: [BPFLink]
    private var reader: RingBufferReader!
    private let drops: BPFMap
    private let listeners: BPFMap
    /// Accepts held for accept() (tracepoint rung, `caller`); nil otherwise.
    private let heldAccepts: BPFMap?
    /// held_count in the kernel: [1] is how many held accepts we swept.
    private let heldCount: BPFMap
    private var swept: UInt64 = 0
    private let repeatCounter: RepeatCounter?
    private var lastSweep: UInt64 = 0
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
        var attached: (object: BPFObject, links: [BPFLink], hooks: [HookChoice], rung: HookRung, acceptViaSyscall: Bool)?
        // Set only on the tracepoint rung, the last one tried.
        var acceptFallback: String?
        for rung in configuration.forcedRung.map({ [$0] }) ?? HookRung.allCases {
            do {
                if rung == .tracepoint && configuration.acceptAttribution == .caller {
                    // Syscall tracepoints name the acceptor; without them the
                    // listener's owner is the best the rung knows.
                    acceptFallback = SyscallTracepoints.prepare()
                    if acceptFallback == nil {
                        do {
                            let (o, l, h) = try Tracer.open(rung: rung, acceptViaSyscall: true, configuration: configuration)
                            attached = (o, l, h, rung, true)
                            break
                        } catch let e as TracerError {
                            acceptFallback = "syscall tracepoints refused: \(e.shortReason)"
                        }
                    }
                    logger.notice("accept events will name the listener's owner, not the process that accepted",
                                  metadata: ["reason": "\(acceptFallback ?? "")"])
                }
                let (o, l, h) = try Tracer.open(rung: rung, acceptViaSyscall: false, configuration: configuration)
                attached = (o, l, h, rung, false)
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
        let namesListener = attached.rung == .tracepoint && !attached.acceptViaSyscall ? acceptFallback ?? "asked for" : nil
        hooks = attached.hooks.map { h in
            guard h.capability == "accept", let why = namesListener else { return h }
            return HookChoice(capability: h.capability, rung: h.rung, detail: "\(h.detail); names the listener's owner: \(why)")
        }
        rung = attached.rung
        refusedRungs = refused
        drops = try object.map("drops")
        listeners = try object.map("listeners")
        acceptAttributionFallback = acceptFallback
        heldAccepts = attached.acceptViaSyscall ? try object.map("accepting") : nil
        heldCount = try object.map("held_count")
        // Always: UDP datagrams are counted in the kernel whatever
        // countRepeats says (it decides only for TCP).
        repeatCounter = try RepeatCounter(object: object, clock: clock, hook: attached.rung.eventHook)

        // unowned(unsafe): the reader belongs to this tracer and calls back
        // only from inside run(), so self is alive; a checked unowned
        // reference would cost an atomic retain and release per record.
        reader = try RingBufferReader(map: try object.map("events")) { [unowned(unsafe) self] bytes in
            self.deliver(bytes)
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
    /// `udp: false`: without the UDP programs (after a kernel refused them).
    static func open(rung: HookRung, acceptViaSyscall: Bool, configuration: Configuration,
                     udp: Bool = true) throws -> (BPFObject, [BPFLink], [HookChoice]) {
        var size: UInt = 0
        let start = cg_bpf_trace_object(&size)
        let bytes = Array(UnsafeRawBufferPointer(start: start, count: Int(size)))
        let object = try BPFObject(bytes: bytes, name: "connguard_trace")
        try object.map("events").setMaxEntries(configuration.ringBufferBytes)
        try object.setReadOnlyGlobal("wakeup_data_size", min(configuration.wakeupBytes, UInt64(configuration.ringBufferBytes) / 4))
        try object.setReadOnlyGlobal("attribution_hook", rung.hookValue)
        try object.setReadOnlyGlobal("accept_via_syscall", UInt32(acceptViaSyscall ? 1 : 0))
        try object.setReadOnlyGlobal("count_repeats", UInt32(configuration.countRepeats ? 1 : 0))
        let cpus = try BPFSystem.possibleCPUs()
        try object.setReadOnlyGlobal("repeats_sent_per_cpu", UInt64((max(0, configuration.repeatsSentPerSecond) + cpus - 1) / cpus))
        var plan = rung.plan
        // Without a cgroup v2 hierarchy there is nowhere to attach the UDP
        // programs: UDP is not traced (the hooks say so).
        let cgroupRoot = udp ? CgroupMount.find() : nil
        if acceptViaSyscall {
            plan = plan.map { step in
                (step.program, step.capabilities.filter { $0 != "accept" }, step.rung)
            } + HookRung.acceptCallPrograms.map { ($0, ["accept"], HookRung.tracepoint) }
        }
        let wanted = Set(plan.map(\.program))
        for p in object.programs {
            if HookRung.udpPrograms.contains(p.name) {
                p.autoload = cgroupRoot != nil
            } else if p.name == HookRung.dnsProgram {
                p.autoload = cgroupRoot != nil && configuration.dnsAnswers
            } else {
                p.autoload = wanted.contains(p.name) || !HookRung.optionalPrograms.contains(p.name)
            }
        }
        do {
            try object.load()
        } catch let e as BPFError {
            // UDP must not cost TCP its tracing: a kernel whose verifier
            // refuses the sock_addr programs gets the rest, and says so.
            if cgroupRoot != nil,
               let without = try? open(rung: rung, acceptViaSyscall: acceptViaSyscall, configuration: configuration, udp: false) {
                return (without.0, without.1, without.2.map { $0.capability == "udp" ? HookChoice(capability: "udp", rung: rung, detail: "not traced: the kernel refused the UDP programs (\(e))") : $0 })
            }
            throw TracerError.load(e)
        }
        var links: [BPFLink] = []
        var chosen: [HookChoice] = []
        for step in plan {
            let program = try object.program(step.program)
            do {
                links.append(try program.attach())
            } catch let e as BPFError {
                links.forEach { $0.detach() }
                throw TracerError.attach(e)
            }
            let section = program.sectionName.hasPrefix("?") ? String(program.sectionName.dropFirst()) : program.sectionName
            for c in step.capabilities {
                chosen.append(HookChoice(capability: c, rung: step.rung, detail: "\(program.name) (\(section))"))
            }
        }
        if let cgroupRoot {
            // Tracing only (they return 1 whatever they see), so the root is
            // a safe place: every process's UDP on the node passes them.
            let fd = Glibc.open(cgroupRoot, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
            defer { if fd >= 0 { Glibc.close(fd) } }
            for name in HookRung.udpPrograms {
                let program = try object.program(name)
                do {
                    guard fd >= 0 else { throw BPFError("open \(cgroupRoot)", errno: errno) }
                    links.append(try program.attach(cgroupFD: fd, cgroupPath: cgroupRoot))
                } catch let e as BPFError {
                    links.forEach { $0.detach() }
                    throw TracerError.attach(e)
                }
            }
            // One line: the same six sock_addr hooks on every rung.
            chosen.append(HookChoice(capability: "udp", rung: rung, detail:
                "cg_udp_* (cgroup/connect4, connect6, sendmsg4, sendmsg6, recvmsg4, recvmsg6; always allow) on \(cgroupRoot)"))
            if configuration.dnsAnswers {
                do {
                    guard fd >= 0 else { throw BPFError("open \(cgroupRoot)", errno: errno) }
                    links.append(try object.program(HookRung.dnsProgram).attach(cgroupFD: fd, cgroupPath: cgroupRoot))
                } catch let e as BPFError {
                    links.forEach { $0.detach() }
                    throw TracerError.attach(e)
                }
                chosen.append(HookChoice(capability: "dns", rung: rung, detail:
                    "\(HookRung.dnsProgram) (cgroup_skb/ingress; replies from port 53; always allow) on \(cgroupRoot)"))
            } else {
                chosen.append(HookChoice(capability: "dns", rung: rung, detail: "not traced (turned off)"))
            }
        } else {
            chosen.append(HookChoice(capability: "udp", rung: rung, detail: udp ? "not traced: no cgroup v2 hierarchy is mounted" : "not traced"))
            chosen.append(HookChoice(capability: "dns", rung: rung, detail: udp ? "not traced: no cgroup v2 hierarchy is mounted" : "not traced"))
        }
        // One line per capability: accept() and accept4() together.
        var merged: [HookChoice] = []
        for c in chosen {
            if let i = merged.firstIndex(where: { $0.capability == c.capability }) {
                merged[i] = HookChoice(capability: c.capability, rung: c.rung, detail: merged[i].detail + ", " + c.detail)
            } else {
                merged.append(c)
            }
        }
        return (object, links, merged)
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
                try sweepHeldAccepts(final: false)
                onIdle()
            }
            try reader.drain()
            try sweepHeldAccepts(final: true)
            onIdle()
        }
    }

    /// Sends the accepts that no accept() took within acceptWaitNanoseconds
    /// (io_uring's accept, a server that never accepts, a socket reset in the
    /// backlog), naming the listener's owner; with `final`, all of them, so
    /// that stopping loses none. At most twice a second otherwise: the walk
    /// costs a lookup per held accept, and under a storm there are hundreds.
    private func sweepHeldAccepts(final: Bool) throws {
        guard let heldAccepts else { return }
        let now = UInt64(BootClock.now(CLOCK_BOOTTIME))
        if !final && now &- lastSweep < 500_000_000 { return }
        lastSweep = now
        for key in try heldAccepts.keys(as: UInt64.self) {
            guard let held = try heldAccepts.lookup(key: key, as: cg_connection_event.self),
                  final || now &- held.timestamp_ns >= configuration.acceptWaitNanoseconds,
                  // The delete decides, as in the kernel: whoever deletes it sends it.
                  try heldAccepts.delete(key: key) else { continue }
            swept += 1
            // Before delivering: the kernel's count of what is held stays exact.
            try heldCount.update(key: UInt32(1), value: swept)
            withUnsafeBytes(of: held) { deliver(UnsafeRawBufferPointer($0)) }
        }
    }

    private func deliver(_ bytes: UnsafeRawBufferPointer) {
        do {
            let record = try TraceRecord.decode(bytes, clock: clock)
            handler?(record)
        } catch {
            undecodable += 1
        }
    }

    /// The repeats the kernel counted since the last take (`countRepeats`;
    /// empty without it). Takes up to a few tens of milliseconds: it waits
    /// for the programs running at that moment to finish. Call it from one
    /// thread, about once a second (each take starts a new period, whose
    /// first event of each connection comes one by one), and once more after
    /// run() returns.
    public func takeRepeats() throws -> [RepeatCount] {
        try repeatCounter?.take() ?? []
    }

    /// The connections found established at start (`snapshotConnections`),
    /// handed over once: the tracer keeps none of them.
    public func takeConnectionSnapshot() -> ConnectionSnapshot {
        defer { connectionSnapshot = .empty }
        return connectionSnapshot
    }

    /// The process the kernel side knows as owner of a listening port
    /// (recorded at listen(), or learnt from /proc at start), or nil. Safe
    /// from any thread: one map lookup.
    public func listenerOwner(netns: UInt32, port: UInt16, family: IPAddress.Family) -> (pid: UInt32, uid: UInt32, comm: String)? {
        var key = cg_listener_key()
        key.netns = netns
        key.port = port
        // An IPv6 listener also takes IPv4 connections (dual stack).
        for f in family == .ipv4 ? [AF_INET, AF_INET6] : [AF_INET6] {
            key.family = UInt16(f)
            if let owner = try? listeners.lookup(key: key, as: cg_listener.self), owner.pid != 0 {
                return (owner.pid, owner.uid, withUnsafeBytes(of: owner.comm) { cString(from: $0) })
            }
        }
        return nil
    }

    /// DNS answers the kernel did not pass on because the same answer went
    /// to the same cgroup less than a second before (not a loss: user space
    /// has it).
    public func dnsRepeats() throws -> UInt64 {
        try object.map("dns_repeats").perCPUSum(index: 0)
    }

    /// Reads the kernel's loss counters.
    public func lossCounts() throws -> LossCounts {
        var c = LossCounts()
        c.ringBufferFull = try drops.perCPUSum(index: UInt32(CG_DROP_RINGBUF_FULL.rawValue))
        c.connectMapFull = try drops.perCPUSum(index: UInt32(CG_DROP_CONNECT_MAP_FULL.rawValue))
        c.listenerMapFull = try drops.perCPUSum(index: UInt32(CG_DROP_LISTENER_MAP_FULL.rawValue))
        c.cgroupRingBufferFull = try drops.perCPUSum(index: UInt32(CG_DROP_CGROUP_RINGBUF_FULL.rawValue))
        c.acceptMapFull = try drops.perCPUSum(index: UInt32(CG_DROP_ACCEPT_MAP_FULL.rawValue))
        c.udpRoleStorage = try drops.perCPUSum(index: UInt32(CG_DROP_UDP_ROLE_STORAGE.rawValue))
        c.dnsRingBufferFull = try drops.perCPUSum(index: UInt32(CG_DROP_DNS_RINGBUF_FULL.rawValue))
        c.undecodable = undecodable + (repeatCounter?.undecodable ?? 0)
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

    /// Why, in a few words (for logs and the probe).
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
            return "the kernel rejected ConnGuard's BPF programs (\(e)); the verifier log says why"
        case let .attach(e):
            return "could not attach a BPF program (\(e)): this kernel may lack the hook"
        case let .rungRefused(rung, e):
            return "this kernel does not allow the \(rung) hooks (\(e.shortReason))"
        case .noRung:
            return "no hook rung could be loaded"
        }
    }

    /// What the user can do next, in the words of the front end that shows
    /// the error (the library names no command of its own).
    public enum Remedy: Sendable {
        /// Show the verifier log (`log`).
        case showVerifierLog
        /// See what this kernel supports (the probe).
        case probeTheKernel
    }

    public var remedy: Remedy? {
        switch self {
        case let .load(e): return e.isPermissionDenied ? nil : .showVerifierLog
        case .attach, .rungRefused, .noRung: return .probeTheKernel
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
