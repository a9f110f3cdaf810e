import ClawpenPolicy
import ClawpenProtocol
import ClawpenStore
import ClawpenWire
import NIOCore

/// Worker states as `status` reports them (DESIGN.md).
enum WorkerState: String {
    case idle, starting, ready, busy, stopping, crashed, quarantined, suspended
}

/// One running clawpen-worker process. Confined to the supervisor's event loop.
final class WorkerHandle: @unchecked Sendable {
    let tenant: String
    let pid: Int32
    let startedAt: Double          // monotonic
    var channel: Channel?
    var isReady = false
    /// Set when the supervisor asked it to stop (idle timeout, shutdown): its exit is no crash.
    var exitExpected = false
    var setupFailure: String?
    var misbehaviour: String?
    /// Jobs sent to this worker and not yet reported back.
    var inFlight: [String: JobRecord] = [:]
    var idleTimer: Scheduled<Void>?
    var exited = false
    /// Seconds spent making its cgroup and cloning it (up to its exec), for the ready log line.
    var startPhases: (cgroup: Double, spawn: Double) = (0, 0)

    init(tenant: String, pid: Int32, startedAt: Double) {
        self.tenant = tenant; self.pid = pid; self.startedAt = startedAt
    }
}

/// Everything the supervisor keeps in memory for one tenant. Confined to the event loop.
final class TenantRuntime: RoutedTenant, @unchecked Sendable {
    let record: TenantRecord
    let name: TenantName
    var limits: TierLimits
    /// Accepted, not yet dispatched, in acceptance order.
    var queue = JobQueue()
    var worker: WorkerHandle?
    var restarts = 0
    var recentCrashes: [Double] = []
    var consecutiveStartFailures = 0
    var lastError: String?
    var respawnPending = false
    var cancelRequested: Set<String> = []
    /// Limits the tenant's cgroup enforces for its current worker ("memory", "pids", "cpu").
    var cgroupEnforced: Set<String> = []
    /// memory.events oom_kill count already attributed to jobs.
    var oomKillsSeen: Int64 = 0
    /// The old worker's cgroup is being killed and removed; no new worker until it is gone.
    var cgroupCleanupPending = false
    /// Finished jobs per final state (from the store at start-up, then counted).
    var finishedCounts: [JobState: Int] = [:]

    // Router and quotas.
    var routing = RoutingState()
    /// jobs_per_minute.
    var rate: TokenBucket
    /// cpu_seconds_per_hour: the tenant's CPU time over the last hour.
    var cpu = CPUBudget()
    /// The tenant cgroup's cpu.stat usage_usec at the last sample (nil: not measured by cgroup,
    /// job rusage is summed instead).
    var cgroupCPUSeen: Int64?
    var lastCPUSample = 0.0
    /// Jobs of this tenant accepted in the current tick, not yet in `queue` (max_queued counts them).
    var pendingAccepts = 0
    /// Moving average of the tenant's job run time, for retry_after_ms estimates.
    var averageRunMs = 10.0

    init(record: TenantRecord, name: TenantName, limits: TierLimits, now: Double) {
        self.record = record; self.name = name; self.limits = limits
        self.rate = TokenBucket(perMinute: limits.jobsPerMinute, now: now)
    }

    var runningCount: Int { worker?.inFlight.count ?? 0 }
    var queuedCount: Int { queue.count }
    var routingWeight: Int { limits.cpuWeight }

    var state: WorkerState {
        if let w = worker {
            if w.exitExpected { return .stopping }
            if !w.isReady { return .starting }
            return w.inFlight.isEmpty ? .ready : .busy
        }
        return respawnPending ? .crashed : .idle
    }
}

/// FIFO of queued jobs with O(1) pop and removal by id (cancel) in O(n).
struct JobQueue {
    private var items: [JobRecord] = []
    private var head = 0

    var count: Int { items.count - head }
    var isEmpty: Bool { count == 0 }

    mutating func append(_ job: JobRecord) { items.append(job) }

    mutating func pushFront(_ job: JobRecord) {
        if head > 0 { head -= 1; items[head] = job } else { items.insert(job, at: 0) }
    }

    mutating func popFirst() -> JobRecord? {
        guard head < items.count else { return nil }
        let job = items[head]
        head += 1
        if head > 1024 && head * 2 > items.count { items.removeFirst(head); head = 0 }
        if head == items.count { items.removeAll(keepingCapacity: true); head = 0 }
        return job
    }

    mutating func remove(id: String) -> JobRecord? {
        guard let i = items[head...].firstIndex(where: { $0.id == id }) else { return nil }
        return items.remove(at: i)
    }

    mutating func removeAll() -> [JobRecord] {
        let out = Array(items[head...])
        items.removeAll(); head = 0
        return out
    }
}
