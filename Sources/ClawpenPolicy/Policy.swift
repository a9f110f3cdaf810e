import ClawpenWire
/// A tenant's service tier. Each has a file `tiers/<rawValue>.toml`.
public enum Tier: String, Sendable, CaseIterable, Hashable {
    case free, pro, enterprise
}

/// The limits of one tier (or of one tenant, once its override is applied).
/// Each property is one key of `tiers/<tier>.toml`; the key names are in `TierLimits.keys`.
public struct TierLimits: Sendable, Equatable {
    /// `max_concurrent_runs`: jobs of the tenant running at once (the router).
    public var maxConcurrentRuns: Int
    /// `jobs_per_minute`: admission rate per tenant (the router's rate limiter).
    public var jobsPerMinute: Int
    /// `max_queued`: jobs waiting per tenant before submits are refused with quota_exceeded.
    public var maxQueued: Int
    /// `memory_max`: bytes for the tenant's processes together (cgroup memory.max, else RLIMIT_AS per job).
    public var memoryMaxBytes: Int64
    /// `pids_max`: processes and threads of the tenant together (cgroup pids.max, else RLIMIT_NPROC).
    public var pidsMax: Int
    /// `cpu_max`: CPU bandwidth in cores (cgroup cpu.max; see `cpuMaxCgroupString`).
    public var cpuMaxCores: Double
    /// `cpu_weight`: relative share among tenants (cgroup cpu.weight, 1–10000, and fair dispatch).
    public var cpuWeight: Int
    /// `timeout_default_s`: a job's timeout when the request names none.
    public var timeoutDefaultSeconds: Double
    /// `timeout_max_s`: the largest timeout a request may ask for.
    public var timeoutMaxSeconds: Double
    /// `output_max_bytes`: captured bytes per stream (stdout, stderr) before truncation.
    public var outputMaxBytes: Int
    /// `network`: "none" (own network namespace, no interface up), "loopback" (`lo` up) or
    /// "egress" (`lo` up and the tenant's egress proxy on 127.0.0.1:3128; docs/egress.md).
    public var network: String
    /// `seccomp_profile`: name of `seccomp/<name>.toml`.
    public var seccompProfile: String
    /// `tmp_size`: size limit of the sandbox's tmpfs `/tmp`.
    public var tmpSizeBytes: Int64
    /// `cpu_seconds_per_hour`: CPU seconds the tenant's processes together may use in any
    /// sliding hour (the router's CPU budget; 3600 is one core all hour).
    public var cpuSecondsPerHour: Double
    /// `commands_allow`: absolute paths or globs of the commands a job may start (see `decideTool`).
    public var commandsAllow: [PatternRule]
    /// `commands_deny`: paths or globs refused even where `commands_allow` matches (deny wins).
    public var commandsDeny: [PatternRule]
    /// `env_allow`: names or globs of the environment variables a request may set.
    public var envAllow: [PatternRule]
    /// `max_attempts`: a job whose worker dies while running it runs again until it has had this many attempts.
    public var maxAttempts: Int
    /// `crash_loop_max`: worker failures within `crash_loop_window_s` that quarantine the tenant.
    public var crashLoopMax: Int
    /// `crash_loop_window_s`: the window of the crash-loop rule, in seconds.
    public var crashLoopWindowSeconds: Double
    /// `crash_backoff_max_s`: the longest wait before a crashed worker is started again.
    public var crashBackoffMaxSeconds: Double
    /// `disk_max`: bytes the tenant's workspace may hold (a project quota where the workspace
    /// filesystem has them; DiskQuota in the supervisor).
    public var diskMaxBytes: Int64
    /// `inodes_max`: files and directories the tenant's workspace may hold (the same quota).
    public var inodesMax: Int
    /// `interactive_timeout_max_s`: the longest (and the default) timeout of a job with stdin
    /// open or a terminal (an agent's REPL or shell outlives a tool call).
    public var interactiveTimeoutMaxSeconds: Double
    /// `file_max_bytes`: the largest file a `file.put` or `file.get` moves.
    public var fileMaxBytes: Int64
    /// `egress_max_connections`: connections one tenant's jobs may hold open through the shared
    /// egress proxy at once (one tenant cannot take every descriptor of the proxy).
    public var egressMaxConnections: Int = TierLimits.defaultEgressMaxConnections
    public static let defaultEgressMaxConnections = 256
    /// `agent_max_connections`: connections one tenant's jobs may hold open to its agent socket
    /// at once; past it the socket is not accepted from until one closes (the supervisor's
    /// descriptors are shared by every tenant).
    public var agentMaxConnections: Int = TierLimits.defaultAgentMaxConnections
    public static let defaultAgentMaxConnections = 64
    /// `job_records_max`: bytes of finished job records (output, request) the store keeps for
    /// the tenant; past it the oldest are purged, as retention would (RecordsBudget.swift).
    public var jobRecordsMaxBytes: Int64 = TierLimits.defaultJobRecordsMaxBytes
    public static let defaultJobRecordsMaxBytes: Int64 = 256 * ByteSize.mebibyte
    /// `max_queued_bytes`: bytes of stdin the tenant's queued jobs may hold in the
    /// supervisor's memory until they start.
    public var maxQueuedBytes: Int = TierLimits.defaultMaxQueuedBytes
    public static let defaultMaxQueuedBytes = 64 * 1024 * 1024
    /// `job_retention_days`: finished job records older than this are purged (Retention.swift).
    public var jobRetentionDays: Int = 7
    /// `max_depth`: how many levels of sub-jobs a job submitted from outside may lead to (its
    /// own depth is 0; a sub-job is one deeper than the job that submitted it).
    public var maxDepth = 3
    /// `tree_max_jobs`: jobs one tree may have in all (the root, every sub-job, ended or not).
    public var treeMaxJobs = 50
    /// `tree_cpu_seconds`: CPU seconds one tree's jobs may use together.
    public var treeCPUSeconds: Double = 60
    /// `tree_timeout_s`: how long a tree may live, from its root's acceptance.
    public var treeTimeoutSeconds: Double = 300
    /// `[egress] allow`: where an `egress` tenant's proxy lets requests go (Egress.swift).
    public var egressAllow: [EgressRule] = []
    /// `[secrets.NAME]`: how each secret reaches the jobs.
    public var secrets: [SecretBinding] = []

