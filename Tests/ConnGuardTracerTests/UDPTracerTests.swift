import ConnGuardCore
import ConnGuardTracer
import Foundation
import Glibc
import ConnGuardTestSupport
import XCTest

/// UDP flows from real sockets, traced by the real programs: the first
/// datagram of each flow in a counting period is an event with its process,
/// the others are counted in the kernel (`takeRepeats`), and replies are part
/// of the flow that began them.
final class UDPTracerTests: XCTestCase {
    override func setUpWithError() throws {
        try requireRoot()
    }

    /// A UDP echo server (python3, nobody's code here but the five lines) in
    /// a cgroup of the test's own; prints its port.
    private func echoServer(in cgroup: TestCgroup, family: Int32, address: String) throws -> (Child, UInt16) {
        let af = family == AF_INET ? "AF_INET" : "AF_INET6"
        let script = """
        import socket
        s = socket.socket(socket.\(af), socket.SOCK_DGRAM)
        s.bind(("\(address)", 0))
        print(s.getsockname()[1], flush=True)
        while True:
            d, a = s.recvfrom(65535)
            s.sendto(d, a)
        """
        let child = try Child("/bin/sh", ["-c", "echo $$ > \"$0/cgroup.procs\" && exec python3 -c \"$1\"", cgroup.path, script])
        guard let line = child.readLine(), let port = UInt16(line) else {
            child.stop(signal: SIGKILL)
            throw XCTSkip("the python3 UDP server did not start")
        }
        return (child, port)
    }

    private func udpSocket(_ family: Int32) throws -> Int32 {
        let fd = socket(family, Int32(SOCK_DGRAM.rawValue), 0)
        guard fd >= 0 else { throw FileError(path: "socket", errno: errno) }
        var tv = timeval(tv_sec: 2, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        return fd
    }

    private func sendTo(_ fd: Int32, family: Int32, address: String, port: UInt16, bytes: Int = 4) throws -> Int {
        var result = 0
        let payload = [UInt8](repeating: 0x61, count: bytes)
        try Net.withSockaddr(family: family, address: address, port: port) { sa, len in
            result = payload.withUnsafeBytes { sendto(fd, $0.baseAddress, bytes, 0, sa, len) }
        }
        return result
    }

    private func receive(_ fd: Int32) -> Int {
        var buf = [UInt8](repeating: 0, count: 65536)
        var ss = sockaddr_storage()
        var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
        return withUnsafeMutablePointer(to: &ss) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { recvfrom(fd, &buf, buf.count, 0, $0, &len) }
        }
    }

    private func cpus() -> Int { Int(sysconf(Int32(_SC_NPROCESSORS_CONF))) }

