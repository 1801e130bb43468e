// Query and insert benchmark of ConnGuardStore (scripts/bench-query); not
// part of the connguard product.
//
//   connguard-bench-store [--events N] [--workloads N] [--runs N] [--batch N] [--dir DIR] [--keep] [--check]
//
// --check: exit 1 when a target is missed (the benchmark query's median at
// 100 ms or more, appends under 50,000 events/s).
// Fills a fresh database with N events spread over the last 2 hours across
// the workloads (3 pods each), in batches as the agent's writer would, then
// times `connguard connections --since 1h --workload W` (with and without
// --last 100) and a writer storm.
import ConnGuardCore
import ConnGuardStore
import Foundation
import GRDB
import Glibc

var eventCount = 1_000_000
var workloadCount = 200
var runs = 20
var dir: String?
var keep = false
var check = false
var fillOnly = false
var missed: [String] = []
var batchSize = 5_000
var args = CommandLine.arguments.dropFirst()
func usage() -> Never {
    print("usage: connguard-bench-store [--events N] [--workloads N] [--runs N] [--batch N] [--dir DIR] [--keep] [--check] [--fill-only]")
    exit(2)
}
while let a = args.popFirst() {
    func int() -> Int {
        guard let v = args.popFirst().flatMap({ Int($0) }), v > 0 else { usage() }
        return v
    }
    switch a {
    case "--events": eventCount = int()
    case "--workloads": workloadCount = int()
    case "--runs": runs = int()
    case "--batch": batchSize = int()
    case "--dir": guard let d = args.popFirst() else { usage() }; dir = d
    case "--keep": keep = true
    case "--check": check = true
    case "--fill-only": fillOnly = true
    default: usage()
    }
}

func monotonic() -> Double { Double(BootClock.now(CLOCK_MONOTONIC)) / 1e9 }
/// CPU seconds (user + system) of the whole process: on a machine shared with
/// other work, events per CPU second says more than events per second.
func cpuSeconds() -> Double {
    var u = rusage()
    getrusage(RUSAGE_SELF.rawValue, &u)
    return Double(u.ru_utime.tv_sec) + Double(u.ru_utime.tv_usec) / 1e6 + Double(u.ru_stime.tv_sec) + Double(u.ru_stime.tv_usec) / 1e6
}
func ms(_ s: Double) -> String { String(format: "%.2f ms", s * 1000) }

/// A small deterministic generator (xorshift), so runs are comparable.
struct Rng {
    var s: UInt64 = 0x9E37_79B9_7F4A_7C15
    mutating func next() -> UInt64 { s ^= s << 13; s ^= s >> 7; s ^= s << 17; return s }
    mutating func below(_ n: Int) -> Int { Int(next() % UInt64(n)) }
}

let base = dir ?? FileManager.default.temporaryDirectory.path
let workDir = base + "/connguard-bench-\(getpid())"
let path = workDir + "/bench.db"
defer { if !keep { try? FileManager.default.removeItem(atPath: workDir) } }

let identities: [[Identity]] = (0..<workloadCount).map { w in
    (0..<3).map { r in
        let ns = "ns-\(w % 20)"
        let owner = "deploy-\(w)"
        let cid = String(repeating: String(format: "%02x", (w * 3 + r) % 256), count: 32)
        return Identity(workload: "\(ns)/\(owner)/app",
                        container: ContainerInfo(id: cid, runtime: .containerd, name: "app", image: "registry.local/\(owner):1.\(r)"),
                        pod: PodInfo(namespace: ns, name: "\(owner)-\(r)", uid: UUID().uuidString.lowercased(), container: "app"),
                        cgroupPath: "/kubepods/burstable/pod\(w)-\(r)/\(cid)")
    }
}
let peers: [IPAddress] = (0..<2000).map { i in
    i % 10 == 0 ? IPAddress("fd00::\(String(i, radix: 16))")! : IPAddress("10.\(i / 250).\(i % 250).\(1 + i % 7)")!
}
let ports: [UInt16] = [80, 443, 5432, 6379, 8080, 9090, 53, 3306]
let local4 = IPAddress("10.200.0.5")!
let local6 = IPAddress("fd00::5")!

