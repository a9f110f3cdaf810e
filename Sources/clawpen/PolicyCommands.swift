import ArgumentParser
import ClawpenPolicy
import ClawpenProtocol
import Glibc

/// `clawpen policy ...`: the policy files. `check` works offline; subcommands that ask the
/// daemon (explain, reload) join this group.
struct PolicyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "policy", abstract: "Check and explain the policy files.",
        subcommands: [PolicyCheck.self])
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

    static let exitDataError: Int32 = 65  // EX_DATAERR
    static let exitNoInput: Int32 = 66  // EX_NOINPUT

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
