import BPFKit
import ConnGuardCore
import ConnGuardTracer
import Foundation
import Glibc
import ConnGuardTestSupport
import XCTest

/// Loads the real programs into the running kernel and makes real connections.
final class TracerTests: XCTestCase {
    override func setUpWithError() throws {
        try requireRoot()
    }

    func loopbackConnect(family: Int32, address: String, rung: HookRung? = nil) throws {
        var config = Tracer.Configuration()
        config.forcedRung = rung
        let collector = try TraceCollector(configuration: config)
        defer { collector.finish() }
        let (lfd, port) = try Net.listener(family: family, address: address)
        defer { close(lfd) }
        let cfd = try Net.connect(family: family, address: address, port: port)
        XCTAssertGreaterThanOrEqual(cfd, 0, "connect failed: \(-cfd)")
        let afd = accept(lfd, nil, nil)
        let clientPort = Net.localPort(cfd)
        close(afd)
        close(cfd)

        let events = collector.wait { evs in evs.filter { $0.destinationPort == port }.count >= 2 }
            .filter { $0.destinationPort == port }
        XCTAssertEqual(events.count, 2, "one connect and one accept: \(events)")
        let connect = try XCTUnwrap(events.first { $0.direction == .connect })
        let acceptEvent = try XCTUnwrap(events.first { $0.direction == .accept })
        let expectedFamily: IPAddress.Family = family == AF_INET ? .ipv4 : .ipv6
        for e in [connect, acceptEvent] {
            XCTAssertEqual(e.outcome, .established)
            XCTAssertEqual(e.pid, UInt32(getpid()))
            XCTAssertEqual(e.comm, ownComm())
            XCTAssertEqual(e.uid, 0)
            XCTAssertEqual(e.cgroupID, ownCgroupID())
            XCTAssertEqual(e.family, expectedFamily)
            XCTAssertEqual(e.source, IPAddress(address))
            XCTAssertEqual(e.destination, IPAddress(address))
            XCTAssertEqual(e.sourcePort, clientPort, "source is the client for both directions")
            XCTAssertTrue(e.processKnown)
            XCTAssertEqual(e.hook.rawValue, collector.tracer.rung.rawValue)
        }
        XCTAssertLessThanOrEqual(connect.timeNanoseconds, acceptEvent.timeNanoseconds + 1_000_000)
        XCTAssertLessThan(abs(connect.timeNanoseconds - BootClock.now(CLOCK_REALTIME)), 10_000_000_000, "wall-clock time")
        XCTAssertEqual(try collector.tracer.lossCounts().lostEvents, 0)
    }

    func testIPv4Loopback() throws { try loopbackConnect(family: AF_INET, address: "127.0.0.1") }

    func testIPv6Loopback() throws { try loopbackConnect(family: AF_INET6, address: "::1") }

    /// Every rung this kernel allows gives the same events (one connect, one
    /// accept, same fields); every rung it refuses fails alone, cleanly, with
    /// a message that names the rung.
    func testEachRungGivesTheSameEventsOrFailsClearly() throws {
        var allowed: [HookRung] = []
        for rung in HookRung.allCases {
            var config = Tracer.Configuration()
            config.forcedRung = rung
            config.seedListeners = false
            do {
                let t = try Tracer(configuration: config)
                XCTAssertEqual(t.rung, rung)
                t.close()
                allowed.append(rung)
            } catch let e as TracerError {
                guard case .rungRefused(let r, _) = e else { return XCTFail("\(rung): \(e)") }
                XCTAssertEqual(r, rung)
                XCTAssertTrue(e.description.contains("does not allow the \(rung) hooks"), e.description)
                XCTAssertFalse(e.description.contains("\n"), "one line: \(e.description)")
            }
        }
        XCTAssertTrue(allowed.contains(.tracepoint), "the bottom rung must work on every supported kernel")
        // The automatic choice is the best allowed rung.
        let auto = try Tracer(configuration: { var c = Tracer.Configuration(); c.seedListeners = false; return c }())
        XCTAssertEqual(auto.rung, allowed.first)
        XCTAssertEqual(auto.refusedRungs.map(\.rung), HookRung.allCases.filter { !allowed.contains($0) && $0 != .tracepoint }.filter { HookRung.allCases.firstIndex(of: $0)! < HookRung.allCases.firstIndex(of: auto.rung)! })
        auto.close()
        for rung in allowed {
            try loopbackConnect(family: AF_INET, address: "127.0.0.1", rung: rung)
            try loopbackConnect(family: AF_INET6, address: "::1", rung: rung)
        }
        // This machine (Linux 6.18 without kprobes or trampolines): see KERNEL.md.
        if access("/sys/bus/event_source/devices/kprobe", F_OK) != 0 {
            XCTAssertFalse(allowed.contains(.kprobe))
        }
    }

