import ConnGuardCore
import XCTest

final class ParsingTests: XCTestCase {
    func testDurations() {
        let cases: [(String, Double?)] = [
            ("90", 90), ("90s", 90), ("15m", 900), ("2h", 7200), ("7d", 604800), ("1h30m", 5400), ("1.5s", 1.5),
            ("", nil), ("-5", nil), ("5x", nil), ("m", nil), ("5m3", nil), ("1e9999", nil), ("999999999999999d", nil),
            ("nan", nil), ("inf", nil), (String(repeating: "9", count: 100), nil),
        ]
        for (text, want) in cases {
            XCTAssertEqual(DurationParser.seconds(text), want, text)
        }
    }

    func testProcNetTCPListeners() {
        let text = """
          sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
           0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 40123 1 0000000000000000 100 0 0 10 0
           1: 0100007F:8AE2 0100007F:1F90 01 00000000:00000000 00:00000000 00000000  1000        0 40999 1 0000000000000000 20 4 30 10 -1
           2: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000   105        0 0 1 0000000000000000 100 0 0 10 0
           garbage line
        """
        let ls = ProcNetTCP.listeners(text)
        XCTAssertEqual(ls.map(\.localPort), [8080], "established and inode-0 rows are not listeners")
        XCTAssertEqual(ls.map(\.inode), [40123])
        XCTAssertEqual(ls.map(\.uid), [0])
        XCTAssertEqual(ProcNetTCP.socketInode(fromLink: "socket:[40123]"), 40123)
        XCTAssertNil(ProcNetTCP.socketInode(fromLink: "pipe:[40123]"))
        XCTAssertEqual(ProcNetTCP.namespaceInode(fromLink: "net:[4026531840]"), 4026531840)
        XCTAssertEqual(ProcNetTCP.cgroupV2Path("12:pids:/x\n0::/libpod_parent/libpod-1\n"), "/libpod_parent/libpod-1")
    }

    func testCgroupMountFromMountinfo() {
        let hybrid = """
        25 30 0:23 / /sys rw,nosuid shared:7 - sysfs sysfs rw
        33 25 0:28 / /sys/fs/cgroup rw shared:9 - tmpfs tmpfs rw,mode=755
        34 33 0:29 / /sys/fs/cgroup/unified rw,nosuid shared:10 - cgroup2 cgroup2 rw
        35 33 0:30 / /sys/fs/cgroup/cpu rw shared:11 - cgroup cgroup rw,cpu
        """
        XCTAssertEqual(CgroupMount.find(mountinfo: hybrid), "/sys/fs/cgroup/unified")
        let unified = "29 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate"
        XCTAssertEqual(CgroupMount.find(mountinfo: unified), "/sys/fs/cgroup")
        // A bind mount of a sub-cgroup (root field not "/") is not the hierarchy's root.
        let bind = "40 23 0:26 /kubepods /host/cg rw - cgroup2 cgroup2 rw"
        XCTAssertNil(CgroupMount.find(mountinfo: bind))
        XCTAssertEqual(CgroupMount.find(mountinfo: "1 1 0:1 / /my\\040cg rw - cgroup2 cgroup2 rw"), "/my cg")
    }

    func testFilters() {
        let e = ConnectionEvent(timeNanoseconds: 0, direction: .accept, outcome: .established, pid: 10, comm: "x", uid: 0,
                                cgroupID: 5, source: IPAddress("10.0.0.9")!, sourcePort: 41000,
                                destination: IPAddress("10.0.0.1")!, destinationPort: 80)
        XCTAssertTrue(EventFilter().matches(e))
        XCTAssertTrue(EventFilter(pid: 10).matches(e))
        XCTAssertFalse(EventFilter(pid: 11).matches(e))
        XCTAssertTrue(EventFilter(port: 80).matches(e))
        XCTAssertTrue(EventFilter(port: 41000).matches(e))
        XCTAssertFalse(EventFilter(port: 81).matches(e))
        let subtree = CgroupSubtree(relativePath: "/test", ids: [5])
        XCTAssertTrue(EventFilter(cgroups: subtree).matches(e))
        XCTAssertFalse(EventFilter(pid: 10, cgroups: CgroupSubtree(relativePath: "/test", ids: [6])).matches(e))
    }

