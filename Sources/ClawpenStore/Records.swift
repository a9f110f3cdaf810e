import FoundationEssentials
import ClawpenProtocol
import ClawpenWire

public struct TenantRecord: Sendable, Equatable {
    public var name: TenantName
    public var tier: String
    public var uid: Int
    public var createdAt: Double

    public init(name: TenantName, tier: String, uid: Int, createdAt: Double) {
        self.name = name; self.tier = tier; self.uid = uid; self.createdAt = createdAt
    }
}

/// A job as stored: the request, its state and, once finished, its result.
public struct JobRecord: Sendable, Equatable {
    public var id: String
    public var tenant: TenantName
    public var state: JobState
    public var argv: [String]
    public var env: [SubmitRequest.EnvVar]
    public var cwd: String
    public var stdin: [UInt8]
    public var timeoutSeconds: Double
    public var outputCap: Int
    public var idempotencyKey: String?
    public var attempt: Int
    public var createdAt: Double
    public var startedAt: Double?
    public var finishedAt: Double?
    public var result: JobResult?
    /// Streamed, stdin open, terminal: kept in memory only (a job the daemon runs again after a
    /// restart has nobody attached to it, so it runs without a terminal and with stdin closed).
    public var options = RunOptions()
    /// The trace the job belongs to (the caller's `traceparent`, or one the supervisor made).
    public var trace: TraceContext?
    /// Sub-jobs: the job that submitted this one from inside its sandbox (nil: submitted from
    /// outside, a root), the root of its tree (nil: itself), its depth below the root.
    public var parentID: String?
    public var rootID: String?
    public var depth = 0

    /// The root of the job's tree: its own id for a job submitted from outside.
    public var treeRoot: String { rootID ?? id }

    public init(
        id: String, tenant: TenantName, state: JobState, argv: [String], env: [SubmitRequest.EnvVar], cwd: String,
        stdin: [UInt8], timeoutSeconds: Double, outputCap: Int, idempotencyKey: String?, attempt: Int,
        createdAt: Double, startedAt: Double? = nil, finishedAt: Double? = nil, result: JobResult? = nil
    ) {
        self.id = id; self.tenant = tenant; self.state = state; self.argv = argv; self.env = env; self.cwd = cwd
        self.stdin = stdin; self.timeoutSeconds = timeoutSeconds; self.outputCap = outputCap
        self.idempotencyKey = idempotencyKey; self.attempt = attempt; self.createdAt = createdAt
        self.startedAt = startedAt; self.finishedAt = finishedAt; self.result = result
    }

    /// The client's view. Output bytes that are not UTF-8 become U+FFFD, and are kept exactly in
    /// `stdout_b64`/`stderr_b64`.
    public var view: JobView {
        let r = result
        var v = JobView(
            id: id, tenant: tenant.value, state: state, exitCode: r?.exitCode, signal: r?.signal,
            stdout: String(decoding: r?.stdout ?? [], as: UTF8.self), stderr: String(decoding: r?.stderr ?? [], as: UTF8.self),
            stdoutTruncated: r?.stdoutTruncated ?? false, stderrTruncated: r?.stderrTruncated ?? false,
            queuedMs: startedAt.map { ($0 - createdAt) * 1000 }, runMs: r?.runMs, cpuMs: r?.cpuMs, maxRSSKiB: r?.maxRSSKiB,
            attempt: attempt, error: r?.error, argv: argv, cwd: cwd, timeoutSeconds: timeoutSeconds,
            idempotencyKey: idempotencyKey, createdAt: createdAt, startedAt: startedAt, finishedAt: finishedAt)
        if let out = r?.stdout, String(validating: out, as: UTF8.self) == nil { v.stdoutB64 = Data(out).base64EncodedString() }
        if let err = r?.stderr, String(validating: err, as: UTF8.self) == nil { v.stderrB64 = Data(err).base64EncodedString() }
        v.stdinOpen = options.stdinOpen
        v.tty = options.tty
        v.traceID = trace?.traceID
        v.parentID = parentID
        v.rootID = rootID
        v.depth = depth
        return v
    }
}

public struct JobResult: Sendable, Equatable {
    public var exitCode: Int32?
    public var signal: Int32?
    public var stdout: [UInt8]
    public var stderr: [UInt8]
    public var stdoutTruncated: Bool
    public var stderrTruncated: Bool
    public var runMs: Double?
    public var cpuMs: Double?
    public var maxRSSKiB: Int64?
    public var error: ProtocolError?

    public init(
        exitCode: Int32? = nil, signal: Int32? = nil, stdout: [UInt8] = [], stderr: [UInt8] = [],
        stdoutTruncated: Bool = false, stderrTruncated: Bool = false, runMs: Double? = nil,
        cpuMs: Double? = nil, maxRSSKiB: Int64? = nil, error: ProtocolError? = nil
    ) {
        self.exitCode = exitCode; self.signal = signal; self.stdout = stdout; self.stderr = stderr
        self.stdoutTruncated = stdoutTruncated; self.stderrTruncated = stderrTruncated; self.runMs = runMs
        self.cpuMs = cpuMs; self.maxRSSKiB = maxRSSKiB; self.error = error
    }
}

/// One line of the audit log: a refusal or an admin action, who asked, which rule decided.
public struct AuditEvent: Sendable, Equatable {
    public var seq: Int64
    /// Wall-clock seconds since the epoch.
    public var at: Double
    public var tenant: String?
    public var callerUID: Int?
    /// What was refused or done: "submit.refused", "tenant.create", "tenant.set_quota", "policy.reload", ...
    public var action: String
    /// The rule that decided (a quota's name, a policy rule with file and line, an access rule).
    public var rule: String?
    public var detail: String?
    /// The W3C trace id of the request the event belongs to (a submit's), when it had one.
    public var traceID: String?

    public init(
        seq: Int64 = 0, at: Double, tenant: String?, callerUID: Int?, action: String, rule: String?, detail: String?, traceID: String? = nil
    ) {
        self.seq = seq; self.at = at; self.tenant = tenant; self.callerUID = callerUID
        self.action = action; self.rule = rule; self.detail = detail; self.traceID = traceID
    }
}
