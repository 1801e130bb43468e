import ConnGuardCore
import ConnGuardEnforcer
import ConnGuardTracer
import Prometheus

/// The agent's Prometheus metrics. Names follow Prometheus conventions
/// (`connguard_..._total` for counters, base units); every label takes a small
/// fixed set of values: no pids, addresses, container ids or workloads.
public final class AgentMetrics: Sendable {
    public let registry: PrometheusCollectorRegistry

    private let events: [String: Counter]  // "connect/allowed" ...
    private let lostKernel: [String: Counter]
    private let lostAgent: [String: Counter]
    private let incomplete: [String: Counter]
    /// Enforcement's own counts: unparsed packets, missed new cgroups, UDP
    /// denials counted instead of sent.
    private let enforcement: [String: Counter]
    /// DNS answers, by where they were read and what came of them.
    private let dnsAnswers: [String: Counter]
    private let unattributed: Counter
    private let followDropped: Counter
    private let aggregatedOnly: Counter
    private let storedEvents: Gauge
    private let storedAggregates: Gauge
    private let databaseBytes: Gauge
    private let cgroupsTracked: Gauge
    private let writeQueueDepth: Gauge
    private let kernelRules: [String: Gauge]
    private let heldBack: Gauge
    private let programRuns: [String: Counter]
    private let programSeconds: [String: Counter]
    private let programMisses: [String: Counter]
    /// On a cluster only.
    private let cluster: (degraded: Gauge, since: Gauge, remote: Gauge, conflicts: Gauge, refused: Gauge)?
    /// Kernel counters are absolute; Prometheus counters take increments.
    private let lastKernel = Mutex()
    nonisolated(unsafe) private var kernelSeen: [String: UInt64] = [:]

    public static let programNames = ["cg_tp_sock_state", "cg_tp_cgroup_mkdir", "cg_tp_cgroup_rmdir"]

    /// The full name as it is exported (the library would also join it from
    /// namespace, name and unit parts; one string is easier to grep for).
    private static func metric(_ name: String, help: String) -> MetricNameDescriptor {
        MetricNameDescriptor(metricName: name, unitName: "", helpText: help)
    }

