import BPFKit
import ConnGuardCore
import ConnGuardEnforcer
import Foundation
import Glibc
import ConnGuardTestSupport
import XCTest

/// Privileged: real programs attached to a cgroup subtree of the test's own,
/// real processes in child cgroups, real connections on loopback.
final class EnforcerTests: XCTestCase {
    let client: UInt32 = 1
    let server: UInt32 = 2

    /// Outbound, IPv4: inside the baseline connects; outside fails with EPERM
    /// and is reported with full attribution; the test process, outside the
    /// subtree, is never affected.
    func testEnforceDeniesConnectOutsideBaselineIPv4() throws {
        try outboundDenial(address: "127.0.0.1", cidr: "127.0.0.1/32")
    }

    func testEnforceDeniesConnectOutsideBaselineIPv6() throws {
        try outboundDenial(address: "::1", cidr: "::1/128")
    }

    private func outboundDenial(address: String, cidr: String) throws {
        try requireRoot()
        let box = try EnforceSandbox()
        defer { box.cleanup() }
        let a = try Net.listener(address: address)
        let b = try Net.listener(address: address)
        defer { close(a.fd); close(b.fd) }
        let cg = try box.child("client")

        let enforcer = try box.open()
        XCTAssertFalse(enforcer.adopted)
        let denials = try enforcer.denialReader()
        try enforcer.setPolicy(cgroupID: cg.id, workloadID: client, mode: .enforce)
        try enforcer.add(EnforcementRule(workloadID: client, direction: .connect, port: a.port, peer: .cidr(CIDR(cidr)!)))

        let allowed = try box.connect(from: cg.path, to: address, port: a.port)
        XCTAssertTrue(allowed.ok, "connect to the baseline's port: \(allowed)")
        let refused = try box.connect(from: cg.path, to: address, port: b.port)
        XCTAssertFalse(refused.ok)
        XCTAssertEqual(refused.errno, EPERM, "connect outside the baseline fails with EPERM, got \(refused)")
        XCTAssertEqual(refused.exception, "PermissionError")

        // Outside the watched subtree nothing is enforced.
        XCTAssertEqual(try Net.connect(address: address, port: b.port), 0)

        let events = try waitForDenials(denials) { $0.contains { $0.pid == UInt32(refused.pid) } }
        let e = try XCTUnwrap(events.first { $0.pid == UInt32(refused.pid) }, "denial event of pid \(refused.pid) in \(events)")
        XCTAssertEqual(e.outcome, .denied)
        XCTAssertEqual(e.direction, .connect)
        XCTAssertEqual(e.hook, .cgroupConnect)
        XCTAssertEqual(e.error, EPERM)
        XCTAssertEqual(e.comm, "python3")
        XCTAssertEqual(e.uid, getuid())
        XCTAssertEqual(e.cgroupID, cg.id)
        XCTAssertEqual(e.destination, IPAddress(address))
        XCTAssertEqual(e.destinationPort, b.port)
        XCTAssertNotEqual(e.netns, 0)
        XCTAssertTrue(e.processKnown)
        XCTAssertEqual(events.filter { $0.destinationPort == a.port }.count, 0, "an allowed connect is not a denial")

        let counts = try enforcer.decisionCounts()
        XCTAssertGreaterThanOrEqual(counts.connect.allowed, 1)
        XCTAssertGreaterThanOrEqual(counts.connect.denied, 1)
        XCTAssertEqual(try enforcer.dropCounts().lostDenials, 0)
    }

