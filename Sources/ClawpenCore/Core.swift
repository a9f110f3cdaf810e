import ClawpenPolicy
import ClawpenProtocol
import ClawpenStore
import ClawpenWire

/// The two clocks the core reads: monotonic seconds (timeouts, back-off, rates) and wall-clock
/// seconds (what records and the audit keep). Tests give it a fake one.
public protocol CoreClock {
    func monotonic() -> Double
    func wall() -> Double
}

/// What the core reads of the tenants' cgroups (nil: nothing to read).
public protocol ResourceProbe {
    func cpuUsageMicros(_ tenant: TenantName) -> Int64?
    func oomKills(_ tenant: TenantName) -> Int64?
    /// CPU a running job's processes have used so far (its cgroup), nil when it cannot be read.
    func jobCPUMicros(_ tenant: TenantName, jobID: String) -> Int64?
}

extension ResourceProbe {
    public func jobCPUMicros(_ tenant: TenantName, jobID: String) -> Int64? { nil }
}

/// The supervisor's decisions: tenants, their queues and workers, jobs from acceptance to their
/// final state. It takes events (a job accepted, a worker spawned, ready, reporting, gone, a
/// timer, an operator's command) and returns the actions that carry them out (spawn, send, kill,
/// arm a timer, record, audit). It does no I/O and reads no clock but `clock`, so every rule can be
/// driven by a test with a fake clock, without root, sockets or a daemon (Tests/ClawpenCoreTests).
///
/// Confined to one caller (the supervisor's event loop); not thread-safe.
public final class Core {
    public struct Config: Sendable {
        public var idleTimeoutMs: Int
        public var shutdownGraceMs: Int
        public var dispatchMode: DispatchMode
        public var maxRunning: Int
        public var reservedSlots: Int
        public init(idleTimeoutMs: Int, shutdownGraceMs: Int, dispatchMode: DispatchMode, maxRunning: Int, reservedSlots: Int) {
            self.idleTimeoutMs = idleTimeoutMs; self.shutdownGraceMs = shutdownGraceMs; self.dispatchMode = dispatchMode
            self.maxRunning = maxRunning; self.reservedSlots = reservedSlots
        }
    }

    public let config: Config
    let clock: CoreClock
    let probe: ResourceProbe
    public private(set) var tenants: [TenantName: TenantState] = [:]
    /// Chooses which tenant starts a job next under the global limit (Router.swift).
    let router: Router<TenantState>
    public internal(set) var draining = false
    private var stoppingWorkers = false
    /// Which tenant each live worker serves, by worker id.
    var workerTenants: [UInt64: TenantName] = [:]
    private var nextWorkerID: UInt64 = 1
    /// Jobs whose acceptance could not be committed, killed on their worker: their end is not recorded.
    private var withdrawn: Set<String> = []
    /// Actions of the event being handled.
    var out: [Action] = []
    /// The tree budget timer is armed (Trees.swift).
    var treeTimerArmed = false

    public init(config: Config, clock: CoreClock, probe: ResourceProbe) {
        self.config = config; self.clock = clock; self.probe = probe
        self.router = Router(mode: config.dispatchMode, maxRunning: config.maxRunning, reserve: config.reservedSlots)
    }

    /// Default global limit: 4 running jobs per online core (jobs of agents mostly wait).
    public static func defaultMaxRunning(cores: Int) -> Int { Router<TenantState>.defaultMaxRunning(cores: cores) }
    /// Default reserve: a quarter of the slots, at least one.
    public static func defaultReserve(maxRunning: Int) -> Int { Router<TenantState>.defaultReserve(maxRunning: maxRunning) }

    // MARK: Router facts for status

    public var dispatchMode: DispatchMode { router.mode }
    public var maxRunning: Int { router.maxRunning }
    public var reservedSlots: Int { router.reserve }
    public var running: Int { router.running }

    // MARK: Tenants

    /// Adds a tenant (at start-up, or `tenant create`); `finished` its stored counts.
    @discardableResult
    public func addTenant(_ record: TenantRecord, name: TenantName, limits: TierLimits, finished: [JobState: Int] = [:]) -> TenantState {
        let t = TenantState(record: record, name: name, limits: limits, now: clock.monotonic())
        t.finishedCounts = finished
        tenants[name] = t
        return t
    }

