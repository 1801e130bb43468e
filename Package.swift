// swift-tools-version:6.0
//
// ConnGuard, by layer (see README.md, "Layout"):
//   bpf/                 kernel side: BPF C, compiled by scripts/build-bpf into
//   CConnGuard           the shared kernel/user types (connguard.h) and the embedded objects
//   CLibBPF, CBPFKit     libbpf (system library) and a few C shims around it
//   BPFKit               the libbpf wrapper: objects, programs, links, maps, ring buffers, typed errors
//   ConnGuardCore        domain logic, no root needed: events, addresses, filters, output
//   ConnGuardTracer      loads the embedded programs and turns ring-buffer records into events
//   ConnGuardEnforcer    enforcement in the kernel: pinned cgroup programs, policy and baseline maps
//   connguard            the command line
import PackageDescription

let package = Package(
    name: "connguard",
    products: [
        .executable(name: "connguard", targets: ["connguard"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
    ],
    targets: [
        .systemLibrary(
            name: "CLibBPF",
            pkgConfig: "libbpf",
            providers: [.apt(["libbpf-dev", "libelf-dev", "zlib1g-dev"])]
        ),
        .target(name: "CBPFKit", dependencies: ["CLibBPF"]),
        .target(name: "CConnGuard"),
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
            name: "ConnGuardEnforcer",
            dependencies: ["BPFKit", "CBPFKit", "CConnGuard", "ConnGuardCore"]
        ),
        .executableTarget(
            name: "connguard",
            dependencies: [
                "ConnGuardCore", "ConnGuardTracer", "ConnGuardEnforcer", "BPFKit",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .testTarget(
            name: "ConnGuardCoreTests",
            dependencies: ["ConnGuardCore", "CConnGuard"]
        ),
        .testTarget(
            name: "ConnGuardTracerTests",
            dependencies: ["ConnGuardTracer", "ConnGuardCore", "BPFKit", "CBPFKit", "CConnGuard", "CLibBPF"]
        ),
        .executableTarget(
            name: "connguard-enforce-bench",
            dependencies: ["ConnGuardEnforcer", "ConnGuardTracer", "ConnGuardCore"],
            path: "bench/EnforceBench"
        ),
        .testTarget(
            name: "ConnGuardEnforcerTests",
            dependencies: ["ConnGuardEnforcer", "ConnGuardTracer", "ConnGuardCore", "BPFKit", "CBPFKit", "CConnGuard"]
        ),
    ]
)
