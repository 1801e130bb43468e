import ArgumentParser
import ConnGuardAgent
import ConnGuardCore
import Foundation

/// Flags every query command shares.
struct AgentConnectionOptions: ParsableArguments {
    @Option(help: "The agent's Unix socket.")
    var socket: String = APIClient.defaultSocket
}

struct ConnectionsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "connections",
        abstract: "Show recent connections, as the agent stored them.",
        discussion: "Examples: connguard connections --since 1h --workload shop/web/nginx; connguard connections --aggregate --direction out"
    )

    @OptionGroup var agent: AgentConnectionOptions

    @Option(parsing: .unconditional, help: "Only connections since this long ago (15m, 2h) or this RFC 3339 time.")
    var since: String?
    @Option(parsing: .unconditional, help: "Only connections before this long ago or this RFC 3339 time.")
    var until: String?
    @Option(parsing: .unconditional, help: "Only the newest N.")
    var last: Int?
    @Flag(help: "Keep printing new connections as they are stored.")
    var follow = false
    @Option(help: "Only this workload (as shown in the WORKLOAD column).")
    var workload: String?
    @Option(help: "Only this container (name, or a prefix of its id).")
    var container: String?
    @Option(help: "Only this Kubernetes namespace.")
    var namespace: String?
    @Option(help: "Only this pod (name, or namespace/name).")
    var pod: String?
    @Option(parsing: .unconditional, help: "Only this port (either side).", transform: PortOption.parse)
    var port: UInt16?
    @Option(help: "Only this remote address or CIDR.")
    var peer: String?
    @Option(help: "Only connections to addresses the workload resolved from this DNS name (or *.example.test).")
    var peerName: String?
    @Option(help: "in (accepted) or out (connected).")
    var direction: String?
    @Option(help: "allowed, would_deny or denied.")
    var verdict: String?
    @Option(name: .customLong("protocol"), help: "tcp or udp.")
    var proto: String?
    @Flag(help: "One row per (workload, direction, peer, port, verdict, protocol), with counts.")
    var aggregate = false
    @Option(name: [.short, .customLong("output")], help: "table or json (one object per line).")
    var output: OutputFormat = .table

    /// The request's parameters, as the API takes them.
    var parameters: [(String, String)] {
        var q: [(String, String)] = []
        func add(_ k: String, _ v: String?) { if let v { q.append((k, v)) } }
        add("since", since); add("until", until); add("last", last.map(String.init))
        add("workload", workload); add("container", container); add("namespace", namespace); add("pod", pod)
        add("port", port.map(String.init)); add("peer", peer); add("peer_name", peerName); add("direction", direction); add("verdict", verdict)
        add("protocol", proto)
        if aggregate { q.append(("aggregate", "true")) }
        if follow { q.append(("follow", "true")) }
        return q
    }

    /// Checked by the agent's own parser of the request, so that the CLI and
    /// the API accept the same values and refuse the rest in the same words
    /// (here naming flags: "port ..." is "--port ...").
    func validate() throws {
        do {
            _ = try ConnectionsRequest(parameters: parameters, now: BootClock.now(CLOCK_REALTIME))
        } catch {
            let problems = "\(error)".components(separatedBy: "; ").map { problem -> String in
                let word = problem.prefix { $0.isLetter || $0 == "_" }
                // The API's peer_name is the flag --peer-name.
                guard ConnectionsRequest.parameters.contains(String(word)) else { return problem }
                return "--" + word.replacingOccurrences(of: "_", with: "-") + problem.dropFirst(word.count)
            }
            throw ValidationError(problems.joined(separator: "; ").replacingOccurrences(of: " and follow", with: " and --follow"))
        }
    }

    func run() async throws {
        let q = parameters
        installStopSignals()

        var out = OutputBuffer()
        let table = ConnectionTable(aggregate: aggregate)
        // Nothing is printed until the answer is known to be good: the header
        // comes with the first row (or at the end), and a one-shot answer is
        // printed only once it is complete, so an error leaves no half table.
        var header = output == .table ? table.header() : nil
        do {
            try await APIClient(socketPath: agent.socket).get(
                "/v1/connections", query: q, stop: { stopRequested.load(ordering: .relaxed) || out.broken }
            ) { line in
                if let h = header { out.bytes += h.utf8; header = nil }
                switch output {
                case .json:
                    out.bytes += line.utf8
                    out.bytes.append(UInt8(ascii: "\n"))
                case .table:
                    if let obj = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] {
                        out.bytes += table.row(obj).utf8
                    }
                }
                if follow { out.flush() }
                return !out.broken && !stopRequested.load(ordering: .relaxed)
            }
        } catch let e as APIClient.Failure {
            if follow {
                out.flush()
                throw Failure("the agent stopped (\(e.description))")
            }
            throw Failure(e.description)
        }
        if let h = header { out.bytes += h.utf8 }
        out.flush()
        // A followed stream ends only when the agent does (or we stop).
        if follow && !stopRequested.load(ordering: .relaxed) && !out.broken {
            throw Failure("the agent stopped")
        }
    }
}

