import ClawpenCore
import ClawpenProtocol
import ClawpenWire
import ClawpenStore
import NIOCore

/// Store writes of one event-loop tick, flushed together (`Supervisor.flushWrites`) as at most
/// three transactions: audit events, results (not fsynced), then accepts (fsynced). Replies and
/// dispatch wait for the commit that makes them true.
struct GroupCommit {
    struct PendingAccept {
        let job: JobRecord
        let responder: Responder
        let wait: Bool
        /// `"stream": true`: `accepted` now, output, then the final job (Streams.swift).
        var stream = false
    }
    var accepts: [PendingAccept] = []
    var finishes: [Store.Finished] = []
    var notifications: [(callbacks: [(Result<JobView, ProtocolError>) -> Void], view: JobView)] = []
    var audits: [AuditEvent] = []
    var scheduled = false
    /// A results commit failed (a full disk): they are kept and tried again after
    /// `Supervisor.storeRetryMs`; their waiters hear once they are recorded.
    var retryScheduled = false

}

extension Supervisor {
    /// Queues an audit event for this tick's flush.
    func audit(tenant: TenantName?, caller: Responder?, action: String, rule: String?, detail: String?, traceID: String? = nil) {
        commit.audits.append(
            AuditEvent(at: Clock.now(), tenant: tenant?.value, callerUID: caller?.callerUID, action: action, rule: rule, detail: detail, traceID: traceID))
        scheduleFlush()
    }

    func scheduleFlush() {
        guard !commit.scheduled else { return }
        commit.scheduled = true
        loop.execute { [self] in flushWrites() }
    }

    /// A job reached its final state: written with this tick's results, then its waiters hear.
    func recordFinished(_ job: JobRecord) {
        // One line per job, with TENANT= and JOB_ID= in the journal (`journalctl TENANT=acme`).
        // debug: a line per job is for the journal (the unit runs at --log-level debug), not for
        // a terminal.
        logger.debug(
            "job finished",
            metadata: [
                "tenant": "\(job.tenant)", "job_id": "\(job.id)", "state": "\(job.state.rawValue)", "trace_id": "\(job.trace?.traceID ?? "")",
            ])
        metrics.jobFinished(job)
        commit.finishes.append(
            Store.Finished(
                id: job.id, tenant: job.tenant, state: job.state, result: job.result ?? JobResult(),
                startedAt: job.startedAt, finishedAt: job.finishedAt ?? Clock.now()))
        if let callbacks = waiters.removeValue(forKey: job.id) { commit.notifications.append((callbacks, job.view)) }
        scheduleFlush()
    }

    /// Commits what this tick wrote, then tells whoever waited for it.
    func flushWrites() {
        commit.scheduled = false
        if !commit.audits.isEmpty {
            let events = commit.audits
            commit.audits.removeAll(keepingCapacity: true)
            do { try store.insertAudit(events) } catch {
                logger.error("store failure writing the audit log", metadata: ["events": "\(events.count)", "error": "\(error)"])
            }
        }
        if !commit.finishes.isEmpty {
            let batch = commit.finishes
            let began = Clock.monotonic()
            do {
                try store.finishJobs(batch)
                commit.finishes.removeAll(keepingCapacity: true)
                metrics.storeCommit.record(Clock.monotonic() - began)
                let notes = commit.notifications
                commit.notifications.removeAll(keepingCapacity: true)
                for n in notes { for cb in n.callbacks { cb(.success(n.view)) } }
            } catch {
                // Kept, not dropped: a waiter told of a result the store does not hold would see
                // the job run again after a restart (a second result for one idempotency key).
                metrics.storeCommit.record(Clock.monotonic() - began)
                logger.error(
                    "store failure recording job results; kept, trying again every second", metadata: ["jobs": "\(batch.count)", "error": "\(error)"])
                retryFlushLater()
            }
        }
        guard !commit.accepts.isEmpty else { return }
        let batch = commit.accepts
        commit.accepts.removeAll(keepingCapacity: true)
        // The jobs go to their workers before the commit, so the fsync overlaps their start on
        // the other core. Nobody hears of a job before it is committed; if the commit fails the
        // jobs are killed and their callers told they were not accepted. (A crash in between is
        // a crash before the acknowledgement: the caller retries, at-least-once.)
        let jobs = batch.map(\.job)
        perform(core.accepted(jobs))
        let began = Clock.monotonic()
        do { try store.insertJobs(jobs) } catch {
            metrics.storeCommit.record(Clock.monotonic() - began)
            logger.error("store failure accepting jobs", metadata: ["jobs": "\(batch.count)", "error": "\(error)"])
            perform(core.withdraw(jobs))
            for p in batch {
                dropStream(p.job.id)
                p.responder.fail(Self.storeRefusal(error, "the job could not be recorded, so it was not accepted"))
            }
            return
        }
        metrics.storeCommit.record(Clock.monotonic() - began)
        for p in batch {
            if p.stream || p.wait { lendWhileAgentWaits(p.responder, for: p.job.id) }
            if p.stream {
                acceptedStream(p.job, p.responder)
            } else if p.wait {
                addWaiter(p.job.id) { [r = p.responder] in r.job($0) }
            } else {
                p.responder.job(memoryView(p.job))
            }
        }
    }

    private func retryFlushLater() {
        guard !commit.retryScheduled else { return }
        commit.retryScheduled = true
        loop.scheduleTask(in: .milliseconds(Int64(Self.storeRetryMs))) { [self] in
            commit.retryScheduled = false
            if !commit.finishes.isEmpty { scheduleFlush() }
        }
    }

    func addWaiter(_ id: String, _ callback: @escaping (Result<JobView, ProtocolError>) -> Void) {
        // Ended, but its result is not recorded yet (a full disk): heard with the others once
        // it is, not never (recordFinished has taken the job's waiters already).
        if let f = commit.finishes.last(where: { $0.id == id }) {
            if let i = commit.notifications.firstIndex(where: { $0.view.id == id }) {
                commit.notifications[i].callbacks.append(callback)
                return
            }
            if var record = try? store.job(id: id) {
                record.state = f.state
                record.result = f.result
                record.startedAt = f.startedAt
                record.finishedAt = f.finishedAt
                commit.notifications.append(([callback], record.view))
                return
            }
        }
        waiters[id, default: []].append(callback)
    }

    /// The view of an accepted, unfinished job from memory (no store read).
    func memoryView(_ job: JobRecord) -> JobView {
        if let running = core.runningJob(job.id, tenant: job.tenant) { return running.view }
        return job.view
    }
}
