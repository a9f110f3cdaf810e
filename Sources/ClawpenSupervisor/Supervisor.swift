import CClawpenShim
import ClawpenPolicy
import ClawpenProtocol
import ClawpenStore
import ClawpenWire
import Glibc
import Logging
import NIOCore
import NIOPosix

/// The supervisor's core: tenants, their queues and workers, jobs from acceptance to result.
///
/// Concurrency: every method runs on `loop`, the one event loop that also serves the client
/// connections and the worker sockets, so the state below needs no locks (hence
/// `@unchecked Sendable`: closures scheduled on the loop may capture it).
public final class Supervisor: @unchecked Sendable {
    let loop: EventLoop
    let config: ServeConfig
    let store: Store
    /// Replaced by a policy reload (SIGHUP, `clawpen policy reload`, set-quota).
    private(set) var policies: PolicySet
    let logger: Logger
    let workerPath: String
    let cgroup: CgroupInfo
    /// Workers are sandboxed when the supervisor is root (namespaces, pivot_root and uid changes
    /// need it); otherwise `status` says plainly that they are not.
    let sandboxEnabled = geteuid() == 0
    private let startedAt = Clock.monotonic()

    var tenants: [String: TenantRuntime] = [:]
    /// Callbacks waiting for a job to reach a final state (sync submit, job.wait, job.cancel).
    private var waiters: [String: [(Result<JobView, ProtocolError>) -> Void]] = [:]
    private(set) var draining = false
    private var shutdownCompletion: (() -> Void)?
    private var graceTimer: Scheduled<Void>?
    private var stoppingWorkers = false

    // Group commit: store writes of one event-loop tick are flushed together (`flushWrites`),
    // at most two transactions: results (not fsynced), then accepts (fsynced). Replies and
    // dispatch wait for the commit that makes them true.
    private struct PendingAccept {
        let job: JobRecord
        let runtime: TenantRuntime
        let responder: Responder
        let wait: Bool
    }
    private var pendingAccepts: [PendingAccept] = []
    private var pendingFinishes: [Store.Finished] = []
    private var pendingNotifications: [(callbacks: [(Result<JobView, ProtocolError>) -> Void], view: JobView)] = []
    private var flushScheduled = false

    /// Compiled seccomp programs by profile name (every profile the policies name).
    private(set) var seccompPrograms: [String: [UInt8]]
    /// Callers' user and group names, for access rules.
    private let callers = CallerDirectory()
    /// Set by the server: told before and after a policy reload (systemd's RELOADING=1/READY=1).
    var onReload: ((_ starting: Bool) -> Void)?
    /// The tenant cgroups, when there is a cgroup2 hierarchy to use.
    let cgroups: CgroupTree?
    /// disk_max and inodes_max as project quotas on the workspace filesystem, where it has them.
    lazy var diskQuotas = DiskQuotas(workspaceRoot: config.workspaceRoot)

    /// Installed by every job on top of its worker's filter (refuses clone3, which the worker's allows).
    let jobSeccompGuard: [UInt8]

    /// Chooses which tenant starts a job next under the global limit (Router.swift).
    let router: Router<TenantRuntime>
    /// Audit events of this tick, written with the tick's flush.
    private var pendingAudits: [AuditEvent] = []

