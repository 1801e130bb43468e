import ConnGuardCore
import Foundation

/// Where each kind of value lives in the store, and what each value looks
/// like (docs/cluster.md, "Key layout" and "Values"):
///
///     <root>/v1/addresses/<node>/<address>   {"v":1,"workload":W}            under the node's lease
///     <root>/v1/baselines/<workload>         {"v":1,"workload":W,"rules":[...]}  one value, CAS on mod_revision
///     <root>/v1/modes/<workload>             {"v":1,"workload":W,"mode":M,"by":U,"node":N,"at":NS}
///
/// A workload's name is the rest of the key, verbatim (it may hold '/'):
/// `etcdctl get /connguard/v1/modes/shop/web/nginx` reads as it should. The
/// value repeats it, and a value whose name differs from its key's is refused.
public struct KeyLayout: Sendable, Equatable {
    /// The format version of the values this code writes and the newest it reads.
    public static let valueVersion = 1

    /// "/connguard/v1/" by default.
    public let prefix: String
    public var addresses: String { prefix + "addresses/" }
    public var baselines: String { prefix + "baselines/" }
    public var modes: String { prefix + "modes/" }

    /// `root` lets several clusters (or test runs) share one etcd.
    public init(root: String = "/connguard") {
        let r = root.hasSuffix("/") ? String(root.dropLast()) : root
        prefix = r + "/v1/"
    }

    public func addressKey(node: String, address: IPAddress) -> String { addresses + node + "/" + address.description }
    public func nodePrefix(_ node: String) -> String { addresses + node + "/" }
    public func baselineKey(_ workload: String) -> String { baselines + workload }
    public func modeKey(_ workload: String) -> String { modes + workload }

    public enum Key: Equatable, Sendable {
        case address(node: String, address: IPAddress)
        case baseline(workload: String)
        case mode(workload: String)
    }

    /// What a key names, or why it is outside the layout.
    public func parse(_ key: String) -> Result<Key, ClusterProblem> {
        func bad(_ why: String) -> Result<Key, ClusterProblem> { .failure(ClusterProblem(key: key, reason: why)) }
        if key.hasPrefix(addresses) {
            let rest = key.dropFirst(addresses.count)
            guard let slash = rest.firstIndex(of: "/") else { return bad("outside the key layout: no address after the node") }
            let node = String(rest[..<slash])
            if let why = Self.nodeNameProblem(node) { return bad("outside the key layout: \(why)") }
            guard let a = IPAddress(String(rest[rest.index(after: slash)...])) else {
                return bad("outside the key layout: not an IP address after the node")
            }
            return .success(.address(node: node, address: a))
        }
        if key.hasPrefix(baselines) {
            let w = String(key.dropFirst(baselines.count))
            if let why = Self.workloadNameProblem(w) { return bad("outside the key layout: \(why)") }
            return .success(.baseline(workload: w))
        }
        if key.hasPrefix(modes) {
            let w = String(key.dropFirst(modes.count))
            if let why = Self.workloadNameProblem(w) { return bad("outside the key layout: \(why)") }
            return .success(.mode(workload: w))
        }
        return bad("outside the key layout (\(prefix){addresses,baselines,modes}/...)")
    }

    /// A node name is one path component: it ends at the first '/' of an address key.
    public static func nodeNameProblem(_ node: String) -> String? {
        if node.isEmpty { return "empty node name" }
        if node.utf8.count > 253 { return "node name longer than 253 bytes" }
        if node.contains("/") { return "node name with '/'" }
        if node.unicodeScalars.contains(where: { $0.value < 0x21 || $0.value == 0x7f }) { return "node name with a space or control character" }
        return nil
    }

    public static func workloadNameProblem(_ w: String) -> String? {
        if w.isEmpty { return "empty workload name" }
        if w.utf8.count > 1024 { return "workload name longer than 1024 bytes" }
        if w.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7f }) { return "workload name with a control character" }
        return nil
    }
}