    public init(
        maxConcurrentRuns: Int, jobsPerMinute: Int, maxQueued: Int, memoryMaxBytes: Int64, pidsMax: Int,
        cpuMaxCores: Double, cpuWeight: Int, timeoutDefaultSeconds: Double, timeoutMaxSeconds: Double,
        outputMaxBytes: Int, network: String, seccompProfile: String, tmpSizeBytes: Int64,
        cpuSecondsPerHour: Double = 3600, commandsAllow: [PatternRule] = [], commandsDeny: [PatternRule] = [],
        envAllow: [PatternRule] = [], maxAttempts: Int = 3, crashLoopMax: Int = 5, crashLoopWindowSeconds: Double = 60,
        crashBackoffMaxSeconds: Double = 300, diskMaxBytes: Int64 = ByteSize.gibibyte, inodesMax: Int = 100_000,
        interactiveTimeoutMaxSeconds: Double = 600,
        fileMaxBytes: Int64 = 64 * ByteSize.mebibyte
    ) {
        self.interactiveTimeoutMaxSeconds = interactiveTimeoutMaxSeconds
        self.fileMaxBytes = fileMaxBytes
        self.diskMaxBytes = diskMaxBytes
        self.inodesMax = inodesMax
        self.maxAttempts = maxAttempts
        self.crashLoopMax = crashLoopMax
        self.crashLoopWindowSeconds = crashLoopWindowSeconds
        self.crashBackoffMaxSeconds = crashBackoffMaxSeconds
        self.maxConcurrentRuns = maxConcurrentRuns
        self.jobsPerMinute = jobsPerMinute
        self.maxQueued = maxQueued
        self.memoryMaxBytes = memoryMaxBytes
        self.pidsMax = pidsMax
        self.cpuMaxCores = cpuMaxCores
        self.cpuWeight = cpuWeight
        self.timeoutDefaultSeconds = timeoutDefaultSeconds
        self.timeoutMaxSeconds = timeoutMaxSeconds
        self.outputMaxBytes = outputMaxBytes
        self.network = network
        self.seccompProfile = seccompProfile
        self.tmpSizeBytes = tmpSizeBytes
        self.cpuSecondsPerHour = cpuSecondsPerHour
        self.commandsAllow = commandsAllow
        self.commandsDeny = commandsDeny
        self.envAllow = envAllow
    }

    /// `decideTool` with these limits.
    public func decideTool(
        argv: [String], env: [(name: String, value: String)], cwd: String, isExecutable: (String) -> Bool
    ) -> ToolDecision {
        ClawpenPolicy.decideTool(argv: argv, env: env, cwd: cwd, limits: self, isExecutable: isExecutable)
    }

    /// The cgroup v2 `cpu.max` line: "<quota> <period>" in microseconds, period 100000
    /// (0.5 cores -> "50000 100000").
    public var cpuMaxCgroupString: String {
        "\(Int64((cpuMaxCores * 100_000).rounded())) 100000"
    }