    /// Unconnected client (sendto) and a server in its own cgroup: one
    /// outbound flow (the test's process), one inbound flow (the server's
    /// pid and cgroup); the replies are no flows; every datagram is in an
    /// event or a count.
    func flowPair(family: Int32, serverAddress: String, clientFamily: Int32, destination: String, connected: Bool,
                  expect reported: String) throws {
        let cgroup = try TestCgroup("udp")
        defer { cgroup.remove() }
        let collector = try TraceCollector()
        defer { collector.finish() }
        let (server, port) = try echoServer(in: cgroup, family: family, address: serverAddress)
        defer { server.stop(signal: SIGKILL) }

        let fd = try udpSocket(clientFamily)
        defer { close(fd) }
        if connected {
            try Net.withSockaddr(family: clientFamily, address: destination, port: port) { sa, len in
                XCTAssertEqual(Glibc.connect(fd, sa, len), 0, "connect: \(errno)")
            }
        }
        let sends = 3
        for _ in 0..<sends {
            if connected {
                XCTAssertEqual(send(fd, "ping", 4, 0), 4)
            } else {
                XCTAssertEqual(try sendTo(fd, family: clientFamily, address: destination, port: port), 4)
            }
            XCTAssertEqual(receive(fd), 4, "the echo")
        }
        let clientPort = Net.localPort(fd)
        let mine = { (e: ConnectionEvent) in e.proto == .udp && (e.destinationPort == port || e.sourcePort == port) }
        let events = collector.wait { evs in
            evs.contains { mine($0) && $0.direction == .connect } && evs.contains { mine($0) && $0.direction == .accept }
        }.filter(mine)
        usleep(100_000) // anything else (a reply wrongly taken for a flow) arrives too
        let all = collector.connections.filter(mine)
        let outbound = all.filter { $0.direction == .connect }
        let inbound = all.filter { $0.direction == .accept }
        XCTAssertEqual(all.count, outbound.count + inbound.count)
        let out = try XCTUnwrap(outbound.first, "outbound event: \(events)")
        let inn = try XCTUnwrap(inbound.first, "inbound event: \(events)")
        // Outbound: the test's process, to the server's port.
        XCTAssertEqual(out.pid, UInt32(getpid()))
        XCTAssertEqual(out.comm, ownComm())
        XCTAssertEqual(out.cgroupID, ownCgroupID())
        XCTAssertEqual(out.destination.description, reported)
        XCTAssertEqual(out.destinationPort, port)
        XCTAssertEqual(out.hook, .cgroupSockAddr)
        XCTAssertEqual(out.outcome, .established)
        XCTAssertTrue(out.processKnown)
        XCTAssertEqual(out.sourcePort, connected ? 0 : clientPort, "a connected socket is bound after the connect hook")
        // Inbound: the server's pid and cgroup; the client is the source.
        XCTAssertEqual(inn.pid, UInt32(server.pid))
        XCTAssertEqual(inn.comm, "python3")
        XCTAssertEqual(inn.cgroupID, cgroup.id)
        XCTAssertEqual(inn.source.description, reported)
        XCTAssertEqual(inn.sourcePort, clientPort)
        XCTAssertEqual(inn.destinationPort, port)
        XCTAssertEqual(inn.family, IPAddress(reported)!.family)
        // Replies: no outbound flow of the server, no inbound flow of the client.
        XCTAssertFalse(all.contains { $0.cgroupID == cgroup.id && $0.direction == .connect }, "\(all)")
        XCTAssertFalse(all.contains { $0.cgroupID == ownCgroupID() && $0.direction == .accept }, "\(all)")

        let counts = try collector.tracer.takeRepeats().filter { $0.proto == .udp && $0.port == port }
        let outCounted = counts.filter { $0.direction == .connect }.reduce(0) { $0 + $1.count }
        let inCounted = counts.filter { $0.direction == .accept }.reduce(0) { $0 + $1.count }
        // A connected socket's send() after connect() passes no sock_addr hook:
        // its flow is the connect, one event. But an IPv6 socket connected to
        // ::ffff:a.b.c.d sends each datagram through udp_sendmsg with an IPv4
        // address (net/ipv6/udp.c), so sendmsg4 sees, and counts, every one.
        let mapped = clientFamily == AF_INET6 && reported.contains(".")
        let expectedOut = connected ? (mapped ? 1 + sends : 1) : sends
        XCTAssertEqual(UInt64(outbound.count) + outCounted, UInt64(expectedOut), "\(outbound) \(counts)")
        XCTAssertEqual(UInt64(inbound.count) + inCounted, UInt64(sends), "\(inbound) \(counts)")
        XCTAssertLessThanOrEqual(inbound.count, cpus(), "at most one event per flow, CPU and period")
        XCTAssertTrue(counts.allSatisfy { $0.hook == .cgroupSockAddr })
        XCTAssertEqual(try collector.tracer.lossCounts().lostEvents, 0)
    }

    func testUnconnectedIPv4() throws {
        try flowPair(family: AF_INET, serverAddress: "127.0.0.1", clientFamily: AF_INET, destination: "127.0.0.1",
                     connected: false, expect: "127.0.0.1")
    }

    func testConnectedIPv4() throws {
        try flowPair(family: AF_INET, serverAddress: "127.0.0.1", clientFamily: AF_INET, destination: "127.0.0.1",
                     connected: true, expect: "127.0.0.1")
    }

    func testUnconnectedIPv6() throws {
        try flowPair(family: AF_INET6, serverAddress: "::1", clientFamily: AF_INET6, destination: "::1",
                     connected: false, expect: "::1")
    }

    func testConnectedIPv6() throws {
        try flowPair(family: AF_INET6, serverAddress: "::1", clientFamily: AF_INET6, destination: "::1",
                     connected: true, expect: "::1")
    }

    /// ::ffff:127.0.0.1 from an IPv6 socket to an IPv4 server: IPv4 on both
    /// sides of the report, as for TCP.
    func testIPv4MappedIsReportedAsIPv4() throws {
        try flowPair(family: AF_INET, serverAddress: "127.0.0.1", clientFamily: AF_INET6, destination: "::ffff:127.0.0.1",
                     connected: false, expect: "127.0.0.1")
        try flowPair(family: AF_INET, serverAddress: "127.0.0.1", clientFamily: AF_INET6, destination: "::ffff:127.0.0.1",
                     connected: true, expect: "127.0.0.1")
    }

