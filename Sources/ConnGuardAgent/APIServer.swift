import ConnGuardCore
import ConnGuardStore
import Foundation
import Hummingbird
import NIOCore
import ServiceLifecycle

/// The local API the CLI talks to, HTTP over the agent's Unix socket, so that
/// `curl --unix-socket /run/connguard/api.sock http://localhost/v1/status`
/// works too.
///
///   GET /v1/status                  JSON object
///   GET /v1/connections?...         JSON lines (application/x-ndjson)
///   GET /v1/connections?follow=true JSON lines, streamed as they are stored
///
/// Errors are `{"error": "..."}` with status 400 (bad request), 403 (not
/// allowed: see APIAccess), 404 (no such path or workload), 405 (wrong
/// method) or 500. Who asks is the peer's kernel credentials (APIGate).
enum APIRoutes {
    static let ndjson = "application/x-ndjson"

    /// Every path and its method; APIGate answers 404 and 405 from it, and
    /// GET needs the right to read, POST the right to change.
    static let methods: [String: HTTPRequest.Method] = [
        "/v1/status": .get, "/v1/connections": .get, "/v1/baselines": .get, "/v1/baseline": .get,
        "/v1/baseline/diff": .get, "/v1/audit": .get, "/v1/dns": .get,
        "/v1/baseline/import": .post, "/v1/baseline/prune": .post, "/v1/mode": .post,
    ]

