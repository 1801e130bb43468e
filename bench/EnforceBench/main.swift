// connguard-enforce-bench: measures what enforcement costs (run by scripts/bench-enforce).
//
//  1. Storm: a loopback connect/accept storm against a server in an enforced
//     cgroup whose baseline (10,000 rules) allows the storm's client,
//     interleaved (ABBA) with runs with no BPF program attached at all.
//  2. Cost of inserting a policy entry and a rule from user space.
//  3. The cost of one decision in the kernel (BPF_PROG_TEST_RUN).
//  4. Arming latency: cgroup created -> its policy in force, through the
//     enforcer's own cgroup_mkdir watcher, and through the tracer's events.
//
// Everything runs in a cgroup subtree and a pin root of its own, removed at
// the end; the script also cleans up if this process dies.
import ConnGuardCore
import ConnGuardEnforcer
import ConnGuardTracer
import Foundation
import Glibc
import Synchronization

struct Options {
    var storm = ""
    // Many short runs in random order: on a shared machine the load drifts
    // over seconds, and a median of per-round ratios sees through it best.
    var rounds = 30
    var seconds = 0.5
    var clientThreads = 2
    var serverThreads = 2
    var rules = 10_000
    var armings = 100
    var both = true
}

func parseOptions() -> Options {
    var o = Options()
    var args = CommandLine.arguments.dropFirst()
    while let a = args.popFirst() {
        func value() -> String {
            guard let v = args.popFirst() else { fatalError("\(a) needs a value") }
            return v
        }
        switch a {
        case "--storm": o.storm = value()
        case "--rounds": o.rounds = Int(value())!
        case "--seconds": o.seconds = Double(value())!
        case "--client-threads": o.clientThreads = Int(value())!
        case "--server-threads": o.serverThreads = Int(value())!
        case "--rules": o.rules = Int(value())!
        case "--armings": o.armings = Int(value())!
        case "--inbound-only": o.both = false
        default: fatalError("unknown option \(a)")
        }
    }
    precondition(!o.storm.isEmpty, "--storm PATH is required")
    return o
}

func fail(_ message: String) -> Never {
    FileHandle.standardError.write(Data("bench-enforce: \(message)\n".utf8))
    exit(1)
}

func cgroupID(_ path: String) -> UInt64 {
    var st = stat()
    return stat(path, &st) == 0 ? UInt64(st.st_ino) : 0
}

func median(_ xs: [Double]) -> Double {
    let s = xs.sorted()
    return s.isEmpty ? 0 : (s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2)
}

func microseconds(_ ns: Int64) -> String { String(format: "%.1f µs", Double(ns) / 1000) }

/// Runs `argv`, in `cgroup` if given; returns the process and its stdout.
func spawn(in cgroup: String?, _ argv: [String]) throws -> (Process, Pipe) {
    let p = Process()
    let out = Pipe()
    if let cgroup {
        p.executableURL = URL(fileURLWithPath: "/bin/sh")
        p.arguments = ["-c", "echo $$ > \"$0/cgroup.procs\" && exec \"$@\"", cgroup] + argv
    } else {
        p.executableURL = URL(fileURLWithPath: argv[0])
        p.arguments = Array(argv.dropFirst())
    }
    p.standardOutput = out
    try p.run()
    return (p, out)
}

func readLine(_ pipe: Pipe) -> String {
    var line: [UInt8] = []
    var b: UInt8 = 0
    while read(pipe.fileHandleForReading.fileDescriptor, &b, 1) == 1, b != UInt8(ascii: "\n") { line.append(b) }
    return String(decoding: line, as: UTF8.self)
}

struct StormResult {
    var rate: Double
    var connections: Double
    var errors: Int
    var firstErrno: Int32
    /// CPU time of client and server per connection, µs.
    var cpuMicrosecondsPerConnection: Double
}

/// user + system time of a process so far, seconds (/proc/PID/stat fields 14, 15).
func cpuSeconds(_ pid: Int32) -> Double {
    guard let text = try? readFile("/proc/\(pid)/stat"), let close = text.lastIndex(of: ")") else { return 0 }
    let f = text[text.index(after: close)...].split(separator: " ")
    return ((Double(f[11]) ?? 0) + (Double(f[12]) ?? 0)) / Double(sysconf(Int32(_SC_CLK_TCK)))
}