    /// Offboarding's last step (Offboarding.swift).
    func removeTenantState(_ name: TenantName) { tenants[name] = nil }

    /// Jobs a previous run left queued or running go back to their tenants' queues.
    public func recover(_ jobs: [JobRecord]) -> [Action] {
        let orphans = rejoinTrees(jobs)
        for job in jobs {
            guard let t = tenants[job.tenant] else { continue }
            if orphans.contains(job.id) {
                finish(
                    job, t, state: .canceled,
                    result: JobResult(error: Self.treeCancel("tree_root_ended", "canceled: its tree's root \(job.treeRoot) had ended")))
                continue
            }
            t.enqueue(job, router)
        }
        for t in tenants.values where !t.queue.isEmpty { dispatch(t) }
        return take()
    }

    /// The policies changed: new limits for every tenant, at once for the router and for the
    /// cgroups of running workers.
    public func limitsChanged(_ limits: (TenantState) -> TierLimits) -> [Action] {
        let now = clock.monotonic()
        for t in tenants.values {
            t.limits = limits(t)
            t.rate.setRate(t.limits.jobsPerMinute, now: now)
            if t.lifecycle.worker != nil { out.append(.applyLimits(t.name)) }
        }
        for t in tenants.values where !t.queue.isEmpty { router.wake(t) }
        pump()
        return take()
    }

    // MARK: Jobs

    /// Jobs whose acceptance is committed: they join their queues and start where they can.
    /// (The shell hands them over before the commit's fsync, so that it overlaps their start.)
    public func accepted(_ jobs: [JobRecord]) -> [Action] {
        var touched: [TenantName: TenantState] = [:]
        for job in jobs {
            guard let t = tenants[job.tenant] else { continue }
            t.pendingAccepts = max(0, t.pendingAccepts - 1)
            t.pendingBytes = max(0, t.pendingBytes - job.stdin.count)
            guard joinTree(job, t) else { continue }
            t.enqueue(job, router)
            touched[t.name] = t
        }
        for t in touched.values { dispatch(t) }
        return take()
    }

    /// Accepted jobs whose commit failed: out of the queue, or killed on their worker (their end
    /// is then not recorded).
    public func withdraw(_ jobs: [JobRecord]) -> [Action] {
        for job in jobs {
            guard let t = tenants[job.tenant] else { continue }
            unreserveInTree(job, t)
            if t.takeQueued(id: job.id, router) != nil { continue }
            if let w = t.lifecycle.worker, t.inFlight[job.id] != nil {
                withdrawn.insert(job.id)
                out.append(.send(w, .cancel(jobID: job.id)))
            }
        }
        return take()
    }

    /// The job as it runs now, if it is on a worker.
    public func runningJob(_ id: String, tenant: TenantName) -> JobRecord? { tenants[tenant]?.inFlight[id] }

    public enum CancelOutcome: Equatable, Sendable {
        /// Not queued and not running here: its stored state is the answer.
        case notActive
        /// It was queued: it ended canceled (see the `finished` action).
        case canceledQueued
        /// It runs: the worker was told to kill it; its end follows.
        case cancelSent
    }

    public func cancel(_ id: String, tenant: TenantName) -> (CancelOutcome, [Action]) {
        guard let t = tenants[tenant] else { return (.notActive, []) }
        // Canceling a job cancels everything below it in its tree first.
        if let root = (t.inFlight[id] ?? t.queue.first(where: { $0.id == id }))?.treeRoot {
            cancelDescendants(of: id, root: root, t)
        }
        if let job = t.takeQueued(id: id, router) {
            finish(job, t, state: .canceled, result: JobResult(error: nil))
            return (.canceledQueued, take())
        }
        if let w = t.lifecycle.worker, t.inFlight[id] != nil {
            t.cancelRequested.insert(id)
            out.append(.send(w, .cancel(jobID: id)))
            return (.cancelSent, take())
        }
        return (.notActive, [])
    }

    // MARK: Workers