    /// The policy-file key names, in the order the tier files list them.
    public static let keys: [String] = LimitKey.allCases.map(\.rawValue)
    /// The keys a tier file must set (the crash-loop keys may be left out).
    public static let requiredKeys: [String] = LimitKey.allCases.filter { !$0.isOptionalInTierFile }.map(\.rawValue)

    /// The compiled-in defaults of `tier` (identical to the shipped `policies/tiers/*.toml`,
    /// down to the line of every list entry: `PolicyTests.testShippedPoliciesEqualEmbedded`).
    public static func defaults(for tier: Tier) -> TierLimits {
        var l = shippedLimits(for: tier)
        l.jobRetentionDays = defaultRetentionDays(tier)
        return l
    }

    /// `job_retention_days` of the shipped tiers: free 7, pro 30, enterprise 90.
    public static func defaultRetentionDays(_ tier: Tier) -> Int {
        switch tier {
        case .free: return 7
        case .pro: return 30
        case .enterprise: return 90
        }
    }

    private static func shippedLimits(for tier: Tier) -> TierLimits {
        var limits = shippedDefaults(for: tier)
        // Sub-job trees: the same shape for every tier, a budget that grows with it.
        switch tier {
        case .free: (limits.treeCPUSeconds, limits.treeTimeoutSeconds) = (60, 300)
        case .pro: (limits.treeCPUSeconds, limits.treeTimeoutSeconds) = (600, 1800)
        case .enterprise: (limits.treeCPUSeconds, limits.treeTimeoutSeconds) = (3600, 7200)
        }
        // Agent socket connections: about 32 per job the tier may run at once.
        limits.agentMaxConnections = [.free: 64, .pro: 256, .enterprise: 1024][tier]!
        // Finished job records kept per tenant: the disk every tenant's store shares.
        limits.jobRecordsMaxBytes = [.free: 256 * ByteSize.mebibyte, .pro: 4 * ByteSize.gibibyte, .enterprise: 32 * ByteSize.gibibyte][tier]!
        // Queued jobs' stdin in the supervisor's memory.
        limits.maxQueuedBytes = [.free: 64, .pro: 256, .enterprise: 1024][tier]! * 1024 * 1024
        return limits
    }

    private static func shippedDefaults(for tier: Tier) -> TierLimits {
        let file = "tiers/\(tier.rawValue).toml"
        switch tier {
        case .free:
            return TierLimits(
                maxConcurrentRuns: 2, jobsPerMinute: 600, maxQueued: 1000, memoryMaxBytes: 256 * ByteSize.mebibyte,
                pidsMax: 64, cpuMaxCores: 0.5, cpuWeight: 1, timeoutDefaultSeconds: 30, timeoutMaxSeconds: 300,
                outputMaxBytes: 1024 * 1024, network: "none", seccompProfile: "default",
                tmpSizeBytes: 64 * ByteSize.mebibyte, cpuSecondsPerHour: 900,
                commandsAllow: rules(file, firstLine: 79, [["/usr/bin/*"], ["/bin/*"], ["/home/**"]]),
                commandsDeny: rules(file, firstLine: 88, DefaultLists.deny),
                envAllow: rules(
                    file, firstLine: 113,
                    [
                        ["LANG", "LANGUAGE", "LC_*", "TZ"], ["TERM", "COLUMNS", "LINES", "NO_COLOR"],
                        ["PYTHONUNBUFFERED", "PYTHONIOENCODING", "PYTHONDONTWRITEBYTECODE"], ["AGENT_*"],
                    ]),
                diskMaxBytes: ByteSize.gibibyte, inodesMax: 100_000, interactiveTimeoutMaxSeconds: 600, fileMaxBytes: 64 * ByteSize.mebibyte)
        case .pro:
            return TierLimits(
                maxConcurrentRuns: 8, jobsPerMinute: 6000, maxQueued: 1000, memoryMaxBytes: ByteSize.gibibyte,
                pidsMax: 256, cpuMaxCores: 1, cpuWeight: 4, timeoutDefaultSeconds: 30, timeoutMaxSeconds: 300,
                outputMaxBytes: 1024 * 1024, network: "egress", seccompProfile: "default",
                tmpSizeBytes: 64 * ByteSize.mebibyte, cpuSecondsPerHour: 3600,
                commandsAllow: rules(
                    file, firstLine: 79, [["/usr/bin/*"], ["/bin/*"], ["/usr/local/bin/*"], ["/home/**"], ["/tmp/**"]]),
                commandsDeny: rules(file, firstLine: 90, DefaultLists.deny),
                envAllow: rules(
                    file, firstLine: 114,
                    [
                        ["LANG", "LANGUAGE", "LC_*", "TZ"], ["TERM", "COLUMNS", "LINES", "NO_COLOR"],
                        ["PYTHON*", "NODE_*", "NPM_CONFIG_*", "PIP_*", "GIT_*"], ["CI", "DEBUG"], ["AGENT_*"],
                    ]),
                diskMaxBytes: 10 * ByteSize.gibibyte, inodesMax: 1_000_000, interactiveTimeoutMaxSeconds: 3600, fileMaxBytes: ByteSize.gibibyte)
        case .enterprise:
            return TierLimits(
                maxConcurrentRuns: 32, jobsPerMinute: 60000, maxQueued: 1000, memoryMaxBytes: 4 * ByteSize.gibibyte,
                pidsMax: 1024, cpuMaxCores: 2, cpuWeight: 16, timeoutDefaultSeconds: 30, timeoutMaxSeconds: 300,
                outputMaxBytes: 1024 * 1024, network: "egress", seccompProfile: "default",
                tmpSizeBytes: 64 * ByteSize.mebibyte, cpuSecondsPerHour: 7200,
                commandsAllow: rules(
                    file, firstLine: 79,
                    [
                        ["/usr/bin/*"], ["/bin/*"], ["/usr/local/bin/*"], ["/usr/lib/**"], ["/usr/libexec/**"],
                        ["/home/**"], ["/tmp/**"],
                    ]),
                commandsDeny: rules(
                    file, firstLine: 92,
                    DefaultLists.deny + [
                        [], // comment line
                        ["/usr/lib/openssh/ssh-keysign", "/usr/lib/dbus-1.0/dbus-daemon-launch-helper"],
                        ["/usr/lib/polkit-1/*", "/usr/libexec/polkit-*", "/usr/lib/eject/dmcrypt-get-device"],
                    ]),
                envAllow: rules(file, firstLine: 119, [["*"]]),
                diskMaxBytes: 100 * ByteSize.gibibyte, inodesMax: 10_000_000, interactiveTimeoutMaxSeconds: 14400, fileMaxBytes: 4 * ByteSize.gibibyte)
        }
    }

