import FoundationEssentials
/// Job states (docs/protocol.md, JOB).
public enum JobState: String, Sendable, CaseIterable {
    case queued, running, succeeded, failed
    case timedOut = "timed_out"
    case oomKilled = "oom_killed"
    case killed, canceled, rejected

    public var isFinal: Bool { self != .queued && self != .running }
}

/// A job as clients see it (`submit --json`, `job get --json`; docs/protocol.md lists the fields).
public struct JobView: Sendable, Equatable {
    public var id: String
    public var tenant: String
    public var state: JobState
    public var exitCode: Int32?
    public var signal: Int32?
    public var stdout: String
    public var stderr: String
    public var stdoutTruncated: Bool
    public var stderrTruncated: Bool
    public var queuedMs: Double?
    public var runMs: Double?
    public var cpuMs: Double?
    public var maxRSSKiB: Int64?
    public var attempt: Int
    public var error: ProtocolError?
    public var argv: [String]
    public var cwd: String
    public var timeoutSeconds: Double
    public var idempotencyKey: String?
    public var createdAt: Double
    public var startedAt: Double?
    public var finishedAt: Double?
    /// The exact bytes of a stream that is not valid UTF-8 (then `stdout`/`stderr` hold U+FFFD).
    public var stdoutB64: String? = nil
    public var stderrB64: String? = nil
    /// As submitted (docs/protocol.md, "Streaming").
    public var stdinOpen = false
    public var tty = false
    /// The W3C trace id the job belongs to (32 hex), null for a job from before trace ids.
    public var traceID: String? = nil
    /// Sub-jobs (docs/subjobs.md): the job that submitted this one from inside its sandbox (null
    /// for a job submitted from outside), the root of its tree (its own id for a root), and its
    /// depth below the root (0 for a root).
    public var parentID: String? = nil
    public var rootID: String? = nil
    public var depth = 0

    public init(
        id: String, tenant: String, state: JobState, exitCode: Int32? = nil, signal: Int32? = nil,
        stdout: String = "", stderr: String = "", stdoutTruncated: Bool = false, stderrTruncated: Bool = false,
        queuedMs: Double? = nil, runMs: Double? = nil, cpuMs: Double? = nil, maxRSSKiB: Int64? = nil,
        attempt: Int = 1, error: ProtocolError? = nil, argv: [String], cwd: String, timeoutSeconds: Double,
        idempotencyKey: String? = nil, createdAt: Double, startedAt: Double? = nil, finishedAt: Double? = nil
    ) {
        self.id = id; self.tenant = tenant; self.state = state; self.exitCode = exitCode; self.signal = signal
        self.stdout = stdout; self.stderr = stderr; self.stdoutTruncated = stdoutTruncated
        self.stderrTruncated = stderrTruncated; self.queuedMs = queuedMs; self.runMs = runMs; self.cpuMs = cpuMs
        self.maxRSSKiB = maxRSSKiB; self.attempt = attempt; self.error = error; self.argv = argv; self.cwd = cwd
        self.timeoutSeconds = timeoutSeconds; self.idempotencyKey = idempotencyKey; self.createdAt = createdAt
        self.startedAt = startedAt; self.finishedAt = finishedAt
    }

    public var json: JSONValue {
        var o = JSONObjectBuilder()
        o.set("id", .string(id)); o.set("tenant", .string(tenant)); o.set("state", .string(state.rawValue))
        o.set("exit_code", exitCode.map { Int($0) }); o.set("signal", signal.map { Int($0) })
        o.set("stdout", .string(stdout)); o.set("stderr", .string(stderr))
        if let stdoutB64 { o.set("stdout_b64", .string(stdoutB64)) }
        if let stderrB64 { o.set("stderr_b64", .string(stderrB64)) }
        o.set("stdout_truncated", stdoutTruncated); o.set("stderr_truncated", stderrTruncated)
        o.set("queued_ms", queuedMs.map(Self.round3)); o.set("run_ms", runMs.map(Self.round3))
        o.set("cpu_ms", cpuMs.map(Self.round3)); o.set("max_rss_kb", maxRSSKiB)
        o.set("attempt", attempt); o.set("error", error?.json ?? .null)
        o.set("argv", .array(argv.map(JSONValue.string))); o.set("cwd", .string(cwd))
        o.set("timeout_s", .double(timeoutSeconds)); o.set("idempotency_key", idempotencyKey)
        o.set("created_at", createdAt); o.set("started_at", startedAt); o.set("finished_at", finishedAt)
        o.set("stdin_open", stdinOpen); o.set("tty", tty)
        o.set("trace_id", traceID)
        o.set("parent_id", parentID); o.set("root_id", rootID ?? id); o.set("depth", depth)
        return o.value
    }

