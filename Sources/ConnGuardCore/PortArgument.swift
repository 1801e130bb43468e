/// A TCP port as people give it: `--port` on the CLI, `port=` in the API.
/// One parser, so both take the same spellings (decimal digits, 1 to 65535;
/// 0 names no port) and refuse the rest with the same words.
public enum PortArgument {
    public static func parse(_ text: String) throws(InvalidInput) -> UInt16 {
        let refused = InvalidInput("port must be from 1 to 65535, not '\(HumanText.escape(String(text.prefix(64))))'")
        // Digits only: Int(_:) would also take a sign ("+80").
        guard !text.isEmpty, text.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }),
              let n = Int(text), (1...65535).contains(n) else { throw refused }
        return UInt16(n)
    }
}
