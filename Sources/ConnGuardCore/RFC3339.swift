import Foundation

/// RFC 3339 times as people type them (with or without fractional seconds),
/// in the wall-clock nanoseconds ConnGuard stores. One parser for the API,
/// the CLI and policy files, so they accept the same spellings.
public enum RFC3339 {
    /// Nanoseconds since the epoch; nil for anything else, or a time before
    /// 1970 or too far ahead to count in nanoseconds.
    public static func nanoseconds(_ text: String) -> Int64? {
        let f = ISO8601DateFormatter()
        for options: ISO8601DateFormatter.Options in [[.withInternetDateTime, .withFractionalSeconds], [.withInternetDateTime]] {
            f.formatOptions = options
            if let d = f.date(from: text) { return nanoseconds(d) }
        }
        return nil
    }

    public static func nanoseconds(_ date: Date) -> Int64? {
        let ns = date.timeIntervalSince1970 * 1e9
        guard ns.isFinite, ns >= 0, ns < 9e18 else { return nil }
        return Int64(ns)
    }

    /// "2026-11-27T03:09:00Z" (whole seconds).
    public static func string(_ nanoseconds: Int64) -> String {
        let f = ISO8601DateFormatter()
        f.formatOptions = [.withInternetDateTime]
        return f.string(from: Date(timeIntervalSince1970: Double(nanoseconds) / 1e9))
    }
}
