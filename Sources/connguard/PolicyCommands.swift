import ArgumentParser
import ConnGuardCore
import Foundation

struct BaselineCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "baseline",
        abstract: "Show, export, import, prune and compare the baselines the agent learnt.",
        subcommands: [List.self, Show.self, Export.self, Import.self, Prune.self, Diff.self]
    )

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Workloads, their mode, rule count and last change.")
        @OptionGroup var agent: AgentConnectionOptions
        @Option(name: [.short, .customLong("output")]) var output: OutputFormat = .table

        func run() async throws {
            var rows: [[String: Any]] = []
            try await callAgent { try await APIClient(socketPath: agent.socket).get("/v1/baselines") { line in
                if output == .json { print(line) } else if let o = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] { rows.append(o) }
                return true
            } }
            guard output == .table else { return }
            say(pad("WORKLOAD", 48) + pad("MODE", 9) + pad("RULES", 7) + "LAST CHANGE")
            for r in rows {
                let mode = (r["mode"] as? String ?? "") + ((r["incomplete"] as? Bool) == true ? "*" : "")
                say(pad(HumanText.escape(r["workload"] as? String ?? ""), 48) + pad(mode, 9)
                      + pad("\((r["rules"] as? Int) ?? 0)", 7) + (r["last_change"] as? String ?? ""))
            }
            if rows.contains(where: { ($0["incomplete"] as? Bool) == true }) {
                say("* learnt while events were lost: not promoted automatically")
            }
        }
    }

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "One workload's rules.")
        @OptionGroup var agent: AgentConnectionOptions
        @Argument(help: "The workload (as in `baseline list`).") var workload: String
        @Option(name: [.short, .customLong("output")], help: "table, json or yaml.") var output: String = "table"

        func validate() throws {
            guard ["table", "json", "yaml"].contains(output) else { throw ValidationError("--output must be table, json or yaml") }
        }

        func run() async throws {
            let client = APIClient(socketPath: agent.socket)
            if output == "yaml" {
                print(try await callAgent { try await client.send(.GET, "/v1/baseline", query: [("workload", workload), ("format", "yaml")]) }, terminator: "")
                return
            }
            let text = try await callAgent { try await client.send(.GET, "/v1/baseline", query: [("workload", workload)]) }
            if output == "json" { print(text); return }
            guard let o = try? JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any] else { throw Failure("the agent's answer was not JSON") }
            let stopped = (o["learning_stopped"] as? String).map { " (learning stopped: \($0))" }
            say("workload: \(o["workload"] ?? "")   mode: \(o["mode"] ?? "")"
                + (stopped ?? ((o["incomplete"] as? Bool) == true ? " (learnt while events were lost)" : "")))
            let rules = o["rules"] as? [[String: Any]] ?? []
            // On a cluster each rule says which nodes saw it.
            let clustered = rules.contains { $0["nodes"] != nil }
            say(pad("DIR", 5) + pad("PEER", 44) + pad("PORT", 7) + pad("PROTO", 6) + pad("HITS", 10) + pad("FIRST SEEN", 22)
                + (clustered ? pad("LAST SEEN", 22) + "NODES" : "LAST SEEN"))
            for r in rules {
                let last = r["last_seen"] as? String ?? ""
                let nodes = (r["nodes"] as? [String]).map { $0.isEmpty ? "(this node, not merged yet)" : $0.map(HumanText.escape).joined(separator: ",") } ?? ""
                say(pad(r["direction"] as? String ?? "", 5) + pad(HumanText.escape(r["peer"] as? String ?? ""), 44)
                      + pad("\(r["port"] ?? "")", 7) + pad(r["protocol"] as? String ?? "tcp", 6) + pad("\(r["hits"] ?? "")", 10) + pad(r["first_seen"] as? String ?? "", 22)
                      + (clustered ? pad(last, 22) + nodes : last))
            }
        }
    }

    struct Export: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Print a workload's baseline as YAML (for import elsewhere).")
        @OptionGroup var agent: AgentConnectionOptions
        @Argument var workload: String

        func run() async throws {
            let text = try await callAgent {
                try await APIClient(socketPath: agent.socket).send(.GET, "/v1/baseline", query: [("workload", workload), ("format", "yaml")])
            }
            print(text, terminator: text.hasSuffix("\n") ? "" : "\n")
        }
    }

    struct Import: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Replace a workload's baseline with a YAML file (checked as a whole; all or nothing).")
        @OptionGroup var agent: AgentConnectionOptions
        @Argument(help: "The YAML file (`-` for standard input).") var file: String

        func run() async throws {
            let data: Data
            if file == "-" {
                data = FileHandle.standardInput.readDataToEndOfFile()
            } else {
                guard let d = FileManager.default.contents(atPath: file) else { throw Failure("cannot read \(file)") }
                data = d
            }
            let text = try await callAgent {
                try await APIClient(socketPath: agent.socket).send(.POST, "/v1/baseline/import", body: Array(data))
            }
            if let o = try? JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any] {
                say("imported \(o["rules"] ?? 0) rules for \(o["workload"] ?? ""), mode \(o["mode"] ?? "")")
            }
        }
    }

    struct Prune: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Remove rules not used for a while.")
        @OptionGroup var agent: AgentConnectionOptions
        @Argument var workload: String
        @Option(parsing: .unconditional, help: "Remove rules unused for this long (e.g. 7d).") var unusedFor: String

        func validate() throws {
            let s: Double
            do { s = try DurationParser.parse(unusedFor) } catch { throw ValidationError("--unused-for: \(error)") }
            guard s > 0 else { throw ValidationError("--unused-for must be more than 0") }
        }

        func run() async throws {
            let text = try await callAgent {
                try await APIClient(socketPath: agent.socket).send(.POST, "/v1/baseline/prune",
                                                                   query: [("workload", workload), ("unused_for", unusedFor)])
            }
            let o = try? JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any]
            let pruned = o?["pruned"] as? [[String: Any]] ?? []
            say("removed \(pruned.count) rules from \(workload)")
            for r in pruned { say("  \(r["direction"] ?? "") \(r["peer"] ?? "") port \(r["port"] ?? "") (last seen \(r["last_seen"] ?? ""))") }
        }
    }

    struct Diff: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Rules added to a workload's baseline since a time.")
        @OptionGroup var agent: AgentConnectionOptions
        @Argument var workload: String
        @Option(parsing: .unconditional, help: "Since this long ago (1h) or this RFC 3339 time.") var since: String
        @Option(name: [.short, .customLong("output")]) var output: OutputFormat = .table

        func run() async throws {
            let text = try await callAgent {
                try await APIClient(socketPath: agent.socket).send(.GET, "/v1/baseline/diff", query: [("workload", workload), ("since", since)])
            }
            if output == .json { print(text); return }
            let o = try? JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any]
            let added = o?["added"] as? [[String: Any]] ?? []
            say("\(added.count) rules added to \(workload) since \(since)")
            for r in added { say("+ \(r["direction"] ?? "") \(r["peer"] ?? "") port \(r["port"] ?? "") (first seen \(r["first_seen"] ?? ""))") }
        }
    }
}

