// The load generator of scripts/bench-cluster (issue #15); not part of the
// connguard product.
//
//   connguard-bench-cluster --endpoints URL,URL,URL [--nodes 1000] [--pods 30] [--workloads 500]
//       [--changes-per-second 5] [--merges-per-node-second 0.05] [--rules-per-merge 3]
//       [--rules-per-workload 20] [--seconds 60] [--pin PATH] [--agent-pid PID]
//       [--concurrency 50] [--ipv6-every 10] [--root /connguard] [--check]
//
// Plays `--nodes` nodes of `--pods` pods each against a real etcd, each node
// one `EtcdClusterStore` (its own lease kept alive, its own HTTP client):
//   1. load: every node publishes its pods' addresses (unique, from
//      198.18.0.0/15, every `--ipv6-every`th one from fd00::/8), one mode is set
//      per workload and one baseline seeded per workload; then, with --pin,
//      waits until the watching agent's peer_addresses map holds them all;
//   2. steady state, `--seconds`: `--changes-per-second` pod changes across the
//      cluster (a pod rescheduled: its address withdrawn and a new one
//      published, one call to publishAddresses), and learnt-rule merges at
//      `--merges-per-node-second` per node (a few known rules, new hits), both
//      at fixed rates whatever the answers' times;
//   3. for every pod change, the time from the write to the new address being
//      in the agent's pinned map (and the old one gone), polled directly in
//      the map every ~1 ms; the agent's CPU (/proc/PID/stat) and peak RSS
//      (VmHWM); etcd requests per second per simulated node, counted here and
//      by etcd's own metrics (/metrics of every member).
// --check: exit 1 when a target is missed (p99 at 1 s or more, the agent's
// peak RSS at 200 MiB or more, a change never seen, the map not complete).
import AsyncHTTPClient
import BPFKit
import ConnGuardCluster
import ConnGuardCore
import Foundation
import Glibc
import NIOCore

// MARK: options

struct Options: Sendable {
    var endpoints: [String] = []
    var nodes = 1000
    var pods = 30
    var workloads = 500
    var changesPerSecond = 5.0
    var mergesPerNodeSecond = 0.05
    var rulesPerMerge = 3
    var rulesPerWorkload = 20
    var seconds = 60.0
    var pin: String?
    var agentPID: Int32?
    var concurrency = 50
    var ipv6Every = 10
    var root = "/connguard"
    var check = false
    var loadTimeout = 180.0

    static func parse() -> Options {
        var o = Options()
        var args = CommandLine.arguments.dropFirst()
        func usage() -> Never {
            let text = """
                usage: connguard-bench-cluster --endpoints URL,URL,URL [--nodes N] [--pods N] [--workloads N]
                    [--changes-per-second X] [--merges-per-node-second X] [--rules-per-merge N] [--rules-per-workload N]
                    [--seconds X] [--pin PATH] [--agent-pid PID] [--concurrency N] [--ipv6-every N] [--root R]
                    [--load-timeout X] [--check]
                """
            FileHandle.standardError.write(Data((text + "\n").utf8))
            exit(2)
        }
        while let a = args.popFirst() {
            func value() -> String { guard let v = args.popFirst() else { usage() }; return v }
            func int() -> Int { guard let v = Int(value()), v >= 0 else { usage() }; return v }
            func double() -> Double { guard let v = Double(value()), v >= 0 else { usage() }; return v }
            switch a {
            case "--endpoints": o.endpoints = value().split(separator: ",").map(String.init)
            case "--nodes": o.nodes = int()
            case "--pods": o.pods = int()
            case "--workloads": o.workloads = max(1, int())
            case "--changes-per-second": o.changesPerSecond = double()
            case "--merges-per-node-second": o.mergesPerNodeSecond = double()
            case "--rules-per-merge": o.rulesPerMerge = max(1, int())
            case "--rules-per-workload": o.rulesPerWorkload = max(1, int())
            case "--seconds": o.seconds = double()
            case "--pin": o.pin = value()
            case "--agent-pid": guard let p = Int32(value()) else { usage() }; o.agentPID = p
            case "--concurrency": o.concurrency = max(1, int())
            case "--ipv6-every": o.ipv6Every = int()
            case "--root": o.root = value()
            case "--load-timeout": o.loadTimeout = double()
            case "--check": o.check = true
            default: usage()
            }
        }
        if o.endpoints.isEmpty { usage() }
        return o
    }
}