    /// The shell started the worker `spawnWorker` asked for.
    public func workerSpawned(_ tenant: TenantName, pid: Int32) -> WorkerRef {
        let w = WorkerRef(id: nextWorkerID, pid: pid)
        nextWorkerID += 1
        workerTenants[w.id] = tenant
        if let t = tenants[tenant] {
            t.lifecycle.spawned(w)
            t.oomKillsSeen = probe.oomKills(tenant) ?? 0
            t.cgroupCPUSeen = probe.cpuUsageMicros(tenant)
            t.lastCPUSample = clock.monotonic()
        }
        return w
    }

    /// The start `spawnWorker` asked for failed before the worker ran (the shell cleaned up).
    public func workerStartFailed(_ tenant: TenantName, _ failure: WorkerFailure) -> [Action] {
        guard let t = tenants[tenant], t.lifecycle.phase == .spawning else { return [] }
        out.append(.log(LogLine(.error, "worker could not start", [("tenant", tenant.value), ("reason", "\(failure)")])))
        let (newly, actions) = t.lifecycle.startFailed(failure, now: clock.monotonic(), rule: t.limits.crashLoopRule)
        out += actions
        if t.lifecycle.quarantine != nil { quarantined(t, newly: newly) }
        if draining { checkDrained() } else { dispatch(t) }
        return take()
    }

    /// The worker's socket is registered: jobs may be sent behind its configure frame.
    public func workerAttached(_ w: WorkerRef) -> [Action] {
        guard let t = tenant(of: w), t.lifecycle.attached(w) else { return [] }
        if draining { out += t.lifecycle.stopForShutdown(now: clock.monotonic()) } else { dispatch(t) }
        return take()
    }

    public func workerReady(_ w: WorkerRef) -> [Action] {
        guard let t = tenant(of: w) else { return [] }
        switch t.lifecycle.ready(w, now: clock.monotonic()) {
        case .ready:
            dispatch(t)
        case .twice:
            out += t.lifecycle.misbehaved(w, "said ready twice")
        case .stale: break
        }
        return take()
    }

    public func workerSetupFailed(_ w: WorkerRef, _ failure: WorkerFailure) -> [Action] {
        guard let t = tenant(of: w) else { return [] }
        t.lifecycle.setupFailed(w, failure)
        out.append(.log(LogLine(.error, "worker setup failed", [("tenant", t.name.value), ("worker_pid", "\(w.pid)"), ("reason", "\(failure)")])))
        return take()
    }

    /// The worker says it started a job: only a job it was given.
    public func workerStarted(_ w: WorkerRef, jobID: String) -> [Action] {
        guard let t = tenant(of: w) else { return [] }
        if t.inFlight[jobID] == nil {
            out += t.lifecycle.misbehaved(w, "reported a start of job \(jobID.prefix(64)) it was not given")
        }
        return take()
    }

    public func workerMisbehaved(_ w: WorkerRef, _ what: String) -> [Action] {
        guard let t = tenant(of: w) else { return [] }
        return t.lifecycle.misbehaved(w, what)
    }

    /// A job's report: its final state, then whatever may start next.
    public func jobReported(_ w: WorkerRef, _ report: JobReport) -> [Action] {
        guard let t = tenant(of: w) else { return [] }
        guard let job = t.inFlight.removeValue(forKey: report.jobID) else {
            return t.lifecycle.misbehaved(w, "reported a result for job \(report.jobID.prefix(64)) it was not given")
        }
        t.cancelRequested.remove(job.id)
        releaseRunSlots(t, [job.id])
        var (state, result) = Outcome.map(report, job)
        // Canceled by a tree rule (a budget, an ancestor's cancel, the root's end): it says which.
        if let reason = t.cancelReasons.removeValue(forKey: job.id), state == .canceled { result.error = reason }
        if let ms = result.runMs { t.averageRunMs = 0.9 * t.averageRunMs + 0.1 * ms }
        // Without a cgroup to read, the CPU budget counts what the job's processes used.
        if t.cgroupCPUSeen == nil, let ms = result.cpuMs { t.cpu.record(micros: Int64(ms * 1000), now: clock.monotonic()) }
        // A SIGKILL (9) while the tenant's memory.events counted a new OOM kill: the kernel did it.
        if state == .killed, result.signal == 9, let kills = probe.oomKills(t.name), kills > t.oomKillsSeen {
            t.oomKillsSeen = kills
            state = .oomKilled
            result.error = ProtocolError(.oomKilled, "the job was killed for memory: the tenant's memory_max is \(t.limits.memoryMaxBytes) bytes")
        }
        finish(job, t, state: state, result: result)
        if draining { checkDrained() } else { dispatch(t) }
        return take()
    }

