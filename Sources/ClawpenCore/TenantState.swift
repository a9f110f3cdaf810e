import ClawpenPolicy
import ClawpenProtocol
import ClawpenStore
import ClawpenWire

/// A tenant's queued jobs, in acceptance order (a requeued job goes back to the front).
public typealias JobQueue = RingBuffer<JobRecord>

extension RingBuffer where Element == JobRecord {
    /// Takes the job out (cancel, withdraw): O(n).
    mutating func remove(id: String) -> JobRecord? { remove { $0.id == id } }
}

/// Everything the core keeps for one tenant: its record and limits, its queue and the jobs on
/// its worker, its worker's life cycle, and its quotas' bookkeeping. The queue changes only
/// through the verbs below, which keep the router's view of the tenant in step. Confined to the
/// core's caller (the supervisor's event loop).
public final class TenantState: RoutedTenant {
    public let record: TenantRecord
    public let name: TenantName
    public internal(set) var limits: TierLimits
    public internal(set) var lifecycle: WorkerLifecycle
    /// Accepted, not yet dispatched, in acceptance order.
    public internal(set) var queue = JobQueue()
    /// Jobs sent to the current worker and not yet reported back.
    public internal(set) var inFlight: [String: JobRecord] = [:]
    var cancelRequested: Set<String> = []
    /// Why a job was canceled by a tree rule, for its final error (Trees.swift).
    var cancelReasons: [String: ProtocolError] = [:]
    /// The tenant's job trees with sub-jobs, by root id (Trees.swift).
    public internal(set) var trees: [String: JobTree] = [:]
    /// Running jobs that wait for a job of their tree, and how many waits each: they lend their
    /// run slot meanwhile (Trees.swift).
    public internal(set) var lentSlots: [String: Int] = [:]
    /// Who waits for each job (the lends above end with it).
    var lendsByTarget: [String: [String]] = [:]
    /// The idle timer armed for this worker id, if any.
    var idleTimerFor: UInt64?
    /// Finished jobs per final state (from the store at start-up, then counted).
    public internal(set) var finishedCounts: [JobState: Int] = [:]
    /// Submits refused since start, by quota name ("jobs_per_minute", ...) or rule kind.
    public internal(set) var refusals: [String: Int] = [:]

    // Router and quotas.
    var routing = RoutingState()
    /// jobs_per_minute.
    var rate: TokenBucket
    /// cpu_seconds_per_hour: the tenant's CPU time over the last hour.
    public internal(set) var cpu = CPUBudget()
    /// The tenant cgroup's cpu.stat usage_usec at the last sample (nil: not measured by cgroup,
    /// job rusage is summed instead).
    public internal(set) var cgroupCPUSeen: Int64?
    var lastCPUSample = 0.0
    /// memory.events oom_kill count already attributed to jobs.
    var oomKillsSeen: Int64 = 0
    /// Jobs of this tenant accepted in the current tick, not yet in `queue` (max_queued counts them).
    public internal(set) var pendingAccepts = 0
    /// Bytes of stdin the queued jobs hold in memory (`max_queued_bytes`), and those of the
    /// jobs accepted this tick: kept by the queue verbs below.
    public internal(set) var queuedBytes = 0
    public internal(set) var pendingBytes = 0
    /// Moving average of the tenant's job run time, for retry_after_ms estimates.
    var averageRunMs = 10.0
    /// File operations waiting for a worker, and those on the worker (Core+Files.swift): the
    /// worker is started for the first and not reaped as idle while any runs.
    public internal(set) var fileOpsWaiting = 0
    public internal(set) var fileOpsActive = 0

    init(record: TenantRecord, name: TenantName, limits: TierLimits, now: Double) {
        self.record = record; self.name = name; self.limits = limits
        self.lifecycle = WorkerLifecycle(tenant: name)
        self.rate = TokenBucket(perMinute: limits.jobsPerMinute, now: now)
    }

    public var runningCount: Int { inFlight.count }
    public var queuedCount: Int { queue.count }
    var routingWeight: Int { limits.cpuWeight }
    public var state: WorkerState { lifecycle.state(busy: !inFlight.isEmpty) }
    public var tier: Tier { Tier(rawValue: record.tier) ?? .free }

    // MARK: Queue verbs (each keeps the router in step)

    func enqueue(_ job: JobRecord, _ router: Router<TenantState>) {
        queue.append(job)
        queuedBytes += job.stdin.count
        router.accepted(self)
    }

    func requeueFront(_ job: JobRecord, _ router: Router<TenantState>) {
        queue.pushFront(job)
        queuedBytes += job.stdin.count
        router.accepted(self)
    }

    func takeQueued(id: String, _ router: Router<TenantState>) -> JobRecord? {
        guard let job = queue.remove(id: id) else { return nil }
        queuedBytes -= job.stdin.count
        router.removedQueued(self)
        return job
    }

    func takeAllQueued(_ router: Router<TenantState>) -> [JobRecord] {
        let jobs = queue.removeAll()
        queuedBytes = 0
        router.removedQueued(self, count: jobs.count)
        return jobs
    }

    /// Takes the next queued job and puts it on the worker.
    func startNext(now: Double) -> JobRecord? {
        guard var job = queue.popFirst() else { return nil }
        queuedBytes -= job.stdin.count
        job.state = .running
        job.startedAt = now
        inFlight[job.id] = job
        return job
    }
}

extension TierLimits {
    /// The crash-loop rule and retry count of these limits.
    public var crashLoopRule: CrashLoopRule {
        CrashLoopRule(
            maxFailures: crashLoopMax, windowSeconds: crashLoopWindowSeconds,
            backoffCapMs: Int(min(crashBackoffMaxSeconds * 1000, Double(Int32.max))), maxAttempts: maxAttempts)
    }
}
