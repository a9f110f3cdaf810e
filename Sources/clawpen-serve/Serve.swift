import ArgumentParser
import ClawpenPolicy
import ClawpenSupervisor
import ClawpenSystemd
import ClawpenTOML
import Glibc
import Logging

struct ServeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "clawpen serve",
        abstract: "Run the supervisor (normally started by systemd).",
        discussion: """
            Settings come from flags, else the environment (CLAWPEN_SOCKET, CLAWPEN_STATE_DIR, \
            CLAWPEN_WORKSPACE_ROOT, CLAWPEN_POLICIES, CLAWPEN_WORKER), else --config FILE (TOML: a \
            [serve] table whose keys are the long flags' names, e.g. state-dir = "/srv/clawpen", \
            idle-timeout = 60, plus uid-min and uid-max; a bad key or value exits 78 naming it and \
            its line), else the defaults. The tenants' uid range is registered in /etc/subuid and \
            /etc/subgid (--subuid-file and --subgid-file name other files, for tests only). When \
            --policies is not given and /etc/clawpen/policies does not exist, the embedded default \
            policies are used (and `status` says so). SIGTERM or SIGINT: stop accepting, let running \
            jobs finish within the grace period, stop the workers, remove the socket.

            This is the daemon binary, clawpen-serve, which `clawpen serve` runs (it lies next to \
            clawpen, with clawpen-worker).
            """)

    @Option(help: "Socket to listen on (default /run/clawpen/clawpen.sock).") var socket: String?
    @Option(name: .customLong("state-dir"), help: "Where the SQLite store lives (default /var/lib/clawpen).") var stateDir: String?
    @Option(name: .customLong("workspace-root"), help: "Parent of every tenant's workspace (default /workspace).") var workspaceRoot: String?
    @Option(help: "Policies directory (default /etc/clawpen/policies).") var policies: String?
    @Option(help: "A TOML file with a [serve] table.") var config: String?
    @Option(name: .customLong("worker-path"), help: "The clawpen-worker executable (default: next to clawpen-serve).") var workerPath: String?
    @Option(name: .customLong("idle-timeout"), help: "Seconds before an idle worker is stopped (default 300).") var idleTimeout: Double?
    @Option(name: .customLong("max-frame-bytes"), help: "Largest request frame accepted (default 16777216).") var maxFrameBytes: Int?
    @Option(name: .customLong("shutdown-grace"), help: "Seconds running jobs get to finish on SIGTERM (default 10).") var shutdownGrace: Double?
    @Option(name: .customLong("prespawn"), help: "Spare workers kept ready for new tenants' first jobs (default: 0 with tenant cgroups, 2 without).")
    var prespawn: Int?
    @Option(name: .customLong("partial-frame-timeout"), help: "Seconds a client may leave a frame half-sent before it is disconnected (default 30).")
    var partialFrameTimeout: Double?
    @Option(
        name: .customLong("client-buffer-bytes"),
        help: ArgumentHelp(
            "Bytes of replies and streamed output queued for one client connection before it is disconnected (default 25165824, 24 MiB).",
            discussion:
                "Bytes the client's socket has not taken yet. A client over it is disconnected (its jobs go on); the log names its pid and uid. Keep it above the largest reply a job's view can be: 12 times the policies' largest output_max_bytes."
        )) var clientBufferBytes: Int?
    @Option(
        name: .customLong("all-clients-buffer-bytes"),
        help: ArgumentHelp(
            "The same for all client connections together, with the frames they are in the middle of sending (default 134217728, 128 MiB, or more when --client-buffer-bytes plus --max-frame-bytes is more).",
            discussion: "Over it, the connections holding the most are disconnected, the biggest first, until the rest fit."
        )) var allClientsBufferBytes: Int?
    @Option(
        name: .customLong("client-requests-per-second"),
        help: ArgumentHelp(
            "Requests a second one client connection may send while other connections are being served (default 1000; 0: no limit).",
            discussion:
                "Past it, with a burst of a quarter second's worth, the connection is not read until its next request may go: it is slowed, never refused. A connection alone on the socket is not limited. status --json counts the requests held back (supervisor.clients.fairness.paced_requests)."
        )) var clientRequestsPerSecond: Double?
    @Option(
        name: .customLong("client-waits"),
        help: ArgumentHelp(
            "Job results one client connection may wait for at once: job.wait, a resubmission's or a cancel's wait (default 4096).",
            discussion:
                "A wait holds memory for as long as its job runs. Past it a wait is refused with quota_exceeded (quota client_waits) and the job is untouched; a submit's own wait is counted but never refused. A connection's waits go when it closes."
        )) var clientWaits: Int?
    @Option(
        name: .customLong("all-clients-waits"),
        help: "The same for all client connections together (default 65536; quota all_clients_waits).") var allClientsWaits: Int?
    @Option(
        name: .customLong("max-clients"),
        help: ArgumentHelp(
            "Connections the control socket holds at once (default: a quarter of the raised RLIMIT_NOFILE, at least 256).",
            discussion:
                "At the limit the socket stops accepting until one closes; further connections wait in the kernel's backlog. Each connection is a descriptor the supervisor shares with its workers and store."
        )) var maxClients: Int?
    @Option(
        name: .customLong("max-clients-per-uid"),
        help: ArgumentHelp(
            "Control socket connections one peer uid (SO_PEERCRED) may hold at once (default: half of --max-clients).",
            discussion:
                "One more from that uid is accepted and closed at once with quota_exceeded (quota client_connections_per_uid), so that a service that leaks connections is told and other uids are still served."
        )) var maxClientsPerUID: Int?
    @Option(name: .customLong("fsync-accepts"), help: "fsync each accepted job before acknowledging it: true or false (default true).") var fsyncAccepts: Bool?
    @Option(
        name: .customLong("dispatch"),
        help: "How the router picks the next tenant: fair (weighted, the default) or fifo (first accepted, first started; for comparison).") var dispatch:
        String?
    @Option(name: .customLong("max-running"), help: "Jobs running at once across all tenants (default: 4 per online core).") var maxRunning: Int?
    @Option(
        name: .customLong("reserved-slots"),
        help: "Of --max-running, slots kept for tenants with nothing running, so a backlog cannot fill them (default: a quarter, at least 1).")
    var reservedSlots: Int?
    @Flag(
        name: .customLong("require-cgroup-limits"),
        help:
            "Refuse to start (exit 78) unless the tenant cgroups get the memory, pids and cpu controllers: no per-process rlimit fallback (the systemd unit sets it)."
    ) var requireCgroupLimits = false
    @Option(
        name: .customLong("worker-cgroup"),
        help:
            "A delegated cgroup v2 directory of another unit (clawpen-workers.service) to put the tenants' cgroups in, instead of this daemon's own cgroup: workers outside the daemon's unit outlive its restart (docs/systemd.md, \"Upgrades\")."
    ) var workerCgroup: String?
    @Flag(
        name: .customLong("hold-worker-cgroup"),
        help:
            "Run as clawpen-workers.service's only process: move into a holder/ leaf of this unit's delegated cgroup (so that the cgroup can hand controllers to the tenant nodes clawpen serve --worker-cgroup makes in it), then wait for SIGTERM."
    ) var holdWorkerCgroup = false
    @Option(name: .customLong("subuid-file"), help: "For tests only: the file the tenants' uid range is registered in instead of /etc/subuid.") var subuidFile:
        String?
    @Option(name: .customLong("subgid-file"), help: "For tests only: the file the tenants' gid range is registered in instead of /etc/subgid.") var subgidFile:
        String?
    @Option(
        name: .customLong("master-key-file"),
        help:
            "The secret store's master key (32 bytes or 64 hex digits, mode 0600). Default: the systemd credential clawpen-master-key, else <state-dir>/master.key, generated at the first start."
    ) var masterKeyFile: String?
    @Option(
        name: .customLong("egress-ca-file"), help: "PEM CA certificates the egress proxy verifies upstream servers against (default: the host's trust store).")
    var egressCAFile: String?
    @Option(name: .customLong("egress-path"), help: "The clawpen-egress executable (default: next to clawpen-serve).") var egressPath: String?
    @Option(name: .customLong("egress-uid"), help: "The uid and gid the egress proxy runs as (default: the uid just below the tenant range).")
    var egressUID: Int?
    @Option(name: .customLong("log-level"), help: "trace, debug, info, notice, warning, error or critical.") var logLevel: String?
    @Option(
        name: .customLong("metrics-listen"),
        help: ArgumentHelp(
            "Serve HTTP GET /metrics (Prometheus), /healthz and /readyz on HOST:PORT (e.g. 127.0.0.1:9464).",
            discussion: "Off by default. Anyone who can connect reads every tenant's name and counts: bind it to loopback or a private address."
        )) var metricsListen: String?

    func run() throws {
        if holdWorkerCgroup {
            if let failure = CgroupTree.holdDelegated(CgroupInfo.probe()) {
                ServeExit.writeStderr("clawpen: serve --hold-worker-cgroup: \(failure)\n")
                throw ExitCode(78)
            }
            // Nothing else to do: the cgroup lives while this process does. SIGTERM ends it.
            while true { pause() }
        }
        var cfg = ServeConfig()
        var configLevel: Logger.Level?
        if let path = config {
            do { try ConfigFile.apply(path: path, to: &cfg, logLevel: &configLevel) } catch {
                throw ServeExit.config("\(error)")
            }
        }
        func env(_ name: String) -> String? { getenv(name).map { String(cString: $0) }.flatMap { $0.isEmpty ? nil : $0 } }
        if let v = socket ?? env("CLAWPEN_SOCKET") { cfg.socketPath = v }
        if let v = stateDir ?? env("CLAWPEN_STATE_DIR") { cfg.stateDir = v }
        if let v = workspaceRoot ?? env("CLAWPEN_WORKSPACE_ROOT") { cfg.workspaceRoot = v }
        if let v = policies ?? env("CLAWPEN_POLICIES") { cfg.policiesDir = v; cfg.policiesDirExplicit = true }
        if let v = workerPath ?? env("CLAWPEN_WORKER") { cfg.workerPath = v }
        if let v = idleTimeout { cfg.idleTimeoutSeconds = v }
        if let v = maxFrameBytes { cfg.maxFrameBytes = v }
        if let v = shutdownGrace { cfg.shutdownGraceSeconds = v }
        if let v = fsyncAccepts { cfg.fsyncAccepts = v }
        if let v = partialFrameTimeout { cfg.partialFrameTimeoutSeconds = v }
        if let v = clientBufferBytes { cfg.clientBufferBytes = v }
        if let v = clientRequestsPerSecond {
            guard v >= 0, v.isFinite else { throw ServeExit.usage("--client-requests-per-second must be a number >= 0 (0: no limit), not \(v)") }
            cfg.clientRequestsPerSecond = v
        }
        if let v = allClientsBufferBytes { cfg.allClientsBufferBytes = v }
        if let v = clientWaits {
            guard v >= 1 else { throw ServeExit.usage("--client-waits must be an integer >= 1, not \(v)") }
            cfg.waitLimits.perClient = v
        }
        if let v = allClientsWaits {
            guard v >= 1 else { throw ServeExit.usage("--all-clients-waits must be an integer >= 1, not \(v)") }
            cfg.waitLimits.allClients = v
        }
        if let v = maxClients {
            guard v >= 1 else { throw ServeExit.usage("--max-clients must be an integer >= 1, not \(v)") }
            cfg.maxClients = v
        }
        if let v = maxClientsPerUID {
            guard v >= 1 else { throw ServeExit.usage("--max-clients-per-uid must be an integer >= 1, not \(v)") }
            cfg.maxClientsPerUID = v
        }
        if let v = prespawn { cfg.prespawnWorkers = v }
        if let v = dispatch {
            guard let mode = DispatchMode(rawValue: v) else { throw ServeExit.usage("--dispatch must be fair or fifo, not '\(v)'") }
            cfg.dispatchMode = mode
        }
        if let v = maxRunning { cfg.maxRunning = v }
        if let v = reservedSlots { cfg.reservedSlots = v }
        if requireCgroupLimits { cfg.requireCgroupLimits = true }
        if let v = workerCgroup { cfg.workerCgroup = absolute(v) }
        if let v = metricsListen { cfg.metricsListen = v }
        // For tests only: where the uid range is registered instead of /etc/subuid and /etc/subgid.
        if let v = subuidFile { cfg.subuidPath = absolute(v) }
        if let v = subgidFile { cfg.subgidPath = absolute(v) }
        if let v = masterKeyFile { cfg.masterKeyFile = absolute(v) }
        if let v = egressCAFile { cfg.egressCAFile = absolute(v) }
        if let v = egressPath ?? env("CLAWPEN_EGRESS") { cfg.egressPath = absolute(v) }
        if let v = egressUID { cfg.egressUID = v }
        if let m = cfg.maxRunning, !(1...100_000).contains(m) { throw ServeExit.usage("--max-running must be 1...100000, not \(m)") }
        if let r = cfg.reservedSlots, r < 0 || r >= (cfg.maxRunning ?? Int.max) {
            throw ServeExit.usage("--reserved-slots must be >= 0 and below --max-running")
        }
        guard cfg.idleTimeoutSeconds > 0, cfg.shutdownGraceSeconds >= 0, cfg.partialFrameTimeoutSeconds > 0, (0...64).contains(cfg.prespawnWorkers ?? 0),
            cfg.maxFrameBytes >= 1024, cfg.maxFrameBytes <= 1 << 30
        else {
            throw ServeExit.usage(
                "out of range: --idle-timeout must be > 0, --shutdown-grace >= 0, --prespawn 0...64, --max-frame-bytes 1024...1073741824")
        }
        if let problem = cfg.clientBudget.problem(maxFrameBytes: cfg.maxFrameBytes) { throw ServeExit.usage(problem) }
        cfg.socketPath = absolute(cfg.socketPath)
        cfg.stateDir = absolute(cfg.stateDir)
        cfg.workspaceRoot = absolute(cfg.workspaceRoot)
        cfg.policiesDir = absolute(cfg.policiesDir)
        cfg.workerPath = cfg.workerPath.map(absolute)

        var level = configLevel ?? .info
        if let v = logLevel {
            guard let l = Logger.Level(rawValue: v) else {
                throw ServeExit.usage("--log-level must be one of trace, debug, info, notice, warning, error, critical, not '\(v)'")
            }
            level = l
        }
        // journald with TENANT=, JOB_ID=, WORKER_PID= fields when stderr is the journal; plain lines otherwise.
        let journal = LogSink.bootstrap(level: level)
        let logger = Logger(label: "clawpen")
        if journal { logger.debug("logging to the journal with structured fields") }
        do { try Server.run(cfg, logger: logger) } catch {
            ServeExit.writeStderr("clawpen: serve: \(error)\n")
            throw ExitCode(error.exitCode)
        }
    }

    private func absolute(_ p: String) -> String {
        if p.hasPrefix("/") { return p }
        var buf = [CChar](repeating: 0, count: 4096)
        guard getcwd(&buf, buf.count) != nil else { return p }
        return String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self) + "/" + p
    }
}

