import Glibc

/// How `connguard trace` and `connguard connections` print events.
public enum OutputFormat: String, Sendable, CaseIterable {
    /// Aligned columns for a person.
    case table
    /// One JSON object per line, for jq and log shippers.
    case json
}

/// Appends a string literal's bytes; StaticString avoids String's generic
/// UTF8View path (runtime metadata lookups, retain/release) per call.
@inline(__always)
func lit(_ s: StaticString, _ out: inout [UInt8]) {
    s.withUTF8Buffer { out.append(contentsOf: $0) }
}

/// Dotted IPv4 without inet_ntop (which goes through vfprintf) or a String.
@inline(__always)
func appendAddress(_ a: IPAddress, to out: inout [UInt8]) {
    if a.family == .ipv4 {
        for i in 0..<4 {
            if i > 0 { out.append(UInt8(ascii: ".")) }
            appendDecimal(UInt64(a.bytes[i]), to: &out)
        }
    } else {
        out.append(contentsOf: a.description.utf8)
    }
}

/// Writes events as JSON lines into a byte buffer.
///
/// Hand-written rather than JSONEncoder: the tracer formats tens of thousands
/// of events a second on the node's own CPUs, and Foundation's encoder costs
/// about ten times more per event. The tests parse its output with
/// JSONSerialization to prove it is valid JSON with the documented keys.
public struct JSONLineWriter {
    private var dates = DateCache()

    public init() {}

