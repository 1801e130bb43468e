// What reaches the agent from outside: YAML (baseline imports over the API,
// config files) and the query parameters of API requests.
import ConnGuardAgentInput
import ConnGuardCore
import Foundation

/// A small node limit, so that inputs near it stay fast under the sanitizers;
/// the limit works the same at any size (the real one is checked by baseline
/// and config, which use the defaults).
let yamlNodeLimit = 5_000

/// Nodes in a loaded value, counted as LimitedYAML counts them (a mapping's
/// keys count one each here, so this is never more than its count).
func nodes(_ v: Any, depth: Int = 1) -> (count: Int, depth: Int) {
    if let d = v as? [String: Any] {
        var count = 1, deepest = depth
        for (_, value) in d {
            let n = nodes(value, depth: depth + 1)
            count += 1 + n.count
            deepest = max(deepest, n.depth)
        }
        return (count, deepest)
    }
    if let a = v as? [Any] {
        var count = 1, deepest = depth
        for value in a {
            let n = nodes(value, depth: depth + 1)
            count += n.count
            deepest = max(deepest, n.depth)
        }
        return (count, deepest)
    }
    return (1, depth)
}

func fuzzYAML(_ data: UnsafeRawBufferPointer) {
    let s = text(data)
    do {
        guard let v = try LimitedYAML.load(s, maximumNodes: yamlNodeLimit, maximumDepth: LimitedYAML.maximumDepth) else { return }
        let n = nodes(v)
        // Aliases expand: the result must still be within the limits, however
        // the anchors nest.
        require(n.count <= yamlNodeLimit, "loaded \(n.count) nodes, limit \(yamlNodeLimit)")
        require(n.depth <= LimitedYAML.maximumDepth, "loaded \(n.depth) levels, limit \(LimitedYAML.maximumDepth)")
    } catch let e as LimitedYAML.Refused {
        requireOneLine(e.description)
    } catch {
        // Yams' own errors: not YAML. Fine.
    }
}

let fixedNow: Int64 = 1_795_000_000_000_000_000  // 2026-11-17

func fuzzBaseline(_ data: UnsafeRawBufferPointer) {
    let s = text(data)
    let b: Baseline
    do {
        b = try BaselineFile.parse(s, now: fixedNow)
    } catch let e as BaselineFile.Problems {
        require(!e.list.isEmpty, "refused with no problem listed")
        return
    } catch {
        require(false, "an error that is not BaselineFile.Problems: \(error)")
        return
    }
    require(BaselineFile.validWorkload(b.workload), "workload \(b.workload.debugDescription) accepted")
    require(b.rules.count <= BaselineFile.maximumRules, "\(b.rules.count) rules")
    for (key, rule) in b.rules {
        require(key == rule.key && key.port >= 1 && key.proto == "tcp", "rule \(key)")
        require(rule.firstSeen <= rule.lastSeen && rule.hits >= 0, "rule \(key): times or hits")
    }
    // What export writes, import reads back as the same baseline (times to
    // the second: export writes whole seconds).
    let exported = BaselineFile.export(b)
    let again: Baseline
    do {
        again = try BaselineFile.parse(exported, now: fixedNow)
    } catch {
        require(false, "the export of an imported baseline is refused: \(error)\n\(exported)")
        return
    }
    require(again.workload == b.workload && again.mode == b.mode, "workload or mode changed: \(b.workload.debugDescription) -> \(again.workload.debugDescription)")
    require(Set(again.rules.keys) == Set(b.rules.keys), "rules changed on export and import:\n\(exported)")
    for (key, rule) in b.rules {
        let r = again.rules[key]!
        require(r.hits == rule.hits, "hits of \(key)")
        require(r.firstSeen / 1_000_000_000 == rule.firstSeen / 1_000_000_000
                && r.lastSeen / 1_000_000_000 == rule.lastSeen / 1_000_000_000, "times of \(key)")
    }
}

func fuzzConfig(_ data: UnsafeRawBufferPointer) {
    let s = text(data)
    do {
        let c = try AgentConfiguration.load(yaml: s)
        require(c.validate().isEmpty, "accepted with problems: \(c.validate())")
        for d in [c.eventRetentionSeconds, c.aggregateRetentionSeconds, c.quietPeriodSeconds, c.learningPeriodSeconds ?? 1] {
            require(d > 0 && d <= DurationParser.maximumSeconds, "duration \(d)")
        }
        require(c.ringBufferMiB >= 1 && c.ringBufferMiB & (c.ringBufferMiB - 1) == 0, "ring buffer \(c.ringBufferMiB) MiB")
        if let m = c.metricsAddress { require(MetricsAddress(m) != nil, "metrics address \(m)") }
    } catch let e as ConfigurationError {
        require(!e.problems.isEmpty, "refused with no problem listed")
    } catch {
        require(false, "an error that is not ConfigurationError: \(error)")
    }
    if let m = MetricsAddress(s) {
        require((1...65535).contains(m.port) && !m.host.isEmpty, "metrics address \(s.debugDescription) -> \(m)")
    }
}

/// The input as a query string, "k=v&k=v", split as the server's URI parser
/// hands them over (already percent-decoded).
func fuzzAPIRequest(_ data: UnsafeRawBufferPointer) {
    let s = text(data)
    let parameters: [(String, String)] = s.split(separator: "&", omittingEmptySubsequences: false).map { pair in
        let kv = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
        return (String(kv[0]), kv.count > 1 ? String(kv[1]) : "")
    }
    do {
        let r = try ConnectionsRequest(parameters: parameters, now: fixedNow)
        let q = r.query
        require((try? q.validate()) != nil, "accepted a query that does not validate: \(q)")
        if let last = q.last { require((1...ConnectionsRequest.maximumRows).contains(last), "last \(last)") }
        if let port = q.port { require((1...65535).contains(port), "port \(port)") }
        if let since = q.since { require(since >= 0 && since < RFC3339.latestNanoseconds, "since \(since)") }
        if let until = q.until { require(until >= 0 && until < RFC3339.latestNanoseconds, "until \(until)") }
        require(!(r.aggregate && r.follow), "aggregate and follow together")
        require(Set(parameters.map(\.0)).isSubset(of: ConnectionsRequest.parameters), "accepted an unknown parameter")
    } catch let e as APIError {
        guard case let .badRequest(m) = e else { require(false, "not a bad request: \(e)"); return }
        require(!m.isEmpty, "empty message")
    } catch {
        require(false, "an error that is not APIError: \(error)")
    }
}