    /// 100,000 datagrams over 1,000 flows (100 each to 1,000 closed ports:
    /// the ICMP unreachables come back too): each flow is one event (one per
    /// CPU it ran on, at most) and its exact count; nothing lost.
    func testBurstOf100kDatagramsOver1000Flows() throws {
        let collector = try TraceCollector()
        defer { collector.finish() }
        // 1,000 ports nobody listens on: bound, noted, closed.
        var ports: [UInt16] = []
        var holders: [Int32] = []
        for _ in 0..<1000 {
            let fd = try udpSocket(AF_INET)
            try Net.withSockaddr(family: AF_INET, address: "127.0.0.1", port: 0) { sa, len in _ = bind(fd, sa, len) }
            ports.append(Net.localPort(fd))
            holders.append(fd)
        }
        holders.forEach { close($0) }
        let portSet = Set(ports)
        _ = try collector.tracer.takeRepeats() // a fresh counting period
        let fd = try udpSocket(AF_INET)
        defer { close(fd) }
        let start = Date()
        for round in 0..<100 {
            for p in ports {
                XCTAssertEqual(try sendTo(fd, family: AF_INET, address: "127.0.0.1", port: p, bytes: 16), 16, "round \(round)")
            }
        }
        let sendSeconds = Date().timeIntervalSince(start)
        let counts = try collector.tracer.takeRepeats().filter { $0.proto == .udp && $0.direction == .connect && portSet.contains($0.port) }
        let mine = { (e: ConnectionEvent) in e.proto == .udp && e.direction == .connect && e.cgroupID == ownCgroupID() && portSet.contains(e.destinationPort) }
        _ = collector.wait(timeout: 10) { Set($0.filter(mine).map(\.destinationPort)).count == 1000 }
        usleep(200_000)
        let events = collector.connections.filter(mine)
        var perFlow: [UInt16: (events: Int, counted: UInt64)] = [:]
        for e in events { perFlow[e.destinationPort, default: (0, 0)].events += 1 }
        for c in counts { perFlow[c.port, default: (0, 0)].counted += c.count }
        XCTAssertEqual(perFlow.count, 1000)
        for (port, f) in perFlow {
            XCTAssertEqual(UInt64(f.events) + f.counted, 100, "flow to port \(port): \(f)")
            XCTAssertGreaterThanOrEqual(f.events, 1)
            XCTAssertLessThanOrEqual(f.events, cpus(), "flow to port \(port)")
        }
        XCTAssertLessThanOrEqual(events.count, 1000 * cpus())
        XCTAssertEqual(try collector.tracer.lossCounts().lostEvents, 0)
        print("burst: 100,000 datagrams over 1,000 flows in \(String(format: "%.2f", sendSeconds)) s; \(events.count) events")
    }

