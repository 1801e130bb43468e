import ConnGuardCluster
import ConnGuardCore
import Foundation
import Glibc
import XCTest

/// A real 3-member etcd cluster on loopback (Debian's etcd-server), on free
/// ports, with data dirs in a temporary folder: started for one test and
/// always stopped after it (teardown kills every member by pid and removes
/// the folder, whether the test passed or not).
public final class EtcdCluster: @unchecked Sendable {
    public struct Member {
        public var name: String
        public var clientPort: Int
        public var peerPort: Int
        public var process: Process?
        public var clientURL: String { "http://127.0.0.1:\(clientPort)" }
        public var peerURL: String { "http://127.0.0.1:\(peerPort)" }
    }

    public let dir: URL
    public private(set) var members: [Member]
    private let lock = Mutex()

    public var endpoints: [String] { members.map(\.clientURL) }

    /// Starts the cluster and registers its teardown on `test`. Without
    /// etcd, or when it does not come up, the test is skipped saying why;
    /// under CI=true it fails instead.
    public static func start(for test: XCTestCase) throws -> EtcdCluster {
        func cannot(_ why: String) -> Error {
            if ProcessInfo.processInfo.environment["CI"] == "true" {
                XCTFail("cannot start etcd: \(why)")
                return XCTSkip("failed above: \(why)")
            }
            return XCTSkip("cannot start etcd (\(why)); scripts/setup installs it (etcd-server, etcd-client)")
        }
        for tool in ["etcd", "etcdctl"] where which(tool) == nil {
            throw cannot("\(tool) is not on PATH")
        }
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("connguard-etcd-\(getpid())-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let ports = freePorts(6)
        let members = (0..<3).map { Member(name: "m\($0 + 1)", clientPort: ports[$0], peerPort: ports[$0 + 3]) }
        let cluster = EtcdCluster(dir: dir, members: members)
        test.addTeardownBlock { cluster.stop() }
        for i in 0..<3 { try cluster.launch(i) }
        do {
            try cluster.waitHealthy(timeout: 20)
        } catch {
            throw cannot("\(error); logs in \(dir.path)")
        }
        return cluster
    }

    private init(dir: URL, members: [Member]) {
        self.dir = dir
        self.members = members
    }

    private func launch(_ i: Int) throws {
        let m = members[i]
        let initial = members.map { "\($0.name)=\($0.peerURL)" }.joined(separator: ",")
        let p = Process()
        p.executableURL = URL(fileURLWithPath: EtcdCluster.which("etcd")!)
        p.arguments = [
            "--name", m.name, "--data-dir", dir.appendingPathComponent(m.name).path,
            "--listen-client-urls", m.clientURL, "--advertise-client-urls", m.clientURL,
            "--listen-peer-urls", m.peerURL, "--initial-advertise-peer-urls", m.peerURL,
            // Ignored once the data dir exists (a restarted member rejoins).
            "--initial-cluster", initial, "--initial-cluster-state", "new",
            "--initial-cluster-token", dir.lastPathComponent,
        ]
        let logPath = dir.appendingPathComponent("\(m.name).log").path
        if !FileManager.default.fileExists(atPath: logPath) { _ = FileManager.default.createFile(atPath: logPath, contents: nil) }
        let log = try FileHandle(forWritingTo: URL(fileURLWithPath: logPath))
        log.seekToEndOfFile()
        p.standardOutput = log
        p.standardError = log
        p.standardInput = FileHandle.nullDevice
        try p.run()
        lock.withLock { members[i].process = p }
    }

    /// kill -9 of one member, waited for.
    public func kill(_ i: Int) {
        guard let p = lock.withLock({ members[i].process }) else { return }
        Glibc.kill(p.processIdentifier, SIGKILL)
        p.waitUntilExit()
        lock.withLock { members[i].process = nil }
    }

    /// Starts a killed member again on its data dir.
    public func restart(_ i: Int) throws {
        try launch(i)
    }

    public func stop() {
        for i in members.indices { kill(i) }
        try? FileManager.default.removeItem(at: dir)
    }

    /// Until every running member says it is healthy (it has a leader and
    /// answers a linearizable read).
    public func waitHealthy(timeout: Double) throws {
        let running = lock.withLock { members.filter { $0.process != nil }.map(\.clientURL) }
        let end = Date().addingTimeInterval(timeout)
        var last = ""
        while Date() < end {
            let (status, out) = etcdctl(["--endpoints", running.joined(separator: ","), "--command-timeout=2s", "endpoint", "health"])
            if status == 0 { return }
            last = out
            usleep(200_000)
        }
        throw ClusterStoreError.unavailable("etcd not healthy after \(Int(timeout)) s: \(last.prefix(300))")
    }

    /// etcdctl against every member; returns its exit status and output.
    @discardableResult
    public func etcdctl(_ args: [String], stdin: Data? = nil) -> (Int32, String) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: EtcdCluster.which("etcdctl")!)
        let hasEndpoints = args.contains("--endpoints")
        p.arguments = (hasEndpoints ? [] : ["--endpoints", endpoints.joined(separator: ",")]) + args
        p.environment = ["ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"]
        let out = Pipe()
        p.standardOutput = out
        p.standardError = out
        let input = Pipe()
        p.standardInput = stdin == nil ? FileHandle.nullDevice : input
        do { try p.run() } catch { return (-1, "\(error)") }
        if let stdin {
            input.fileHandleForWriting.write(stdin)
            try? input.fileHandleForWriting.close()
        }
        let data = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return (p.terminationStatus, String(decoding: data, as: UTF8.self))
    }

    /// A store for `node` on this cluster, closed at teardown.
    public func store(_ test: XCTestCase, node: String, ttl: Int64 = 10, endpointOrder: [Int] = [0, 1, 2]) throws -> EtcdClusterStore {
        let c = EtcdConfiguration(endpoints: endpointOrder.map { members[$0].clientURL }, leaseTTL: ttl)
        let s = try EtcdClusterStore(node: node, configuration: c)
        test.addTeardownBlock { await s.close() }
        return s
    }

    public static func which(_ tool: String) -> String? {
        for d in ["/usr/bin", "/usr/local/bin", "/bin"] where FileManager.default.isExecutableFile(atPath: "\(d)/\(tool)") {
            return "\(d)/\(tool)"
        }
        return nil
    }

    /// Ports the kernel hands out for port 0, all held until every one is
    /// chosen so that none repeats; another run could still take one after
    /// they are released, which etcd would report at start.
    public static func freePorts(_ n: Int) -> [Int] {
        var fds: [Int32] = []
        var ports: [Int] = []
        for _ in 0..<n {
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            var a = sockaddr_in()
            a.sin_family = sa_family_t(AF_INET)
            a.sin_addr.s_addr = inet_addr("127.0.0.1")
            a.sin_port = 0
            _ = withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
            var len = socklen_t(MemoryLayout<sockaddr_in>.size)
            _ = withUnsafeMutablePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } }
            ports.append(Int(UInt16(bigEndian: a.sin_port)))
            fds.append(fd)
        }
        for fd in fds { close(fd) }
        return ports
    }
}