    func testMappedIPv4OnAnIPv6SocketIsReportedAsIPv4() throws {
        let collector = try TraceCollector()
        defer { collector.finish() }
        let (lfd, port) = try Net.listener(family: AF_INET, address: "127.0.0.1")
        defer { close(lfd) }
        let cfd = try Net.connect(family: AF_INET6, address: "::ffff:127.0.0.1", port: port)
        XCTAssertGreaterThanOrEqual(cfd, 0)
        close(accept(lfd, nil, nil))
        close(cfd)
        let events = collector.wait { $0.contains { $0.direction == .connect && $0.destinationPort == port } }
        let connect = try XCTUnwrap(events.first { $0.direction == .connect && $0.destinationPort == port })
        XCTAssertEqual(connect.family, .ipv4)
        XCTAssertEqual(connect.destination.description, "127.0.0.1")
    }

    func testRefusedConnectIsAFailedEvent() throws {
        let collector = try TraceCollector()
        defer { collector.finish() }
        // A port with nothing listening: bind one, learn its number, close it.
        let (tmp, port) = try Net.listener(family: AF_INET, address: "127.0.0.1")
        close(tmp)
        let result = try Net.connect(family: AF_INET, address: "127.0.0.1", port: port)
        XCTAssertEqual(result, -ECONNREFUSED)
        let events = collector.wait { $0.contains { $0.destinationPort == port } }.filter { $0.destinationPort == port }
        XCTAssertEqual(events.count, 1, "\(events)")
        let e = try XCTUnwrap(events.first)
        XCTAssertEqual(e.direction, .connect)
        XCTAssertEqual(e.outcome, .failed)
        XCTAssertEqual(e.error, ECONNREFUSED)
        XCTAssertEqual(e.pid, UInt32(getpid()))
    }

    /// The accept event names the listening process and its cgroup, not
    /// whoever was on the CPU when the handshake completed (here, the test
    /// process that connects, in another cgroup).
    func testAcceptNamesTheServerProcessAndItsCgroup() throws {
        let cgroup = try TestCgroup("server")
        defer { cgroup.remove() }
        let collector = try TraceCollector()
        defer { collector.finish() }
        let server = try Child("/bin/sh", ["-c", """
            echo $$ > \(cgroup.path)/cgroup.procs && exec python3 -c '
            import socket, sys
            s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(16)
            print(s.getsockname()[1], flush=True)
            while True:
                c, _ = s.accept(); c.close()
            '
            """])
        defer { server.stop(signal: SIGKILL) }
        let port = try XCTUnwrap(server.readLine().flatMap { UInt16($0) }, "server did not start")
        let cfd = try Net.connect(family: AF_INET, address: "127.0.0.1", port: port)
        XCTAssertGreaterThanOrEqual(cfd, 0)
        close(cfd)

        let events = collector.wait { $0.contains { $0.direction == .accept && $0.destinationPort == port } }
        let acceptEvent = try XCTUnwrap(events.first { $0.direction == .accept && $0.destinationPort == port })
        XCTAssertEqual(acceptEvent.cgroupID, cgroup.id)
        XCTAssertEqual(acceptEvent.pid, UInt32(server.pid))
        XCTAssertTrue(acceptEvent.comm.hasPrefix("python3"), acceptEvent.comm)
        XCTAssertTrue(acceptEvent.processKnown)
        let connect = try XCTUnwrap(events.first { $0.direction == .connect && $0.destinationPort == port })
        XCTAssertEqual(connect.pid, UInt32(getpid()))
        XCTAssertNotEqual(connect.cgroupID, cgroup.id)
    }

    /// A server whose parent listens and whose forked worker accepts (nginx,
    /// gunicorn): the accept event names the worker, the process whose
    /// accept() returned the connection; asked for the listener, it names the
    /// parent. On the tracepoint rung the worker comes from the syscall
    /// tracepoints on accept() and accept4().
    func testAcceptNamesTheWorkerThatAcceptedNotTheListener() throws {
        for attribution in AcceptAttribution.allCases {
            var config = Tracer.Configuration()
            config.acceptAttribution = attribution
            let collector = try TraceCollector(configuration: config)
            defer { collector.finish() }
            if collector.tracer.rung == .tracepoint && attribution == .caller {
                XCTAssertNil(collector.tracer.acceptAttributionFallback, "this kernel has syscall tracepoints")
                let accept = try XCTUnwrap(collector.tracer.hooks.first { $0.capability == "accept" })
                XCTAssertTrue(accept.detail.contains("sys_exit_accept4"), accept.detail)
            }
            let server = try Child("/usr/bin/python3", ["-c", """
                import os, socket, sys
                s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(16)
                worker = os.fork()
                if worker == 0:
                    c, _ = s.accept(); c.close(); os._exit(0)
                print(s.getsockname()[1], worker, flush=True)
                os.waitpid(worker, 0)
                """])
            defer { server.stop(signal: SIGKILL) }
            let line = try XCTUnwrap(server.readLine(), "server did not start").split(separator: " ")
            let port = try XCTUnwrap(UInt16(line[0]))
            let worker = try XCTUnwrap(UInt32(line[1]))
            let cfd = try Net.connect(family: AF_INET, address: "127.0.0.1", port: port)
            XCTAssertGreaterThanOrEqual(cfd, 0)
            close(cfd)
            let accepts = collector.wait { $0.contains { $0.direction == .accept && $0.destinationPort == port } }
                .filter { $0.direction == .accept && $0.destinationPort == port }
            XCTAssertEqual(accepts.count, 1, "\(attribution): \(accepts)")
            let expected = attribution == .caller || collector.tracer.rung != .tracepoint ? worker : UInt32(server.pid)
            XCTAssertEqual(accepts.first?.pid, expected, "\(attribution): worker \(worker), listener \(server.pid)")
            XCTAssertEqual(accepts.first?.processKnown, true)
        }
    }

