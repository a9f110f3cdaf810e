@testable import ClawpenCore
import ClawpenPolicy
import ClawpenProtocol
import ClawpenStore
import ClawpenWire

/// A clock the test moves by hand.
final class FakeClock: CoreClock {
    var now = 1000.0
    func monotonic() -> Double { now }
    func wall() -> Double { 1_700_000_000 + now }
}

/// Cgroup readings the test sets.
final class FakeProbe: ResourceProbe {
    var cpu: [TenantName: Int64] = [:]
    var oomKills: [TenantName: Int64] = [:]
    /// Each running job's CPU so far (its cgroup), by job id.
    var jobCPU: [String: Int64] = [:]
    func cpuUsageMicros(_ tenant: TenantName) -> Int64? { cpu[tenant] }
    func jobCPUMicros(_ tenant: TenantName, jobID: String) -> Int64? { jobCPU[jobID] }
    func oomKills(_ tenant: TenantName) -> Int64? { oomKills[tenant] }
}

/// Plays the supervisor's shell for the core: keeps the timers it arms on the fake clock, the
/// messages it sends, the jobs it records, and answers spawns and cgroup releases the way the
/// test says. No I/O, no NIO, no root.
final class FakeShell {
    let clock = FakeClock()
    let probe = FakeProbe()
    let core: Core
    /// Armed timers and when they fire (fake monotonic seconds).
    var timers: [CoreTimer: Double] = [:]
    var sent: [(WorkerRef, SupervisorToWorker)] = []
    var finished: [JobRecord] = []
    var requeued: [String] = []
    var audits: [AuditEvent] = []
    var killed: [WorkerRef] = []
    var frozen: [(TenantName, WorkerRef)] = []
    var thawed: [(TenantName, WorkerRef, Int)] = []
    var spawnRequests: [TenantName] = []
    var fileOpsStarted: [(TenantName, WorkerRef)] = []
    var fileOpsFailed: [(TenantName, ProtocolError)] = []
    var shutdownComplete = false
    /// Spawns succeed at once (and the socket attaches) unless set to fail.
    var spawnFails: WorkerFailure?
    var nextPID: Int32 = 100
    /// Workers the shell started, by tenant (the newest last).
    var workers: [TenantName: [WorkerRef]] = [:]

    init(idleTimeoutMs: Int = 300_000, shutdownGraceMs: Int = 10_000, maxRunning: Int = 8, reserved: Int = 2) {
        core = Core(
            config: Core.Config(
                idleTimeoutMs: idleTimeoutMs, shutdownGraceMs: shutdownGraceMs, dispatchMode: .fair,
                maxRunning: maxRunning, reservedSlots: reserved),
            clock: clock, probe: probe)
    }

    static func limits(_ tier: Tier = .free, _ change: (inout TierLimits) -> Void = { _ in }) -> TierLimits {
        var l = TierLimits.defaults(for: tier)
        change(&l)
        return l
    }

    @discardableResult
    func addTenant(_ raw: String, limits: TierLimits = FakeShell.limits()) -> TenantName {
        let name = try! TenantName(validating: raw)
        core.addTenant(TenantRecord(name: name, tier: "free", uid: 200_000, createdAt: 0), name: name, limits: limits)
        return name
    }

    func state(_ t: TenantName) -> WorkerState { core.tenants[t]!.state }
    func tenant(_ t: TenantName) -> TenantState { core.tenants[t]! }
    func worker(_ t: TenantName) -> WorkerRef? { core.tenants[t]?.lifecycle.worker }

    /// Admits and commits a job (as the shell's group commit would).
    @discardableResult
    func submit(_ t: TenantName, _ argv: [String] = ["/usr/bin/true"], id: String? = nil, timeout: Double? = nil) throws -> JobRecord {
        let s = SubmitRequest(tenant: t, argv: argv, timeoutSeconds: timeout)
        let job = try core.admit(s, tenant: tenant(t), jobID: id ?? "job-\(nextPID)-\(finished.count)-\(sent.count)", isExecutable: { _ in true }).get()
        perform(core.accepted([job]))
        return job
    }

    func admit(_ t: TenantName) -> Result<JobRecord, Refusal> {
        core.admit(SubmitRequest(tenant: t, argv: ["/usr/bin/true"]), tenant: tenant(t), jobID: "x", isExecutable: { _ in true })
    }

    /// The jobs sent to `w` with `run`, in order.
    func runs(to w: WorkerRef) -> [RunRequest] {
        sent.compactMap { if $0.0 == w, case .run(let r) = $0.1 { r } else { nil } }
    }

    func perform(_ actions: [Action]) {
        for a in actions {
            switch a {
            case .spawnWorker(let t):
                spawnRequests.append(t)
                if let f = spawnFails {
                    perform(core.workerStartFailed(t, f))
                } else {
                    let w = core.workerSpawned(t, pid: nextPID)
                    nextPID += 1
                    workers[t, default: []].append(w)
                    perform(core.workerAttached(w))
                }
            case .send(let w, let m): sent.append((w, m))
            case .flush: break
            case .killWorker(let w): killed.append(w)
            case .arm(let timer, let ms): timers[timer] = clock.now + Double(ms) / 1000
            case .cancel(let timer): timers[timer] = nil
            case .finished(let job): finished.append(job)
            case .requeued(let id): requeued.append(id)
            case .audit(let e): audits.append(e)
            case .releaseCgroup(let t): perform(core.cgroupReleased(t))
            case .applyLimits: break
            case .freeze(let t, let w): frozen.append((t, w))
            case .thaw(let t, let w, let ms): thawed.append((t, w, ms))
            case .stopSpares: break
            case .shutdownComplete: shutdownComplete = true
            case .log: break
            case .startFileOps(let t, let w): fileOpsStarted.append((t, w))
            case .failFileOps(let t, let e): fileOpsFailed.append((t, e))
            }
        }
    }

    /// Moves the clock, firing every timer that falls due, in order.
    func advance(_ seconds: Double) {
        let end = clock.now + seconds
        while let (timer, at) = timers.filter({ $0.value <= end }).min(by: { $0.value < $1.value }) {
            clock.now = max(clock.now, at)
            timers[timer] = nil
            perform(core.timerFired(timer))
        }
        clock.now = end
    }

    func ready(_ w: WorkerRef) { perform(core.workerReady(w)) }

    /// The worker reports `id` done with `code`.
    func report(_ w: WorkerRef, _ id: String, exit code: Int32 = 0) {
        perform(
            core.jobReported(
                w,
                JobReport(
                    jobID: id, outcome: .exited(code: code), stdout: [], stderr: [],
                    stdoutTruncated: false, stderrTruncated: false, runMicros: 1000, cpuMicros: 500, maxRSSKiB: 1)))
    }

    /// The worker's process is gone; `signal` 9 unless said otherwise.
    func exit(_ w: WorkerRef, _ how: String = "was killed by signal 9") {
        perform(core.workerExited(w, how: WorkerFailure(.exited, stage: "exit", detail: how)))
    }
}