    /// Learn and monitor: the kernel lets everything through and reports nothing.
    func testLearnAndMonitorAllowEverything() throws {
        try requireRoot()
        let box = try EnforceSandbox()
        defer { box.cleanup() }
        let a = try Net.listener(address: "127.0.0.1")
        let b = try Net.listener(address: "127.0.0.1")
        defer { close(a.fd); close(b.fd) }
        let cg = try box.child("client")
        let enforcer = try box.open()
        let denials = try enforcer.denialReader()
        try enforcer.add(EnforcementRule(workloadID: client, direction: .connect, port: a.port, peer: .cidr(CIDR("127.0.0.1")!)))

        // Nothing enforced yet: no program is attached, so the subtree pays
        // nothing for enforcement.
        for mode in [Mode.learn, .monitor] {
            try enforcer.setPolicy(cgroupID: cg.id, workloadID: client, mode: mode)
            XCTAssertFalse(enforcer.hooksAttached, "\(mode)")
            XCTAssertEqual(BPFSystem.links().filter { $0.attached && $0.cgroupID == box.rootID }, [], "\(mode)")
            XCTAssertTrue(try box.connect(from: cg.path, to: "127.0.0.1", port: a.port).ok, "\(mode)")
            XCTAssertTrue(try box.connect(from: cg.path, to: "127.0.0.1", port: b.port).ok, "\(mode): outside the baseline, still allowed")
        }
        // Another cgroup enforced: the programs are attached, and still decide
        // learn and monitor as allowed.
        let other = try box.child("enforced")
        try enforcer.setPolicy(cgroupID: other.id, workloadID: client, mode: .enforce)
        XCTAssertTrue(enforcer.hooksAttached)
        XCTAssertEqual(BPFSystem.links().filter { $0.attached && $0.cgroupID == box.rootID }.count, 7)
        for mode in [Mode.learn, .monitor] {
            try enforcer.setPolicy(cgroupID: cg.id, workloadID: client, mode: mode)
            XCTAssertTrue(try box.connect(from: cg.path, to: "127.0.0.1", port: a.port).ok, "\(mode)")
            XCTAssertTrue(try box.connect(from: cg.path, to: "127.0.0.1", port: b.port).ok, "\(mode): outside the baseline, still allowed")
        }
        XCTAssertEqual(try box.connect(from: other.path, to: "127.0.0.1", port: b.port).errno, EPERM)
        XCTAssertEqual(try denials.poll(timeoutMilliseconds: 200).filter { $0.cgroupID == cg.id }, [])
        XCTAssertGreaterThanOrEqual(try enforcer.decisionCounts().connect.notEnforced, 4)
        XCTAssertEqual(try enforcer.decisionCounts().connect.denied, 1)
    }

    /// When the last cgroup leaves enforce mode, the programs can be
    /// detached (pins too); the next enforce policy attaches them again and
    /// is enforced at once. Never while a cgroup is enforced.
    func testProgramsAreReleasedWhenNothingIsEnforced() throws {
        try requireRoot()
        let box = try EnforceSandbox()
        defer { box.cleanup() }
        let b = try Net.listener(address: "127.0.0.1")
        defer { close(b.fd) }
        let cg = try box.child("client")
        let other = try box.child("other")
        let enforcer = try box.open()
        try enforcer.setPolicy(cgroupID: cg.id, workloadID: client, mode: .enforce)
        try enforcer.setPolicy(cgroupID: other.id, workloadID: client, mode: .enforce)
        XCTAssertEqual(try box.connect(from: cg.path, to: "127.0.0.1", port: b.port).errno, EPERM)

        try enforcer.setPolicy(cgroupID: cg.id, workloadID: client, mode: .monitor)
        XCTAssertFalse(try enforcer.releaseProgramsIfUnused(), "another cgroup is still enforced")
        XCTAssertEqual(try box.connect(from: other.path, to: "127.0.0.1", port: b.port).errno, EPERM)

        XCTAssertTrue(try enforcer.removePolicy(cgroupID: other.id))
        XCTAssertTrue(try enforcer.releaseProgramsIfUnused())
        XCTAssertFalse(enforcer.hooksAttached)
        XCTAssertEqual(BPFSystem.links().filter { $0.attached && $0.cgroupID == box.rootID }, [])
        XCTAssertNotEqual(access("\(box.pinRoot)/link_cg_enf_connect4", F_OK), 0, "link pins removed")
        XCTAssertEqual(access("\(box.pinRoot)/cgroup_policy", F_OK), 0, "maps stay pinned")
        XCTAssertTrue(try box.connect(from: cg.path, to: "127.0.0.1", port: b.port).ok)

        try enforcer.setPolicy(cgroupID: cg.id, workloadID: client, mode: .enforce)
        XCTAssertTrue(enforcer.hooksAttached)
        XCTAssertEqual(try box.connect(from: cg.path, to: "127.0.0.1", port: b.port).errno, EPERM)
    }

