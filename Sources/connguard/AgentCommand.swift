import ArgumentParser
import ConnGuardAgent
import ConnGuardCore
import ConnGuardIdentity
import ConnGuardTracer
import Foundation
import Logging

struct AgentCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "agent",
        abstract: "Run the node agent: trace, attribute and store every connection; answer queries.",
        discussion: """
        Runs until SIGTERM or SIGINT, then drains the kernel's buffer, flushes the database,
        detaches its tracing programs and removes its socket; enforcement stays pinned in the
        kernel (the next agent adopts it) unless --fail-open. Every setting has a default; --config
        reads a YAML file (keys: \(AgentConfiguration.fileKeys.sorted().joined(separator: ", "))),
        and flags override it.
        """
    )

    @Option(help: "YAML file with settings.")
    var config: String?

    @Option(help: "SQLite database (default /var/lib/connguard/connguard.db).")
    var db: String?

    @Option(help: "Unix socket for the CLI (default /run/connguard/api.sock).")
    var socket: String?

    @Option(help: "Group allowed to query the agent, read only (socket mode 0660, owned by this group).")
    var socketGroup: String?

    @Option(help: "Group allowed to query and to change modes and baselines (import, prune, mode). Its members reach the socket through --socket-group, or this group if there is none.")
    var adminGroup: String?

    @Option(help: ArgumentHelp("Close API connections idle this long (default 60s); a --follow stream that is sending is not idle.", visibility: .hidden),
            transform: Duration.parse)
    var apiIdleTimeout: Duration?

    @Option(help: "Use only these hooks: fentry, kprobe or tracepoint (default: the best this kernel allows).")
    var hooks: HookRung?

    @Option(help: "Which process accept events name: caller (of accept(); on the tracepoint rung this needs the syscall tracepoints) or listener (the owner of the listening socket). Default caller.")
    var acceptAttribution: AcceptAttribution?

    @Option(help: "Serve Prometheus metrics on HOST:PORT (e.g. 127.0.0.1:9090). Off by default.")
    var metricsAddress: String?

    @Option(help: "Watch only this cgroup v2 subtree (absolute, or relative to the cgroup2 mount). Default: the whole node.")
    var cgroupRoot: String?

    @Option(parsing: .unconditional, help: "Keep individual events this long (e.g. 24h).", transform: Duration.parse)
    var eventRetention: Duration?

    @Option(parsing: .unconditional, help: ArgumentHelp("Keep at most this many individual events a second as rows (default 2000; 0: all).",
                               discussion: "Every event is still counted in its aggregated connection; the first event of each new connection in a second is kept up to ten times this rate."))
    var individualEventsPerSecond: Int?

    @Option(help: ArgumentHelp("Entries of each kernel rule map (default 131072).",
                               discussion: "The rules of every enforced workload together must fit: address and CIDR rules in one map, rules on workloads in the other."))
    var maxKernelRules: Int?

    @Option(help: "A workload in learn mode that adds more rules than this in a minute stops learning (default 300).")
    var maxNewRulesPerMinute: Int?

    @Option(help: "Log level: trace, debug, info, notice, warning, error.")
    var logLevel: String?

    @Option(help: "Mode of a workload seen for the first time: learn (default), monitor or enforce.")
    var defaultMode: String?

    @Option(parsing: .unconditional, help: "Move a workload from learn to monitor after this long (e.g. 24h), once no rule was added for --quiet-period.", transform: Duration.parse)
    var learningPeriod: Duration?

    @Option(parsing: .unconditional, help: "Quiet time before an automatic promotion (default 1h).", transform: Duration.parse)
    var quietPeriod: Duration?

    @Flag(help: "Also promote monitor -> enforce automatically, after --quiet-period without would_deny.")
    var autoEnforce = false

    @Option(help: "Connections of cgroups ConnGuard does not know: allow (default) or deny.")
    var unknown: String?

    @Flag(help: "On exit, detach enforcement instead of leaving it pinned in the kernel.")
    var failOpen = false

    @Flag(help: "Time every BPF program run, for the connguard_bpf_program_* metrics (costs ~75 ns a run).")
    var programStats = false

    @Flag(help: "Do not read DNS answers (no peer_name, no rules on names; rules on names then allow nothing).")
    var noDnsNames = false

    @Option(help: "An allowed name's addresses stay allowed at least this long after its last answer (default 5m).", transform: Duration.parse)
    var dnsFloor: Duration?

    @Option(help: "bpffs folder where enforcement is pinned (default /sys/fs/bpf/connguard).")
    var pinRoot: String?

    @Option(help: ArgumentHelp("etcd client URLs, comma-separated (http://10.0.0.5:2379,...): share workloads' addresses, baselines and modes with the other nodes.",
                               discussion: "See docs/cluster.md. Without it the agent works alone, as before."))
    var clusterEndpoints: String?

    @Option(help: "This node's name in the cluster (default: $NODE_NAME, else the hostname).")
    var nodeName: String?

    @Option(help: "CA certificate (PEM) for https etcd endpoints (as etcdctl --cacert).")
    var clusterCa: String?

    @Option(help: "Client certificate (PEM) for etcd (as etcdctl --cert).")
    var clusterCert: String?

    @Option(help: "Client key (PEM) for etcd (as etcdctl --key).")
    var clusterKey: String?

    @Option(help: "This node's addresses expire this long after its agent stops renewing them (default 10s).", transform: Duration.parse)
    var clusterLeaseTtl: Duration?

    func run() async throws {
        var c = AgentConfiguration()
        do {
            if let config {
                let text: String
                do { text = try readFile(config) } catch { throw Failure("--config: \(error)") }
                c = try AgentConfiguration.load(yaml: text)
            }
        } catch let e as ConfigurationError {
            throw Failure("\(config ?? ""): \(e)")
        }
        if let db { c.databasePath = absolute(db) }
        if let socket { c.socketPath = absolute(socket) }
        if let socketGroup { c.socketGroup = socketGroup }
        if let adminGroup { c.adminGroup = adminGroup }
        if let apiIdleTimeout { c.apiIdleTimeoutSeconds = apiIdleTimeout.seconds }
        if let metricsAddress { c.metricsAddress = metricsAddress }
        if let hooks { c.hooks = hooks.rawValue }
        if let acceptAttribution { c.acceptAttribution = acceptAttribution.rawValue }
        if let cgroupRoot { c.cgroupRoot = cgroupRoot }
        if let eventRetention { c.eventRetentionSeconds = eventRetention.seconds }
        if let individualEventsPerSecond {
            guard (0...10_000_000).contains(individualEventsPerSecond) else {
                throw Failure("--individual-events-per-second must be between 0 and 10000000")
            }
            c.individualEventsPerSecond = individualEventsPerSecond
        }
        if let maxKernelRules {
            guard AgentConfiguration.kernelRuleRange.contains(maxKernelRules) else {
                throw Failure("--max-kernel-rules must be between \(AgentConfiguration.kernelRuleRange.lowerBound) and \(AgentConfiguration.kernelRuleRange.upperBound)")
            }
            c.maxKernelRules = maxKernelRules
        }
        if let maxNewRulesPerMinute {
            guard (1...1_000_000).contains(maxNewRulesPerMinute) else { throw Failure("--max-new-rules-per-minute must be between 1 and 1000000") }
            c.maxNewRulesPerMinute = maxNewRulesPerMinute
        }
        if let logLevel { c.logLevel = logLevel }
        if let defaultMode { c.defaultMode = defaultMode }
        if let learningPeriod { c.learningPeriodSeconds = learningPeriod.seconds }
        if let quietPeriod { c.quietPeriodSeconds = quietPeriod.seconds }
        if autoEnforce { c.autoEnforce = true }
        if let unknown { c.unknownCgroups = unknown }
        if failOpen { c.failOpen = true }
        if programStats { c.programStats = true }
        if noDnsNames { c.dnsNames = false }
        if let dnsFloor { c.dnsFloorSeconds = dnsFloor.seconds }
        if let pinRoot { c.pinRoot = absolute(pinRoot) }
        if let clusterEndpoints { c.clusterEndpoints = AgentConfiguration.endpointList(clusterEndpoints) }
        if let nodeName { c.nodeName = nodeName }
        if let clusterCa { c.clusterCA = absolute(clusterCa) }
        if let clusterCert { c.clusterCert = absolute(clusterCert) }
        if let clusterKey { c.clusterKey = absolute(clusterKey) }
        if let clusterLeaseTtl { c.clusterLeaseTTLSeconds = clusterLeaseTtl.seconds }
        let problems = c.validate()
        if !problems.isEmpty { throw Failure(ConfigurationError(problems: problems).description) }

        let level = Logger.Level(rawValue: c.logLevel) ?? .info
        LoggingSystem.bootstrap { label in
            var h = StreamLogHandler.standardError(label: label)
            h.logLevel = level
            return h
        }
        let logger = Logger(label: "connguard.agent")
        do {
            let agent = try Agent(configuration: c, identity: try IdentityResolver.forThisNode(logger: logger),
                                  version: ConnGuardVersion.string, logger: logger)
            try await agent.run()
        } catch let e as Failure {
            throw e
        } catch {
            throw Failure("\(error)")
        }
    }

    private func absolute(_ path: String) -> String {
        path.hasPrefix("/") ? path : FileManager.default.currentDirectoryPath + "/" + path
    }
}