    func testCgroupSubtreeFollowsMkdirAndRmdir() {
        let s = CgroupSubtree(relativePath: "/test", ids: [1])
        s.apply(CgroupEvent(timeNanoseconds: 0, created: true, hierarchyID: 0, cgroupID: 2, path: "/test/child"))
        s.apply(CgroupEvent(timeNanoseconds: 0, created: true, hierarchyID: 0, cgroupID: 3, path: "/testing"))  // sibling, not child
        s.apply(CgroupEvent(timeNanoseconds: 0, created: true, hierarchyID: 4, cgroupID: 4, path: "/test/v1"))  // v1 hierarchy
        XCTAssertTrue(s.contains(2))
        XCTAssertFalse(s.contains(3))
        XCTAssertFalse(s.contains(4))
        s.apply(CgroupEvent(timeNanoseconds: 0, created: false, hierarchyID: 0, cgroupID: 2, path: "/test/child"))
        XCTAssertFalse(s.contains(2))
    }
}

/// Hostile and extreme values: refused with one line that says why (naming
/// the limit), never a trap.
final class RangeTests: XCTestCase {
    func testDurationsBeyondTheLimitAreRefusedNamingIt() {
        for text in ["20000w", "200000d", "10000000000", "5300w", "3155760001"] {
            XCTAssertThrowsError(try DurationParser.parse(text), text) { e in
                XCTAssertTrue("\(e)".contains("100 years"), "\(text): \(e)")
            }
        }
        XCTAssertEqual(try DurationParser.parse("5200w"), 5200 * 604800)
        XCTAssertEqual(try DurationParser.parse("3155760000"), DurationParser.maximumSeconds)
        XCTAssertThrowsError(try DurationParser.parse("-5m")) { XCTAssertTrue("\($0)".contains("negative"), "\($0)") }
        XCTAssertThrowsError(try DurationParser.parse("5\u{1b}[2J")) { XCTAssertFalse("\($0)".contains("\u{1b}"), "\($0)") }
        // The longest duration in nanoseconds, subtracted from now, is still an Int64.
        let ns = DurationParser.nanoseconds(DurationParser.maximumSeconds)
        XCTAssertEqual(ns, 3_155_760_000_000_000_000)
        XCTAssertGreaterThan(Int64(1_800_000_000_000_000_000) - ns, Int64.min)
        XCTAssertEqual(DurationParser.nanoseconds(.infinity), 0)
        XCTAssertEqual(DurationParser.nanoseconds(1e300), Int64.max)
    }

    func testTimesFarAheadAndBadOffsetsAreRefused() {
        let now: Int64 = 1_800_000_000_000_000_000
        XCTAssertEqual(try TimeArgument.nanoseconds("15m", now: now), now - 900_000_000_000)
        XCTAssertEqual(try TimeArgument.nanoseconds("2026-11-27T03:09:00Z", now: now), 1_795_748_940_000_000_000)
        XCTAssertEqual(try TimeArgument.nanoseconds("2026-11-27T03:09:00+01:00", now: now), 1_795_745_340_000_000_000)
        for (text, why) in [("9999-01-01T00:00:00Z", "too far ahead"), ("2300-01-01T00:00:00Z", "too far ahead"),
                            ("2026-11-27T03:09:00+24:00", "between -23:59 and +23:59"),
                            ("2026-11-27T03:09:00-99:30", "between -23:59 and +23:59"),
                            ("2026-11-27T03:09:00+05:60", "between -23:59 and +23:59"),
                            ("-5m", "negative"), ("20000w", "100 years"), ("101y", "not a duration"),
                            ("2026-13-01T00:00:00Z", "not an RFC 3339 time")] {
            XCTAssertThrowsError(try TimeArgument.nanoseconds(text, now: now), text) { e in
                XCTAssertTrue("\(e)".contains(why), "\(text): \(e)")
            }
        }
    }
}