    /// Hostile: a flood from 10,000 source ports (10,000 sockets) to one
    /// server, a 64 KiB datagram, a connected socket that gets ICMP port
    /// unreachable back. One inbound flow (the client's source port is not in
    /// it), one outbound flow, counted; no event storm; nothing lost.
    /// One client socket (one source port) to 16 servers: 16 inbound flows,
    /// one per server port, each with its exact count. An inbound flow is
    /// keyed by the local (service) port, never by the client's port.
    func testOneClientToSixteenServersIsSixteenInboundFlows() throws {
        let collector = try TraceCollector()
        defer { collector.finish() }
        var servers: [Int32] = []
        defer { servers.forEach { close($0) } }
        for _ in 0..<16 {
            let fd = try udpSocket(AF_INET)
            try Net.withSockaddr(family: AF_INET, address: "127.0.0.1", port: 0) { sa, len in XCTAssertEqual(bind(fd, sa, len), 0) }
            var big = Int32(1 << 20)
            setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &big, socklen_t(MemoryLayout<Int32>.size))
            servers.append(fd)
        }
        let ports = servers.map { Net.localPort($0) }
        let client = try udpSocket(AF_INET)
        defer { close(client) }
        _ = try collector.tracer.takeRepeats()
        for _ in 0..<50 {
            for p in ports { XCTAssertEqual(try sendTo(client, family: AF_INET, address: "127.0.0.1", port: p), 4) }
            for s in servers { XCTAssertEqual(receive(s), 4) }
        }
        let counts = try collector.tracer.takeRepeats().filter { $0.proto == .udp && $0.direction == .accept && ports.contains($0.port) }
        let mine = { (e: ConnectionEvent) in e.proto == .udp && e.direction == .accept && ports.contains(e.destinationPort) }
        _ = collector.wait { Set($0.filter(mine).map(\.destinationPort)).count == 16 }
        usleep(200_000)
        var perPort: [UInt16: UInt64] = [:]
        for e in collector.connections.filter(mine) {
            perPort[e.destinationPort, default: 0] += 1
            XCTAssertEqual(e.pid, UInt32(getpid()), "the server's process")
        }
        for c in counts { perPort[c.port, default: 0] += c.count }
        XCTAssertEqual(Set(perPort.keys), Set(ports))
        for (port, n) in perPort { XCTAssertEqual(n, 50, "server port \(port)") }
    }

    func testFloodFrom10000SourcePortsIsOneFlow() throws {
        let collector = try TraceCollector()
        defer { collector.finish() }
        let server = try udpSocket(AF_INET)
        defer { close(server) }
        try Net.withSockaddr(family: AF_INET, address: "127.0.0.1", port: 0) { sa, len in XCTAssertEqual(bind(server, sa, len), 0) }
        var big = Int32(8 << 20)
        setsockopt(server, SOL_SOCKET, SO_RCVBUF, &big, socklen_t(MemoryLayout<Int32>.size))
        let port = Net.localPort(server)
        _ = try collector.tracer.takeRepeats()
        var received = 0
        for batch in 0..<100 {
            for _ in 0..<100 {
                let c = try udpSocket(AF_INET)
                XCTAssertEqual(try sendTo(c, family: AF_INET, address: "127.0.0.1", port: port), 4)
                close(c)
            }
            for _ in 0..<100 where receive(server) == 4 { received += 1 }
            _ = batch
        }
        XCTAssertEqual(received, 10_000)
        // A 64 KiB datagram (the IPv4 maximum payload) to the same server.
        let c = try udpSocket(AF_INET)
        XCTAssertEqual(try sendTo(c, family: AF_INET, address: "127.0.0.1", port: port, bytes: 65507), 65507)
        XCTAssertEqual(receive(server), 65507)
        close(c)
        // A closed port, connected: the ICMP unreachable fails the next send.
        let (tmp, closedPort) = try Net.listener(family: AF_INET, address: "127.0.0.1")
        close(tmp)
        let connected = try udpSocket(AF_INET)
        try Net.withSockaddr(family: AF_INET, address: "127.0.0.1", port: closedPort) { sa, len in
            XCTAssertEqual(Glibc.connect(connected, sa, len), 0)
        }
        _ = send(connected, "x", 1, 0)
        usleep(50_000)
        XCTAssertEqual(send(connected, "x", 1, 0), -1)
        XCTAssertEqual(errno, ECONNREFUSED)
        close(connected)

        let counts = try collector.tracer.takeRepeats().filter { $0.proto == .udp && $0.port == port }
        let mine = { (e: ConnectionEvent) in e.proto == .udp && e.destinationPort == port }
        _ = collector.wait { $0.contains { mine($0) && $0.direction == .accept } }
        usleep(200_000)
        let events = collector.connections.filter(mine)
        let inbound = events.filter { $0.direction == .accept }
        let outbound = events.filter { $0.direction == .connect }
        XCTAssertLessThanOrEqual(inbound.count, cpus(), "one flow: \(inbound.count) events")
        XCTAssertLessThanOrEqual(outbound.count, cpus(), "one flow: \(outbound.count) events")
        let inCounted = counts.filter { $0.direction == .accept }.reduce(0) { $0 + $1.count }
        let outCounted = counts.filter { $0.direction == .connect }.reduce(0) { $0 + $1.count }
        XCTAssertEqual(UInt64(inbound.count) + inCounted, 10_001)
        XCTAssertEqual(UInt64(outbound.count) + outCounted, 10_001)
        XCTAssertEqual(counts.filter { $0.direction == .accept }.count, 1, "one inbound flow (per CPU slot summed)")
        XCTAssertTrue(collector.connections.contains { $0.proto == .udp && $0.destinationPort == closedPort && $0.direction == .connect })
        let loss = try collector.tracer.lossCounts()
        XCTAssertEqual(loss.lostEvents, 0)
        XCTAssertEqual(loss.udpRoleStorage, 0)
    }
}
