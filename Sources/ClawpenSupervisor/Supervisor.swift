import CClawpenShim
import ClawpenCore
import ClawpenPolicy
import ClawpenProtocol
import ClawpenStore
import ClawpenWire
import Glibc
import Logging
import NIOCore
import NIOPosix

/// The NIO shell around `Core`: it turns what happens on the event loop (requests, worker
/// frames, a closed socket, a timer) into calls of the core, and carries out the actions the core
/// returns (`perform`). The decisions are the core's; what is here is I/O: sockets, processes,
/// cgroups, the store, timers. Its other parts: Requests.swift (the client requests),
/// GroupCommit.swift (the store writes of a tick), WorkerStarter.swift (starting and reaping
/// workers, spares, network namespaces), Policies.swift, StatusReport.swift, Suspension.swift.
///
/// Concurrency: every method runs on `loop`, the one event loop that also serves the client
/// connections and the worker sockets, so the state below needs no locks (hence
/// `@unchecked Sendable`: closures scheduled on the loop may capture it).
public final class Supervisor: @unchecked Sendable {
    let loop: EventLoop
    let config: ServeConfig
    let store: Store
    /// Replaced by a policy reload (SIGHUP, `clawpen policy reload`, set-quota).
    var policies: PolicySet
    let logger: Logger
    let workerPath: String
    let cgroup: CgroupInfo
    /// Workers are sandboxed when the supervisor is root (namespaces, pivot_root and uid changes
    /// need it); otherwise `status` says plainly that they are not.
    let sandboxEnabled = geteuid() == 0
    let startedAt = Clock.monotonic()
    /// The tenant cgroups, when there is a cgroup2 hierarchy to use.
    let cgroups: CgroupTree?
    /// Compiled seccomp programs by profile name (every profile the policies name).
    var seccompPrograms: [String: [UInt8]]
    /// disk_max and inodes_max as project quotas on the workspace filesystem, where it has them.
    lazy var diskQuotas = DiskQuotas(workspaceRoot: config.workspaceRoot)
    /// Installed by every job on top of its worker's filter (refuses clone3, which the worker's allows).
    let jobSeccompGuard: [UInt8]
    /// Callers' user and group names, for access rules.
    let callers = CallerDirectory()
    /// Set by the server: told before and after a policy reload (systemd's RELOADING=1/READY=1).
    var onReload: ((_ starting: Bool) -> Void)?

