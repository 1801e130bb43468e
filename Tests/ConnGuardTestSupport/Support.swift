import BPFKit
import ConnGuardCore
import ConnGuardTracer
import Foundation
import Glibc
import XCTest

/// Privileged tests run wherever they can. Not root: skip, saying why. Under
/// CI (CI=true) a privileged test that cannot run is a failure.
public func requireRoot(file: StaticString = #filePath, line: UInt = #line) throws {
    if geteuid() == 0 { return }
    let why = "needs root to load BPF programs and create cgroups"
    if ProcessInfo.processInfo.environment["CI"] == "true" {
        XCTFail("CI=true but this privileged test cannot run: \(why)", file: file, line: line)
        throw XCTSkip("failed above")
    }
    throw XCTSkip(why)
}

/// A cgroup v2 directory of the test's own, removed at the end (its processes
/// are killed first). Enforcement tests attach only here.
public final class TestCgroup {
    public let path: String
    public let relativePath: String
    public let id: UInt64

    public init(_ name: String = "t") throws {
        guard let mount = CgroupMount.find() else { throw XCTSkip("no cgroup v2 mount") }
        relativePath = "/connguard-test-\(getpid())-\(name)-\(UInt32.random(in: 0...UInt32.max))"
        path = mount + relativePath
        guard mkdir(path, 0o755) == 0 else { throw FileError(path: path, errno: errno) }
        var st = stat()
        stat(path, &st)
        id = UInt64(st.st_ino)
    }

    /// A cgroup directly inside this one (removed by its own remove()).
    public init(parent: TestCgroup, name: String) throws {
        path = parent.path + "/" + name
        relativePath = parent.relativePath + "/" + name
        guard mkdir(path, 0o755) == 0 else { throw FileError(path: path, errno: errno) }
        var st = stat()
        stat(path, &st)
        id = UInt64(st.st_ino)
    }

    public func child(_ name: String) throws -> TestCgroup { try TestCgroup(parent: self, name: name) }

    /// Moves a process in.
    public func add(pid: Int32) throws {
        try String(pid).write(toFile: path + "/cgroup.procs", atomically: false, encoding: .utf8)
    }

    /// Kills what is left inside and removes the directory (retrying: rmdir
    /// fails with EBUSY until the killed processes are reaped).
    public func remove() {
        TestCgroup.removeTree(path)
    }

    /// Children first; processes killed; rmdir retried until they are reaped.
    static func removeTree(_ dir: String) {
        if let entries = try? FileManager.default.contentsOfDirectory(atPath: dir) {
            for e in entries {
                var isDir: ObjCBool = false
                let sub = dir + "/" + e
                if FileManager.default.fileExists(atPath: sub, isDirectory: &isDir), isDir.boolValue,
                   access(sub + "/cgroup.procs", F_OK) == 0 {
                    removeTree(sub)
                }
            }
        }
        if let procs = try? readFile(dir + "/cgroup.procs") {
            for p in procs.split(separator: "\n") { if let pid = Int32(p) { kill(pid, SIGKILL) } }
        }
        for _ in 0..<100 {
            if rmdir(dir) == 0 || errno == ENOENT { return }
            usleep(20_000)
        }
    }

    deinit { remove() }
}

/// Runs a Tracer on a background thread and collects its records.
public final class TraceCollector: @unchecked Sendable {
    public let tracer: Tracer
    private let lock = NSLock()
    private var records: [TraceRecord] = []
    private var stop = false
    private let done = DispatchSemaphore(value: 0)
    private var thread: Thread?
    public private(set) var runError: Error?

    public init(configuration: Tracer.Configuration = .init()) throws {
        var config = configuration
        config.pollIntervalMilliseconds = 20
        tracer = try Tracer(configuration: config)
        let t = Thread { [self] in
            do {
                try tracer.run(shouldStop: { self.lock.withLock { self.stop } },
                               onRecord: { r in self.lock.withLock { self.records.append(r) } })
            } catch {
                runError = error
            }
            done.signal()
        }
        thread = t
        t.start()
    }

    public var connections: [ConnectionEvent] {
        lock.withLock { records.compactMap { if case let .connection(e) = $0 { return e } else { return nil } } }
    }

    public var cgroupEvents: [CgroupEvent] {
        lock.withLock { records.compactMap { if case let .cgroup(e) = $0 { return e } else { return nil } } }
    }

    /// Waits until `predicate` holds over the connections seen, or `timeout` passes.
    @discardableResult
    public func wait(timeout: Double = 5, until predicate: ([ConnectionEvent]) -> Bool) -> [ConnectionEvent] {
        let deadline = Date().addingTimeInterval(timeout)
        while true {
            let c = connections
            if predicate(c) || Date() > deadline { return c }
            usleep(10_000)
        }
    }