    /// A cgroup with no policy is allowed, unless the operator asked for deny.
    func testUnknownCgroupIsAllowedUnlessDenyIsAsked() throws {
        try requireRoot()
        let box = try EnforceSandbox()
        defer { box.cleanup() }
        let a = try Net.listener(address: "127.0.0.1")
        defer { close(a.fd) }
        let cg = try box.child("stranger")
        do {
            let enforcer = try box.open()
            // With the programs attached (a cgroup in enforce mode), an
            // unknown cgroup is still allowed.
            try enforcer.setPolicy(cgroupID: try box.child("enforced").id, workloadID: client, mode: .enforce)
            XCTAssertTrue(try box.connect(from: cg.path, to: "127.0.0.1", port: a.port).ok)
            XCTAssertGreaterThanOrEqual(try enforcer.decisionCounts().connect.unknownCgroup, 1)
            try enforcer.close(failOpen: true)
        }
        // The operator's explicit `--unknown deny`: attached from the start.
        let strict = try box.open(unknown: .deny)
        XCTAssertTrue(strict.hooksAttached)
        let denials = try strict.denialReader()
        let r = try box.connect(from: cg.path, to: "127.0.0.1", port: a.port)
        XCTAssertEqual(r.errno, EPERM)
        let events = try waitForDenials(denials) { !$0.isEmpty }
        XCTAssertEqual(events.first?.cgroupID, cg.id)
        // Still nothing outside the subtree.
        XCTAssertEqual(try Net.connect(address: "127.0.0.1", port: a.port), 0)
    }

    /// Inbound: a SYN from a peer outside the accept rules is dropped (the
    /// client times out, the server never accepts) and reported against the
    /// server; a CIDR rule covering the peer lets it in. IPv4 and IPv6.
    func testInboundSynOutsideBaselineIsDropped() throws {
        try requireRoot()
        let box = try EnforceSandbox()
        defer { box.cleanup() }
        let cg = try box.child("server")
        let enforcer = try box.open()
        let denials = try enforcer.denialReader()
        try enforcer.setPolicy(cgroupID: cg.id, workloadID: server, mode: .enforce)

        // A block, not the one address: a local client is never admitted by
        // an inbound rule on an address every local process shares
        // (testLocalPeersAreNamedByTheirCgroup).
        for (address, cidr) in [("127.0.0.1", "127.0.0.0/8"), ("::1", "::/127")] {
            // Bound after attach, so the kernel knows who bound it.
            let srv = try box.server(in: cg.path, address: address)
            // A rule for this port, but for another network.
            try enforcer.add(EnforcementRule(workloadID: server, direction: .accept, port: srv.port, peer: .cidr(CIDR(address.contains(":") ? "fd00::/8" : "10.0.0.0/8")!)))

            let r = try box.connect(from: nil, to: address, port: srv.port, timeout: 1.5)
            XCTAssertFalse(r.ok, "\(address): a SYN outside the baseline must not be answered")
            XCTAssertEqual(r.exception, "TimeoutError", "\(address): the client times out, got \(r)")
            XCTAssertNil(srv.child.readLine(timeout: 0.5), "\(address): the server never accepts it")

            let events = try waitForDenials(denials) { $0.contains { $0.destinationPort == srv.port } }
            let e = try XCTUnwrap(events.first { $0.destinationPort == srv.port }, "\(address): denial in \(events)")
            XCTAssertEqual(e.direction, .accept)
            XCTAssertEqual(e.outcome, .denied)
            XCTAssertEqual(e.hook, .cgroupSKB)
            XCTAssertEqual(e.cgroupID, cg.id)
            XCTAssertEqual(e.pid, UInt32(srv.pid), "the server is named")
            XCTAssertEqual(e.comm, "python3")
            XCTAssertEqual(e.source, IPAddress(address), "the remote is the source")
            XCTAssertEqual(e.destination, IPAddress(address))
            XCTAssertNotEqual(e.sourcePort, 0)
            XCTAssertNotEqual(e.netns, 0)

            // The CIDR rule covering loopback lets the next one in.
            try enforcer.add(EnforcementRule(workloadID: server, direction: .accept, port: srv.port, peer: .cidr(CIDR(cidr)!)))
            XCTAssertTrue(try box.connect(from: nil, to: address, port: srv.port).ok, "\(address) with \(cidr)")
            XCTAssertEqual(srv.child.readLine(timeout: 3)?.hasPrefix("accepted"), true)
        }
        let counts = try enforcer.decisionCounts()
        XCTAssertGreaterThanOrEqual(counts.accept.denied, 2)
        XCTAssertGreaterThanOrEqual(counts.accept.allowed, 2)
    }

