import ClawpenPolicy
import ClawpenProtocol
import ClawpenStore
import ClawpenWire

/// Why a submit was refused: the reply, what the audit says, and how status counts it.
public struct Refusal: Error, Sendable {
    public let error: ProtocolError
    /// The audit row: "submit.denied" (tool policy), "submit.refused" (quota, availability).
    public let auditAction: String
    public let rule: String
    public let auditDetail: String?
}

/// One quota refusal: which quota, its limit, the current value, and when a retry can succeed.
struct QuotaRefusal: Error {
    let quota: String
    let limit: String
    let current: String
    /// nil when waiting does not help (the request itself is over the limit).
    let retryAfterMs: Int?
    let message: String
}

extension Core {
    /// Decides a submit for `t`: the tenant's availability (suspended, quarantined, the daemon
    /// stopping), its tool policy, then its quotas in the order a caller can act on. An accepted
    /// job is counted as pending until `accepted` (after its commit) or `withdraw`.
    /// `isExecutable` answers whether a sandbox path is an executable file (tool policy).
    /// `parent`: the running job that submits this one from inside its sandbox (a sub-job;
    /// its tree's rules apply first, Trees.swift).
    public func admit(_ s: SubmitRequest, tenant t: TenantState, jobID: String, parent: JobRecord? = nil, isExecutable: (String) -> Bool)
        -> Result<JobRecord, Refusal>
    {
        let now = clock.monotonic()
        if draining {
            return .failure(
                Refusal(
                    error: ProtocolError(.unavailable, "the daemon is shutting down; submit again when it is back"),
                    auditAction: "submit.refused", rule: "draining", auditDetail: nil))
        }
        if let s = t.lifecycle.suspension {
            t.refusals["suspended", default: 0] += 1
            return .failure(
                Refusal(
                    error: ProtocolError(
                        .unavailable,
                        "tenant '\(t.name)' is suspended (by \(s.by)); its queued jobs wait. An operator lifts it with: clawpen tenant resume \(t.name)",
                        details: ["rule": .string("suspended"), "suspended_by": .string(s.by)]),
                    auditAction: "submit.refused", rule: "suspended", auditDetail: "suspended by \(s.by)"))
        }
        if let q = t.lifecycle.quarantine {
            t.refusals["quarantined", default: 0] += 1
            let wait = max(1, Int(((q.retryAt - now) * 1000).rounded(.up)))
            return .failure(
                Refusal(
                    error: ProtocolError(
                        .unavailable,
                        "tenant '\(t.name)' is quarantined: \(q.reason); its worker is tried again in \(wait) ms, or an operator lifts it with: clawpen tenant resume \(t.name)",
                        details: ["rule": .string("crash_loop_max"), "retry_after_ms": .int(Int64(wait))]),
                    auditAction: "submit.refused", rule: "crash_loop_max", auditDetail: "quarantined"))
        }
        let limits = t.limits
        // A job that talks to someone (stdin open, a terminal) is bounded by its own key: an
        // agent's REPL or shell outlives a tool call.
        let interactive = s.options.isInteractive
        let timeout = s.timeoutSeconds ?? (interactive ? limits.interactiveTimeoutMaxSeconds : limits.timeoutDefaultSeconds)
        // The agent is not the user: the tenant's tool policy decides what its jobs may start.
        // A bare name found nowhere in PATH is not a policy matter: the job fails with 127 and
        // "command not found", as in a shell. The explanation is built only for a refusal.
        let env = s.env.map { (name: $0.name, value: $0.value) }
        let cwd = s.cwd ?? CommandPath.defaultCwd
        if toolVerdict(argv: s.argv, env: env, cwd: cwd, limits: limits, isExecutable: isExecutable) == .refused {
            let decision = decideTool(argv: s.argv, env: env, cwd: cwd, limits: limits, isExecutable: isExecutable)
            let rule = decision.refusingRule ?? "commands_allow"
            let key = decision.steps.first { $0.outcome == .refused }?.key ?? ""
            t.refusals[key.hasPrefix("env") ? "env" : "command", default: 0] += 1
            return .failure(
                Refusal(
                    error: ProtocolError(
                        .policyDenied, decision.message ?? "denied by \(rule)",
                        details: ["rule": .string(rule), "command": decision.resolvedPath.map(JSONValue.string) ?? .null]),
                    auditAction: "submit.denied", rule: rule, auditDetail: s.argv.first.map { String($0.prefix(200)) }))
        }
        if let refusal = (parent.flatMap { treeRefusal(t, parent: $0, now: now) })
            ?? quotaRefusal(t, timeout: timeout, interactive: interactive, stdinBytes: s.stdin.count, now: now)
        {
            t.refusals[refusal.quota, default: 0] += 1
            var details: [String: JSONValue] = [
                "quota": .string(refusal.quota), "limit": .string(refusal.limit),
                "current": .string(refusal.current),
            ]
            details["retry_after_ms"] = refusal.retryAfterMs.map { .int(Int64($0)) } ?? .null
            return .failure(
                Refusal(
                    error: ProtocolError(.quotaExceeded, refusal.message, details: details),
                    auditAction: "submit.refused", rule: refusal.quota,
                    auditDetail: "limit \(refusal.limit), current \(refusal.current)"))
        }
        t.pendingAccepts += 1
        t.pendingBytes += s.stdin.count
        var job = JobRecord(
            id: jobID, tenant: t.name, state: .queued, argv: s.argv, env: s.env, cwd: cwd,
            stdin: s.stdin, timeoutSeconds: timeout, outputCap: limits.outputMaxBytes, idempotencyKey: s.idempotencyKey,
            attempt: 1, createdAt: clock.wall())
        job.options = s.options
        job.trace = s.trace
        if let parent { reserveInTree(&job, t, parent: parent) }
        return .success(job)
    }