/// How `clawpen serve` fails before it serves: the contract's `clawpen: <code>: <message>` on
/// stderr and a sysexits status (64 for a flag, 78 EX_CONFIG for the config file).
enum ServeExit {
    static func usage(_ message: String) -> ExitCode {
        writeStderr("clawpen: invalid_request: \(message)\n")
        return ExitCode(64)
    }

    static func config(_ message: String) -> ExitCode {
        writeStderr("clawpen: serve: bad config: \(message)\n")
        return ExitCode(78)
    }

    static func writeStderr(_ s: String) {
        let bytes = Array(s.utf8)
        var off = 0
        while off < bytes.count {
            let n = bytes[off...].withUnsafeBytes { Glibc.write(2, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { return }
            off += n
        }
    }
}

extension ServeError {
    var exitCode: Int32 {
        switch self {
        case .socketInUse: return 69
        // EX_CONFIG: this binary is older than its state dir, or the database is corrupt or
        // another process holds it: an operator must act before a restart can help.
        case .store(let e) where e.needsOperator: return 78
        case .policy, .policiesDirectoryMissing, .workerMissing, .socketPathOccupied, .seccomp, .cgroupLimitsMissing, .uidRange, .config, .masterKey, .egress,
            .stateDirInUse, .stateLock:
            return 78 // EX_CONFIG
        default: return 70
        }
    }
}

/// `serve --config FILE`: a `[serve]` table, keys named like the flags in snake_case.
enum ConfigFile {
    struct Failure: Error, CustomStringConvertible {
        let description: String
    }

    /// The keys, as the long flags are named (`clawpen serve --help`); uid-min and uid-max have
    /// no flag. The snake_case names of the first version (`idle_timeout_s`, ...) still work.
    static let knownKeys = [
        "socket", "state-dir", "workspace-root", "policies", "worker-path", "idle-timeout", "max-frame-bytes", "shutdown-grace", "prespawn",
        "partial-frame-timeout", "fsync-accepts", "dispatch", "max-running", "reserved-slots", "require-cgroup-limits", "log-level", "metrics-listen",
        "client-buffer-bytes", "all-clients-buffer-bytes", "client-requests-per-second", "client-waits", "all-clients-waits", "max-clients",
        "max-clients-per-uid",
        "master-key-file", "egress-ca-file", "uid-min", "uid-max",
    ]

    /// A flag's name, or an older snake_case name, as the one spelling `apply` switches on.
    static func canonicalKey(_ key: String) -> String {
        switch key {
        case "idle-timeout": return "idle_timeout_s"
        case "shutdown-grace": return "shutdown_grace_s"
        case "prespawn": return "prespawn_workers"
        case "partial-frame-timeout": return "partial_frame_timeout_s"
        default: return String(key.map { $0 == "-" ? "_" : $0 })
        }
    }

    static func apply(path: String, to cfg: inout ServeConfig, logLevel: inout Logger.Level?) throws {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw Failure(description: "cannot read config file \(path): \(String(cString: strerror(errno)))") }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 8192)
        while true {
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            guard n > 0 else { break }
            bytes.append(contentsOf: chunk[0..<n])
        }
        close(fd)
        let doc: TOMLDocument
        do { doc = try TOMLDocument.parse(String(decoding: bytes, as: UTF8.self), file: path) } catch {
            throw Failure(description: error.description)
        }
        for top in doc.root.entries where top.key != "serve" {
            throw Failure(description: "\(path):\(top.line): unknown key '\(top.key)' (the config file has one table, [serve])")
        }
        guard let serve = doc.root["serve"]?.tableValue else { return }
        var uidMin = cfg.uidRange.lowerBound, uidMax = cfg.uidRange.upperBound
        for e in serve.entries {
            func bad(_ expected: String) -> Failure { Failure(description: "\(path):\(e.line): \(e.key) must be \(expected)") }
            switch canonicalKey(e.key) {
            case "socket": guard let s = e.value.stringValue else { throw bad("a string") }; cfg.socketPath = s
            case "state_dir": guard let s = e.value.stringValue else { throw bad("a string") }; cfg.stateDir = s
            case "workspace_root": guard let s = e.value.stringValue else { throw bad("a string") }; cfg.workspaceRoot = s
            case "policies": guard let s = e.value.stringValue else { throw bad("a string") }; cfg.policiesDir = s; cfg.policiesDirExplicit = true
            case "worker_path": guard let s = e.value.stringValue else { throw bad("a string") }; cfg.workerPath = s
            case "idle_timeout_s": guard let d = e.value.numberValue, d > 0 else { throw bad("a positive number") }; cfg.idleTimeoutSeconds = d
            case "shutdown_grace_s": guard let d = e.value.numberValue, d >= 0 else { throw bad("a number >= 0") }; cfg.shutdownGraceSeconds = d
            case "max_frame_bytes": guard let i = e.value.integerValue, i >= 1024 else { throw bad("an integer >= 1024") }; cfg.maxFrameBytes = Int(i)
            case "uid_min": guard let i = e.value.integerValue, i >= 1000 else { throw bad("an integer >= 1000") }; uidMin = Int(i)
            case "uid_max": guard let i = e.value.integerValue, i >= 1000 else { throw bad("an integer >= 1000") }; uidMax = Int(i)
            case "fsync_accepts": guard let b = e.value.boolValue else { throw bad("true or false") }; cfg.fsyncAccepts = b
            case "prespawn_workers":
                guard let i = e.value.integerValue, (0...64).contains(i) else { throw bad("an integer from 0 to 64") }; cfg.prespawnWorkers = Int(i)
            case "dispatch":
                guard let v = e.value.stringValue, let m = DispatchMode(rawValue: v) else { throw bad("\"fair\" or \"fifo\"") }; cfg.dispatchMode = m
            case "max_running":
                guard let i = e.value.integerValue, (1...100_000).contains(i) else { throw bad("an integer from 1 to 100000") }; cfg.maxRunning = Int(i)
            case "reserved_slots": guard let i = e.value.integerValue, i >= 0 else { throw bad("an integer >= 0") }; cfg.reservedSlots = Int(i)
            case "require_cgroup_limits": guard let b = e.value.boolValue else { throw bad("true or false") }; cfg.requireCgroupLimits = b
            case "worker_cgroup": guard let s = e.value.stringValue else { throw bad("a string, a cgroup v2 directory") }; cfg.workerCgroup = s
            case "master_key_file": guard let s = e.value.stringValue else { throw bad("a string") }; cfg.masterKeyFile = s
            case "egress_ca_file": guard let s = e.value.stringValue else { throw bad("a string") }; cfg.egressCAFile = s
            case "metrics_listen": guard let s = e.value.stringValue else { throw bad("a string, HOST:PORT") }; cfg.metricsListen = s
            case "client_buffer_bytes":
                guard let i = e.value.integerValue, i >= ClientBudget.minimumPerClient else { throw bad("an integer >= \(ClientBudget.minimumPerClient)") }
                cfg.clientBufferBytes = Int(i)
            case "client_requests_per_second":
                guard let d = e.value.numberValue, d >= 0 else { throw bad("a number >= 0 (0: no limit)") }
                cfg.clientRequestsPerSecond = d
            case "client_waits":
                guard let i = e.value.integerValue, i >= 1 else { throw bad("an integer >= 1") }
                cfg.waitLimits.perClient = Int(i)
            case "all_clients_waits":
                guard let i = e.value.integerValue, i >= 1 else { throw bad("an integer >= 1") }
                cfg.waitLimits.allClients = Int(i)
            case "max_clients":
                guard let i = e.value.integerValue, i >= 1 else { throw bad("an integer >= 1") }
                cfg.maxClients = Int(i)
            case "max_clients_per_uid":
                guard let i = e.value.integerValue, i >= 1 else { throw bad("an integer >= 1") }
                cfg.maxClientsPerUID = Int(i)
            case "all_clients_buffer_bytes":
                guard let i = e.value.integerValue, i >= ClientBudget.minimumPerClient else { throw bad("an integer >= \(ClientBudget.minimumPerClient)") }
                cfg.allClientsBufferBytes = Int(i)
            case "partial_frame_timeout_s":
                guard let d = e.value.numberValue, d > 0 else { throw bad("a positive number") }; cfg.partialFrameTimeoutSeconds = d
            case "log_level":
                guard let v = e.value.stringValue, let level = Logger.Level(rawValue: v) else {
                    throw bad("one of trace, debug, info, notice, warning, error, critical")
                }
                logLevel = level
            default:
                throw Failure(
                    description:
                        "\(path):\(e.line): unknown key '\(e.key)' in [serve] (known: \(knownKeys.joined(separator: ", ")))"
                )
            }
        }
        guard uidMin <= uidMax else { throw Failure(description: "\(path): uid_min (\(uidMin)) is above uid_max (\(uidMax))") }
        cfg.uidRange = uidMin...uidMax
    }
}
