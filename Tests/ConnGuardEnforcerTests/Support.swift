import BPFKit
import ConnGuardCore
import ConnGuardEnforcer
import Foundation
import Glibc
import XCTest

/// Privileged tests run wherever they can. Not root: skip, saying why. Under
/// CI (CI=true) a privileged test that cannot run is a failure.
func requireRoot(file: StaticString = #filePath, line: UInt = #line) throws {
    if geteuid() == 0 { return }
    let why = "needs root to load BPF programs and create cgroups"
    if ProcessInfo.processInfo.environment["CI"] == "true" {
        XCTFail("CI=true but this privileged test cannot run: \(why)", file: file, line: line)
        throw XCTSkip("failed above")
    }
    throw XCTSkip(why)
}

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

/// A child process, killed at the end.
final class Child {
    let process = Process()
    let stdout = Pipe()
    let stderr = Pipe()

    init(_ executable: String, _ arguments: [String]) throws {
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        process.standardOutput = stdout
        process.standardError = stderr
        try process.run()
    }

    var pid: Int32 { process.processIdentifier }

    /// Reads one line from stdout (blocking up to `timeout`).
    func readLine(timeout: Double = 10) -> String? {
        let fd = stdout.fileHandleForReading.fileDescriptor
        var line: [UInt8] = []
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&pfd, 1, 100) > 0 else { continue }
            var b: UInt8 = 0
            guard read(fd, &b, 1) == 1 else { return line.isEmpty ? nil : String(decoding: line, as: UTF8.self) }
            if b == UInt8(ascii: "\n") { return String(decoding: line, as: UTF8.self) }
            line.append(b)
        }
        return nil
    }

    func stop(signal: Int32 = SIGTERM) {
        if process.isRunning { kill(pid, signal) }
        process.waitUntilExit()
    }

    deinit {
        if process.isRunning { kill(pid, SIGKILL); process.waitUntilExit() }
    }
}

/// Minimal sockets for listeners in the test's own cgroup (outside the watched subtree).
enum Net {
    static func listener(address: String, port: UInt16 = 0) throws -> (fd: Int32, port: UInt16) {
        let family = address.contains(":") ? AF_INET6 : AF_INET
        let fd = socket(family, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw FileError(path: "socket", errno: errno) }
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, 4)
        try withSockaddr(address: address, port: port) { sa, len in
            guard bind(fd, sa, len) == 0 else { throw FileError(path: "bind \(address)", errno: errno) }
        }
        guard listen(fd, 4096) == 0 else { throw FileError(path: "listen", errno: errno) }
        return (fd, localPort(fd))
    }

    /// Connects from this process; 0 or errno.
    static func connect(address: String, port: UInt16) throws -> Int32 {
        let family = address.contains(":") ? AF_INET6 : AF_INET
        let fd = socket(family, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw FileError(path: "socket", errno: errno) }
        defer { close(fd) }
        var result: Int32 = 0
        try withSockaddr(address: address, port: port) { sa, len in
            result = Glibc.connect(fd, sa, len) == 0 ? 0 : errno
        }
        return result
    }

    static func localPort(_ fd: Int32) -> UInt16 {
        var ss = sockaddr_storage()
        var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
        withUnsafeMutablePointer(to: &ss) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { _ = getsockname(fd, $0, &len) } }
        return withUnsafeBytes(of: &ss) { UInt16(bigEndian: $0.load(fromByteOffset: 2, as: UInt16.self)) }
    }

    static func withSockaddr(address: String, port: UInt16, _ body: (UnsafePointer<sockaddr>, socklen_t) throws -> Void) throws {
        if !address.contains(":") {
            var sin = sockaddr_in()
            sin.sin_family = sa_family_t(AF_INET)
            sin.sin_port = port.bigEndian
            inet_pton(AF_INET, address, &sin.sin_addr)
            try withUnsafePointer(to: &sin) { try $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { try body($0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        } else {
            var sin6 = sockaddr_in6()
            sin6.sin6_family = sa_family_t(AF_INET6)
            sin6.sin6_port = port.bigEndian
            inet_pton(AF_INET6, address, &sin6.sin6_addr)
            try withUnsafePointer(to: &sin6) { try $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { try body($0, socklen_t(MemoryLayout<sockaddr_in6>.size)) } }
        }
    }
}

/// Where `swift build` put the executables (next to the test bundle).
func productsDirectory() -> String {
    let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? ""
    var dir = (exe as NSString).deletingLastPathComponent
    if dir.hasSuffix(".xctest") { dir = (dir as NSString).deletingLastPathComponent }
    return dir
}