    /// Keys: time, event, outcome, error, pid, comm, uid, cgroup_id, family,
    /// src, sport, dst, dport, netns, hook, process_known; then `extra` (each a
    /// pre-rendered "key":value pair, already valid JSON).
    public mutating func append(_ e: ConnectionEvent, extra: [(String, JSONValue)] = [], to out: inout [UInt8]) {
        lit(#"{"time":""#, &out)
        dates.appendRFC3339(e.timeNanoseconds, to: &out)
        lit(#"","event":""#, &out)
        out.append(contentsOf: e.direction.rawValue.utf8)
        lit(#"","outcome":""#, &out)
        out.append(contentsOf: e.outcome.rawValue.utf8)
        lit(#"","error":"#, &out)
        if e.error != 0 {
            JSONValue.appendString(ErrnoName.name(e.error), to: &out)
        } else {
            lit("null", &out)
        }
        lit(#","pid":"#, &out)
        appendDecimal(UInt64(e.pid), to: &out)
        lit(#","comm":"#, &out)
        JSONValue.appendString(e.comm, to: &out)
        lit(#","uid":"#, &out)
        appendDecimal(UInt64(e.uid), to: &out)
        lit(#","cgroup_id":"#, &out)
        appendDecimal(e.cgroupID, to: &out)
        lit(#","family":""#, &out)
        out.append(contentsOf: e.family.rawValue.utf8)
        lit(#"","src":""#, &out)
        appendAddress(e.source, to: &out)
        lit(#"","sport":"#, &out)
        appendDecimal(UInt64(e.sourcePort), to: &out)
        lit(#","dst":""#, &out)
        appendAddress(e.destination, to: &out)
        lit(#"","dport":"#, &out)
        appendDecimal(UInt64(e.destinationPort), to: &out)
        lit(#","netns":"#, &out)
        appendDecimal(UInt64(e.netns), to: &out)
        lit(#","hook":""#, &out)
        out.append(contentsOf: e.hook.rawValue.utf8)
        lit(#"","process_known":"#, &out)
        if e.processKnown { lit("true", &out) } else { lit("false", &out) }
        for (key, value) in extra {
            out.append(UInt8(ascii: ","))
            JSONValue.appendString(key, to: &out)
            out.append(UInt8(ascii: ":"))
            value.append(to: &out)
        }
        lit("}\n", &out)
    }
}

/// A small JSON value, for the keys later layers add to an event line.
public indirect enum JSONValue: Sendable, Equatable {
    case null
    case bool(Bool)
    case int(Int64)
    case string(String)
    case array([JSONValue])
    case object([(String, JSONValue)])

    public static func == (a: JSONValue, b: JSONValue) -> Bool {
        var x: [UInt8] = [], y: [UInt8] = []
        a.append(to: &x)
        b.append(to: &y)
        return x == y
    }

    public func append(to out: inout [UInt8]) {
        switch self {
        case .null: out.append(contentsOf: "null".utf8)
        case let .bool(b): out.append(contentsOf: (b ? "true" : "false").utf8)
        case let .int(i):
            if i < 0 { out.append(UInt8(ascii: "-")) }
            appendDecimal(i.magnitude, to: &out)
        case let .string(s): JSONValue.appendString(s, to: &out)
        case let .array(items):
            out.append(UInt8(ascii: "["))
            for (i, v) in items.enumerated() {
                if i > 0 { out.append(UInt8(ascii: ",")) }
                v.append(to: &out)
            }
            out.append(UInt8(ascii: "]"))
        case let .object(pairs):
            out.append(UInt8(ascii: "{"))
            for (i, (k, v)) in pairs.enumerated() {
                if i > 0 { out.append(UInt8(ascii: ",")) }
                JSONValue.appendString(k, to: &out)
                out.append(UInt8(ascii: ":"))
                v.append(to: &out)
            }
            out.append(UInt8(ascii: "}"))
        }
    }

    /// A JSON string literal: quotes, backslash and control characters escaped
    /// (RFC 8259 section 7); other UTF-8 passes through.
    public static func appendString(_ s: String, to out: inout [UInt8]) {
        out.append(UInt8(ascii: "\""))
        for b in s.utf8 {
            switch b {
            case UInt8(ascii: "\""): out.append(contentsOf: #"\""#.utf8)
            case UInt8(ascii: "\\"): out.append(contentsOf: #"\\"#.utf8)
            case 0x0a: out.append(contentsOf: #"\n"#.utf8)
            case 0x0d: out.append(contentsOf: #"\r"#.utf8)
            case 0x09: out.append(contentsOf: #"\t"#.utf8)
            case 0..<0x20, 0x7f:
                let hex = Array("0123456789abcdef".utf8)
                out.append(contentsOf: #"\u00"#.utf8)
                out.append(hex[Int(b >> 4)])
                out.append(hex[Int(b & 0xf)])
            default: out.append(b)
            }
        }
        out.append(UInt8(ascii: "\""))
    }
}

@inline(__always)
func appendDecimal(_ value: UInt64, to out: inout [UInt8]) {
    if value < 10 {
        out.append(UInt8(ascii: "0") + UInt8(value))
        return
    }
    var digits: (UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8,
                 UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8) =
        (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
    var n = value
    var count = 0
    withUnsafeMutableBytes(of: &digits) { d in
        while n > 0 {
            d[19 - count] = UInt8(ascii: "0") + UInt8(n % 10)
            n /= 10
            count += 1
        }
        out.append(contentsOf: d[(20 - count)...])
    }
}

/// Formats UTC timestamps, reusing the calendar part within one second.
struct DateCache {
    private var second: Int64 = .min
    private var prefix: [UInt8] = []  // "2026-11-27T03:29:00."

    mutating func appendRFC3339(_ nanoseconds: Int64, to out: inout [UInt8]) {
        let (sec, frac) = nanoseconds.quotientAndRemainder(dividingBy: 1_000_000_000)
        let s = frac < 0 ? sec - 1 : sec
        let f = frac < 0 ? frac + 1_000_000_000 : frac
        if s != second {
            second = s
            var t = time_t(s)
            var tm = tm()
            gmtime_r(&t, &tm)
            prefix = []
            pad(Int(tm.tm_year) + 1900, 4, &prefix); prefix.append(UInt8(ascii: "-"))
            pad(Int(tm.tm_mon) + 1, 2, &prefix); prefix.append(UInt8(ascii: "-"))
            pad(Int(tm.tm_mday), 2, &prefix); prefix.append(UInt8(ascii: "T"))
            pad(Int(tm.tm_hour), 2, &prefix); prefix.append(UInt8(ascii: ":"))
            pad(Int(tm.tm_min), 2, &prefix); prefix.append(UInt8(ascii: ":"))
            pad(Int(tm.tm_sec), 2, &prefix); prefix.append(UInt8(ascii: "."))
        }
        out.append(contentsOf: prefix)
        pad(Int(f / 1000), 6, &out)  // microseconds: every RFC 3339 parser takes 6 digits
        out.append(UInt8(ascii: "Z"))
    }

    /// The same formatting for a person: "03:29:00.123" (UTC).
    mutating func appendClock(_ nanoseconds: Int64, to out: inout [UInt8]) {
        var full: [UInt8] = []
        appendRFC3339(nanoseconds, to: &full)
        out.append(contentsOf: full[11..<23])
    }

    private func pad(_ v: Int, _ width: Int, _ out: inout [UInt8]) {
        var digits = 1, p = 10
        while v >= p && digits < 18 { digits += 1; p *= 10 }
        for _ in digits..<max(width, digits) { out.append(UInt8(ascii: "0")) }
        var div = p / 10
        while div > 0 { out.append(UInt8(ascii: "0") + UInt8((v / div) % 10)); div /= 10 }
    }
}

/// Aligned columns for a person. Widths are fixed so that a stream of rows
/// lines up without buffering.
public struct TableWriter {
    public struct Column {
        public let title: String
        public let width: Int
        public init(_ title: String, _ width: Int) { self.title = title; self.width = width }
    }

    private var dates = DateCache()
    public var columns: [Column]
    /// Extra columns, after the standard ones, filled by `extra` in append.
    public init(extraColumns: [Column] = []) {
        columns = [Column("TIME", 12), Column("EVENT", 7), Column("OUTCOME", 20), Column("PID", 7),
                   Column("COMM", 16), Column("SOURCE", 22), Column("DESTINATION", 22)] + extraColumns
    }

    public func header(to out: inout [UInt8]) {
        appendRow(columns.map(\.title), to: &out)
    }

    public mutating func append(_ e: ConnectionEvent, extra: [String] = [], to out: inout [UInt8]) {
        var time: [UInt8] = []
        dates.appendClock(e.timeNanoseconds, to: &time)
        let outcome = e.outcome == .failed && e.error != 0 ? "failed " + ErrnoName.name(e.error) : e.outcome.rawValue
        let cells = [String(decoding: time, as: UTF8.self), e.direction.rawValue, outcome,
                     e.processKnown ? String(e.pid) : "?", e.processKnown ? TableWriter.printable(e.comm) : "?",
                     TableWriter.endpoint(e.source, e.sourcePort), TableWriter.endpoint(e.destination, e.destinationPort)] + extra
        appendRow(cells, to: &out)
    }

    private func appendRow(_ cells: [String], to out: inout [UInt8]) {
        for (i, cell) in cells.enumerated() {
            let last = i == cells.count - 1
            out.append(contentsOf: cell.utf8)
            if !last {
                let width = i < columns.count ? columns[i].width : 0
                let pad = max(1, width - cell.count + 1)
                out.append(contentsOf: repeatElement(UInt8(ascii: " "), count: pad))
            }
        }
        out.append(UInt8(ascii: "\n"))
    }

    /// "10.0.0.1:80", "[fd00::1]:80".
    public static func endpoint(_ a: IPAddress, _ port: UInt16) -> String {
        a.family == .ipv6 ? "[\(a)]:\(port)" : "\(a):\(port)"
    }

    /// A comm with control characters shown as '?', so a hostile process name
    /// cannot move the cursor or forge rows.
    public static func printable(_ s: String) -> String {
        String(s.unicodeScalars.map { $0.value < 0x20 || $0.value == 0x7f ? "?" : Character($0) })
    }
}