    /// The first quota a new job of `t` would break, in the order a caller can act on: the
    /// request itself (timeout), then the queue, the CPU budget and the rate. Only a job that
    /// passes all of them takes a token.
    func quotaRefusal(_ t: TenantState, timeout: Double, interactive: Bool = false, stdinBytes: Int = 0, now: Double) -> QuotaRefusal? {
        let limits = t.limits
        let tier = t.record.tier
        let (maxTimeout, key) =
            interactive
            ? (limits.interactiveTimeoutMaxSeconds, "interactive_timeout_max_s") : (limits.timeoutMaxSeconds, "timeout_max_s")
        if timeout > maxTimeout {
            let what = interactive ? "an interactive job's (stdin open or a terminal) " : ""
            return QuotaRefusal(
                quota: key, limit: formatSeconds(maxTimeout), current: formatSeconds(timeout), retryAfterMs: nil,
                message:
                    "a timeout of \(formatSeconds(timeout)) s is above tenant '\(t.name)'s \(what)maximum of \(formatSeconds(maxTimeout)) s (quota \(key), tier \(tier)); waiting does not help: ask for a shorter timeout"
            )
        }
        let queued = t.queue.count + t.pendingAccepts
        // What one queued job adds to the wait for a slot, for retry_after_ms.
        let perSlot = max(1.0, t.averageRunMs) / Double(max(1, limits.maxConcurrentRuns))
        if queued >= limits.maxQueued {
            let wait = max(100, Int((Double(queued - limits.maxQueued + 1) * perSlot).rounded(.up)))
            return QuotaRefusal(
                quota: "max_queued", limit: "\(limits.maxQueued)", current: "\(queued)", retryAfterMs: wait,
                message:
                    "tenant '\(t.name)' already has \(queued) jobs waiting, its limit is \(limits.maxQueued) (quota max_queued, tier \(tier)); retry after \(wait) ms"
            )
        }
        // The queued jobs' stdin is held in memory until they start (measured: 500 queued jobs
        // of 1 MiB each took the supervisor from 31 to 558 MiB).
        let held = t.queuedBytes + t.pendingBytes
        if stdinBytes > 0, held + stdinBytes > limits.maxQueuedBytes {
            let alone = stdinBytes > limits.maxQueuedBytes
            let wait = alone ? nil : max(100, Int((Double(max(1, t.queue.count)) * perSlot).rounded(.up)))
            let advice =
                alone
                ? "waiting does not help: send less stdin (a file in the tenant's sandbox, clawpen cp)" : "retry after \(wait ?? 100) ms"
            return QuotaRefusal(
                quota: "max_queued_bytes", limit: "\(limits.maxQueuedBytes)", current: "\(held)", retryAfterMs: wait,
                message:
                    "tenant '\(t.name)'s queued jobs hold \(held) bytes of stdin; with this job's \(stdinBytes) that is over its limit of \(limits.maxQueuedBytes) (quota max_queued_bytes, tier \(tier)); \(advice)"
            )
        }
        sampleCPU(t, now: now)
        let budget = Int64(limits.cpuSecondsPerHour * 1_000_000)
        if let wait = t.cpu.retryAfterMs(budgetMicros: budget, now: now) {
            let used = t.cpu.usedMicros(now: now)
            return QuotaRefusal(
                quota: "cpu_seconds_per_hour", limit: formatSeconds(limits.cpuSecondsPerHour), current: formatSeconds(Double(used) / 1e6),
                retryAfterMs: wait,
                message:
                    "tenant '\(t.name)' used \(formatSeconds(Double(used) / 1e6)) CPU seconds in the last hour, its budget is \(formatSeconds(limits.cpuSecondsPerHour)) (quota cpu_seconds_per_hour, tier \(tier)); retry after \(wait) ms"
            )
        }
        if let wait = t.rate.take(now: now) {
            return QuotaRefusal(
                quota: "jobs_per_minute", limit: "\(limits.jobsPerMinute)", current: "\(limits.jobsPerMinute)", retryAfterMs: wait,
                message:
                    "tenant '\(t.name)' submitted its \(limits.jobsPerMinute) jobs for this minute (quota jobs_per_minute, tier \(tier)); retry after \(wait) ms"
            )
        }
        return nil
    }

    /// Brings the tenant's CPU budget up to date from its cgroup's cpu.stat (at most every 100 ms
    /// unless forced). Without a readable cgroup, jobs' rusage is added as they finish instead.
    func sampleCPU(_ t: TenantState, now: Double, force: Bool = false) {
        guard let seen = t.cgroupCPUSeen, force || now - t.lastCPUSample >= 0.1 else { return }
        t.lastCPUSample = now
        guard let usage = probe.cpuUsageMicros(t.name) else { return }
        if usage > seen { t.cpu.record(micros: usage - seen, now: now) }
        t.cgroupCPUSeen = usage
    }
}
