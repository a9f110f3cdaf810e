import ArgumentParser
import ClawpenClient
import ClawpenPolicy
import ClawpenProtocol
import Glibc

/// `clawpen policy ...`: the policy files. `check` works offline; subcommands that ask the
/// daemon (explain, reload) join this group.
struct PolicyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "policy", abstract: "Check and explain the policy files.",
        subcommands: [PolicyCheck.self, PolicyExplain.self, PolicyReload.self])
}

struct PolicyCheck: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check",
        abstract: "Validate a policies directory without a daemon.",
        discussion: """
            Reads tiers/*.toml, tenants/*.toml, seccomp/*.toml (every profile a tier or an override \
            names must exist and parse) and access.toml, and prints every problem as \
            FILE:LINE: KEY: message, then a summary. With --quota-dir, also the set-quota overrides \
            of a state directory (<state-dir>/quota). Exit status: 0 when the policy is valid, 65 when \
            there are problems, 66 when DIR does not exist.
            """)

    @Argument(help: ArgumentHelp("The policies directory.", discussion: "Default: $CLAWPEN_POLICIES, else /etc/clawpen/policies.", valueName: "dir"))
    var directory: String?
    @Option(name: .customLong("quota-dir"), help: ArgumentHelp("Also check the set-quota overrides in this directory (<state-dir>/quota).", valueName: "dir"))
    var quotaDir: String?
    @Flag(help: "Print the result as JSON.") var json = false

    static let exitDataError: Int32 = 65 // EX_DATAERR
    static let exitNoInput: Int32 = 66 // EX_NOINPUT

    func run() throws {
        let env = getenv("CLAWPEN_POLICIES").map { String(cString: $0) }.flatMap { $0.isEmpty ? nil : $0 }
        let dir = directory ?? env ?? "/etc/clawpen/policies"
        for (what, path) in [("policy directory", dir), ("quota directory", quotaDir)] {
            guard let path, !isDirectory(path) else { continue }
            let message = "\(path): \(what) does not exist"
            if json {
                Output.json(.object([("directory", .string(dir)), ("ok", .bool(false)), ("error", .string(message))]))
            } else {
                Output.writeStderr("clawpen: policy check: \(message)\n")
            }
            throw ExitCode(Self.exitNoInput)
        }

        let report = PolicyLoader.check(directory: dir, quotaDirectory: quotaDir)
        if json {
            Output.json(Self.json(report, directory: dir))
        } else {
            for p in report.problems { Output.line(p.report) }
            Output.line(Self.summary(report, directory: dir))
        }
        if !report.ok { throw ExitCode(Self.exitDataError) }
    }

    static func summary(_ r: PolicyCheckReport, directory: String) -> String {
        guard r.ok else {
            return "policy check: \(directory): \(r.problems.count) problem\(r.problems.count == 1 ? "" : "s")"
        }
        var parts = ["\(r.tierCount) tiers", "\(r.tenantOverrideCount) tenant override\(r.tenantOverrideCount == 1 ? "" : "s")"]
        if r.quotaDirectory != nil {
            parts.append("\(r.quotaOverrideCount) quota override\(r.quotaOverrideCount == 1 ? "" : "s")")
        }
        parts.append("\(r.seccompProfileCount) seccomp profile\(r.seccompProfileCount == 1 ? "" : "s")")
        parts.append(
            "access: \(r.accessRuleCount) rule\(r.accessRuleCount == 1 ? "" : "s")"
                + (r.accessFilePresent ? "" : " (no access.toml: only root)"))
        return "policy check: \(directory): OK (\(parts.joined(separator: ", ")))"
    }

    static func json(_ r: PolicyCheckReport, directory: String) -> JSONValue {
        let problems: [JSONValue] = r.problems.map { p in
            .object([
                ("file", .string(p.file)), ("line", p.line.map { .int(Int64($0)) } ?? .null),
                ("key", p.key.map { .string($0) } ?? .null), ("message", .string(p.reason)), ("text", .string(p.report)),
            ])
        }
        return .object([
            ("directory", .string(directory)), ("quota_directory", r.quotaDirectory.map { .string($0) } ?? .null),
            ("ok", .bool(r.ok)), ("problems", .array(problems)), ("tiers", .int(Int64(r.tierCount))),
            ("tenant_overrides", .int(Int64(r.tenantOverrideCount))),
            ("quota_overrides", .int(Int64(r.quotaOverrideCount))),
            ("seccomp_profiles", .int(Int64(r.seccompProfileCount))),
            ("access_file", .bool(r.accessFilePresent)), ("access_rules", .int(Int64(r.accessRuleCount))),
        ])
    }

    private func isDirectory(_ path: String) -> Bool {
        var st = stat()
        return stat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFDIR
    }
}

