import AsyncHTTPClient
import ConnGuardCore
import Foundation
import NIOCore
import NIOSSL

/// How to reach etcd.
public struct EtcdConfiguration: Sendable {
    /// Client URLs of the members, e.g. "http://127.0.0.1:2379" or
    /// "https://etcd-0.example:2379". Requests go to one of them and move to
    /// the next when it fails.
    public var endpoints: [String]
    /// For https endpoints: PEM files, as etcdctl's --cacert, --cert, --key.
    public var tls: TLS?
    /// How long one operation may take, over every endpoint it tries: past
    /// it, it fails with `ClusterStoreError.unavailable` (the agent then goes
    /// on with what it last knew). etcd itself waits about 7 s before it
    /// gives up on a write without quorum; this answers sooner.
    public var requestTimeout: TimeAmount
    /// To open one connection: short, so that a dead member costs little.
    public var connectTimeout: TimeAmount
    /// The TTL of this node's address lease, in seconds; kept alive every
    /// third of it. A node dead for longer loses its addresses.
    public var leaseTTL: Int64
    /// Key root, "/connguard" (keys are under "<root>/v1/").
    public var root: String
    public var limits: ValueLimits

    public struct TLS: Sendable {
        public var caFile: String?
        public var certFile: String?
        public var keyFile: String?
        public init(caFile: String? = nil, certFile: String? = nil, keyFile: String? = nil) {
            self.caFile = caFile
            self.certFile = certFile
            self.keyFile = keyFile
        }
    }

    public init(endpoints: [String], tls: TLS? = nil, requestTimeout: TimeAmount = .seconds(4),
                connectTimeout: TimeAmount = .milliseconds(1000), leaseTTL: Int64 = 10,
                root: String = "/connguard", limits: ValueLimits = ValueLimits()) {
        self.endpoints = endpoints
        self.tls = tls
        self.requestTimeout = requestTimeout
        self.connectTimeout = connectTimeout
        self.leaseTTL = leaseTTL
        self.root = root
        self.limits = limits
    }
}

/// etcd's v3 API through its JSON gateway (grpc-gateway: protobuf's JSON
/// mapping, so int64 fields are strings and bytes are base64), over
/// async-http-client. Fails over between endpoints.
final class EtcdGateway: Sendable {
    let http: HTTPClient
    let endpoints: [String]
    let requestTimeout: TimeAmount
    private let lock = Mutex()
    nonisolated(unsafe) private var current = 0

    init(_ c: EtcdConfiguration) throws {
        guard !c.endpoints.isEmpty else { throw ClusterStoreError.invalidArgument("no etcd endpoints") }
        var endpoints: [String] = []
        for e in c.endpoints {
            let trimmed = e.hasSuffix("/") ? String(e.dropLast()) : e
            guard let u = URL(string: trimmed), let scheme = u.scheme, scheme == "http" || scheme == "https", u.host != nil else {
                throw ClusterStoreError.invalidArgument("etcd endpoint \(e) is not an http:// or https:// URL")
            }
            endpoints.append(trimmed)
        }
        var config = HTTPClient.Configuration()
        if let t = c.tls {
            var tls = TLSConfiguration.makeClientConfiguration()
            do {
                if let ca = t.caFile { tls.trustRoots = .file(ca) }
                if let cert = t.certFile { tls.certificateChain = try NIOSSLCertificate.fromPEMFile(cert).map { .certificate($0) } }
                if let key = t.keyFile { tls.privateKey = .privateKey(try NIOSSLPrivateKey(file: key, format: .pem)) }
            } catch {
                throw ClusterStoreError.invalidArgument("etcd TLS files: \(error)")
            }
            config.tlsConfiguration = tls
        }
        config.timeout = .init(connect: c.connectTimeout)
        // etcd never redirects; a redirect would be someone else answering.
        config.redirectConfiguration = .disallow
        self.http = HTTPClient(eventLoopGroupProvider: .singleton, configuration: config)
        self.endpoints = endpoints
        self.requestTimeout = c.requestTimeout
    }

    func shutdown() async {
        try? await http.shutdown()
    }

    /// The endpoint to try first; moves on when it fails.
    func startIndex() -> Int { lock.withLock { current } }
    func failed(_ index: Int) { lock.withLock { if current == index { current = (index + 1) % endpoints.count } } }