    /// List entries written `rows[i]` on line `firstLine + i` of `file`.
    private static func rules(_ file: String, firstLine: Int, _ rows: [[String]]) -> [PatternRule] {
        rows.enumerated().flatMap { i, row in row.map { PatternRule($0, file: file, line: firstLine + i) } }
    }
}

/// The commands every shipped tier denies, one line per name (the /usr/bin and /bin forms).
private enum DefaultLists {
    static let deny: [[String]] = [
        "su", "sudo", "sudoedit", "pkexec", "passwd", "chsh", "chfn", "newgrp", "gpasswd", "mount", "umount",
        "fusermount", "fusermount3", "nsenter", "unshare", "chroot", "newuidmap", "newgidmap",
    ].map { ["/usr/bin/\($0)", "/bin/\($0)"] }
}

/// `tenants/<name>.toml`: any subset of the tier keys, plus optionally `tier = "pro"`.
/// A nil property keeps the tier's value.
public struct TenantOverride: Sendable, Equatable {
    /// When set, the tenant gets this tier's limits whatever tier it was created with.
    public var tier: Tier?
    public var maxConcurrentRuns: Int?
    public var jobsPerMinute: Int?
    public var maxQueued: Int?
    public var memoryMaxBytes: Int64?
    public var pidsMax: Int?
    public var cpuMaxCores: Double?
    public var cpuWeight: Int?
    public var timeoutDefaultSeconds: Double?
    public var timeoutMaxSeconds: Double?
    public var outputMaxBytes: Int?
    public var network: String?
    public var seccompProfile: String?
    public var tmpSizeBytes: Int64?
    public var cpuSecondsPerHour: Double?
    /// A list replaces the tier's list as a whole (an override cannot add one entry).
    public var commandsAllow: [PatternRule]?
    public var commandsDeny: [PatternRule]?
    public var envAllow: [PatternRule]?
    public var maxAttempts: Int?
    public var crashLoopMax: Int?
    public var crashLoopWindowSeconds: Double?
    public var crashBackoffMaxSeconds: Double?
    public var diskMaxBytes: Int64?
    public var inodesMax: Int?
    public var interactiveTimeoutMaxSeconds: Double?
    public var fileMaxBytes: Int64?
    public var egressMaxConnections: Int?
    public var agentMaxConnections: Int?
    public var jobRecordsMaxBytes: Int64?
    public var maxQueuedBytes: Int?
    public var jobRetentionDays: Int?
    public var maxDepth: Int?
    public var treeMaxJobs: Int?
    public var treeCPUSeconds: Double?
    public var treeTimeoutSeconds: Double?
    /// `[egress]` and `[secrets.*]` replace the tier's as a whole.
    public var egressAllow: [EgressRule]?
    public var secrets: [SecretBinding]?

