import ClawpenCore
import ClawpenProtocol
import ClawpenWire
import ClawpenStore
import NIOCore
import Synchronization

/// Store writes of one event-loop tick, handed together (`Supervisor.flushWrites`) to the store
/// writer's thread (StoreWriter.swift) as one batch. The loop never waits for a commit; what
/// would make a commit's outcome visible waits for it instead. The rules that keep this true:
///
/// * *Nobody hears of a job before its accept is committed*: the reply, the `accepted` frame of
///   a stream (with the output that came meanwhile: held, and the job slowed by its output
///   window, Streams.swift) follow the batch's completion.
/// * *Nobody hears of a result before it is committed*: a job's waiters are taken when the batch
///   that records its result completes, not when it ends; so a waiter added at any moment before
///   (the submitter's, at its accept's completion) hears of it.
/// * *Batches complete in the order they were made*: one writer thread, one queue; a job's
///   result is never written before its accept, nor heard of before its `accepted`.
/// * *A request that reads the store reads what was promised*: while batches are in flight,
///   `job.get`, `job.wait`, `job.list`, ... wait for the last of them (`afterWrites`), not the
///   loop (Supervisor.readsCommittedState).
struct GroupCommit {
    struct PendingAccept {
        let job: JobRecord
        let responder: Responder
        let wait: Bool
        /// `"stream": true`: `accepted` now, output, then the final job (Streams.swift).
        var stream = false
    }
    struct Finished {
        let record: Store.Finished
        /// What its waiters hear once it is recorded.
        let view: JobView
    }
    var accepts: [PendingAccept] = []
    var finishes: [Finished] = []
    var requeues: [String] = []
    var audits: [AuditEvent] = []
    var scheduled = false
    /// A results commit failed (a full disk): they are kept and tried again after
    /// `Supervisor.storeRetryMs`; their waiters hear once they are recorded.
    var retryScheduled = false
    /// Batches handed to the writer, oldest first, not yet completed on the loop.
    var inFlight: [InFlightBatch] = []

    var hasPending: Bool { !accepts.isEmpty || !finishes.isEmpty || !requeues.isEmpty || !audits.isEmpty }
    /// Something written this tick or earlier is not committed yet.
    var hasUncommitted: Bool { hasPending || !inFlight.isEmpty }
    /// An accept with this key is not committed yet (an idempotent resubmission must wait for it).
    func acceptPending(tenant: TenantName, key: String) -> Bool {
        accepts.contains { $0.job.tenant == tenant && $0.job.idempotencyKey == key }
            || inFlight.contains { $0.accepts.contains { $0.job.tenant == tenant && $0.job.idempotencyKey == key } }
    }
}

/// One batch on its way through the writer: what it holds for the loop's side of its
/// completion, and its outcome once the writer has it.
final class InFlightBatch: Sendable {
    let accepts: [GroupCommit.PendingAccept]
    let finishes: [GroupCommit.Finished]
    let auditCount: Int
    private let result = Mutex<Store.WriteOutcome?>(nil)
    /// Run on the loop after the batch's completion (requests that read the store).
    nonisolated(unsafe) var then: [() -> Void] = []

    init(accepts: [GroupCommit.PendingAccept], finishes: [GroupCommit.Finished], auditCount: Int) {
        self.accepts = accepts; self.finishes = finishes; self.auditCount = auditCount
    }

    func set(_ outcome: Store.WriteOutcome) { result.withLock { $0 = outcome } }
    var outcome: Store.WriteOutcome? { result.withLock { $0 } }
}

