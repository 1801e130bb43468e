// swift-tools-version:6.0
//
// ConnGuard, by layer (see README.md, "Layout"):
//   bpf/                 kernel side: BPF C, compiled by scripts/build-bpf into
//   CConnGuard           the shared kernel/user types (connguard.h) and the embedded objects
//   CLibBPF, CBPFKit     libbpf (system library) and a few C shims around it
//   BPFKit               the libbpf wrapper: objects, programs, links, maps, ring buffers, typed errors
//   ConnGuardCore        domain logic, no root needed: events, addresses, identity rules, baselines, output
//   ConnGuardTracer      loads the embedded trace programs and turns ring-buffer records into events
//   ConnGuardIdentity    cgroup id -> container, pod and workload, from the runtimes' files on the node
//   ConnGuardStore       the embedded SQLite database (GRDB, WAL): recent events, aggregates
//   ConnGuardAgentInput  what reaches the agent from outside: config and baseline files, API queries
//   ConnGuardAgent       the node agent: event pipeline, local API, metrics, lifecycle
//   ConnGuardEnforcer    enforcement in the kernel: pinned cgroup programs, policy and baseline maps
//   ConnGuardCluster     the cluster store (addresses, baselines, modes shared by nodes): etcd v3 backend
//   connguard            the command line
//   Fuzz/                libFuzzer targets, declared only with CONNGUARD_FUZZ=1 (scripts/fuzz)
import Foundation
import PackageDescription

