import ArgumentParser
import ClawpenClient
import ClawpenProtocol

struct TenantCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tenant", abstract: "Create and inspect tenants.",
        subcommands: [
            Create.self, List.self, Show.self, SetQuota.self, Suspend.self, Resume.self, Inspect.self, Offboard.self, Restore.self, Export.self,
        ])

    struct Create: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "create",
            abstract: "Create a tenant: its record, its uid and its workspace <workspace-root>/<name>.",
            discussion: "Names match ^[a-z0-9][a-z0-9_-]{0,62}$.")
        @OptionGroup var connection: ConnectionOptions
        @Argument(help: "The tenant's name.") var name: String
        @Option(help: "free, pro or enterprise.") var tier: String = "free"
        @Option(
            name: .customLong("key-file"),
            help:
                "Bring your own key: this file (on the daemon's host, 32 bytes or 64 hex digits, mode 0600) wraps the tenant's data key instead of the master key."
        )
        var keyFile: String?
        @Flag(help: "Print the tenant as JSON.") var json = false

        func run() throws {
            let tenantName = try TenantArgument.parse(name)
            let request: Request =
                keyFile.map { .tenantData(.createWithKey(name: tenantName, tier: tier, keyFile: PathArgument.absolute($0))) }
                ?? .tenantCreate(name: tenantName, tier: tier)
            let t = try withClient(connection) { (c: ClawpenConnection) throws(ClientError) in try c.tenant(request) }
            if json {
                Output.json(t.json)
            } else {
                Output.line("created tenant \(t.name) (tier \(t.tier), uid \(t.uid), workspace \(t.workspace))")
            }
        }
    }

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "list", abstract: "List tenants.")
        @OptionGroup var connection: ConnectionOptions
        @Flag(help: "Print a JSON array.") var json = false

        func run() throws {
            let list = try withClient(connection) { (c: ClawpenConnection) throws(ClientError) in try c.tenants() }
            if json { Output.json(.array(list.map(\.json))); return }
            var rows = [["TENANT", "TIER", "UID", "WORKSPACE"]]
            for t in list { rows.append([t.name, t.tier, String(t.uid), t.workspace]) }
            Output.writeStdout(Format.table(rows))
        }
    }

    struct Show: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "show", abstract: "Show one tenant.")
        @OptionGroup var connection: ConnectionOptions
        @Argument(help: "The tenant's name.") var name: String
        @Flag(help: "Print JSON.") var json = false

        func run() throws {
            let tenantName = try TenantArgument.parse(name)
            let t = try withClient(connection) { (c: ClawpenConnection) throws(ClientError) in try c.tenant(.tenantShow(name: tenantName)) }
            if json { Output.json(t.json); return }
            Output.writeStdout("tenant:     \(t.name)\ntier:       \(t.tier)\nuid:        \(t.uid)\nworkspace:  \(t.workspace)\n")
        }
    }

    struct SetQuota: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "set-quota",
            abstract: "Change one tenant's limits (operators only); kept across restarts.",
            discussion: """
                Writes <state-dir>/quota/NAME.toml on the daemon's side (the same keys and checks as \
                policies/tenants/NAME.toml, applied on top of it), then reloads the policies. Values \
                are checked as policy files are: an impossible value is refused with the key and the \
                reason, and nothing changes. Sizes accept bytes or 256M, 1G; --cpu-max takes cores \
                (0.5); lists are comma-separated.

                Example: clawpen tenant set-quota acme --max-runs 4 --memory-max 512M --cpu-max 1
                """)
        @OptionGroup var connection: ConnectionOptions
        @Argument(help: "The tenant's name.") var name: String
        @Option(name: .customLong("max-runs"), help: "max_concurrent_runs: jobs running at once.") var maxRuns: String?
        @Option(name: .customLong("jobs-per-minute"), help: "jobs_per_minute: submits per minute (token bucket).") var jobsPerMinute: String?
        @Option(name: .customLong("max-queued"), help: "max_queued: jobs waiting.") var maxQueued: String?
        @Option(name: .customLong("memory-max"), help: "memory_max: memory of the tenant's processes together (256M, 1G).") var memoryMax: String?
        @Option(name: .customLong("pids-max"), help: "pids_max: processes and threads together.") var pidsMax: String?
        @Option(name: .customLong("cpu-max"), help: "cpu_max: CPU bandwidth in cores (0.5).") var cpuMax: String?
        @Option(name: .customLong("cpu-weight"), help: "cpu_weight: share among tenants, and dispatch weight (1-10000).") var cpuWeight: String?
        @Option(name: .customLong("cpu-seconds-per-hour"), help: "cpu_seconds_per_hour: CPU budget over any hour.") var cpuSecondsPerHour: String?
        @Option(name: .customLong("timeout-default"), help: "timeout_default_s: a job's timeout when it names none.") var timeoutDefault: String?
        @Option(name: .customLong("timeout-max"), help: "timeout_max_s: the longest timeout a job may ask for.") var timeoutMax: String?
        @Option(name: .customLong("output-max"), help: "output_max_bytes: kept per stream (1M).") var outputMax: String?
        @Option(name: .customLong("network"), help: "network: none or loopback.") var network: String?
        @Option(name: .customLong("seccomp-profile"), help: "seccomp_profile: a profile of seccomp/.") var seccompProfile: String?
        @Option(name: .customLong("tmp-size"), help: "tmp_size: size of the sandbox's /tmp.") var tmpSize: String?
        @Option(name: .customLong("disk-max"), help: "disk_max: bytes the tenant's workspace may hold (project quota; 1G).") var diskMax: String?
        @Option(name: .customLong("inodes-max"), help: "inodes_max: files and directories the workspace may hold.") var inodesMax: String?
        @Option(name: .customLong("commands-allow"), help: "commands_allow: paths or globs, comma-separated (replaces the list).") var commandsAllow: String?
        @Option(name: .customLong("commands-deny"), help: "commands_deny: paths or globs, comma-separated (replaces the list).") var commandsDeny: String?
        @Option(name: .customLong("env-allow"), help: "env_allow: names or globs, comma-separated (replaces the list).") var envAllow: String?
        @Flag(help: "Print the result as JSON.") var json = false

        var changes: [QuotaChange] {
            let pairs: [(String, String?)] = [
                ("max_concurrent_runs", maxRuns), ("jobs_per_minute", jobsPerMinute), ("max_queued", maxQueued),
                ("memory_max", memoryMax), ("pids_max", pidsMax), ("cpu_max", cpuMax), ("cpu_weight", cpuWeight),
                ("cpu_seconds_per_hour", cpuSecondsPerHour), ("timeout_default_s", timeoutDefault), ("timeout_max_s", timeoutMax),
                ("output_max_bytes", outputMax), ("network", network), ("seccomp_profile", seccompProfile), ("tmp_size", tmpSize),
                ("commands_allow", commandsAllow), ("commands_deny", commandsDeny), ("env_allow", envAllow),
                ("disk_max", diskMax), ("inodes_max", inodesMax),
            ]
            return pairs.compactMap { k, v in v.map { QuotaChange(key: k, value: .string($0)) } }
        }

        func validate() throws {
            if changes.isEmpty { throw ValidationError("nothing to set: give at least one limit, e.g. --max-runs 4 (see --help)") }
        }

        func run() throws {
            let tenantName = try TenantArgument.parse(name)
            let reply = try withClient(connection, json: json) { (c: ClawpenConnection) throws(ClientError) in
                try c.call(.tenantSetQuota(name: tenantName, changes: changes))
            }
            if json { Output.json(reply); return }
            var out = "set for tenant \(name) (\(reply["file"]?.stringValue ?? "")):\n"
            for c in changes { out += "  \(c.key) = \(c.value.stringValue ?? "")\n" }
            Output.writeStdout(out)
        }
    }

    struct Inspect: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "inspect",
            abstract: "What the tenant's running worker actually has, beside what its policy asks (operators only).",
            discussion: """
                Read from the kernel, not from the configuration: uid and gid, the five capability \
                sets, no_new_privs, seccomp mode and filter count (/proc/<worker>/status), each \
                namespace against the supervisor's, the root, the cgroup and its memory.max, \
                memory.swap.max, pids.max and cpu.max read back, the interfaces up in the worker's \
                network namespace, the Landlock ruleset of its jobs, and the workspace's disk quota.

                Exit status: 0 when every fact matches the policy, 1 when any does not (a limit the \
                kernel does not hold here is a mismatch), 3 when the tenant has no running worker \
                (it starts with the tenant's next job), and the usual codes for errors (64, 69, 77).
                """)
        @OptionGroup var connection: ConnectionOptions
        @Argument(help: "The tenant's name.") var name: String
        @Flag(help: "Print JSON.") var json = false

        /// Exit status when the tenant has no running worker.
        static let noWorkerExit: Int32 = 3

        func run() throws {
            let tenantName = try TenantArgument.parse(name)
            let reply = try withClient(connection, json: json) { (c: ClawpenConnection) throws(ClientError) in
                try c.call(.tenantInspect(name: tenantName))
            }
            let inspect = reply["inspect"] ?? .null
            let running = inspect["running"]?.boolValue ?? false
            let mismatches = inspect["mismatches"]?.intValue ?? 0
            if json {
                Output.json(inspect)
            } else if !running {
                Output.line(inspect["message"]?.stringValue ?? "tenant \(name) has no running worker")
            } else {
                var rows = [["FACT", "ACTUAL", "EXPECTED", "OK"]]
                for f in inspect["facts"]?.arrayValue ?? [] {
                    rows.append([
                        f["fact"]?.stringValue ?? "", f["actual"]?.stringValue ?? "-", f["expected"]?.stringValue ?? "",
                        f["ok"]?.boolValue == true ? "ok" : "MISMATCH",
                    ])
                }
                var out = "tenant \(name), worker pid \(inspect["worker_pid"]?.intValue.map { String($0) } ?? "?")\n" + Format.table(rows)
                for f in inspect["facts"]?.arrayValue ?? [] where f["ok"]?.boolValue != true {
                    if let note = f["note"]?.stringValue { out += "\(f["fact"]?.stringValue ?? ""): \(note)\n" }
                }
                out += mismatches == 0 ? "every fact matches the policy\n" : "\(mismatches) fact(s) do not match the policy\n"
                Output.writeStdout(out)
            }
            if !running { throw ExitCode(Self.noWorkerExit) }
            if mismatches > 0 { throw ExitCode(1) }
        }
    }
}