/// Limits on what is read from or written to the store. A value past one is
/// refused whole: a baseline of millions of rules is not a baseline, and
/// decoding it would cost every agent memory and time.
public struct ValueLimits: Sendable, Equatable {
    /// Bytes of one value. The default stays below etcd's own default request
    /// limit (--max-request-bytes, 1.5 MiB), so that what this code would
    /// write etcd accepts.
    public var maxValueBytes: Int
    /// Rules of one workload's baseline.
    public var maxRules: Int

    public init(maxValueBytes: Int = 1 << 20, maxRules: Int = 100_000) {
        self.maxValueBytes = maxValueBytes
        self.maxRules = maxRules
    }
}

/// The versioned JSON of each value. Times are wall-clock nanoseconds, as in
/// ConnGuardCore's `Rule`.
enum Values {
    struct Version: Decodable { var v: Int? }

    /// Every value says its format version.
    protocol Versioned: Decodable { var v: Int { get } }

    struct Address: Codable, Versioned { var v: Int; var workload: String }

    struct RuleValue: Codable {
        var dir: String
        var peer: String
        var port: UInt16
        var proto: String
        var first: Int64
        var last: Int64
        var hits: Int64
        var nodes: [String]
    }

    struct Baseline: Codable, Versioned { var v: Int; var workload: String; var rules: [RuleValue] }

    struct ModeValue: Codable, Versioned { var v: Int; var workload: String; var mode: String; var by: String; var node: String; var at: Int64 }

