import Foundation
import ArgumentParser

@main
struct ConnGuard: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "connguard",
        abstract: "See, learn and enforce the TCP connections of every workload on this node.",
        version: ConnGuardVersion.string,
        subcommands: [AgentCommand.self, ConnectionsCommand.self, StatusCommand.self, BaselineCommand.self, ModeCommand.self, DNSCommand.self,
                      TraceCommand.self, ProbeCommand.self, KillSwitchCommand.self]
    )
}

extension ConnGuard {
    /// Every error ends as one line on stderr and a non-zero exit, argument
    /// errors too (swift-argument-parser's message, without its usage block:
    /// `--help` shows that); --help and --version print as they are.
    static func main() async {
        do {
            var command = try parseAsRoot()
            if var asyncCommand = command as? AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
        } catch let failure as Failure {
            printError(failure.message)
            Foundation.exit(1)
        } catch let code as ExitCode {
            Foundation.exit(code.rawValue)
        } catch {
            let code = exitCode(for: error)
            if code == .success { exit(withError: error) }
            let lines = message(for: error).split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }
            printError(lines.filter { !$0.isEmpty }.joined(separator: "; ") + " (see --help)")
            Foundation.exit(code.rawValue)
        }
    }
}

enum ConnGuardVersion {
    static let string = "0.1.0"
}