    /// The worker's process is gone (reaped). `how`: its exit status or signal.
    public func workerExited(_ w: WorkerRef, how: WorkerFailure) -> [Action] {
        guard let t = tenant(of: w) else { return [] }
        workerTenants[w.id] = nil
        let now = clock.monotonic()
        sampleCPU(t, now: now, force: true) // the last of this cgroup's CPU time
        t.cgroupCPUSeen = nil
        if let id = t.idleTimerFor { out.append(.cancel(.idle(t.name, worker: id))); t.idleTimerFor = nil }
        out.append(.cancel(.stopDeadline(t.name, worker: w.id)))
        let lost = t.inFlight.values.sorted { $0.createdAt < $1.createdAt }
        t.inFlight.removeAll()
        releaseRunSlots(t, lost.map(\.id))
        t.cancelReasons.removeAll()
        let verdict = t.lifecycle.exited(w, how: how, now: now, rule: t.limits.crashLoopRule)
        switch verdict {
        case .stale: break
        case .expected:
            out.append(.log(LogLine(.info, "worker stopped", [("tenant", t.name.value), ("worker_pid", "\(w.pid)")])))
            // Shutdown: jobs it still ran stay `running` in the store and run again next start.
            for job in lost where !draining { t.requeueFront(job, router) }
        case .crashed(let failure, let wasReady, let newly):
            out.append(
                .log(
                    LogLine(
                        .error, "worker died",
                        [
                            ("tenant", t.name.value), ("worker_pid", "\(w.pid)"),
                            ("reason", "\(failure)"), ("jobs_in_flight", "\(lost.count)"),
                        ])))
            let rule = t.limits.crashLoopRule
            for job in lost.reversed() {
                let cancel = t.cancelRequested.remove(job.id) != nil
                switch CrashPolicy.decide(
                    job, workerWasReady: wasReady, cancelRequested: cancel, rule: rule,
                    quarantined: t.lifecycle.quarantine != nil, draining: draining, reason: "\(failure)")
                {
                case .canceled:
                    finish(job, t, state: .canceled, result: JobResult(signal: 9))
                case .requeueUnstarted:
                    var again = job
                    again.state = .queued; again.startedAt = nil
                    t.requeueFront(again, router)
                case .retry:
                    var again = job
                    again.state = .queued; again.startedAt = nil; again.attempt += 1
                    out.append(.requeued(jobID: job.id))
                    t.requeueFront(again, router)
                case .fail(let why):
                    finish(job, t, state: .failed, result: JobResult(error: ProtocolError(.workerCrashed, why)))
                }
            }
            if t.lifecycle.quarantine != nil { quarantined(t, newly: newly) }
        }
        t.cancelRequested.removeAll()
        // Last: the release may come back at once (no cgroup), and start the next worker.
        out.append(.releaseCgroup(t.name))
        return take()
    }

    /// The dead worker's cgroup is gone: the tenant may get a new worker (now or after its back-off).
    public func cgroupReleased(_ tenant: TenantName) -> [Action] {
        guard let t = tenants[tenant] else { return [] }
        out += t.lifecycle.released(now: clock.monotonic())
        if draining { checkDrained() } else { dispatch(t) }
        return take()
    }

