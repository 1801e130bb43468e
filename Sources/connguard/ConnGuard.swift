import ArgumentParser

@main
struct ConnGuard: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "connguard",
        abstract: "See, learn and enforce the TCP connections of every workload on this node.",
        version: ConnGuardVersion.string,
        subcommands: [TraceCommand.self, ProbeCommand.self, KillSwitchCommand.self]
    )
}

enum ConnGuardVersion {
    static let string = "0.1.0"
}
