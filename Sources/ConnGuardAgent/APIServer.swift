import ConnGuardCore
import ConnGuardStore
import Foundation
import Hummingbird
import NIOCore

/// The local API the CLI talks to, HTTP over the agent's Unix socket, so that
/// `curl --unix-socket /run/connguard/api.sock http://localhost/v1/status`
/// works too. Read-only in this version.
///
///   GET /v1/status                  JSON object
///   GET /v1/connections?...         JSON lines (application/x-ndjson)
///   GET /v1/connections?follow=true JSON lines, streamed as they are stored
///
/// Errors are `{"error": "..."}` with status 400 (bad request) or 404.
enum APIRoutes {
    static let ndjson = "application/x-ndjson"

    static func build(agent: Agent) -> Router<BasicRequestContext> {
        let router = Router()
        router.get("/v1/status") { _, _ -> Response in
            json(agent.status())
        }
        router.get("/v1/connections") { request, _ -> Response in
            let parameters = request.uri.queryParameters.map { (String($0.key), String($0.value)) }
            let parsed: ConnectionsRequest
            do {
                parsed = try ConnectionsRequest(parameters: parameters, now: EventStore.now())
            } catch {
                return errorResponse(.badRequest, "\(error)")
            }
            if parsed.follow { return follow(parsed, store: agent.store) }
            do {
                var out: [UInt8] = []
                if parsed.aggregate {
                    for a in try agent.store.queryAggregates(parsed.query) {
                        out.append(contentsOf: a.jsonLine.utf8)
                        out.append(UInt8(ascii: "\n"))
                    }
                } else {
                    var writer = JSONLineWriter()
                    for c in try agent.store.query(parsed.query) {
                        c.appendJSONLine(using: &writer, to: &out)
                    }
                }
                return Response(status: .ok, headers: [.contentType: ndjson], body: .init(byteBuffer: ByteBuffer(bytes: out)))
            } catch let e as QueryError {
                return errorResponse(.badRequest, e.description)
            } catch {
                return errorResponse(.internalServerError, "query failed: \(error)")
            }
        }
        return router
    }

    /// Streams matching rows as they are committed: first those the query
    /// selects (e.g. --since), then every new one, until the client goes away
    /// or the agent stops.
    static func follow(_ request: ConnectionsRequest, store: EventStore) -> Response {
        let body = ResponseBody { writer in
            var jsonWriter = JSONLineWriter()
            // Rows up to startID come from the request's own window (if it
            // has one); everything after it is new, whatever its time.
            let startID = try store.stats().lastEventID
            if request.query.since != nil || request.query.last != nil {
                var out: [UInt8] = []
                for c in try store.query(request.query) where (c.id ?? 0) <= startID {
                    c.appendJSONLine(using: &jsonWriter, to: &out)
                }
                if !out.isEmpty { try await writer.write(ByteBuffer(bytes: out)) }
            }
            var live = request.query
            live.since = nil
            live.until = nil
            live.last = nil
            live.afterID = startID
            while !Task.isCancelled {
                let rows = try store.query(live)
                var out: [UInt8] = []
                for c in rows { c.appendJSONLine(using: &jsonWriter, to: &out) }
                if let lastID = rows.last?.id { live.afterID = lastID }
                // With nothing new, a bare newline (a blank line that JSON-lines
                // readers skip) is how we learn that the client went away.
                try await writer.write(ByteBuffer(bytes: out.isEmpty ? [UInt8(ascii: "\n")] : out))
                try await Task.sleep(for: .milliseconds(250))
            }
            try await writer.finish(nil)
        }
        return Response(status: .ok, headers: [.contentType: ndjson], body: body)
    }

    static func json(_ value: JSONValue, status: HTTPResponse.Status = .ok) -> Response {
        var out: [UInt8] = []
        value.append(to: &out)
        out.append(UInt8(ascii: "\n"))
        return Response(status: status, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(bytes: out)))
    }

    static func errorResponse(_ status: HTTPResponse.Status, _ message: String) -> Response {
        json(.object([("error", .string(message))]), status: status)
    }
}