    /// Stops reading and detaches everything.
    public func finish() {
        lock.withLock { stop = true }
        if thread != nil {
            done.wait()
            thread = nil
        }
        tracer.close()
    }

    deinit { finish() }
}

/// Minimal blocking sockets for making real connections in tests.
public enum Net {
    public static func listener(family: Int32, address: String, port: UInt16 = 0) throws -> (fd: Int32, port: UInt16) {
        let fd = socket(family, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw FileError(path: "socket", errno: errno) }
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, 4)
        try withSockaddr(family: family, address: address, port: port) { sa, len in
            guard bind(fd, sa, len) == 0 else { throw FileError(path: "bind \(address)", errno: errno) }
        }
        guard listen(fd, 4096) == 0 else { throw FileError(path: "listen", errno: errno) }
        return (fd, localPort(fd))
    }

    /// Connects; returns the fd, or -errno on failure.
    public static func connect(family: Int32, address: String, port: UInt16) throws -> Int32 {
        let fd = socket(family, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw FileError(path: "socket", errno: errno) }
        var result: Int32 = 0
        try withSockaddr(family: family, address: address, port: port) { sa, len in
            result = Glibc.connect(fd, sa, len) == 0 ? fd : -errno
        }
        if result < 0 { close(fd) }
        return result
    }

    /// A listener on `address`, the family taken from its spelling.
    public static func listener(address: String, port: UInt16 = 0) throws -> (fd: Int32, port: UInt16) {
        let (fd, _) = try listener(family: family(of: address), address: address, port: port)
        return (fd, localPort(fd))
    }

    /// Connects from this process and closes at once; 0 or the errno.
    public static func connect(address: String, port: UInt16) throws -> Int32 {
        let fd = try connect(family: family(of: address), address: address, port: port)
        if fd < 0 { return -fd }
        close(fd)
        return 0
    }

    static func family(of address: String) -> Int32 { address.contains(":") ? AF_INET6 : AF_INET }

    /// Closes with an RST rather than leaving TIME_WAIT behind (bursts).
    public static func abort(_ fd: Int32) {
        var l = linger(l_onoff: 1, l_linger: 0)
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, socklen_t(MemoryLayout<linger>.size))
        close(fd)
    }

    public static func localPort(_ fd: Int32) -> UInt16 {
        var ss = sockaddr_storage()
        var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
        withUnsafeMutablePointer(to: &ss) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { _ = getsockname(fd, $0, &len) } }
        return withUnsafeBytes(of: &ss) { UInt16(bigEndian: $0.load(fromByteOffset: 2, as: UInt16.self)) }
    }

    public static func withSockaddr(family: Int32, address: String, port: UInt16, _ body: (UnsafePointer<sockaddr>, socklen_t) throws -> Void) throws {
        if family == AF_INET {
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

/// The cgroup v2 id of this process.
public func ownCgroupID() -> UInt64 {
    guard let mount = CgroupMount.find(), let text = try? readFile("/proc/self/cgroup"),
          let path = ProcNetTCP.cgroupV2Path(text) else { return 0 }
    var st = stat()
    stat(mount + (path == "/" ? "" : path), &st)
    return UInt64(st.st_ino)
}

public func ownComm() -> String {
    ((try? readFile("/proc/self/comm")) ?? "").trimmingCharacters(in: .newlines)
}

/// Where `swift build` put the executables (next to the test bundle).
public func productsDirectory() -> String {
    let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? ""
    var dir = (exe as NSString).deletingLastPathComponent
    if dir.hasSuffix(".xctest") { dir = (dir as NSString).deletingLastPathComponent }
    return dir
}

/// A child process, killed at the end.
public final class Child {
    public let process = Process()
    public let stdout = Pipe()
    public let stderr = Pipe()

    public init(_ executable: String, _ arguments: [String], environment: [String: String]? = nil) throws {
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        if let environment { process.environment = environment }
        process.standardOutput = stdout
        process.standardError = stderr
        try process.run()
    }

    public var pid: Int32 { process.processIdentifier }

    /// Reads one line from stdout (blocking up to `timeout`).
    public func readLine(timeout: Double = 10) -> String? {
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

    public func stop(signal: Int32 = SIGTERM) {
        if process.isRunning { kill(pid, signal) }
        process.waitUntilExit()
    }

    deinit {
        if process.isRunning { kill(pid, SIGKILL); process.waitUntilExit() }
    }
}