func storm(_ o: Options, port: UInt16, clientCgroup: String?, serverPID: Int32) throws -> StormResult {
    let serverCPU = cpuSeconds(serverPID)
    let (p, out) = try spawn(in: clientCgroup, [o.storm, "client", "127.0.0.1", String(port), String(o.clientThreads), String(o.seconds)])
    let line = readLine(out)
    p.waitUntilExit()
    let serverUsed = cpuSeconds(serverPID) - serverCPU
    // "connections N errors E seconds S rate R first_errno X cpu_seconds C"
    let f = line.split(separator: " ").map(String.init)
    guard f.count >= 12, let rate = Double(f[7]), let n = Double(f[1]), let cpu = Double(f[11]) else { fail("storm client said: \(line)") }
    return StormResult(rate: rate, connections: n, errors: Int(f[3]) ?? -1, firstErrno: Int32(f[9]) ?? 0,
                       cpuMicrosecondsPerConnection: n > 0 ? (cpu + serverUsed) * 1e6 / n : 0)
}

// MARK: - Setup
// A single-threaded tool (the tracer's thread touches none of the globals
// below), hence nonisolated(unsafe).

let o = parseOptions()
guard geteuid() == 0 else { fail("run as root") }
guard let mount = CgroupMount.find() else { fail("no cgroup v2 mount") }
let tag = "\(getpid())"
let root = "\(mount)/connguard-enforce-bench-\(tag)"
let serverCgroup = root + "/server"
let clientCgroup = root + "/client"
let pinRoot = "/sys/fs/bpf/connguard-bench-\(tag)"
for d in [root, serverCgroup, clientCgroup] where mkdir(d, 0o755) != 0 { fail("mkdir \(d): \(String(cString: strerror(errno)))") }
nonisolated(unsafe) var children: [Process] = []

func cleanup() {
    _ = try? Enforcer.removeAll(pinRoot: pinRoot, sweepUnpinnedLinks: false)
    for p in children where p.isRunning { kill(p.processIdentifier, SIGKILL); p.waitUntilExit() }
    let dirs = ((try? FileManager.default.subpathsOfDirectory(atPath: root)) ?? [])
        .map { root + "/" + $0 }.filter { !$0.hasSuffix("cgroup.procs") && cgroupID($0) != 0 }
    for d in (dirs.filter { FileManager.default.fileExists(atPath: $0 + "/cgroup.procs") }.sorted { $0.count > $1.count }) + [root] {
        for _ in 0..<100 { if rmdir(d) == 0 || errno == ENOENT { break }; usleep(20_000) }
    }
}
atexit { cleanup() }

let serverWorkload: UInt32 = 2
let clientWorkload: UInt32 = 1
let (server, serverOut) = try spawn(in: serverCgroup, [o.storm, "server", "127.0.0.1", String(o.serverThreads)])
children.append(server)
guard let serverPort = UInt16(readLine(serverOut)) else { fail("storm server did not start") }
let port = serverPort

/// The server's baseline: the storm's client (127.0.0.1) plus o.rules - 1
/// others, many on the same port, so the trie is as deep as a real one.
func baseline() -> [EnforcementRule] {
    var rules = [EnforcementRule(workloadID: serverWorkload, direction: .accept, port: port, peer: .cidr(CIDR("127.0.0.1/32")!))]
    var i = 0
    while rules.count < o.rules {
        let peer: String
        let p: UInt16
        switch i % 10 {
        case 0..<7: peer = "10.\((i >> 16) & 255).\((i >> 8) & 255).\(i & 255)/32"; p = port
        case 7, 8: peer = "172.16.\((i >> 8) & 255).0/24"; p = UInt16(1024 + i % 20000)
        default: peer = "fd00::\(String(i, radix: 16))/128"; p = port
        }
        rules.append(EnforcementRule(workloadID: serverWorkload, direction: .accept, port: p, peer: .cidr(CIDR(peer)!)))
        i += 1
    }
    return rules
}
let rules = baseline()
let clientRule = EnforcementRule(workloadID: clientWorkload, direction: .connect, port: port, peer: .cidr(CIDR("127.0.0.1/32")!))

struct EnforcedRun {
    var enforcer: Enforcer
    var reader: DenialReader
    var ruleInsertNanoseconds: Int64
}