    static func encode<T: Encodable>(_ value: T) -> Data {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys]
        // Our own plain structs: encoding cannot fail.
        return try! e.encode(value)
    }

    /// Checks size, then decodes the value once; only a value that does not
    /// decode, or has another version, is read again to say what is wrong
    /// (every agent decodes every baseline any node merges: the common case
    /// must be one parse).
    static func decode<T: Versioned>(_ type: T.Type, _ data: Data, key: String, limits: ValueLimits) -> Result<T, ClusterProblem> {
        func bad(_ why: String) -> Result<T, ClusterProblem> { .failure(ClusterProblem(key: key, reason: why)) }
        if data.count > limits.maxValueBytes {
            return bad("value of \(data.count) bytes is over the limit of \(limits.maxValueBytes)")
        }
        if let value = try? JSONDecoder().decode(T.self, from: data), value.v == KeyLayout.valueVersion { return .success(value) }
        guard (try? JSONSerialization.jsonObject(with: data)) is [String: Any] else { return bad("value is not a JSON object") }
        guard let version = (try? JSONDecoder().decode(Version.self, from: data))?.v else {
            return bad("value has no format version (\"v\")")
        }
        if version > KeyLayout.valueVersion {
            return bad("value has format version \(version), newer than this agent's \(KeyLayout.valueVersion): upgrade the agent")
        }
        if version < 1 { return bad("value has format version \(version), which does not exist") }
        do {
            return .success(try JSONDecoder().decode(T.self, from: data))
        } catch {
            return bad("value is not a valid version \(version) \(T.self): \(Self.describe(error))")
        }
    }

    static func describe(_ error: Error) -> String {
        guard let e = error as? DecodingError else { return "\(error)" }
        switch e {
        case let .keyNotFound(k, _): return "missing \(k.stringValue)"
        case let .typeMismatch(_, c), let .valueNotFound(_, c), let .dataCorrupted(c):
            let path = c.codingPath.map(\.stringValue).joined(separator: ".")
            return path.isEmpty ? c.debugDescription : "bad \(path)"
        @unknown default: return "\(e)"
        }
    }

    // MARK: the value types of ConnGuardCore and of this module

    static func baselineData(_ b: ClusterBaseline) -> Data {
        let rules = b.sortedRules.map { r in
            RuleValue(dir: r.rule.key.direction.ruleName, peer: r.rule.key.peer.description, port: r.rule.key.port,
                      proto: r.rule.key.proto, first: r.rule.firstSeen, last: r.rule.lastSeen, hits: r.rule.hits,
                      nodes: r.nodes.sorted())
        }
        return encode(Baseline(v: KeyLayout.valueVersion, workload: b.workload, rules: rules))
    }

    static func baseline(_ data: Data, key: String, workload: String, revision: Int64, limits: ValueLimits) -> Result<ClusterBaseline, ClusterProblem> {
        func bad(_ why: String) -> Result<ClusterBaseline, ClusterProblem> { .failure(ClusterProblem(key: key, reason: why)) }
        let decoded: Baseline
        switch decode(Baseline.self, data, key: key, limits: limits) {
        case let .failure(p): return .failure(p)
        case let .success(d): decoded = d
        }
        guard decoded.workload == workload else { return bad("value names workload \(decoded.workload), not its key's") }
        guard decoded.rules.count <= limits.maxRules else {
            return bad("baseline of \(decoded.rules.count) rules is over the limit of \(limits.maxRules)")
        }
        var rules: [ClusterRule] = []
        rules.reserveCapacity(decoded.rules.count)
        for (i, r) in decoded.rules.enumerated() {
            guard let dir = ConnectionEvent.Direction(ruleName: r.dir) else { return bad("rule \(i): direction \(r.dir) is not in or out") }
            guard let peer = Peer(description: r.peer) else { return bad("rule \(i): peer \(r.peer) is not an address, CIDR or workload:NAME") }
            guard r.proto == "tcp" || r.proto == "udp" else { return bad("rule \(i): protocol \(r.proto) is not tcp or udp") }
            guard r.hits >= 0, r.first <= r.last else { return bad("rule \(i): negative hits or first seen after last seen") }
            guard !r.nodes.isEmpty, r.nodes.allSatisfy({ KeyLayout.nodeNameProblem($0) == nil }) else { return bad("rule \(i): bad node names") }
            let key = RuleKey(direction: dir, peer: peer, port: r.port, proto: r.proto)
            rules.append(ClusterRule(rule: Rule(key: key, firstSeen: r.first, lastSeen: r.last, hits: r.hits), nodes: Set(r.nodes)))
        }
        return .success(ClusterBaseline(workload: workload, rules: rules, revision: revision))
    }

    static func modeData(_ m: ModeSetting) -> Data {
        encode(ModeValue(v: KeyLayout.valueVersion, workload: m.workload, mode: m.mode.rawValue, by: m.by, node: m.node, at: m.at))
    }

    static func mode(_ data: Data, key: String, workload: String, limits: ValueLimits) -> Result<ModeSetting, ClusterProblem> {
        func bad(_ why: String) -> Result<ModeSetting, ClusterProblem> { .failure(ClusterProblem(key: key, reason: why)) }
        switch decode(ModeValue.self, data, key: key, limits: limits) {
        case let .failure(p): return .failure(p)
        case let .success(d):
            guard d.workload == workload else { return bad("value names workload \(d.workload), not its key's") }
            guard let mode = Mode(rawValue: d.mode) else { return bad("mode \(d.mode) is not learn, monitor or enforce") }
            return .success(ModeSetting(workload: workload, mode: mode, by: d.by, node: d.node, at: d.at))
        }
    }

    static func addressData(workload: String) -> Data { encode(Address(v: KeyLayout.valueVersion, workload: workload)) }

    static func address(_ data: Data, key: String, limits: ValueLimits) -> Result<String, ClusterProblem> {
        switch decode(Address.self, data, key: key, limits: limits) {
        case let .failure(p): return .failure(p)
        case let .success(d):
            if let why = KeyLayout.workloadNameProblem(d.workload) { return .failure(ClusterProblem(key: key, reason: why)) }
            return .success(d.workload)
        }
    }
}