    /// One unary call, e.g. "/v3/kv/range". Tries the endpoints in turn
    /// until one answers or the request timeout passes; errors that another
    /// member may not have (unreachable, no leader, timed out) move on to the
    /// next, others are final.
    func call<Req: Encodable, Resp: Decodable>(_ path: String, _ body: Req, as: Resp.Type) async throws -> Resp {
        let payload = try JSONEncoder().encode(body)
        let deadline = NIODeadline.now() + requestTimeout
        // Each try gets a share of the time, so that a member that accepts
        // connections but cannot commit (no quorum) leaves time for another.
        let perTry = TimeAmount.nanoseconds(max(requestTimeout.nanoseconds / Int64(endpoints.count), 500_000_000))
        var lastError = "no endpoint tried"
        var index = startIndex()
        var tries = 0
        while NIODeadline.now() < deadline {
            try Task.checkCancellation()
            let endpoint = endpoints[index]
            var request = HTTPClientRequest(url: endpoint + path)
            request.method = .POST
            request.headers.add(name: "Content-Type", value: "application/json")
            request.body = .bytes(ByteBuffer(bytes: payload))
            do {
                let response = try await http.execute(request, deadline: min(deadline, .now() + perTry))
                let bytes = try await response.body.collect(upTo: 256 << 20)
                let data = Data(bytes.readableBytesView)
                if response.status == .ok {
                    do {
                        return try JSONDecoder().decode(Resp.self, from: data)
                    } catch {
                        throw ClusterStoreError.refused("\(endpoint)\(path): unexpected answer: \(Values.describe(error))")
                    }
                }
                let e = (try? JSONDecoder().decode(GatewayError.self, from: data)) ?? GatewayError(error: nil, message: nil, code: nil)
                let message = e.message ?? e.error ?? String(decoding: data.prefix(200), as: UTF8.self)
                // gRPC codes: 4 deadline exceeded, 14 unavailable (no leader,
                // member stopping); 13 internal is what etcd says for a
                // proposal dropped while the leader changes.
                if e.code == 4 || e.code == 14 || e.code == 13 || message.contains("leader") || message.contains("timed out") {
                    lastError = "\(endpoint): \(message)"
                } else {
                    throw ClusterStoreError.refused("\(endpoint)\(path): \(message) (HTTP \(response.status.code))")
                }
            } catch let e as ClusterStoreError {
                throw e
            } catch is CancellationError {
                throw CancellationError()
            } catch {
                lastError = "\(endpoint): \(error)"
            }
            failed(index)
            index = (index + 1) % endpoints.count
            tries += 1
            // Every endpoint failed fast (refused): wait a little before the next round.
            if tries % endpoints.count == 0 { try? await Task.sleep(nanoseconds: 200_000_000) }
        }
        throw ClusterStoreError.unavailable("no etcd member could answer \(path) within \(requestTimeout.nanoseconds / 1_000_000) ms (last: \(lastError))")
    }

    /// Opens a watch on one endpoint (the current one) and returns its
    /// stream of responses: one JSON object per line. Throws when it cannot
    /// connect; the stream throws or ends when the connection does.
    func openWatch(_ create: WatchCreate) async throws -> (endpoint: String, responses: AsyncThrowingStream<WatchResponse, Error>) {
        let index = startIndex()
        let endpoint = endpoints[index]
        var request = HTTPClientRequest(url: endpoint + "/v3/watch")
        request.method = .POST
        request.headers.add(name: "Content-Type", value: "application/json")
        request.body = .bytes(ByteBuffer(bytes: try JSONEncoder().encode(WatchRequest(create_request: create))))
        let response: HTTPClientResponse
        do {
            // No deadline: a watch lasts as long as the connection.
            response = try await http.execute(request, deadline: .distantFuture)
        } catch {
            failed(index)
            throw error
        }
        guard response.status == .ok else {
            failed(index)
            throw ClusterStoreError.refused("\(endpoint)/v3/watch: HTTP \(response.status.code)")
        }
        let stream = AsyncThrowingStream<WatchResponse, Error> { continuation in
            let task = Task {
                var pending = Data()
                do {
                    for try await chunk in response.body {
                        pending.append(contentsOf: chunk.readableBytesView)
                        while let nl = pending.firstIndex(of: UInt8(ascii: "\n")) {
                            let line = pending[pending.startIndex..<nl]
                            pending = Data(pending[pending.index(after: nl)...])
                            if line.allSatisfy({ $0 == 0x20 || $0 == 0x0d }) { continue }
                            let envelope = try JSONDecoder().decode(WatchEnvelope.self, from: line)
                            if let r = envelope.result {
                                continuation.yield(r)
                            } else if let e = envelope.error {
                                throw ClusterStoreError.unavailable("\(endpoint) watch: \(e.message ?? e.error ?? "error")")
                            }
                        }
                    }
                    continuation.finish(throwing: ClusterStoreError.unavailable("\(endpoint) closed the watch"))
                } catch {
                    continuation.finish(throwing: error)
                }
            }
            continuation.onTermination = { _ in task.cancel() }
        }
        return (endpoint, stream)
    }
}

