import ConnGuardCore
import Glibc
import XCTest

/// /proc/net/tcp{,6} parsing, and turning what it shows into the events of
/// the connections that were open before the tracer attached.
final class ProcNetTests: XCTestCase {
    // Copied from a 6.18 x86-64 machine: a listener on 127.0.0.1:59709 with
    // a connection to it (both ends), and a dual-stack listener on [::]:51407
    // that accepted one IPv4 connection (IPv4-mapped on its side) and one
    // IPv6 connection from ::1.
    let tcp = """
          sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
           1: 0100007F:E93D 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 118941911 1 000000008809b26b 100 0 0 10 0
           2: 0100007F:E93D 0100007F:9F9E 01 00000000:00000000 00:00000000 00000000     0        0 118941913 1 000000001d8d9a62 20 0 0 10 -1
           3: 0100007F:9F9E 0100007F:E93D 01 00000000:00000000 00:00000000 00000000     0        0 118941912 2 000000004cc9609b 20 0 0 10 -1
           4: 0100007F:CA48 0100007F:C8CF 01 00000000:00000000 00:00000000 00000000     0        0 118941914 2 0000000016aa3cb0 20 0 0 10 -1
        """
    let tcp6 = """
          sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
           0: 00000000000000000000000000000000:C8CF 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 118941910 1 00000000bd79b261 100 0 0 10 0
           1: 00000000000000000000000001000000:E39C 00000000000000000000000001000000:C8CF 01 00000000:00000000 00:00000000 00000000     0        0 118941916 2 0000000025709300 20 0 0 10 -1
           2: 00000000000000000000000001000000:C8CF 00000000000000000000000001000000:E39C 01 00000000:00000000 00:00000000 00000000     0        0 118941917 1 0000000014da776c 20 0 0 10 -1
           3: 0000000000000000FFFF00000100007F:C8CF 0000000000000000FFFF00000100007F:CA48 01 00000000:00000000 00:00000000 00000000     0        0 118941915 1 00000000e54899c9 20 0 0 10 -1
        """
    let loopback4 = IPAddress("127.0.0.1")!
    let loopback6 = IPAddress("::1")!

    func testIPv4Rows() {
        let s = ProcNetTCP.sockets(tcp)
        XCTAssertEqual(s.count, 4)
        XCTAssertEqual(s[0], ProcNetTCP.Socket(family: AF_INET, local: loopback4, localPort: 59709, remote: IPAddress("0.0.0.0")!,
                                               remotePort: 0, state: ProcNetTCP.State.listen, uid: 0, inode: 118941911))
        XCTAssertEqual(s[1], ProcNetTCP.Socket(family: AF_INET, local: loopback4, localPort: 59709, remote: loopback4,
                                               remotePort: 40862, state: ProcNetTCP.State.established, uid: 0, inode: 118941913))
        XCTAssertEqual(s[2].localPort, 40862)
        XCTAssertEqual(s[2].remotePort, 59709)
        XCTAssertEqual(s[3].remotePort, 51407)
        XCTAssertTrue(s.allSatisfy { $0.family == AF_INET && $0.local.family == .ipv4 })
    }

    func testIPv6RowsAndMappedAddresses() {
        let s = ProcNetTCP.sockets(tcp6)
        XCTAssertEqual(s.count, 4)
        XCTAssertEqual(s[0].local, IPAddress("::")!)
        XCTAssertEqual(s[0].local.family, .ipv6)
        XCTAssertEqual(s[0].localPort, 51407)
        XCTAssertEqual(s[0].state, ProcNetTCP.State.listen)
        XCTAssertEqual(s[1], ProcNetTCP.Socket(family: AF_INET6, local: loopback6, localPort: 58268, remote: loopback6,
                                               remotePort: 51407, state: ProcNetTCP.State.established, uid: 0, inode: 118941916))
        // An IPv4 connection accepted by the IPv6 socket: the socket stays
        // AF_INET6, its addresses read as IPv4.
        XCTAssertEqual(s[3].family, AF_INET6)
        XCTAssertEqual(s[3].local, loopback4)
        XCTAssertEqual(s[3].local.family, .ipv4)
        XCTAssertEqual(s[3].remote.description, "127.0.0.1")
        XCTAssertEqual(s[3].remotePort, 51784)
    }

    /// Loopback is nearly symmetric: addresses whose every byte differs show
    /// the word order. Rows written as the kernel prints them (each 32-bit
    /// word as a little-endian CPU loads it).
    func testByteOrderOfEachWord() {
        let v4 = ProcNetTCP.sockets("header\n 0: 0302010A:0050 0A0B0CC0:D431 01 0:0 0:0 0 1000 0 77 1\n")
        XCTAssertEqual(v4.first?.local.description, "10.1.2.3")
        XCTAssertEqual(v4.first?.localPort, 80)
        XCTAssertEqual(v4.first?.remote.description, "192.12.11.10")
        XCTAssertEqual(v4.first?.remotePort, 54321)
        XCTAssertEqual(v4.first?.uid, 1000)
        // 2001:db8::1 and fd00:1:2:3:4:5:6:7.
        let v6 = ProcNetTCP.sockets("""
            header
             0: B80D0120000000000000000001000000:01BB 010000FD030002000500040007000600:A000 01 0:0 0:0 0 0 0 78 1
            """)
        XCTAssertEqual(v6.first?.local.description, "2001:db8::1")
        XCTAssertEqual(v6.first?.localPort, 443)
        XCTAssertEqual(v6.first?.remote.description, "fd00:1:2:3:4:5:6:7")
        XCTAssertEqual(v6.first?.remotePort, 40960)
    }

