import ConnGuardCore
import Foundation
import Yams

/// The YAML form of a baseline, for `connguard baseline export` / `import`
/// and `show -o yaml`:
///
///     workload: shop/web/nginx
///     mode: enforce
///     rules:
///       - direction: out          # out: it connects; in: it accepts
///         peer: 10.0.3.7          # an address, a CIDR (10.0.0.0/8), workload:NAME,
///                                 # or {name: api.example.test} (out only; also *.example.test)
///         port: 5432              # the remote port (out) or local port (in)
///         protocol: tcp         # or udp (out: the peer's port; in: the local port the server is bound to)
///         first_seen: 2026-11-27T03:09:00Z   # optional, kept on export
///         last_seen: 2026-11-27T04:00:00Z    # optional
///         hits: 42                            # optional
///
/// An import is checked as a whole: every problem is listed, and nothing is
/// applied unless there are none.
public enum BaselineFile {
    /// Larger files are refused before parsing.
    public static let maximumBytes = 16 << 20
    public static let maximumRules = 100_000
    public static let topKeys: Set<String> = ["workload", "mode", "rules"]
    public static let ruleKeys: Set<String> = ["direction", "peer", "port", "protocol", "first_seen", "last_seen", "hits"]

    public struct Problems: Error, CustomStringConvertible {
        public let list: [String]
        /// Problems listed at most; the rest are counted (a file with 36,000
        /// bad rules is one readable answer, not 2 MB of them).
        public static let shown = 20

        public var description: String {
            if list.count == 1 { return list[0] }
            let more = list.count > Self.shown ? "\n  - ... and \(list.count - Self.shown) more" : ""
            return "\(list.count) problems:\n" + list.prefix(Self.shown).map { "  - " + $0 }.joined(separator: "\n") + more
        }
    }

    public static func export(_ b: Baseline) -> String {
        var lines = ["workload: \(quote(b.workload))", "mode: \(b.mode.rawValue)"]
        if b.rules.isEmpty {
            lines.append("rules: []")
        } else {
            lines.append("rules:")
            for r in b.sortedRules {
                lines.append("  - direction: \(r.key.direction.ruleName)")
                if case let .name(n) = r.key.peer {
                    lines.append("    peer: {name: \(quote(n.text))}")
                } else {
                    lines.append("    peer: \(quote(r.key.peer.description))")
                }
                lines.append("    port: \(r.key.port)")
                lines.append("    protocol: \(r.key.proto)")
                lines.append("    first_seen: \(rfc3339(r.firstSeen))")
                lines.append("    last_seen: \(rfc3339(r.lastSeen))")
                lines.append("    hits: \(r.hits)")
            }
        }
        return lines.joined(separator: "\n") + "\n"
    }

