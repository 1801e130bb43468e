// Values people type: durations, times, addresses and blocks, ports.
import ConnGuardCore

func fuzzDuration(_ data: UnsafeRawBufferPointer) {
    let s = text(data)
    do {
        let seconds = try DurationParser.parse(s)
        require(seconds.isFinite && seconds >= 0 && seconds <= DurationParser.maximumSeconds, "'\(s)' gave \(seconds) s")
        let ns = DurationParser.nanoseconds(seconds)
        require(ns >= 0 && Double(ns) <= DurationParser.maximumSeconds * 1e9 + 1e9, "'\(s)' gave \(ns) ns")
        // The whole seconds, written back as plain seconds, parse to themselves.
        let whole = seconds.rounded(.down)
        require((try? DurationParser.parse(String(Int64(whole)))) == whole, "\(Int64(whole)) does not parse back")
    } catch {
        requireOneLine(error.description, "for '\(s.debugDescription)'")
    }
}

func fuzzTime(_ data: UnsafeRawBufferPointer) {
    let s = text(data)
    do {
        let ns = try RFC3339.parse(s)
        require(ns >= 0 && ns < RFC3339.latestNanoseconds, "'\(s)' gave \(ns)")
        // Written back (whole seconds) it parses to the same second.
        let again = try RFC3339.parse(RFC3339.string(ns))
        require(abs(again - ns) < 1_000_000_000, "'\(s)': \(ns) -> \(RFC3339.string(ns)) -> \(again)")
    } catch {
        requireOneLine(error.description, "for '\(s.debugDescription)'")
    }
    let now: Int64 = 1_795_000_000_000_000_000  // 2026-11-17
    do {
        let t = try TimeArgument.nanoseconds(s, now: now)
        require(t >= 0 && t < RFC3339.latestNanoseconds, "'\(s)' gave \(t)")
    } catch {
        requireOneLine(error.description, "for '\(s.debugDescription)'")
    }
}

func fuzzAddress(_ data: UnsafeRawBufferPointer) {
    let s = text(data)
    if let a = IPAddress(s) {
        // inet_pton reads a C string: text after a NUL must not be ignored.
        require(!s.utf8.contains(0), "'\(s.debugDescription)' parsed as \(a)")
        require(IPAddress(a.description) == a, "\(a) does not parse back to itself")
        require(a.bytes.count == (a.family == .ipv4 ? 4 : 16), "\(a): \(a.bytes.count) bytes")
        let fromBytes = a.family == .ipv4 ? IPAddress(ipv4: a.bytes) : IPAddress(ipv6: a.bytes)
        require(fromBytes == a, "\(a) from its bytes is \(fromBytes)")
    }
    if let c = CIDR(s) {
        require(!s.utf8.contains(0), "'\(s.debugDescription)' parsed as \(c)")
        require(c.prefixLength >= 0 && c.prefixLength <= (c.network.family == .ipv4 ? 32 : 128), "\(c): prefix length")
        require(CIDR(c.description) == c, "\(c) does not parse back to itself")
        require(c.contains(c.network), "\(c) does not contain its network")
        require(CIDR(address: c.network, prefixLength: c.prefixLength) == c, "\(c) rebuilt from its parts differs")
    }
}

func fuzzPort(_ data: UnsafeRawBufferPointer) {
    let s = text(data)
    // Decimal digits from 1 to 65535, nothing else (no sign, space or hex).
    let digits = !s.isEmpty && s.utf8.allSatisfy { $0 >= 0x30 && $0 <= 0x39 }
    let expected = digits ? Int(s).flatMap { (1...65535).contains($0) ? UInt16($0) : nil } : nil
    do {
        let p = try PortArgument.parse(s)
        require(p == expected, "'\(s.debugDescription)' gave \(p), expected \(String(describing: expected))")
        require((try? PortArgument.parse(String(p))) == p, "\(p) does not parse back")
    } catch {
        require(expected == nil, "'\(s)' refused: \(error)")
        requireOneLine(error.description, "for '\(s.debugDescription)'")
    }
}
