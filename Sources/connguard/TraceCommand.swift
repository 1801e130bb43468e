import ArgumentParser
import ConnGuardCore
import ConnGuardIdentity
import ConnGuardTracer
import Glibc
import Logging

struct TraceCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "trace",
        abstract: "Stream every TCP connect and accept, and every UDP flow, on this node as it happens.",
        discussion: """
        Loads ConnGuard's BPF programs into the kernel, prints one line per connection until
        interrupted or --duration passes, then detaches everything. A UDP flow (workload,
        direction, peer, service port) is one line, with its process, for its first datagram in
        each second, and one line a second with the count of the others ("count" in JSON). Each event names the
        workload, container and pod that made or accepted it (read from the container
        runtimes' files on this node); events that cannot be attributed say "unknown" and are
        counted. A summary of events seen, lost and unattributed goes to stderr. Needs root.
        """
    )

    @Option(name: [.short, .customLong("output")], help: "Output format: table or json (one object per line).")
    var output: OutputFormat = .table

    @Option(parsing: .unconditional, help: "Stop after this long (e.g. 30, 30s, 5m; at most 100 years).", transform: Duration.parse)
    var duration: Duration?

    @Option(parsing: .unconditional, help: "Only events of this process id.")
    var pid: UInt32?

    @Option(parsing: .unconditional, help: "Only events with this port on either side.", transform: PortOption.parse)
    var port: UInt16?

    @Option(help: "Only events whose cgroup is this cgroup v2 path or below it (absolute, or relative to the cgroup2 mount).")
    var cgroup: String?

    @Option(name: .customLong("protocol"), help: "Only events of this protocol: tcp or udp.")
    var proto: ConnectionEvent.IPProtocol?

    @Option(help: "Only events of this container (its name, or a prefix of its id).")
    var container: String?

    @Option(help: "Only events of this workload (e.g. shop/web/app, a container name, or a host cgroup path).")
    var workload: String?

    @Option(help: "Only connections to addresses their workload resolved from this DNS name (or *.example.test).")
    var peerName: String?

    @Option(help: "Only events of pods in this Kubernetes namespace.")
    var namespace: String?

    @Option(help: "Use only these hooks: fentry, kprobe or tracepoint (default: the best this kernel allows). Fails if the kernel refuses them.")
    var hooks: HookRung?

    @Option(help: "Which process accept events name: caller (of accept(); on the tracepoint rung this needs the syscall tracepoints) or listener (the owner of the listening socket).")
    var acceptAttribution: AcceptAttribution = .caller

    @Flag(name: .shortAndLong, help: "Print the hooks chosen and libbpf's messages on failure.")
    var verbose = false

    @Option(help: ArgumentHelp("Ring buffer size in MiB (a power of two).", visibility: .hidden))
    var ringBufferMiB: UInt32 = 16

    func validate() throws {
        if let d = duration, d.seconds <= 0 { throw ValidationError("--duration must be positive") }
        if container?.isEmpty == true { throw ValidationError("--container must not be empty") }
        if workload?.isEmpty == true { throw ValidationError("--workload must not be empty") }
        if namespace?.isEmpty == true { throw ValidationError("--namespace must not be empty") }
        if let peerName, DNSName(peerName) == nil {
            throw ValidationError("--peer-name: '\(peerName)' is not a DNS name (api.example.test) or a pattern (*.example.test)")
        }
        if ringBufferMiB == 0 || ringBufferMiB & (ringBufferMiB - 1) != 0 || ringBufferMiB > 1024 {
            throw ValidationError("--ring-buffer-mib must be a power of two up to 1024")
        }
    }

    func run() throws {
        try reportingErrors { try trace() }
    }

    private func trace() throws {
        var filter = EventFilter(pid: pid, port: port, proto: proto, peerName: peerName.flatMap(DNSName.init))
        // What each workload resolved, from the answers the tracer passes
        // on: a connection names its peer by it (peer_name).
        var names = NameBook()
        var subtree: CgroupSubtree?
        if let cgroup {
            guard let mount = CgroupMount.find() else { throw Failure("no cgroup v2 hierarchy is mounted; --cgroup needs one") }
            do {
                subtree = try CgroupSubtree(mount: mount, path: cgroup)
            } catch {
                throw Failure("--cgroup: \(error)")
            }
            filter.cgroups = subtree
        }

        // Without a cgroup v2 hierarchy nothing can be attributed, but the
        // events are still worth showing: each says "unknown", and is counted.
        let identities: IdentityResolver?
        do {
            identities = try IdentityResolver.forThisNode()
        } catch {
            printError("warning: \(error)")
            identities = nil
        }
        var unresolved: UInt64 = 0
        let identityFilter = IdentityFilter(container: container, workload: workload, namespace: namespace)

        var config = Tracer.Configuration()
        config.ringBufferBytes = ringBufferMiB << 20
        config.forcedRung = hooks
        config.acceptAttribution = acceptAttribution
        installStopSignals()
        let tracer: Tracer
        do {
            tracer = try Tracer(configuration: config)
        } catch let e as TracerError {
            if verbose, !e.log.isEmpty { FileHandleStderr.write(e.log) }
            throw Failure(e.description + e.commandHint)
        }
        defer { tracer.close() }
        if verbose {
            for r in tracer.refusedRungs { printError("rung \(r.rung) refused: \(r.reason)") }
            printError("rung \(tracer.rung)\(hooks != nil ? " (forced)" : "")")
            for h in tracer.hooks { printError("hook \(h)") }
            printError("listeners known from /proc at start: \(tracer.seededListeners)")
            if let identities {
                printError("cgroup v2 at \(identities.cgroups.mount): \(identities.cgroups.statistics.seeded) cgroups known at start")
            }
        }

        var out = OutputBuffer()
        // A local copy: reading the @Option wrapper per event is a generic call.
        let format = output
        var json = JSONLineWriter()
        var table = TableWriter(extraColumns: [.init("WORKLOAD", 32), .init("CONTAINER", 20)])
        if output == .table { table.header(to: &out.bytes) }
        var seen: UInt64 = 0
        var shown: UInt64 = 0
        // Saturating: a 100-year duration from a monotonic clock fits in Int64.
        var lastTake = BootClock.now(CLOCK_MONOTONIC)
        var counted: UInt64 = 0
        // The kernel's counts of a UDP flow's later datagrams (RepeatCount),
        // one line per flow and second. Filtered as events are, but for the
        // process (they have none: a pid filter keeps them out).
        func showCounts() throws {
            lastTake = BootClock.now(CLOCK_MONOTONIC)
            for r in try tracer.takeRepeats() {
                let e = r.record.event
                counted &+= r.count
                guard pid == nil, filter.matches(e) else { continue }
                let identity = identities?.resolve(e) ?? .unknown
                guard identityFilter.matches(identity) else { continue }
                switch format {
                case .json: json.append(e, identity: identity, extra: [("count", .int(Int64(clamping: r.count)))], to: &out.bytes)
                case .table:
                    table.append(e, extra: [HumanText.escape(identity.workload), HumanText.escape(identity.containerColumn)],
                                 count: r.count, to: &out.bytes)
                }
            }
        }
        let deadline = duration.map { BootClock.now(CLOCK_MONOTONIC).addingReportingOverflow($0.nanoseconds) }.map { $0.overflow ? Int64.max : $0.partialValue }

        try tracer.run(
            shouldStop: {
                stopRequested.load(ordering: .relaxed) || out.broken
                    || deadline.map { BootClock.now(CLOCK_MONOTONIC) >= $0 } ?? false
            },
            onRecord: { record in
                switch record {
                case let .cgroup(c):
                    // In ring-buffer order: a container's cgroup is known
                    // before its first connection is read.
                    subtree?.apply(c)
                    identities?.apply(c)
                case let .dns(m):
                    if case let .success(answer) = m.answer {
                        let who = identities?.identity(forCgroup: m.cgroupID).workload ?? String(m.cgroupID)
                        names.record(answer, workload: who, at: m.timeNanoseconds)
                    }
                case var .connection(e):
                    seen += 1
                    let identity: Identity
                    if let identities {
                        identity = identities.resolve(e)
                    } else {
                        identity = .unknown
                        unresolved += 1
                    }
                    if e.direction == .connect, !names.isEmpty {
                        e.peerName = names.name(of: e.peer, for: identities == nil ? String(e.cgroupID) : identity.workload,
                                                at: e.timeNanoseconds)
                    }
                    guard filter.matches(e) else { return }
                    guard identityFilter.matches(identity) else { return }
                    shown += 1
                    switch format {
                    case .json: json.append(e, identity: identity, to: &out.bytes)
                    case .table:
                        table.append(e, extra: [HumanText.escape(identity.workload),
                                                HumanText.escape(identity.containerColumn)], to: &out.bytes)
                    }
                    out.flushIfLarge()
                }
            },
            onIdle: {
                if BootClock.now(CLOCK_MONOTONIC) - lastTake >= 1_000_000_000 {
                    do { try showCounts() } catch { printError("warning: reading the kernel's UDP counts: \(error)") }
                }
                out.flush()
            })
        try showCounts()
        out.flush()

        let loss = try tracer.lossCounts()
        tracer.close()
        var summary = "\(seen) events seen, \(shown) shown, \(loss.lostEvents) lost, \(counted) UDP datagrams counted in the kernel"
        if loss.lostEvents > 0 || loss.connectMapFull > 0 || loss.listenerMapFull > 0 || loss.cgroupRingBufferFull > 0 || loss.acceptMapFull > 0 {
            summary += " (ring buffer full: \(loss.ringBufferFull), undecodable: \(loss.undecodable); without process: \(loss.connectMapFull) connects, \(loss.listenerMapFull) listeners; accepts naming the listener's owner for want of room: \(loss.acceptMapFull); cgroup records lost: \(loss.cgroupRingBufferFull))"
        }
        if loss.recursionMisses > 0 {
            summary += "; \(loss.recursionMisses) program runs skipped by the kernel (recursion), each possibly a lost event"
        }
        if let ids = identities?.statistics {
            summary += "; \(ids.unattributed) of \(ids.events) resolved events unattributed"
            if ids.unverified > 0 { summary += ", \(ids.unverified) in cgroups named like containers that their runtime's files do not name (shown by path)" }
        } else {
            summary += "; \(unresolved) events unattributed (no cgroup v2 hierarchy)"
        }
        printError(summary)
    }
}

enum FileHandleStderr {
    static func write(_ s: String) {
        var text = s.hasSuffix("\n") ? s : s + "\n"
        text.withUTF8 { _ = Glibc.write(2, $0.baseAddress, $0.count) }
    }
}

extension HookRung: ExpressibleByArgument {}
extension ConnectionEvent.IPProtocol: ExpressibleByArgument {}
extension AcceptAttribution: ExpressibleByArgument {}
