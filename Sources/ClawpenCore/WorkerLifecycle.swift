import ClawpenWire

/// Worker states as `status` reports them (the contract's list).
public enum WorkerState: String, Sendable, CaseIterable {
    case idle, starting, ready, busy, stopping, crashed, quarantined, suspended
}

/// An operator's `clawpen tenant suspend`: who, since when, and which worker it froze.
public struct Suspension: Equatable, Sendable {
    public let by: String
    /// Wall-clock seconds (for status and the audit).
    public let since: Double
    /// Monotonic seconds (how long the jobs were paused).
    let sinceMonotonic: Double
    /// The worker frozen by it, if one was running.
    public internal(set) var frozen: WorkerRef?
}

/// A tenant whose worker keeps dying (`CrashLoopRule`): why, since when, and when it retries.
public struct Quarantine: Equatable, Sendable {
    public let reason: String
    /// Monotonic seconds.
    public let since: Double
    /// Monotonic seconds of the next start (the back-off's end).
    public internal(set) var retryAt: Double
    /// Failures within the window when it was last counted.
    public internal(set) var failuresInWindow: Int
}

/// One tenant's worker life cycle, as a value: the events the shell reports (spawned, attached,
/// ready, exited, timers, operator commands) move it from phase to phase and return the actions
/// to carry out. No I/O, no clock of its own: every event carries `now` (monotonic seconds).
///
///     idle ─need work─► spawning ─spawned─► starting ─ready─► ready ─idle timeout─► stopping
///       ▲                  │ failed            │ exited            │ exited             │ exited
///       │                  ▼                   ▼                   ▼                    ▼
///       └── restart timer ◄─ backingOff ◄─ releasing (its cgroup is removed) ◄──────────┘
///
/// Beside the phase, two conditions: `suspension` (an operator froze the tenant: no new worker,
/// nothing dispatched, the running worker frozen) and `quarantine` (the crash-loop rule tripped).
public struct WorkerLifecycle: Equatable, Sendable {
    public enum StopReason: Equatable, Sendable {
        case idle, shutdown
        case misbehaved(String)
    }

    public enum Phase: Equatable, Sendable {
        /// No process.
        case idle
        /// `spawnWorker` was asked for; the shell answers at once.
        case spawning
        /// Cloned and configured; `attached` once its socket is registered (jobs may then be
        /// sent behind the configure frame).
        case starting(WorkerRef, attached: Bool)
        case ready(WorkerRef, since: Double)
        /// Asked to stop, or being killed; `readySince` if it had served.
        case stopping(WorkerRef, StopReason, readySince: Double?)
        /// The process is gone; its cgroup is being emptied and removed. `crashed`: it died;
        /// then the next start waits `restartAfterMs`.
        case releasing(crashed: Bool, restartAfterMs: Int)
        /// Crashed; the next start waits until `until`.
        case backingOff(until: Double)
    }

    public let tenant: TenantName
    public private(set) var phase: Phase = .idle
    public private(set) var suspension: Suspension?
    public private(set) var quarantine: Quarantine?
    /// Workers that died after they had served (crashes, not failed starts).
    public private(set) var restarts = 0
    /// The last failure; status keeps showing it after the tenant is back.
    public private(set) var lastError: WorkerFailure?
    /// Failures since a worker last served for a whole window.
    public private(set) var failuresInARow = 0
    /// When the failures within the window happened (monotonic).
    private var failureTimes: [Double] = []
    /// The failing step the current worker reported before it exits.
    private var setupFailure: WorkerFailure?

    public init(tenant: TenantName) { self.tenant = tenant }

    // MARK: Reading

    /// The live worker process, if any (whatever it is doing).
    public var worker: WorkerRef? {
        switch phase {
        case .starting(let w, _), .ready(let w, _), .stopping(let w, _, _): w
        default: nil
        }
    }

    /// The worker jobs may be sent to now: a ready one, or a starting one whose socket is
    /// registered (jobs wait behind its configure frame); none while suspended.
    public var dispatchTarget: WorkerRef? {
        guard suspension == nil else { return nil }
        switch phase {
        case .starting(let w, attached: true), .ready(let w, _): return w
        default: return nil
        }
    }

    /// Nothing of the tenant's is left running or being cleaned up.
    public var isGone: Bool {
        switch phase {
        case .idle, .backingOff: true
        default: false
        }
    }