/// `clawpen policy explain --tenant NAME -- CMD ARGS`: the decision the daemon would take for a
/// submit of CMD, with every rule that took part; nothing runs.
struct PolicyExplain: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "explain",
        abstract: "Show what the tenant's tool policy decides for a command, and why (nothing runs).",
        discussion: """
            Asks the daemon, which knows the tenant's tier and overrides. Prints the decision, how \
            argv[0] was resolved (PATH /usr/local/bin:/usr/bin:/bin inside the sandbox), and every \
            rule that took part (commands_deny, commands_allow, the fixed environment deny list, \
            env_allow) with its file and line. Exit status: 0 when the command would be allowed, 77 \
            when it would be denied.

            Example: clawpen policy explain --tenant acme --env AGENT_MODE=fast -- python3 -c 'print(1)'

            With --url URL instead of a command: what the tenant's egress proxy would do with a \
            request there (the allow rule or `default deny`, the addresses the name resolves to and \
            any restricted range that refuses one, and how each secret would reach it; expose = \
            "env" is called weaker). Example: clawpen policy explain --tenant acme --url https://api.openai.com/v1
            """)

    @OptionGroup var connection: ConnectionOptions
    @Option(help: "The tenant whose policy decides.") var tenant: String
    @Option(name: .customLong("env"), help: ArgumentHelp("An environment variable the job would get (repeatable).", valueName: "K=V"))
    var env: [String] = []
    @Option(help: "The job's working directory as it would see it (default /home).") var cwd: String?
    @Option(help: "Explain an egress request to this URL (http://, https:// or host:port) instead of a command.") var url: String?
    @Flag(help: "Print the decision as JSON.") var json = false
    // Only what follows `--` is the command: anything before it that is not one of the options
    // above is a usage error (with a suggestion), never the start of a command. A misspelt
    // `--timout 5` must not become a job that runs `--timout`.
    @Argument(parsing: .postTerminator, help: ArgumentHelp("The command and its arguments, after --.", valueName: "cmd"))
    var command: [String] = []

    func validate() throws {
        for e in env where !e.contains("=") || e.hasPrefix("=") { throw ValidationError("--env takes K=V, got '\(e)'") }
    }

    func run() throws {
        let tenantName = try TenantArgument.parse(tenant)
        if let url {
            guard command.isEmpty else { Self.exit(withError: ValidationError("give --url or a command after --, not both")) }
            try EgressExplainOutput.run(connection, tenantName, url, json: json)
            return
        }
        // Checked here, not in validate(): ArgumentParser validates before it refuses words left
        // over before `--`, and "unexpected argument 'echo'" says more than "no command".
        guard !command.isEmpty else { Self.exit(withError: ValidationError("no command given: clawpen policy explain --tenant NAME -- CMD [ARG...]")) }
        let cmd = command
        let vars = env.map { e -> SubmitRequest.EnvVar in
            let parts = e.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            return .init(name: String(parts[0]), value: parts.count > 1 ? String(parts[1]) : "")
        }
        let reply = try withClient(connection, json: json) { (c: ClawpenConnection) throws(ClientError) in
            try c.call(.policyExplain(tenant: tenantName, argv: cmd, env: vars, cwd: cwd))
        }
        let e = reply["explain"] ?? .null
        let d = e["decision"] ?? .null
        let allowed = d["allowed"]?.boolValue == true
        if json {
            Output.json(e)
        } else {
            var out = "tenant \(e["tenant"]?.stringValue ?? tenant) (tier \(e["tier"]?.stringValue ?? "?")), policies \(e["policies"]?.stringValue ?? "?")\n"
            out += "command: \(cmd.joined(separator: " "))\n"
            out += "decision: \(allowed ? "ALLOWED" : "DENIED")"
            if let p = d["resolved_path"]?.stringValue { out += " (runs \(p))" }
            out += "\n"
            if !allowed, let m = d["message"]?.stringValue { out += "reason: \(m)\n" }
            out += "rules:\n"
            for step in d["steps"]?.arrayValue ?? [] {
                out += "  \((step["outcome"]?.stringValue ?? "").padding(12)) \(step["rule"]?.stringValue ?? "")\n"
            }
            if case .object(let sources)? = e["sources"] {
                out += "sources:\n"
                for (k, v) in sources { out += "  \(k.padding(15)) \(v.stringValue ?? "")\n" }
            }
            Output.writeStdout(out)
        }
        if !allowed { throw ExitCode(ErrorCode.policyDenied.exitCode) }
    }
}