    /// Rules whose peer is a workload follow that workload's addresses (a
    /// peer that is not a socket of this node: nothing listens at the
    /// address, so a connect the kernel lets through is refused by TCP,
    /// ECONNREFUSED, not EPERM).
    func testPeerWorkloadRuleFollowsPeerAddresses() throws {
        try requireRoot()
        let box = try EnforceSandbox()
        defer { box.cleanup() }
        let peerAddress = "127.0.0.2"
        let (probe, port) = try Net.listener(address: peerAddress)  // a free port, then nobody listens
        close(probe)
        let cg = try box.child("client")
        let enforcer = try box.open()
        try enforcer.setPolicy(cgroupID: cg.id, workloadID: client, mode: .enforce)
        try enforcer.add(EnforcementRule(workloadID: client, direction: .connect, port: port, peer: .workload(7)))

        XCTAssertEqual(try box.connect(from: cg.path, to: peerAddress, port: port).errno, EPERM, "address not yet known as workload 7")
        try enforcer.setPeerAddress(IPAddress(peerAddress)!, workloadID: 7)
        XCTAssertEqual(try box.connect(from: cg.path, to: peerAddress, port: port).errno, ECONNREFUSED, "let through")
        XCTAssertEqual(try enforcer.peerAddresses(), [IPAddress(peerAddress)!: 7])
        XCTAssertTrue(try enforcer.removePeerAddress(IPAddress(peerAddress)!))
        XCTAssertEqual(try box.connect(from: cg.path, to: peerAddress, port: port).errno, EPERM)
    }

