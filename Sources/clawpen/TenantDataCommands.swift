import ArgumentParser
import ClawpenClient
import ClawpenProtocol
import Glibc

/// `clawpen tenant offboard|restore|export` and `clawpen key rotate` (operators only;
/// docs/tenant-data.md). Paths are made absolute here: the daemon resolves none of its own.
enum PathArgument {
    static func absolute(_ p: String) -> String {
        if p.hasPrefix("/") { return p }
        var buf = [CChar](repeating: 0, count: 4096)
        guard getcwd(&buf, buf.count) != nil else { return p }
        let cwd = String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return cwd + "/" + p
    }
}

extension TenantCommand {
    struct Offboard: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "offboard",
            abstract: "Offboard a tenant: suspended and its secrets revoked now, its data deleted at the end of a grace period.",
            discussion: """
                At once: the tenant is suspended (submits refused), its worker stopped, its secrets revoked; \
                nothing is deleted. At the end of the grace period (default 30 days; a timer in the daemon that \
                survives restarts) its data key is destroyed first (every sealed job record and secret becomes \
                unreadable), then its workspace (never following a link), secrets, quota overrides and job \
                records are removed and its uid is retired (never given to another tenant). `clawpen tenant \
                restore NAME` undoes it during the grace period. --dry-run lists what would go and changes \
                nothing. --delete-audit also removes the tenant's audit rows, all but the offboarding's own.
                """)
        @OptionGroup var connection: ConnectionOptions
        @Argument(help: "The tenant's name.") var name: String
        @Flag(name: .customLong("dry-run"), help: "List what would be removed; change nothing.") var dryRun = false
        @Option(name: .customLong("grace-period-days"), help: "Days before the data is deleted (default 30).") var graceDays: Double?
        @Flag(help: "No grace period: delete at once.") var now = false
        @Flag(name: .customLong("delete-audit"), help: "Also remove the tenant's audit rows (the offboarding's own record stays).") var deleteAudit =
            false
        @Flag(help: "Print JSON.") var json = false

        func validate() throws {
            if now, let graceDays, graceDays > 0 { throw ValidationError("--now and --grace-period-days \(graceDays) contradict each other") }
        }

        func run() throws {
            let t = try TenantArgument.parse(name)
            let reply = try withClient(connection, json: json) { (c: ClawpenConnection) throws(ClientError) in
                try c.call(.tenantData(.offboard(name: t, dryRun: dryRun, graceDays: graceDays, now: now, deleteAudit: deleteAudit)))
            }
            if json { Output.json(reply); return }
            let inv = reply["would_remove"] ?? reply["removes"] ?? .null
            let ws = inv["workspace"] ?? .null
            var out = dryRun ? "offboarding \(name) would remove:\n" : ""
            if !dryRun {
                let o = reply["offboarding"] ?? .null
                out +=
                    now
                    ? "tenant \(name) offboarded: data key destroyed, data removed, uid retired\n"
                    : "tenant \(name) is offboarding (suspended, secrets revoked); its data goes at \(o["deadline"]?.doubleValue.map { String(Int($0)) } ?? "?") (seconds since the epoch) unless restored\n"
                out += "removed or to be removed:\n"
            }
            out +=
                "  workspace    \(ws["path"]?.stringValue ?? "") (\(ws["files"]?.intValue ?? 0) files, \(ws["directories"]?.intValue ?? 0) directories, \(Format.bytes(ws["bytes"]?.intValue)))\n"
            out += "  job records  \(inv["job_records"]?.intValue ?? 0)\n"
            let secrets = inv["secrets"]?.arrayValue?.compactMap(\.stringValue) ?? []
            out += "  secrets      \(secrets.count)\(secrets.isEmpty ? "" : " (" + secrets.joined(separator: ", ") + ")")\n"
            out += "  data keys    \(inv["data_keys"]?.intValue ?? 0)\n"
            let overrides = inv["overrides"]?.arrayValue?.compactMap(\.stringValue) ?? []
            out += "  overrides    \(overrides.isEmpty ? "none" : overrides.joined(separator: ", "))\n"
            out += "  audit rows   \(inv["audit_rows"]?.intValue ?? 0)\(deleteAudit ? "" : " (kept: add --delete-audit to remove them)")\n"
            Output.writeStdout(out)
        }
    }

    struct Restore: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "restore", abstract: "Undo an offboarding during its grace period: the tenant is resumed and its secrets work again.")
        @OptionGroup var connection: ConnectionOptions
        @Argument(help: "The tenant's name.") var name: String
        @Flag(help: "Print JSON.") var json = false

        func run() throws {
            let t = try TenantArgument.parse(name)
            let reply = try withClient(connection, json: json) { (c: ClawpenConnection) throws(ClientError) in
                try c.call(.tenantData(.restore(name: t)))
            }
            if json { Output.json(reply); return }
            Output.line("tenant \(name) restored (\(reply["state"]?.stringValue ?? ""))")
        }
    }

    struct Export: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "export",
            abstract: "Write a tenant's data to a tar file: its workspace and its job history (decrypted, JSON lines).",
            discussion: """
                The file is written by the daemon (mode 0600, never over an existing file): jobs.jsonl holds \
                one JSON object per job (the `job get --json` fields plus env and stdin_b64); workspace/ holds \
                the tenant's directory, links archived as links, never followed.
                """)
        @OptionGroup var connection: ConnectionOptions
        @Argument(help: "The tenant's name.") var name: String
        @Option(help: "The tar file to write.") var to: String
        @Flag(help: "Print JSON.") var json = false

        func run() throws {
            let t = try TenantArgument.parse(name)
            let path = PathArgument.absolute(to)
            let reply = try withClient(connection, json: json) { (c: ClawpenConnection) throws(ClientError) in
                try c.call(.tenantData(.export(name: t, path: path)))
            }
            if json { Output.json(reply); return }
            Output.line(
                "exported tenant \(name) to \(path): \(reply["jobs"]?.intValue ?? 0) job(s), \(reply["workspace_entries"]?.intValue ?? 0) workspace entries, \(Format.bytes(reply["bytes"]?.intValue))"
            )
        }
    }
}