    public init(
        tier: Tier? = nil, maxConcurrentRuns: Int? = nil, jobsPerMinute: Int? = nil, maxQueued: Int? = nil,
        memoryMaxBytes: Int64? = nil, pidsMax: Int? = nil, cpuMaxCores: Double? = nil, cpuWeight: Int? = nil,
        timeoutDefaultSeconds: Double? = nil, timeoutMaxSeconds: Double? = nil, outputMaxBytes: Int? = nil,
        network: String? = nil, seccompProfile: String? = nil, tmpSizeBytes: Int64? = nil,
        cpuSecondsPerHour: Double? = nil, commandsAllow: [PatternRule]? = nil, commandsDeny: [PatternRule]? = nil,
        envAllow: [PatternRule]? = nil
    ) {
        self.tier = tier
        self.maxConcurrentRuns = maxConcurrentRuns
        self.jobsPerMinute = jobsPerMinute
        self.maxQueued = maxQueued
        self.memoryMaxBytes = memoryMaxBytes
        self.pidsMax = pidsMax
        self.cpuMaxCores = cpuMaxCores
        self.cpuWeight = cpuWeight
        self.timeoutDefaultSeconds = timeoutDefaultSeconds
        self.timeoutMaxSeconds = timeoutMaxSeconds
        self.outputMaxBytes = outputMaxBytes
        self.network = network
        self.seccompProfile = seccompProfile
        self.tmpSizeBytes = tmpSizeBytes
        self.cpuSecondsPerHour = cpuSecondsPerHour
        self.commandsAllow = commandsAllow
        self.commandsDeny = commandsDeny
        self.envAllow = envAllow
    }

    mutating func setList(_ key: LimitKey, _ rules: [PatternRule]) {
        switch key {
        case .commandsAllow: commandsAllow = rules
        case .commandsDeny: commandsDeny = rules
        default: envAllow = rules
        }
    }

    /// This override with every value `other` sets replaced (the quota file over tenants/<name>.toml).
    public func merged(with other: TenantOverride) -> TenantOverride {
        var o = self
        if let v = other.tier { o.tier = v }
        if let v = other.maxConcurrentRuns { o.maxConcurrentRuns = v }
        if let v = other.jobsPerMinute { o.jobsPerMinute = v }
        if let v = other.maxQueued { o.maxQueued = v }
        if let v = other.memoryMaxBytes { o.memoryMaxBytes = v }
        if let v = other.pidsMax { o.pidsMax = v }
        if let v = other.cpuMaxCores { o.cpuMaxCores = v }
        if let v = other.cpuWeight { o.cpuWeight = v }
        if let v = other.timeoutDefaultSeconds { o.timeoutDefaultSeconds = v }
        if let v = other.timeoutMaxSeconds { o.timeoutMaxSeconds = v }
        if let v = other.outputMaxBytes { o.outputMaxBytes = v }
        if let v = other.network { o.network = v }
        if let v = other.seccompProfile { o.seccompProfile = v }
        if let v = other.tmpSizeBytes { o.tmpSizeBytes = v }
        if let v = other.cpuSecondsPerHour { o.cpuSecondsPerHour = v }
        if let v = other.commandsAllow { o.commandsAllow = v }
        if let v = other.commandsDeny { o.commandsDeny = v }
        if let v = other.envAllow { o.envAllow = v }
        if let v = other.maxAttempts { o.maxAttempts = v }
        if let v = other.crashLoopMax { o.crashLoopMax = v }
        if let v = other.crashLoopWindowSeconds { o.crashLoopWindowSeconds = v }
        if let v = other.crashBackoffMaxSeconds { o.crashBackoffMaxSeconds = v }
        if let v = other.diskMaxBytes { o.diskMaxBytes = v }
        if let v = other.inodesMax { o.inodesMax = v }
        if let v = other.interactiveTimeoutMaxSeconds { o.interactiveTimeoutMaxSeconds = v }
        if let v = other.fileMaxBytes { o.fileMaxBytes = v }
        if let v = other.egressMaxConnections { o.egressMaxConnections = v }
        if let v = other.agentMaxConnections { o.agentMaxConnections = v }
        if let v = other.jobRecordsMaxBytes { o.jobRecordsMaxBytes = v }
        if let v = other.maxQueuedBytes { o.maxQueuedBytes = v }
        if let v = other.jobRetentionDays { o.jobRetentionDays = v }
        if let v = other.maxDepth { o.maxDepth = v }
        if let v = other.treeMaxJobs { o.treeMaxJobs = v }
        if let v = other.treeCPUSeconds { o.treeCPUSeconds = v }
        if let v = other.treeTimeoutSeconds { o.treeTimeoutSeconds = v }
        if let v = other.egressAllow { o.egressAllow = v }
        if let v = other.secrets { o.secrets = v }
        return o
    }