    /// Peers on this node, in the same network namespace, are named by their
    /// cgroup, never by 127.0.0.1 or ::1, which every local process shares:
    /// an enforced server admits the local clients whose workload its
    /// baseline names, drops the others (the denial names the client's
    /// cgroup), and an inbound rule on the one shared address admits no one;
    /// an enforced client may connect to the local listener of a workload it
    /// has a rule for, and not to another's.
    func testLocalPeersAreNamedByTheirCgroup() throws {
        try requireRoot()
        let box = try EnforceSandbox()
        defer { box.cleanup() }
        let srv = try box.child("server"), known = try box.child("known"), other = try box.child("other")
        let stranger = try box.child("stranger")  // no policy at all
        let knownID: UInt32 = 11, otherID: UInt32 = 12
        let enforcer = try box.open()
        let denials = try enforcer.denialReader()
        try enforcer.setPolicy(cgroupID: srv.id, workloadID: server, mode: .enforce)
        try enforcer.setPolicy(cgroupID: known.id, workloadID: knownID, mode: .learn)
        try enforcer.setPolicy(cgroupID: other.id, workloadID: otherID, mode: .learn)

        for address in ["127.0.0.1", "::1"] {
            let s = try box.server(in: srv.path, address: address)
            try enforcer.add(EnforcementRule(workloadID: server, direction: .accept, port: s.port, peer: .workload(knownID)))
            XCTAssertTrue(try box.connect(from: known.path, to: address, port: s.port).ok, "\(address): the learnt workload gets in")
            XCTAssertEqual(s.child.readLine(timeout: 3)?.hasPrefix("accepted"), true)
            for refused in [other, stranger] {
                let r = try box.connect(from: refused.path, to: address, port: s.port, timeout: 1)
                XCTAssertEqual(r.exception, "TimeoutError", "\(address): another local workload is dropped, got \(r)")
                let mine = { (e: ConnectionEvent) in e.peerCgroupID == refused.id && e.destinationPort == s.port }
                let events = try waitForDenials(denials) { $0.contains(where: mine) }
                let e = try XCTUnwrap(events.first(where: mine), "\(address): denial naming the client's cgroup")
                XCTAssertEqual(e.direction, .accept)
                XCTAssertEqual(e.cgroupID, srv.id)
                XCTAssertEqual(e.destinationPort, s.port)
            }
            // The shared address admits no local peer; a block still does.
            try enforcer.add(EnforcementRule(workloadID: server, direction: .accept, port: s.port,
                                             peer: .cidr(CIDR(address == "::1" ? "::1/128" : "127.0.0.1/32")!)))
            XCTAssertFalse(try box.connect(from: other.path, to: address, port: s.port, timeout: 1).ok, "\(address): exact rule")
            try enforcer.add(EnforcementRule(workloadID: server, direction: .accept, port: s.port,
                                             peer: .cidr(CIDR(address == "::1" ? "::/127" : "127.0.0.0/8")!)))
            XCTAssertTrue(try box.connect(from: other.path, to: address, port: s.port).ok, "\(address): a block admits")
            s.child.stop()
        }

        // Outbound to a loopback address: by the listener's workload.
        let peer = try box.child("peer")
        let peerID: UInt32 = 13
        try enforcer.setPolicy(cgroupID: peer.id, workloadID: peerID, mode: .learn)
        try enforcer.setPolicy(cgroupID: known.id, workloadID: knownID, mode: .enforce)
        let mine = try box.server(in: peer.path, address: "127.0.0.1")
        let theirs = try box.server(in: other.path, address: "127.0.0.1")
        try enforcer.add(EnforcementRule(workloadID: knownID, direction: .connect, port: mine.port, peer: .workload(peerID)))
        try enforcer.add(EnforcementRule(workloadID: knownID, direction: .connect, port: theirs.port, peer: .workload(peerID)))
        XCTAssertTrue(try box.connect(from: known.path, to: "127.0.0.1", port: mine.port).ok, "the server it has a rule for")
        XCTAssertEqual(try box.connect(from: known.path, to: "127.0.0.1", port: theirs.port).errno, EPERM,
                       "the same port rule, but another workload listens there")
        let events = try waitForDenials(denials) { $0.contains { $0.direction == .connect } }
        XCTAssertEqual(events.first { $0.direction == .connect }?.peerCgroupID, other.id, "the denial names the listener's cgroup")
    }

    /// A policy on a parent cgroup covers a container cgroup made under it
    /// later, from its first connect (resolution by ancestry in the kernel).
    func testPolicyOfParentCoversNewChildFromFirstConnect() throws {
        try requireRoot()
        let box = try EnforceSandbox()
        defer { box.cleanup() }
        let b = try Net.listener(address: "127.0.0.1")
        defer { close(b.fd) }
        let pod = try box.child("pod")
        let enforcer = try box.open()
        try enforcer.setPolicy(cgroupID: pod.id, workloadID: client, mode: .enforce)
        let denials = try enforcer.denialReader()

        let ctr = try box.child("pod/ctr")
        let sub = try box.child("pod/ctr/sub")
        XCTAssertEqual(try box.connect(from: ctr.path, to: "127.0.0.1", port: b.port).errno, EPERM)
        XCTAssertEqual(try box.connect(from: sub.path, to: "127.0.0.1", port: b.port).errno, EPERM)
        let events = try waitForDenials(denials) { $0.count >= 2 }
        XCTAssertEqual(Set(events.map(\.cgroupID)), [ctr.id, sub.id], "the event names the process's own cgroup")

        // A policy of its own wins over the parent's, and the nearest
        // ancestor's over a farther one's.
        try enforcer.setPolicy(cgroupID: ctr.id, workloadID: client, mode: .monitor)
        XCTAssertTrue(try box.connect(from: ctr.path, to: "127.0.0.1", port: b.port).ok)
        XCTAssertTrue(try box.connect(from: sub.path, to: "127.0.0.1", port: b.port).ok, "ctr's policy, not pod's, covers ctr/sub")
        XCTAssertEqual(try box.connect(from: pod.path, to: "127.0.0.1", port: b.port).errno, EPERM)
    }

