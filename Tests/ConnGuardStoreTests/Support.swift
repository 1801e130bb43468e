import ConnGuardCore
@testable import ConnGuardStore
import Foundation
import XCTest

/// A fresh directory under the system temp dir, removed by the caller's teardown.
func temporaryDirectory() throws -> String {
    let path = NSTemporaryDirectory() + "connguard-store-tests-\(getpid())-\(UUID().uuidString)"
    try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    return path
}

class StoreTestCase: XCTestCase {
    var directory = ""
    var dbPath: String { directory + "/store.db" }

    override func setUpWithError() throws {
        directory = try temporaryDirectory()
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(atPath: directory)
    }
}

let base: Int64 = 1_800_000_000_000_000_000  // 2027-01-15
let second: Int64 = 1_000_000_000

let podA0 = Identity(workload: "shop/web/app",
                     container: ContainerInfo(id: String(repeating: "a0", count: 32), runtime: .containerd, name: "app", image: "web:1"),
                     pod: PodInfo(namespace: "shop", name: "web-0", uid: "uid-a0", container: "app"),
                     cgroupPath: "/kubepods/poda0/a0")
let podA1 = Identity(workload: "shop/web/app",
                     container: ContainerInfo(id: String(repeating: "a1", count: 32), runtime: .containerd, name: "app", image: "web:1"),
                     pod: PodInfo(namespace: "shop", name: "web-1", uid: "uid-a1", container: "app"),
                     cgroupPath: "/kubepods/poda1/a1")
let podB = Identity(workload: "billing/api/api",
                    container: ContainerInfo(id: String(repeating: "b7", count: 32), runtime: .crio, name: "api", image: nil),
                    pod: PodInfo(namespace: "billing", name: "web-0", uid: "uid-b", container: "api"))
let dockerC = Identity(workload: "redis",
                       container: ContainerInfo(id: String(repeating: "c3", count: 32), runtime: .docker, name: "redis", image: "redis:7"))
let host = Identity(workload: "/system.slice/sshd.service", cgroupPath: "/system.slice/sshd.service")
let allIdentities = [podA0, podA1, podB, dockerC, host, Identity.unknown]

func ip(_ s: String) -> IPAddress { IPAddress(s)! }

/// A connection; `local` and `peer` are the two sides, whatever the direction.
func connection(_ time: Int64, _ direction: ConnectionEvent.Direction = .connect, local: String = "10.0.0.5",
                localPort: UInt16 = 40_000, peer: String = "10.9.0.1", peerPort: UInt16 = 443,
                outcome: ConnectionEvent.Outcome = .established, identity: Identity = podA0,
                verdict: Verdict = .allowed, pid: UInt32 = 100, comm: String = "curl",
                peerWorkload: String? = nil) -> StoredConnection {
    let accept = direction == .accept
    let event = ConnectionEvent(
        timeNanoseconds: time, direction: direction, outcome: outcome, error: outcome == .failed ? 111 : 0,
        pid: pid, comm: comm, uid: 1000, cgroupID: 0xffff_ffff_ffff_fff0, netns: 4_026_531_840,
        source: accept ? ip(peer) : ip(local), sourcePort: accept ? peerPort : localPort,
        destination: accept ? ip(local) : ip(peer), destinationPort: accept ? localPort : peerPort,
        hook: .fentry, processKnown: pid != 0)
    return StoredConnection(event: event, identity: identity, verdict: verdict, peerWorkload: peerWorkload)
}

/// Deterministic pseudo-random numbers (xorshift).
struct Rng {
    var s: UInt64
    init(_ seed: UInt64) { s = seed | 1 }
    mutating func next() -> UInt64 { s ^= s << 13; s ^= s >> 7; s ^= s << 17; return s }
    mutating func below(_ n: Int) -> Int { Int(next() % UInt64(n)) }
    mutating func pick<T>(_ a: [T]) -> T { a[below(a.count)] }
}

/// A varied data set: every field the filters look at takes several values.
func dataset(count: Int, seed: UInt64 = 42) -> [StoredConnection] {
    var rng = Rng(seed)
    let peers = ["10.9.0.1", "10.9.7.200", "10.10.0.1", "192.168.1.20", "8.8.8.8", "fd00::1", "fd00::abcd", "2001:db8::5", "127.0.0.1"]
    let locals4 = ["10.0.0.5", "10.0.0.6"]
    let ports: [UInt16] = [22, 53, 80, 443, 5432, 8080]
    var out: [StoredConnection] = []
    var t = base
    for _ in 0..<count {
        t += Int64(rng.below(3)) * second  // some equal times: order falls back to id
        let peer = rng.pick(peers)
        let local = peer.contains(":") ? (peer == "fd00::1" ? "fd00::2" : "fd00::9") : rng.pick(locals4)
        out.append(connection(
            t, rng.below(2) == 0 ? .connect : .accept, local: local, localPort: rng.pick(ports + [40_001, 40_002]),
            peer: peer, peerPort: rng.pick(ports + [50_000]), outcome: rng.below(5) == 0 ? .failed : .established,
            identity: rng.pick(allIdentities), verdict: rng.pick(Verdict.allCases),
            pid: UInt32(rng.below(4)), comm: rng.pick(["curl", "nginx", "psql"])))
    }
    return out
}

/// What a query should return, worked out the slow and obvious way.
func expected(_ all: [StoredConnection], _ q: ConnectionQuery) -> [StoredConnection] {
    var rows = all.filter { c in
        let e = c.event
        if let s = q.since, e.timeNanoseconds < s { return false }
        if let u = q.until, e.timeNanoseconds >= u { return false }
        if let w = q.workload, c.identity.workload != w { return false }
        if let name = q.container {
            guard let ct = c.identity.container, ct.name == name || ct.id.hasPrefix(name) else { return false }
        }
        if let ns = q.namespace, c.identity.pod?.namespace != ns { return false }
        if let pod = q.pod {
            guard let p = c.identity.pod else { return false }
            if pod.contains("/") {
                if "\(p.namespace)/\(p.name)" != pod { return false }
            } else if p.name != pod {
                return false
            }
        }
        if let port = q.port, Int(e.sourcePort) != port && Int(e.destinationPort) != port { return false }
        if let cidr = q.peer, !cidr.contains(e.peer) { return false }
        if let d = q.direction, e.direction != d { return false }
        if let v = q.verdict, c.verdict != v { return false }
        if let a = q.afterID, c.id! <= a { return false }
        return true
    }
    if q.afterID != nil {
        rows.sort { $0.id! < $1.id! }
    } else {
        rows.sort { ($0.event.timeNanoseconds, $0.id!) < ($1.event.timeNanoseconds, $1.id!) }
    }
    if let n = q.last { rows = Array(rows.suffix(n)) }
    return rows
}

/// The data set with the ids the store gave, in append order.
func numbered(_ batch: [StoredConnection], _ ids: ClosedRange<Int64>?) -> [StoredConnection] {
    guard let ids else { return [] }
    XCTAssertEqual(ids.count, batch.count)
    return zip(batch, ids).map { c, id in
        var c = c
        c.id = id
        return c
    }
}
