import ConnGuardCore
import Foundation
import Yams

/// The agent's set-up. Every knob has a default that works on a node as it
/// is; an optional YAML file (`--config`) sets any of them, and flags override
/// the file.
public struct AgentConfiguration: Sendable, Equatable {
    /// SQLite database (WAL mode).
    public var databasePath = "/var/lib/connguard/connguard.db"
    /// The local API for the CLI: a Unix socket, mode 0600 (0660 with socketGroup).
    public var socketPath = "/run/connguard/api.sock"
    /// A group allowed to query the API (read only).
    public var socketGroup: String?
    /// A group allowed to query and to change modes and baselines.
    public var adminGroup: String?
    /// API connections idle this long (no request in progress) are closed;
    /// a `--follow` stream that is sending is not idle.
    public var apiIdleTimeoutSeconds: Double = 60
    /// "127.0.0.1:9090" to serve Prometheus metrics; nil: off.
    public var metricsAddress: String?
    /// Only events from this cgroup v2 subtree (relative to the cgroup2 mount)
    /// are watched, and later enforced. "/" is the whole node.
    public var cgroupRoot = "/"
    /// Individual events are kept this long and at most this many.
    public var eventRetentionSeconds: Double = 24 * 3600
    public var eventRetentionCount = 5_000_000
    /// Individual events kept as rows, per second (repeats of a connection;
    /// the first event of each connection in a second is kept up to ten
    /// times this). The rest are counted in their aggregated connection only.
    /// 0: a row for every event.
    public var individualEventsPerSecond = 2_000
    /// Aggregated connections are kept this long after they were last seen.
    public var aggregateRetentionSeconds: Double = 90 * 24 * 3600
    /// Ring buffer size in MiB.
    public var ringBufferMiB: UInt32 = 16
    /// Force one hook rung ("fentry", "kprobe", "tracepoint"); nil: the best the kernel allows.
    public var hooks: String?
    /// Which process accept events name: "caller" (of accept()) or "listener"
    /// (its owner; spares the tracepoint rung the syscall tracepoints).
    public var acceptAttribution = "caller"
    /// Events waiting for the database at most; beyond it they are counted as lost.
    public var writeQueueCapacity = 1_000_000
    public var logLevel = "info"
    /// Mode of a workload seen for the first time.
    public var defaultMode = "learn"
    /// learn -> monitor after this long (and a quiet period with no new rule); nil: never automatically.
    public var learningPeriodSeconds: Double?
    /// How long without a new rule (learn) or a would_deny (monitor) before a promotion.
    public var quietPeriodSeconds: Double = 3600
    /// Allow automatic promotion from monitor to enforce.
    public var autoEnforce = false
    /// "deny": refuse connections of cgroups the agent does not know. Default allow.
    public var unknownCgroups = "allow"
    /// Detach every enforcement program on exit instead of leaving them pinned.
    public var failOpen = false
    /// Have the kernel time every BPF program run (BPF_ENABLE_STATS), for the
    /// connguard_bpf_program_* metrics. Off by default: the timing itself
    /// costs ~75 ns a run here, more than a UDP datagram's whole tracing.
    public var programStats = false
    /// Read the DNS answers workloads receive: connections name their peer
    /// (`peer_name`), learning makes rules on names, and enforce allows an
    /// allowed name's addresses as the answer arrives.
    public var dnsNames = true
    /// An allowed name's addresses stay allowed at least this long after its
    /// last answer (longer if the answer's TTL is longer), so clients that
    /// cache past the TTL keep working.
    public var dnsFloorSeconds: Double = 300
    /// Where enforcement is pinned (bpffs).
    public var pinRoot = "/sys/fs/bpf/connguard"
    /// Entries of each kernel rule map (address and CIDR rules; rules on
    /// workloads): the rules of every enforced workload together must fit.
    /// Fits the largest baseline file (BaselineFile.maximumRules).
    public var maxKernelRules = 131_072
    /// A workload in learn mode that adds more rules than this in a minute
    /// stops adding (a scan is not a baseline).
    public var maxNewRulesPerMinute = 300
    /// etcd client URLs ("http://10.0.0.5:2379"): share addresses, baselines
    /// and modes with the other nodes (docs/cluster.md). Empty: this node alone.
    public var clusterEndpoints: [String] = []
    /// This node's name in the cluster; nil: $NODE_NAME, else the hostname.
    public var nodeName: String?
    /// For https endpoints: PEM files, as etcdctl's --cacert, --cert, --key.
    public var clusterCA: String?
    public var clusterCert: String?
    public var clusterKey: String?
    /// This node's addresses expire this long after its agent stops keeping
    /// them alive (killed, or cut off from etcd).
    public var clusterLeaseTTLSeconds: Double = 10

