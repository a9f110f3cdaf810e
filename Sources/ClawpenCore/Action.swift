import ClawpenProtocol
import ClawpenStore
import ClawpenWire

/// One running clawpen-worker as the core knows it: a generation number (never reused, so a
/// late event about a worker that is gone cannot touch its successor) and its pid.
public struct WorkerRef: Hashable, Sendable, CustomStringConvertible {
    public let id: UInt64
    public let pid: Int32
    public init(id: UInt64, pid: Int32) { self.id = id; self.pid = pid }
    public var description: String { "worker \(pid)" }
}

/// The timers the core asks for. The shell arms them on its event loop and calls
/// `Core.timerFired` when one fires; arming a timer that is armed replaces it.
public enum CoreTimer: Hashable, Sendable {
    /// The tenant's worker has had nothing to do for the idle timeout: stop it.
    case idle(TenantName, worker: UInt64)
    /// The tenant's back-off after a crash (or a quarantine) is over: start a worker if work waits.
    case restart(TenantName)
    /// A worker asked to stop has not gone: kill it.
    case stopDeadline(TenantName, worker: UInt64)
    /// Shutdown: running jobs had their grace period.
    case shutdownGrace
    /// Time to check the job trees' CPU and time budgets (Trees.swift).
    case treeBudgets
}

/// How much a log line matters (mapped to swift-log by the shell).
public enum LogLevel: Sendable { case debug, info, notice, warning, error }

/// A log line the core wants written: the core does no I/O itself.
public struct LogLine: Sendable {
    public let level: LogLevel
    public let message: String
    public let fields: [(String, String)]
    init(_ level: LogLevel, _ message: String, _ fields: [(String, String)] = []) {
        self.level = level; self.message = message; self.fields = fields
    }
}

/// What the shell must do after an event: the core's only way to touch the world. Performed in
/// order; an action that produces a new event (a spawn, a cgroup release) feeds it back.
public enum Action: Sendable {
    /// Start a worker for the tenant; answer with `workerSpawned` or `workerStartFailed`.
    case spawnWorker(TenantName)
    /// Write a message to a worker's socket (flushed by a later `flush`, or at once for
    /// everything but `run`).
    case send(WorkerRef, SupervisorToWorker)
    /// Flush what was written to the worker's socket.
    case flush(WorkerRef)
    /// SIGKILL the worker (and close its socket).
    case killWorker(WorkerRef)
    case arm(CoreTimer, afterMs: Int)
    case cancel(CoreTimer)
    /// A job reached its final state: record it (with this tick's writes), then tell whoever
    /// waits for it.
    case finished(JobRecord)
    /// A job that had started runs again (attempt + 1): record that.
    case requeued(jobID: String)
    case audit(AuditEvent)
    /// Kill what is left in the tenant's cgroup and remove it; answer with `cgroupReleased`.
    case releaseCgroup(TenantName)
    /// Write the tenant's (new) limits into its cgroup.
    case applyLimits(TenantName)
    /// Stop every process of the tenant where it stands (cgroup.freeze, else SIGSTOP of the
    /// jobs' process groups through the worker).
    case freeze(TenantName, WorkerRef)
    /// Undo `freeze`; the worker moves its jobs' deadlines by `pausedMs`.
    case thaw(TenantName, WorkerRef, pausedMs: Int)
    /// Shutdown: kill the spare workers (they belong to no tenant).
    case stopSpares
    /// Shutdown: every worker is gone and every write is done.
    case shutdownComplete
    case log(LogLine)
    /// The tenant's waiting file operations may go to this worker now (Core+Files.swift).
    case startFileOps(TenantName, WorkerRef)
    /// The tenant's waiting file operations cannot be done (quarantined, shutting down).
    case failFileOps(TenantName, ProtocolError)
}