// MARK: small helpers

final class Locked<T>: @unchecked Sendable {
    private var value: T
    private let lock = NSLock()
    init(_ v: T) { value = v }
    func withLock<R>(_ f: (inout T) throws -> R) rethrows -> R {
        lock.lock()
        defer { lock.unlock() }
        return try f(&value)
    }
}

/// Monotonic seconds.
func now() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}

func wallNanos() -> Int64 { Int64(Date().timeIntervalSince1970 * 1e9) }

func say(_ s: String) {
    print(s)
    fflush(nil)
}

func note(_ s: String) { FileHandle.standardError.write(Data("bench-cluster: \(s)\n".utf8)) }

func percentile(_ sorted: [Double], _ p: Double) -> Double {
    guard !sorted.isEmpty else { return .nan }
    let i = min(sorted.count - 1, max(0, Int((p * Double(sorted.count)).rounded(.up)) - 1))
    return sorted[i]
}

func ms(_ s: Double) -> String { s.isNaN ? "n/a" : String(format: "%.1f ms", s * 1000) }

/// A small deterministic generator (xorshift), so that runs are comparable.
struct XorShift {
    var state: UInt64
    mutating func next() -> UInt64 {
        state ^= state << 13
        state ^= state >> 7
        state ^= state << 17
        return state
    }
    mutating func below(_ n: Int) -> Int { Int(next() % UInt64(n)) }
}

/// CPU seconds (user + system) and memory of a process, from /proc.
struct ProcessUsage {
    var cpuSeconds: Double
    var rssKiB: Int
    var hwmKiB: Int

    static func read(_ pid: Int32) -> ProcessUsage? {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return nil }
        // Fields after the command (which may hold spaces), from its closing parenthesis on.
        guard let close = stat.lastIndex(of: ")") else { return nil }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        // fields[0] is field 3 (state); utime is field 14, stime 15.
        guard fields.count > 13, let ut = Double(fields[11]), let st = Double(fields[12]) else { return nil }
        let hz = Double(sysconf(Int32(_SC_CLK_TCK)))
        func kib(_ name: String) -> Int {
            for line in status.split(separator: "\n") where line.hasPrefix(name + ":") {
                return Int(line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "") ?? 0
            }
            return 0
        }
        return ProcessUsage(cpuSeconds: (ut + st) / hz, rssKiB: kib("VmRSS"), hwmKiB: kib("VmHWM"))
    }
}

func mib(_ kib: Int) -> String { String(format: "%.1f MiB", Double(kib) / 1024) }

/// 16 bytes as the agent's peer_addresses map keys an address (Enforcer's
/// AddressKey: IPv6 as is, IPv4 as ::ffff:a.b.c.d).
typealias MapKey = (UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8,
                    UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8)