    /// The decisions.
    let core: Core
    /// The live workers' processes and sockets, by worker id.
    var workers: [UInt64: WorkerHandle] = [:]
    private var timers: [CoreTimer: Scheduled<Void>] = [:]
    /// Callbacks waiting for a job to reach a final state (sync submit, job.wait, job.cancel),
    /// with each connection's count against its limit (JobWaiters.swift). Not `lazy`: a lazy
    /// property has a getter and a setter and no in-place mutation, so every `add` copied the
    /// table and the job's list of waits (quadratic: 65,536 waits of one job took 18.5 s to
    /// book in a debug build, 3.8 s after; JobWaitLimitsDaemonTests). A struct the supervisor
    /// mutates is never a lazy property.
    var waiters: JobWaiters<(Result<JobView, ProtocolError>) -> Void>
    /// Agent waits that lent their job's run slot, by connection (those whose lend ended are
    /// dropped as new ones come): a connection that closes takes its lends back
    /// (Requests+Agent.swift).
    var agentLends: [ObjectIdentifier: [AgentLend]] = [:]
    /// Audit rows of refusals and of the proxy's reports, coalesced (AuditWindow.swift).
    var auditWindow = AuditWindow()
    var auditFlushScheduled = false
    /// Waiters' replies due, made a few at a time (GroupCommit.swift, `wake`).
    var wakeups = Wakeups()
    /// Client connections that gave way, taken up in turn, and the loop's ticks they go by
    /// (LoopTicks.swift); nil when the loop was not made with the ticks (tests).
    var clientTurns: ClientTurns?
    var loopTicks: LoopTicks? { clientTurns?.ticks }
    /// Frames waiting in the client handlers, all connections together (ReadAhead.swift).
    let readAhead = ReadAhead()
    /// Jobs read lately (RecentJobs.swift).
    let recentJobs = RecentJobs()
    var shutdownCompletion: (() -> Void)?
    /// Workers being handed to the next supervisor (Supervisor+Handoff.swift).
    var handoff = HandoffProgress()
    /// Group commit (GroupCommit.swift).
    var commit = GroupCommit()
    /// Commits the group commits on a thread and connection of its own (StoreWriter.swift).
    lazy var writer = StoreWriter(path: store.path, fsyncAccepts: store.fsyncAccepts)
    /// Spare workers and network namespaces made ahead of need (WorkerStarter.swift).
    var spares: [WorkerSpawner.Spawned] = []
    var refilling = false
    var netnsRefilling = false
    let netnsPool = NetnsPool(target: 2)
    /// One long-lived thread clones spares and makes network namespaces, off the event loop (a
    /// clone and exec take ~1-2 ms, which a new tenant's first job must not wait for).
    /// Long-lived because PR_SET_PDEATHSIG fires when the spawning thread exits.
    let spawnThread: NIOThreadPool = {
        let pool = NIOThreadPool(numberOfThreads: 1)
        pool.start()
        return pool
    }()
    /// Why workers build all their mounts themselves, when the supervisor cannot join their
    /// mount namespaces (setns needs CAP_SYS_CHROOT besides CAP_SYS_ADMIN); nil: it can.
    var workerMountsFallback: String?
    /// Who follows which job, and the output and input windows (Streams.swift).
    var streams = StreamTable()
    /// Every client connection and the bytes held for it, against the budgets (ClientBudgetHandler.swift).
    lazy var clients = ClientTable(budget: config.clientBudget, logger: logger)
    /// The control socket's connections against their limits (ControlConnectionLimit.swift).
    /// Not `lazy`, for the reason `waiters` is not.
    var control: ControlSocketState
    var runtimeCounters = RuntimeCounters()
    /// How each suspended tenant's processes were stopped (status says which).
    var freezeMethods: [TenantName: FreezeMethod] = [:]
    /// Prometheus metrics (Metrics/).
    let metrics = SupervisorMetrics()
    /// File operations and transfers under way (FileRelay.swift).
    let fileRelay = FileRelay()
    /// The master key and the tenants' data keys (secrets); nil: secrets are unavailable.
    var vault: SecretVault?
    /// The egress proxy, its listeners and counters (Egress/).
    var egress = EgressState()
    /// Keys, offboarding, retention (TenantData/).
    var tenantData = TenantDataState()
    /// The agent sockets inside the sandboxes and their callers (Agent/).
    var agent = AgentState()
    /// Which job runs in which cgroup slot (the agent socket's lookup, the trees' CPU).
    let jobSlots: JobSlotIndex

