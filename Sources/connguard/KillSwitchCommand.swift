import ArgumentParser
import ConnGuardEnforcer

/// The operator's way out: removes every ConnGuard enforcement program and
/// pin from the node, whether or not an agent is running.
struct KillSwitchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "kill-switch",
        abstract: "Detach every ConnGuard enforcement program and remove its pins: nothing is refused afterwards.",
        discussion: """
            Detaches the links pinned under the pin root and removes every pin there, then detaches any other \
            ConnGuard enforcement link still attached anywhere (held by a running agent, or pinned elsewhere). \
            A running agent keeps tracing; it stops enforcing.
            """
    )

    @Option(help: "Where enforcement is pinned in bpffs.")
    var pinRoot: String = Enforcer.defaultPinRoot

    @Flag(help: "Only what is pinned under --pin-root: leave other ConnGuard links (another pin root's) alone.")
    var pinRootOnly = false

    func run() throws {
        try reportingErrors {
            let report = try Enforcer.removeAll(pinRoot: pinRoot, sweepUnpinnedLinks: !pinRootOnly)
            print(report.description)
        }
    }
}