    func testMalformedRowsAreSkipped() {
        let rows = [
            " 0: 0100007F:1F90 0100007F:8AE2 01 0:0 0:0 0 0 0 5",  // good
            " 1: 0100007F:1F90 0100007F:8AE2 01 0:0 0:0 0 0",  // too few fields
            " 2: 0100007F 0100007F:8AE2 01 0:0 0:0 0 0 0 5",  // no port
            " 3: 0100007:1F90 0100007F:8AE2 01 0:0 0:0 0 0 0 5",  // 7 digits
            " 4: 0100007G:1F90 0100007F:8AE2 01 0:0 0:0 0 0 0 5",  // not hex
            " 5: +100007F:1F90 0100007F:8AE2 01 0:0 0:0 0 0 0 5",  // a sign is not a digit
            " 6: 0100007F:1F90 00000000000000000000000001000000:8AE2 01 0:0 0:0 0 0 0 5",  // mixed families
            " 7: 0100007F:1F90 0100007F:8AE2 1 0:0 0:0 0 0 0 5",  // state is two digits
            " 8: 0100007F:1F90 0100007F:8AE2 01 0:0 0:0 0 x 0 5",  // uid
            " 9: 0100007F:1F90 0100007F:8AE2 01 0:0 0:0 0 0 0 -5",  // inode
            "",
        ]
        let s = ProcNetTCP.sockets("header\n" + rows.joined(separator: "\n"))
        XCTAssertEqual(s.map(\.inode), [5])
        XCTAssertEqual(ProcNetTCP.sockets(""), [])
    }

    func testRealUID() {
        XCTAssertEqual(ProcNetTCP.realUID(fromStatus: "Name:\tpython3\nUmask:\t0022\nUid:\t1000\t0\t0\t0\nGid:\t5\t5\t5\t5\n"), 1000)
        XCTAssertNil(ProcNetTCP.realUID(fromStatus: "Name:\tx\n"))
    }

    // MARK: - established connections

    let ns: UInt32 = 4026531840
    let owners: [UInt64: ProcNetTCP.Owner] = [
        118941913: .init(pid: 300, comm: "server4", uid: 0, cgroupID: 30),
        118941912: .init(pid: 200, comm: "client", uid: 1000, cgroupID: 20),
        118941914: .init(pid: 200, comm: "client", uid: 1000, cgroupID: 20),
        118941916: .init(pid: 200, comm: "client", uid: 1000, cgroupID: 20),
        118941917: .init(pid: 400, comm: "server6", uid: 0, cgroupID: 40),
        118941915: .init(pid: 400, comm: "server6", uid: 0, cgroupID: 40),
    ]

    func rows(_ ns: UInt32) -> [(netns: UInt32, socket: ProcNetTCP.Socket)] {
        (ProcNetTCP.sockets(tcp) + ProcNetTCP.sockets(tcp6)).map { (ns, $0) }
    }

    func testEstablishedSocketsBecomeConnectsAndAccepts() {
        let events = ProcNetTCP.establishedConnections(rows(ns), owners: owners, time: 1234)
        XCTAssertEqual(events.count, 6, "every established row with an owner; no listener")
        XCTAssertTrue(events.allSatisfy { $0.hook == .snapshot && $0.outcome == .established && $0.timeNanoseconds == 1234 && $0.netns == ns })
        XCTAssertTrue(events.allSatisfy(\.processKnown))
        XCTAssertEqual(events.map(\.direction), [.accept, .accept, .accept, .connect, .connect, .connect], "accepts first")

        func find(_ d: ConnectionEvent.Direction, _ sport: UInt16) -> ConnectionEvent? {
            events.first { $0.direction == d && $0.sourcePort == sport }
        }
        // IPv4 listener: the accept's source is the client.
        let a4 = find(.accept, 40862)
        XCTAssertEqual(a4?.pid, 300)
        XCTAssertEqual(a4?.comm, "server4")
        XCTAssertEqual(a4?.cgroupID, 30)
        XCTAssertEqual(a4?.source, loopback4)
        XCTAssertEqual(a4?.destinationPort, 59709)
        let c4 = find(.connect, 40862)
        XCTAssertEqual(c4?.pid, 200)
        XCTAssertEqual(c4?.uid, 1000)
        XCTAssertEqual(c4?.destinationPort, 59709)
        // The IPv6 listener on :: took the IPv4-mapped connection: an IPv4 accept.
        let mapped = find(.accept, 51784)
        XCTAssertEqual(mapped?.pid, 400)
        XCTAssertEqual(mapped?.family, .ipv4)
        XCTAssertEqual(mapped?.destination, loopback4)
        XCTAssertEqual(mapped?.destinationPort, 51407)
        XCTAssertEqual(find(.connect, 51784)?.pid, 200, "its client, an AF_INET socket, is a connect")
        // Both ends here: each names the other's cgroup (the peer's workload).
        XCTAssertEqual(a4?.peerCgroupID, 20)
        XCTAssertEqual(c4?.peerCgroupID, 30)
        XCTAssertEqual(mapped?.peerCgroupID, 20)
        XCTAssertEqual(find(.connect, 51784)?.peerCgroupID, 40)
        let a6 = find(.accept, 58268)
        XCTAssertEqual(a6?.family, .ipv6)
        XCTAssertEqual(a6?.pid, 400)
        XCTAssertEqual(find(.connect, 58268)?.destinationPort, 51407)
    }