func openEnforced(both: Bool) throws -> EnforcedRun {
    let e = try Enforcer.open(cgroupPath: root, pinRoot: pinRoot)
    try e.setPolicy(cgroupID: cgroupID(serverCgroup), workloadID: serverWorkload, mode: .enforce)
    let t0 = BootClock.now(CLOCK_MONOTONIC)
    for r in rules { try e.add(r) }
    let elapsed = BootClock.now(CLOCK_MONOTONIC) - t0
    if both {
        try e.setPolicy(cgroupID: cgroupID(clientCgroup), workloadID: clientWorkload, mode: .enforce)
        try e.add(clientRule)
    }
    return EnforcedRun(enforcer: e, reader: try e.denialReader(), ruleInsertNanoseconds: elapsed / Int64(rules.count))
}

// MARK: - 1. Storm

enum Run: String, CaseIterable {
    case untraced = "untraced"
    /// A second untraced run: its ratio to the first shows the machine's noise.
    case control = "untraced again (noise control)"
    case inbound = "enforced (server)"
    case both = "enforced (server and client)"
}
let runs: [Run] = [.untraced, .control, .inbound] + (o.both ? [.both] : [])
print("storm: \(o.rounds) rounds, each of \(runs.count) runs of \(o.seconds) s in random order; \(o.clientThreads) client and \(o.serverThreads) server threads, loopback 127.0.0.1:\(port)")
print("       server workload in enforce mode with \(rules.count) rules; untraced runs have no BPF program attached")
nonisolated(unsafe) var results: [Run: [StormResult]] = [:]
nonisolated(unsafe) var ratios: [Run: [Double]] = [:]
nonisolated(unsafe) var cpuRatios: [Run: [Double]] = [:]
nonisolated(unsafe) var denialsSeen = 0
nonisolated(unsafe) var errorsSeen = 0
nonisolated(unsafe) var insertCosts: [Int64] = []
nonisolated(unsafe) var acceptAllowed: UInt64 = 0

func run(_ kind: Run) throws -> StormResult {
    guard kind != .untraced && kind != .control else {
        let r = try storm(o, port: port, clientCgroup: nil, serverPID: server.processIdentifier)
        errorsSeen += r.errors
        return r
    }
    let enforced = try openEnforced(both: kind == .both)
    insertCosts.append(enforced.ruleInsertNanoseconds)
    let r = try storm(o, port: port, clientCgroup: kind == .both ? clientCgroup : nil, serverPID: server.processIdentifier)
    errorsSeen += r.errors
    denialsSeen += try enforced.reader.poll(timeoutMilliseconds: 100).count
    let counts = try enforced.enforcer.decisionCounts()
    denialsSeen += Int(counts.accept.denied + counts.connect.denied)
    acceptAllowed += counts.accept.allowed
    if r.errors > 0 { print("       errors: \(r.errors), first errno \(r.firstErrno) (\(ErrnoName.name(r.firstErrno)))") }
    try enforced.enforcer.close(failOpen: true)
    return r
}

// Warm-up (page cache, ephemeral ports, CPU frequency).
_ = try storm(Options(storm: o.storm, seconds: 1, clientThreads: o.clientThreads), port: port, clientCgroup: nil, serverPID: server.processIdentifier)
for round in 1...o.rounds {
    var this: [Run: StormResult] = [:]
    for kind in runs.shuffled() { this[kind] = try run(kind) }
    let base = this[.untraced]!
    var line = "round \(round):"
    for kind in runs {
        let r = this[kind]!
        results[kind, default: []].append(r)
        line += String(format: " %@ %.0f conn/s %.1f µs CPU/conn", kind.rawValue, r.rate, r.cpuMicrosecondsPerConnection)
        if kind != .untraced {
            ratios[kind, default: []].append(r.rate / base.rate)
            cpuRatios[kind, default: []].append(base.cpuMicrosecondsPerConnection / r.cpuMicrosecondsPerConnection)
            line += String(format: " (ratio %.3f)", r.rate / base.rate)
        }
        line += ";"
    }
    print(line)
}
let baseRates = results[.untraced]!.map(\.rate)
for kind in runs where kind != .untraced {
    let rate = median(ratios[kind]!)
    let sorted = ratios[kind]!.sorted()
    let spread = String(format: "middle half of ratios %.3f-%.3f", sorted[sorted.count / 4], sorted[(sorted.count * 3) / 4])
    let verdict = kind == .control ? "(1.000 on a quiet machine)" : (rate >= 0.93 ? "target >= 0.93 PASS" : "target >= 0.93 FAIL")
    print(String(format: "storm: %@: median %.0f conn/s vs untraced %.0f; rate ratio %.3f (median of per-round ratios; %@), by CPU per connection %.3f; %@",
                 kind.rawValue, median(results[kind]!.map(\.rate)), median(baseRates), rate, spread, median(cpuRatios[kind]!), verdict))
}
let ratio = median(ratios[.inbound]!)
print("storm: denials during allowed traffic: \(denialsSeen) (must be 0); connect errors: \(errorsSeen); accepts allowed by rule: \(acceptAllowed)")

