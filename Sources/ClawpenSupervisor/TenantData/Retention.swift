import ClawpenStore
import ClawpenWire
import Glibc
import NIOCore
import NIOPosix

/// The retention purge (tier key `job_retention_days`): finished job records older than their
/// tenant's retention are deleted, hourly, by a thread of its own with its own SQLite
/// connection, `batch` rows per transaction with a pause between, so that the event loop never
/// waits for it longer than one small batch's write lock (WAL: the loop's reads never wait).
struct RetentionState {
    var pool: NIOThreadPool?
    var running = false
    var timer: Scheduled<Void>?
    var lastPurged = 0
    var lastRunAt: Double?
    static let batch = 200
    static let pauseMicros: UInt32 = 20_000
    static let intervalSeconds: Int64 = 3600
}

extension Supervisor {
    func scheduleRetention(initialDelaySeconds: Int64) {
        tenantData.retention.timer?.cancel()
        tenantData.retention.timer = loop.scheduleTask(in: .seconds(initialDelaySeconds)) { [self] in
            runRetention()
            scheduleRetention(initialDelaySeconds: RetentionState.intervalSeconds)
        }
    }

    /// The thread the purges run on (retention's and RecordsBudget's, one after the other).
    func purgePool() -> NIOThreadPool {
        if let p = tenantData.retention.pool { return p }
        let pool = NIOThreadPool(numberOfThreads: 1)
        pool.start()
        tenantData.retention.pool = pool
        return pool
    }

    /// One purge pass: the cut-offs are decided here, on the loop, from the tenants' current
    /// limits; the deleting happens on the retention thread. `completion` hears the count.
    func runRetention(now: Double = Clock.now(), completion: ((Int) -> Void)? = nil) {
        guard !tenantData.retention.running else { completion?(0); return }
        let cutoffs: [(TenantName, Double)] = core.tenants.values
            .filter { !tenantData.book.isOffboarding($0.name) }
            .map { ($0.name, now - Double($0.limits.jobRetentionDays) * 86_400) }
        guard !cutoffs.isEmpty else { completion?(0); return }
        let pool = purgePool()
        tenantData.retention.running = true
        // Records past retention are not served from memory either (emptied again at the end,
        // for views read while the purge ran).
        recentJobs.removeAll()
        let path = store.path
        pool.runIfActive(eventLoop: loop) { () throws -> [(TenantName, Int)] in
            // The store's own connection is the loop's; this thread opens one of its own.
            let purger = try Store(path: path, fsyncAccepts: false)
            var removed: [(TenantName, Int)] = []
            for (tenant, cutoff) in cutoffs {
                var n = 0
                while true {
                    let k = try purger.purgeFinishedJobs(tenant, before: cutoff, limit: RetentionState.batch)
                    n += k
                    if k < RetentionState.batch { break }
                    usleep(RetentionState.pauseMicros)
                }
                if n > 0 { removed.append((tenant, n)) }
            }
            return removed
        }.whenComplete { [self] result in
            tenantData.retention.running = false
            recentJobs.removeAll()
            tenantData.retention.lastRunAt = now
            switch result {
            case .success(let removed):
                let total = removed.reduce(0) { $0 + $1.1 }
                tenantData.retention.lastPurged = total
                for (tenant, n) in removed {
                    audit(tenant: tenant, caller: nil, action: "jobs.purged", rule: "job_retention_days", detail: "\(n) finished job record(s) past retention")
                }
                if total > 0 { logger.info("retention purge", metadata: ["jobs": "\(total)"]) }
                completion?(total)
            case .failure(let error):
                logger.error("retention purge failed; tried again at the next pass", metadata: ["error": "\(error)"])
                completion?(0)
            }
        }
    }
}
