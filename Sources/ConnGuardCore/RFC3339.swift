import Foundation

/// RFC 3339 times as people type them (with or without fractional seconds),
/// in the wall-clock nanoseconds ConnGuard stores. One parser for the API,
/// the CLI and policy files, so they accept the same spellings.
public enum RFC3339 {
    /// The latest time accepted: Int64 nanoseconds end in 2262; this leaves
    /// room to add a duration to it.
    public static let latestNanoseconds: Int64 = 9_000_000_000_000_000_000

    /// Nanoseconds since the epoch, or an error saying what is wrong: not a
    /// time, a UTC offset past ±23:59 (which Foundation would otherwise read
    /// modulo a day), before 1970, or after 2255.
    public static func parse(_ text: String) throws(InvalidInput) -> Int64 {
        let shown = HumanText.escape(String(text.prefix(64)))
        let bytes = Array(text.utf8)
        // The offset: "Z", or "+HH:MM"/"-HH:MM" at the end, after the time.
        if bytes.count >= 6, bytes.count <= 64, [UInt8(ascii: "+"), UInt8(ascii: "-")].contains(bytes[bytes.count - 6]),
           bytes[bytes.count - 3] == UInt8(ascii: ":") {
            let digits = bytes.suffix(5)
            if let h = Int(String(decoding: digits.prefix(2), as: UTF8.self)),
               let m = Int(String(decoding: digits.suffix(2), as: UTF8.self)), h > 23 || m > 59 {
                throw InvalidInput("'\(shown)': the UTC offset must be between -23:59 and +23:59")
            }
        }
        for f in parsers {
            guard text.utf8.count <= 64, let d = parsersLock.withLock({ f.date(from: text) }) else { continue }
            let s = d.timeIntervalSince1970
            guard s.isFinite, s >= 0 else { throw InvalidInput("'\(shown)' is before 1970") }
            guard s * 1e9 < Double(latestNanoseconds) else { throw InvalidInput("'\(shown)' is too far ahead: times up to 2255 are accepted") }
            return Int64(s * 1e9)
        }
        throw InvalidInput("'\(shown)' is not an RFC 3339 time like 2026-11-27T03:09:00Z")
    }

    /// With and without fractional seconds. Made once: a formatter costs far
    /// more to make than to use (the fuzzer ran at 300 inputs a second while
    /// `parse` made one per call). Behind a lock, as a formatter is not
    /// documented safe to share between threads on Linux.
    nonisolated(unsafe) private static let parsers: [ISO8601DateFormatter] = [
        [.withInternetDateTime, .withFractionalSeconds], [.withInternetDateTime],
    ].map { (options: ISO8601DateFormatter.Options) in
        let f = ISO8601DateFormatter()
        f.formatOptions = options
        return f
    }
    private static let parsersLock = Mutex()

    /// Nanoseconds since the epoch; nil for anything `parse` refuses.
    public static func nanoseconds(_ text: String) -> Int64? { try? parse(text) }

    public static func nanoseconds(_ date: Date) -> Int64? {
        let ns = date.timeIntervalSince1970 * 1e9
        guard ns.isFinite, ns >= 0, ns < Double(latestNanoseconds) else { return nil }
        return Int64(ns)
    }

    /// "2026-11-27T03:09:00.123456Z": UTC with microseconds, as `connguard trace -o json`
    /// writes times (gmtime_r, not Foundation: it runs for every event).
    public static func microseconds(_ nanoseconds: Int64) -> String {
        let (q, r) = nanoseconds.quotientAndRemainder(dividingBy: 1_000_000_000)
        let seconds = r < 0 ? q - 1 : q
        let fraction = r < 0 ? r + 1_000_000_000 : r
        var t = time_t(seconds)
        var tm = tm()
        gmtime_r(&t, &tm)
        func pad(_ v: Int, _ w: Int) -> String {
            let s = String(v)
            return s.count >= w ? s : String(repeating: "0", count: w - s.count) + s
        }
        return "\(pad(Int(tm.tm_year) + 1900, 4))-\(pad(Int(tm.tm_mon) + 1, 2))-\(pad(Int(tm.tm_mday), 2))T"
            + "\(pad(Int(tm.tm_hour), 2)):\(pad(Int(tm.tm_min), 2)):\(pad(Int(tm.tm_sec), 2)).\(pad(Int(fraction / 1000), 6))Z"
    }

    /// "2026-11-27T03:09:00Z" (whole seconds).
    public static func string(_ nanoseconds: Int64) -> String {
        let f = ISO8601DateFormatter()
        f.formatOptions = [.withInternetDateTime]
        return f.string(from: Date(timeIntervalSince1970: Double(nanoseconds) / 1e9))
    }
}

/// A point in time as `--since`/`--until` take it: a duration before now
/// ("15m") or an RFC 3339 time.
public enum TimeArgument {
    public static func nanoseconds(_ text: String, now: Int64) throws(InvalidInput) -> Int64 {
        // A date has a 'T' (RFC 3339 requires it); anything else is a duration.
        guard text.contains("T") || text.contains("t") && text.utf8.count > 10 else {
            let seconds = try DurationParser.parse(text)
            let ago = DurationParser.nanoseconds(seconds)
            guard ago <= now else { throw InvalidInput("'\(HumanText.escape(text))' reaches back before 1970") }
            return now - ago
        }
        return try RFC3339.parse(text)
    }
}
