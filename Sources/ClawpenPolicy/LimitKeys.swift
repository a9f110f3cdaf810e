import ClawpenTOML

/// The keys of a tier file, in file order, with their types and the ranges that make sense.
enum LimitKey: String, CaseIterable, Sendable {
    case maxConcurrentRuns = "max_concurrent_runs"
    case jobsPerMinute = "jobs_per_minute"
    case maxQueued = "max_queued"
    case memoryMax = "memory_max"
    case pidsMax = "pids_max"
    case cpuMax = "cpu_max"
    case cpuWeight = "cpu_weight"
    case cpuSecondsPerHour = "cpu_seconds_per_hour"
    case timeoutDefault = "timeout_default_s"
    case timeoutMax = "timeout_max_s"
    case outputMaxBytes = "output_max_bytes"
    case network = "network"
    case seccompProfile = "seccomp_profile"
    case tmpSize = "tmp_size"
    case commandsAllow = "commands_allow"
    case commandsDeny = "commands_deny"
    case envAllow = "env_allow"
    case maxAttempts = "max_attempts"
    case crashLoopMax = "crash_loop_max"
    case crashLoopWindow = "crash_loop_window_s"
    case crashBackoffMax = "crash_backoff_max_s"
    case diskMax = "disk_max"
    case inodesMax = "inodes_max"
    case interactiveTimeoutMax = "interactive_timeout_max_s"
    case fileMaxBytes = "file_max_bytes"
    case egressMaxConnections = "egress_max_connections"
    case jobRetentionDays = "job_retention_days"
    case maxDepth = "max_depth"
    case treeMaxJobs = "tree_max_jobs"
    case treeCPUSeconds = "tree_cpu_seconds"
    case treeTimeout = "tree_timeout_s"
    case agentMaxConnections = "agent_max_connections"
    case jobRecordsMax = "job_records_max"
    case maxQueuedBytes = "max_queued_bytes"

    static let networkModes = ["none", "loopback", "egress"]
    /// The longest timeout a policy may allow: one day.
    static let maxTimeoutSeconds: Double = 86_400

    /// Keys a tier file may leave out (they came later): the tier's shipped value applies.
    var isOptionalInTierFile: Bool {
        self == .maxAttempts || self == .crashLoopMax || self == .crashLoopWindow || self == .crashBackoffMax
            || self == .diskMax || self == .inodesMax || self == .interactiveTimeoutMax || self == .fileMaxBytes
            || self == .egressMaxConnections || self == .agentMaxConnections || self == .jobRecordsMax
            || self == .maxQueuedBytes
            || self == .jobRetentionDays
            || self == .maxDepth || self == .treeMaxJobs || self == .treeCPUSeconds || self == .treeTimeout
    }

    /// The keys whose value is a list that an override replaces as a whole.
    var isList: Bool { self == .commandsAllow || self == .commandsDeny || self == .envAllow }

