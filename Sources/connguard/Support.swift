import ArgumentParser
import ConnGuardCore
import ConnGuardTracer
import Glibc
import Synchronization

/// Set by SIGINT/SIGTERM; the poll loops check it at least every 100 ms.
let stopRequested = Atomic<Bool>(false)

/// Routes SIGINT and SIGTERM to `stopRequested` so that the command detaches
/// everything and prints its summary instead of dying mid-way. SIGPIPE is
/// ignored: a closed stdout (`| head`) shows up as a write error we handle.
func installStopSignals() {
    var action = sigaction()
    action.__sigaction_handler.sa_handler = { _ in stopRequested.store(true, ordering: .relaxed) }
    sigemptyset(&action.sa_mask)
    action.sa_flags = 0  // no SA_RESTART: let poll() return EINTR at once
    sigaction(SIGINT, &action, nil)
    sigaction(SIGTERM, &action, nil)
    signal(SIGPIPE, SIG_IGN)
}

/// Prints one line to stderr. The message often quotes what the user typed
/// or what the agent sent: escaped, so no ESC, CR or bidi override from it
/// reaches the terminal, and it stays one line.
func printError(_ message: String) {
    var line = "connguard: " + HumanText.escape(message) + "\n"
    line.withUTF8 { _ = write(2, $0.baseAddress, $0.count) }
}

/// One line of human output (tables, status): escaped (HumanText), since it
/// shows names and values that came from processes and users.
func say(_ line: String) {
    print(HumanText.escape(line))
}

/// A failure already explained on stderr: exit non-zero without more output.
struct Failure: Error {
    let message: String
    init(_ message: String) { self.message = message }
}

extension ParsableCommand {
    /// Runs `body`, turning any error into one line on stderr and exit 1.
    func reportingErrors(_ body: () throws -> Void) throws {
        do {
            try body()
        } catch let e as ExitCode {
            throw e
        } catch let e as Failure {
            printError(e.message)
            throw ExitCode.failure
        } catch {
            printError("\(error)")
            throw ExitCode.failure
        }
    }
}

/// Buffered writes to stdout; a write error (reader went away) is remembered
/// so that the caller can stop.
struct OutputBuffer {
    var bytes: [UInt8] = []
    private(set) var broken = false

    init() { bytes.reserveCapacity(1 << 17) }

    mutating func flushIfLarge() { if bytes.count >= 1 << 16 { flush() } }

    mutating func flush() {
        guard !bytes.isEmpty, !broken else { bytes.removeAll(keepingCapacity: true); return }
        var offset = 0
        var failed = false
        bytes.withUnsafeBytes { buf in
            while offset < buf.count {
                let n = write(1, buf.baseAddress! + offset, buf.count - offset)
                if n < 0 {
                    if errno == EINTR { continue }
                    failed = true
                    return
                }
                offset += n
            }
        }
        if failed { broken = true }
        bytes.removeAll(keepingCapacity: true)
    }
}

/// Durations as people write them: 90, 90s, 15m, 2h, 7d, 1h30m; at most
/// DurationParser.maximumDescription. A bad one is a usage error that says
/// why (too long: the limit), not swift-argument-parser's bare "invalid".
/// Options take it with `transform: Duration.parse` (not as an
/// ExpressibleByArgument, whose failure cannot say why).
struct Duration: Sendable {
    let seconds: Double

    /// For `@Option(transform: Duration.parse)`.
    static func parse(_ argument: String) throws -> Duration {
        do {
            return Duration(seconds: try DurationParser.parse(argument))
        } catch {
            throw ValidationError(error.description)
        }
    }

    private init(seconds: Double) { self.seconds = seconds }

    var nanoseconds: Int64 { DurationParser.nanoseconds(seconds) }
}

/// For `@Option(transform: PortOption.parse)`: the port parser the API uses,
/// its message naming the flag ("--port must be from 1 to 65535, not '0'").
enum PortOption {
    static func parse(_ argument: String) throws -> UInt16 {
        do {
            return try PortArgument.parse(argument)
        } catch {
            throw ValidationError("--\(error)")
        }
    }
}

extension OutputFormat: ExpressibleByArgument {}

extension TracerError {
    /// The remedy, as this command line offers it.
    var commandHint: String {
        switch remedy {
        case .showVerifierLog: return "; run with --verbose for the verifier log"
        case .probeTheKernel: return "; `connguard probe` shows what this kernel supports"
        case nil: return ""
        }
    }
}