    static func build(agent: Agent, access: APIAccess) -> Router<APIRequestContext> {
        let router = Router(context: APIRequestContext.self)
        router.add(middleware: APIGate(access: access))
        router.get("/v1/status") { _, _ -> Response in
            var body = ByteBuffer(data: (try? agent.status().json()) ?? Data("{}".utf8))
            body.writeString("\n")
            return Response(status: .ok, headers: [.contentType: "application/json"], body: .init(byteBuffer: body))
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
        addPolicyRoutes(router, agent: agent)
        return router
    }

    /// Baselines and modes:
    ///   GET  /v1/baselines                              list
    ///   GET  /v1/baseline?workload=W[&format=yaml]      show / export
    ///   GET  /v1/baseline/diff?workload=W&since=1h      rules added since
    ///   POST /v1/baseline/import                        body: YAML; all or nothing
    ///   POST /v1/baseline/prune?workload=W&unused_for=7d
    ///   POST /v1/mode?workload=W&mode=M
    ///   GET  /v1/audit?limit=N
    /// Changes are audited under the peer's kernel credentials (user, uid, pid).
    static func addPolicyRoutes(_ router: Router<APIRequestContext>, agent: Agent) {
        // What each workload resolved: one line per (workload, name, address).
        router.get("/v1/dns") { request, _ -> Response in
            handle {
                let p = try params(request, allowed: ["workload", "name"])
                if let n = p["name"], DNSName(n) == nil {
                    throw APIError.badRequest("name: '\(n)' is not a DNS name (api.example.test)")
                }
                var out: [UInt8] = []
                for line in agent.dnsLines(workload: p["workload"], name: p["name"].flatMap(DNSName.init)?.text) {
                    line.append(to: &out)
                    out.append(UInt8(ascii: "\n"))
                }
                return Response(status: .ok, headers: [.contentType: ndjson], body: .init(byteBuffer: ByteBuffer(bytes: out)))
            }
        }
        router.get("/v1/baselines") { request, _ -> Response in
            handle {
                _ = try params(request, allowed: [])
                var out: [UInt8] = []
                for s in agent.policy.list() {
                    JSONValue.object([
                        ("workload", .string(s.workload)), ("mode", .string(s.mode.rawValue)), ("rules", .int(Int64(s.rules))),
                        ("last_change", .string(BaselineFile.rfc3339(s.lastChange))), ("incomplete", .bool(s.incomplete)),
                    ]).append(to: &out)
                    out.append(UInt8(ascii: "\n"))
                }
                return Response(status: .ok, headers: [.contentType: ndjson], body: .init(byteBuffer: ByteBuffer(bytes: out)))
            }
        }
        router.get("/v1/baseline") { request, _ -> Response in
            handle {
                let p = try params(request, allowed: ["workload", "format"])
                guard let w = p["workload"] else { throw APIError.badRequest("workload is required") }
                guard let b = agent.policy.baseline(w) else { throw APIError.notFound("no workload named '\(w)' (see `connguard baseline list`)") }
                switch p["format"] ?? "json" {
                case "yaml":
                    return Response(status: .ok, headers: [.contentType: "application/yaml"],
                                    body: .init(byteBuffer: ByteBuffer(string: BaselineFile.export(b))))
                case "json": return json(baselineJSON(b, nodes: agent.cluster.map { _ in agent.policy.clusterNodes(of: w) }))
                default: throw APIError.badRequest("format must be json or yaml")
                }
            }
        }
        router.get("/v1/baseline/diff") { request, _ -> Response in
            handle {
                let p = try params(request, allowed: ["workload", "since"])
                guard let w = p["workload"], let since = p["since"] else { throw APIError.badRequest("workload and since are required") }
                let t: Int64
                do { t = try TimeArgument.nanoseconds(since, now: EventStore.now()) } catch { throw APIError.badRequest("since: \(error)") }
                guard let b = agent.policy.baseline(w) else { throw APIError.notFound("no workload named '\(w)'") }
                return json(.object([("workload", .string(w)), ("added", .array(b.added(since: t).map(ruleJSON)))]))
            }
        }
        router.post("/v1/baseline/import") { request, context -> Response in
            do { _ = try params(request, allowed: []) } catch { return errorResponse(.badRequest, "\(error)") }
            let who = context.peer?.auditName ?? "unknown"
            let body: ByteBuffer
            do {
                body = try await request.body.collect(upTo: BaselineFile.maximumBytes + 1)
            } catch {
                return errorResponse(.badRequest, "the file is larger than \(BaselineFile.maximumBytes >> 20) MiB")
            }
            return await handleAsync {
                let b = try BaselineFile.parse(String(buffer: body), now: EventStore.now())
                let before = agent.policy.baseline(b.workload)?.mode
                if let cluster = agent.cluster {
                    try await cluster.importBaseline(b, who: who)
                } else {
                    try agent.policy.importBaseline(b, who: who)
                }
                if before != b.mode {
                    // Audited as a mode change too, by the store, in the import's transaction.
                    agent.logger.notice("mode changed", metadata: ["workload": "\(b.workload)", "mode": "\(b.mode.rawValue)", "by": "\(who)", "reason": "import"])
                }
                return json(.object([("workload", .string(b.workload)), ("mode", .string(b.mode.rawValue)), ("rules", .int(Int64(b.rules.count)))]))
            }
        }
        router.post("/v1/baseline/prune") { request, context -> Response in
            await handleAsync {
                let p = try params(request, allowed: ["workload", "unused_for"])
                guard let w = p["workload"], let u = p["unused_for"] else { throw APIError.badRequest("workload and unused_for are required") }
                let seconds: Double
                do { seconds = try DurationParser.parse(u) } catch { throw APIError.badRequest("unused_for: \(error)") }
                guard seconds > 0 else { throw APIError.badRequest("unused_for: must be more than 0") }
                let who = context.peer?.auditName ?? "unknown"
                let pruned = try await agent.cluster?.prune(w, unusedForSeconds: seconds, who: who)
                    ?? agent.policy.prune(w, unusedForSeconds: seconds, who: who)
                return json(.object([("workload", .string(w)), ("pruned", .array(pruned.map(ruleJSON)))]))
            }
        }
        router.post("/v1/mode") { request, context -> Response in
            await handleAsync {
                let p = try params(request, allowed: ["workload", "mode"])
                guard let w = p["workload"], let m = p["mode"] else { throw APIError.badRequest("workload and mode are required") }
                guard let mode = Mode(rawValue: m) else { throw APIError.badRequest("mode must be learn, monitor or enforce") }
                let who = context.peer?.auditName ?? "unknown"
                if let cluster = agent.cluster {
                    try await cluster.setMode(w, mode, who: who)
                } else {
                    try agent.policy.setMode(w, mode, who: who, reason: "operator")
                }
                return json(.object([("workload", .string(w)), ("mode", .string(mode.rawValue))]))
            }
        }
        router.get("/v1/audit") { request, _ -> Response in
            handle {
                let p = try params(request, allowed: ["limit", "workload"])
                let limit = p["limit"].flatMap(Int.init) ?? 20
                guard (1...10_000).contains(limit) else { throw APIError.badRequest("limit must be from 1 to 10000") }
                let entries = try BaselineStore(store: agent.store).audit(limit: limit, workload: p["workload"])
                return json(.array(entries.map { e in
                    .object([("time", .string(BaselineFile.rfc3339(e.time))), ("who", .string(e.who)),
                             ("workload", e.workload.map { .string($0) } ?? .null), ("action", .string(e.action)), ("detail", .string(e.detail))])
                }))
            }
        }
    }

static func params(_ r: Request, allowed: Set<String>) throws -> [String: String] {
        var out: [String: String] = [:]
        for (k, v) in r.uri.queryParameters {
            let key = String(k)
            guard allowed.contains(key) else { throw APIError.badRequest("unknown parameter '\(key)'") }
            guard out[key] == nil else { throw APIError.badRequest("'\(key)' given twice") }
            guard v.utf8.count <= 1024 else { throw APIError.badRequest("'\(key)' is too long") }
            out[key] = String(v)
        }
        return out
    }
static func handle(_ body: () throws -> Response) -> Response {
        do { return try body() } catch { return errorResponse(for: error) }
    }

    static func handleAsync(_ body: () async throws -> Response) async -> Response {
        do { return try await body() } catch { return errorResponse(for: error) }
    }

    static func errorResponse(for error: Error) -> Response {
        do { throw error } catch let e as APIError {
            switch e {
            case let .badRequest(m): return errorResponse(.badRequest, m)
            case let .notFound(m): return errorResponse(.notFound, m)
            case let .forbidden(m): return errorResponse(.forbidden, m)
            case let .conflict(m): return errorResponse(.conflict, m)
            case let .unavailable(m): return errorResponse(.serviceUnavailable, m)
            }
        } catch let e as BaselineFile.Problems {
            return errorResponse(.badRequest, e.description)
        } catch {
            return errorResponse(.internalServerError, "\(error)")
        }
    }
/// `nodes`: on a cluster, which nodes saw each rule (a rule learnt here
    /// and not merged yet has none).
    static func baselineJSON(_ b: Baseline, nodes: [RuleKey: Set<String>]? = nil) -> JSONValue {
        .object([
            ("workload", .string(b.workload)), ("mode", .string(b.mode.rawValue)),
            ("incomplete", .bool(b.incomplete)),
            ("learning_stopped", b.learningStopped.map { .string($0) } ?? .null),
            ("last_change", .string(BaselineFile.rfc3339(b.lastChange))),
            ("rules", .array(b.sortedRules.map { r in
                guard let nodes else { return ruleJSON(r) }
                guard case var .object(fields) = ruleJSON(r) else { return ruleJSON(r) }
                fields.append(("nodes", .array((nodes[r.key] ?? []).sorted().map { .string($0) })))
                return .object(fields)
            })),
        ])
    }

    static func ruleJSON(_ r: Rule) -> JSONValue {
        .object([
            ("direction", .string(r.key.direction.ruleName)), ("peer", .string(r.key.peer.description)),
            ("port", .int(Int64(r.key.port))), ("protocol", .string(r.key.proto)),
            ("first_seen", .string(BaselineFile.rfc3339(r.firstSeen))), ("last_seen", .string(BaselineFile.rfc3339(r.lastSeen))),
            ("hits", .int(r.hits)),
        ])
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
            // Until the client goes away or the agent is told to stop: then
            // the stream ends properly (its last chunk), so a follower learns
            // that the agent stopped and SIGTERM is not held up by it.
            while !Task.isCancelled && !Task.isShuttingDownGracefully {
                let rows = try store.query(live)
                var out: [UInt8] = []
                for c in rows { c.appendJSONLine(using: &jsonWriter, to: &out) }
                if let lastID = rows.last?.id { live.afterID = lastID }
                // With nothing new, a bare newline (a blank line that JSON-lines
                // readers skip) is how we learn that the client went away.
                try await writer.write(ByteBuffer(bytes: out.isEmpty ? [UInt8(ascii: "\n")] : out))
                try? await cancelWhenGracefulShutdown { try await Task.sleep(for: .milliseconds(250)) }
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