    /// New cgroups in the subtree are reported at once on the enforcer's own
    /// ring buffer (those outside it are not), and an armed one is enforced
    /// from its first connect. Prints the creation-to-armed latency.
    func testNewCgroupsAreReportedAndArmedBeforeTheirFirstConnect() throws {
        try requireRoot()
        let box = try EnforceSandbox()
        defer { box.cleanup() }
        let b = try Net.listener(address: "127.0.0.1")
        defer { close(b.fd) }
        let enforcer = try box.open()
        let births = try enforcer.watchNewCgroups()
        let outside = try box.outsider()

        var armedIDs: Set<UInt64> = []
        let n = 50
        var made: [UInt64] = []
        for i in 0..<n {
            made.append(try box.child("ctr-\(i)").id)
            let deadline = Date().addingTimeInterval(5)
            while !armedIDs.contains(made[i]) && Date() < deadline {
                for c in try births.poll(timeoutMilliseconds: 100) {
                    XCTAssertNotEqual(c.cgroupID, cgroupID(outside), "a cgroup outside the subtree is not reported")
                    try enforcer.arm(cgroupID: c.cgroupID, workloadID: client, mode: .enforce, createdAtWallNanoseconds: c.timeNanoseconds)
                    armedIDs.insert(c.cgroupID)
                    XCTAssertTrue(c.path.hasSuffix("/ctr-\(i)"), c.path)
                }
            }
        }
        XCTAssertEqual(Set(made), armedIDs)
        let latency = try XCTUnwrap(enforcer.armingLatency())
        print("arming latency (cgroup_mkdir -> policy inserted, \(n) cgroups, test thread polling): \(latency)")
        XCTAssertLessThan(latency.medianNanoseconds, 100_000_000)
        // The first process of an armed cgroup is under its policy.
        XCTAssertEqual(try box.connect(from: box.root + "/ctr-0", to: "127.0.0.1", port: b.port).errno, EPERM)
        XCTAssertEqual(try enforcer.dropCounts().lostNewCgroups, 0)
    }

    /// Pinned state enforces with no agent; the next agent adopts it, policy
    /// and all; fail-open removes everything.
    func testEnforcementOutlivesTheAgentAndIsAdopted() throws {
        try requireRoot()
        let box = try EnforceSandbox()
        defer { box.cleanup() }
        let a = try Net.listener(address: "127.0.0.1")
        let b = try Net.listener(address: "127.0.0.1")
        defer { close(a.fd); close(b.fd) }
        let cg = try box.child("client")
        let rule = EnforcementRule(workloadID: client, direction: .connect, port: a.port, peer: .cidr(CIDR("127.0.0.0/8")!))

        var programIDs: [UInt32] = []
        do {
            let first = try box.open()
            try first.setPolicy(cgroupID: cg.id, workloadID: client, mode: .enforce)
            try first.add(rule)
            try first.close(failOpen: false)
            box.release(first)
        }
        // No Enforcer object is alive: the kernel enforces on its own.
        for name in ["link_cg_enf_connect4", "link_cg_enf_ingress", "cgroup_policy", "rules_cidr", "denials"] {
            XCTAssertEqual(access("\(box.pinRoot)/\(name)", F_OK), 0, "\(name) stays pinned")
        }
        let whileAway = try box.connect(from: cg.path, to: "127.0.0.1", port: b.port)
        XCTAssertEqual(whileAway.errno, EPERM, "still enforced with no agent")
        XCTAssertTrue(try box.connect(from: cg.path, to: "127.0.0.1", port: a.port).ok)

        let second = try box.open()
        XCTAssertTrue(second.adopted)
        XCTAssertEqual(try second.policy(cgroupID: cg.id), CgroupPolicy(workloadID: client, mode: .enforce))
        XCTAssertEqual(try second.rules(workloadID: client), [rule])
        // The denial made while no agent ran waited in the pinned ring buffer.
        let events = try waitForDenials(try second.denialReader()) { $0.contains { $0.pid == UInt32(whileAway.pid) } }
        XCTAssertTrue(events.contains { $0.pid == UInt32(whileAway.pid) }, "denial from the gap: \(events)")
        XCTAssertEqual(try box.connect(from: cg.path, to: "127.0.0.1", port: b.port).errno, EPERM)
        programIDs = BPFSystem.links().filter { $0.cgroupID == box.rootID }.map(\.programID)
        XCTAssertEqual(programIDs.count, 7, "one link per program, not a second set")

        try second.close(failOpen: true)
        XCTAssertNotEqual(access(box.pinRoot, F_OK), 0, "pin root removed")
        XCTAssertEqual(BPFSystem.links().filter { $0.attached && $0.cgroupID == box.rootID }, [], "no link of ours remains attached")
        XCTAssertEqual(BPFSystem.linksOfPrograms(programIDs).filter { id in BPFSystem.links().contains { $0.id == id && $0.attached } }, [])
        XCTAssertTrue(try box.connect(from: cg.path, to: "127.0.0.1", port: b.port).ok, "fail-open: nothing enforced")
    }

