@testable import ConnGuardAgent
import XCTest

/// The YAML file's settings over the embedded defaults.
final class ConfigurationTests: XCTestCase {
    func testDefaultsNeedNoFile() throws {
        let c = try AgentConfiguration.load(yaml: "")
        XCTAssertEqual(c, AgentConfiguration())
        XCTAssertEqual(c.individualEventsPerSecond, 2_000)
        XCTAssertEqual(c.validate(), [])
    }

    func testSettingsOverrideDefaults() throws {
        let c = try AgentConfiguration.load(yaml: """
            database: /tmp/c.db
            individual_events_per_second: 0
            event_retention: 2h
            ring_buffer_mib: 64
            program_stats: true
            """)
        XCTAssertTrue(c.programStats)
        XCTAssertFalse(AgentConfiguration().programStats, "the kernel's timing of every run is opt-in")
        XCTAssertThrowsError(try AgentConfiguration.load(yaml: "program_stats: sometimes"))
        XCTAssertEqual(c.databasePath, "/tmp/c.db")
        XCTAssertEqual(c.individualEventsPerSecond, 0)
        XCTAssertEqual(c.eventRetentionSeconds, 7200)
        XCTAssertEqual(c.ringBufferMiB, 64)
    }

    func testEveryProblemIsListedAndNothingIsHalfApplied() {
        XCTAssertThrowsError(try AgentConfiguration.load(yaml: """
            individual_events_per_second: -1
            ring_buffer_mib: 3
            databse: /tmp/x
            """)) { error in
            let text = String(describing: error)
            for word in ["individual_events_per_second", "ring_buffer_mib", "databse"] {
                XCTAssertTrue(text.contains(word), "\(word) missing from: \(text)")
            }
        }
        XCTAssertThrowsError(try AgentConfiguration.load(yaml: "- a list\n- not a mapping"))
        XCTAssertThrowsError(try AgentConfiguration.load(yaml: "individual_events_per_second: many"))
    }

    func testClusterSettings() throws {
        let c = try AgentConfiguration.load(yaml: """
            cluster_endpoints: [https://10.0.0.5:2379, "https://etcd-1.example:2379"]
            node_name: worker-3
            cluster_ca: /etc/connguard/etcd/ca.crt
            cluster_cert: /etc/connguard/etcd/tls.crt
            cluster_key: /etc/connguard/etcd/tls.key
            cluster_lease_ttl: 30s
            """)
        XCTAssertEqual(c.clusterEndpoints, ["https://10.0.0.5:2379", "https://etcd-1.example:2379"])
        XCTAssertEqual(c.effectiveNodeName, "worker-3")
        XCTAssertEqual(c.clusterLeaseTTLSeconds, 30)
        XCTAssertEqual(try AgentConfiguration.load(yaml: "cluster_endpoints: http://a:1, http://b:2").clusterEndpoints, ["http://a:1", "http://b:2"])
        // Bad ones: every problem listed, one line each.
        for (yaml, word) in [("cluster_endpoints: [etcd:2379]", "not an etcd client URL"),
                             ("cluster_endpoints: [http://a:1/v3?x=1]", "not an etcd client URL"),
                             ("cluster_endpoints: [http://a:1]\ncluster_cert: /c", "go together"),
                             ("cluster_endpoints: [http://a:1]\ncluster_ca: /c", "only used with https"),
                             ("cluster_ca: /c", "needs cluster_endpoints"),
                             ("cluster_endpoints: [http://a:1]\nnode_name: a/b", "node_name"),
                             ("cluster_endpoints: [http://a:1]\ncluster_lease_ttl: 1s", "cluster_lease_ttl"),
                             ("cluster_endpoints: {a: 1}", "expected a list")] {
            XCTAssertThrowsError(try AgentConfiguration.load(yaml: yaml), yaml) { error in
                XCTAssertTrue(String(describing: error).contains(word), "\(yaml): \(error)")
            }
        }
    }

    /// The DaemonSet's ConfigMap is a valid config as shipped (alone) and
    /// with its cluster lines uncommented.
    func testDaemonSetConfigLoads() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let manifest = try String(contentsOf: root.appendingPathComponent("deploy/kubernetes/daemonset.yaml"), encoding: .utf8)
        let lines = manifest.split(separator: "\n", omittingEmptySubsequences: false)
        let start = try XCTUnwrap(lines.firstIndex { $0.contains("config.yaml: |") })
        let body = lines[(start + 1)...].prefix { $0.hasPrefix("    ") || $0.isEmpty }.map { String($0.dropFirst(4)) }
        XCTAssertEqual(try AgentConfiguration.load(yaml: body.joined(separator: "\n")), AgentConfiguration())
        let enabled = body.map { $0.hasPrefix("# cluster") || $0.hasPrefix("#   - ") ? String($0.dropFirst(2)) : $0 }.joined(separator: "\n")
        let c = try AgentConfiguration.load(yaml: enabled)
        XCTAssertEqual(c.clusterEndpoints.count, 3)
        XCTAssertEqual(c.clusterKey, "/etc/connguard/etcd/tls.key")
    }
}