/// Columns of `connguard connections`.
struct ConnectionTable {
    let aggregate: Bool

    var columns: [(String, Int)] {
        aggregate
            ? [("WORKLOAD", 36), ("DIR", 4), ("PROTO", 5), ("PEER", 40), ("PORT", 6), ("VERDICT", 11), ("COUNT", 8), ("FAILED", 7), ("FIRST SEEN", 20), ("LAST SEEN", 20)]
            : [("TIME", 20), ("EVENT", 7), ("PROTO", 5), ("OUTCOME", 20), ("VERDICT", 11), ("WORKLOAD", 36), ("PROCESS", 22), ("SOURCE", 22), ("DESTINATION", 22),
               ("PEER WORKLOAD", 0)]
    }

    func header() -> String { line(columns.map(\.0)) }

    func row(_ o: [String: Any]) -> String {
        func s(_ k: String) -> String {
            switch o[k] {
            case let v as String: return HumanText.escape(v)
            case let v as NSNumber: return v.stringValue
            default: return "-"
            }
        }
        func time(_ k: String) -> String {
            let t = s(k)
            return t.count >= 19 ? String(t.prefix(19)).replacingOccurrences(of: "T", with: " ") : t
        }
        if aggregate {
            return line([s("workload"), s("event") == "accept" ? "in" : "out", s("protocol"), s("peer"), s("port"), s("verdict"),
                         s("count"), s("failed"), time("first_seen"), time("last_seen")])
        }
        var outcome = s("outcome") == "failed" && o["error"] is String ? "failed " + s("error") : s("outcome")
        // Found open when the agent started: its time is the agent's start, not the connection's.
        if s("hook") == "snapshot" { outcome += " at start" }
        let process = (o["process_known"] as? Bool) == false ? "?" : "\(s("pid"))/\(s("comm"))"
        func endpoint(_ a: String, _ p: String) -> String { s(a).contains(":") ? "[\(s(a))]:\(s(p))" : "\(s(a)):\(s(p))" }
        return line([time("time"), s("event"), s("protocol"), outcome, s("verdict"), s("workload"), process,
                     endpoint("src", "sport"), endpoint("dst", "dport") + (o["peer_name"] is String ? " (\(s("peer_name")))" : ""),
                     s("peer_workload")])
    }

    private func line(_ cells: [String]) -> String {
        var text = ""
        for (i, cell) in cells.enumerated() {
            text += cell
            if i < cells.count - 1 {
                let width = i < columns.count ? columns[i].1 : 0
                text += String(repeating: " ", count: max(1, width - cell.count + 1))
            }
        }
        return text + "\n"
    }
}