    public init(registry: PrometheusCollectorRegistry = PrometheusCollectorRegistry(), clustered: Bool = false) {
        self.registry = registry
        var ev: [String: Counter] = [:]
        for d in ConnectionEvent.Direction.allCases {
            for v in Verdict.allCases {
                ev["\(d.rawValue)/\(v.rawValue)"] = registry.makeCounter(descriptor: AgentMetrics.metric("connguard_events_total", help: "Connection events seen, by kind and verdict."),
                    labels: [("event", d.rawValue), ("verdict", v.rawValue)])
            }
        }
        events = ev
        let lostHelp = "Events lost before they were stored, by where and why. Never silent: any non-zero value means the record is incomplete."
        lostKernel = Dictionary(uniqueKeysWithValues: ["ring_buffer_full", "cgroup_ring_buffer_full", "denial_ring_buffer_full"].map {
            ($0, registry.makeCounter(descriptor: AgentMetrics.metric("connguard_events_lost_total", help: lostHelp), labels: [("stage", "kernel"), ("reason", $0)]))
        })
        lostAgent = Dictionary(uniqueKeysWithValues: ["write_queue_full", "undecodable", "denial_undecodable"].map {
            ($0, registry.makeCounter(descriptor: AgentMetrics.metric("connguard_events_lost_total", help: lostHelp), labels: [("stage", "agent"), ("reason", $0)]))
        })
        incomplete = Dictionary(uniqueKeysWithValues: ["connect_map_full", "listener_map_full", "accept_map_full", "udp_role_storage", "socket_owner_storage"].map {
            ($0, registry.makeCounter(descriptor: AgentMetrics.metric("connguard_events_incomplete_total", help: "Events delivered without their process (accept_map_full: naming the listener's owner instead of the process that accepted; udp_role_storage: UDP sockets whose client or server role could not be kept; socket_owner_storage: sockets whose binder enforcement could not record, so their inbound denials carry no process), because a kernel map was full."),
                                      labels: [("reason", $0)]))
        })
        enforcement = [
            "unparsed": registry.makeCounter(descriptor: AgentMetrics.metric("connguard_enforcement_packets_unparsed_total",
                help: "Inbound packets whose TCP or UDP header enforcement could not find (let through).")),
            "cgroups_missed": registry.makeCounter(descriptor: AgentMetrics.metric("connguard_enforcement_cgroups_missed_total",
                help: "New cgroups in the watched subtree not reported at birth (their ring buffer was full; armed by the agent's sweep).")),
            "udp_denials_counted": registry.makeCounter(descriptor: AgentMetrics.metric("connguard_udp_denials_counted_total",
                help: "UDP denials counted in the kernel instead of sent (their flow's first denial that second was sent)."))
        ]
        let dnsHelp = "DNS answers read, by where (agent: user space, for peer_name and learning; kernel: enforcement, before the socket has them) and what came of them."
        dnsAnswers = Dictionary(uniqueKeysWithValues: [
            ("agent/named", "agent", "named"), ("agent/malformed", "agent", "malformed"), ("agent/no_addresses", "agent", "no_addresses"),
            ("agent/untrusted_resolver", "agent", "untrusted_resolver"), ("agent/lost", "agent", "ring_buffer_full"),
            ("agent/repeats", "agent", "repeat_left_in_kernel"), ("kernel/repeats", "kernel", "repeat_not_parsed"),
            ("kernel/granted", "kernel", "granted"), ("kernel/name_not_allowed", "kernel", "name_not_allowed"),
            ("kernel/untrusted_resolver", "kernel", "untrusted_resolver"), ("kernel/malformed", "kernel", "malformed"),
            ("kernel/no_addresses", "kernel", "no_addresses"),
        ].map { key, stage, outcome in
            (key, registry.makeCounter(descriptor: AgentMetrics.metric("connguard_dns_answers_total", help: dnsHelp),
                                       labels: [("stage", stage), ("outcome", outcome)]))
        } + [
            ("kernel/addresses", registry.makeCounter(descriptor: AgentMetrics.metric("connguard_dns_addresses_granted_total",
                help: "Addresses that answers for allowed names let enforced workloads reach (granted or renewed)."))),
            ("kernel/grants_full", registry.makeCounter(descriptor: AgentMetrics.metric("connguard_dns_grants_full_total",
                help: "Addresses of allowed names that could not be granted: the kernel's grant map was full."))),
            ("kernel/allowed", registry.makeCounter(descriptor: AgentMetrics.metric("connguard_dns_connects_allowed_total",
                help: "Connects and datagrams that enforcement allowed by a DNS grant."))),
        ])
        unattributed = registry.makeCounter(descriptor: AgentMetrics.metric("connguard_events_unattributed_total",
                                            help: "Events whose cgroup could not be resolved to a workload (stored as workload 'unknown')."))
        followDropped = registry.makeCounter(descriptor: AgentMetrics.metric("connguard_follow_events_dropped_total",
                                             help: "Events not sent to a slow `connections --follow` client (they are still stored)."))
        aggregatedOnly = registry.makeCounter(descriptor: AgentMetrics.metric("connguard_events_aggregated_only_total",
            help: "Events stored in their aggregated connection only, without a row of their own (over the individual-events-per-second budget)."))
        storedEvents = registry.makeGauge(descriptor: AgentMetrics.metric("connguard_stored_events", help: "Individual connection events in the database."))
        storedAggregates = registry.makeGauge(descriptor: AgentMetrics.metric("connguard_stored_connections",
                                              help: "Aggregated connections (workload, direction, peer, port, verdict) in the database."))
        databaseBytes = registry.makeGauge(descriptor: AgentMetrics.metric("connguard_database_size_bytes", help: "Size of the database files, WAL included."))
        cgroupsTracked = registry.makeGauge(descriptor: AgentMetrics.metric("connguard_cgroups_tracked", help: "cgroups whose identity the agent knows."))
        writeQueueDepth = registry.makeGauge(descriptor: AgentMetrics.metric("connguard_write_queue_events", help: "Events waiting to be written to the database."))
        kernelRules = Dictionary(uniqueKeysWithValues: ["address", "workload"].flatMap { kind in
            [("\(kind)", registry.makeGauge(descriptor: AgentMetrics.metric("connguard_kernel_rules", help: "Rules of enforced workloads in the kernel's maps, by kind of peer."),
                                             labels: [("peer", kind)])),
             ("\(kind)/capacity", registry.makeGauge(descriptor: AgentMetrics.metric("connguard_kernel_rules_capacity", help: "Entries of each kernel rule map."),
                                                      labels: [("peer", kind)]))]
        })
        heldBack = registry.makeGauge(descriptor: AgentMetrics.metric("connguard_workloads_held_back",
            help: "Workloads in enforce mode whose rules do not fit the kernel's maps: monitored there, not enforced."))
        programRuns = Dictionary(uniqueKeysWithValues: AgentMetrics.programNames.map {
            ($0, registry.makeCounter(descriptor: AgentMetrics.metric("connguard_bpf_program_runs_total", help: "Times each BPF program ran (kernel statistics, with --program-stats; else 0)."),
                                      labels: [("program", $0)]))
        })
        programMisses = Dictionary(uniqueKeysWithValues: AgentMetrics.programNames.map {
            ($0, registry.makeCounter(descriptor: AgentMetrics.metric("connguard_bpf_program_recursion_misses_total", help: "Runs the kernel skipped because the program was already running on that CPU; each may be a lost event."),
                                      labels: [("program", $0)]))
        })
        programSeconds = Dictionary(uniqueKeysWithValues: AgentMetrics.programNames.map {
            ($0, registry.makeCounter(descriptor: AgentMetrics.metric("connguard_bpf_program_run_seconds_total", help: "CPU time spent in each BPF program (kernel statistics, with --program-stats; else 0)."),
                                      labels: [("program", $0)]))
        })
        cluster = clustered ? (
            degraded: registry.makeGauge(descriptor: AgentMetrics.metric("connguard_cluster_degraded",
                help: "1 while the cluster store is away (enforcing what was last known, learning locally), else 0.")),
            since: registry.makeGauge(descriptor: AgentMetrics.metric("connguard_cluster_degraded_since_timestamp_seconds",
                help: "Unix time since which the cluster store has been away; 0 when it is not.")),
            remote: registry.makeGauge(descriptor: AgentMetrics.metric("connguard_cluster_remote_addresses",
                help: "Workload addresses published by the other nodes.")),
            conflicts: registry.makeGauge(descriptor: AgentMetrics.metric("connguard_cluster_address_conflicts",
                help: "Addresses claimed for more than one workload (they name none).")),
            refused: registry.makeGauge(descriptor: AgentMetrics.metric("connguard_cluster_refused_values",
                help: "Values in the cluster store that were refused (not applied)."))) : nil
    }