    /// `base` with every value this override sets replaced.
    public func applied(to base: TierLimits) -> TierLimits {
        var l = base
        if let v = maxConcurrentRuns { l.maxConcurrentRuns = v }
        if let v = jobsPerMinute { l.jobsPerMinute = v }
        if let v = maxQueued { l.maxQueued = v }
        if let v = memoryMaxBytes { l.memoryMaxBytes = v }
        if let v = pidsMax { l.pidsMax = v }
        if let v = cpuMaxCores { l.cpuMaxCores = v }
        if let v = cpuWeight { l.cpuWeight = v }
        if let v = timeoutDefaultSeconds { l.timeoutDefaultSeconds = v }
        if let v = timeoutMaxSeconds { l.timeoutMaxSeconds = v }
        if let v = outputMaxBytes { l.outputMaxBytes = v }
        if let v = network { l.network = v }
        if let v = seccompProfile { l.seccompProfile = v }
        if let v = tmpSizeBytes { l.tmpSizeBytes = v }
        if let v = cpuSecondsPerHour { l.cpuSecondsPerHour = v }
        if let v = commandsAllow { l.commandsAllow = v }
        if let v = commandsDeny { l.commandsDeny = v }
        if let v = envAllow { l.envAllow = v }
        if let v = maxAttempts { l.maxAttempts = v }
        if let v = crashLoopMax { l.crashLoopMax = v }
        if let v = crashLoopWindowSeconds { l.crashLoopWindowSeconds = v }
        if let v = crashBackoffMaxSeconds { l.crashBackoffMaxSeconds = v }
        if let v = diskMaxBytes { l.diskMaxBytes = v }
        if let v = inodesMax { l.inodesMax = v }
        if let v = interactiveTimeoutMaxSeconds { l.interactiveTimeoutMaxSeconds = v }
        if let v = fileMaxBytes { l.fileMaxBytes = v }
        if let v = egressMaxConnections { l.egressMaxConnections = v }
        if let v = agentMaxConnections { l.agentMaxConnections = v }
        if let v = jobRecordsMaxBytes { l.jobRecordsMaxBytes = v }
        if let v = maxQueuedBytes { l.maxQueuedBytes = v }
        if let v = jobRetentionDays { l.jobRetentionDays = v }
        if let v = maxDepth { l.maxDepth = v }
        if let v = treeMaxJobs { l.treeMaxJobs = v }
        if let v = treeCPUSeconds { l.treeCPUSeconds = v }
        if let v = treeTimeoutSeconds { l.treeTimeoutSeconds = v }
        if let v = egressAllow { l.egressAllow = v }
        if let v = secrets { l.secrets = v }
        return l
    }

    /// The crash-loop keys came later than the others: a tier file written before them still
    /// loads, with the shipped values of its tier.
    func withCrashLoopDefaults(of tier: Tier) -> TenantOverride {
        let d = TierLimits.defaults(for: tier)
        var o = self
        o.maxAttempts = maxAttempts ?? d.maxAttempts
        o.crashLoopMax = crashLoopMax ?? d.crashLoopMax
        o.crashLoopWindowSeconds = crashLoopWindowSeconds ?? d.crashLoopWindowSeconds
        o.crashBackoffMaxSeconds = crashBackoffMaxSeconds ?? d.crashBackoffMaxSeconds
        o.diskMaxBytes = diskMaxBytes ?? d.diskMaxBytes
        o.inodesMax = inodesMax ?? d.inodesMax
        o.interactiveTimeoutMaxSeconds = interactiveTimeoutMaxSeconds ?? d.interactiveTimeoutMaxSeconds
        o.fileMaxBytes = fileMaxBytes ?? d.fileMaxBytes
        o.egressMaxConnections = egressMaxConnections ?? d.egressMaxConnections
        o.agentMaxConnections = agentMaxConnections ?? d.agentMaxConnections
        o.jobRecordsMaxBytes = jobRecordsMaxBytes ?? d.jobRecordsMaxBytes
        o.maxQueuedBytes = maxQueuedBytes ?? d.maxQueuedBytes
        o.jobRetentionDays = jobRetentionDays ?? d.jobRetentionDays
        o.maxDepth = maxDepth ?? d.maxDepth
        o.treeMaxJobs = treeMaxJobs ?? d.treeMaxJobs
        o.treeCPUSeconds = treeCPUSeconds ?? d.treeCPUSeconds
        o.treeTimeoutSeconds = treeTimeoutSeconds ?? d.treeTimeoutSeconds
        return o
    }