    func testSocketsNobodyHoldsAreLeftOut() {
        var some = owners
        some[118941913] = nil  // e.g. still in the accept queue, or a kernel socket
        let events = ProcNetTCP.establishedConnections(rows(ns), owners: some, time: 0)
        XCTAssertEqual(events.count, 5)
        XCTAssertNil(events.first { $0.direction == .accept && $0.sourcePort == 40862 })
        let zeroInode = ProcNetTCP.sockets("header\n 0: 0100007F:1F90 0100007F:8AE2 01 0:0 0:0 0 0 0 0\n").map { (ns, $0) }
        XCTAssertEqual(ProcNetTCP.establishedConnections(zeroInode, owners: [0: owners[118941913]!], time: 0), [])
    }

    func testListenersCountOnlyInTheirNamespaceFamilyAndAddress() {
        let listener = ProcNetTCP.sockets(tcp)[0]  // 127.0.0.1:59709, AF_INET
        let accepted = ProcNetTCP.sockets(tcp)[1]  // local 127.0.0.1:59709
        let o: [UInt64: ProcNetTCP.Owner] = [accepted.inode: .init(pid: 1, comm: "x", uid: 0, cgroupID: 1)]
        func direction(_ rows: [(UInt32, ProcNetTCP.Socket)]) -> ConnectionEvent.Direction? {
            ProcNetTCP.establishedConnections(rows.map { (netns: $0.0, socket: $0.1) }, owners: o, time: 0).first?.direction
        }
        XCTAssertEqual(direction([(1, listener), (1, accepted)]), .accept)
        XCTAssertEqual(direction([(2, listener), (1, accepted)]), .connect, "a listener in another namespace")
        var v6 = listener
        v6.family = AF_INET6
        v6.local = IPAddress("::")!
        XCTAssertEqual(direction([(1, v6), (1, accepted)]), .connect, "an IPv6 listener does not take an AF_INET socket's connections")
        var elsewhere = listener
        elsewhere.local = IPAddress("127.0.0.2")!
        XCTAssertEqual(direction([(1, elsewhere), (1, accepted)]), .connect, "a listener bound to another address")
        var any = listener
        any.local = IPAddress("0.0.0.0")!
        XCTAssertEqual(direction([(1, any), (1, accepted)]), .accept)
    }

    // MARK: - the overlap with the live stream

    func testSnapshotRecognisesItsConnectionsSeenLive() {
        let events = ProcNetTCP.establishedConnections(rows(ns), owners: owners, time: 1000)
        let snapshot = ConnectionSnapshot(events: events, completedAt: 2000)
        var live = events[0]
        live.hook = .tracepoint
        live.pid = 999  // the tracepoint rung names the listener's owner: not part of the flow
        live.timeNanoseconds = 1500
        XCTAssertTrue(snapshot.isSeenAgain(live))
        live.timeNanoseconds = 2000
        XCTAssertTrue(snapshot.isSeenAgain(live))
        live.timeNanoseconds = 2001
        XCTAssertFalse(snapshot.isSeenAgain(live), "after the walk: a new connection on the same ports")
        live.timeNanoseconds = 1500
        live.sourcePort &+= 1
        XCTAssertFalse(snapshot.isSeenAgain(live))
        // On loopback both ends are in the snapshot, with the same flow.
        var otherEnd = events[0]
        otherEnd.direction = .connect
        XCTAssertTrue(snapshot.isSeenAgain(otherEnd))
        XCTAssertFalse(ConnectionSnapshot(events: [events[0]], completedAt: 2000).isSeenAgain(otherEnd), "same flow, other direction")
        var failed = events[0]
        failed.outcome = .failed
        XCTAssertFalse(snapshot.isSeenAgain(failed))
        var otherNamespace = events[0]
        otherNamespace.netns = 1
        XCTAssertFalse(snapshot.isSeenAgain(otherNamespace))
        XCTAssertFalse(ConnectionSnapshot.empty.isSeenAgain(events[0]))
    }
}