    /// Checks `value` and stores it in the matching property of `target`. `file` is the path
    /// error messages name; `origin` the name list entries keep ("tiers/free.toml"), and
    /// `elementLines` the line of each array element.
    func decode(
        _ value: TOMLValue, file: String, line: Int, origin: String? = nil, elementLines: [Int] = [],
        into target: inout TenantOverride
    ) throws(PolicyError) {
        let c = Context(key: rawValue, file: file, line: line, value: value, origin: origin ?? file, elementLines: elementLines)
        switch self {
        case .maxConcurrentRuns:
            target.maxConcurrentRuns = try c.integer(
                1...4096, note: "jobs of one tenant that may run at the same time")
        case .jobsPerMinute:
            target.jobsPerMinute = try c.integer(1...100_000_000, note: "jobs one tenant may submit per minute")
        case .maxQueued:
            target.maxQueued = try c.integer(1...10_000_000, note: "jobs of one tenant that may wait in the queue")
        case .memoryMax:
            target.memoryMaxBytes = try c.size(minimum: ByteSize.mebibyte, maximum: Int64.max)
        case .pidsMax:
            target.pidsMax = try c.integer(1...4_194_304, note: "processes and threads of one tenant")
        case .cpuMax:
            target.cpuMaxCores = try c.number(
                above: 0, minimum: 0.01, maximum: 4096, unit: "cores",
                note: "CPU cores, e.g. 0.5 for half a core; cgroup cpu.max needs at least 0.01")
        case .cpuWeight:
            target.cpuWeight = try c.integer(1...10_000, note: "cgroup cpu.weight accepts 1 to 10000")
        case .timeoutDefault:
            target.timeoutDefaultSeconds = try c.number(
                above: 0, minimum: nil, maximum: Self.maxTimeoutSeconds, unit: "s", note: "seconds")
        case .timeoutMax:
            target.timeoutMaxSeconds = try c.number(
                above: 0, minimum: nil, maximum: Self.maxTimeoutSeconds, unit: "s", note: "seconds; at most one day")
        case .outputMaxBytes:
            target.outputMaxBytes = Int(try c.size(minimum: 1, maximum: 64 * ByteSize.mebibyte))
        case .network:
            let s = try c.string()
            guard Self.networkModes.contains(s) else {
                throw c.invalid(
                    "\(quoted(s)) is not a network mode (use \"none\": own network namespace, no interface up; \"loopback\": only lo, up; or \"egress\": lo and the tenant's egress proxy, [egress] allow)"
                )
            }
            target.network = s
        case .seccompProfile:
            let s = try c.string()
            guard PolicyLoader.isValidTenantName(s) else {
                throw c.invalid(
                    "\(quoted(s)) is not a profile name (the name of seccomp/<name>.toml: lowercase letters, digits, '_' and '-', e.g. \"default\")")
            }
            target.seccompProfile = s
        case .tmpSize:
            target.tmpSizeBytes = try c.size(minimum: ByteSize.mebibyte, maximum: Int64.max)
        case .cpuSecondsPerHour:
            target.cpuSecondsPerHour = try c.number(
                above: 0, minimum: nil, maximum: 4096 * 3600, unit: "s",
                note: "CPU seconds the tenant's processes together may use in any sliding hour; 3600 is one core all the time")
        case .commandsAllow, .commandsDeny:
            target.setList(self, try c.patterns(kind: "absolute paths or globs", check: PatternCheck.commandProblem))
        case .envAllow:
            target.envAllow = try c.patterns(kind: "environment variable names or globs", check: PatternCheck.envProblem)
        case .maxAttempts:
            target.maxAttempts = try c.integer(1...100, note: "attempts of a job whose worker dies while running it")
        case .crashLoopMax:
            target.crashLoopMax = try c.integer(1...10_000, note: "worker failures within crash_loop_window_s that quarantine the tenant")
        case .crashLoopWindow:
            target.crashLoopWindowSeconds = try c.number(
                above: 0, minimum: nil, maximum: Self.maxTimeoutSeconds, unit: "s", note: "seconds; at most one day")
        case .crashBackoffMax:
            target.crashBackoffMaxSeconds = try c.number(
                above: 0, minimum: 0.1, maximum: Self.maxTimeoutSeconds, unit: "s", note: "seconds; at most one day")
        case .diskMax:
            target.diskMaxBytes = try c.size(minimum: ByteSize.mebibyte, maximum: Int64(1) << 60)
        case .inodesMax:
            target.inodesMax = try c.integer(16...(1 << 40), note: "files and directories in the tenant's workspace")
        case .interactiveTimeoutMax:
            target.interactiveTimeoutMaxSeconds = try c.number(
                above: 0, minimum: nil, maximum: Self.maxTimeoutSeconds, unit: "s",
                note: "seconds a job with open stdin or a terminal may run; at most one day")
        case .fileMaxBytes:
            // At most the worker's RLIMIT_FSIZE (4 GiB, Plan.maxFileBytes): a put can never
            // reach the rlimit, so the worker never gets SIGXFSZ.
            target.fileMaxBytes = try c.size(minimum: 1, maximum: 4 * ByteSize.gibibyte)
        case .egressMaxConnections:
            target.egressMaxConnections = try c.integer(
                1...65_536, note: "connections one tenant's jobs may hold open through the egress proxy at the same time")
        case .maxQueuedBytes:
            target.maxQueuedBytes = Int(try c.size(minimum: ByteSize.mebibyte, maximum: 1 << 40))
        case .jobRecordsMax:
            target.jobRecordsMaxBytes = try c.size(minimum: ByteSize.mebibyte, maximum: 1 << 50)
        case .agentMaxConnections:
            target.agentMaxConnections = try c.integer(
                1...65_536, note: "connections one tenant's jobs may hold open to its agent socket at the same time")
        case .jobRetentionDays:
            target.jobRetentionDays = try c.integer(1...36_500, note: "days a finished job's record is kept before the purge removes it")
        case .maxDepth:
            target.maxDepth = try c.integer(0...64, note: "levels of sub-jobs below a job submitted from outside; 0: jobs may not submit")
        case .treeMaxJobs:
            target.treeMaxJobs = try c.integer(1...100_000, note: "jobs of one tree (the root and every sub-job it leads to)")
        case .treeCPUSeconds:
            target.treeCPUSeconds = try c.number(
                above: 0, minimum: nil, maximum: 4096 * 86_400, unit: "s", note: "CPU seconds one job tree may use in all")
        case .treeTimeout:
            target.treeTimeoutSeconds = try c.number(
                above: 0, minimum: nil, maximum: Self.maxTimeoutSeconds, unit: "s", note: "seconds a job tree may live; at most one day")
        }
    }
}

