// libFuzzer targets. One executable holds every target; the target to run
// is chosen by CONNGUARD_FUZZ_TARGET when the process starts (scripts/fuzz sets
// it), so one sanitizer build serves them all. Each target feeds the input to
// the project's own parser and checks properties of what comes back; a broken
// property aborts, which libFuzzer reports as a crash and saves the input.
import CConnGuardFuzz
import Glibc

/// Every target: name -> what it does with one input.
let targets: [String: @Sendable (UnsafeRawBufferPointer) -> Void] = [
    "duration": fuzzDuration,
    "time": fuzzTime,
    "address": fuzzAddress,
    "port": fuzzPort,
    "yaml": fuzzYAML,
    "baseline": fuzzBaseline,
    "config": fuzzConfig,
    "api-request": fuzzAPIRequest,
    "cgroup-path": fuzzCgroupPath,
    "proc-net-tcp": fuzzProcNetTCP,
    "namespace-addresses": fuzzNamespaceAddresses,
    "dns": fuzzDNS,
]

// Set once in main, before any input; libFuzzer runs inputs on one thread.
nonisolated(unsafe) var selected: ((UnsafeRawBufferPointer) -> Void)?
nonisolated(unsafe) var selectedName = ""

/// main: SwiftPM links the executable's main to `<module>_main`, so libFuzzer's
/// own main is not used; this one selects the target and runs libFuzzer's driver.
@_cdecl("connguard_fuzz_main")
public func fuzzMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>) -> Int32 {
    let name = getenv("CONNGUARD_FUZZ_TARGET").map { String(cString: $0) } ?? ""
    guard let run = targets[name] else {
        say("CONNGUARD_FUZZ_TARGET must be one of: \(targets.keys.sorted().joined(separator: " ")) (got '\(name)')")
        return 2
    }
    selected = run
    selectedName = name
    var argc = argc
    var argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = argv
    return LLVMFuzzerRunDriver(&argc, &argv) { data, size in
        selected!(UnsafeRawBufferPointer(start: data, count: size))
        return 0
    }
}

/// One line on stderr (write(2): Glibc's `stderr` is a mutable global that Swift 6 refuses).
func say(_ line: String) {
    let bytes = Array((line + "\n").utf8)
    _ = bytes.withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
}

/// The input as the parsers see it: every reader in ConnGuard turns bytes
/// into a String with String(decoding:as:), invalid UTF-8 becoming U+FFFD.
func text(_ data: UnsafeRawBufferPointer) -> String {
    String(decoding: data, as: UTF8.self)
}

/// A property that must hold; on failure, says which and aborts (libFuzzer
/// then saves the input as crash-*).
func require(_ condition: @autoclosure () -> Bool, _ message: @autoclosure () -> String,
             file: StaticString = #fileID, line: UInt = #line) {
    if !condition() {
        say("[\(selectedName)] property broken at \(file):\(line): \(message())")
        abort()
    }
}

/// Errors for people are one line, with control characters escaped.
func requireOneLine(_ message: String, _ context: @autoclosure () -> String = "") {
    require(!message.isEmpty, "empty error message \(context())")
    require(!message.unicodeScalars.contains { $0.value < 0x20 || $0.value == 0x7f || (0x80...0x9f).contains($0.value) },
            "error message with a raw control character: \(message.debugDescription) \(context())")
}