    public func update(cluster s: AgentStatus.Cluster, degradedSinceSeconds: Double?) {
        guard let cluster else { return }
        cluster.degraded.set(to: degradedSinceSeconds == nil ? 0 : 1)
        cluster.since.set(to: degradedSinceSeconds ?? 0)
        cluster.remote.set(to: Double(s.remoteAddresses))
        cluster.conflicts.set(to: Double(s.addressConflicts))
        cluster.refused.set(to: Double(s.refusedValues))
    }

    public func countEvent(_ direction: ConnectionEvent.Direction, _ verdict: Verdict, by n: Int64 = 1) {
        events["\(direction.rawValue)/\(verdict.rawValue)"]?.increment(by: n)
    }

    public func countUnattributed(by n: Int64 = 1) { unattributed.increment(by: n) }
    public func countFollowDropped(by n: Int64 = 1) { followDropped.increment(by: n) }

    /// Brings the counters that mirror absolute values up to date.
    public func update(loss: LossCounts, writeQueueLost: UInt64, aggregatedOnly: UInt64 = 0) {
        advance("s/aggregated_only", aggregatedOnly) { self.aggregatedOnly.increment(by: $0) }
        advance("k/ring_buffer_full", loss.ringBufferFull) { lostKernel["ring_buffer_full"]!.increment(by: $0) }
        advance("k/cgroup_ring_buffer_full", loss.cgroupRingBufferFull) { lostKernel["cgroup_ring_buffer_full"]!.increment(by: $0) }
        advance("a/undecodable", loss.undecodable) { lostAgent["undecodable"]!.increment(by: $0) }
        advance("a/write_queue_full", writeQueueLost) { lostAgent["write_queue_full"]!.increment(by: $0) }
        advance("i/connect_map_full", loss.connectMapFull) { incomplete["connect_map_full"]!.increment(by: $0) }
        advance("i/listener_map_full", loss.listenerMapFull) { incomplete["listener_map_full"]!.increment(by: $0) }
        advance("i/accept_map_full", loss.acceptMapFull) { incomplete["accept_map_full"]!.increment(by: $0) }
        advance("i/udp_role_storage", loss.udpRoleStorage) { incomplete["udp_role_storage"]!.increment(by: $0) }
    }

