import ConnGuardCore
import Foundation

/// A `GET /v1/connections` request, parsed and checked as a whole: unknown
/// parameters and bad values are refused with one message that names them.
public struct ConnectionsRequest: Sendable, Equatable {
    public var query = ConnectionQuery()
    public var aggregate = false
    public var follow = false

    public static let parameters: Set<String> = [
        "since", "until", "last", "workload", "container", "namespace", "pod", "port", "peer", "peer_name", "direction",
        "verdict", "aggregate", "follow", "protocol",
    ]
    /// The most rows one request returns; `last` above it is refused.
    public static let maximumRows = 1_000_000

    public init() {}

    /// `now` is wall-clock nanoseconds, for relative times ("15m" ago).
    public init(parameters: [(String, String)], now: Int64) throws {
        var problems: [String] = []
        var seen: Set<String> = []
        for (key, value) in parameters {
            guard ConnectionsRequest.parameters.contains(key) else {
                problems.append("unknown parameter '\(key)'")
                continue
            }
            guard seen.insert(key).inserted else {
                problems.append("'\(key)' given twice")
                continue
            }
            guard value.utf8.count <= 512 else {
                problems.append("'\(key)' is too long")
                continue
            }
            switch key {
            case "since", "until":
                do {
                    let t = try TimeArgument.nanoseconds(value, now: now)
                    if key == "since" { query.since = t } else { query.until = t }
                } catch {
                    problems.append("\(key): \(error)")
                }
            case "last":
                if let n = Int(value), (1...ConnectionsRequest.maximumRows).contains(n) { query.last = n } else {
                    problems.append("last: '\(value)' must be a whole number from 1 to \(ConnectionsRequest.maximumRows)")
                }
            case "port":
                do { query.port = Int(try PortArgument.parse(value)) } catch { problems.append("\(error)") }
            case "peer":
                if let c = CIDR(value) { query.peer = c } else { problems.append("peer: '\(value)' is not an IP address or CIDR") }
            case "peer_name":
                if let n = DNSName(value) { query.peerName = n } else {
                    problems.append("peer_name: '\(value)' is not a DNS name (api.example.test) or a pattern (*.example.test)")
                }
            case "direction":
                switch value {
                case "in", "accept": query.direction = .accept
                case "out", "connect": query.direction = .connect
                default: problems.append("direction: '\(value)' must be in or out")
                }
            case "verdict":
                if let v = Verdict(rawValue: value) { query.verdict = v } else {
                    problems.append("verdict: '\(value)' must be one of \(Verdict.allCases.map(\.rawValue).joined(separator: ", "))")
                }
            case "protocol":
                if let p = ConnectionEvent.IPProtocol(rawValue: value) { query.proto = p } else {
                    problems.append("protocol: '\(value)' must be tcp or udp")
                }
            case "aggregate", "follow":
                guard let b = ["true": true, "1": true, "false": false, "0": false][value] else {
                    problems.append("\(key): '\(value)' must be true or false")
                    continue
                }
                if key == "aggregate" { aggregate = b } else { follow = b }
            case "workload": query.workload = value
            case "container": query.container = value
            case "namespace": query.namespace = value
            case "pod": query.pod = value
            default: break
            }
        }
        if aggregate && follow { problems.append("aggregate and follow cannot be combined") }
        if problems.isEmpty {
            do { try query.validate() } catch { problems.append("\(error)") }
        }
        if !problems.isEmpty { throw APIError.badRequest(problems.joined(separator: "; ")) }
    }

}

public enum APIError: Error, CustomStringConvertible {
    case badRequest(String)
    case notFound(String)
    case forbidden(String)
    /// The request is well formed but cannot be carried out now (the kernel's
    /// rule maps are full); nothing was changed.
    case conflict(String)
    /// Something the request needs is away (the cluster store); nothing
    /// was changed.
    case unavailable(String)

    public var description: String {
        switch self {
        case let .badRequest(m): return m
        case let .notFound(m): return m
        case let .forbidden(m): return m
        case let .conflict(m): return m
        case let .unavailable(m): return m
        }
    }
}