    /// All the limits, when every one is set (a complete tier file).
    var complete: TierLimits? {
        guard let maxConcurrentRuns, let jobsPerMinute, let maxQueued, let memoryMaxBytes, let pidsMax,
            let cpuMaxCores, let cpuWeight, let timeoutDefaultSeconds, let timeoutMaxSeconds, let outputMaxBytes,
            let network, let seccompProfile, let tmpSizeBytes, let cpuSecondsPerHour, let commandsAllow,
            let commandsDeny, let envAllow, let maxAttempts, let crashLoopMax, let crashLoopWindowSeconds,
            let crashBackoffMaxSeconds, let diskMaxBytes, let inodesMax, let interactiveTimeoutMaxSeconds, let fileMaxBytes
        else { return nil }
        var limits = TierLimits(
            maxConcurrentRuns: maxConcurrentRuns, jobsPerMinute: jobsPerMinute, maxQueued: maxQueued,
            memoryMaxBytes: memoryMaxBytes, pidsMax: pidsMax, cpuMaxCores: cpuMaxCores, cpuWeight: cpuWeight,
            timeoutDefaultSeconds: timeoutDefaultSeconds, timeoutMaxSeconds: timeoutMaxSeconds,
            outputMaxBytes: outputMaxBytes, network: network, seccompProfile: seccompProfile,
            tmpSizeBytes: tmpSizeBytes, cpuSecondsPerHour: cpuSecondsPerHour, commandsAllow: commandsAllow,
            commandsDeny: commandsDeny, envAllow: envAllow, maxAttempts: maxAttempts, crashLoopMax: crashLoopMax,
            crashLoopWindowSeconds: crashLoopWindowSeconds, crashBackoffMaxSeconds: crashBackoffMaxSeconds,
            diskMaxBytes: diskMaxBytes, inodesMax: inodesMax, interactiveTimeoutMaxSeconds: interactiveTimeoutMaxSeconds,
            fileMaxBytes: fileMaxBytes)
        limits.egressMaxConnections = egressMaxConnections ?? TierLimits.defaultEgressMaxConnections
        limits.agentMaxConnections = agentMaxConnections ?? TierLimits.defaultAgentMaxConnections
        limits.jobRecordsMaxBytes = jobRecordsMaxBytes ?? TierLimits.defaultJobRecordsMaxBytes
        limits.maxQueuedBytes = maxQueuedBytes ?? TierLimits.defaultMaxQueuedBytes
        limits.egressAllow = egressAllow ?? []
        limits.secrets = secrets ?? []
        if let jobRetentionDays { limits.jobRetentionDays = jobRetentionDays }
        if let maxDepth { limits.maxDepth = maxDepth }
        if let treeMaxJobs { limits.treeMaxJobs = treeMaxJobs }
        if let treeCPUSeconds { limits.treeCPUSeconds = treeCPUSeconds }
        if let treeTimeoutSeconds { limits.treeTimeoutSeconds = treeTimeoutSeconds }
        return limits
    }
}

/// A loaded, validated policy set.
public struct PolicySet: Sendable, Equatable {
    public enum Source: Sendable, Equatable {
        /// Loaded from this directory.
        case directory(String)
        /// The compiled-in defaults (`PolicyLoader.embedded`).
        case embedded
    }

    public let source: Source
    public let free: TierLimits
    public let pro: TierLimits
    public let enterprise: TierLimits
    /// By tenant name (the file name without `.toml`).
    public let tenantOverrides: [String: TenantOverride]
    /// `<state-dir>/quota/<tenant>.toml`, written by `clawpen tenant set-quota`: applied on top
    /// of `tenantOverrides`.
    public let quotaOverrides: [String: TenantOverride]
    /// The quota directory the set was loaded with (nil: none).
    public let quotaDirectory: String?
    /// Who may submit for which tenant, and who is an operator (`access.toml`).
    public let access: AccessPolicy
    /// `seccomp/*.toml` by profile name (the embedded profiles when the directory has no seccomp/).
    public let seccompProfiles: [String: SeccompProfile]
    /// For `provenance`: per file ("tiers/free.toml", "tenants/acme.toml", "quota/acme.toml"),
    /// the line of every key it sets.
    let keyLines: [String: [String: Int]]

