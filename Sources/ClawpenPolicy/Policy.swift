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
    /// `network`: "none" (own network namespace, no interface up) or "loopback" (`lo` up).
    public var network: String
    /// `seccomp_profile`: name of `seccomp/<name>.toml`.
    public var seccompProfile: String
    /// `tmp_size`: size limit of the sandbox's tmpfs `/tmp`.
    public var tmpSizeBytes: Int64

    public init(
        maxConcurrentRuns: Int, jobsPerMinute: Int, maxQueued: Int, memoryMaxBytes: Int64, pidsMax: Int,
        cpuMaxCores: Double, cpuWeight: Int, timeoutDefaultSeconds: Double, timeoutMaxSeconds: Double,
        outputMaxBytes: Int, network: String, seccompProfile: String, tmpSizeBytes: Int64
    ) {
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
    }

    /// The cgroup v2 `cpu.max` line: "<quota> <period>" in microseconds, period 100000
    /// (0.5 cores -> "50000 100000").
    public var cpuMaxCgroupString: String {
        "\(Int64((cpuMaxCores * 100_000).rounded())) 100000"
    }

    /// The policy-file key names, in the order the tier files list them.
    public static let keys: [String] = LimitKey.allCases.map(\.rawValue)

    /// The compiled-in defaults of `tier` (identical to the shipped `policies/tiers/*.toml`).
    public static func defaults(for tier: Tier) -> TierLimits {
        switch tier {
        case .free:
            TierLimits(
                maxConcurrentRuns: 2, jobsPerMinute: 600, maxQueued: 1000, memoryMaxBytes: 256 * ByteSize.mebibyte,
                pidsMax: 64, cpuMaxCores: 0.5, cpuWeight: 1, timeoutDefaultSeconds: 30, timeoutMaxSeconds: 300,
                outputMaxBytes: 1024 * 1024, network: "none", seccompProfile: "default",
                tmpSizeBytes: 64 * ByteSize.mebibyte)
        case .pro:
            TierLimits(
                maxConcurrentRuns: 8, jobsPerMinute: 6000, maxQueued: 1000, memoryMaxBytes: ByteSize.gibibyte,
                pidsMax: 256, cpuMaxCores: 1, cpuWeight: 4, timeoutDefaultSeconds: 30, timeoutMaxSeconds: 300,
                outputMaxBytes: 1024 * 1024, network: "none", seccompProfile: "default",
                tmpSizeBytes: 64 * ByteSize.mebibyte)
        case .enterprise:
            TierLimits(
                maxConcurrentRuns: 32, jobsPerMinute: 60000, maxQueued: 1000, memoryMaxBytes: 4 * ByteSize.gibibyte,
                pidsMax: 1024, cpuMaxCores: 2, cpuWeight: 16, timeoutDefaultSeconds: 30, timeoutMaxSeconds: 300,
                outputMaxBytes: 1024 * 1024, network: "none", seccompProfile: "default",
                tmpSizeBytes: 64 * ByteSize.mebibyte)
        }
    }
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

    public init(
        tier: Tier? = nil, maxConcurrentRuns: Int? = nil, jobsPerMinute: Int? = nil, maxQueued: Int? = nil,
        memoryMaxBytes: Int64? = nil, pidsMax: Int? = nil, cpuMaxCores: Double? = nil, cpuWeight: Int? = nil,
        timeoutDefaultSeconds: Double? = nil, timeoutMaxSeconds: Double? = nil, outputMaxBytes: Int? = nil,
        network: String? = nil, seccompProfile: String? = nil, tmpSizeBytes: Int64? = nil
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
        return l
    }

    /// All thirteen limits, when every one is set (a complete tier file).
    var complete: TierLimits? {
        guard let maxConcurrentRuns, let jobsPerMinute, let maxQueued, let memoryMaxBytes, let pidsMax,
            let cpuMaxCores, let cpuWeight, let timeoutDefaultSeconds, let timeoutMaxSeconds, let outputMaxBytes,
            let network, let seccompProfile, let tmpSizeBytes
        else { return nil }
        return TierLimits(
            maxConcurrentRuns: maxConcurrentRuns, jobsPerMinute: jobsPerMinute, maxQueued: maxQueued,
            memoryMaxBytes: memoryMaxBytes, pidsMax: pidsMax, cpuMaxCores: cpuMaxCores, cpuWeight: cpuWeight,
            timeoutDefaultSeconds: timeoutDefaultSeconds, timeoutMaxSeconds: timeoutMaxSeconds,
            outputMaxBytes: outputMaxBytes, network: network, seccompProfile: seccompProfile,
            tmpSizeBytes: tmpSizeBytes)
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

    public init(
        source: Source, free: TierLimits, pro: TierLimits, enterprise: TierLimits,
        tenantOverrides: [String: TenantOverride] = [:]
    ) {
        self.source = source
        self.free = free
        self.pro = pro
        self.enterprise = enterprise
        self.tenantOverrides = tenantOverrides
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

    /// The tier whose limits apply to `tenant`: the override's `tier` if its file sets one,
    /// else `assigned` (the tier the tenant was created with).
    public func effectiveTier(tenant: String, assigned: Tier) -> Tier {
        tenantOverrides[tenant]?.tier ?? assigned
    }

    /// The limits of `tenant`: those of its effective tier (see `effectiveTier`) with the
    /// tenant's override, if any, applied.
    public func limits(tenant: String, tier: Tier) -> TierLimits {
        guard let override = tenantOverrides[tenant] else { return limits(for: tier) }
        return override.applied(to: limits(for: override.tier ?? tier))
    }
}