func mapKey(_ a: IPAddress) -> MapKey {
    var t: MapKey = (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
    withUnsafeMutableBytes(of: &t) { $0.copyBytes(from: a.mappedBytes) }
    return t
}

// MARK: the watcher of the agent's map

/// Polls the agent's pinned map for every pending sample every ~1 ms, on a
/// thread of its own (not the generator's event loops, which are busy).
final class MapPoller: @unchecked Sendable {
    struct Sample {
        var added: IPAddress
        var removed: IPAddress
        var start: Double
        var answered: Double?
        var seenAdded: Double?
        var seenRemoved: Double?
    }

    let map: BPFPinnedMap
    private let state = Locked<(pending: [Int: Sample], done: [Sample], timedOut: [Sample], nextID: Int, stop: Bool)>(([:], [], [], 0, false))
    private var thread: Thread?
    let timeout: Double

    init(map: BPFPinnedMap, timeout: Double = 15) {
        self.map = map
        self.timeout = timeout
    }

    func start() {
        let t = Thread { [self] in self.run() }
        t.name = "map-poller"
        thread = t
        t.start()
    }

    func stop() { state.withLock { $0.stop = true } }

    /// Just before the write.
    func begin(added: IPAddress, removed: IPAddress) -> Int {
        let s = Sample(added: added, removed: removed, start: now())
        return state.withLock {
            let id = $0.nextID
            $0.nextID += 1
            $0.pending[id] = s
            return id
        }
    }

    /// When the write's answer came back (the sample may be done already:
    /// the agent can have it before the answer reaches the generator).
    func answered(_ id: Int, at t: Double) {
        doneAnswered.withLock { $0[id] = t }
    }

    /// The write failed: drop the sample.
    func abandon(_ id: Int) { _ = state.withLock { $0.pending.removeValue(forKey: id) } }

    private let doneAnswered = Locked<[Int: Double]>([:])
    private let doneByID = Locked<[Int: Sample]>([:])

    var pendingCount: Int { state.withLock { $0.pending.count } }

    /// nil when the lookup failed (neither seen nor gone, then).
    private func present(_ a: IPAddress) -> Bool? {
        do { return try map.lookup(key: mapKey(a), as: UInt32.self) != nil } catch { return nil }
    }

    private func run() {
        while true {
            let work = state.withLock { st -> [(Int, Sample)]? in st.stop ? nil : Array(st.pending) }
            guard let work else { return }
            for (id, s) in work {
                var s = s
                let t = now()
                if s.seenAdded == nil, present(s.added) == true { s.seenAdded = t }
                if s.seenRemoved == nil, present(s.removed) == false { s.seenRemoved = t }
                let finished = s.seenAdded != nil && s.seenRemoved != nil
                let expired = t - s.start > timeout
                state.withLock { st in
                    guard let cur = st.pending[id] else { return }
                    s.answered = cur.answered
                    if finished || expired {
                        st.pending[id] = nil
                        if finished { doneByID.withLock { $0[id] = s } } else { st.timedOut.append(s) }
                    } else {
                        st.pending[id] = s
                    }
                }
            }
            usleep(1000)
        }
    }

    /// Every finished sample, with its answer time filled in.
    func results() -> (done: [Sample], timedOut: [Sample]) {
        let answers = doneAnswered.withLock { $0 }
        let done = doneByID.withLock { $0 }.map { id, s -> Sample in
            var s = s
            if s.answered == nil { s.answered = answers[id] }
            return s
        }
        return (done, state.withLock { $0.timedOut })
    }
}

// MARK: counts of what the generator asked etcd

struct Counts: Sendable {
    var leaseGrants = 0
    var addressTxns = 0
    var addressReads = 0
    var mergeReads = 0
    var mergeTxns = 0
    var casRetries = 0
    var modePuts = 0
    var changes = 0
    var merges = 0
    var failures = 0
    var writes: Int { leaseGrants + addressTxns + mergeTxns + modePuts }
}

// MARK: etcd's own counts

/// The members' /metrics: requests handled by method (summed over the
/// members), and the leader-side figures of raft and the backend.
struct EtcdMetrics {
    var handled: [String: Double] = [:]
    var keepalives = 0.0
    var proposalsCommitted = 0.0
    var dbSize = 0.0
    var dbInUse = 0.0

    static func read(_ http: HTTPClient, _ endpoints: [String]) async -> EtcdMetrics {
        var m = EtcdMetrics()
        for (i, e) in endpoints.enumerated() {
            var request = HTTPClientRequest(url: e + "/metrics")
            request.method = .GET
            guard let response = try? await http.execute(request, timeout: .seconds(5)),
                  let body = try? await response.body.collect(upTo: 64 << 20) else { continue }
            let text = String(buffer: body)
            for line in text.split(separator: "\n") where !line.hasPrefix("#") {
                guard let space = line.lastIndex(of: " "), let v = Double(line[line.index(after: space)...]) else { continue }
                let name = line[..<space]
                if name.hasPrefix("grpc_server_handled_total{"), let method = label(name, "grpc_method") {
                    m.handled[method, default: 0] += v
                } else if name.hasPrefix("grpc_server_msg_received_total{"), label(name, "grpc_method") == "LeaseKeepAlive" {
                    m.keepalives += v
                } else if name == "etcd_server_proposals_committed_total" {
                    m.proposalsCommitted = max(m.proposalsCommitted, v)
                } else if name == "etcd_mvcc_db_total_size_in_bytes", i == 0 {
                    m.dbSize = v
                } else if name == "etcd_mvcc_db_total_size_in_use_in_bytes", i == 0 {
                    m.dbInUse = v
                }
            }
        }
        return m
    }

    static func label(_ s: Substring, _ name: String) -> String? {
        guard let r = s.range(of: name + "=\"") else { return nil }
        let rest = s[r.upperBound...]
        guard let end = rest.firstIndex(of: "\"") else { return nil }
        return String(rest[..<end])
    }
}

// MARK: the simulated cluster

/// One simulated node: its store and its pods' addresses.
final class SimNode: @unchecked Sendable {
    let name: String
    let store: EtcdClusterStore
    /// pod slot -> (address, workload); changed only under `lock`.
    var pods: [(address: IPAddress, workload: String)]
    let lock = NSLock()

    init(name: String, store: EtcdClusterStore, pods: [(IPAddress, String)]) {
        self.name = name
        self.store = store
        self.pods = pods.map { (address: $0.0, workload: $0.1) }
    }
}

/// Unique addresses: IPv4 from 198.18.0.0/15 (131,072), every `ipv6Every`th
/// from fd00::c6:0/112 and up; never one handed out twice in a run.
struct AddressPool {
    var v4 = 1 // 198.18.0.1 first
    var v6 = 1
    var count = 0
    let ipv6Every: Int

    mutating func next() -> IPAddress {
        count += 1
        if ipv6Every > 0, count % ipv6Every == 0 {
            defer { v6 += 1 }
            // fd00::c6:0:<n>
            return IPAddress(high: 0xfd00_0000_0000_0000, low: 0x00c6_0000_0000_0000 | UInt64(v6))
        }
        precondition(v4 < 131_072, "198.18.0.0/15 is used up")
        defer { v4 += 1 }
        return IPAddress(ipv4: (198 << 24 | 18 << 16) + UInt32(v4))
    }
}

func workloadName(_ i: Int) -> String { "bench/deployment/w\(String(format: "%04d", i))" }

/// The rules a workload learns: connects to other workloads, a pool of
/// `rulesPerWorkload` per workload.
func ruleKey(workload: Int, index: Int, workloads: Int) -> RuleKey {
    let peer = (workload + 1 + index * 7) % workloads
    return RuleKey(direction: .connect, peer: .workload(workloadName(peer)), port: UInt16(5000 + index))
}

@main
struct BenchCluster {
    static func main() async {
        let o = Options.parse()
        do {
            let ok = try await run(o)
            exit(o.check && !ok ? 1 : 0)
        } catch {
            note("failed: \(error)")
            exit(1)
        }
    }

    static func run(_ o: Options) async throws -> Bool {
        let counts = Locked(Counts())
        let rng = XorShift(state: 0x9E37_79B9_7F4A_7C15)
        var pool = AddressPool(ipv6Every: o.ipv6Every)
        let metricsClient = HTTPClient(eventLoopGroupProvider: .singleton)
        var missed: [String] = []

        // The agent's map, when there is an agent.
        var pinnedPoller: MapPoller?
        if let pin = o.pin {
            let end = now() + 30
            var map: BPFPinnedMap?
            while map == nil {
                do { map = try BPFPinnedMap(path: pin) } catch {
                    if now() > end { throw error }
                    try await Task.sleep(nanoseconds: 100_000_000)
                }
            }
            pinnedPoller = MapPoller(map: map!)
        }
        let poller = pinnedPoller
        let selfStart = ProcessUsage.read(getpid())

        // 1. Load.
        let config = EtcdConfiguration(endpoints: o.endpoints, root: o.root)
        var simNodes: [SimNode] = []
        for n in 0..<o.nodes {
            let name = "sim-\(String(format: "%04d", n))"
            var pods: [(IPAddress, String)] = []
            for p in 0..<o.pods { pods.append((pool.next(), workloadName((n * o.pods + p) % o.workloads))) }
            simNodes.append(SimNode(name: name, store: try EtcdClusterStore(node: name, configuration: config), pods: pods))
        }
        let nodes = simNodes
        let expected = o.nodes * o.pods
        note("load: \(o.nodes) nodes x \(o.pods) pods = \(expected) addresses, \(o.workloads) workloads")
        let agentAtLoad = o.agentPID.flatMap(ProcessUsage.read)
        let loadStart = now()
        try await forEach(Array(nodes.indices), concurrency: o.concurrency) { i in
            let node = nodes[i]
            var changes: [IPAddress: String?] = [:]
            for p in node.pods { changes[p.address] = .some(p.workload) }
            try await node.store.publishAddresses(changes)
            counts.withLock { $0.leaseGrants += 1; $0.addressReads += 1; $0.addressTxns += (changes.count + 99) / 100 }
        }
        let published = now()
        // One mode per workload, and one baseline per workload seeded with its
        // whole rule pool by one node that runs it (nodes join as they merge).
        try await forEach(Array(0..<o.workloads), concurrency: o.concurrency) { w in
            let node = nodes[w % nodes.count]
            try await node.store.setMode(.monitor, of: workloadName(w), by: "bench")
            let t = wallNanos()
            let rules = (0..<o.rulesPerWorkload).map { Rule(key: ruleKey(workload: w, index: $0, workloads: o.workloads), firstSeen: t, lastSeen: t, hits: 1) }
            try await node.store.mergeRules(rules, into: workloadName(w))
            counts.withLock { $0.modePuts += 1; $0.mergeReads += 1; $0.mergeTxns += 1 }
        }
        let seeded = now()
        say(String(format: "load: %d addresses of %d nodes published in %.1f s (%d at once); %d modes and baselines in %.1f s",
                   expected, o.nodes, published - loadStart, o.concurrency, o.workloads, seeded - published))
        var mapCount = 0
        if let poller {
            // Until the agent has every address.
            let end = now() + o.loadTimeout
            var last = -1.0
            while true {
                mapCount = try poller.map.keys(as: (UInt64, UInt64).self).count
                if mapCount >= expected { break }
                if now() > end {
                    missed.append("the agent's map held \(mapCount) of \(expected) addresses \(Int(o.loadTimeout)) s after the load began")
                    break
                }
                if now() - last > 5 { note("agent's map: \(mapCount) of \(expected)"); last = now() }
                try await Task.sleep(nanoseconds: 50_000_000)
            }
            say(String(format: "load: %d of %d addresses in the agent's map %.1f s after the first write", mapCount, expected, now() - loadStart))
        }
        let agentAfterLoad = o.agentPID.flatMap(ProcessUsage.read)
        let loadCount = mapCount

        // 2. Steady state.
        poller?.start()
        let before = counts.withLock { $0 }
        let metricsBefore = await EtcdMetrics.read(metricsClient, o.endpoints)
        let casBefore = await totalCASRetries(nodes)
        let steadyStart = now()
        let mergesPerSecond = o.mergesPerNodeSecond * Double(o.nodes)
        note(String(format: "steady state: %.0f s, %.1f pod changes/s, %.1f merges/s (%.3f per node)", o.seconds, o.changesPerSecond, mergesPerSecond, o.mergesPerNodeSecond))
        let poolBox = Locked(pool)
        let rngBox = Locked(rng)
        let latencies = Locked<[Double]>([])
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                await ticks(rate: o.changesPerSecond, until: steadyStart + o.seconds) {
                    let (node, slot, fresh) = rngBox.withLock { r -> (SimNode, Int, IPAddress) in
                        let n = nodes[r.below(nodes.count)]
                        return (n, r.below(o.pods), poolBox.withLock { $0.next() })
                    }
                    let (old, workload): (IPAddress, String) = node.lock.withLock {
                        let p = node.pods[slot]
                        node.pods[slot] = (address: fresh, workload: p.workload)
                        return (p.address, p.workload)
                    }
                    let id = poller?.begin(added: fresh, removed: old)
                    let t0 = now()
                    do {
                        try await node.store.publishAddresses([old: nil, fresh: .some(workload)])
                        let t1 = now()
                        if let id { poller?.answered(id, at: t1) }
                        latencies.withLock { $0.append(t1 - t0) }
                        counts.withLock { $0.changes += 1; $0.addressReads += 1; $0.addressTxns += 1 }
                    } catch {
                        if let id { poller?.abandon(id) }
                        counts.withLock { $0.failures += 1 }
                        note("pod change on \(node.name) failed: \(error)")
                    }
                }
            }
            group.addTask {
                await ticks(rate: mergesPerSecond, until: steadyStart + o.seconds) {
                    let (node, slot, picks, hits) = rngBox.withLock { r -> (SimNode, Int, [Int], Int64) in
                        let picks = (0..<o.rulesPerMerge).map { _ in r.below(o.rulesPerWorkload) }
                        return (nodes[r.below(nodes.count)], r.below(o.pods), picks, Int64(1 + r.below(50)))
                    }
                    let workload = node.lock.withLock { node.pods[slot].workload }
                    guard let w = Int(workload.suffix(4)) else { return }
                    let t = wallNanos()
                    let rules = Set(picks).map { Rule(key: ruleKey(workload: w, index: $0, workloads: o.workloads), firstSeen: t, lastSeen: t, hits: hits) }
                    do {
                        try await node.store.mergeRules(rules, into: workload)
                        counts.withLock { $0.merges += 1; $0.mergeReads += 1; $0.mergeTxns += 1 }
                    } catch {
                        counts.withLock { $0.failures += 1 }
                        note("merge on \(node.name) failed: \(error)")
                    }
                }
            }
        }
        let steadyEnd = now()
        let casAfter = await totalCASRetries(nodes)
        let metricsAfter = await EtcdMetrics.read(metricsClient, o.endpoints)
        counts.withLock { $0.casRetries = casAfter - casBefore; $0.mergeTxns += casAfter - casBefore }
        let after = counts.withLock { $0 }
        let window = steadyEnd - steadyStart
        // The last changes' samples.
        if let poller {
            let end = now() + poller.timeout + 1
            while poller.pendingCount > 0, now() < end { try await Task.sleep(nanoseconds: 20_000_000) }
            poller.stop()
            mapCount = try poller.map.keys(as: (UInt64, UInt64).self).count
        }
        let agentEnd = o.agentPID.flatMap(ProcessUsage.read)
        let selfEnd = ProcessUsage.read(getpid())

        // 3. Figures.
        say(String(format: "steady state: %.1f s; %d pod changes (%.2f/s), %d merges (%.1f/s, %.3f per node), %d compare-and-swap retries, %d failed calls",
                   window, after.changes - before.changes, Double(after.changes - before.changes) / window,
                   after.merges - before.merges, Double(after.merges - before.merges) / window,
                   Double(after.merges - before.merges) / window / Double(o.nodes), after.casRetries, after.failures - before.failures))
        let calls = latencies.withLock { $0 }.sorted()
        say("publishAddresses of one pod change (a read of the node's prefix and one transaction): p50 \(ms(percentile(calls, 0.5))), p99 \(ms(percentile(calls, 0.99))), max \(ms(calls.last ?? .nan))")
        if let poller {
            let (done, timedOut) = poller.results()
            let fromAnswer = done.compactMap { s in s.answered.map { max(0, s.seenAdded! - $0) } }.sorted()
            let early = done.filter { s in s.answered.map { s.seenAdded! < $0 } ?? false }.count
            let fromStart = done.map { $0.seenAdded! - $0.start }.sorted()
            let removal = done.compactMap { s in s.answered.map { max(0, s.seenRemoved! - $0) } }.sorted()
            say("address change -> the agent's map (n=\(done.count), polled every ~1 ms):")
            say("  from the write's answer:  p50 \(ms(percentile(fromAnswer, 0.5))), p99 \(ms(percentile(fromAnswer, 0.99))), max \(ms(fromAnswer.last ?? .nan))  (\(early) seen before the answer arrived, counted as 0)")
            say("  from just before the call: p50 \(ms(percentile(fromStart, 0.5))), p99 \(ms(percentile(fromStart, 0.99))), max \(ms(fromStart.last ?? .nan))")
            say("  old address gone, from the answer: p50 \(ms(percentile(removal, 0.5))), p99 \(ms(percentile(removal, 0.99))), max \(ms(removal.last ?? .nan))")
            if !timedOut.isEmpty { missed.append("\(timedOut.count) address changes not in the agent's map within \(Int(poller.timeout)) s") }
            if !fromAnswer.isEmpty, percentile(fromAnswer, 0.99) >= 1 { missed.append("p99 \(ms(percentile(fromAnswer, 0.99))) is not under 1 s") }
            if done.isEmpty, o.changesPerSecond > 0 { missed.append("no address change was measured") }
            say("agent's peer_addresses map at the end: \(mapCount) entries (expected \(expected))")
            if mapCount != expected { missed.append("the agent's map holds \(mapCount) entries, not \(expected)") }
        }
        let per = { (n: Int) in Double(n) / window / Double(o.nodes) }
        let d = { (k: String) in (metricsAfter.handled[k] ?? 0) - (metricsBefore.handled[k] ?? 0) }
        let keepalives = metricsAfter.keepalives - metricsBefore.keepalives
        say(String(format: "etcd requests per simulated node per second (the generator's counts): writes %.4f (address transactions %.4f, merge transactions %.4f with retries, lease grants %.4f, mode puts %.4f); reads %.4f",
                   per(after.writes - before.writes), per(after.addressTxns - before.addressTxns), per(after.mergeTxns - before.mergeTxns),
                   per(after.leaseGrants - before.leaseGrants), per(after.modePuts - before.modePuts),
                   per(after.addressReads - before.addressReads + after.mergeReads - before.mergeReads)))
        say(String(format: "  lease keepalives (etcd's count): %.3f per node per second; all requests per node per second, writes and keepalives: %.3f",
                   keepalives / window / Double(o.nodes), (Double(after.writes - before.writes) + keepalives) / window / Double(o.nodes)))
        say(String(format: "etcd's own counts over the window (all members): Txn %.1f/s, Range %.1f/s, Put %.1f/s, LeaseGrant %.1f/s, LeaseKeepAlive %.1f/s; raft proposals committed %.1f/s; db %.1f MiB (%.1f MiB in use)",
                   d("Txn") / window, d("Range") / window, d("Put") / window, d("LeaseGrant") / window, keepalives / window,
                   (metricsAfter.proposalsCommitted - metricsBefore.proposalsCommitted) / window,
                   metricsAfter.dbSize / 1_048_576, metricsAfter.dbInUse / 1_048_576))
        if let pid = o.agentPID {
            if let a = agentAtLoad, let l = agentAfterLoad, let e = agentEnd {
                say(String(format: "agent (pid %d): CPU %.2f s during the load (until its map held %d addresses), %.2f s in the %.0f s steady state (%.1f %% of a core); peak RSS (VmHWM) %@, RSS at the end %@",
                           pid, l.cpuSeconds - a.cpuSeconds, loadCount, e.cpuSeconds - l.cpuSeconds, window, (e.cpuSeconds - l.cpuSeconds) / window * 100, mib(e.hwmKiB), mib(e.rssKiB)))
                if e.hwmKiB >= 200 * 1024 { missed.append("the agent's peak RSS \(mib(e.hwmKiB)) is not under 200 MiB") }
            } else {
                missed.append("could not read /proc/\(pid) (the agent died?)")
            }
        }
        if let s = selfStart, let e = selfEnd {
            say(String(format: "generator: CPU %.1f s in all, peak RSS %@ (%d stores, each its own HTTP client and keepalive)", e.cpuSeconds - s.cpuSeconds, mib(e.hwmKiB), o.nodes))
        }
        for m in missed { say("MISSED: \(m)") }
        if missed.isEmpty, o.pin != nil { say("targets met: p99 under 1 s, the agent under 200 MiB with \(expected) remote addresses") }
        await withTaskGroup(of: Void.self) { group in
            for n in nodes { group.addTask { await n.store.close() } }
        }
        try? await metricsClient.shutdown()
        return missed.isEmpty
    }

    static func totalCASRetries(_ nodes: [SimNode]) async -> Int {
        var n = 0
        for node in nodes { n += await node.store.casRetries }
        return n
    }

    /// Runs `body` `rate` times a second until `end` (monotonic), each in a
    /// task of its own, so that a slow answer does not lower the rate; waits
    /// for the last ones.
    static func ticks(rate: Double, until end: Double, _ body: @escaping @Sendable () async -> Void) async {
        guard rate > 0 else { return }
        let period = 1 / rate
        await withTaskGroup(of: Void.self) { group in
            var next = now()
            while next < end {
                let wait = next - now()
                if wait > 0 { try? await Task.sleep(nanoseconds: UInt64(wait * 1e9)) }
                group.addTask { await body() }
                next += period
            }
        }
    }

    /// `body` for every element, at most `concurrency` at once; the first error is thrown.
    static func forEach<T: Sendable>(_ items: [T], concurrency: Int, _ body: @escaping @Sendable (T) async throws -> Void) async throws {
        try await withThrowingTaskGroup(of: Void.self) { group in
            var it = items.makeIterator()
            for _ in 0..<concurrency {
                guard let x = it.next() else { break }
                group.addTask { try await body(x) }
            }
            while try await group.next() != nil {
                if let x = it.next() { group.addTask { try await body(x) } }
            }
        }
    }
}