// MARK: the gateway's JSON (etcdserverpb, protobuf JSON mapping)

/// An int64, which protobuf's JSON mapping writes as a string.
struct I64: Codable, Sendable, Equatable {
    var value: Int64
    init(_ v: Int64) { value = v }
    init(from decoder: Decoder) throws {
        let c = try decoder.singleValueContainer()
        if let s = try? c.decode(String.self), let v = Int64(s) {
            value = v
        } else {
            value = try c.decode(Int64.self)
        }
    }
    func encode(to encoder: Encoder) throws {
        var c = encoder.singleValueContainer()
        try c.encode(String(value))
    }
}

/// Keys and values are bytes: base64 in JSON.
struct B64: Codable, Sendable, Equatable {
    var data: Data
    init(_ d: Data) { data = d }
    init(_ s: String) { data = Data(s.utf8) }
    var string: String { String(decoding: data, as: UTF8.self) }
    init(from decoder: Decoder) throws {
        let s = try decoder.singleValueContainer().decode(String.self)
        guard let d = Data(base64Encoded: s) else {
            throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: "not base64"))
        }
        data = d
    }
    func encode(to encoder: Encoder) throws {
        var c = encoder.singleValueContainer()
        try c.encode(data.base64EncodedString())
    }

    /// The end of the range of every key starting with `prefix`.
    static func rangeEnd(_ prefix: String) -> B64 {
        var bytes = Array(prefix.utf8)
        while let last = bytes.last {
            if last < 0xff { bytes[bytes.count - 1] = last + 1; return B64(Data(bytes)) }
            bytes.removeLast()
        }
        return B64(Data([0]))
    }
}

struct GatewayError: Decodable { var error: String?; var message: String?; var code: Int? }

struct Header: Codable, Sendable { var revision: I64? }

struct KeyValue: Codable, Sendable {
    var key: B64
    var value: B64?
    var mod_revision: I64?
    var create_revision: I64?
    var lease: I64?
}

struct RangeRequest: Encodable {
    var key: B64
    var range_end: B64?
    var limit: I64?
    var revision: I64?
}

struct RangeResponse: Decodable {
    var header: Header?
    var kvs: [KeyValue]?
    var more: Bool?
}

struct PutRequest: Encodable {
    var key: B64
    var value: B64
    var lease: I64?
}

struct PutResponse: Decodable { var header: Header? }

struct DeleteRangeRequest: Encodable { var key: B64 }

struct Compare: Encodable {
    var key: B64
    var target = "MOD"
    var result = "EQUAL"
    var mod_revision: I64
}

struct RequestOp: Encodable {
    var request_put: PutRequest?
    var request_delete_range: DeleteRangeRequest?
    var request_range: RangeRequest?
}

struct TxnRequest: Encodable {
    var compare: [Compare]
    var success: [RequestOp]
    var failure: [RequestOp]
}

struct ResponseOp: Decodable { var response_range: RangeResponse? }

struct TxnResponse: Decodable {
    var header: Header?
    var succeeded: Bool?
    var responses: [ResponseOp]?
}

struct LeaseGrantRequest: Encodable { var TTL: I64; var ID: I64 }
struct LeaseGrantResponse: Decodable { var ID: I64?; var TTL: I64?; var error: String? }
struct LeaseKeepAliveRequest: Encodable { var ID: I64 }
struct LeaseKeepAliveEnvelope: Decodable {
    struct Result: Decodable { var ID: I64?; var TTL: I64? }
    var result: Result?
}

struct WatchCreate: Encodable {
    var key: B64
    var range_end: B64
    var start_revision: I64
    var progress_notify = true
}

struct WatchRequest: Encodable { var create_request: WatchCreate }

struct WatchEvent: Decodable, Sendable {
    /// "PUT" is protobuf's default and so left out.
    var type: String?
    var kv: KeyValue?
}

struct WatchResponse: Decodable, Sendable {
    var header: Header?
    var created: Bool?
    var canceled: Bool?
    var compact_revision: I64?
    var cancel_reason: String?
    var events: [WatchEvent]?
}

struct WatchEnvelope: Decodable {
    var result: WatchResponse?
    var error: GatewayError?
}