    public init() {}

    /// The node name to use: the setting, $NODE_NAME (the DaemonSet sets it
    /// from spec.nodeName), or the hostname.
    public var effectiveNodeName: String {
        if let n = nodeName { return n }
        if let n = ProcessInfo.processInfo.environment["NODE_NAME"], !n.isEmpty { return n }
        return ProcessInfo.processInfo.hostName
    }

    /// 1,024 to 4,194,304 entries per map (an LPM trie entry costs the
    /// kernel about 100 bytes; 4 Mi of them about 400 MiB).
    public static let kernelRuleRange = 1_024...4_194_304

    /// Keys as in the YAML file: database, socket, socket_group, metrics_address,
    /// cgroup_root, event_retention, event_retention_count,
    /// individual_events_per_second, aggregate_retention, ring_buffer_mib,
    /// write_queue_capacity, log_level, ...
    public static let fileKeys: Set<String> = [
        "database", "socket", "socket_group", "admin_group", "metrics_address", "cgroup_root", "event_retention",
        "event_retention_count", "individual_events_per_second", "aggregate_retention", "ring_buffer_mib", "write_queue_capacity", "log_level",
        "default_mode", "learning_period", "quiet_period", "auto_enforce", "unknown", "fail_open", "program_stats", "pin_root",
        "dns_names", "dns_floor",
        "accept_attribution", "max_kernel_rules", "max_new_rules_per_minute",
        "cluster_endpoints", "node_name", "cluster_ca", "cluster_cert", "cluster_key", "cluster_lease_ttl",
    ]

