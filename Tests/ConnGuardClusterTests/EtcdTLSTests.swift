import ConnGuardCluster
import ConnGuardCore
import ConnGuardTestSupport
import Foundation
import XCTest

/// The TLS options etcd users expect (etcdctl's --cacert, --cert, --key),
/// against a real etcd member that serves https and requires a client
/// certificate signed by its CA. The certificates are made for the test
/// with openssl and removed after it.
final class EtcdTLSTests: XCTestCase {
    var dir: String!
    var etcd: Process?

    override func tearDown() {
        if let etcd, etcd.isRunning { kill(etcd.processIdentifier, SIGKILL); etcd.waitUntilExit() }
        if let dir { try? FileManager.default.removeItem(atPath: dir) }
    }

    @discardableResult
    func run(_ tool: String, _ args: [String]) throws -> String {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: tool)
        p.arguments = args
        p.currentDirectoryURL = URL(fileURLWithPath: dir)
        let out = Pipe()
        p.standardOutput = out
        p.standardError = out
        try p.run()
        let data = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        let text = String(decoding: data, as: UTF8.self)
        guard p.terminationStatus == 0 else { throw Failure("\(tool) \(args.joined(separator: " ")): \(text)") }
        return text
    }

    struct Failure: Error, CustomStringConvertible { let description: String; init(_ d: String) { description = d } }

    /// A CA, and a certificate signed by it for `name` (with the SAN given).
    func makeCerts() throws {
        let ssl = "/usr/bin/openssl"
        for ca in ["ca", "otherca"] {
            try run(ssl, ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=\(ca)", "-keyout", "\(ca).key", "-out", "\(ca).crt"])
        }
        for (name, san, ca) in [("server", "IP:127.0.0.1", "ca"), ("client", "DNS:connguard", "ca"), ("stranger", "DNS:stranger", "otherca")] {
            try run(ssl, ["req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=\(name)", "-keyout", "\(name).key", "-out", "\(name).csr"])
            try "subjectAltName=\(san)\nextendedKeyUsage=serverAuth,clientAuth\n".write(toFile: dir + "/\(name).ext", atomically: true, encoding: .utf8)
            try run(ssl, ["x509", "-req", "-in", "\(name).csr", "-CA", "\(ca).crt", "-CAkey", "\(ca).key", "-CAcreateserial", "-days", "1",
                          "-extfile", "\(name).ext", "-out", "\(name).crt"])
        }
    }

    func testMutualTLS() async throws {
        guard let etcdPath = EtcdCluster.which("etcd") else {
            if ProcessInfo.processInfo.environment["CI"] == "true" { XCTFail("etcd is not installed") }
            throw XCTSkip("etcd is not installed (scripts/setup installs it)")
        }
        dir = NSTemporaryDirectory() + "cgtls-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        try makeCerts()
        let ports = EtcdCluster.freePorts(2)
        let url = "https://127.0.0.1:\(ports[0])", peer = "http://127.0.0.1:\(ports[1])"
        let p = Process()
        p.executableURL = URL(fileURLWithPath: etcdPath)
        p.arguments = ["--name", "t1", "--data-dir", dir + "/data", "--listen-client-urls", url, "--advertise-client-urls", url,
                       "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer, "--initial-cluster", "t1=\(peer)",
                       "--cert-file", dir + "/server.crt", "--key-file", dir + "/server.key",
                       "--client-cert-auth", "--trusted-ca-file", dir + "/ca.crt"]
        p.standardOutput = FileHandle(forWritingAtPath: "/dev/null")
        p.standardError = try FileHandle(forWritingTo: URL(fileURLWithPath: { let l = dir + "/etcd.log"; FileManager.default.createFile(atPath: l, contents: nil); return l }()))
        try p.run()
        etcd = p

        func store(_ tls: EtcdConfiguration.TLS?) throws -> EtcdClusterStore {
            try EtcdClusterStore(node: "n1", configuration: EtcdConfiguration(endpoints: [url], tls: tls, requestTimeout: .seconds(2)))
        }
        let good = try store(.init(caFile: dir + "/ca.crt", certFile: dir + "/client.crt", keyFile: dir + "/client.key"))
        var set: ModeSetting?
        let deadline = Date().addingTimeInterval(20)
        while set == nil && Date() < deadline {
            set = try? await good.setMode(.enforce, of: "shop/web/app", by: "alice")
            if set == nil { try await Task.sleep(for: .milliseconds(200)) }
        }
        XCTAssertNotNil(set, "no answer over TLS: \((try? String(contentsOfFile: dir + "/etcd.log", encoding: .utf8))?.suffix(500) ?? "")")
        let read = try await good.mode(of: "shop/web/app")
        XCTAssertEqual(read?.mode, .enforce)
        try await good.checkHealth()
        await good.close()

        // Without a client certificate, with one of another CA, or trusting
        // another CA: refused, as one clear error, nothing written.
        let d: String = dir
        let wrong: [(String, EtcdConfiguration.TLS)] = [
            ("no client certificate", EtcdConfiguration.TLS(caFile: d + "/ca.crt")),
            ("a stranger's certificate", EtcdConfiguration.TLS(caFile: d + "/ca.crt", certFile: d + "/stranger.crt", keyFile: d + "/stranger.key")),
            ("the wrong CA", EtcdConfiguration.TLS(caFile: d + "/otherca.crt", certFile: d + "/client.crt", keyFile: d + "/client.key")),
        ]
        for (what, tls) in wrong {
            let s = try store(tls)
            do {
                _ = try await s.setMode(Mode.learn, of: "shop/web/app", by: "mallory")
                XCTFail("\(what): accepted")
            } catch let e as ClusterStoreError {
                XCTAssertFalse("\(e)".contains("\n"), "\(what): \(e)")
            }
            await s.close()
        }
        let check = try store(.init(caFile: dir + "/ca.crt", certFile: dir + "/client.crt", keyFile: dir + "/client.key"))
        let after = try await check.mode(of: "shop/web/app")
        XCTAssertEqual(after?.mode, .enforce)
        XCTAssertEqual(after?.by, "alice")
        await check.close()

        // A key file that is not a key: one clear error at start.
        XCTAssertThrowsError(try store(.init(caFile: dir + "/ca.crt", certFile: dir + "/client.crt", keyFile: dir + "/client.csr"))) { e in
            XCTAssertFalse("\(e)".contains("\n"))
        }
    }
}