let package = Package(
    name: "connguard",
    products: [
        .executable(name: "connguard", targets: ["connguard"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.5.0"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.80.0"),
        .package(url: "https://github.com/groue/GRDB.swift", from: "7.0.0"),
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.0.0"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.0.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.0.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.6.0"),
        // The cluster store only: etcd's JSON gateway over HTTP(S); NIOSSL for its TLS options.
        .package(url: "https://github.com/swift-server/async-http-client", from: "1.37.0"),
        .package(url: "https://github.com/apple/swift-nio-ssl", from: "2.30.0"),
    ],
    targets: [
        .systemLibrary(
            name: "CLibBPF",
            pkgConfig: "libbpf",
            providers: [.apt(["libbpf-dev", "libelf-dev", "zlib1g-dev"])]
        ),
        .target(name: "CBPFKit", dependencies: ["CLibBPF"]),
        .target(name: "CConnGuard"),
        .target(name: "CConnGuardIdentity"),
        .target(
            name: "BPFKit",
            dependencies: ["CLibBPF", "CBPFKit"]
        ),
        .target(
            name: "ConnGuardCore",
            dependencies: ["CConnGuard"]
        ),
        .target(
            name: "ConnGuardTracer",
            dependencies: [
                "BPFKit", "CConnGuard", "ConnGuardCore",
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .target(
            name: "ConnGuardIdentity",
            dependencies: [
                "ConnGuardCore", "CConnGuardIdentity",
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .target(
            name: "ConnGuardStore",
            dependencies: [
                "ConnGuardCore",
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "GRDBSQLite", package: "GRDB.swift"),
            ]
        ),
        .target(
            name: "ConnGuardAgentInput",
            dependencies: ["ConnGuardCore", .product(name: "Yams", package: "Yams")]
        ),
        .target(
            name: "ConnGuardAgent",
            dependencies: [
                "BPFKit", "ConnGuardCore", "ConnGuardAgentInput", "ConnGuardTracer", "ConnGuardIdentity", "ConnGuardStore", "ConnGuardEnforcer", "ConnGuardCluster",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Yams", package: "Yams"),
            ]
        ),
        .target(
            name: "ConnGuardEnforcer",
            dependencies: ["BPFKit", "CBPFKit", "CConnGuard", "ConnGuardCore"]
        ),
        .target(
            name: "ConnGuardCluster",
            dependencies: [
                "ConnGuardCore",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
            ]
        ),
        .executableTarget(
            name: "connguard",
            dependencies: [
                "BPFKit", "ConnGuardCore", "ConnGuardTracer", "ConnGuardIdentity", "ConnGuardAgent", "ConnGuardEnforcer",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ]
        ),
        // Helpers of the store's tests and benchmark; not part of the connguard product.
        .executableTarget(
            name: "connguard-store-crashtest",
            dependencies: ["ConnGuardStore", "ConnGuardCore"]
        ),
        .executableTarget(
            name: "connguard-bench-store",
            dependencies: ["ConnGuardStore", "ConnGuardCore", .product(name: "GRDB", package: "GRDB.swift")]
        ),
        // scripts/bench-cluster's load generator: 1,000 simulated nodes on a real etcd, and the
        // latency from an etcd write to the watching agent's pinned peer_addresses map.
        .executableTarget(
            name: "connguard-bench-cluster",
            dependencies: [
                "ConnGuardCluster", "ConnGuardCore", "BPFKit",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
            ]
        ),
        // Shared by the privileged test targets: root check, test cgroups, sockets, child processes.
        .target(
            name: "ConnGuardTestSupport",
            dependencies: ["ConnGuardCore", "ConnGuardTracer", "BPFKit", "ConnGuardCluster"],
            path: "Tests/ConnGuardTestSupport"
        ),
        .testTarget(
            name: "ConnGuardCoreTests",
            dependencies: ["ConnGuardCore", "CConnGuard"]
        ),
        .testTarget(
            name: "ConnGuardTracerTests",
            dependencies: ["ConnGuardTracer", "ConnGuardCore", "ConnGuardTestSupport", "BPFKit", "CBPFKit", "CConnGuard", "CLibBPF"]
        ),
        .testTarget(
            name: "ConnGuardIdentityTests",
            dependencies: ["ConnGuardIdentity", "ConnGuardTracer", "ConnGuardCore", "ConnGuardTestSupport", "connguard"]
        ),
        .testTarget(
            name: "ConnGuardStoreTests",
            dependencies: [
                "ConnGuardStore", "ConnGuardCore", "connguard-store-crashtest",
                .product(name: "GRDB", package: "GRDB.swift"),
            ]
        ),
        .testTarget(
            name: "ConnGuardAgentInputTests",
            dependencies: ["ConnGuardAgentInput", "ConnGuardCore"]
        ),
        .testTarget(
            name: "ConnGuardAgentTests",
            dependencies: ["ConnGuardAgent", "ConnGuardCore", "ConnGuardStore", "ConnGuardTestSupport", "connguard"]
        ),
        .executableTarget(
            name: "connguard-enforce-bench",
            dependencies: ["ConnGuardEnforcer", "ConnGuardTracer", "ConnGuardCore"],
            path: "bench/EnforceBench"
        ),
        // Against a real 3-member etcd on loopback (etcd-server, etcd-client).
        .testTarget(
            name: "ConnGuardClusterTests",
            dependencies: ["ConnGuardCluster", "ConnGuardCore", "ConnGuardTestSupport"]
        ),
        .testTarget(
            name: "ConnGuardEnforcerTests",
            dependencies: ["ConnGuardEnforcer", "ConnGuardTracer", "ConnGuardCore", "ConnGuardTestSupport", "BPFKit", "CBPFKit", "CConnGuard"]
        ),
    ]
)

// The fuzz targets (scripts/fuzz): built with -sanitize=fuzzer, which gives
// them libFuzzer's main, so they cannot be part of an ordinary build; declared
// only when CONNGUARD_FUZZ=1, so `swift build` and `swift test` never see them.
// They need only ConnGuardCore and ConnGuardAgentInput (and Yams).
if ProcessInfo.processInfo.environment["CONNGUARD_FUZZ"] == "1" {
    package.targets += [
        .target(name: "CConnGuardFuzz", path: "Fuzz/Sources/CConnGuardFuzz"),
        .executableTarget(
            name: "connguard-fuzz",
            dependencies: ["ConnGuardCore", "ConnGuardAgentInput", "CConnGuardFuzz"],
            path: "Fuzz/Sources/connguard-fuzz",
            swiftSettings: [.unsafeFlags(["-parse-as-library"])]
        ),
    ]
}