    /// Parses and validates; `now` stamps rules that carry no times.
    public static func parse(_ text: String, now: Int64) throws -> Baseline {
        guard text.utf8.count <= maximumBytes else {
            throw Problems(list: ["the file is larger than \(maximumBytes >> 20) MiB"])
        }
        let node: Any?
        do {
            node = try LimitedYAML.load(text)
        } catch let e as LimitedYAML.Refused {
            throw Problems(list: [e.description])
        } catch {
            let first = String(describing: error).split(separator: "\n").first.map(String.init) ?? "\(error)"
            throw Problems(list: ["not valid YAML: \(first)"])
        }
        guard let top = node as? [String: Any] else {
            throw Problems(list: ["the file must be a mapping with workload, mode and rules"])
        }
        var problems: [String] = []
        for k in top.keys.sorted() where !topKeys.contains(k) { problems.append("unknown key '\(k)' (expected workload, mode, rules)") }
        var workload = ""
        if let w = top["workload"] as? String, validWorkload(w) { workload = w } else {
            problems.append("workload: missing, or not a name of 1 to 512 printable characters")
        }
        var mode = Mode.learn
        if let m = top["mode"] as? String, let parsed = Mode(rawValue: m) { mode = parsed } else {
            problems.append("mode: missing, or not one of learn, monitor, enforce")
        }
        var rules: [Rule] = []
        var seen: Set<RuleKey> = []
        if let list = top["rules"] as? [Any] {
            if list.count > maximumRules { problems.append("rules: \(list.count) rules, more than the \(maximumRules) allowed") }
            for (i, item) in list.prefix(maximumRules).enumerated() {
                let at = "rules[\(i)]"
                guard let r = item as? [String: Any] else { problems.append("\(at): not a mapping"); continue }
                var ok = true
                for k in r.keys.sorted() where !ruleKeys.contains(k) { problems.append("\(at): unknown key '\(k)'"); ok = false }
                let direction = (r["direction"] as? String).flatMap(ConnectionEvent.Direction.init(ruleName:))
                if direction == nil { problems.append("\(at).direction: must be out or in"); ok = false }
                var peer = (r["peer"] as? String).flatMap(parsePeer)
                // peer: {name: api.example.test} (or *.example.test), as the README writes it.
                if let m = r["peer"] as? [String: Any], m.count == 1, let n = (m["name"] as? String).flatMap(DNSName.init) { peer = .name(n) }
                if peer == nil {
                    problems.append("\(at).peer: must be an address, a CIDR, workload:NAME, or {name: api.example.test} (a DNS name, or *.example.test)")
                    ok = false
                }
                if case .name? = peer, direction == .accept {
                    problems.append("\(at).peer: a DNS name is a rule on outbound connections only (direction: out)")
                    ok = false
                }
                let port = (r["port"] as? Int).flatMap { (1...65535).contains($0) ? UInt16($0) : nil }
                if port == nil { problems.append("\(at).port: must be a whole number from 1 to 65535"); ok = false }
                let proto = r["protocol"] as? String ?? "tcp"
                if ConnectionEvent.IPProtocol(rawValue: proto) == nil { problems.append("\(at).protocol: must be tcp or udp"); ok = false }
                var first = now, last = now, hits: Int64 = 0
                if let v = r["first_seen"] { if let t = time(v) { first = t } else { problems.append("\(at).first_seen: not an RFC 3339 time"); ok = false } }
                if let v = r["last_seen"] { if let t = time(v) { last = t } else { problems.append("\(at).last_seen: not an RFC 3339 time"); ok = false } }
                if let v = r["hits"] { if let h = v as? Int, h >= 0 { hits = Int64(h) } else { problems.append("\(at).hits: must be a whole number ≥ 0"); ok = false } }
                guard ok, let direction, let peer, let port else { continue }
                let key = RuleKey(direction: direction, peer: peer, port: port, proto: proto)
                guard seen.insert(key).inserted else { problems.append("\(at): duplicate of an earlier rule"); continue }
                rules.append(Rule(key: key, firstSeen: first, lastSeen: max(first, last), hits: hits))
            }
        } else if top["rules"] != nil && !(top["rules"] is NSNull) {
            problems.append("rules: must be a list")
        }
        if !problems.isEmpty { throw Problems(list: problems) }
        return Baseline(workload: workload, mode: mode, rules: rules, learningSince: now, lastChange: now)
    }

    public static func parsePeer(_ text: String) -> Peer? {
        if text.hasPrefix("workload:") {
            let w = String(text.dropFirst("workload:".count))
            return validWorkload(w) ? .workload(w) : nil
        }
        if text.hasPrefix("name:") { return DNSName(String(text.dropFirst("name:".count))).map { .name($0) } }
        return CIDR(text).map { .network($0) }
    }

    /// Workload names are shown to people and stored: printable, bounded.
    public static func validWorkload(_ w: String) -> Bool {
        !w.isEmpty && w.utf8.count <= 512 && !w.unicodeScalars.contains { $0.value < 0x20 || $0.value == 0x7f }
    }

    static func time(_ value: Any) -> Int64? {
        if let d = value as? Date { return RFC3339.nanoseconds(d) }  // Yams reads unquoted timestamps as Date
        return (value as? String).flatMap(RFC3339.nanoseconds)
    }

    public static func rfc3339(_ ns: Int64) -> String { RFC3339.string(ns) }

    /// Double-quoted YAML scalar, so names with ':' or '#' survive.
    static func quote(_ s: String) -> String {
        var out = "\""
        for ch in s.unicodeScalars {
            switch ch {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            default: out.unicodeScalars.append(ch)
            }
        }
        return out + "\""
    }
}