/// `clawpen policy reload`: the daemon re-reads its policies (as on SIGHUP).
struct PolicyReload: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "reload",
        abstract: "Make the daemon re-read its policies (operators only; same as SIGHUP).",
        discussion: """
            A policy set that does not load keeps the old one in force, and the error names the \
            file, line and key. New limits apply at once to the router and to tenant cgroups; a \
            worker's sandbox settings (seccomp profile, network, /tmp size) change when it next \
            starts. Check a directory first with `clawpen policy check`.
            """)

    @OptionGroup var connection: ConnectionOptions
    @Flag(help: "Print the loaded policy summary as JSON.") var json = false

    func run() throws {
        let reply = try withClient(connection, json: json) { (c: ClawpenConnection) throws(ClientError) in try c.call(.policyReload) }
        let p = reply["policy"] ?? .null
        if json { Output.json(p); return }
        Output.line(
            "reloaded policies from \(p["source"]?.stringValue ?? "?"): \(p["tenant_overrides"]?.intValue ?? 0) tenant override(s), \(p["quota_overrides"]?.intValue ?? 0) set-quota override(s), \(p["access_rules"]?.intValue ?? 0) access rule(s)"
        )
    }
}

extension String {
    func padding(_ width: Int) -> String { count >= width ? self : self + String(repeating: " ", count: width - count) }
}

/// `policy explain --url`: the egress proxy's decision, in words or JSON.
enum EgressExplainOutput {
    static func run(_ connection: ConnectionOptions, _ tenant: TenantName, _ url: String, json: Bool) throws {
        let reply = try withClient(connection, json: json) { (c: ClawpenConnection) throws(ClientError) in
            try c.call(.egressExplain(tenant: tenant, url: url))
        }
        let e = reply["explain"] ?? .null
        let g = e["egress"] ?? .null
        let allowed = g["allowed"]?.boolValue == true
        if json {
            Output.json(e)
        } else {
            var out =
                "tenant \(e["tenant"]?.stringValue ?? tenant.value) (tier \(e["tier"]?.stringValue ?? "?")), network \(g["network"]?.stringValue ?? "?")\n"
            out += "request: \(g["host"]?.stringValue ?? "?"):\(g["port"]?.intValue ?? 0)\n"
            out += "decision: \(allowed ? "ALLOWED" : "DENIED") by \(g["rule"]?.stringValue ?? "?")\n"
            if let m = g["message"]?.stringValue { out += "why: \(m)\n" }
            if let a = g["addresses"]?.arrayValue, !a.isEmpty { out += "addresses: \(a.compactMap(\.stringValue).joined(separator: " "))\n" }
            if let t = g["tls"]?.stringValue { out += "tls: \(t)\n" }
            for s in g["secrets"]?.arrayValue ?? [] {
                let used = s["substituted"]?.boolValue == true ? "substituted here" : "not substituted here"
                out += "secret \(s["name"]?.stringValue ?? "?") (env \(s["env"]?.stringValue ?? "?"), \(used)): \(s["strength"]?.stringValue ?? "")\n"
            }
            Output.writeStdout(out)
        }
        if !allowed { throw ExitCode(ErrorCode.policyDenied.exitCode) }
    }
}
