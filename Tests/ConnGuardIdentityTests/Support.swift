import ConnGuardCore
import ConnGuardIdentity
import ConnGuardTracer
import Foundation
import Glibc
import XCTest

/// The privileged tier: real BPF programs, real containers, real cgroups.
/// Without root they skip, saying why; with CI=true a test that cannot run
/// fails instead, so that a CI machine that lost its setup is noticed.
enum Privileged {
    static var inCI: Bool { ProcessInfo.processInfo.environment["CI"] == "true" }

    /// The package's root, from this file's path.
    static let packageRoot: String = {
        var url = URL(fileURLWithPath: #filePath)
        for _ in 0..<3 { url.deleteLastPathComponent() }
        return url.path
    }()

    /// Skips (or fails under CI) unless root.
    static func requireRoot(file: StaticString = #filePath, line: UInt = #line) throws {
        guard geteuid() != 0 else { return }
        try cannotRun("needs root to load BPF programs and run containers (run `sudo swift test`)", file: file, line: line)
    }

    /// Runs scripts/setup-containers once per test process (idempotent:
    /// installs podman, runc, containerd and the busybox image if missing,
    /// and starts containerd if no daemon answers).
    static func requireContainers(file: StaticString = #filePath, line: UInt = #line) throws {
        try requireRoot(file: file, line: line)
        let result = setupResult
        if let failure = result.failure {
            try cannotRun("scripts/setup-containers failed: \(failure)", file: file, line: line)
        }
    }

    static func cannotRun(_ why: String, file: StaticString, line: UInt) throws {
        if inCI {
            XCTFail("CI=true and this test cannot run: \(why)", file: file, line: line)
            throw CannotRun()
        }
        throw XCTSkip(why, file: file, line: line)
    }

    struct CannotRun: Error {}

    private static let setupResult: (failure: String?, startedContainerd: Int32?) = {
        let r = Shell.run([packageRoot + "/scripts/setup-containers"], timeout: 600)
        guard r.status == 0 else { return ("exit \(r.status): \(r.stderr.suffix(2000))", nil) }
        // The script says so when it started containerd; that daemon is ours
        // to stop when the tests end.
        var pid: Int32?
        for line in r.stdout.split(separator: "\n") where line.hasPrefix("started-containerd ") {
            pid = Int32(line.dropFirst("started-containerd ".count))
        }
        if let pid { ContainerdReaper.install(pid: pid) }
        return (nil, pid)
    }()
}

/// Stops the containerd the setup script started for this test process, when
/// the test bundle finishes.
final class ContainerdReaper: NSObject, XCTestObservation {
    static let lock = NSLock()
    nonisolated(unsafe) static var installed: ContainerdReaper?
    let pid: Int32

    init(pid: Int32) { self.pid = pid }

    static func install(pid: Int32) {
        lock.lock(); defer { lock.unlock() }
        guard installed == nil else { return }
        let r = ContainerdReaper(pid: pid)
        installed = r
        XCTestObservationCenter.shared.addTestObserver(r)
    }

    func testBundleDidFinish(_ testBundle: Bundle) {
        kill(pid, SIGTERM)
        for _ in 0..<50 where kill(pid, 0) == 0 { usleep(100_000) }
        if kill(pid, 0) == 0 { kill(pid, SIGKILL) }
    }
}

/// Runs a command without a shell; returns its status and output.
///
/// posix_spawn and waitpid rather than Foundation's Process, which on Linux
/// was seen to hang in waitUntilExit after `podman run -d` (its child left a
/// zombie that Process never reaped). Output goes through temporary files, so
/// a daemon the command leaves behind (conmon) cannot hold a pipe open.
enum Shell {
    struct Result {
        var status: Int32
        var stdout: String
        var stderr: String
        var trimmed: String { stdout.trimmingCharacters(in: .whitespacesAndNewlines) }
    }

    @discardableResult
    static func run(_ args: [String], timeout: Double = 60) -> Result {
        let base = NSTemporaryDirectory() + "connguard-shell-\(getpid())-\(UInt64.random(in: 0...UInt64.max))"
        let outPath = base + ".out", errPath = base + ".err"
        defer { unlink(outPath); unlink(errPath) }

        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, outPath, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        posix_spawn_file_actions_addopen(&actions, 2, errPath, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        var attr = posix_spawnattr_t()
        posix_spawnattr_init(&attr)
        defer { posix_spawnattr_destroy(&attr) }
        // Its own process group, so that a timeout can end all of it.
        posix_spawnattr_setflags(&attr, Int16(POSIX_SPAWN_SETPGROUP))
        posix_spawnattr_setpgroup(&attr, 0)

        let argv: [UnsafeMutablePointer<CChar>?] = args.map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var pid: pid_t = 0
        let rc = posix_spawnp(&pid, args[0], &actions, &attr, argv, environ)
        guard rc == 0 else { return Result(status: -1, stdout: "", stderr: "spawn \(args[0]): \(String(cString: strerror(rc)))") }

        var status: Int32 = 0
        let deadline = Date().addingTimeInterval(timeout)
        var timedOut = false
        while true {
            let r = waitpid(pid, &status, WNOHANG)
            if r == pid { break }
            if r < 0 && errno != EINTR { break }
            if Date() >= deadline, !timedOut {
                timedOut = true
                kill(-pid, SIGKILL)
            }
            usleep(5_000)
        }
        let exited = (status & 0x7f) == 0
        let code: Int32 = timedOut ? -2 : (exited ? (status >> 8) & 0xff : 128 + (status & 0x7f))
        return Result(status: code, stdout: (try? readFile(outPath)) ?? "",
                      stderr: ((try? readFile(errPath)) ?? "") + (timedOut ? "\n(timed out after \(timeout) s)" : ""))
    }
}

/// The real tracer and resolver, wired as `connguard trace` wires them: the
/// ring buffer is read on its own thread, cgroup records are applied in
/// order, and every connection event is resolved as it is read.
final class TraceSession: @unchecked Sendable {
    struct Seen {
        var event: ConnectionEvent
        var identity: Identity
    }