    /// Reads a YAML config file over the defaults. Unknown keys and bad values
    /// are errors, all of them listed, so a typo is not silently ignored.
    public static func load(yaml text: String, over base: AgentConfiguration = .init()) throws -> AgentConfiguration {
        let node: Any?
        do {
            node = try LimitedYAML.load(text)
        } catch let e as LimitedYAML.Refused {
            throw ConfigurationError(problems: [e.description])
        } catch {
            throw ConfigurationError(problems: ["not valid YAML: \(String(describing: error).split(separator: "\n").first ?? "")"])
        }
        if node == nil { return base }
        guard let dict = node as? [String: Any] else {
            throw ConfigurationError(problems: ["the file must be a mapping of settings (key: value)"])
        }
        var c = base
        var problems: [String] = []
        for key in dict.keys.sorted() where !fileKeys.contains(key) {
            problems.append("unknown setting '\(key)' (known: \(fileKeys.sorted().joined(separator: ", ")))")
        }
        func string(_ key: String) -> String? {
            guard let v = dict[key] else { return nil }
            if let s = v as? String { return s }
            if let i = v as? Int { return String(i) }
            problems.append("\(key): expected text")
            return nil
        }
        func duration(_ key: String) -> Double? {
            guard let s = string(key) else { return nil }
            do {
                let d = try DurationParser.parse(s)
                guard d > 0 else { problems.append("\(key): must be more than 0"); return nil }
                return d
            } catch {
                problems.append("\(key): \(error)")
                return nil
            }
        }
        func int(_ key: String, _ range: ClosedRange<Int>) -> Int? {
            guard let v = dict[key] else { return nil }
            guard let i = v as? Int, range.contains(i) else { problems.append("\(key): expected a whole number in \(range)"); return nil }
            return i
        }
        if let v = string("database") { c.databasePath = v }
        if let v = string("socket") { c.socketPath = v }
        if let v = string("socket_group") { c.socketGroup = v }
        if let v = string("admin_group") { c.adminGroup = v }
        if let v = string("metrics_address") { c.metricsAddress = v }
        if let v = string("cgroup_root") { c.cgroupRoot = v }
        if let v = duration("event_retention") { c.eventRetentionSeconds = v }
        if let v = int("event_retention_count", 1000...1_000_000_000) { c.eventRetentionCount = v }
        if let v = int("individual_events_per_second", 0...10_000_000) { c.individualEventsPerSecond = v }
        if let v = int("max_kernel_rules", AgentConfiguration.kernelRuleRange) { c.maxKernelRules = v }
        if let v = int("max_new_rules_per_minute", 1...1_000_000) { c.maxNewRulesPerMinute = v }
        if let v = duration("aggregate_retention") { c.aggregateRetentionSeconds = v }
        if let v = int("ring_buffer_mib", 1...1024) {
            if v & (v - 1) != 0 { problems.append("ring_buffer_mib: must be a power of two") } else { c.ringBufferMiB = UInt32(v) }
        }
        if let v = int("write_queue_capacity", 1000...100_000_000) { c.writeQueueCapacity = v }
        if let v = string("log_level") { c.logLevel = v }
        if let v = string("default_mode") { c.defaultMode = v }
        if let v = duration("learning_period") { c.learningPeriodSeconds = v }
        if let v = duration("quiet_period") { c.quietPeriodSeconds = v }
        if let v = string("unknown") { c.unknownCgroups = v }
        if let v = string("pin_root") { c.pinRoot = v }
        if let v = string("accept_attribution") { c.acceptAttribution = v }
        if let v = dict["cluster_endpoints"] {
            if let list = v as? [Any] {
                let urls = list.compactMap { $0 as? String }
                if urls.count != list.count { problems.append("cluster_endpoints: expected a list of URLs") } else { c.clusterEndpoints = urls }
            } else if let text = v as? String {
                c.clusterEndpoints = AgentConfiguration.endpointList(text)
            } else {
                problems.append("cluster_endpoints: expected a list of URLs")
            }
        }
        if let v = string("node_name") { c.nodeName = v }
        if let v = string("cluster_ca") { c.clusterCA = v }
        if let v = string("cluster_cert") { c.clusterCert = v }
        if let v = string("cluster_key") { c.clusterKey = v }
        if let v = duration("cluster_lease_ttl") { c.clusterLeaseTTLSeconds = v }
        if let v = duration("dns_floor") { c.dnsFloorSeconds = v }
        for key in ["auto_enforce", "fail_open", "program_stats", "dns_names"] where dict[key] != nil {
            guard let b = dict[key] as? Bool else { problems.append("\(key): expected true or false"); continue }
            switch key {
            case "auto_enforce": c.autoEnforce = b
            case "fail_open": c.failOpen = b
            case "dns_names": c.dnsNames = b
            default: c.programStats = b
            }
        }
        problems += c.validate()
        if !problems.isEmpty { throw ConfigurationError(problems: problems) }
        return c
    }