    public func update(enforcementDrops d: EnforcementDropCounts) {
        advance("k/denial_ring_buffer_full", d.lostDenials) { lostKernel["denial_ring_buffer_full"]!.increment(by: $0) }
        advance("a/denial_undecodable", d.undecodable) { lostAgent["denial_undecodable"]!.increment(by: $0) }
        advance("i/socket_owner_storage", d.ownerNotRecorded) { incomplete["socket_owner_storage"]!.increment(by: $0) }
        advance("e/unparsed", d.unparsedPackets) { enforcement["unparsed"]!.increment(by: $0) }
        advance("e/cgroups_missed", d.lostNewCgroups) { enforcement["cgroups_missed"]!.increment(by: $0) }
        advance("e/udp_denials_counted", d.udpDenialRepeats) { enforcement["udp_denials_counted"]!.increment(by: $0) }
    }

    public func update(dns user: ResolvedNames.Counts, lost: UInt64, repeats: UInt64, kernel k: DNSCounts?) {
        let named = user.answers - min(user.answers, user.notAnAnswer + user.untrusted)
        for (key, value) in [("agent/named", named), ("agent/malformed", user.malformed), ("agent/no_addresses", user.notAnAnswer),
                             ("agent/untrusted_resolver", user.untrusted), ("agent/lost", lost), ("agent/repeats", repeats)] {
            advance("d/" + key, value) { dnsAnswers[key]!.increment(by: $0) }
        }
        guard let k else { return }
        for (key, value) in [("kernel/granted", k.granted), ("kernel/name_not_allowed", k.nameNotAllowed),
                             ("kernel/untrusted_resolver", k.untrustedResolver), ("kernel/malformed", k.malformed),
                             ("kernel/no_addresses", k.notAnAnswer), ("kernel/addresses", k.addressesGranted),
                             ("kernel/grants_full", k.grantsFull), ("kernel/allowed", k.allowedByGrant), ("kernel/repeats", k.repeats)] {
            advance("d/" + key, value) { dnsAnswers[key]!.increment(by: $0) }
        }
    }

    public func update(programStats: [(name: String, runs: UInt64, nanoseconds: UInt64, misses: UInt64)]) {
        for p in programStats {
            advance("m/\(p.name)", p.misses) { programMisses[p.name]?.increment(by: $0) }
            advance("r/\(p.name)", p.runs) { programRuns[p.name]?.increment(by: $0) }
            advance("t/\(p.name)", p.nanoseconds) { programSeconds[p.name]?.increment(by: Double($0) / 1e9) }
        }
    }

    public func update(kernelRules k: PolicyEngine.KernelRules) {
        kernelRules["address"]?.set(to: Double(k.address))
        kernelRules["address/capacity"]?.set(to: Double(k.addressCapacity))
        kernelRules["workload"]?.set(to: Double(k.workload))
        kernelRules["workload/capacity"]?.set(to: Double(k.workloadCapacity))
        heldBack.set(to: Double(k.heldBack.count))
    }

    public func update(storedEvents e: Int, storedAggregates a: Int, databaseBytes b: Int, cgroups: Int, queueDepth: Int) {
        storedEvents.set(to: Double(e))
        storedAggregates.set(to: Double(a))
        databaseBytes.set(to: Double(b))
        cgroupsTracked.set(to: Double(cgroups))
        writeQueueDepth.set(to: Double(queueDepth))
    }

    private func advance(_ key: String, _ value: UInt64, _ increment: (Int64) -> Void) {
        let delta: UInt64 = lastKernel.withLock {
            let old = kernelSeen[key] ?? 0
            kernelSeen[key] = max(old, value)
            return value > old ? value - old : 0
        }
        if delta > 0 { increment(Int64(clamping: delta)) }
    }

    /// The text exposition format.
    public func render() -> String { registry.emitToString() }
}