/// One key's value being checked, with what error messages need.
private struct Context {
    let key: String
    let file: String
    let line: Int
    let value: TOMLValue
    let origin: String
    let elementLines: [Int]

    func invalid(_ reason: String) -> PolicyError {
        .invalidValue(file: file, line: line, key: key, reason: reason)
    }

    func wrongType(_ expected: String) -> PolicyError {
        .wrongType(file: file, line: line, key: key, expected: expected, found: value.shortDescription)
    }

    func integer(_ range: ClosedRange<Int>, note: String) throws(PolicyError) -> Int {
        guard case .integer(let raw) = value else {
            if case .string(let s) = value, Int(s) != nil {
                throw wrongType("an integer (write \(s) without quotes)")
            }
            throw wrongType("an integer")
        }
        guard let v = Int(exactly: raw), range.contains(v) else {
            throw invalid("must be between \(range.lowerBound) and \(range.upperBound) (\(note)), not \(raw)")
        }
        return v
    }

    /// A float or an integer; `above` is an exclusive lower bound, `minimum` an inclusive one.
    func number(above: Double, minimum: Double?, maximum: Double, unit: String, note: String) throws(PolicyError)
        -> Double
    {
        guard let d = value.numberValue else {
            throw wrongType("a number (\(note))")
        }
        guard d.isFinite else { throw invalid("must be a finite number (\(note)), not \(d)") }
        guard d > above else {
            throw invalid("must be greater than \(formatNumber(above)) \(unit) (\(note)), not \(formatNumber(d))")
        }
        if let minimum, d < minimum {
            throw invalid("must be at least \(formatNumber(minimum)) \(unit) (\(note)), not \(formatNumber(d))")
        }
        guard d <= maximum else {
            throw invalid("must be at most \(formatNumber(maximum)) \(unit) (\(note)), not \(formatNumber(d))")
        }
        return d
    }

    /// Bytes as an integer, or a size string ("256M").
    func size(minimum: Int64, maximum: Int64) throws(PolicyError) -> Int64 {
        let bytes: Int64
        let shown: String
        switch value {
        case .integer(let i):
            bytes = i
            shown = "\(i)"
        case .string(let s):
            guard let b = ByteSize.parse(s) else {
                throw invalid("\(quoted(s)) is not a size (use bytes or a number with K, M, G or T, e.g. \"256M\")")
            }
            bytes = b
            shown = quoted(s)
        default:
            throw wrongType("a size (bytes as an integer, or a string such as \"256M\")")
        }
        guard bytes >= minimum else {
            throw invalid("\(shown) is too small: the minimum is \(ByteSize.format(minimum))")
        }
        guard bytes <= maximum else {
            throw invalid("\(shown) is too large: the maximum is \(ByteSize.format(maximum))")
        }
        return bytes
    }

    /// An array of strings, each checked by `check`; each keeps its own line.
    func patterns(kind: String, check: (String) -> String?) throws(PolicyError) -> [PatternRule] {
        guard case .array(let items) = value else {
            throw wrongType("an array of strings (\(kind)), e.g. [\"/usr/bin/*\"]")
        }
        var out: [PatternRule] = []
        for (i, item) in items.enumerated() {
            let itemLine = i < elementLines.count ? elementLines[i] : line
            guard case .string(let s) = item else {
                throw PolicyError.wrongType(
                    file: file, line: itemLine, key: key, expected: "an array of strings (\(kind))",
                    found: "\(item.shortDescription) as element \(i + 1)")
            }
            if let problem = check(s) {
                throw PolicyError.invalidValue(file: file, line: itemLine, key: key, reason: problem)
            }
            out.append(PatternRule(s, file: origin, line: itemLine))
        }
        return out
    }

    func string() throws(PolicyError) -> String {
        guard case .string(let s) = value else { throw wrongType("a string") }
        return s
    }
}