    init(
        loop: EventLoop, config: ServeConfig, store: Store, policies: PolicySet, jobSeccompGuard: [UInt8] = [], logger: Logger,
        workerPath: String, cgroup: CgroupInfo, seccompPrograms: [String: [UInt8]], cgroups: CgroupTree?
    ) {
        self.loop = loop; self.config = config; self.store = store; self.policies = policies
        self.logger = logger; self.workerPath = workerPath; self.cgroup = cgroup
        self.seccompPrograms = seccompPrograms; self.cgroups = cgroups
        self.jobSeccompGuard = jobSeccompGuard
        waiters = JobWaiters(limits: config.waitLimits)
        control = ControlSocketState(connections: config.controlConnections(descriptors: AgentState.descriptorLimit()))
        let jobSlots = JobSlotIndex(cgroups: cgroups)
        self.jobSlots = jobSlots
        let maxRunning = config.maxRunning ?? Core.defaultMaxRunning(cores: Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))))
        self.core = Core(
            config: Core.Config(
                idleTimeoutMs: Int(config.idleTimeoutSeconds * 1000), shutdownGraceMs: Int(config.shutdownGraceSeconds * 1000),
                dispatchMode: config.dispatchMode, maxRunning: maxRunning,
                reservedSlots: config.reservedSlots ?? Core.defaultReserve(maxRunning: maxRunning)),
            clock: SystemClock(), probe: CgroupProbeReader(cgroups: cgroups, jobs: jobSlots))
    }

    // MARK: - Start-up

    /// Loads tenants and re-queues what a previous run left unfinished, but for the running
    /// jobs of the workers it adopts from `adopting` (an upgrade, Supervisor+Handoff.swift).
    func start(adopting: [(Handoff.Stored, Handoff.Answer)] = []) throws(StoreError) {
        loop.preconditionInEventLoop()
        let counts = try store.jobCounts()
        for record in try store.tenants() {
            let finished = (counts[record.name] ?? [:]).filter { $0.key.isFinal }
            core.addTenant(record, name: record.name, limits: limits(for: record), finished: finished)
        }
        try startTenantData()
        let began = Clock.monotonic()
        let recovered = try adoptHandedOff(adopting, unfinished: store.recoverUnfinishedJobs())
        let loaded = Clock.monotonic()
        for (name, by) in try store.suspensions() where core.tenants[name] != nil {
            perform(core.suspend(name, by: by))
        }
        perform(core.recover(recovered))
        if !recovered.isEmpty {
            // The parts of a restart's time to ready (docs/reliability.md, "10,000 pending").
            logger.notice(
                "re-queued \(recovered.count) job(s) left queued or running by the previous run",
                metadata: ["store_ms": "\(Int((loaded - began) * 1000))", "router_ms": "\(Int((Clock.monotonic() - loaded) * 1000))"])
        }
        sampleLoopLag()
        refillSpares()
        refillNetns()
    }

    func limits(for record: TenantRecord) -> TierLimits {
        policies.limits(record.name, tier: Tier(rawValue: record.tier) ?? .free)
    }

    // MARK: - Worker events (from WorkerChannelHandler)

    func workerSent(_ message: WorkerToSupervisor, _ w: WorkerHandle) {
        switch message {
        case .ready:
            logReady(w)
            metrics.workerReady(w.tenant, seconds: Clock.monotonic() - w.startedAt)
            perform(core.workerReady(w.ref))
        case .setupFailed(let step, let err, let detail):
            perform(core.workerSetupFailed(w.ref, WorkerFailure(.setup, stage: step, errno: err, errnoText: errnoString(err), detail: detail)))
        case .started(let id, _, let slot):
            perform(core.workerStarted(w.ref, jobID: id))
            agentJobStarted(id, slot: slot, w)
            streamJobStarted(id, w)
        case .synced(let token):
            agentSynced(token, w)
        case .finished(let report):
            agentJobEnded(report.jobID, w)
            perform(core.jobReported(w.ref, report))
            streamJobFinished(report.jobID)
        case .runtime(let event):
            runtimeEvent(event, w)
        case .file(let reply):
            fileReplied(reply, w)
        case .handoffReady:
            handoffReady(w)
        case .adopted:
            workerMisbehaved(w, "sent an adoption answer it was not asked for")
        }
    }

    func workerMisbehaved(_ w: WorkerHandle, _ what: String) {
        perform(core.workerMisbehaved(w.ref, what))
    }

    /// The worker's socket closed: it exited (or is about to). Reap it, then tell the core.
    func workerChannelClosed(_ w: WorkerHandle) {
        guard !w.exited else { return }
        w.exited = true
        fileWorkerGone(w)
        agentWorkerGone(w)
        reap(w, attempt: 0)
    }

    // MARK: - Actions

    /// Carries out what the core decided, in order.
    func perform(_ actions: [Action]) {
        for action in actions {
            switch action {
            case .spawnWorker(let tenant):
                startWorker(tenant)
            case .send(let w, var message):
                guard let channel = workers[w.id]?.channel else { continue }
                if case .run(var run) = message, let tenant = workers[w.id]?.tenant {
                    // The proxy variables and secrets' placeholders: at dispatch, never stored.
                    let extra = egressEnvironment(tenant, argv: run.argv)
                    // The agent socket's variables come last, so that the request's cannot shadow them.
                    run.env = extra + run.env + agentEnvironment(tenant, jobID: run.jobID)
                    message = .run(run)
                }
                channel.write(channel.allocator.frame(message.encoded()), promise: nil)
                // Runs are flushed together (the core says when); everything else at once.
                if case .run = message {} else { channel.flush() }
            case .flush(let w):
                workers[w.id]?.channel?.flush()
            case .killWorker(let w):
                kill(w.pid, SIGKILL)
                workers[w.id]?.channel?.close(promise: nil)
            case .arm(let timer, let ms):
                timers[timer]?.cancel()
                timers[timer] = loop.scheduleTask(in: .milliseconds(Int64(ms))) { [self] in
                    timers[timer] = nil
                    perform(core.timerFired(timer))
                }
            case .cancel(let timer):
                timers.removeValue(forKey: timer)?.cancel()
            case .finished(let job):
                recordFinished(job)
            case .requeued(let id):
                recordRequeued(id)
            case .audit(let event):
                if event.action == "tenant.quarantined", let name = event.tenant.flatMap({ try? TenantName(validating: $0) }) { metrics.quarantined(name) }
                commit.audits.append(event)
                scheduleFlush()
            case .releaseCgroup(let tenant):
                removeCgroup(tenant)
            case .applyLimits(let tenant):
                if let cgroups, let t = core.tenants[tenant], let w = t.lifecycle.worker, let h = workers[w.id] {
                    h.cgroupEnforced = cgroups.applyLimits(tenant, t.limits)
                }
                if let t = core.tenants[tenant], t.lifecycle.worker != nil {
                    do { try diskQuotas.apply(tenant: tenant, projectID: t.record.uid, limits: t.limits) } catch {
                        logger.error("\(error)", metadata: ["tenant": "\(tenant)"])
                    }
                }
            case .freeze(let tenant, let w):
                freeze(tenant, w)
            case .thaw(let tenant, let w, let pausedMs):
                thaw(tenant, w, pausedMs: pausedMs)
            case .stopSpares:
                killSpares()
            case .shutdownComplete:
                finishShutdown()
            case .log(let line):
                log(line)
            case .startFileOps(let tenant, let w):
                startFileOps(tenant, w)
            case .failFileOps(let tenant, let error):
                failWaitingFileOps(tenant, error)
            }
        }
    }

    private func log(_ line: LogLine) {
        var metadata: Logger.Metadata = [:]
        for (k, v) in line.fields { metadata[k] = "\(v)" }
        let level: Logger.Level =
            switch line.level {
            case .debug: .debug
            case .info: .info
            case .notice: .notice
            case .warning: .warning
            case .error: .error
            }
        logger.log(level: level, "\(line.message)", metadata: metadata)
    }

    // MARK: - Shutdown

    /// Stops dispatching, lets running jobs finish up to the grace period, stops every worker,
    /// then calls `completion`. Queued jobs stay queued in the store for the next start.
    func beginShutdown(_ completion: @escaping () -> Void) {
        loop.preconditionInEventLoop()
        guard !core.draining else { return }
        shutdownCompletion = completion
        perform(core.beginShutdown())
    }

    private func finishShutdown() {
        drainWrites()
        // Whoever still waits hears why: the job itself is safe in the store.
        for (id, callbacks) in waiters.takeAll() {
            for cb in callbacks {
                cb(
                    .failure(
                        ProtocolError(
                            .unavailable,
                            "the daemon is shutting down; job \(id) is kept and runs (again) at the next start: ask with `clawpen job wait \(id)` then")))
            }
        }
        let done = shutdownCompletion
        shutdownCompletion = nil
        done?()
    }
}

/// The system's clocks, for the core.
struct SystemClock: CoreClock {
    func monotonic() -> Double { Clock.monotonic() }
    func wall() -> Double { Clock.now() }
}

/// What the core reads of the tenant cgroups.
struct CgroupProbeReader: ResourceProbe {
    let cgroups: CgroupTree?
    let jobs: JobSlotIndex
    func cpuUsageMicros(_ tenant: TenantName) -> Int64? { cgroups?.cpuUsageMicros(tenant) }
    func jobCPUMicros(_ tenant: TenantName, jobID: String) -> Int64? { jobs.cpuMicros(tenant, jobID: jobID) }
    func oomKills(_ tenant: TenantName) -> Int64? { cgroups?.oomKills(tenant) }
}
