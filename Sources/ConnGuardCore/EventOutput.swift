import Glibc

/// How `connguard trace` and `connguard connections` print events.
public enum OutputFormat: String, Sendable, CaseIterable {
    /// Aligned columns for a person.
    case table
    /// One JSON object per line, for jq and log shippers.
    case json
}

/// Writes events as JSON lines into a byte buffer.
///
/// Hand-written rather than JSONEncoder: the tracer formats tens of thousands
/// of events a second on the node's own CPUs, and Foundation's encoder costs
/// about ten times more per event. Each line is first made in a scratch
/// buffer, sized for the longest line the event could give, through a cursor
/// that only copies bytes; the line then joins `out` in one append. (Appending
/// each of its ~40 pieces to the array was most of the tracer's CPU time.)
/// The tests parse its output with JSONSerialization to prove it is valid
/// JSON with the documented keys.
public struct JSONLineWriter {
    private var dates = DateCache()
    private let scratch = LineScratch()

    public init() {}

    /// Keys: time, event, outcome, error, pid, comm, uid, cgroup_id, family,
    /// src, sport, dst, dport, netns, hook, process_known; then the identity's
    /// (workload, container, pod), when given; then `extra`.
    public mutating func append(_ e: ConnectionEvent, identity: Identity? = nil, extra: [(String, JSONValue)] = [],
                                to out: inout [UInt8]) {
        // Rare (the API's verdict key): rendered the slow way, copied in whole.
        var rest: [UInt8] = []
        for (key, value) in extra {
            rest.append(UInt8(ascii: ","))
            JSONValue.appendString(key, to: &rest)
            rest.append(UInt8(ascii: ":"))
            value.append(to: &rest)
        }
        // 400 bytes hold every fixed key and number; a string grows at most
        // sixfold when escaped (\u00XX).
        let bound = 420 + LineCursor.stringBound(e.comm) + LineCursor.stringBound(e.peerName) + (identity?.jsonFieldsBound ?? 0) + rest.count
        let start = scratch.reserve(bound)
        var w = LineCursor(start)
        w.put(#"{"time":""#)
        dates.putRFC3339(e.timeNanoseconds, &w)
        w.put(#"","event":""#)
        w.put(e.direction.jsonName)
        w.put(#"","outcome":""#)
        w.put(e.outcome.jsonName)
        w.put(#"","error":"#)
        if e.error != 0 {
            w.string(ErrnoName.name(e.error))
        } else {
            w.put("null")
        }
        w.put(#","pid":"#)
        w.decimal(UInt64(e.pid))
        w.put(#","comm":"#)
        w.string(e.comm)
        w.put(#","uid":"#)
        w.decimal(UInt64(e.uid))
        w.put(#","cgroup_id":"#)
        w.decimal(e.cgroupID)
        w.put(e.family == .ipv4 ? #","family":"ipv4","src":""# : #","family":"ipv6","src":""#)
        w.address(e.source)
        w.put(#"","sport":"#)
        w.decimal(UInt64(e.sourcePort))
        w.put(#","dst":""#)
        w.address(e.destination)
        w.put(#"","dport":"#)
        w.decimal(UInt64(e.destinationPort))
        w.put(#","netns":"#)
        w.decimal(UInt64(e.netns))
        w.put(#","hook":""#)
        w.put(e.hook.jsonName)
        w.put(e.processKnown ? #"","process_known":true"# : #"","process_known":false"#)
        w.put(e.proto == .tcp ? #","protocol":"tcp","peer_name":"# : #","protocol":"udp","peer_name":"#)
        w.string(e.peerName)
        identity?.putJSONFields(&w)
        rest.withUnsafeBufferPointer { w.put($0) }
        w.put("}\n")
        out.append(contentsOf: UnsafeBufferPointer(start: start, count: w.p - start))
    }
}

/// A write position in a buffer that the caller has made large enough for
/// everything it will write (LineScratch.reserve with an upper bound), so that
/// each piece is a plain copy, without the capacity and uniqueness checks of
/// an array append.
struct LineCursor {
    private(set) var p: UnsafeMutablePointer<UInt8>

    init(_ start: UnsafeMutablePointer<UInt8>) { p = start }

    /// Appends to `out` what `body` writes, at most `bound` bytes: the
    /// cursor's formatting for callers that build an array a piece at a time.
    static func append(to out: inout [UInt8], bound: Int, _ body: (inout LineCursor) -> Void) {
        withUnsafeTemporaryAllocation(of: UInt8.self, capacity: bound) { buffer in
            let start = buffer.baseAddress!
            var w = LineCursor(start)
            body(&w)
            out.append(contentsOf: UnsafeBufferPointer(start: start, count: w.p - start))
        }
    }

    /// Room `string` may need: quotes, and six bytes for each escaped byte.
    static func stringBound(_ s: String) -> Int { 2 + 6 * s.utf8.count }
    /// Room `string` may need for an optional (null: 4).
    static func stringBound(_ s: String?) -> Int {
        guard let s else { return 4 }
        return stringBound(s)
    }

    /// Bytes a JSON string cannot hold as they are: control characters,
    /// quote, backslash, DEL.
    static func needsEscape(_ b: UInt8) -> Bool {
        b < 0x20 || b == 0x22 || b == 0x5c || b == 0x7f
    }

    @inline(__always)
    mutating func put(_ b: UInt8) {
        p.pointee = b
        p += 1
    }

    @inline(__always)
    mutating func put(_ s: StaticString) {
        let n = s.utf8CodeUnitCount
        p.update(from: s.utf8Start, count: n)
        p += n
    }

    @inline(__always)
    mutating func put(_ bytes: UnsafeBufferPointer<UInt8>) {
        guard let base = bytes.baseAddress else { return }
        p.update(from: base, count: bytes.count)
        p += bytes.count
    }

    /// At most 20 bytes.
    mutating func decimal(_ value: UInt64) {
        var digits = 1
        var n: UInt64 = value / 10
        while n > 0 {
            digits += 1
            n /= 10
        }
        padded(value, width: digits)
    }

    /// Exactly `width` digits, zero-padded (value < 10^width).
    mutating func padded(_ value: UInt64, width: Int) {
        var n: UInt64 = value
        var i = width - 1
        while i >= 0 {
            p[i] = 0x30 + UInt8(truncatingIfNeeded: n % 10)
            n /= 10
            i -= 1
        }
        p += width
    }

    /// A JSON string literal: quotes, backslash and control characters
    /// escaped (RFC 8259 section 7); other UTF-8 passes through. At most
    /// stringBound(s) bytes.
    mutating func string(_ s: String) {
        put(0x22)
        var s = s
        s.withUTF8 { (utf8: UnsafeBufferPointer<UInt8>) in
            // Almost every string (names, ids, paths) needs no escape: copy it
            // in one piece, not byte by byte.
            guard utf8.contains(where: LineCursor.needsEscape) else {
                put(utf8)
                return
            }
            for b in utf8 {
                putEscaped(b)
            }
        }
        put(0x22)
    }

    private mutating func putEscaped(_ b: UInt8) {
        let hex: StaticString = "0123456789abcdef"
        switch b {
        case 0x22: put(#"\""#)
        case 0x5c: put(#"\\"#)
        case 0x0a: put(#"\n"#)
        case 0x0d: put(#"\r"#)
        case 0x09: put(#"\t"#)
        default:
            guard LineCursor.needsEscape(b) else {
                put(b)
                return
            }
            put(#"\u00"#)
            put(hex.utf8Start[Int(b >> 4)])
            put(hex.utf8Start[Int(b & 0xf)])
        }
    }

    mutating func string(_ s: String?) {
        if let s {
            string(s)
        } else {
            put("null")
        }
    }

    /// Dotted IPv4 without inet_ntop (which goes through vfprintf); IPv6 in
    /// inet_ntop's RFC 5952 form. At most 46 bytes.
    mutating func address(_ a: IPAddress) {
        if a.family == .ipv4 {
            let v: UInt32 = a.ipv4Value
            decimal(UInt64(v >> 24))
            put(0x2e)
            decimal(UInt64((v >> 16) & 0xff))
            put(0x2e)
            decimal(UInt64((v >> 8) & 0xff))
            put(0x2e)
            decimal(UInt64(v & 0xff))
            return
        }
        var raw = (a.high.bigEndian, a.low.bigEndian)
        let text = UnsafeMutableRawPointer(p).assumingMemoryBound(to: CChar.self)
        guard inet_ntop(AF_INET6, &raw, text, socklen_t(INET6_ADDRSTRLEN)) != nil else { return }
        p += strlen(text)
    }
}

/// Scratch space for one line; grows to the longest line asked for.
final class LineScratch {
    private var buffer: UnsafeMutablePointer<UInt8>
    private var capacity: Int

    init() {
        capacity = 4096
        buffer = .allocate(capacity: capacity)
    }

    deinit { buffer.deallocate() }

    /// The start of at least `count` writable bytes.
    func reserve(_ count: Int) -> UnsafeMutablePointer<UInt8> {
        if count > capacity {
            buffer.deallocate()
            capacity = max(count, 2 * capacity)
            buffer = .allocate(capacity: capacity)
        }
        return buffer
    }
}

extension ConnectionEvent.Direction {
    var jsonName: StaticString {
        switch self {
        case .connect: return "connect"
        case .accept: return "accept"
        }
    }
}

extension ConnectionEvent.Outcome {
    var jsonName: StaticString {
        switch self {
        case .established: return "established"
        case .failed: return "failed"
        case .denied: return "denied"
        }
    }
}

extension ConnectionEvent.Hook {
    var jsonName: StaticString {
        switch self {
        case .tracepoint: return "tracepoint"
        case .fentry: return "fentry"
        case .kprobe: return "kprobe"
        case .cgroupConnect: return "cgroup_connect"
        case .cgroupSKB: return "cgroup_skb"
        case .cgroupSockAddr: return "cgroup_sock_addr"
        case .snapshot: return "snapshot"
        case .unknown: return "unknown"
        }
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
            LineCursor.append(to: &out, bound: 21) { w in
                if i < 0 { w.put(UInt8(ascii: "-")) }
                w.decimal(i.magnitude)
            }
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
        LineCursor.append(to: &out, bound: LineCursor.stringBound(s)) { $0.string(s) }
    }
}

/// Formats UTC timestamps, reusing the calendar part within one second.
struct DateCache {
    private var second: Int64 = .min
    private var prefix: [UInt8] = []  // "2026-11-27T03:29:00."

    private mutating func updatePrefix(_ s: Int64) {
        guard s != second else { return }
        second = s
        var t = time_t(s)
        var tm = tm()
        gmtime_r(&t, &tm)
        var text = [UInt8](repeating: 0, count: 20)
        text.withUnsafeMutableBufferPointer { b in
            var w = LineCursor(b.baseAddress!)
            w.padded(UInt64(tm.tm_year + 1900), width: 4)
            w.put(0x2d)  // -
            w.padded(UInt64(tm.tm_mon + 1), width: 2)
            w.put(0x2d)
            w.padded(UInt64(tm.tm_mday), width: 2)
            w.put(0x54)  // T
            w.padded(UInt64(tm.tm_hour), width: 2)
            w.put(0x3a)  // :
            w.padded(UInt64(tm.tm_min), width: 2)
            w.put(0x3a)
            w.padded(UInt64(tm.tm_sec), width: 2)
            w.put(0x2e)  // .
        }
        prefix = text
    }

    /// "2026-11-27T03:29:00.123456Z": 27 bytes. Microseconds: every RFC 3339
    /// parser takes 6 digits.
    mutating func putRFC3339(_ nanoseconds: Int64, _ w: inout LineCursor) {
        let (sec, frac) = nanoseconds.quotientAndRemainder(dividingBy: 1_000_000_000)
        let s: Int64 = frac < 0 ? sec - 1 : sec
        let f: Int64 = frac < 0 ? frac + 1_000_000_000 : frac
        updatePrefix(s)
        prefix.withUnsafeBufferPointer { w.put($0) }
        w.padded(UInt64(f / 1000), width: 6)
        w.put(0x5a)  // Z
    }

    /// The same formatting for a person: "03:29:00.123" (UTC).
    mutating func appendClock(_ nanoseconds: Int64, to out: inout [UInt8]) {
        var full = [UInt8](repeating: 0, count: 32)
        full.withUnsafeMutableBufferPointer { b in
            var w = LineCursor(b.baseAddress!)
            putRFC3339(nanoseconds, &w)
        }
        out.append(contentsOf: full[11..<23])
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
        columns = [Column("TIME", 12), Column("EVENT", 7), Column("PROTO", 5), Column("OUTCOME", 20), Column("PID", 7),
                   Column("COMM", 16), Column("SOURCE", 22), Column("DESTINATION", 22)] + extraColumns
    }

    public func header(to out: inout [UInt8]) {
        appendRow(columns.map(\.title), to: &out)
    }

    /// `count`: the line stands for this many events the kernel counted
    /// (a UDP flow's later datagrams), shown in place of the outcome.
    public mutating func append(_ e: ConnectionEvent, extra: [String] = [], count: UInt64? = nil, to out: inout [UInt8]) {
        var time: [UInt8] = []
        dates.appendClock(e.timeNanoseconds, to: &time)
        var outcome = e.outcome == .failed && e.error != 0 ? "failed " + ErrnoName.name(e.error) : e.outcome.rawValue
        if let count { outcome = "+\(count) counted" }
        let cells = [String(decoding: time, as: UTF8.self), e.direction.rawValue, e.proto.rawValue, outcome,
                     e.processKnown ? String(e.pid) : "?", e.processKnown ? HumanText.escape(e.comm) : "?",
                     TableWriter.endpoint(e.source, e.sourcePort),
                     TableWriter.endpoint(e.destination, e.destinationPort) + (e.peerName.map { " (\(HumanText.escape($0)))" } ?? "")] + extra
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

}