    /// The kill-switch removes every link and pin, with no agent running.
    func testKillSwitchRemovesEverything() throws {
        try requireRoot()
        let box = try EnforceSandbox()
        defer { box.cleanup() }
        let b = try Net.listener(address: "127.0.0.1")
        defer { close(b.fd) }
        let cg = try box.child("client")
        do {
            let e = try box.open()
            try e.setPolicy(cgroupID: cg.id, workloadID: client, mode: .enforce)
            try e.close(failOpen: false)
            box.release(e)
        }
        XCTAssertEqual(try box.connect(from: cg.path, to: "127.0.0.1", port: b.port).errno, EPERM)

        let report = try Enforcer.removeAll(pinRoot: box.pinRoot)
        XCTAssertEqual(report.detachedLinks.count, 7, "\(report)")
        XCTAssertEqual(report.removedPins.count, 19, "7 links and 12 maps: \(report)")
        XCTAssertNotEqual(access(box.pinRoot, F_OK), 0)
        XCTAssertEqual(BPFSystem.links().filter { $0.attached && $0.programName.hasPrefix(Enforcer.programPrefix) }, [])
        XCTAssertTrue(try box.connect(from: cg.path, to: "127.0.0.1", port: b.port).ok)
        XCTAssertTrue(try Enforcer.removeAll(pinRoot: box.pinRoot).isEmpty, "a second run finds nothing")
    }

