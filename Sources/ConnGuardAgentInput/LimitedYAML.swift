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
        return convert(root)
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
    private static func convert(_ node: Node) -> Any {
        switch node {
        case .scalar, .alias:
            return Constructor.default.any(from: node)
        case let .mapping(m):
            var out: [String: Any] = [:]
            for (k, v) in m {
                let key = convert(k)
                out[key as? String ?? "\(key)"] = convert(v)
            }
            return out
        case let .sequence(s):
            return s.map(convert)
        }
    }
}
