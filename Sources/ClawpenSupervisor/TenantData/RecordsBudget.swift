import ClawpenCore
import ClawpenPolicy
import ClawpenStore
import ClawpenWire
import Glibc
import NIOCore
import NIOPosix

/// The size retention (tier key `job_records_max`; the decisions are ClawpenCore's
/// RecordsLedger): a tenant over its limit loses its oldest finished job records on the purge
/// thread, in retention's batches with its pause between (RetentionState.batch, pauseMicros).
struct RecordsBudgetState {
    var ledger = RecordsLedger()
    var timer: Scheduled<Void>?
    /// A pass waits this long after a tenant goes over, so that the jobs ending together are
    /// handled by one pass.
    static let debounceMillis: Int64 = 200
}

extension Supervisor {
    /// Shortly after start: every tenant's records are measured once (off the loop: with a
    /// million records the sum takes a while).
    func scheduleRecordsMeasure(initialDelaySeconds: Int64) {
        tenantData.records.timer = loop.scheduleTask(in: .seconds(initialDelaySeconds)) { [self] in
            tenantData.records.timer = nil
            runRecordsPass(all: true)
        }
    }

    /// A finished record was committed (GroupCommit): counted, and a pass scheduled when its
    /// tenant went over.
    func recordsFinished(_ tenant: TenantName, size: Int64) {
        let limit = core.tenants[tenant]?.limits.jobRecordsMaxBytes ?? TierLimits.defaultJobRecordsMaxBytes
        guard tenantData.records.ledger.finished(tenant.value, size: size, limit: limit) else { return }
        scheduleRecordsPass()
    }

    private func scheduleRecordsPass() {
        guard tenantData.records.timer == nil, !tenantData.records.ledger.passRunning else { return }
        tenantData.records.timer = loop.scheduleTask(in: .milliseconds(RecordsBudgetState.debounceMillis)) { [self] in
            tenantData.records.timer = nil
            runRecordsPass(all: false)
        }
    }

    /// One pass: measures the due tenants (or all), purges the oldest finished records of each
    /// one over its limit until 90 % of it is left.
    func runRecordsPass(all: Bool) {
        guard !tenantData.records.ledger.passRunning else { return }
        let due = tenantData.records.ledger.passStarted()
        let tenants: [(TenantName, Int64)] = core.tenants.values
            .filter { (all || due.contains($0.name.value)) && !tenantData.book.isOffboarding($0.name) }
            .map { ($0.name, $0.limits.jobRecordsMaxBytes) }
        guard !tenants.isEmpty else {
            _ = tenantData.records.ledger.passEnded()
            return
        }
        recentJobs.removeAll()
        let path = store.path
        purgePool().runIfActive(eventLoop: loop) { () throws -> [(TenantName, Int64, Int)] in
            let purger = try Store(path: path, fsyncAccepts: false)
            var out: [(TenantName, Int64, Int)] = []
            for (tenant, limit) in tenants {
                var total = try purger.finishedRecordBytes(tenant)
                var excess = RecordsLedger.excess(total: total, limit: limit)
                var removed = 0
                while excess > 0 {
                    let (jobs, freed) = try purger.purgeOldestFinishedJobs(tenant, bytes: excess, limit: RetentionState.batch)
                    if jobs == 0 { break }
                    removed += jobs
                    total -= freed
                    excess -= freed
                    if excess > 0 { usleep(RetentionState.pauseMicros) }
                }
                out.append((tenant, max(0, total), removed))
            }
            return out
        }.whenComplete { [self] result in
            recentJobs.removeAll()
            switch result {
            case .success(let measured):
                for (tenant, bytes, removed) in measured {
                    tenantData.records.ledger.measured(tenant.value, bytes: bytes)
                    guard removed > 0 else { continue }
                    let limit = core.tenants[tenant]?.limits.jobRecordsMaxBytes ?? 0
                    audit(
                        tenant: tenant, caller: nil, action: "jobs.purged", rule: "job_records_max",
                        detail: "\(removed) oldest finished job record(s): the tenant's records passed job_records_max (\(limit) bytes)")
                    logger.notice(
                        "finished job records purged for size",
                        metadata: ["tenant": "\(tenant)", "jobs": "\(removed)", "rule": "job_records_max", "limit": "\(limit)"])
                }
            case .failure(let error):
                logger.error("size purge of job records failed; tried again when a tenant next goes over", metadata: ["error": "\(error)"])
            }
            if tenantData.records.ledger.passEnded() { scheduleRecordsPass() }
        }
    }
}
