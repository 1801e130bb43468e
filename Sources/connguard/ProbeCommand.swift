import ArgumentParser
import ConnGuardCore
import ConnGuardEnforcer
import ConnGuardTracer

struct ProbeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "probe",
        abstract: "Show what this kernel supports and which hooks ConnGuard would use."
    )

    @Option(name: [.short, .customLong("output")], help: "Output format: table or json.")
    var output: OutputFormat = .table

    func run() throws {
        try reportingErrors {
            var report = KernelProbe.run()
            if report.error == nil {
                // Enforcement's programs (the DNS answer parser among them), loaded and let go.
                let refused = Enforcer.checkLoads()
                report.facilities.append(.init(name: "enforcement programs", available: refused == nil,
                                               detail: refused.map { "refused: \($0)" } ?? "load (cgroup connect, sendmsg, bind, cgroup_skb with the DNS parser)"))
            }
            switch output {
            case .table:
                for f in report.facilities {
                    let mark = f.available ? "yes" : "no "
                    print("\(mark)  \(f.name.padding(to: 34))\(f.detail)")
                }
                if !report.rungs.isEmpty {
                    print("")
                    print("hook rungs (best first):")
                    for x in report.rungs {
                        print("  \(x.refused == nil ? "yes" : "no ")  \(x.rung.rawValue.padding(to: 12))\(x.refused ?? "loads and attaches")")
                    }
                }
                if !report.hooks.isEmpty {
                    print("")
                    print("hooks chosen (rung \(report.rung.map(\.rawValue) ?? "-")):")
                    for h in report.hooks { print("  \(h.capability.padding(to: 18))\(h.rung.rawValue.padding(to: 12))\(h.detail)") }
                }
                if let e = report.error { print(""); print("cannot trace here: \(e)") }
            case .json:
                var out: [UInt8] = []
                report.json.append(to: &out)
                print(String(decoding: out, as: UTF8.self))
            }
            if report.error != nil { throw ExitCode.failure }
        }
    }
}

extension String {
    func padding(to width: Int) -> String {
        count >= width ? self + " " : self + String(repeating: " ", count: width - count)
    }
}
