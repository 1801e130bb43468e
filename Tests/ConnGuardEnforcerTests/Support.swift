import BPFKit
import ConnGuardTestSupport
import ConnGuardCore
import ConnGuardEnforcer
import Foundation
import Glibc
import XCTest

func cgroupID(_ path: String) -> UInt64 {
    var st = stat()
    return stat(path, &st) == 0 ? UInt64(st.st_ino) : 0
}

/// A watched subtree of the test's own, `<cgroup2>/connguard-enforce-test-<pid>-<rand>`,
/// with child cgroups for clients and servers, and a pin root of its own in
/// bpffs. Enforcement is attached only here. cleanup() (always called, by
/// defer) detaches everything, removes the pins, kills what runs inside and
/// removes the cgroups.
final class EnforceSandbox {
    let mount: String
    let root: String
    let pinRoot: String
    private(set) var children: [String] = []
    private var processes: [Child] = []
    private var enforcers: [Enforcer] = []

    init() throws {
        guard let m = CgroupMount.find() else { throw XCTSkip("no cgroup v2 mount") }
        guard cgbpfIsBPFFS("/sys/fs/bpf") else {
            throw XCTSkip("bpffs is not mounted at /sys/fs/bpf (mount -t bpf bpf /sys/fs/bpf)")
        }
        mount = m
        let tag = "\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        root = "\(m)/connguard-enforce-test-\(tag)"
        pinRoot = "/sys/fs/bpf/connguard-test-\(tag)"
        guard mkdir(root, 0o755) == 0 else { throw FileError(path: root, errno: errno) }
    }

    var rootID: UInt64 { cgroupID(root) }

    /// Makes a cgroup beside the subtree, outside it (removed at cleanup).
    func outsider() throws -> String {
        let path = root + "-outside"
        guard mkdir(path, 0o755) == 0 else { throw FileError(path: path, errno: errno) }
        outsiders.append(path)
        return path
    }
    private var outsiders: [String] = []

    /// Makes a cgroup below the subtree root ("client", "pod/ctr").
    @discardableResult
    func child(_ relative: String) throws -> (path: String, id: UInt64) {
        let path = root + "/" + relative
        guard mkdir(path, 0o755) == 0 else { throw FileError(path: path, errno: errno) }
        children.append(path)
        return (path, cgroupID(path))
    }

    func open(unknown: UnknownCgroups = .allow) throws -> Enforcer {
        let e = try Enforcer.open(cgroupPath: root, pinRoot: pinRoot, unknown: unknown)
        enforcers.append(e)
        return e
    }

    /// Forgets an enforcer without closing it (as an agent that exits without fail-open).
    func release(_ e: Enforcer) {
        enforcers.removeAll { $0 === e }
    }

    /// Starts a process inside `cgroup` (moved there before exec), or in the
    /// test's own cgroup when nil.
    func spawn(in cgroup: String?, _ argv: [String]) throws -> Child {
        let c: Child
        if let cgroup {
            c = try Child("/bin/sh", ["-c", "echo $$ > \"$0/cgroup.procs\" && exec \"$@\"", cgroup] + argv)
        } else {
            c = try Child(argv[0], Array(argv.dropFirst()))
        }
        processes.append(c)
        return c
    }

    func cleanup() {
        for e in enforcers { try? e.close(failOpen: true) }
        enforcers.removeAll()
        _ = try? Enforcer.removeAll(pinRoot: pinRoot, sweepUnpinnedLinks: false)
        for p in processes { p.stop(signal: SIGKILL) }
        processes.removeAll()
        for dir in (outsiders + [root] + children).reversed() { // deepest first
            if let procs = try? readFile(dir + "/cgroup.procs") {
                for p in procs.split(separator: "\n") { if let pid = Int32(p) { kill(pid, SIGKILL) } }
            }
            for _ in 0..<100 {
                if rmdir(dir) == 0 || errno == ENOENT { break }
                usleep(20_000)
            }
        }
    }

    deinit { cleanup() }
}

func cgbpfIsBPFFS(_ path: String) -> Bool {
    var st = stat()
    guard stat(path, &st) == 0 else { return false }
    // A bpffs mount shows in /proc/self/mounts with type "bpf".
    return ((try? readFile("/proc/self/mounts")) ?? "").split(separator: "\n").contains { line in
        let f = line.split(separator: " ")
        return f.count > 2 && f[1] == path && f[2] == "bpf"
    }
}

/// A python3 client: one TCP connect with a timeout, reporting
/// "<pid> ok" or "<pid> err <errno> <exception>".
let clientScript = """
import os, socket, sys
fam = socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET
s = socket.socket(fam, socket.SOCK_STREAM)
s.settimeout(float(sys.argv[3]))
try:
    s.connect((sys.argv[1], int(sys.argv[2])))
    print(os.getpid(), "ok", flush=True)
except OSError as e:
    print(os.getpid(), "err", e.errno or 0, type(e).__name__, flush=True)
"""

/// A python3 server: listens on (address, 0), prints "<pid> <port>", then
/// "accepted <address>" for every connection.
let serverScript = """
import os, socket, sys
fam = socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET
s = socket.socket(fam, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 0))
s.listen(64)
print(os.getpid(), s.getsockname()[1], flush=True)
while True:
    c, a = s.accept()
    print("accepted", a[0], flush=True)
    c.close()
"""

struct ConnectResult {
    let pid: Int32
    let ok: Bool
    let errno: Int32
    let exception: String
}

extension EnforceSandbox {
    /// Connects from a fresh python3 process in `cgroup` (nil: the test's own cgroup).
    func connect(from cgroup: String?, to address: String, port: UInt16, timeout: Double = 1.5) throws -> ConnectResult {
        let c = try spawn(in: cgroup, ["/usr/bin/python3", "-c", clientScript, address, String(port), String(timeout)])
        guard let line = c.readLine(timeout: timeout + 10) else {
            let err = String(decoding: c.stderr.fileHandleForReading.availableData, as: UTF8.self)
            throw XCTSkip("client printed nothing: \(err)")
        }
        c.stop()
        let f = line.split(separator: " ")
        return ConnectResult(pid: Int32(f[0]) ?? 0, ok: f.count > 1 && f[1] == "ok",
                             errno: f.count > 2 ? Int32(f[2]) ?? -1 : 0, exception: f.count > 3 ? String(f[3]) : "")
    }

    /// Starts a python3 server in `cgroup`; returns it with its pid and port.
    func server(in cgroup: String, address: String) throws -> (child: Child, pid: Int32, port: UInt16) {
        let c = try spawn(in: cgroup, ["/usr/bin/python3", "-c", serverScript, address])
        guard let line = c.readLine(timeout: 10) else { throw FileError(path: "server did not start", errno: 0) }
        let f = line.split(separator: " ")
        return (c, Int32(f[0]) ?? 0, UInt16(f[1]) ?? 0)
    }
}

/// Collects denials until `predicate` holds or `timeout` passes.
func waitForDenials(_ reader: DenialReader, timeout: Double = 3, until predicate: ([ConnectionEvent]) -> Bool) throws -> [ConnectionEvent] {
    var all: [ConnectionEvent] = []
    let deadline = Date().addingTimeInterval(timeout)
    repeat {
        all += try reader.poll(timeoutMilliseconds: 50)
        if predicate(all) { break }
    } while Date() < deadline
    return all
}