    /// The operator's command does the same, with no Swift object of ours around.
    func testKillSwitchCommand() throws {
        try requireRoot()
        let binary = productsDirectory() + "/connguard"
        guard access(binary, X_OK) == 0 else { throw XCTSkip("\(binary) not built (swift build --build-tests builds it)") }
        let box = try EnforceSandbox()
        defer { box.cleanup() }
        let b = try Net.listener(address: "127.0.0.1")
        defer { close(b.fd) }
        let cg = try box.child("client")
        do {
            let e = try box.open()
            try e.setPolicy(cgroupID: cg.id, workloadID: client, mode: .enforce)
            try e.close(failOpen: false)
            box.release(e)
        }
        XCTAssertEqual(try box.connect(from: cg.path, to: "127.0.0.1", port: b.port).errno, EPERM)
        let cmd = try Child(binary, ["kill-switch", "--pin-root", box.pinRoot])
        cmd.process.waitUntilExit()
        let out = String(decoding: cmd.stdout.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        XCTAssertEqual(cmd.process.terminationStatus, 0)
        XCTAssertEqual(out.split(separator: "\n").filter { $0.hasPrefix("detached ") }.count, 7, out)
        XCTAssertNotEqual(access(box.pinRoot, F_OK), 0)
        XCTAssertTrue(try box.connect(from: cg.path, to: "127.0.0.1", port: b.port).ok)
    }

    /// A live agent's enforcer also loses its links to the kill-switch sweep.
    func testKillSwitchSweepsLinksOfARunningEnforcer() throws {
        try requireRoot()
        let box = try EnforceSandbox()
        defer { box.cleanup() }
        let b = try Net.listener(address: "127.0.0.1")
        defer { close(b.fd) }
        let cg = try box.child("client")
        let e = try box.open()
        try e.setPolicy(cgroupID: cg.id, workloadID: client, mode: .enforce)
        // The sweep finds enforcement links by program name, whatever pin root or process holds them.
        _ = try Enforcer.removeAll(pinRoot: "/nonexistent-\(getpid())", sweepUnpinnedLinks: true)
        XCTAssertTrue(try box.connect(from: cg.path, to: "127.0.0.1", port: b.port).ok)
    }

    /// Rules read back as they were written; replace adds and removes exactly the difference.
    func testRulesRoundTripAndReplace() throws {
        try requireRoot()
        let box = try EnforceSandbox()
        defer { box.cleanup() }
        let e = try box.open()
        let rules: Set<EnforcementRule> = [
            EnforcementRule(workloadID: 5, direction: .connect, port: 443, peer: .cidr(CIDR("10.0.0.0/8")!)),
            EnforcementRule(workloadID: 5, direction: .connect, port: 53, peer: .cidr(CIDR("10.1.2.3")!)),
            EnforcementRule(workloadID: 5, direction: .accept, port: 8080, peer: .cidr(CIDR("fd00:1::/64")!)),
            EnforcementRule(workloadID: 5, direction: .accept, port: 8080, peer: .cidr(CIDR("0.0.0.0/0")!)),
            EnforcementRule(workloadID: 5, direction: .connect, port: 5432, peer: .workload(9)),
        ]
        let other = EnforcementRule(workloadID: 6, direction: .connect, port: 443, peer: .cidr(CIDR("10.0.0.0/8")!))
        try e.add(other)
        XCTAssertEqual(try e.replaceRules(workloadID: 5, with: rules).added, 5)
        XCTAssertEqual(try e.rules(workloadID: 5), rules)
        var next = rules
        next.remove(EnforcementRule(workloadID: 5, direction: .connect, port: 53, peer: .cidr(CIDR("10.1.2.3")!)))
        next.insert(EnforcementRule(workloadID: 5, direction: .connect, port: 53, peer: .cidr(CIDR("10.1.2.4")!)))
        let r = try e.replaceRules(workloadID: 5, with: next)
        XCTAssertEqual(r.added, 1)
        XCTAssertEqual(r.removed, 1)
        XCTAssertEqual(try e.rules(workloadID: 5), next)
        XCTAssertEqual(try e.rules(workloadID: 6), [other], "another workload's rules are untouched")
        XCTAssertThrowsError(try e.replaceRules(workloadID: 5, with: [other]))
    }
}

/// Refusals that must come before anything is loaded. No root needed.
final class EnforcerSafetyTests: XCTestCase {
    func testAttachAtTheCgroupRootNeedsAllowRoot() throws {
        guard let mount = CgroupMount.find() else { throw XCTSkip("no cgroup v2 mount") }
        XCTAssertThrowsError(try Enforcer.open(cgroupPath: mount, pinRoot: "/sys/fs/bpf/connguard-never")) { error in
            guard case EnforcerError.rootAttachRefused = error else { return XCTFail("\(error)") }
            XCTAssertTrue("\(error)".contains("allowRoot"))
        }
        XCTAssertThrowsError(try Enforcer.open(cgroupPath: mount + "/.", pinRoot: "/sys/fs/bpf/connguard-never")) { error in
            guard case EnforcerError.rootAttachRefused = error else { return XCTFail("\(error)") }
        }
        XCTAssertNotEqual(access("/sys/fs/bpf/connguard-never", F_OK), 0, "nothing was made")
    }

    func testNonCgroupPathAndMissingBPFFSAreNamed() throws {
        XCTAssertThrowsError(try Enforcer.open(cgroupPath: "/tmp", pinRoot: "/sys/fs/bpf/connguard-never")) { error in
            guard case EnforcerError.notACgroup2Directory("/tmp") = error else { return XCTFail("\(error)") }
        }
        try requireRoot()
        let box = try EnforceSandbox()
        defer { box.cleanup() }
        XCTAssertThrowsError(try Enforcer.open(cgroupPath: box.root, pinRoot: "/tmp/connguard-pins-\(getpid())")) { error in
            guard case EnforcerError.bpffsNotMounted = error else { return XCTFail("\(error)") }
            XCTAssertTrue("\(error)".contains("mount -t bpf"))
        }
    }
}