    /// The contract's state: `busy` says whether jobs run on the worker.
    public func state(busy: Bool) -> WorkerState {
        if suspension != nil { return .suspended }
        switch phase {
        case .idle: return quarantine != nil ? .quarantined : .idle
        case .spawning, .starting: return .starting
        case .ready: return busy ? .busy : .ready
        case .stopping: return .stopping
        case .releasing(let crashed, _): return !crashed ? .stopping : quarantine != nil ? .quarantined : .crashed
        case .backingOff: return quarantine != nil ? .quarantined : .crashed
        }
    }

    // MARK: Events

    /// There is work and maybe no worker: start one unless something holds it back.
    mutating func needWorker(draining: Bool) -> [Action] {
        guard phase == .idle, suspension == nil, !draining else { return [] }
        phase = .spawning
        return [.spawnWorker(tenant)]
    }

    mutating func spawned(_ w: WorkerRef) {
        phase = .starting(w, attached: false)
    }

    /// The worker was handed to the next supervisor (an upgrade): it is no longer this one's.
    mutating func handedOff(_ w: WorkerRef) {
        guard worker == w else { return }
        phase = .idle
    }

    /// The worker's socket is registered with the event loop.
    mutating func attached(_ w: WorkerRef) -> Bool {
        guard case .starting(w, attached: false) = phase else { return false }
        phase = .starting(w, attached: true)
        return true
    }

    public enum ReadyVerdict: Equatable, Sendable { case ready, twice, stale }

    mutating func ready(_ w: WorkerRef, now: Double) -> ReadyVerdict {
        switch phase {
        case .starting(w, _):
            phase = .ready(w, since: now)
            return .ready
        case .ready(w, _): return .twice
        default: return .stale
        }
    }

    mutating func setupFailed(_ w: WorkerRef, _ failure: WorkerFailure) {
        guard worker == w else { return }
        setupFailure = failure
    }

    /// The worker broke the protocol: kill it; its exit is a failure.
    mutating func misbehaved(_ w: WorkerRef, _ what: String) -> [Action] {
        guard worker == w else { return [] }
        if case .stopping(_, .misbehaved, _) = phase { return [] }
        phase = .stopping(w, .misbehaved(what), readySince: readySince)
        return [
            .log(LogLine(.error, "worker misbehaved, killing it", [("tenant", tenant.value), ("worker_pid", "\(w.pid)"), ("what", what)])),
            .killWorker(w),
        ]
    }

    /// The idle timer fired for `w`: stop it (the caller checked that nothing runs or waits).
    mutating func idleTimeout(_ w: WorkerRef) -> [Action] {
        guard case .ready(w, let since) = phase, suspension == nil else { return [] }
        phase = .stopping(w, .idle, readySince: since)
        return [
            .log(LogLine(.info, "worker idle, stopping it", [("tenant", tenant.value), ("worker_pid", "\(w.pid)")])),
            .send(w, .shutdown), .arm(.stopDeadline(tenant, worker: w.id), afterMs: 3000),
        ]
    }

    /// Shutdown: ask the worker to stop (a frozen one is thawed first, a starting one is killed).
    mutating func stopForShutdown(now: Double) -> [Action] {
        guard let w = worker else { return [] }
        if case .stopping(_, .shutdown, _) = phase { return [] }
        var out: [Action] = []
        if let s = suspension, s.frozen == w {
            out.append(.thaw(tenant, w, pausedMs: Int((now - s.sinceMonotonic) * 1000)))
            suspension?.frozen = nil
        }
        let attached: Bool
        switch phase {
        case .starting(_, let a): attached = a
        case .ready: attached = true
        case .stopping: attached = true
        default: attached = false
        }
        let wasStopping: Bool
        if case .stopping = phase { wasStopping = true } else { wasStopping = false }
        phase = .stopping(w, .shutdown, readySince: readySince)
        if wasStopping { return out }
        out.append(attached ? .send(w, .shutdown) : .killWorker(w))
        out.append(.arm(.stopDeadline(tenant, worker: w.id), afterMs: 3000))
        return out
    }

    public enum ExitVerdict: Equatable, Sendable {
        /// Another worker's (late) news.
        case stale
        /// It was asked to stop.
        case expected
        /// It died: why, whether it had served, whether this failure quarantined the tenant.
        case crashed(WorkerFailure, wasReady: Bool, newlyQuarantined: Bool)
    }