    public func timerFired(_ timer: CoreTimer) -> [Action] {
        switch timer {
        case .idle(let name, let id):
            guard let t = tenants[name], t.idleTimerFor == id else { break }
            t.idleTimerFor = nil
            guard let w = t.lifecycle.worker, w.id == id, t.inFlight.isEmpty, t.queue.isEmpty, !t.hasFileOps, !draining else { break }
            out += t.lifecycle.idleTimeout(w)
        case .restart(let name):
            guard let t = tenants[name] else { break }
            t.lifecycle.restartTimerFired()
            dispatch(t)
        case .stopDeadline(let name, let id):
            guard let t = tenants[name], let w = t.lifecycle.worker, w.id == id else { break }
            out.append(.log(LogLine(.warning, "worker did not stop in time, killing it", [("tenant", name.value), ("worker_pid", "\(w.pid)")])))
            out.append(.killWorker(w))
        case .treeBudgets:
            checkTreeBudgets()
        case .shutdownGrace:
            guard draining else { break }
            out.append(.log(LogLine(.warning, "grace period over; killing jobs still running (they run again at the next start)")))
            stopWorkers()
        }
        return take()
    }

    // MARK: Operators

    /// `clawpen tenant suspend`: new submits are refused, queued jobs wait, the running worker
    /// and its jobs are frozen.
    public func suspend(_ tenant: TenantName, by: String) -> [Action] {
        guard let t = tenants[tenant] else { return [] }
        if let id = t.idleTimerFor { out.append(.cancel(.idle(t.name, worker: id))); t.idleTimerFor = nil }
        out += t.lifecycle.suspend(by: by, wall: clock.wall(), now: clock.monotonic())
        return take()
    }

    /// `clawpen tenant resume`: thaws a suspended tenant and lifts a quarantine.
    public func resume(_ tenant: TenantName) -> [Action] {
        guard let t = tenants[tenant] else { return [] }
        out += t.lifecycle.resume(now: clock.monotonic())
        dispatch(t)
        return take()
    }

    /// Stops dispatching, lets running jobs finish up to the grace period, stops every worker,
    /// then says `shutdownComplete`. Queued jobs stay queued in the store for the next start.
    public func beginShutdown() -> [Action] {
        guard !draining else { return [] }
        draining = true
        for t in tenants.values { failWaitingFileOps(t, ProtocolError(.unavailable, "the daemon is shutting down")) }
        let running = tenants.values.reduce(0) { $0 + $1.runningCount }
        out.append(.log(LogLine(.notice, "shutting down", [("running", "\(running)"), ("grace_ms", "\(config.shutdownGraceMs)")])))
        out.append(.arm(.shutdownGrace, afterMs: config.shutdownGraceMs))
        checkDrained()
        return take()
    }

    // MARK: Inside

    func tenant(of w: WorkerRef) -> TenantState? {
        guard let name = workerTenants[w.id], let t = tenants[name], t.lifecycle.worker == w else { return nil }
        return t
    }

    func take() -> [Action] {
        defer { out.removeAll(keepingCapacity: true) }
        return out
    }

    /// Something changed for `t` (a job arrived or ended, its worker came or went): start its
    /// worker if it has work and none, let the router know, and start what may start.
    func dispatch(_ t: TenantState) {
        guard !draining else { return }
        dispatchFileOps(t)
        if t.queue.isEmpty {
            armIdleTimerIfIdle(t)
        } else {
            out += t.lifecycle.needWorker(draining: draining)
            router.wake(t)
        }
        pump()
    }

    /// Starts jobs, across all tenants, while the router finds free slots and tenants with room.
    private func pump() {
        guard !draining else { return }
        var written: [WorkerRef] = []
        let now = clock.wall()
        router.pump(
            canStart: { t in
                guard !t.queue.isEmpty, t.lifecycle.dispatchTarget != nil else { return false }
                // A job that waits for one of its tree lends its slot (Trees.swift).
                return t.inFlight.count - t.lentSlots.count < t.limits.maxConcurrentRuns
            },
            start: { t in
                guard let w = t.lifecycle.dispatchTarget, let job = t.startNext(now: now) else { return }
                if let id = t.idleTimerFor { out.append(.cancel(.idle(t.name, worker: id))); t.idleTimerFor = nil }
                let run = RunRequest(
                    jobID: job.id, argv: job.argv, env: Self.environment(of: job),
                    cwd: job.cwd, stdin: job.stdin,
                    timeoutMs: UInt32(min(job.timeoutSeconds * 1000, Double(UInt32.max - 1))),
                    outputCapBytes: UInt32(job.outputCap), options: job.options)
                out.append(.send(w, .run(run)))
                if !written.contains(w) { written.append(w) }
            })
        for w in written { out.append(.flush(w)) }
    }