    /// A connection that no accept() takes (a server that never accepts, or
    /// one that uses io_uring) is still reported once it has waited, naming
    /// the listener's owner; accepting it later does not report it again.
    func testAcceptThatNoAcceptCallTakesIsReportedOnce() throws {
        var config = Tracer.Configuration()
        config.acceptWaitNanoseconds = 200_000_000
        let collector = try TraceCollector(configuration: config)
        defer { collector.finish() }
        let (lfd, port) = try Net.listener(family: AF_INET, address: "127.0.0.1")
        defer { close(lfd) }
        let cfd = try Net.connect(family: AF_INET, address: "127.0.0.1", port: port)
        XCTAssertGreaterThanOrEqual(cfd, 0)
        defer { close(cfd) }
        let accepts = collector.wait { $0.contains { $0.direction == .accept && $0.destinationPort == port } }
            .filter { $0.direction == .accept && $0.destinationPort == port }
        XCTAssertEqual(accepts.count, 1)
        XCTAssertEqual(accepts.first?.pid, UInt32(getpid()), "the listener's owner")
        XCTAssertEqual(accepts.first?.sourcePort, Net.localPort(cfd))
        close(accept(lfd, nil, nil))
        let later = collector.wait(timeout: 1) { _ in false }.filter { $0.direction == .accept && $0.destinationPort == port }
        XCTAssertEqual(later.count, 1, "accepting it afterwards must not report it again: \(later)")
    }

    /// With repeat counting (the agent's mode), the first event of each
    /// connection comes one by one and the kernel counts the rest under the
    /// connection's key: together exactly one connect and one accept per
    /// connection, with the right peer, port, cgroup and outcome.
    func testRepeatsAreCountedInTheKernelExactly() throws {
        var config = Tracer.Configuration()
        config.countRepeats = true
        config.repeatsSentPerSecond = 0
        let collector = try TraceCollector(configuration: config)
        defer { collector.finish() }
        let (lfd, port) = try Net.listener(family: AF_INET, address: "127.0.0.1")
        defer { close(lfd) }
        let n = 300
        for _ in 0..<n {
            let cfd = try Net.connect(family: AF_INET, address: "127.0.0.1", port: port)
            XCTAssertGreaterThanOrEqual(cfd, 0)
            close(accept(lfd, nil, nil))
            close(cfd)
        }
        // Sent one by one: the first of each direction (per counting period).
        let sent = collector.wait { $0.filter { $0.destinationPort == port }.count >= 2 }
        usleep(200_000)
        let repeats = try collector.tracer.takeRepeats().filter { $0.port == port }
        let ours = collector.connections.filter { $0.destinationPort == port }
        XCTAssertGreaterThanOrEqual(sent.filter { $0.destinationPort == port }.count, 2)
        for direction in [ConnectionEvent.Direction.connect, .accept] {
            let one = ours.filter { $0.direction == direction }.count
            let counted = repeats.filter { $0.direction == direction }.reduce(0) { $0 + Int($1.count) }
            XCTAssertEqual(one + counted, n, "\(direction): \(one) sent + \(counted) counted")
            XCTAssertGreaterThan(counted, 0)
        }
        for r in repeats {
            XCTAssertEqual(r.peer, IPAddress("127.0.0.1"))
            XCTAssertEqual(r.cgroupID, ownCgroupID())
            XCTAssertEqual(r.outcome, .established)
            XCTAssertLessThan(abs(r.lastSeenNanoseconds - BootClock.now(CLOCK_REALTIME)), 10_000_000_000)
        }
        XCTAssertEqual(try collector.tracer.takeRepeats().filter { $0.port == port }, [], "a take empties the counts")
    }

