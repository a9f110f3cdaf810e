import ClawpenProtocol
import ClawpenStore

/// The rule for workers that die, and for the jobs they were running: one rule, one formula.
///
/// Every failure of a tenant's worker counts the same, whether it could not start, failed its
/// setup, crashed, or broke the protocol:
/// - the next start waits `backoffMs(failures)`: 0 after the first failure in a row, then
///   100 ms, doubling, up to the tier's `crash_backoff_max_s`;
/// - `crash_loop_max` failures within `crash_loop_window_s` make the tenant `quarantined`: its
///   queued jobs fail with `worker_crashed`, new submits are refused (`unavailable`) until the
///   back-off is over, and it stays quarantined until a worker has served for a whole window
///   (or an operator runs `clawpen tenant resume`);
/// - a worker that served for a whole window before it died starts the count again.
public struct CrashLoopRule: Equatable, Sendable {
    public var maxFailures: Int
    public var windowSeconds: Double
    public var backoffCapMs: Int
    /// A job whose worker dies while running it runs again until it has had this many attempts.
    public var maxAttempts: Int

    public init(maxFailures: Int, windowSeconds: Double, backoffCapMs: Int, maxAttempts: Int) {
        self.maxFailures = max(1, maxFailures); self.windowSeconds = max(0, windowSeconds)
        self.backoffCapMs = max(0, backoffCapMs); self.maxAttempts = max(1, maxAttempts)
    }

    /// The back-off before the next start after `failures` failures in a row.
    public func backoffMs(failures: Int) -> Int {
        guard failures > 1 else { return 0 }
        let shift = min(failures - 2, 30)
        return min(backoffCapMs, 100 << shift)
    }
}

/// What becomes of one job that was on a worker when it died.
public enum LostJobDecision: Equatable, Sendable {
    /// A cancel was asked for: it ends canceled.
    case canceled
    /// It was only waiting behind the worker's configure frame: back to the queue as it was.
    case requeueUnstarted
    /// It ran: again, with attempt + 1.
    case retry
    /// It has had its attempts (or the tenant is quarantined, or the daemon is stopping).
    case fail(String)
}

public enum CrashPolicy {
    /// The decision for a job lost with its worker.
    public static func decide(
        _ job: JobRecord, workerWasReady: Bool, cancelRequested: Bool, rule: CrashLoopRule, quarantined: Bool,
        draining: Bool, reason: String
    ) -> LostJobDecision {
        if cancelRequested { return .canceled }
        // It never started: back in the queue (where a quarantine fails it with the others; a
        // shutdown leaves it queued in the store for the next start).
        if !workerWasReady { return .requeueUnstarted }
        if quarantined {
            return .fail("\(reason) while running this job (attempt \(job.attempt) of \(rule.maxAttempts)); the tenant is quarantined")
        }
        if job.attempt < rule.maxAttempts && !draining { return .retry }
        return .fail("\(reason) while running this job (attempt \(job.attempt) of \(rule.maxAttempts))")
    }
}