    /// The job's environment as the worker sets it: what the request set, then `TRACEPARENT`
    /// (the job as a child span of its trace, its span id from its own id), which wins over a
    /// TRACEPARENT in the request's env.
    static func environment(of job: JobRecord) -> [String] {
        var env = job.env.filter { $0.name != "TRACEPARENT" }.map { "\($0.name)=\($0.value)" }
        if let trace = job.trace { env.append("TRACEPARENT=" + trace.child(spanID: TraceContext.spanID(forJob: job.id)).traceparent) }
        return env
    }

    func armIdleTimerIfIdle(_ t: TenantState) {
        guard case .ready(let w, _) = t.lifecycle.phase, t.lifecycle.suspension == nil, t.inFlight.isEmpty, t.queue.isEmpty, !t.hasFileOps,
            t.idleTimerFor == nil
        else { return }
        t.idleTimerFor = w.id
        out.append(.arm(.idle(t.name, worker: w.id), afterMs: config.idleTimeoutMs))
    }

    /// The crash-loop rule tripped: what waits fails now rather than wait for a worker that
    /// keeps dying; new submits are refused until the back-off is over (Admission).
    private func quarantined(_ t: TenantState, newly: Bool) {
        guard let q = t.lifecycle.quarantine else { return }
        if newly {
            out.append(.log(LogLine(.error, "tenant quarantined", [("tenant", t.name.value), ("reason", q.reason)])))
            out.append(
                .audit(
                    AuditEvent(
                        at: clock.wall(), tenant: t.name.value, callerUID: nil, action: "tenant.quarantined",
                        rule: "crash_loop_max", detail: q.reason)))
        }
        let what = t.lifecycle.restarts == 0 ? "its worker cannot start" : "its worker keeps dying"
        failWaitingFileOps(t, ProtocolError(.unavailable, "the tenant is quarantined, \(what): \(q.reason)", details: ["rule": .string("crash_loop_max")]))
        for job in t.takeAllQueued(router) {
            finish(
                job, t, state: .failed,
                result: JobResult(
                    error: ProtocolError(
                        .workerCrashed, "the tenant is quarantined, \(what): \(q.reason)")))
        }
    }

    /// Records a final state, counts it, and tells the shell (which records it and answers
    /// whoever waits once it is written).
    func finish(_ job: JobRecord, _ t: TenantState, state: JobState, result: JobResult) {
        if withdrawn.remove(job.id) != nil { return } // never accepted: nothing to record or tell
        t.finishedCounts[state, default: 0] += 1
        var done = job
        done.state = state
        done.finishedAt = clock.wall()
        done.result = result
        out.append(.finished(done))
        // Whoever waited for it counts again before anything takes its slot.
        endLends(for: job.id, t)
        treeJobEnded(done, t, cpuMs: result.cpuMs)
    }

    func checkDrained() {
        guard draining else { return }
        if !stoppingWorkers {
            if tenants.values.allSatisfy({ $0.runningCount == 0 }) { stopWorkers() }
            return
        }
        if tenants.values.allSatisfy({ $0.lifecycle.isGone }) {
            out.append(.cancel(.shutdownGrace))
            out.append(.shutdownComplete)
        }
    }

    private func stopWorkers() {
        guard !stoppingWorkers else { return }
        stoppingWorkers = true
        out.append(.stopSpares)
        let now = clock.monotonic()
        for t in tenants.values { out += t.lifecycle.stopForShutdown(now: now) }
        checkDrained()
    }
}

extension Core {
    /// Status reads the CPU budget as it is now.
    public func sampleCPUForStatus(_ t: TenantState) { sampleCPU(t, now: clock.monotonic()) }

    /// jobs_per_minute tokens left now.
    public func tokensAvailable(_ t: TenantState) -> Int { t.rate.available(now: clock.monotonic()) }
}