struct KeyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "key", abstract: "The host's master key (operators only).", subcommands: [Rotate.self])

    struct Rotate: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "rotate",
            abstract: "Wrap every tenant's data key with a new master key; no record is rewritten.",
            discussion: """
                With the state dir's master.key (the default), the daemon makes the new key (or takes \
                --new-key-file's), writes it beside the old one, rewraps every data key in one transaction, then \
                replaces master.key with it: a stop at any step is finished at the next start. The old key is \
                gone afterwards; a backup of the database made before the rotation needs the old key. With \
                --master-key-file or the systemd credential, the daemon cannot replace the key: give \
                --new-key-file F and start the daemon with F afterwards. Tenants with their own key (tenant \
                create --key-file) are not touched.
                """)
        @OptionGroup var connection: ConnectionOptions
        @Option(name: .customLong("new-key-file"), help: "The new master key (32 bytes or 64 hex digits, mode 0600).") var newKeyFile: String?
        @Flag(help: "Print JSON.") var json = false

        func run() throws {
            let file = newKeyFile.map(PathArgument.absolute)
            let reply = try withClient(connection, json: json) { (c: ClawpenConnection) throws(ClientError) in
                try c.call(.tenantData(.keyRotate(newKeyFile: file)))
            }
            if json { Output.json(reply); return }
            var out =
                "master key rotated: \(reply["old_key_id"]?.stringValue ?? "") -> \(reply["new_key_id"]?.stringValue ?? ""), \(reply["rewrapped"]?.intValue ?? 0) data key(s) rewrapped\n"
            if let restart = reply["restart_with"]?.stringValue { out += "start the daemon with the new key from now on: \(restart)\n" }
            Output.writeStdout(out)
        }
    }
}