    static func round3(_ d: Double) -> Double { (d * 1000).rounded() / 1000 }

    public init?(json v: JSONValue) {
        guard let id = v["id"]?.stringValue, let tenant = v["tenant"]?.stringValue,
            let state = v["state"]?.stringValue.flatMap(JobState.init(rawValue:))
        else { return nil }
        self.init(
            id: id, tenant: tenant, state: state,
            exitCode: v["exit_code"]?.intValue.map { Int32(truncatingIfNeeded: $0) },
            signal: v["signal"]?.intValue.map { Int32(truncatingIfNeeded: $0) },
            stdout: v["stdout"]?.stringValue ?? "", stderr: v["stderr"]?.stringValue ?? "",
            stdoutTruncated: v["stdout_truncated"]?.boolValue ?? false,
            stderrTruncated: v["stderr_truncated"]?.boolValue ?? false,
            queuedMs: v["queued_ms"]?.doubleValue, runMs: v["run_ms"]?.doubleValue, cpuMs: v["cpu_ms"]?.doubleValue,
            maxRSSKiB: v["max_rss_kb"]?.intValue, attempt: Int(v["attempt"]?.intValue ?? 1),
            error: v["error"].flatMap(ProtocolError.init(json:)),
            argv: v["argv"]?.arrayValue?.compactMap(\.stringValue) ?? [], cwd: v["cwd"]?.stringValue ?? "/home",
            timeoutSeconds: v["timeout_s"]?.doubleValue ?? 0, idempotencyKey: v["idempotency_key"]?.stringValue,
            createdAt: v["created_at"]?.doubleValue ?? 0, startedAt: v["started_at"]?.doubleValue,
            finishedAt: v["finished_at"]?.doubleValue)
        stdoutB64 = v["stdout_b64"]?.stringValue
        stderrB64 = v["stderr_b64"]?.stringValue
        stdinOpen = v["stdin_open"]?.boolValue ?? false
        tty = v["tty"]?.boolValue ?? false
        traceID = v["trace_id"]?.stringValue
        parentID = v["parent_id"]?.stringValue
        // A root's root_id is its own id: kept as nil, as the view it was made from.
        rootID = v["root_id"]?.stringValue.flatMap { $0 == id ? nil : $0 }
        depth = Int(v["depth"]?.intValue ?? 0)
    }

    /// A stream's exact bytes: from `*_b64` when it was not UTF-8, else the text.
    public var stdoutBytes: [UInt8] { stdoutB64.flatMap { Data(base64Encoded: $0) }.map(Array.init) ?? Array(stdout.utf8) }
    public var stderrBytes: [UInt8] { stderrB64.flatMap { Data(base64Encoded: $0) }.map(Array.init) ?? Array(stderr.utf8) }

    /// The exit status `clawpen submit` / `job wait` use for this job (the exit table in README.md and docs/protocol.md).
    public var cliExitStatus: Int32 {
        switch state {
        case .succeeded: return 0
        case .failed:
            if let code = exitCode { return code }
            return error?.code.exitCode ?? 70
        case .timedOut: return 124
        case .oomKilled: return 137
        case .killed, .canceled: return 128 + (signal ?? 9)
        case .rejected: return error?.code.exitCode ?? 70
        case .queued, .running: return 0
        }
    }
}

/// A tenant as clients see it.
public struct TenantView: Sendable, Equatable {
    public var name: String
    public var tier: String
    public var uid: Int
    public var workspace: String
    public var createdAt: Double

    public init(name: String, tier: String, uid: Int, workspace: String, createdAt: Double) {
        self.name = name; self.tier = tier; self.uid = uid; self.workspace = workspace; self.createdAt = createdAt
    }

    public var json: JSONValue {
        var o = JSONObjectBuilder()
        o.set("tenant", .string(name)); o.set("tier", .string(tier)); o.set("uid", uid)
        o.set("workspace", .string(workspace)); o.set("created_at", createdAt)
        return o.value
    }

    public init?(json v: JSONValue) {
        guard let name = v["tenant"]?.stringValue, let tier = v["tier"]?.stringValue else { return nil }
        self.init(
            name: name, tier: tier, uid: Int(v["uid"]?.intValue ?? -1),
            workspace: v["workspace"]?.stringValue ?? "", createdAt: v["created_at"]?.doubleValue ?? 0)
    }
}

public enum ClawpenVersion {
    public static let string = "0.1.0"
}
