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
    /// Seconds spent making its cgroup, cloning it (up to its exec) and building its mounts, for
    /// the ready log line.
    var startPhases: (cgroup: Double, spawn: Double, mounts: Double) = (0, 0, 0)

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
    /// Submits refused since start, by quota name ("jobs_per_minute", ...) or "command"/"env".
    var refusals: [String: Int] = [:]

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

/// A tenant's queued jobs, in acceptance order (a requeued job goes back to the front).
typealias JobQueue = RingBuffer<JobRecord>

extension RingBuffer where Element == JobRecord {
    /// Takes the job out (cancel, withdraw): O(n).
    mutating func remove(id: String) -> JobRecord? { remove { $0.id == id } }
}