    let resolver: IdentityResolver
    private let tracer: Tracer
    private let lock = NSLock()
    private var events: [Seen] = []
    private var cgroupEvents: [CgroupEvent] = []
    private var stopFlag = false
    private var failure: Error?
    private let done = DispatchSemaphore(value: 0)
    private var thread: Thread?

    /// Only connections to or from `ports` are kept: other engineers' load on
    /// a shared machine would otherwise fill memory (all are still resolved,
    /// as `connguard trace` resolves them).
    init(ports: Set<UInt16>) throws {
        resolver = try IdentityResolver.forThisNode()
        var config = Tracer.Configuration()
        config.ringBufferBytes = 4 << 20
        config.wakeupBytes = 0  // every record at once: the tests wait on them
        config.pollIntervalMilliseconds = 20
        tracer = try Tracer(configuration: config)
        let t = Thread { [unowned self] in
            do {
                try tracer.run(
                    shouldStop: { self.lock.withLock { self.stopFlag } },
                    onRecord: { record in
                        switch record {
                        case let .cgroup(c):
                            self.resolver.apply(c)
                            self.lock.withLock { self.cgroupEvents.append(c) }
                        case let .connection(e):
                            let identity = self.resolver.resolve(e)
                            guard ports.contains(e.destinationPort) || ports.contains(e.sourcePort) else { return }
                            self.lock.withLock { self.events.append(Seen(event: e, identity: identity)) }
                        case .dns:
                            break
                        }
                    })
            } catch {
                self.lock.withLock { self.failure = error }
            }
            self.done.signal()
        }
        thread = t
        t.start()
    }

    /// Stops reading and detaches the programs. Idempotent.
    func close() {
        let wasRunning: Bool = lock.withLock {
            defer { stopFlag = true }
            return !stopFlag
        }
        if wasRunning { done.wait() }
        tracer.close()
    }

    deinit { close() }

    /// Waits until an event matches, or the timeout passes.
    func waitFor(timeout: Double = 10, _ predicate: (Seen) -> Bool) -> Seen? {
        let deadline = Date().addingTimeInterval(timeout)
        repeat {
            if let hit = lock.withLock({ events.first(where: predicate) }) { return hit }
            usleep(20_000)
        } while Date() < deadline
        return nil
    }

    var all: [Seen] { lock.withLock { events } }

    func cgroupCreated(pathSuffix: String) -> CgroupEvent? {
        lock.withLock { cgroupEvents.first { $0.created && $0.hierarchyID == 0 && $0.path.hasSuffix(pathSuffix) } }
    }

    var error: Error? { lock.withLock { failure } }
}

/// Loopback ports not in use now.
/// The built `connguard agent`, started as operators run it, for the
/// end-to-end tests: stdout and stderr to `log`.
enum AgentProcess {
    /// Starts it with `arguments` and returns its pid once it answers on
    /// `socket`; throws with its log if it does not within 20 s.
    static func start(binary: String, arguments: [String], socket: String, log: String) throws -> pid_t {
        var pid: pid_t = 0
        let args = [binary, "agent"] + arguments
        let argv: [UnsafeMutablePointer<CChar>?] = args.map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        posix_spawn_file_actions_addopen(&actions, 1, log, O_WRONLY | O_CREAT | O_APPEND, 0o600)
        posix_spawn_file_actions_addopen(&actions, 2, log, O_WRONLY | O_CREAT | O_APPEND, 0o600)
        let spawned = posix_spawn(&pid, binary, &actions, nil, argv, environ)
        posix_spawn_file_actions_destroy(&actions)
        guard spawned == 0 else { throw Failure("posix_spawn \(binary): \(String(cString: strerror(spawned)))") }
        let deadline = Date().addingTimeInterval(20)
        while Date() < deadline {
            if Shell.run([binary, "status", "-o", "json", "--socket", socket]).status == 0 { return pid }
            usleep(100_000)
        }
        throw Failure("agent did not start: \((try? readFile(log)) ?? "")")
    }
}

enum Ports {
    static func free() -> UInt16 {
        for _ in 0..<100 {
            let p = UInt16.random(in: 20000...39999)
            if !listening(p) { return p }
        }
        return UInt16.random(in: 20000...39999)
    }