    /// A server that was listening before the tracer started is learnt from
    /// /proc, so its accepts still carry its pid.
    func testListenerFromBeforeTheTracerIsKnown() throws {
        let (lfd, port) = try Net.listener(family: AF_INET6, address: "::1")
        defer { close(lfd) }
        let collector = try TraceCollector()
        defer { collector.finish() }
        XCTAssertGreaterThan(collector.tracer.seededListeners, 0)
        let cfd = try Net.connect(family: AF_INET6, address: "::1", port: port)
        close(accept(lfd, nil, nil))
        close(cfd)
        let events = collector.wait { $0.contains { $0.direction == .accept && $0.destinationPort == port } }
        let a = try XCTUnwrap(events.first { $0.direction == .accept && $0.destinationPort == port })
        XCTAssertTrue(a.processKnown)
        XCTAssertEqual(a.pid, UInt32(getpid()))
        XCTAssertEqual(a.comm, ownComm())
    }

    /// 10,000 connections as fast as one thread can make them: every one is
    /// reported (a connect and an accept each), and nothing is lost.
    func testBurstOf10000ConnectionsLosesNothing() throws {
        let collector = try TraceCollector()
        defer { collector.finish() }
        let (lfd, port) = try Net.listener(family: AF_INET, address: "127.0.0.1")
        defer { close(lfd) }
        let n = 10_000
        var failures = 0
        for _ in 0..<n {
            let cfd = try Net.connect(family: AF_INET, address: "127.0.0.1", port: port)
            if cfd < 0 { failures += 1; continue }
            let afd = accept(lfd, nil, nil)
            Net.abort(cfd)
            close(afd)
        }
        XCTAssertEqual(failures, 0)
        let events = collector.wait(timeout: 20) { $0.filter { $0.destinationPort == port }.count >= 2 * n }
            .filter { $0.destinationPort == port }
        XCTAssertEqual(events.filter { $0.direction == .connect && $0.outcome == .established }.count, n)
        XCTAssertEqual(events.filter { $0.direction == .accept }.count, n)
        XCTAssertEqual(Set(events.filter { $0.direction == .connect }.map(\.sourcePort)).count, Set(events.map(\.sourcePort)).count)
        let loss = try collector.tracer.lossCounts()
        XCTAssertEqual(loss, LossCounts(), "nothing lost or incomplete: \(loss)")
    }

    /// Loss is counted, not silent: with a ring buffer too small for a burst
    /// and a reader that is not reading, the kernel's counter must account for
    /// every connection that was not delivered.
    func testOverflowIsCounted() throws {
        var config = Tracer.Configuration()
        config.ringBufferBytes = 4096 * 4  // room for ~150 records
        config.seedListeners = false
        let tracer = try Tracer(configuration: config)
        defer { tracer.close() }
        let (lfd, port) = try Net.listener(family: AF_INET, address: "127.0.0.1")
        defer { close(lfd) }
        let n = 1000
        for _ in 0..<n {
            let cfd = try Net.connect(family: AF_INET, address: "127.0.0.1", port: port)
            if cfd >= 0 { Net.abort(cfd); close(accept(lfd, nil, nil)) }
        }
        var delivered = 0
        try tracer.run(shouldStop: { true }, onRecord: { r in
            if case let .connection(e) = r, e.destinationPort == port { delivered += 1 }
        })
        let loss = try tracer.lossCounts()
        XCTAssertGreaterThan(loss.ringBufferFull, 0)
        XCTAssertLessThan(delivered, 2 * n)
        // Other processes' connections may also have been dropped: at least ours are accounted.
        XCTAssertGreaterThanOrEqual(UInt64(delivered) + loss.ringBufferFull, UInt64(2 * n))
    }

    /// Nothing of ours stays in the kernel after close: no link right away,
    /// no program once the tracer is gone.
    func testCloseDetachesEverything() throws {
        var collector: TraceCollector? = try TraceCollector()
        let ids = try collector!.tracer.programs.map { try $0.info().id }
        // The socket state tracepoint, cgroup mkdir and rmdir, the exits of
        // accept() and accept4(), UDP's connect, sendmsg and recvmsg, 4 and
        // 6, and the DNS answers' cgroup_skb.
        XCTAssertEqual(ids.count, 12)
        XCTAssertTrue(ids.allSatisfy { BPFSystem.programExists(id: $0) })
        XCTAssertEqual(BPFSystem.linksOfPrograms(ids).count, 12)
        collector!.finish()
        XCTAssertEqual(BPFSystem.linksOfPrograms(ids), [], "links left attached")
        collector = nil
        let deadline = Date().addingTimeInterval(5)
        var stillLoaded = ids
        while !stillLoaded.isEmpty && Date() < deadline {
            stillLoaded = ids.filter { BPFSystem.programExists(id: $0) }
            usleep(20_000)
        }
        XCTAssertEqual(stillLoaded, [], "programs still loaded")
    }
}