    /// The worker's process is gone (`how`: its exit status or signal, in words).
    mutating func exited(_ w: WorkerRef, how: WorkerFailure, now: Double, rule: CrashLoopRule) -> ExitVerdict {
        guard worker == w else { return .stale }
        let served = readySince
        if case .stopping(_, let reason, _) = phase, reason == .idle || reason == .shutdown {
            phase = .releasing(crashed: false, restartAfterMs: 0)
            setupFailure = nil
            if let served, now - served >= rule.windowSeconds { clearFailures() }
            return .expected
        }
        var failure = how
        if case .stopping(_, .misbehaved(let what), _) = phase {
            failure = WorkerFailure(.misbehaved, stage: "protocol", detail: what)
        } else if let setupFailure {
            failure = setupFailure
        }
        setupFailure = nil
        if served != nil { restarts += 1 }
        let (delay, newly) = recordFailure(failure, now: now, servedSince: served, rule: rule)
        phase = .releasing(crashed: true, restartAfterMs: delay)
        return .crashed(failure, wasReady: served != nil, newlyQuarantined: newly)
    }

    /// A start failed before the worker ran (the shell cleaned up after it). Returns whether
    /// this failure quarantined the tenant, and the actions (the restart timer).
    mutating func startFailed(_ failure: WorkerFailure, now: Double, rule: CrashLoopRule) -> (newlyQuarantined: Bool, actions: [Action]) {
        let (delay, newly) = recordFailure(failure, now: now, servedSince: nil, rule: rule)
        phase = .releasing(crashed: true, restartAfterMs: delay)
        return (newly, released(now: now))
    }

    /// The dead worker's cgroup is gone: idle, or backing off before the next start.
    mutating func released(now: Double) -> [Action] {
        guard case .releasing(_, let delay) = phase else { return [] }
        if delay > 0 {
            phase = .backingOff(until: now + Double(delay) / 1000)
            return [.arm(.restart(tenant), afterMs: delay)]
        }
        phase = .idle
        return []
    }

    /// The back-off is over.
    mutating func restartTimerFired() {
        if case .backingOff = phase { phase = .idle }
    }

    /// `clawpen tenant suspend`: freezes the running worker (and so its jobs).
    mutating func suspend(by: String, wall: Double, now: Double) -> [Action] {
        guard suspension == nil else { return [] }
        var s = Suspension(by: by, since: wall, sinceMonotonic: now, frozen: nil)
        var out: [Action] = []
        switch phase {
        case .starting(let w, _), .ready(let w, _):
            s.frozen = w
            out.append(.freeze(tenant, w))
        default: break
        }
        suspension = s
        return out
    }

    /// `clawpen tenant resume`: thaws what `suspend` froze and lifts a quarantine (its failure
    /// count starts again).
    mutating func resume(now: Double) -> [Action] {
        var out: [Action] = []
        if let s = suspension {
            if let w = s.frozen, worker == w { out.append(.thaw(tenant, w, pausedMs: Int((now - s.sinceMonotonic) * 1000))) }
            suspension = nil
        }
        if quarantine != nil {
            clearFailures()
            if case .backingOff = phase {
                phase = .idle
                out.append(.cancel(.restart(tenant)))
            }
        }
        return out
    }

    // MARK: Helpers

    private var readySince: Double? {
        switch phase {
        case .ready(_, let since): since
        case .stopping(_, _, let since): since
        default: nil
        }
    }

    private mutating func clearFailures() {
        failuresInARow = 0
        failureTimes.removeAll()
        quarantine = nil
    }

    /// Counts a failure: the one back-off formula and the quarantine rule (CrashLoopRule).
    private mutating func recordFailure(_ failure: WorkerFailure, now: Double, servedSince: Double?, rule: CrashLoopRule)
        -> (delayMs: Int, newlyQuarantined: Bool)
    {
        lastError = failure
        if let servedSince, now - servedSince >= rule.windowSeconds { clearFailures() }
        failuresInARow += 1
        failureTimes = failureTimes.filter { now - $0 < rule.windowSeconds } + [now]
        let delay = rule.backoffMs(failures: failuresInARow)
        var newly = false
        if quarantine == nil && failureTimes.count >= rule.maxFailures {
            let window = rule.windowSeconds == rule.windowSeconds.rounded() ? "\(Int(rule.windowSeconds))" : "\(rule.windowSeconds)"
            quarantine = Quarantine(
                reason: "the worker failed \(failureTimes.count) times within \(window) s (crash_loop_max \(rule.maxFailures)); last: \(failure)",
                since: now, retryAt: now, failuresInWindow: failureTimes.count)
            newly = true
        }
        if quarantine != nil {
            quarantine?.retryAt = now + Double(delay) / 1000
            quarantine?.failuresInWindow = failureTimes.count
        }
        return (delay, newly)
    }
}