// MARK: - 2. Insert cost

do {
    let e = try Enforcer.open(cgroupPath: root, pinRoot: pinRoot)
    let n = 1000
    var t0 = BootClock.now(CLOCK_MONOTONIC)
    for i in 0..<n { try e.setPolicy(cgroupID: 1_000_000_000 + UInt64(i), workloadID: UInt32(i), mode: .enforce) }
    let policyCost = (BootClock.now(CLOCK_MONOTONIC) - t0) / Int64(n)
    t0 = BootClock.now(CLOCK_MONOTONIC)
    for r in rules { try e.add(r) }
    let ruleCost = (BootClock.now(CLOCK_MONOTONIC) - t0) / Int64(rules.count)
    t0 = BootClock.now(CLOCK_MONOTONIC)
    let replaced = try e.replaceRules(workloadID: serverWorkload, with: rules.dropLast(100))
    let replaceTime = BootClock.now(CLOCK_MONOTONIC) - t0
    print("insert cost: policy entry \(microseconds(policyCost)), rule \(microseconds(ruleCost)) into a trie of \(rules.count) (while storming, median \(microseconds(insertCosts.sorted()[insertCosts.count / 2])))")
    print(String(format: "insert cost: replaceRules of %d rules (read back, -%d) took %.1f ms", rules.count, replaced.removed, Double(replaceTime) / 1e6))
    try e.close(failOpen: true)
}

// MARK: - 3. Cost per decision, in the kernel, without the machine's noise

/// An Ethernet + IPv4 + TCP frame from 127.0.0.1:40000 (or `source`) to 127.0.0.1:port.
func frame(source: [UInt8] = [127, 0, 0, 1], flags: UInt8) -> [UInt8] {
    var f: [UInt8] = Array(repeating: 0, count: 12) + [0x08, 0x00]
    f += [0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0] + source + [127, 0, 0, 1]
    f += [0x9c, 0x40, UInt8(port >> 8), UInt8(port & 0xff), 0, 0, 0, 1, 0, 0, 0, 0, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]
    return f
}

do {
    // BPF_PROG_TEST_RUN runs the program on a made-up packet whose socket is
    // in this process's cgroup: give that cgroup the server's policy (it is
    // outside the watched subtree, so no real traffic of ours consults it).
    let e = try Enforcer.open(cgroupPath: root, pinRoot: pinRoot)
    let own = (try? readFile("/proc/self/cgroup")).flatMap(ProcNetTCP.cgroupV2Path) ?? "/"
    let ownID = cgroupID(mount + (own == "/" ? "" : own))
    try e.setPolicy(cgroupID: ownID, workloadID: serverWorkload, mode: .enforce)
    for r in rules { try e.add(r) }
    let ingress = e.programs.first { $0.name == "cg_enf_ingress" }!
    let repeatCount: Int32 = 200_000
    func cost(_ label: String, _ data: [UInt8], expect: UInt32) throws {
        var runs: [UInt32] = []
        for _ in 0..<5 {
            let r = try ingress.testRun(data: data, repeat: repeatCount)
            guard r.result == expect else { fail("\(label): verdict \(r.result), expected \(expect)") }
            runs.append(r.nanosecondsPerRun)
        }
        print("decision cost: \(label): \(runs.sorted()[2]) ns per packet (median of 5 × \(repeatCount) runs)")
    }
    try cost("ingress, SYN allowed by the 127.0.0.1/32 rule among \(rules.count)", frame(flags: 0x02), expect: 1)
    try cost("ingress, ACK (not a SYN: parsed, let through)", frame(flags: 0x10), expect: 1)
    try e.setPolicy(cgroupID: ownID, workloadID: serverWorkload, mode: .monitor)
    try cost("ingress, SYN in monitor mode", frame(flags: 0x02), expect: 1)
    try e.close(failOpen: true)
} catch {
    print("decision cost: not measured: \(error)")
}

// MARK: - 4. Arming latency

/// A thread that arms every new cgroup it hears of, until stopped.
final class Armer: @unchecked Sendable {
    let stop = Mutex(false)
    private let done = DispatchSemaphore(value: 0)

