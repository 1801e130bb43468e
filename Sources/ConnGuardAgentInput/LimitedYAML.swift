import ConnGuardCore
import Foundation
import Yams

/// YAML from outside the agent (policy files sent to the API, config files),
/// loaded with limits. Yams' own `load` expands every alias into a full copy
/// while it builds the result, so a few hundred bytes of nested anchors (the
/// "billion laughs" file: 8 levels of 10 aliases) ask for 10^8 nodes and take
/// the agent's memory and a core. Here the document is composed first (Yams
/// shares an anchored node between its aliases, so the tree costs what the
/// text does), then walked once counting every node as the aliases expand it,
/// refusing past `maximumNodes` in all or `maximumDepth` levels, and only
/// then converted to the same values `Yams.load` gives.
public enum LimitedYAML {
    /// Above any file the importer accepts: 100,000 rules of 7 keys each are
    /// 1.5 million nodes.
    public static let maximumNodes = 2_000_000
    /// A baseline file needs 3 levels, a config file 1 (libyaml itself stops
    /// at 1000).
    public static let maximumDepth = 32

    public struct Refused: Error, CustomStringConvertible {
        public let description: String
    }

    /// nil for an empty document; Yams' errors for text that is not YAML.
    public static func load(_ text: String, maximumNodes: Int = maximumNodes, maximumDepth: Int = maximumDepth) throws -> Any? {
        guard let root = try Yams.compose(yaml: text) else { return nil }
        var budget = maximumNodes
        try check(root, depth: 1, budget: &budget, maximumNodes: maximumNodes, maximumDepth: maximumDepth)
        return try convert(root)
    }

    private static func check(_ node: Node, depth: Int, budget: inout Int, maximumNodes: Int, maximumDepth: Int) throws {
        budget -= 1
        guard budget >= 0 else {
            throw Refused(description: "the YAML expands to more than \(maximumNodes) nodes (aliases counted as what they repeat)")
        }
        guard depth <= maximumDepth else { throw Refused(description: "the YAML is nested deeper than \(maximumDepth) levels") }
        switch node {
        case .scalar, .alias: return
        case let .mapping(m):
            for (k, v) in m {
                try check(k, depth: depth + 1, budget: &budget, maximumNodes: maximumNodes, maximumDepth: maximumDepth)
                try check(v, depth: depth + 1, budget: &budget, maximumNodes: maximumNodes, maximumDepth: maximumDepth)
            }
        case let .sequence(s):
            for n in s { try check(n, depth: depth + 1, budget: &budget, maximumNodes: maximumNodes, maximumDepth: maximumDepth) }
        }
    }

    /// Scalars as Yams constructs them (Int, Double, Bool, Date, NSNull,
    /// String, by tag); mappings with their keys as text.
    private static func convert(_ node: Node) throws -> Any {
        switch node {
        case let .scalar(scalar):
            // Yams computes a base-60 int ("1:30", YAML 1.1) with arithmetic
            // that traps on overflow: "1111111111111111111:1" would kill the
            // agent. Such ints are computed here, with the same result when
            // they fit, and refused when they do not.
            if node.tag.rawValue == Tag.Name.int.rawValue, scalar.string.contains(":") {
                if let n = try sexagesimal(scalar.string) { return n }
            }
            return Constructor.default.any(from: node)
        case .alias:
            return Constructor.default.any(from: node)
        case let .mapping(m):
            var out: [String: Any] = [:]
            for (k, v) in m {
                let key = try convert(k)
                out[key as? String ?? "\(key)"] = try convert(v)
            }
            return out
        case let .sequence(s):
            return try s.map(convert)
        }
    }

    /// "[-+]a:b:c" as Yams reads it (a*3600 + b*60 + c), or nil where Yams
    /// would not make an Int of it either (it then gives the text).
    private static func sexagesimal(_ text: String) throws -> Int? {
        // YAML 1.1 lets "_" separate digits; Yams drops them before its sum
        // (the fuzzer's "+11310_11111113100111:00" trapped it).
        var digits = Substring(text.replacingOccurrences(of: "_", with: ""))
        var sign = 1
        if digits.hasPrefix("-") { sign = -1; digits = digits.dropFirst() } else if digits.hasPrefix("+") { digits = digits.dropFirst() }
        var value = 0
        for part in digits.split(separator: ":", omittingEmptySubsequences: false) {
            guard let n = Int(part, radix: 10) else { return nil }
            let (shifted, o1) = value.multipliedReportingOverflow(by: 60)
            let (sum, o2) = shifted.addingReportingOverflow(n)
            guard !o1, !o2 else {
                throw Refused(description: "'\(HumanText.escape(String(text.prefix(64))))' is a base-60 number too large for 64 bits")
            }
            value = sum
        }
        return sign * value
    }
}