@MainActor func makeEvent(_ i: Int, time: Int64, rng: inout Rng) -> StoredConnection {
    let w = rng.below(workloadCount)
    let replica = rng.below(3)
    let identity = identities[w][replica]
    // Each workload talks to a handful of peers on one or two ports.
    let peer = peers[(w * 7 + rng.below(8)) % peers.count]
    let local = peer.family == .ipv4 ? local4 : local6
    let accept = rng.below(4) == 0
    let port = ports[(w + rng.below(2)) % ports.count]
    let ephemeral = UInt16(32768 + rng.below(28000))
    let failed = rng.below(50) == 0
    let event = ConnectionEvent(
        timeNanoseconds: time, direction: accept ? .accept : .connect, outcome: failed ? .failed : .established,
        error: failed ? 111 : 0, pid: UInt32(1000 + w), comm: "app-\(w % 10)", uid: 1000, cgroupID: UInt64(5000 + w * 3 + replica),
        netns: 4026531840, source: accept ? peer : local, sourcePort: ephemeral,
        destination: accept ? local : peer, destinationPort: port)
    return StoredConnection(event: event, identity: identity, verdict: rng.below(100) == 0 ? .wouldDeny : .allowed)
}

do {
    print("connguard-bench-store: \(eventCount) events, \(workloadCount) workloads, database \(path)")
    let store = try EventStore(path: path)
    let now = EventStore.now()
    let span: Int64 = 2 * 3600 * 1_000_000_000
    let start = now - span
    var rng = Rng()

    // Fill, in time order, in batches.
    var appendSeconds = 0.0
    var appendCPU = 0.0
    let fillStart = monotonic()
    var batch: [StoredConnection] = []
    batch.reserveCapacity(batchSize)
    for i in 0..<eventCount {
        batch.append(makeEvent(i, time: start + span * Int64(i) / Int64(eventCount), rng: &rng))
        if batch.count == batchSize || i == eventCount - 1 {
            let t0 = monotonic()
            let c0 = cpuSeconds()
            try store.append(batch)
            appendSeconds += monotonic() - t0
            appendCPU += cpuSeconds() - c0
            batch.removeAll(keepingCapacity: true)
        }
    }
    let fillSeconds = monotonic() - fillStart
    let stats = try store.stats()
    let insertRate = Double(eventCount) / appendSeconds
    if insertRate < 50_000 { missed.append(String(format: "insert rate %.0f events/s < 50000", insertRate)) }
    print(String(format: "insert: %d events in %.2f s of append: %.0f events/s (%.0f per CPU second, %.1f us CPU each; %.2f s with generation), batches of %d",
                 eventCount, appendSeconds, Double(eventCount) / appendSeconds, Double(eventCount) / appendCPU,
                 appendCPU / Double(eventCount) * 1e6, fillSeconds, batchSize))
    print(String(format: "size: %.1f MiB (main %.1f MiB + wal %.1f MiB), %d aggregates, %d identities",
                 Double(stats.totalBytes) / 1048576, Double(stats.databaseBytes) / 1048576, Double(stats.walBytes) / 1048576,
                 stats.aggregates, stats.identities))

    if fillOnly {
        try store.close()
        exit(0)
    }
    _ = try store.database.writeWithoutTransaction { db in try db.checkpoint(.truncate) }
    print(String(format: "size after a checkpoint: %.1f MiB (%.0f bytes an event, aggregates and all)",
                 Double(try store.stats().totalBytes) / 1048576, Double(try store.stats().totalBytes) / Double(eventCount)))

    let workload = identities[min(7, workloadCount - 1)][0].workload
    let plan = try store.database.read { db in
        try Row.fetchAll(db, sql: "EXPLAIN QUERY PLAN SELECT id FROM event e WHERE e.workload_id = 8 AND e.time >= 0 ORDER BY e.time, e.id")
            .map { $0["detail"] as String? ?? "?" }
    }
    print("plan (workload + since): \(plan.joined(separator: "; "))")

    func time(_ name: String, _ query: ConnectionQuery, aggregates: Bool = false, target: Bool = false) throws {
        var samples: [Double] = []
        var rows = 0
        for _ in 0..<runs {
            let t0 = monotonic()
            rows = aggregates ? try store.queryAggregates(query).count : try store.query(query).count
            samples.append(monotonic() - t0)
        }
        samples.sort()
        let median = samples.count % 2 == 1 ? samples[samples.count / 2]
            : (samples[samples.count / 2 - 1] + samples[samples.count / 2]) / 2
        print("query \(name): \(rows) rows, median \(ms(median)), max \(ms(samples.last!)) over \(runs) runs"
              + (median < 0.1 ? "" : "  (over 100 ms)"))
        if target && median >= 0.1 { missed.append("\(name): median \(ms(median))") }
    }
    let hourAgo = now - 3600 * 1_000_000_000
    try time("--since 1h --workload W", ConnectionQuery(since: hourAgo, workload: workload), target: true)
    try time("--since 1h --workload W --last 100", ConnectionQuery(since: hourAgo, last: 100, workload: workload), target: true)
    try time("--since 1h --workload W --aggregate", ConnectionQuery(since: hourAgo, workload: workload), aggregates: true)
    try time("--since 15m --last 100", ConnectionQuery(since: now - 900 * 1_000_000_000, last: 100))
    try time("--since 1h --namespace ns-7 --last 100", ConnectionQuery(since: hourAgo, last: 100, namespace: "ns-7"))
    try time("--since 1h --namespace ns-7 --port 1 (no match)", ConnectionQuery(since: hourAgo, namespace: "ns-7", port: 1))
    try time("--since 1h --pod deploy-7-1", ConnectionQuery(since: hourAgo, pod: "deploy-7-1"))
    try time("--since 1h --port 1 (no match, scans the hour)", ConnectionQuery(since: hourAgo, port: 1))
    try time("--since 1h --peer 10.1.0.0/16 --last 100",
             ConnectionQuery(since: hourAgo, last: 100, peer: CIDR("10.1.0.0/16")!))

    // Retention over the full table: drop the oldest tenth by count.
    let t0 = monotonic()
    let pruned = try store.prune(maxAge: .seconds(86_400), maxEvents: eventCount * 9 / 10, aggregateMaxAge: .seconds(90 * 86_400))
    print("prune: \(pruned.eventsByCount) events by count in \(ms(monotonic() - t0)) (chunks of 10000)")

    // The agent's path: a producer submits to a StoreWriter (default options).
    // First paced at twice the rate the agent must sustain, then a burst with
    // no pacing at all, far beyond what any disk takes.
    var pool: [StoredConnection] = []
    pool.reserveCapacity(50_000)
    for i in 0..<50_000 { pool.append(makeEvent(i, time: now, rng: &rng)) }
    for (rate, seconds) in [(100_000, 5.0)] {
        let writer = StoreWriter(store: store)
        let perTick = rate / 100
        let total = Int(Double(rate) * seconds)
        var peak = 0
        let p0 = monotonic()
        var sent = 0
        while sent < total {
            for k in 0..<perTick {
                var e = pool[(sent + k) % pool.count]
                e.event.timeNanoseconds = now + Int64(sent + k)
                writer.submit(e)
            }
            sent += perTick
            peak = max(peak, writer.snapshot.pending)
            let due = p0 + Double(sent) / Double(rate)
            let wait = due - monotonic()
            if wait > 0 { usleep(UInt32(wait * 1e6)) }
        }
        writer.flush()
        let c = writer.snapshot
        writer.close()
        print(String(format: "writer, paced at %d events/s for %.0f s: %d written, %d dropped, %d failed, peak queue %d, %d transactions (%.0f events each)",
                     rate, seconds, c.written, c.dropped, c.failed, peak, c.transactions, Double(c.written) / Double(max(1, c.transactions))))
    }

    let writer = StoreWriter(store: store)
    let storm = 300_000
    var stormEvents: [StoredConnection] = []
    stormEvents.reserveCapacity(storm)
    for i in 0..<storm { stormEvents.append(makeEvent(i, time: now + Int64(i), rng: &rng)) }
    let s0 = monotonic()
    for e in stormEvents { writer.submit(e) }
    let submitted = monotonic() - s0
    writer.flush()
    let drained = monotonic() - s0
    let c = writer.snapshot
    writer.close()
    print(String(format: "writer, burst of %d unpaced (%.0f/s offered; capacity %d): %d written, %d dropped and counted, drained in %.2f s (%.0f events/s written), %d transactions",
                 storm, Double(storm) / submitted, writer.options.capacity, c.written, c.dropped, drained, Double(c.written) / drained, c.transactions))
    print(String(format: "final size: %.1f MiB", Double(try store.stats().totalBytes) / 1048576))
    print(missed.isEmpty ? "targets: met (query < 100 ms, inserts > 50000 events/s)" : "targets MISSED: " + missed.joined(separator: "; "))
    try store.close()
    if check && !missed.isEmpty { exit(1) }
} catch {
    print("connguard-bench-store: \(error)")
    exit(1)
}
