import ConnGuardCore
import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix

/// Talks to the agent's API: HTTP/1.1 over its Unix socket, using
/// swift-nio's HTTP codec.
struct APIClient {
    static let defaultSocket = "/run/connguard/api.sock"
    let socketPath: String

    struct Failure: Error, CustomStringConvertible {
        let description: String
    }

    /// GETs `path` with `query`, calling `onLine` for each non-empty line of
    /// the body as it arrives (JSON lines; a streamed response never ends
    /// until the agent stops, `onLine` returns false or `stop` returns true).
    func get(_ path: String, query: [(String, String)] = [], stop: () -> Bool = { false },
             onLine: (String) throws -> Bool) async throws {
        try await request(.GET, path, query: query, stop: stop, onLine: onLine)
    }

    /// The whole answer of a request, as text.
    func send(_ method: HTTPMethod, _ path: String, query: [(String, String)] = [], body: [UInt8]? = nil) async throws -> String {
        var lines: [String] = []
        try await request(method, path, query: query, body: body, keepBlankLines: true) { lines.append($0); return true }
        return lines.joined(separator: "\n")
    }

    func request(_ method: HTTPMethod, _ path: String, query: [(String, String)] = [], body: [UInt8]? = nil,
                 keepBlankLines: Bool = false, stop: () -> Bool = { false },
                 onLine: (String) throws -> Bool) async throws {
        try checkSocket()
        var components = URLComponents()
        components.path = path
        if !query.isEmpty { components.queryItems = query.map { URLQueryItem(name: $0.0, value: $0.1) } }
        // '+' would be read as a space by the server's form decoding.
        let target = (components.string ?? path).replacingOccurrences(of: "+", with: "%2B")

        let channel: NIOAsyncChannel<HTTPClientResponsePart, HTTPClientRequestPart>
        do {
            channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .connect(unixDomainSocketPath: socketPath) { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHTTPClientHandlers()
                        return try NIOAsyncChannel<HTTPClientResponsePart, HTTPClientRequestPart>(wrappingChannelSynchronously: channel)
                    }
                }
        } catch {
            throw Failure(description: "cannot connect to the agent at \(socketPath): \(Self.reason(error)) (is `connguard agent` running?)")
        }
        // An answer is complete only with its end (the chunked body's last
        // chunk, or the whole Content-Length): a connection that closes
        // before it (the agent died or stopped mid-answer) is an error, not
        // an empty or cut-short answer printed as if it were whole.
        var complete = false
        do {
            try await channel.executeThenClose { inbound, outbound in
                var head = HTTPRequestHead(version: .http1_1, method: method, uri: target)
                head.headers.add(name: "Host", value: "localhost")
                if let body { head.headers.add(name: "Content-Length", value: String(body.count)) }
                try await outbound.write(.head(head))
                if let body { try await outbound.write(.body(.byteBuffer(ByteBuffer(bytes: body)))) }
                try await outbound.write(.end(nil))
                var status: HTTPResponseStatus = .ok
                var pending: [UInt8] = []
                var errorBody: [UInt8] = []
                for try await part in inbound {
                    switch part {
                    case let .head(h):
                        status = h.status
                    case var .body(buffer):
                        let bytes = buffer.readBytes(length: buffer.readableBytes) ?? []
                        if status != .ok { errorBody += bytes; continue }
                        pending += bytes
                        while let nl = pending.firstIndex(of: UInt8(ascii: "\n")) {
                            let line = String(decoding: pending[..<nl], as: UTF8.self)
                            pending.removeSubrange(...nl)
                            if !line.isEmpty || keepBlankLines, try !onLine(line) { complete = true; return }
                        }
                        // A streamed answer sends a blank line now and then even
                        // when nothing is new, so this is checked regularly.
                        if stop() { complete = true; return }
                    case .end:
                        complete = true
                        if status != .ok {
                            throw Failure(description: Self.errorMessage(errorBody, status: status))
                        }
                        if !pending.isEmpty { _ = try onLine(String(decoding: pending, as: UTF8.self)) }
                        return
                    }
                }
            }
        } catch let e as Failure {
            throw e
        } catch where !complete {
            throw Failure(description: "the connection to the agent failed before its answer was complete: \(Self.reason(error))")
        }
        if !complete {
            throw Failure(description: Self.incomplete)
        }
    }

    /// What a cut-short answer is called (the agent died or stopped mid-answer).
    static let incomplete = "the agent closed the connection before its answer was complete"

    private func checkSocket() throws {
        var st = stat()
        if stat(socketPath, &st) != 0 {
            if errno == EACCES {
                throw Failure(description: "no permission to reach \(socketPath): run as root, or start the agent with --socket-group and join that group")
            }
            throw Failure(description: "the agent is not running (no socket at \(socketPath)); start it with `connguard agent`, or pass --socket")
        }
        if (st.st_mode & S_IFMT) != S_IFSOCK {
            throw Failure(description: "\(socketPath) is not a socket (is --socket right? the agent's is \(Self.defaultSocket) unless it was started with --socket)")
        }
        if access(socketPath, R_OK | W_OK) != 0 {
            throw Failure(description: "no permission to use \(socketPath): run as root, or start the agent with --socket-group and join that group")
        }
    }

    private static func reason(_ error: Error) -> String {
        if let e = error as? IOError { return String(cString: strerror(e.errnoCode)) }
        if let e = error as? HTTPParserError { return "a malformed HTTP answer (\(e))" }
        return "\(error)"
    }

    private static func errorMessage(_ body: [UInt8], status: HTTPResponseStatus) -> String {
        if let obj = try? JSONSerialization.jsonObject(with: Data(body)) as? [String: Any] {
            if let m = obj["error"] as? String { return m }
            if let e = obj["error"] as? [String: Any], let m = e["message"] as? String { return m }
        }
        return "the agent answered \(status.code) \(status.reasonPhrase)"
    }
}