extension GroupCommit.PendingAccept: @unchecked Sendable {}
extension GroupCommit.Finished: @unchecked Sendable {}

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
            GroupCommit.Finished(
                record: Store.Finished(
                    id: job.id, tenant: job.tenant, state: job.state, result: job.result ?? JobResult(),
                    startedAt: job.startedAt, finishedAt: job.finishedAt ?? Clock.now()),
                view: job.view))
        scheduleFlush()
    }

    /// A job its worker lost goes back to the queue: its attempt is counted with this tick's writes.
    func recordRequeued(_ id: String) {
        commit.requeues.append(id)
        scheduleFlush()
    }

    /// Hands what this tick wrote to the store writer; its completion tells whoever waits.
    func flushWrites() {
        commit.scheduled = false
        guard commit.hasPending else { return }
        let audits = commit.audits
        let finishes = commit.finishes
        let accepts = commit.accepts
        var batch = Store.WriteBatch()
        batch.requeues = commit.requeues
        commit.audits.removeAll(keepingCapacity: true)
        commit.finishes.removeAll(keepingCapacity: true)
        commit.accepts.removeAll(keepingCapacity: true)
        commit.requeues.removeAll(keepingCapacity: true)
        batch.audits = Store.auditRows(audits)
        // Sealed here: the tenants' keys live on the loop's connection (the keyring's).
        var keptFinishes = finishes
        do { batch.finishes = try store.sealFinishes(finishes.map(\.record)) } catch {
            logger.error("store failure sealing job results; kept, trying again every second", metadata: ["jobs": "\(finishes.count)", "error": "\(error)"])
            commit.finishes.insert(contentsOf: finishes, at: 0)
            keptFinishes = []
            retryFlushLater()
        }
        var sealedAccepts = accepts
        if !accepts.isEmpty {
            // The jobs go to their workers before the commit, so the fsync overlaps their start on
            // the other core. Nobody hears of a job before it is committed; if the commit fails the
            // jobs are killed and their callers told they were not accepted. (A crash in between is
            // a crash before the acknowledgement: the caller retries, at-least-once.)
            let jobs = accepts.map(\.job)
            perform(core.accepted(jobs))
            do { batch.accepts = try store.sealAccepts(jobs) } catch {
                refuseAccepts(accepts, error)
                sealedAccepts = []
            }
        }
        guard !batch.isEmpty else { return }
        let inFlight = InFlightBatch(accepts: sealedAccepts, finishes: keptFinishes, auditCount: audits.count)
        commit.inFlight.append(inFlight)
        writer.write(batch) { [self] outcome in
            inFlight.set(outcome)
            loop.execute { [self] in completeWrites() }
        }
    }

    /// Completes, in order, the batches the writer has written.
    func completeWrites() {
        while let first = commit.inFlight.first, let outcome = first.outcome {
            commit.inFlight.removeFirst()
            completed(first, outcome)
        }
    }

    /// Waits for every write so far to be committed and completes them: for the rare
    /// operations that read right after writing outside the request path (offboarding, a
    /// shutdown). It blocks the loop for as long as the disk takes.
    func drainWrites() {
        flushWrites()
        if !commit.inFlight.isEmpty {
            writer.waitIdle()
            completeWrites()
        }
        // Whoever drains (a shutdown, offboarding) goes on as if every waiter had heard.
        while let next = wakeups.pending.popFirst() { next() }
    }

    /// Runs `body` once every write so far is committed (now, if none is in flight).
    func afterWrites(_ body: @escaping () -> Void) {
        flushWrites()
        guard let last = commit.inFlight.last else { body(); return }
        last.then.append(body)
    }

    private func completed(_ b: InFlightBatch, _ outcome: Store.WriteOutcome) {
        if case .failure(let error) = outcome.audits {
            logger.error("store failure writing the audit log", metadata: ["events": "\(b.auditCount)", "error": "\(error)"])
        }
        if case .failure(let error) = outcome.requeues {
            logger.error("store failure counting a lost job's attempt (it runs again at the next start)", metadata: ["error": "\(error)"])
        }
        switch outcome.finishes {
        case .success?:
            metrics.storeCommit.record(outcome.finishSeconds)
            for f in b.finishes {
                let heard = waiters.take(f.record.id)
                if !heard.isEmpty { wake(heard.map { cb in { cb(.success(f.view)) } }) }
                // Its size against job_records_max (RecordsBudget.swift): the output, sealed
                // (28 bytes more each), and about as much again for the request.
                let size = Int64(f.record.result.stdout.count + f.record.result.stderr.count + 512)
                recordsFinished(f.record.tenant, size: size)
            }
        case .failure(let error)?:
            // Kept, not dropped: a waiter told of a result the store does not hold would see
            // the job run again after a restart (a second result for one idempotency key).
            metrics.storeCommit.record(outcome.finishSeconds)
            logger.error(
                "store failure recording job results; kept, trying again every second", metadata: ["jobs": "\(b.finishes.count)", "error": "\(error)"])
            commit.finishes.insert(contentsOf: b.finishes, at: 0)
            retryFlushLater()
        case nil: break
        }
        switch outcome.accepts {
        case .success?:
            metrics.storeCommit.record(outcome.acceptSeconds)
            for p in b.accepts {
                if p.stream || p.wait { lendWhileAgentWaits(p.responder, for: p.job.id) }
                if p.stream {
                    acceptedStream(p.job, p.responder)
                } else if p.wait {
                    // Counted against the connection, never refused: the job is accepted.
                    addWaiter(p.job.id, for: p.responder, limited: false) { [r = p.responder] in r.job($0) }
                } else {
                    p.responder.job(memoryView(p.job))
                }
            }
        case .failure(let error)?:
            metrics.storeCommit.record(outcome.acceptSeconds)
            refuseAccepts(b.accepts, error)
        case nil: break
        }
        // The requests that waited for this batch: as many in a tick as its budget allows, like
        // the waiters (a hundred clients' pipelined job.waits that came during one commit were
        // ten milliseconds of the loop at once, measured).
        wake(b.then)
    }

    /// Accepts that could not be recorded: the jobs are taken back (killed if they started) and
    /// their callers told they were not accepted.
    private func refuseAccepts(_ accepts: [GroupCommit.PendingAccept], _ error: StoreError) {
        logger.error("store failure accepting jobs", metadata: ["jobs": "\(accepts.count)", "error": "\(error)"])
        perform(core.withdraw(accepts.map(\.job)))
        for p in accepts {
            dropStream(p.job.id)
            p.responder.fail(Self.storeRefusal(error, "the job could not be recorded, so it was not accepted"))
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

    /// Replies to waiters and requests that waited for a commit, in order, at most
    /// `Wakeups.perTurn` in one tick of the loop and no more than its budget allows
    /// (LoopTicks.swift): a job with four thousand `job.wait`s (a client that piles them up)
    /// would otherwise build every reply, and cut every client that goes over its budget on the
    /// way, before the loop serves anyone else.
    func wake(_ calls: [() -> Void]) {
        wakeups.pending.append(contentsOf: calls)
        runWakeups()
    }

    private func runWakeups() {
        guard !wakeups.scheduled else { return }
        var n = 0
        while n < Wakeups.perTurn, let next = wakeups.pending.popFirst() {
            n += 1
            guard let ticks = loopTicks else { next(); continue }
            ticks.charge(next)
            if ticks.overBudget { break }
        }
        guard !wakeups.pending.isEmpty else { return }
        wakeups.scheduled = true
        // In the next tick, not this one (LoopTicks.swift: an `execute` would run before the
        // loop reads anyone's requests again).
        loop.scheduleTask(in: LoopTicks.yieldDelay) { [self] in
            wakeups.scheduled = false
            runWakeups()
        }
    }

    /// Hears of the job's end once its result is committed. A job that ended but whose result
    /// is not recorded yet (in flight, or kept by a full disk) is heard of with the others then.
    /// The caller has seen the job unfinished (in the store or in memory).
    func addWaiter(_ id: String, _ callback: @escaping (Result<JobView, ProtocolError>) -> Void) {
        _ = waiters.add(id, owner: nil, callback)
    }

    /// The same for a client's request: the wait is the connection's, let go when it closes, and
    /// refused past its limit or all connections' (`serve --client-waits`, `--all-clients-waits`):
    /// then `refused` runs, or else `r` hears why, and false is returned. The job is untouched
    /// either way.
    @discardableResult
    func addWaiter(
        _ id: String, for r: Responder, limited: Bool = true, refused: (() -> Void)? = nil,
        _ callback: @escaping (Result<JobView, ProtocolError>) -> Void
    ) -> Bool {
        let tenant = r.agent?.tenant.value
        guard let refusal = waiters.add(id, owner: ObjectIdentifier(r.channel), agentTenant: tenant, limited: limited, callback) else {
            return true
        }
        if let refused { refused(); return false }
        let all = tenant.map { waiters.waits(ofTenant: $0) } ?? waiters.clientWaits
        r.fail(Self.waitRefusal(refusal, current: waiters.waits(of: ObjectIdentifier(r.channel)), all: all, tenant: tenant))
        return false
    }

    static func waitRefusal(_ refusal: WaitRefusal, current: Int, all: Int, tenant: String? = nil) -> ProtocolError {
        switch refusal {
        case .tenant(let limit):
            return ProtocolError(
                .quotaExceeded,
                "wait refused: tenant '\(tenant ?? "?")'s jobs already wait for \(all) job results on its agent socket, its limit (serve --client-waits \(limit), per tenant for agent sockets); the job is untouched: wait for fewer at once",
                details: ["quota": .string("tenant_waits"), "limit": .string(String(limit)), "current": .string(String(all))])
        case .client(let limit):
            return ProtocolError(
                .quotaExceeded,
                "wait refused: this connection already waits for \(current) job results, its limit (serve --client-waits \(limit)); the job is untouched: wait for fewer at once, or ask with job.get",
                details: ["quota": .string("client_waits"), "limit": .string(String(limit)), "current": .string(String(current))])
        case .allClients(let limit):
            return ProtocolError(
                .quotaExceeded,
                "wait refused: client connections already wait for \(all) job results, the daemon's limit (serve --all-clients-waits \(limit)); the job is untouched: try again when fewer are waited for, or ask with job.get",
                details: ["quota": .string("all_clients_waits"), "limit": .string(String(limit)), "current": .string(String(all))])
        }
    }

    /// The view of an accepted, unfinished job from memory (no store read).
    func memoryView(_ job: JobRecord) -> JobView {
        if let running = core.runningJob(job.id, tenant: job.tenant) { return running.view }
        return job.view
    }
}

/// Waiters' replies not made yet (Supervisor.wake).
struct Wakeups {
    static let perTurn = 64
    var pending = CircularBuffer<() -> Void>()
    var scheduled = false
}