    /// Whether anything in this network namespace listens on the port.
    static func listening(_ port: UInt16) -> Bool {
        for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
            guard let text = try? readFile(file) else { continue }
            if ProcNetTCP.listeners(text).contains(where: { $0.localPort == port }) { return true }
        }
        return false
    }

    static func waitListening(_ port: UInt16, timeout: Double = 10) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        repeat {
            if listening(port) { return true }
            usleep(20_000)
        } while Date() < deadline
        return false
    }
}

/// Every cgroup v1 and v2 mount point (podman makes a --cgroup-parent in each).
enum CgroupMounts {
    static func all() -> [String] {
        guard let text = try? readFile("/proc/self/mountinfo") else { return [] }
        var out: [String] = []
        for line in text.split(separator: "\n") {
            let halves = line.split(separator: " - ", maxSplits: 1)
            guard halves.count == 2, let fs = halves[1].split(separator: " ").first, fs == "cgroup" || fs == "cgroup2" else { continue }
            let fields = halves[0].split(separator: " ")
            if fields.count >= 5 { out.append(String(fields[4])) }
        }
        return out
    }

    /// Removes `relative` and the cgroups below it (podman makes a `conmon`
    /// one there) from every hierarchy, deepest first; nothing above it.
    static func remove(_ relative: String) {
        for m in all() {
            for dir in subtree(m + relative).reversed() {
                for _ in 0..<20 {
                    if rmdir(dir) == 0 || errno == ENOENT { break }
                    usleep(50_000)  // the runtime may still be tearing the container down
                }
            }
        }
    }

    /// `dir` and every directory below it, parents before children.
    static func subtree(_ dir: String) -> [String] {
        var out: [String] = []
        var queue = [dir]
        while !queue.isEmpty {
            let d = queue.removeFirst()
            guard let names = try? FileManager.default.contentsOfDirectory(atPath: d) else { continue }
            out.append(d)
            for n in names.sorted() {
                var st = stat()
                if lstat(d + "/" + n, &st) == 0, (st.st_mode & S_IFMT) == S_IFDIR { queue.append(d + "/" + n) }
            }
        }
        return out
    }
}

extension NSLock {
    func withLock<T>(_ body: () throws -> T) rethrows -> T {
        lock()
        defer { unlock() }
        return try body()
    }
}

/// Pods' network namespaces on a private bridge that lives in a network
/// namespace of its own (shared/CLUSTER.md): nothing on it is reachable
/// from, or routed to, anywhere else. Addresses from 198.18.0.0/15.
final class PodNetworks {
    /// Short: interface names ("v" + namespace) must fit in 15 bytes.
    let prefix = "cn" + String(UInt16.random(in: 0...0xffff), radix: 16)
    /// What was made (pods, and the bridge's own), removed in reverse.
    private(set) var namespaces: [String] = []

    func bridge() throws -> String {
        let br = prefix + "br"
        for args in [["netns", "add", br], ["-n", br, "link", "add", "br0", "type", "bridge"], ["-n", br, "link", "set", "br0", "up"]] {
            let r = Shell.run(["ip"] + args)
            guard r.status == 0 else { throw Failure("ip \(args.joined(separator: " ")): \(r.stderr)") }
            if args[0] == "netns" { namespaces.append(br) }
        }
        return br
    }

    /// A pod's network namespace on the bridge, with `address`/24.
    @discardableResult
    func pod(_ name: String, _ address: String, bridge br: String) throws -> String {
        let ns = prefix + name
        let veth = "v" + ns
        for args in [["netns", "add", ns], ["link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns],
                     ["link", "set", veth, "netns", br], ["-n", br, "link", "set", veth, "master", "br0", "up"],
                     ["-n", ns, "addr", "add", address + "/24", "dev", "eth0"], ["-n", ns, "link", "set", "eth0", "up"],
                     ["-n", ns, "link", "set", "lo", "up"]] {
            let r = Shell.run(["ip"] + args)
            guard r.status == 0 else { throw Failure("ip \(args.joined(separator: " ")): \(r.stderr)") }
            if args[0] == "netns" { namespaces.append(ns) }
        }
        return ns
    }

    func remove(_ ns: String) {
        Shell.run(["ip", "netns", "del", ns])
        namespaces.removeAll { $0 == ns }
    }

    func removeAll() {
        for n in namespaces.reversed() { Shell.run(["ip", "netns", "del", n]) }
        namespaces.removeAll()
    }
}

/// The addresses in an agent's pinned peer_addresses map (bpftool).
func pinnedPeerAddresses(pinRoot: String) -> [String] {
    let r = Shell.run(["bpftool", "-j", "map", "dump", "pinned", pinRoot + "/peer_addresses"])
    guard r.status == 0, let rows = try? JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [[String: Any]] else { return [] }
    return rows.compactMap { row in
        guard let key = row["key"] as? [String] else { return nil }
        let bytes = key.compactMap { UInt8($0.dropFirst(2), radix: 16) }
        return bytes.count == 16 ? IPAddress(ipv6: bytes).description : nil
    }
}