    /// Problems with the values themselves, whatever their source.
    public func validate() -> [String] {
        var problems: [String] = []
        if !databasePath.hasPrefix("/") { problems.append("database: '\(databasePath)' must be an absolute path") }
        if !socketPath.hasPrefix("/") { problems.append("socket: '\(socketPath)' must be an absolute path") }
        if socketPath.utf8.count > 107 { problems.append("socket: path is longer than a Unix socket allows (107 bytes)") }
        if let m = metricsAddress, MetricsAddress(m) == nil {
            problems.append("metrics_address: '\(m)' is not HOST:PORT (e.g. 127.0.0.1:9090)")
        }
        if !["trace", "debug", "info", "notice", "warning", "error", "critical"].contains(logLevel) {
            problems.append("log_level: '\(logLevel)' is not one of trace, debug, info, notice, warning, error, critical")
        }
        if cgroupRoot.split(separator: "/").contains("..") { problems.append("cgroup_root: '..' is not allowed") }
        if Mode(rawValue: defaultMode) == nil { problems.append("default_mode: '\(defaultMode)' is not one of learn, monitor, enforce") }
        if !["allow", "deny"].contains(unknownCgroups) { problems.append("unknown: '\(unknownCgroups)' must be allow or deny") }
        if !pinRoot.hasPrefix("/") { problems.append("pin_root: must be an absolute path") }
        // Also checked where they are parsed; here for values set in code.
        for (key, seconds) in [("event_retention", eventRetentionSeconds), ("aggregate_retention", aggregateRetentionSeconds),
                               ("learning_period", learningPeriodSeconds ?? 1), ("quiet_period", quietPeriodSeconds),
                               ("api_idle_timeout", apiIdleTimeoutSeconds), ("dns_floor", dnsFloorSeconds)]
        where !(seconds > 0 && seconds <= DurationParser.maximumSeconds) {
            problems.append("\(key): must be more than 0 and at most \(DurationParser.maximumDescription)")
        }
        if !["caller", "listener"].contains(acceptAttribution) {
            problems.append("accept_attribution: '\(acceptAttribution)' must be caller or listener")
        }
        problems += validateCluster()
        return problems
    }

    /// "a,b , c" -> ["a", "b", "c"].
    public static func endpointList(_ text: String) -> [String] {
        text.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
    }

    private func validateCluster() -> [String] {
        var problems: [String] = []
        let tlsFiles = [("cluster_ca", clusterCA), ("cluster_cert", clusterCert), ("cluster_key", clusterKey)]
        guard !clusterEndpoints.isEmpty else {
            for (k, v) in tlsFiles where v != nil { problems.append("\(k): needs cluster_endpoints") }
            return problems
        }
        if clusterEndpoints.count > 32 { problems.append("cluster_endpoints: at most 32") }
        for e in clusterEndpoints {
            guard let u = URLComponents(string: e), let scheme = u.scheme, ["http", "https"].contains(scheme),
                  let host = u.host, !host.isEmpty, u.port != nil, u.path.isEmpty || u.path == "/", u.query == nil, u.user == nil else {
                problems.append("cluster_endpoints: '\(e)' is not an etcd client URL like http://10.0.0.5:2379 (scheme http or https, host and port, nothing else)")
                continue
            }
        }
        let https = clusterEndpoints.contains { $0.hasPrefix("https:") }
        for (k, v) in tlsFiles {
            guard let v else { continue }
            if !v.hasPrefix("/") { problems.append("\(k): '\(v)' must be an absolute path") }
            if !https { problems.append("\(k): only used with https endpoints") }
        }
        if (clusterCert == nil) != (clusterKey == nil) { problems.append("cluster_cert and cluster_key go together") }
        if !(clusterLeaseTTLSeconds >= 2 && clusterLeaseTTLSeconds <= 3600) { problems.append("cluster_lease_ttl: must be from 2s to 1h") }
        let node = effectiveNodeName
        if node.isEmpty || node.utf8.count > 253 || node.contains("/") || node.unicodeScalars.contains(where: { $0.value < 0x21 || $0.value == 0x7f }) {
            problems.append("node_name: '\(node)' must be 1 to 253 printable characters without '/' or spaces")
        }
        return problems
    }
}

public struct ConfigurationError: Error, CustomStringConvertible {
    public let problems: [String]
    public init(problems: [String]) { self.problems = problems }
    public var description: String {
        problems.count == 1 ? "configuration: \(problems[0])" : "configuration: \(problems.count) problems: " + problems.joined(separator: "; ")
    }
}

/// "127.0.0.1:9090", "[::1]:9090", ":9090" (all addresses).
public struct MetricsAddress: Sendable, Equatable {
    public let host: String
    public let port: Int

    public init?(_ text: String) {
        guard let colon = text.lastIndex(of: ":") else { return nil }
        var host = String(text[..<colon])
        guard let port = Int(text[text.index(after: colon)...]), (1...65535).contains(port) else { return nil }
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        if host.isEmpty { host = "0.0.0.0" }
        guard IPAddress(host) != nil || host == "localhost" else { return nil }
        self.host = host
        self.port = port
    }
}
