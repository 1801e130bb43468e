/// Parses durations as people write them: "90" (seconds), "90s", "15m", "2h",
/// "7d", "1h30m", "1.5s". Nil for anything else, including negative values
/// and overflow.
public enum DurationParser {
    public static func seconds(_ text: String) -> Double? {
        guard !text.isEmpty, text.count <= 64 else { return nil }
        if let plain = Double(text), plain.isFinite, plain >= 0, text.allSatisfy({ $0.isNumber || $0 == "." }) {
            return plain
        }
        var total = 0.0
        var number = ""
        var sawUnit = false
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
            default: return nil
            }
            guard let n = Double(number), n.isFinite, n >= 0 else { return nil }
            total += n * unit
            number = ""
            sawUnit = true
        }
        guard number.isEmpty, sawUnit, total.isFinite, total < 1e12 else { return nil }
        return total
    }
}