struct ModeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "mode",
        abstract: "Set a workload's mode: learn, monitor (report what would be blocked) or enforce (block it).",
        discussion: "Recorded in the audit log that `connguard status` shows, with when and who: the user, uid and pid the kernel gives for the connection (root, or a member of the agent's --admin-group)."
    )
    @OptionGroup var agent: AgentConnectionOptions
    @Argument var workload: String
    @Argument(help: "learn, monitor or enforce.") var mode: String

    func validate() throws {
        guard Mode(rawValue: mode) != nil else { throw ValidationError("mode must be learn, monitor or enforce") }
    }

    func run() async throws {
        _ = try await callAgent {
            try await APIClient(socketPath: agent.socket).send(.POST, "/v1/mode", query: [("workload", workload), ("mode", mode)])
        }
        say("\(workload): \(mode)")
    }
}

/// API failures become one line and exit 1.
func callAgent<T>(_ body: () async throws -> T) async throws -> T {
    do { return try await body() } catch let e as APIClient.Failure { throw Failure(e.description) }
}

func pad(_ s: String, _ width: Int) -> String {
    s.count >= width ? s + " " : s + String(repeating: " ", count: width - s.count)
}

struct DNSCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dns",
        abstract: "What each workload resolved through DNS: names, addresses, TTL left, and the rules they feed.",
        discussion: """
            An address stays with its name for max(TTL, the agent's --dns-floor) after the last answer. \
            KERNEL UNTIL: until when enforcement lets the workload reach the address for that name (an \
            enforced workload, a name its rules allow, an answer from a resolver its baseline allows).
            """)
    @OptionGroup var agent: AgentConnectionOptions
    @Option(help: "Only this workload.") var workload: String?
    @Option(help: "Only this name.") var name: String?
    @Option(name: [.short, .customLong("output")], help: "table or json (one object per line).") var output: OutputFormat = .table

    func validate() throws {
        if let name, DNSName(name) == nil || name.hasPrefix("*") { throw ValidationError("--name: '\(name)' is not a DNS name (api.example.test)") }
        if workload?.isEmpty == true { throw ValidationError("--workload must not be empty") }
    }

    func run() async throws {
        var q: [(String, String)] = []
        if let workload { q.append(("workload", workload)) }
        if let name { q.append(("name", name)) }
        var rows: [[String: Any]] = []
        try await callAgent { try await APIClient(socketPath: agent.socket).get("/v1/dns", query: q) { line in
            if output == .json { print(line) } else if let o = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] { rows.append(o) }
            return true
        } }
        guard output == .table else { return }
        say(pad("WORKLOAD", 32) + pad("NAME", 28) + pad("ADDRESS", 26) + pad("TTL", 7) + pad("LEFT", 6) + pad("HELD UNTIL", 21)
              + pad("KERNEL UNTIL", 21) + "RULES")
        for r in rows {
            func s(_ k: String) -> String { HumanText.escape((r[k] as? String) ?? "-") }
            let rules = ((r["rules"] as? [String]) ?? []).map(HumanText.escape).joined(separator: ", ")
            say(pad(s("workload"), 32) + pad(s("name"), 28) + pad(s("address"), 26) + pad("\((r["ttl"] as? Int) ?? 0)", 7)
                  + pad("\((r["ttl_left"] as? Int) ?? 0)", 6) + pad(String(s("held_until").prefix(19)), 21)
                  + pad(String(s("allowed_in_kernel_until").prefix(19)), 21) + (rules.isEmpty ? "-" : rules))
        }
    }
}
