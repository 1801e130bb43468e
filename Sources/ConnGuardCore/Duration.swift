/// Parses durations as people write them: "90" (seconds), "90s", "15m", "2h",
/// "7d", "2w", "1h30m", "1.5s". The one parser of durations for the CLI, the
/// API and config files, so that every one of them takes the same spellings
/// and refuses the same values with the same words.
public enum DurationParser {
    /// The longest duration accepted anywhere: 100 years (of 365.25 days).
    /// Every duration is turned into nanoseconds at some point, and Int64
    /// nanoseconds reach 292 years; 100 years leaves room to add one to a
    /// wall-clock time without overflow, and no retention or promotion period
    /// needs more.
    public static let maximumSeconds: Double = 100 * 365.25 * 86_400
    public static let maximumDescription = "100 years (3155760000 s)"

    /// Seconds, or an error that says what is wrong with `text` and, for one
    /// too long, names the limit.
    public static func parse(_ text: String) throws(InvalidInput) -> Double {
        let shown = HumanText.escape(String(text.prefix(64)))
        let notADuration = InvalidInput("'\(shown)' is not a duration like 90s, 15m, 2h or 7d")
        if text.hasPrefix("-") { throw InvalidInput("'\(shown)' is negative: a duration is 0 or more") }
        guard !text.isEmpty, text.utf8.count <= 64 else { throw notADuration }
        if text.utf8.allSatisfy({ ($0 >= 0x30 && $0 <= 0x39) || $0 == 0x2e }) {
            guard let plain = Double(text), plain.isFinite else { throw notADuration }
            return try checked(plain, shown)
        }
        var total = 0.0
        var number = ""
        for ch in text {
            if ch.isASCII && (ch.isNumber || ch == ".") {
                number.append(ch)
                continue
            }
            let unit: Double
            switch ch {
            case "s": unit = 1
            case "m": unit = 60
            case "h": unit = 3600
            case "d": unit = 86400
            case "w": unit = 604800
            default: throw notADuration
            }
            guard let n = Double(number), n.isFinite else { throw notADuration }
            total += n * unit
            number = ""
        }
        guard number.isEmpty else { throw notADuration }
        return try checked(total, shown)
    }

    /// Seconds, or nil for anything `parse` refuses.
    public static func seconds(_ text: String) -> Double? { try? parse(text) }

    private static func checked(_ seconds: Double, _ shown: String) throws(InvalidInput) -> Double {
        guard seconds.isFinite, seconds >= 0 else { throw InvalidInput("'\(shown)' is not a duration like 90s, 15m, 2h or 7d") }
        guard seconds <= maximumSeconds else {
            throw InvalidInput("'\(shown)' is longer than the longest duration allowed, \(maximumDescription)")
        }
        return seconds
    }

    /// Nanoseconds of a duration in seconds, saturating instead of trapping:
    /// values from `parse` always fit (100 years is 3.2e18 ns), but a value
    /// set some other way must not crash the agent.
    public static func nanoseconds(_ seconds: Double) -> Int64 {
        guard seconds.isFinite, seconds > 0 else { return 0 }
        let ns = seconds * 1e9
        return ns >= 9.2e18 ? Int64.max : Int64(ns)
    }
}

/// A value a user gave that a parser refuses; `description` is one line that
/// says why, with the value escaped for a terminal.
public struct InvalidInput: Error, CustomStringConvertible, Equatable {
    public let description: String
    public init(_ description: String) { self.description = description }
}