struct StatusCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status",
        abstract: "Is the agent up, since when, what it has seen and lost."
    )

    @OptionGroup var agent: AgentConnectionOptions
    @Option(name: [.short, .customLong("output")], help: "table or json.")
    var output: OutputFormat = .table

    func run() async throws {
        let client = APIClient(socketPath: agent.socket)
        do {
            if output == .json {
                try await client.get("/v1/status") { line in print(line); return false }  // JSON: escaped by the agent
                return
            }
            let text = try await client.send(.GET, "/v1/status")
            let s: AgentStatus
            do { s = try AgentStatus.decode(Data(text.utf8)) } catch { throw Failure("the agent's status was not understood (\(error)); is it another version?") }
            say("agent:      up since \(s.startedAt) (pid \(s.pid), version \(s.version))")
            say("watching:   cgroup \(s.cgroupRoot)")
            say("hook rung:  \(s.hookRung)")
            for k in s.hooks.keys.sorted() { say("hook:       \(k): \(s.hooks[k] ?? "")") }
            say("at start:   \(s.listenersSeeded) listeners, \(s.connectionsSeeded) established connections learnt from /proc")
            let e = s.events
            say("events:     \(e.connect) connects, \(e.accept) accepts, \(e.stored) stored (\(e.aggregatedOnly) as counts only, \(e.countedInKernel) of them counted in the kernel), \(e.unattributed) unattributed")
            let l = s.lost
            say("lost:       \(l.total) (kernel ring buffer \(l.kernelRingBufferFull), denials \(l.denials), write queue \(l.writeQueueFull), write failed \(l.writeFailed)); possibly lost to kernel recursion: \(l.possiblyLostKernelRecursion)")
            let i = s.incomplete
            if i.connectsWithoutProcess + i.listenersWithoutOwner + i.acceptsNamingListener + i.udpSocketsWithoutRole + i.socketsWithoutBinder > 0 {
                say("incomplete: \(i.connectsWithoutProcess) connects and \(i.listenersWithoutOwner) listeners without their process, \(i.acceptsNamingListener) accepts naming the listener's owner, \(i.udpSocketsWithoutRole) UDP sockets without a role, \(i.socketsWithoutBinder) sockets without their binder (kernel maps full)")
            }
            say("workloads:  \(s.workloads) known, \(s.cgroupsTracked) cgroups tracked")
            let d = s.database
            say("database:   \(d.path), \(String(format: "%.1f MiB", Double(d.sizeBytes) / 1_048_576)), \(d.events) events, \(d.connections) aggregated connections")
            say("modes:      \(s.modes["learn"] ?? 0) learn, \(s.modes["monitor"] ?? 0) monitor, \(s.modes["enforce"] ?? 0) enforce")
            let enf = s.enforcement
            let attached = enf.programsAttached ? "programs attached" : "programs not attached (nothing enforced)"
            say("enforce:    on \(enf.cgroup), \(attached), pinned at \(enf.pinnedAt)\(enf.adopted ? " (adopted from the previous agent)" : ""); unknown cgroups: \(enf.unknownCgroups); on exit: \(enf.onExit)")
            if let a = enf.arming.value { say("arming:     \(a)") }
            if enf.unparsedPackets + enf.newCgroupsMissed + enf.udpDenialsCounted > 0 {
                say("            \(enf.udpDenialsCounted) UDP denials counted (not sent one by one), \(enf.unparsedPackets) inbound packets not parsed (let through), \(enf.newCgroupsMissed) new cgroups missed at birth")
            }
            let dns = s.dns
            say("dns:        \(dns.answers) answers read (\(dns.malformed) malformed, \(dns.notAnAnswer) without addresses, \(dns.untrusted) from untrusted resolvers, \(dns.lost) lost; \(dns.repeatsInKernel) repeats within a second left in the kernel); in enforcement: \(dns.granted) answers granted \(dns.addressesGranted) addresses (held at least \(Int(dns.floorSeconds)) s), \(dns.allowedByGrant) connects allowed by them, \(dns.untrustedResolver) from untrusted resolvers and \(dns.kernelMalformed) malformed ignored, \(dns.grantsFull) not granted (map full), \(dns.kernelRepeats) repeats not parsed again")
            let k = enf.kernelRules
            say("rules:      \(k.address) of \(k.addressCapacity) address rules, \(k.workload) of \(k.workloadCapacity) workload rules in the kernel (enforced workloads)")
            if !enf.heldBack.isEmpty {
                say("held back:  \(enf.heldBack.joined(separator: ", ")): in enforce mode, but their rules do not fit the kernel, so they are only monitored there")
            }
            if let c = s.cluster.value {
                switch c.state {
                case "degraded":
                    say("cluster:    degraded since \(c.degradedSince.value ?? "?") (\(HumanText.escape(c.reason.value ?? ""))); enforcing what was last known, learning locally")
                case "connecting":
                    say("cluster:    connecting to \(c.endpoints.joined(separator: ",")) as node \(HumanText.escape(c.node))")
                default:
                    say("cluster:    connected as node \(HumanText.escape(c.node)) (\(c.endpoints.count) endpoints), revision \(c.revision)")
                }
                say("            \(c.remoteAddresses) addresses of other nodes, \(c.baselines) cluster baselines, \(c.addressConflicts) addresses claimed twice, \(c.refusedValues) values refused")
            }
            if !s.audit.recent.isEmpty { say("audit:      \(s.audit.recent)") }
        } catch let e as APIClient.Failure {
            throw Failure(e.description)
        }
    }
}