    init(_ body: @escaping @Sendable (_ shouldStop: () -> Bool) throws -> Void) {
        Thread { [self] in
            do { try body { self.stop.withLock { $0 } } } catch { FileHandle.standardError.write(Data("armer: \(error)\n".utf8)) }
            done.signal()
        }.start()
    }

    func finish() {
        stop.withLock { $0 = true }
        done.wait()
    }
}

/// Makes o.armings cgroups in the subtree, one at a time, and waits for each
/// to be armed. Returns mkdir() called -> policy visible to a lookup.
func makeCgroupsAndWait(_ enforcer: Enforcer, prefix: String) throws -> LatencySummary? {
    var endToEnd: [Int64] = []
    for i in 0..<o.armings {
        let path = root + "/\(prefix)\(i)"
        let t0 = BootClock.now(CLOCK_REALTIME)
        guard mkdir(path, 0o755) == 0 else { fail("mkdir \(path)") }
        let id = cgroupID(path)
        while BootClock.now(CLOCK_REALTIME) - t0 < 2_000_000_000 {
            if try enforcer.policy(cgroupID: id) != nil { endToEnd.append(BootClock.now(CLOCK_REALTIME) - t0); break }
            usleep(50)
        }
        rmdir(path)
        usleep(5000)
    }
    return LatencySummary(nanoseconds: endToEnd)
}

func reportArming(_ label: String, _ enforcer: Enforcer, _ endToEnd: LatencySummary?) {
    if let k = enforcer.armingLatency() {
        print("arming (\(label)): cgroup_mkdir (kernel timestamp) -> policy inserted, \(k.count) creations: median \(microseconds(k.medianNanoseconds)), p99 \(microseconds(k.p99Nanoseconds)), max \(microseconds(k.maxNanoseconds)) (target p99 < 10 ms) \(k.p99Nanoseconds < 10_000_000 ? "PASS" : "FAIL")")
    } else {
        print("arming (\(label)): no cgroup creation was seen")
    }
    if let s = endToEnd {
        print("arming (\(label)): mkdir() called -> policy visible, \(s.count) of \(o.armings): median \(microseconds(s.medianNanoseconds)), p99 \(microseconds(s.p99Nanoseconds)), max \(microseconds(s.maxNanoseconds))")
    }
}

// a) The enforcer's own cgroup_mkdir hook and ring buffer (Enforcer.watchNewCgroups).
do {
    let enforcer = try Enforcer.open(cgroupPath: root, pinRoot: pinRoot)
    let births = try enforcer.watchNewCgroups()
    nonisolated(unsafe) let b = births
    let armer = Armer { shouldStop in
        while !shouldStop() {
            for c in try b.poll(timeoutMilliseconds: 100) {
                _ = try enforcer.arm(cgroupID: c.cgroupID, workloadID: 3, mode: .enforce, createdAtWallNanoseconds: c.timeNanoseconds)
            }
        }
    }
    let endToEnd = try makeCgroupsAndWait(enforcer, prefix: "arm-w-")
    armer.finish()
    reportArming("enforcer's watcher", enforcer, endToEnd)
    try enforcer.close(failOpen: true)
}

// b) The tracer's cgroup events, which share one ring buffer with every
//    connection on the node (what an agent wired to the tracer sees).
do {
    var tc = Tracer.Configuration()
    tc.seedListeners = false
    tc.pollIntervalMilliseconds = 20
    nonisolated(unsafe) let tracer = try Tracer(configuration: tc)
    let enforcer = try Enforcer.open(cgroupPath: root, pinRoot: pinRoot)
    let relative = String(root.dropFirst(mount.count)) + "/arm-t-"
    let armer = Armer { shouldStop in
        try tracer.run(shouldStop: shouldStop, onRecord: { record in
            if case let .cgroup(c) = record, c.created, c.hierarchyID == 0, c.path.hasPrefix(relative) {
                _ = try? enforcer.arm(cgroupID: c.cgroupID, workloadID: 3, mode: .enforce, createdAtWallNanoseconds: c.timeNanoseconds)
            }
        })
    }
    let endToEnd = try makeCgroupsAndWait(enforcer, prefix: "arm-t-")
    armer.finish()
    tracer.close()
    reportArming("tracer's events", enforcer, endToEnd)
    try enforcer.close(failOpen: true)
}

let ok = ratio >= 0.93 && denialsSeen == 0
exit(ok ? 0 : 1)