    init(loop: EventLoop, config: ServeConfig, store: Store, policies: PolicySet, jobSeccompGuard: [UInt8] = [], logger: Logger,
         workerPath: String, cgroup: CgroupInfo, seccompPrograms: [String: [UInt8]], cgroups: CgroupTree?) {
        self.loop = loop; self.config = config; self.store = store; self.policies = policies
        self.logger = logger; self.workerPath = workerPath; self.cgroup = cgroup
        self.seccompPrograms = seccompPrograms; self.cgroups = cgroups
        self.jobSeccompGuard = jobSeccompGuard
        let maxRunning = config.maxRunning ?? Router<TenantRuntime>.defaultMaxRunning(cores: Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))))
        self.router = Router(mode: config.dispatchMode, maxRunning: maxRunning,
                             reserve: config.reservedSlots ?? Router<TenantRuntime>.defaultReserve(maxRunning: maxRunning))
    }

    // MARK: - Start-up

    /// Loads tenants and re-queues what a previous run left unfinished.
    func start() throws(StoreError) {
        loop.preconditionInEventLoop()
        let counts = try store.jobCounts()
        for record in try store.tenants() {
            guard let name = try? TenantName(validating: record.name) else {
                logger.error("ignoring stored tenant with an invalid name", metadata: ["tenant": "\(record.name)"])
                continue
            }
            let runtime = TenantRuntime(record: record, name: name, limits: limits(for: record), now: Clock.monotonic())
            for (state, n) in counts[record.name] ?? [:] where state.isFinal { runtime.finishedCounts[state] = n }
            tenants[record.name] = runtime
        }
        let recovered = try store.recoverUnfinishedJobs()
        for job in recovered {
            guard let rt = tenants[job.tenant] else { continue }
            rt.queue.append(job)
            router.accepted(rt)
        }
        if !recovered.isEmpty {
            logger.notice("re-queued \(recovered.count) job(s) left queued or running by the previous run")
        }
        for runtime in tenants.values where !runtime.queue.isEmpty { dispatch(runtime) }
        refillSpares()
        refillNetns()
    }

    private func limits(for record: TenantRecord) -> TierLimits {
        policies.limits(tenant: record.name, tier: Tier(rawValue: record.tier) ?? .free)
    }

    // MARK: - Requests

    func handle(_ request: Request, _ r: Responder) {
        loop.preconditionInEventLoop()
        do {
            switch request {
            case .ping:
                r.reply("pong", [("version", .string(ClawpenVersion.string)), ("pid", .int(Int64(getpid())))])
            case .submit(let s): try submit(s, r)
            case .jobGet(let id):
                let view = try activeOrStoredJob(id)
                try authorize(r, .submit(tenant: view.tenant), request: "job.get")
                r.job(view)
            case .jobWait(let id):
                let view = try activeOrStoredJob(id)
                try authorize(r, .submit(tenant: view.tenant), request: "job.wait")
                if view.state.isFinal { r.job(view) } else { addWaiter(id) { r.job($0) } }
            case .jobCancel(let id): try cancel(id, r)
            case .tenantCreate(let name, let tier):
                try authorize(r, .operator(command: "tenant create"), request: "tenant.create", tenant: name)
                r.reply("tenant", [("tenant", try createTenant(name, tier, r).json)])
            case .tenantList:
                try authorize(r, .operator(command: "tenant list"), request: "tenant.list")
                r.reply("tenants", [("tenants", .array(tenants.keys.sorted().map { view(tenants[$0]!).json }))])
            case .tenantShow(let name):
                try authorize(r, .operator(command: "tenant show"), request: "tenant.show", tenant: name)
                r.reply("tenant", [("tenant", view(try runtime(name)).json)])
            case .status(let tenant):
                try authorize(r, .operator(command: "status"), request: "status", tenant: tenant)
                r.reply("status", [("status", try status(tenant: tenant))])
            case .audit(let tenant, let since, let limit):
                try authorize(r, .operator(command: "audit"), request: "audit", tenant: tenant)
                if let tenant { _ = try validName(tenant) }
                if !pendingAudits.isEmpty { flushWrites() }
                let events = try store.auditEvents(tenant: tenant, since: since, limit: limit)
                r.reply("audit", [("events", .array(events.map(Self.auditJSON)))])
            case .policyExplain(let tenant, let argv, let env, let cwd): try explain(tenant, argv, env, cwd, r)
            case .policyReload:
                try authorize(r, .operator(command: "policy reload"), request: "policy.reload")
                try reloadPolicies(caller: r)
                r.reply("policy", [("policy", policySummary())])
            case .tenantInspect(let name):
                try authorize(r, .operator(command: "tenant inspect"), request: "tenant.inspect", tenant: name)
                r.reply("inspect", [("inspect", try inspect(tenant: try runtime(name)))])
            case .tenantSetQuota(let name, let changes):
                try authorize(r, .operator(command: "tenant set-quota"), request: "tenant.set_quota", tenant: name)
                try setQuota(name, changes, r)
            }
        } catch let e as ProtocolError {
            r.fail(e)
        } catch let e as StoreError {
            logger.error("store failure", metadata: ["error": "\(e)"])
            r.fail(ProtocolError(.internal, "\(e)"))
        } catch {
            r.fail(ProtocolError(.internal, "\(error)"))
        }
    }

    /// The caller's right to `action` (SO_PEERCRED against access.toml; root is an operator).
    /// A refusal is audited and thrown as permission_denied naming the rule.
    private func authorize(_ r: Responder, _ action: AccessAction, request: String, tenant: String? = nil) throws {
        guard let cred = r.caller else {
            audit(tenant: tenant, caller: r, action: "permission.denied", rule: "no peer credentials", detail: request)
            throw ProtocolError(.permissionDenied, "\(request): the caller's credentials (SO_PEERCRED) could not be read, so nothing but ping is allowed",
                                details: ["rule": .string("no peer credentials")])
        }
        let decision = policies.access.decide(callers.caller(cred), action)
        guard decision.allowed else {
            var target = tenant
            if case .submit(let t) = action { target = t }
            audit(tenant: target.flatMap { (try? TenantName(validating: $0))?.value }, caller: r, action: "permission.denied",
                  rule: decision.rule, detail: request)
            throw ProtocolError(.permissionDenied, "\(request): \(decision.message)", details: ["rule": .string(decision.rule)])
        }
    }

    static func auditJSON(_ e: AuditEvent) -> JSONValue {
        var o = JSONObjectBuilder()
        o.set("seq", e.seq)
        o.set("at", e.at)
        o.set("tenant", e.tenant)
        o.set("caller_uid", e.callerUID)
        o.set("action", .string(e.action))
        o.set("rule", e.rule)
        o.set("detail", e.detail)
        return o.value
    }

    private func validName(_ raw: String) throws -> TenantName {
        do { return try TenantName(validating: raw) } catch { throw ProtocolError(.invalidTenant, error.description) }
    }

    private func runtime(_ raw: String) throws -> TenantRuntime {
        let name = try validName(raw)
        guard let rt = tenants[name.value] else {
            throw ProtocolError(.unknownTenant, "no tenant named '\(name)' (create it with: clawpen tenant create \(name))")
        }
        return rt
    }

    private func view(_ rt: TenantRuntime) -> TenantView {
        TenantView(name: rt.record.name, tier: rt.record.tier, uid: rt.record.uid,
                   workspace: workspacePath(rt.name), createdAt: rt.record.createdAt)
    }

    func workspacePath(_ name: TenantName) -> String { config.workspaceRoot + "/" + name.value }

    // MARK: Tenants

    private func createTenant(_ rawName: String, _ rawTier: String, _ r: Responder) throws -> TenantView {
        let name = try validName(rawName)
        guard let tier = Tier(rawValue: rawTier) else {
            throw ProtocolError(.invalidRequest, "unknown tier '\(rawTier)' (tiers: free, pro, enterprise)")
        }
        if tenants[name.value] != nil {
            throw ProtocolError(.invalidRequest, "tenant '\(name)' already exists")
        }
        let outcome = try store.createTenant(name: name.value, tier: tier.rawValue, uidRange: config.uidRange, now: Clock.now(),
                                             isUsable: sandboxEnabled ? UIDRange.unusedOnHost() : { _ in true })
        if case .created(let record) = outcome {
            do { try Workspace.create(root: config.workspaceRoot, tenant: name, owner: sandboxEnabled ? record.uid : nil) } catch {
                try? store.deleteTenant(name: name.value)
                throw ProtocolError(.internal, error.description)
            }
        }
        switch outcome {
        case .duplicate: throw ProtocolError(.invalidRequest, "tenant '\(name)' already exists")
        case .uidRangeExhausted:
            throw ProtocolError(.internal, "no free uid left in \(config.uidRange.lowerBound)-\(config.uidRange.upperBound) for a new tenant (every other uid is a tenant's or used on the host; widen the uid range)")
        case .created(let record):
            let rt = TenantRuntime(record: record, name: name, limits: limits(for: record), now: Clock.monotonic())
            tenants[name.value] = rt
            audit(tenant: name.value, caller: r, action: "tenant.create", rule: "operator", detail: "tier=\(tier.rawValue) uid=\(record.uid)")
            logger.info("tenant created", metadata: ["tenant": "\(name)", "tier": "\(tier.rawValue)", "uid": "\(record.uid)"])
            return view(rt)
        }
    }

    // MARK: Jobs

    private func submit(_ s: SubmitRequest, _ r: Responder) throws {
        let name = try validName(s.tenant)
        try authorize(r, .submit(tenant: name.value), request: "submit")
        let rt = try runtime(s.tenant)
        guard !draining else { throw ProtocolError(.unavailable, "the daemon is shutting down; submit again when it is back") }
        let limits = rt.limits
        let timeout = s.timeoutSeconds ?? limits.timeoutDefaultSeconds
        if let key = s.idempotencyKey {
            // A resubmission returns the first job: no quota applies to it again.
            if pendingAccepts.contains(where: { $0.job.tenant == rt.name.value && $0.job.idempotencyKey == key }) { flushWrites() }
            if let existing = try store.job(tenant: rt.name.value, idempotencyKey: key) {
                let current = try activeOrStoredJob(existing.id)
                if s.wait && !current.state.isFinal { addWaiter(existing.id) { r.job($0, existing: true) } }
                else { r.job(current, existing: true) }
                return
            }
        }
        // The agent is not the user: the tenant's tool policy decides what its jobs may start.
        // A bare name found nowhere in PATH is not a policy matter: the job fails with 127 and
        // "command not found", as in a shell. The explanation is built only for a refusal.
        let env = s.env.map { (name: $0.name, value: $0.value) }
        let cwd = s.cwd ?? CommandPath.defaultCwd
        if toolVerdict(argv: s.argv, env: env, cwd: cwd, limits: limits, isExecutable: PolicyRuntime.isExecutableInSandbox) == .refused {
            let decision = decideTool(argv: s.argv, env: env, cwd: cwd, limits: limits, isExecutable: PolicyRuntime.isExecutableInSandbox)
            let rule = decision.refusingRule ?? "commands_allow"
            let key = decision.steps.first { $0.outcome == .refused }?.key ?? ""
            rt.refusals[key.hasPrefix("env") ? "env" : "command", default: 0] += 1
            audit(tenant: rt.name.value, caller: r, action: "submit.denied", rule: rule, detail: s.argv.first.map { String($0.prefix(200)) })
            throw ProtocolError(.policyDenied, decision.message ?? "denied by \(rule)",
                                details: ["rule": .string(rule), "command": decision.resolvedPath.map(JSONValue.string) ?? .null])
        }
        if let refusal = admissionRefusal(rt, timeout: timeout) {
            rt.refusals[refusal.quota, default: 0] += 1
            audit(tenant: rt.name.value, caller: r, action: "submit.refused", rule: refusal.quota,
                  detail: "limit \(refusal.limit), current \(refusal.current)")
            var details: [String: JSONValue] = ["quota": .string(refusal.quota), "limit": .string(refusal.limit),
                                                "current": .string(refusal.current)]
            details["retry_after_ms"] = refusal.retryAfterMs.map { .int(Int64($0)) } ?? .null
            throw ProtocolError(.quotaExceeded, refusal.message, details: details)
        }
        let job = JobRecord(
            id: JobID.make(), tenant: rt.name.value, state: .queued, argv: s.argv, env: s.env, cwd: cwd,
            stdin: s.stdin, timeoutSeconds: timeout, outputCap: limits.outputMaxBytes, idempotencyKey: s.idempotencyKey,
            attempt: 1, createdAt: Clock.now())
        // Accepted means committed: the reply and the dispatch follow the flush's commit.
        rt.pendingAccepts += 1
        pendingAccepts.append(PendingAccept(job: job, runtime: rt, responder: r, wait: s.wait))
        scheduleFlush()
    }

    /// The first quota a new job of `rt` would break, in the order a caller can act on: the
    /// request itself (timeout), then the queue, the rate and the CPU budget. Only a job that
    /// passes all of them takes a token.
    private func admissionRefusal(_ rt: TenantRuntime, timeout: Double) -> QuotaRefusal? {
        let limits = rt.limits
        let tier = rt.record.tier
        if timeout > limits.timeoutMaxSeconds {
            return QuotaRefusal(
                quota: "timeout_max_s", limit: formatSeconds(limits.timeoutMaxSeconds), current: formatSeconds(timeout), retryAfterMs: nil,
                message: "a timeout of \(formatSeconds(timeout)) s is above tenant '\(rt.name)'s maximum of \(formatSeconds(limits.timeoutMaxSeconds)) s (quota timeout_max_s, tier \(tier)); waiting does not help: ask for a shorter timeout")
        }
        let queued = rt.queue.count + rt.pendingAccepts
        if queued >= limits.maxQueued {
            let perSlot = max(1.0, rt.averageRunMs) / Double(max(1, limits.maxConcurrentRuns))
            let wait = max(100, Int((Double(queued - limits.maxQueued + 1) * perSlot).rounded(.up)))
            return QuotaRefusal(
                quota: "max_queued", limit: "\(limits.maxQueued)", current: "\(queued)", retryAfterMs: wait,
                message: "tenant '\(rt.name)' already has \(queued) jobs waiting, its limit is \(limits.maxQueued) (quota max_queued, tier \(tier)); retry after \(wait) ms")
        }
        let now = Clock.monotonic()
        sampleCPU(rt, now: now)
        let budget = Int64(limits.cpuSecondsPerHour * 1_000_000)
        if let wait = rt.cpu.retryAfterMs(budgetMicros: budget, now: now) {
            let used = rt.cpu.usedMicros(now: now)
            return QuotaRefusal(
                quota: "cpu_seconds_per_hour", limit: formatSeconds(limits.cpuSecondsPerHour), current: formatSeconds(Double(used) / 1e6),
                retryAfterMs: wait,
                message: "tenant '\(rt.name)' used \(formatSeconds(Double(used) / 1e6)) CPU seconds in the last hour, its budget is \(formatSeconds(limits.cpuSecondsPerHour)) (quota cpu_seconds_per_hour, tier \(tier)); retry after \(wait) ms")
        }
        if let wait = rt.rate.take(now: now) {
            return QuotaRefusal(
                quota: "jobs_per_minute", limit: "\(limits.jobsPerMinute)", current: "\(limits.jobsPerMinute)", retryAfterMs: wait,
                message: "tenant '\(rt.name)' submitted its \(limits.jobsPerMinute) jobs for this minute (quota jobs_per_minute, tier \(tier)); retry after \(wait) ms")
        }
        return nil
    }

    /// Brings the tenant's CPU budget up to date from its cgroup's cpu.stat (at most every 100 ms
    /// unless forced). Without a readable cgroup, jobs' rusage is added as they finish instead.
    private func sampleCPU(_ rt: TenantRuntime, now: Double, force: Bool = false) {
        guard let seen = rt.cgroupCPUSeen, force || now - rt.lastCPUSample >= 0.1 else { return }
        rt.lastCPUSample = now
        guard let usage = cgroups?.cpuUsageMicros(rt.name) else { return }
        if usage > seen { rt.cpu.record(micros: usage - seen, now: now) }
        rt.cgroupCPUSeen = usage
    }

    /// Queues an audit event for this tick's flush.
    func audit(tenant: String?, caller: Responder?, action: String, rule: String?, detail: String?) {
        pendingAudits.append(AuditEvent(at: Clock.now(), tenant: tenant, callerUID: caller?.callerUID, action: action, rule: rule, detail: detail))
        scheduleFlush()
    }

    private func scheduleFlush() {
        guard !flushScheduled else { return }
        flushScheduled = true
        loop.execute { [self] in flushWrites() }
    }

    /// Commits what this tick wrote, then tells whoever waited for it.
    private func flushWrites() {
        flushScheduled = false
        if !pendingAudits.isEmpty {
            let events = pendingAudits
            pendingAudits.removeAll(keepingCapacity: true)
            do { try store.insertAudit(events) } catch {
                logger.error("store failure writing the audit log", metadata: ["events": "\(events.count)", "error": "\(error)"])
            }
        }
        if !pendingFinishes.isEmpty {
            let batch = pendingFinishes
            pendingFinishes.removeAll(keepingCapacity: true)
            do { try store.finishJobs(batch) } catch {
                logger.error("store failure recording job results (they run again at the next start)", metadata: ["jobs": "\(batch.count)", "error": "\(error)"])
            }
            let notes = pendingNotifications
            pendingNotifications.removeAll(keepingCapacity: true)
            for n in notes { for cb in n.callbacks { cb(.success(n.view)) } }
        }
        guard !pendingAccepts.isEmpty else { return }
        let batch = pendingAccepts
        pendingAccepts.removeAll(keepingCapacity: true)
        // The jobs go to their workers before the commit, so the fsync overlaps their start on
        // the other core. Nobody hears of a job before it is committed; if the commit fails the
        // jobs are killed and their callers told they were not accepted. (A crash in between is
        // a crash before the acknowledgement: the caller retries, at-least-once.)
        var touched: [ObjectIdentifier: TenantRuntime] = [:]
        for p in batch {
            p.runtime.pendingAccepts -= 1
            p.runtime.queue.append(p.job)
            router.accepted(p.runtime)
            touched[ObjectIdentifier(p.runtime)] = p.runtime
        }
        for rt in touched.values { dispatch(rt) }
        do { try store.insertJobs(batch.map(\.job)) } catch {
            logger.error("store failure accepting jobs", metadata: ["jobs": "\(batch.count)", "error": "\(error)"])
            for p in batch { withdraw(p.job, p.runtime) }
            for p in batch { p.responder.fail(ProtocolError(.internal, "the job could not be recorded, so it was not accepted: \(error)")) }
            return
        }
        for p in batch {
            if p.wait { addWaiter(p.job.id) { [r = p.responder] in r.job($0) } }
            else { p.responder.job(memoryView(p.job, p.runtime)) }
        }
    }

    /// Jobs whose acceptance could not be committed: taken out of the queue, or killed.
    private var withdrawn: Set<String> = []

    private func withdraw(_ job: JobRecord, _ rt: TenantRuntime) {
        if rt.queue.remove(id: job.id) != nil { router.removedQueued(rt); return }
        if let w = rt.worker, w.inFlight[job.id] != nil {
            withdrawn.insert(job.id)
            send(.cancel(jobID: job.id), to: w)
        }
    }

    /// The view of an accepted, unfinished job from memory (no store read).
    private func memoryView(_ job: JobRecord, _ rt: TenantRuntime) -> JobView {
        if let running = rt.worker?.inFlight[job.id] {
            var v = running.view
            v.state = .running
            return v
        }
        return job.view
    }

    /// A job's current view: from memory while it is queued or running, else from the store.
    private func activeOrStoredJob(_ id: String) throws -> JobView {
        if !pendingAccepts.isEmpty || !pendingFinishes.isEmpty { flushWrites() }
        guard JobID.isWellFormed(id), let stored = try store.job(id: id) else {
            throw ProtocolError(.unknownTenant, "no job with id '\(id.prefix(80))'")
        }
        if let rt = tenants[stored.tenant], let w = rt.worker, let running = w.inFlight[id] {
            var v = running.view
            v.state = .running
            return v
        }
        return stored.view
    }

    private func addWaiter(_ id: String, _ callback: @escaping (Result<JobView, ProtocolError>) -> Void) {
        waiters[id, default: []].append(callback)
    }

    private func cancel(_ id: String, _ r: Responder) throws {
        let view = try activeOrStoredJob(id)
        try authorize(r, .submit(tenant: view.tenant), request: "job.cancel")
        if view.state.isFinal { r.job(view); return }
        guard let rt = tenants[view.tenant] else { r.job(view); return }
        if let job = rt.queue.remove(id: id) {
            router.removedQueued(rt)
            finish(job, rt, state: .canceled, result: JobResult(error: nil))
            r.job(try activeOrStoredJob(id))
            return
        }
        if let w = rt.worker, w.inFlight[id] != nil {
            rt.cancelRequested.insert(id)
            addWaiter(id) { r.job($0) }
            send(.cancel(jobID: id), to: w)
            return
        }
        r.job(view)
    }

    // MARK: - Dispatch

    /// Something changed for `rt` (a job arrived or ended, its worker came or went): start its
    /// worker if it has work and none, let the router know, and start what may start.
    func dispatch(_ rt: TenantRuntime) {
        guard !draining else { return }
        if rt.queue.isEmpty {
            armIdleTimerIfIdle(rt)
        } else {
            if rt.worker == nil && !rt.respawnPending { startWorker(rt) }
            router.wake(rt)
        }
        pump()
    }

    /// Starts jobs, across all tenants, while the router finds free slots and tenants with room.
    private func pump() {
        guard !draining else { return }
        var written: [WorkerHandle] = []
        // A worker that is still setting up may be given jobs: they wait in its socket behind
        // the configure frame, which saves a new tenant's first job a round trip. If its setup
        // fails, they go back to the queue as they were (workerExited).
        router.pump(canStart: { rt in
            guard !rt.queue.isEmpty, let w = rt.worker, !w.exitExpected, w.channel != nil else { return false }
            return w.inFlight.count < rt.limits.maxConcurrentRuns
        }, start: { rt in
            guard let w = rt.worker, let channel = w.channel, var job = rt.queue.popFirst() else { return }
            w.idleTimer?.cancel(); w.idleTimer = nil
            job.state = .running
            job.startedAt = Clock.now()
            w.inFlight[job.id] = job
            let run = RunRequest(jobID: job.id, argv: job.argv, env: job.env.map { "\($0.name)=\($0.value)" },
                                 cwd: job.cwd, stdin: job.stdin,
                                 timeoutMs: UInt32(min(job.timeoutSeconds * 1000, Double(UInt32.max - 1))),
                                 outputCapBytes: UInt32(job.outputCap))
            write(.run(run), to: channel)
            if !written.contains(where: { $0 === w }) { written.append(w) }
        })
        for w in written { w.channel?.flush() }
    }

    private func write(_ message: SupervisorToWorker, to channel: Channel) {
        channel.write(channel.allocator.frame(message.encoded()), promise: nil)
    }

    private func send(_ message: SupervisorToWorker, to w: WorkerHandle) {
        guard let channel = w.channel else { return }
        write(message, to: channel)
        channel.flush()
    }

    private func armIdleTimerIfIdle(_ rt: TenantRuntime) {
        guard let w = rt.worker, w.isReady, !w.exitExpected, w.inFlight.isEmpty, rt.queue.isEmpty, w.idleTimer == nil else { return }
        w.idleTimer = loop.scheduleTask(in: .milliseconds(Int64(config.idleTimeoutSeconds * 1000))) { [self] in
            w.idleTimer = nil
            guard rt.worker === w, w.inFlight.isEmpty, rt.queue.isEmpty, !w.exitExpected else { return }
            logger.info("worker idle, stopping it", metadata: ["tenant": "\(rt.name)", "worker_pid": "\(w.pid)"])
            w.exitExpected = true
            send(.shutdown, to: w)
        }
    }

    // MARK: - Workers

    private func startWorker(_ rt: TenantRuntime) {
        guard !rt.cgroupCleanupPending else { return } // the old worker's cgroup goes first
        var plan = Plan.make(tenant: rt.name, uid: rt.record.uid, workspace: workspacePath(rt.name), limits: SandboxLimits(rt.limits),
                             enabled: sandboxEnabled, controllers: cgroups?.controllers ?? [],
                             extras: PlanExtras(seccompProfile: rt.limits.seccompProfile, seccompProgram: seccompPrograms[rt.limits.seccompProfile] ?? [],
                                                jobSeccompProgram: jobSeccompGuard, cgroupNode: cgroups?.tenantPath(rt.name) ?? "",
                                                jobLandlockABI: UInt32(HostEnforcement.landlockABI)))
        do { try diskQuotas.apply(tenant: rt.name, projectID: rt.record.uid, limits: rt.limits) } catch {
            workerStartFailed(rt, "\(error)")
            return
        }
        let spawned: WorkerSpawner.Spawned
        let t0 = Clock.monotonic()
        var tCgroup = t0
        var fromSpare = false
        do {
            if let spare = takeSpare() {
                spawned = spare
                fromSpare = true
                if let node = spare.cgroupNode { try cgroups?.adopt(spare: spare.pid, spareNode: node, tenant: rt.name, owner: plan.enabled ? Int(plan.uid) : nil) }
            } else {
                let leaf = try cgroups?.leafForTenant(rt.name, owner: plan.enabled ? Int(plan.uid) : nil) ?? -1
                defer { if leaf >= 0 { close(leaf) } }
                tCgroup = Clock.monotonic()
                let netns = sandboxEnabled ? netnsPool.take() : -1
                defer { if netns >= 0 { close(netns) } }
                spawned = try WorkerSpawner.spawn(workerPath: workerPath, tenant: rt.name, workspace: workspacePath(rt.name),
                                                  sandboxed: sandboxEnabled, cgroupFD: leaf, netnsFD: netns)
            }
        } catch {
            workerStartFailed(rt, "\(error)")
            return
        }
        let tSpawned = Clock.monotonic()
        var tPrepared = tSpawned
        if plan.enabled && !fromSpare && workerMountsFallback == nil {
            // While the new worker is being exec'd (the better part of a millisecond), the
            // supervisor builds its mount tree (all but /proc); the worker goes on from there.
            do {
                plan.mountsPrepared = try prepareMounts(plan, inNamespaceOf: spawned.pid)
                tPrepared = Clock.monotonic()
            } catch {
                discardStartingWorker(spawned, rt, waitForExitMs: 0) { _ in "cannot start the worker: \(error)" }
                return
            }
        }
        do {
            rt.cgroupEnforced = cgroups?.applyLimits(rt.name, rt.limits) ?? []
            try WorkerSpawner.sendConfigure(plan, to: spawned)
            // While the worker builds its sandbox (over a millisecond), its first job slot.
            if plan.enabled { cgroups?.prepareFirstJobSlot(rt.name, owner: Int(plan.uid)) }
            // The pool's next network namespace, now rather than at the clone: making one takes
            // a core for most of a millisecond, which the mounts above and the worker's exec
            // needed more.
            refillNetns()
        } catch {
            // A worker that died at once (its exec failed, it crashed) fails here: say how it ended.
            // Its socket closes before it becomes a zombie, so a broken pipe can win the race
            // with its exit: give a dying worker up to 100 ms to be reaped before killing it.
            discardStartingWorker(spawned, rt, waitForExitMs: 100) { exit in
                exit.map { "worker \($0) before its setup" } ?? "\(error)"
            }
            return
        }
        rt.oomKillsSeen = cgroups?.oomKills(rt.name) ?? 0
        rt.cgroupCPUSeen = cgroups?.cpuUsageMicros(rt.name)
        rt.lastCPUSample = Clock.monotonic()
        let w = WorkerHandle(tenant: rt.name.value, pid: spawned.pid, startedAt: t0)
        w.startPhases = (cgroup: tCgroup - t0, spawn: tSpawned - tCgroup, mounts: tPrepared - tSpawned)
        rt.worker = w
        logger.info("worker started", metadata: ["tenant": "\(rt.name)", "worker_pid": "\(spawned.pid)"])
        let outputCap = rt.limits.outputMaxBytes
        ClientBootstrap(group: loop)
            .channelInitializer { [self] channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(WorkerChannelHandler(supervisor: self, worker: w, outputCap: outputCap))
                }
            }
            .withConnectedSocket(spawned.socketFD)
            .whenComplete { [self] result in
                switch result {
                case .success(let channel):
                    if w.exited { channel.close(promise: nil); return }
                    w.channel = channel
                    dispatch(rt)
                case .failure(let error):
                    close(spawned.socketFD)
                    kill(w.pid, SIGKILL)
                    w.setupFailure = "cannot attach to the worker socket: \(error)"
                    workerChannelClosed(w)
                }
            }
    }

    /// A worker that will not serve, before it has a handle: reaped (after up to `waitForExitMs`
    /// for it to end by itself, else killed), its socket closed, its cgroup removed, and the
    /// start reported failed with `reason`, which learns how the worker ended if it ended by
    /// itself.
    private func discardStartingWorker(_ spawned: WorkerSpawner.Spawned, _ rt: TenantRuntime, waitForExitMs: Int,
                                       reason: (_ exitedBySelf: String?) -> String) {
        var status: Int32 = 0
        var usage = rusage()
        var gone = false
        for attempt in 0...(waitForExitMs / 2) {
            if cp_wait4(spawned.pid, &status, WNOHANG, &usage) == spawned.pid { gone = true; break }
            if attempt < waitForExitMs / 2 { usleep(2_000) }
        }
        if !gone {
            kill(spawned.pid, SIGKILL)
            _ = cp_wait4(spawned.pid, &status, 0, &usage)
        }
        close(spawned.socketFD)
        cgroups.map { _ = $0.tryRemove(tenant: rt.name) }
        workerStartFailed(rt, reason(gone ? Self.describe(waitStatus: status) : nil))
    }

    /// Why workers build all their mounts themselves, when the supervisor cannot join their
    /// mount namespaces (setns needs CAP_SYS_CHROOT besides CAP_SYS_ADMIN); nil: it can.
    private(set) var workerMountsFallback: String?

    /// Builds a new worker's mount tree, all but /proc (Mounts.prepareFromSupervisor), from
    /// inside its mount namespace, on this thread, which then returns to its own. false: the
    /// namespace could not be joined, and the worker builds everything itself (slower, as safe);
    /// a step that fails once inside is the worker's setup failing, and throws.
    private func prepareMounts(_ plan: SandboxPlan, inNamespaceOf pid: Int32) throws(StepFailure) -> Bool {
        let preparation = try Mounts.prepareFromSupervisor(plan, workerPID: pid)
        guard preparation == .prepared else {
            if case .cannotJoin(let e) = preparation, e == EPERM {
                workerMountsFallback = "the supervisor may not join a worker's mount namespace (\(errnoString(e)); setns needs CAP_SYS_CHROOT and CAP_SYS_ADMIN), so each worker builds all its mounts itself"
                logger.warning("cannot join a worker's mount namespace; workers build all their mounts themselves (a slower cold start)", metadata: ["errno": "\(errnoString(e))"])
            }
            return false
        }
        return true
    }

    func workerSent(_ message: WorkerToSupervisor, _ w: WorkerHandle) {
        guard let rt = tenants[w.tenant], rt.worker === w else { return }
        switch message {
        case .ready:
            guard !w.isReady else { return workerMisbehaved(w, "said ready twice") }
            w.isReady = true
            // Where a cold start's time went: the tenant cgroup, the clone to exec, the mounts
            // the supervisor made meanwhile, then the rest of the worker's start and sandbox
            // setup up to its ready frame.
            func ms(_ d: Double) -> String { "\((d * 10_000).rounded() / 10)" }
            let total = Clock.monotonic() - w.startedAt
            logger.debug("worker ready", metadata: ["tenant": "\(rt.name)", "worker_pid": "\(w.pid)", "setup_ms": "\(ms(total))",
                                                   "cgroup_ms": "\(ms(w.startPhases.cgroup))", "clone_exec_ms": "\(ms(w.startPhases.spawn))",
                                                   "mounts_ms": "\(ms(w.startPhases.mounts))",
                                                   "worker_ms": "\(ms(total - w.startPhases.cgroup - w.startPhases.spawn - w.startPhases.mounts))"])
            // lastError stays: status keeps showing that this tenant's worker died, after it is back.
            rt.consecutiveStartFailures = 0
            dispatch(rt)
            armIdleTimerIfIdle(rt)
        case .setupFailed(let step, let err, let detail):
            w.setupFailure = "worker setup failed at step '\(step)': \(errnoString(err))\(detail.isEmpty ? "" : " (\(detail))")"
            logger.error("worker setup failed", metadata: ["tenant": "\(rt.name)", "worker_pid": "\(w.pid)", "step": "\(step)", "errno": "\(err)"])
        case .started(let id, _):
            guard w.inFlight[id] != nil else { return workerMisbehaved(w, "reported a start of job \(id.prefix(64)) it was not given") }
        case .finished(let report):
            guard let job = w.inFlight.removeValue(forKey: report.jobID) else {
                return workerMisbehaved(w, "reported a result for job \(report.jobID.prefix(64)) it was not given")
            }
            rt.cancelRequested.remove(job.id)
            router.ended()
            var (state, result) = Self.outcome(report, job)
            if let ms = result.runMs { rt.averageRunMs = 0.9 * rt.averageRunMs + 0.1 * ms }
            // Without a cgroup to read, the CPU budget counts what the job's processes used.
            if rt.cgroupCPUSeen == nil, let ms = result.cpuMs { rt.cpu.record(micros: Int64(ms * 1000), now: Clock.monotonic()) }
            // A SIGKILL while the tenant's memory.events counted a new OOM kill: the kernel did it.
            if state == .killed, result.signal == SIGKILL, let kills = cgroups?.oomKills(rt.name), kills > rt.oomKillsSeen {
                rt.oomKillsSeen = kills
                state = .oomKilled
                result.error = ProtocolError(.oomKilled, "the job was killed for memory: the tenant's memory_max is \(rt.limits.memoryMaxBytes) bytes")
            }
            finish(job, rt, state: state, result: result)
            if draining { checkDrained() } else { dispatch(rt) }
        }
    }

    /// Maps what the worker saw to the job's final state and result.
    static func outcome(_ rep: JobReport, _ job: JobRecord) -> (JobState, JobResult) {
        var result = JobResult(stdout: rep.stdout, stderr: rep.stderr, stdoutTruncated: rep.stdoutTruncated,
                               stderrTruncated: rep.stderrTruncated, runMs: Double(rep.runMicros) / 1000,
                               cpuMs: Double(rep.cpuMicros) / 1000, maxRSSKiB: Int64(clamping: rep.maxRSSKiB))
        switch rep.outcome {
        case .exited(let code):
            result.exitCode = code
            return (code == 0 ? .succeeded : .failed, result)
        case .signaled(let sig):
            result.signal = sig
            return (.killed, result)
        case .timedOut(let sig):
            result.signal = sig
            result.error = ProtocolError(.timedOut, "the job ran past its timeout of \(job.timeoutSeconds) s and was killed")
            return (.timedOut, result)
        case .canceled(let sig):
            result.signal = sig
            return (.canceled, result)
        case .spawnFailed:
            // As a shell would: 127, and the reason on stderr (the worker wrote it there).
            result.exitCode = 127
            result.runMs = nil; result.cpuMs = nil; result.maxRSSKiB = nil
            return (.failed, result)
        }
    }

    /// Records a final state (in this tick's flush), counts it, and tells the waiters once it is
    /// written.
    private func finish(_ job: JobRecord, _ rt: TenantRuntime, state: JobState, result: JobResult) {
        if withdrawn.remove(job.id) != nil { return } // never accepted: nothing to record or tell
        let now = Clock.now()
        rt.finishedCounts[state, default: 0] += 1
        // One line per job, with TENANT= and JOB_ID= in the journal (`journalctl TENANT=acme`).
        // debug: a line per job is for the journal (the unit runs at --log-level debug), not for
        // a terminal.
        logger.debug("job finished", metadata: ["tenant": "\(rt.name)", "job_id": "\(job.id)", "state": "\(state.rawValue)",
                                                "worker_pid": "\(rt.worker.map { "\($0.pid)" } ?? "-")"])
        var done = job
        done.state = state
        done.finishedAt = now
        done.result = result
        pendingFinishes.append(Store.Finished(id: job.id, state: state, result: result, startedAt: job.startedAt, finishedAt: now))
        if let callbacks = waiters.removeValue(forKey: job.id) { pendingNotifications.append((callbacks, done.view)) }
        scheduleFlush()
    }

    func workerMisbehaved(_ w: WorkerHandle, _ what: String) {
        guard w.misbehaviour == nil else { return }
        w.misbehaviour = what
        logger.error("worker misbehaved, killing it", metadata: ["tenant": "\(w.tenant)", "worker_pid": "\(w.pid)", "what": "\(what)"])
        kill(w.pid, SIGKILL)
        w.channel?.close(promise: nil)
    }

    /// The worker's socket closed: it exited (or is about to). Reap it, then decide.
    func workerChannelClosed(_ w: WorkerHandle) {
        guard !w.exited else { return }
        w.exited = true
        w.idleTimer?.cancel(); w.idleTimer = nil
        reap(w, attempt: 0)
    }

    private func reap(_ w: WorkerHandle, attempt: Int) {
        var status: Int32 = 0
        var usage = rusage()
        let r = cp_wait4(w.pid, &status, WNOHANG, &usage)
        if r == 0 {
            // Socket closed but the process lingers: give it 2 s, then SIGKILL.
            if attempt == 200 { kill(w.pid, SIGKILL) }
            loop.scheduleTask(in: .milliseconds(10)) { [self] in reap(w, attempt: attempt + 1) }
            return
        }
        workerExited(w, how: r < 0 ? "could not be reaped (\(errnoString(errno)))" : Self.describe(waitStatus: status))
    }

    /// How a process ended, in the words status and the logs use.
    static func describe(waitStatus status: Int32) -> String {
        cp_wifsignaled(status) != 0 ? "was killed by signal \(cp_wtermsig(status))" : "exited with status \(cp_wexitstatus(status))"
    }

    private func workerExited(_ w: WorkerHandle, how: String) {
        guard let rt = tenants[w.tenant], rt.worker === w else { return }
        sampleCPU(rt, now: Clock.monotonic(), force: true) // the last of this cgroup's CPU time
        rt.cgroupCPUSeen = nil
        rt.worker = nil
        removeCgroup(rt)
        let lost = w.inFlight.values.sorted { $0.createdAt < $1.createdAt }
        w.inFlight.removeAll()
        router.ended(lost.count)
        if w.exitExpected && w.misbehaviour == nil {
            logger.info("worker stopped", metadata: ["tenant": "\(rt.name)", "worker_pid": "\(w.pid)"])
            // Shutdown: jobs it still ran stay `running` in the store and run again next start.
            if draining { checkDrained(); return }
        } else {
            let reason = w.misbehaviour.map { "worker misbehaved (\($0))" } ?? w.setupFailure ?? "worker \(how)"
            rt.lastError = reason
            logger.error("worker died", metadata: ["tenant": "\(rt.name)", "worker_pid": "\(w.pid)", "reason": "\(reason)", "jobs_in_flight": "\(lost.count)"])
            if w.isReady { rt.restarts += 1 } else { rt.consecutiveStartFailures += 1 }
            let now = Clock.monotonic()
            rt.recentCrashes = rt.recentCrashes.filter { now - $0 < 60 } + [now]
            // Jobs it was running: canceled ones end canceled; the others run again while they
            // have attempts left, else end with worker_crashed.
            for job in lost.reversed() {
                if rt.cancelRequested.remove(job.id) != nil {
                    finish(job, rt, state: .canceled, result: JobResult(signal: SIGKILL))
                } else if !w.isReady {
                    // Sent to a worker that never finished its setup: the job never started.
                    var again = job
                    again.state = .queued; again.startedAt = nil
                    rt.queue.pushFront(again)
                    router.accepted(rt)
                } else if job.attempt < config.maxAttempts && !draining {
                    var again = job
                    again.state = .queued; again.startedAt = nil; again.attempt += 1
                    try? store.requeue(id: job.id)
                    rt.queue.pushFront(again)
                    router.accepted(rt)
                } else {
                    finish(job, rt, state: .failed, result: JobResult(error: ProtocolError(.workerCrashed, "\(reason) while running this job (attempt \(job.attempt) of \(config.maxAttempts))")))
                }
            }
            if draining { checkDrained(); return }
            if rt.consecutiveStartFailures >= 3 {
                // The worker cannot start at all: fail what waits instead of retrying forever.
                let failed = rt.queue.removeAll()
                router.removedQueued(rt, count: failed.count)
                for job in failed {
                    finish(job, rt, state: .failed, result: JobResult(error: ProtocolError(.workerCrashed, "the tenant's worker cannot start: \(reason)")))
                }
                rt.consecutiveStartFailures = 0
                return
            }
        }
        guard !rt.queue.isEmpty else { return }
        // Back off when it keeps crashing: 0, 100 ms, 200 ms, ... up to 5 s.
        let crashes = rt.recentCrashes.count
        let delay = w.exitExpected ? 0 : min(5000, crashes <= 1 ? 0 : 100 << min(crashes - 2, 6))
        if delay == 0 { dispatch(rt); return }
        rt.respawnPending = true
        loop.scheduleTask(in: .milliseconds(Int64(delay))) { [self] in
            rt.respawnPending = false
            dispatch(rt)
        }
    }

    // MARK: Spare workers

    /// Workers cloned ahead of need (namespaces made, runtime started), waiting for a tenant's
    /// configure frame: a new tenant's first job skips the clone and exec (--prespawn).
    private var spares: [WorkerSpawner.Spawned] = []

    private var refilling = false
    var prespawnTarget: Int { config.prespawnWorkers ?? (cgroups == nil ? 2 : 0) }
    /// One long-lived thread clones spares, off the event loop (a clone and exec take ~1-2 ms,
    /// which a new tenant's first job must not wait for). Long-lived because PR_SET_PDEATHSIG
    /// fires when the spawning thread exits.
    private let spawnThread: NIOThreadPool = {
        let pool = NIOThreadPool(numberOfThreads: 1)
        pool.start()
        return pool
    }()

    func refillSpares() {
        guard !draining, !refilling, spares.count < prespawnTarget else { return }
        refilling = true
        let path = workerPath, sandboxed = sandboxEnabled, cgroups = cgroups
        spawnThread.runIfActive(eventLoop: loop) { () throws -> WorkerSpawner.Spawned in
            // Cloned straight into a cgroup node of its own (no migration later).
            let leaf = try cgroups?.leafForSpare()
            defer { if let leaf { close(leaf.fd) } }
            var spare = try WorkerSpawner.spawn(workerPath: path, tenant: nil, workspace: nil, sandboxed: sandboxed, cgroupFD: leaf?.fd ?? -1)
            spare.cgroupNode = leaf?.node
            return spare
        }.whenComplete { [self] result in
            refilling = false
            switch result {
            case .success(let spare):
                spares.append(spare)
                if draining { killSpares() } else { refillSpares() }
            case .failure(let error):
                logger.error("cannot start a spare worker", metadata: ["error": "\(error)"])
            }
        }
    }

    /// Network namespaces made ahead of need by the spawn thread (NetnsPool).
    let netnsPool = NetnsPool(target: 2)
    private var netnsRefilling = false

    func refillNetns() {
        guard sandboxEnabled, !draining, !netnsRefilling, netnsPool.count < netnsPool.target else { return }
        netnsRefilling = true
        let pool = netnsPool
        spawnThread.runIfActive(eventLoop: loop) { pool.refill() }.whenComplete { [self] result in
            netnsRefilling = false
            if case .success(let e?) = result {
                logger.warning("cannot make network namespaces ahead of need; workers make their own", metadata: ["errno": "\(e)"])
            }
        }
    }

    /// Stops the spawning thread (at exit, after the spares are gone).
    func stopSpawnThread() {
        try? spawnThread.syncShutdownGracefully()
        netnsPool.drain()
    }

    /// A live spare, if there is one; the pool refills after this tick.
    private func takeSpare() -> WorkerSpawner.Spawned? {
        while let spare = spares.popLast() {
            var status: Int32 = 0
            var usage = rusage()
            if cp_wait4(spare.pid, &status, WNOHANG, &usage) == 0 {
                refillSpares()
                return spare
            }
            close(spare.socketFD) // it died while waiting
            if let node = spare.cgroupNode { cgroups?.removeSpare(node) }
        }
        return nil
    }

    private func killSpares() {
        for spare in spares {
            kill(spare.pid, SIGKILL)
            var status: Int32 = 0
            var usage = rusage()
            _ = cp_wait4(spare.pid, &status, 0, &usage)
            close(spare.socketFD)
            if let node = spare.cgroupNode { cgroups?.removeSpare(node) }
        }
        spares.removeAll()
    }

    /// Kills what is left in the tenant's cgroup and removes it; a new worker for the tenant waits
    /// until it is gone (a late removal must not kill the next worker).
    private func removeCgroup(_ rt: TenantRuntime, attempt: Int = 0) {
        guard let cgroups else { return }
        rt.cgroupCleanupPending = true
        if cgroups.tryRemove(tenant: rt.name) || attempt >= 300 {
            if attempt >= 300 { logger.error("tenant cgroup still populated after 3 s; leaving it", metadata: ["tenant": "\(rt.name)"]) }
            rt.cgroupCleanupPending = false
            if !draining && !rt.queue.isEmpty && rt.worker == nil && !rt.respawnPending { dispatch(rt) }
            if draining { checkDrained() }
            return
        }
        loop.scheduleTask(in: .milliseconds(10)) { [self] in removeCgroup(rt, attempt: attempt + 1) }
    }

    private func workerStartFailed(_ rt: TenantRuntime, _ reason: String) {
        rt.lastError = reason
        rt.consecutiveStartFailures += 1
        logger.error("worker could not start", metadata: ["tenant": "\(rt.name)", "reason": "\(reason)"])
        if rt.consecutiveStartFailures >= 3 {
            let failed = rt.queue.removeAll()
            router.removedQueued(rt, count: failed.count)
            for job in failed {
                finish(job, rt, state: .failed, result: JobResult(error: ProtocolError(.workerCrashed, "the tenant's worker cannot start: \(reason)")))
            }
            rt.consecutiveStartFailures = 0
            return
        }
        rt.respawnPending = true
        loop.scheduleTask(in: .milliseconds(100 << Int64(rt.consecutiveStartFailures))) { [self] in
            rt.respawnPending = false
            dispatch(rt)
        }
    }

    // MARK: - Policies (explain, reload, set-quota)

    private func explain(_ tenant: String, _ argv: [String], _ env: [SubmitRequest.EnvVar], _ cwd: String?, _ r: Responder) throws {
        let name = try validName(tenant)
        try authorize(r, .submit(tenant: name.value), request: "policy.explain")
        let rt = try runtime(tenant)
        let decision = decideTool(argv: argv, env: env.map { ($0.name, $0.value) }, cwd: cwd ?? CommandPath.defaultCwd,
                                  limits: rt.limits, isExecutable: PolicyRuntime.isExecutableInSandbox)
        var o = JSONObjectBuilder()
        o.set("tenant", .string(rt.name.value))
        o.set("tier", .string(policies.effectiveTier(tenant: rt.name.value, assigned: Tier(rawValue: rt.record.tier) ?? .free).rawValue))
        o.set("argv", .array(argv.map(JSONValue.string)))
        o.set("decision", decision.json)
        let prov = policies.provenance(tenant: rt.name.value, tier: Tier(rawValue: rt.record.tier) ?? .free)
        o.set("sources", .object(["commands_allow", "commands_deny", "env_allow", "tier"].compactMap { k in prov[k].map { (k, .string($0)) } }))
        o.set("policies", policySourceDescription)
        r.reply("explain", [("explain", o.value)])
    }

    private var policySourceDescription: JSONValue {
        switch policies.source {
        case .directory(let d): .string(d)
        case .embedded: .string("embedded defaults")
        }
    }

    private func policySummary() -> JSONValue {
        var o = JSONObjectBuilder()
        o.set("source", policySourceDescription)
        o.set("tenant_overrides", policies.tenantOverrides.count)
        o.set("quota_overrides", policies.quotaOverrides.count)
        o.set("seccomp_profiles", .array(policies.seccompProfiles.keys.sorted().map(JSONValue.string)))
        o.set("access_rules", policies.access.ruleCount)
        return o.value
    }

    /// Loads the policies again (SIGHUP, `clawpen policy reload`, after set-quota). A set that
    /// does not load or compile leaves the running one in place, and says why. New limits apply
    /// to the router at once and to tenant cgroups that exist; a worker's sandbox (seccomp,
    /// network, /tmp) changes when the worker next starts.
    func reloadPolicies(caller: Responder?) throws {
        onReload?(true)
        defer { onReload?(false) }
        let next: PolicySet
        let programs: [String: [UInt8]]
        do {
            next = try PolicyRuntime.load(config)
            programs = try PolicyRuntime.compileSeccomp(next)
        } catch {
            audit(tenant: nil, caller: caller, action: "policy.reload.failed", rule: nil, detail: "\(error)")
            logger.error("policy reload failed; keeping the old policy", metadata: ["error": "\(error)"])
            throw ProtocolError(.invalidRequest, "policy reload failed, the old policy stays in force: \(error)")
        }
        policies = next
        seccompPrograms = programs
        callers.forget()
        let now = Clock.monotonic()
        for rt in tenants.values {
            rt.limits = limits(for: rt.record)
            rt.rate.setRate(rt.limits.jobsPerMinute, now: now)
            if rt.worker != nil, let cgroups { rt.cgroupEnforced = cgroups.applyLimits(rt.name, rt.limits) }
            if rt.worker != nil { do { try diskQuotas.apply(tenant: rt.name, projectID: rt.record.uid, limits: rt.limits) } catch { logger.error("\(error)", metadata: ["tenant": "\(rt.name)"]) } }
        }
        audit(tenant: nil, caller: caller, action: "policy.reload", rule: "operator", detail: "\(policySummary().text)")
        logger.notice("policies reloaded", metadata: ["policies": "\(policySourceDescription.stringValue ?? "")"])
        for rt in tenants.values where !rt.queue.isEmpty { router.wake(rt) }
        pump()
    }

    private func setQuota(_ rawName: String, _ changes: [QuotaChange], _ r: Responder) throws {
        let rt = try runtime(rawName)
        var values: [String: TOMLValue] = [:]
        for c in changes {
            switch c.value {
            case .int(let i): values[c.key] = .integer(i)
            case .double(let d): values[c.key] = .float(d)
            case .string(let s): values[c.key] = QuotaOverrides.value(forKey: c.key, argument: s)
            default: throw ProtocolError(.invalidRequest, "tenant.set_quota: the value of \(c.key) must be a number or a string")
            }
        }
        do {
            try QuotaOverrides.write(tenant: rt.name.value, changes: values, directory: PolicyRuntime.quotaDirectory(config), policies: policies)
        } catch {
            throw ProtocolError(.invalidRequest, "set-quota refused: \(error)")
        }
        let detail = changes.map { "\($0.key)=\($0.value.text)" }.joined(separator: " ")
        audit(tenant: rt.name.value, caller: r, action: "tenant.set_quota", rule: "operator", detail: detail)
        try reloadPolicies(caller: r)
        var lim = JSONObjectBuilder()
        let prov = policies.provenance(tenant: rt.name.value, tier: Tier(rawValue: rt.record.tier) ?? .free)
        for key in changes.map(\.key) { lim.set(key, prov[key]) }
        r.reply("tenant", [("tenant", view(rt).json), ("file", .string(QuotaOverrides.path(tenant: rt.name.value, directory: PolicyRuntime.quotaDirectory(config)))),
                           ("sources", lim.value)])
    }

    // MARK: - Status

    private func status(tenant: String?) throws -> JSONValue {
        let selected: [TenantRuntime]
        if let tenant { selected = [try runtime(tenant)] } else { selected = tenants.keys.sorted().map { tenants[$0]! } }
        var sup = JSONObjectBuilder()
        sup.set("pid", Int(getpid()))
        sup.set("uptime_s", ((Clock.monotonic() - startedAt) * 1000).rounded() / 1000)
        sup.set("version", .string(ClawpenVersion.string))
        var cg = JSONObjectBuilder()
        cg.set("mode", .string(cgroup.mode.rawValue))
        cg.set("path", cgroup.path)
        cg.set("controllers", .array(cgroup.controllers.map(JSONValue.string)))
        cg.set("tenants_base", cgroups?.base)
        cg.set("enabled_controllers", .array((cgroups?.controllers.sorted() ?? []).map(JSONValue.string)))
        sup.set("cgroup", cg.value)
        sup.set("socket", .string(config.socketPath))
        switch policies.source {
        case .directory(let d): sup.set("policies", .string(d))
        case .embedded: sup.set("policies", .string("embedded defaults"))
        }
        sup.set("draining", draining)
        sup.set("sandbox", .string(sandboxEnabled
            ? "namespaces (mount, pid, ipc, uts, net, cgroup), pivot_root to the workspace, tenant uid, no capabilities, no_new_privs, seccomp"
            : "off: the supervisor is not root, so jobs run unsandboxed with its identity"))
        sup.set("landlock_abi", HostEnforcement.landlockABI)
        sup.set("warnings", .array(HostEnforcement.warnings(controllers: cgroups?.controllers ?? [], sandboxed: sandboxEnabled,
                                                            disk: diskQuotas.support).map(JSONValue.string)))
        sup.set("tenant_count", tenants.count)
        sup.set("workers", tenants.values.filter { $0.worker != nil }.count)
        sup.set("spare_workers", spares.count)
        if sandboxEnabled {
            sup.set("worker_mounts", .string(workerMountsFallback.map { "fallback: " + $0 }
                ?? "the supervisor builds each new worker's mounts (all but /proc) while the worker starts"))
        }
        var router = JSONObjectBuilder()
        router.set("dispatch", .string(self.router.mode.rawValue))
        router.set("max_running", self.router.maxRunning)
        router.set("reserved_slots", self.router.reserve)
        router.set("running", self.router.running)
        router.set("queued", tenants.values.reduce(0) { $0 + $1.queue.count })
        sup.set("router", router.value)
        let now = Clock.monotonic()
        let list: [JSONValue] = selected.map { rt in
            var o = JSONObjectBuilder()
            o.set("tenant", .string(rt.name.value))
            o.set("tier", .string(rt.record.tier))
            o.set("state", .string(rt.state.rawValue))
            o.set("worker_pid", rt.worker.map { Int($0.pid) })
            o.set("uptime_s", rt.worker.map { ((now - $0.startedAt) * 1000).rounded() / 1000 })
            o.set("restarts", rt.restarts)
            let c = rt.finishedCounts
            var jobs = JSONObjectBuilder()
            jobs.set("queued", rt.queue.count)
            jobs.set("running", rt.runningCount)
            jobs.set("succeeded", c[.succeeded] ?? 0)
            // "failed" counts every unsuccessful end but a cancel; the kinds follow.
            let unsuccessful: [JobState] = [.failed, .timedOut, .oomKilled, .killed]
            jobs.set("failed", unsuccessful.reduce(0) { $0 + (c[$1] ?? 0) })
            jobs.set("timed_out", c[.timedOut] ?? 0)
            jobs.set("oom_killed", c[.oomKilled] ?? 0)
            jobs.set("killed", c[.killed] ?? 0)
            jobs.set("canceled", c[.canceled] ?? 0)
            jobs.set("rejected", c[.rejected] ?? 0)
            o.set("jobs", jobs.value)
            // While the worker lives, the limits are read back from its cgroup (what the kernel
            // holds), else they are the policy's.
            let inForce = rt.worker != nil ? cgroups?.limitsInForce(rt.name, rt.limits) : nil
            var lim = JSONObjectBuilder()
            lim.set("memory_max", inForce?.memoryMax ?? Int64(rt.limits.memoryMaxBytes))
            lim.set("pids_max", inForce?.pidsMax.map(Int.init) ?? rt.limits.pidsMax)
            lim.set("cpu_max", .string(inForce?.cpuMax ?? rt.limits.cpuMaxCgroupString))
            lim.set("disk_max", rt.limits.diskMaxBytes)
            lim.set("inodes_max", rt.limits.inodesMax)
            lim.set("max_concurrent_runs", rt.limits.maxConcurrentRuns)
            lim.set("timeout_max_s", rt.limits.timeoutMaxSeconds)
            lim.set("output_max_bytes", rt.limits.outputMaxBytes)
            lim.set("max_queued", rt.limits.maxQueued)
            lim.set("jobs_per_minute", rt.limits.jobsPerMinute)
            lim.set("cpu_seconds_per_hour", rt.limits.cpuSecondsPerHour)
            lim.set("weight", rt.limits.cpuWeight)
            o.set("limits", lim.value)
            // Where the tenant stands against its router quotas.
            sampleCPU(rt, now: now)
            var q = JSONObjectBuilder()
            q.set("queued", rt.queue.count + rt.pendingAccepts)
            q.set("running", rt.runningCount)
            q.set("jobs_per_minute_available", rt.rate.available(now: now))
            q.set("cpu_seconds_last_hour", (Double(rt.cpu.usedMicros(now: now)) / 1000).rounded() / 1000)
            q.set("cpu_measured_by", .string(rt.cgroupCPUSeen != nil ? "cgroup" : "rusage"))
            o.set("quotas", q.value)
            // Submits refused since the daemon started, by quota or rule kind: who is in trouble.
            o.set("refused", .object(rt.refusals.sorted { $0.key < $1.key }.map { ($0.key, .int(Int64($0.value))) }))
            // Read from the tenant's cgroup while it has one; null when there is nothing to read.
            var usage = JSONObjectBuilder()
            let live = rt.worker != nil
            usage.set("memory_current", live ? cgroups?.memoryCurrent(rt.name) : nil)
            usage.set("pids_current", live ? cgroups?.pidsCurrent(rt.name) : nil)
            usage.set("cpu_usec", live ? cgroups?.cpuUsageMicros(rt.name) : nil)
            let disk = diskQuotas.read(tenant: rt.name, projectID: rt.record.uid)
            usage.set("disk_bytes", disk.map { Int64($0.bytesUsed) })
            usage.set("disk_inodes", disk.map { Int64($0.inodesUsed) })
            o.set("usage", usage.value)
            // What holds right now: without cgroup controllers, RLIMIT_AS per job (memory) and
            // RLIMIT_NPROC on the tenant's uid (pids) in the sandbox; nothing limits cpu.max.
            var enf = JSONObjectBuilder()
            func how(_ limit: String, fallback: Bool) -> JSONValue {
                // cgroup only when the tenant's cgroup file holds the policy's value right now (or,
                // with no worker, when the controller is there to hold it at the next start).
                if let inForce { if inForce.enforced.contains(limit) { return .string("cgroup") } }
                else if rt.worker == nil && cgroups?.controllers.contains(limit) == true { return .string("cgroup") }
                // The rlimit fallback is planned only where the controller is missing.
                let controller = cgroups?.controllers.contains(limit) == true
                // Memory's fallback is RLIMIT_AS per job process: not a limit of the tenant.
                return .string(fallback && sandboxEnabled && !controller ? (limit == "memory" ? "per-process-rlimit" : "rlimit") : "none")
            }
            enf.set("memory", how("memory", fallback: true))
            enf.set("pids", how("pids", fallback: true))
            enf.set("cpu", how("cpu", fallback: false))
            enf.set("seccomp", .string(sandboxEnabled && seccompPrograms[rt.limits.seccompProfile] != nil ? rt.limits.seccompProfile : "none"))
            enf.set("job_isolation", .string(HostEnforcement.jobIsolation(sandboxed: sandboxEnabled)))
            enf.set("disk", .string(sandboxEnabled ? diskQuotas.enforcement : "none"))
            enf.set("timeout", .string("worker"))
            enf.set("output", .string("worker"))
            o.set("enforcement", enf.value)
            o.set("last_error", rt.lastError)
            return o.value
        }
        return .object([("supervisor", sup.value), ("tenants", .array(list))])
    }

    // MARK: - Shutdown

    /// Stops dispatching, lets running jobs finish up to the grace period, stops every worker,
    /// then calls `completion`. Queued jobs stay queued in the store for the next start.
    func beginShutdown(_ completion: @escaping () -> Void) {
        loop.preconditionInEventLoop()
        guard !draining else { return }
        draining = true
        shutdownCompletion = completion
        let running = tenants.values.reduce(0) { $0 + $1.runningCount }
        logger.notice("shutting down", metadata: ["running": "\(running)", "grace_s": "\(config.shutdownGraceSeconds)"])
        graceTimer = loop.scheduleTask(in: .milliseconds(Int64(config.shutdownGraceSeconds * 1000))) { [self] in
            logger.warning("grace period over; killing jobs still running (they run again at the next start)")
            stopWorkers()
        }
        checkDrained()
    }

    private func checkDrained() {
        guard draining else { return }
        if !stoppingWorkers {
            if tenants.values.allSatisfy({ $0.runningCount == 0 }) { stopWorkers() }
            return
        }
        if tenants.values.allSatisfy({ $0.worker == nil && !$0.cgroupCleanupPending }) {
            graceTimer?.cancel()
            flushWrites()
            // Whoever still waits hears why: the job itself is safe in the store.
            let pending = waiters
            waiters.removeAll()
            for (id, callbacks) in pending {
                for cb in callbacks {
                    cb(.failure(ProtocolError(.unavailable, "the daemon is shutting down; job \(id) is kept and runs (again) at the next start: ask with `clawpen job wait \(id)` then")))
                }
            }
            let done = shutdownCompletion
            shutdownCompletion = nil
            done?()
        }
    }

    private func stopWorkers() {
        guard !stoppingWorkers else { return }
        stoppingWorkers = true
        killSpares()
        for rt in tenants.values {
            guard let w = rt.worker else { continue }
            w.exitExpected = true
            if w.channel != nil { send(.shutdown, to: w) } else { kill(w.pid, SIGKILL) }
            // A worker that does not go within 3 s is killed.
            loop.scheduleTask(in: .seconds(3)) { if !w.exited { kill(w.pid, SIGKILL) } }
        }
        checkDrained()
    }
}