    public init(
        source: Source, free: TierLimits, pro: TierLimits, enterprise: TierLimits,
        tenantOverrides: [String: TenantOverride] = [:], quotaOverrides: [String: TenantOverride] = [:],
        quotaDirectory: String? = nil, access: AccessPolicy = .rootOnly,
        seccompProfiles: [String: SeccompProfile] = SeccompProfiles.embedded
    ) {
        self.init(
            source: source, free: free, pro: pro, enterprise: enterprise, tenantOverrides: tenantOverrides,
            quotaOverrides: quotaOverrides, quotaDirectory: quotaDirectory, access: access,
            seccompProfiles: seccompProfiles, keyLines: [:])
    }

    init(
        source: Source, free: TierLimits, pro: TierLimits, enterprise: TierLimits,
        tenantOverrides: [String: TenantOverride], quotaOverrides: [String: TenantOverride],
        quotaDirectory: String?, access: AccessPolicy, seccompProfiles: [String: SeccompProfile],
        keyLines: [String: [String: Int]]
    ) {
        self.source = source
        self.free = free
        self.pro = pro
        self.enterprise = enterprise
        self.tenantOverrides = tenantOverrides
        self.quotaOverrides = quotaOverrides
        self.quotaDirectory = quotaDirectory
        self.access = access
        self.seccompProfiles = seccompProfiles
        self.keyLines = keyLines
    }

    /// Every tier's limits (always all three).
    public var tiers: [Tier: TierLimits] {
        [.free: free, .pro: pro, .enterprise: enterprise]
    }

    public func limits(for tier: Tier) -> TierLimits {
        switch tier {
        case .free: free
        case .pro: pro
        case .enterprise: enterprise
        }
    }

    /// The override of `tenant`: tenants/<tenant>.toml with quota/<tenant>.toml on top (nil: neither).
    public func override(tenant: String) -> TenantOverride? {
        switch (tenantOverrides[tenant], quotaOverrides[tenant]) {
        case (nil, nil): nil
        case (let t?, nil): t
        case (nil, let q?): q
        case (let t?, let q?): t.merged(with: q)
        }
    }

    /// The tier whose limits apply to `tenant`: the `tier` its quota file or its override sets
    /// (in that order), else `assigned` (the tier the tenant was created with).
    public func effectiveTier(tenant: String, assigned: Tier) -> Tier {
        override(tenant: tenant)?.tier ?? assigned
    }

    /// The limits of `tenant`: those of its effective tier (see `effectiveTier`), then
    /// tenants/<tenant>.toml, then quota/<tenant>.toml.
    public func limits(tenant: String, tier: Tier) -> TierLimits {
        guard let override = override(tenant: tenant) else { return limits(for: tier) }
        return override.applied(to: limits(for: override.tier ?? tier))
    }

    /// Where each value of `tenant`'s limits comes from, by key (every key of `TierLimits.keys`,
    /// plus "tier"): "quota/acme.toml:2 (set-quota)", "tenants/acme.toml:3", "tiers/free.toml:23",
    /// or "embedded default" (tier values when the policies directory does not exist).
    public func provenance(tenant: String, tier: Tier) -> [String: String] {
        let quotaFile = "quota/\(tenant).toml", tenantFile = "tenants/\(tenant).toml"
        let effective = effectiveTier(tenant: tenant, assigned: tier)
        let tierFile = "tiers/\(effective.rawValue).toml"
        var out: [String: String] = [:]
        for key in TierLimits.keys + ["tier"] {
            if quotaOverrides[tenant] != nil, let line = keyLines[quotaFile]?[key] {
                out[key] = "\(quotaFile):\(line) (set-quota)"
            } else if tenantOverrides[tenant] != nil, let line = keyLines[tenantFile]?[key] {
                out[key] = "\(tenantFile):\(line)"
            } else if key == "tier" {
                out[key] = "assigned when the tenant was created"
            } else if case .embedded = source {
                out[key] = "embedded default"
            } else if let line = keyLines[tierFile]?[key] {
                out[key] = "\(tierFile):\(line)"
            } else {
                out[key] = tierFile
            }
        }
        return out
    }
}

extension PolicySet {
    /// The limits of a tenant (see `limits(tenant:tier:)`).
    public func limits(_ tenant: TenantName, tier: Tier) -> TierLimits { limits(tenant: tenant.value, tier: tier) }
    public func effectiveTier(_ tenant: TenantName, assigned: Tier) -> Tier { effectiveTier(tenant: tenant.value, assigned: assigned) }
    public func provenance(_ tenant: TenantName, tier: Tier) -> [String: String] { provenance(tenant: tenant.value, tier: tier) }
}
