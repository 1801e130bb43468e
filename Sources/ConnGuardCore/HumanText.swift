/// Text for a person's terminal. Process names, workload names, paths and
/// anything a user typed may hold control characters (ESC starts a terminal
/// escape sequence, CR rewrites the line, U+009B is a one-byte CSI) or
/// bidirectional overrides (which reorder what is shown, so "abc" can display
/// as "cba"). Shown raw they could forge rows, hide text or move the cursor,
/// so every table cell, status line and error message goes through `escape`.
/// (JSON output has its own escaper, `JSONValue`/`JSONLineWriter`, which
/// escapes what RFC 8259 requires.)
public enum HumanText {
    /// Whether `s` would show as it is.
    public static func isPlain(_ s: String) -> Bool {
        !s.unicodeScalars.contains(where: needsEscape)
    }

    /// `s` with C0 controls, DEL, C1 controls and the bidi embedding, override
    /// and isolate characters written as visible escapes: `\x1b`, `\r`,
    /// `\u{9b}`, `\u{202e}`. Everything else passes through.
    public static func escape(_ s: String) -> String {
        guard !isPlain(s) else { return s }
        var out = ""
        out.reserveCapacity(s.utf8.count + 8)
        for scalar in s.unicodeScalars {
            guard needsEscape(scalar) else {
                out.unicodeScalars.append(scalar)
                continue
            }
            switch scalar.value {
            case 0x0a: out += "\\n"
            case 0x0d: out += "\\r"
            case 0x09: out += "\\t"
            case let v where v < 0x80: out += "\\x" + hex(v, width: 2)
            case let v: out += "\\u{" + hex(v, width: 1) + "}"
            }
        }
        return out
    }

    public static func needsEscape(_ c: Unicode.Scalar) -> Bool {
        switch c.value {
        case 0x00...0x1f, 0x7f...0x9f: return true  // C0, DEL, C1
        case 0x202a...0x202e, 0x2066...0x2069: return true  // LRE RLE PDF LRO RLO, LRI RLI FSI PDI
        default: return false
        }
    }

    private static func hex(_ v: UInt32, width: Int) -> String {
        let digits = String(v, radix: 16)
        return String(repeating: "0", count: max(0, width - digits.count)) + digits
    }
}
