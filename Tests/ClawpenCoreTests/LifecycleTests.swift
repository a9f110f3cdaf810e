@testable import ClawpenCore
import ClawpenProtocol
import ClawpenStore
import ClawpenWire
import XCTest

/// Every life-cycle rule of the supervisor, driven through the core with a fake clock and a fake
/// shell: no daemon, no root, no sockets.
final class WorkerLifecycleTests: XCTestCase {
    func testFirstJobStartsAWorkerAndIsSentBehindItsConfigure() throws {
        let s = FakeShell()
        let a = s.addTenant("a")
        XCTAssertEqual(s.state(a), .idle)
        let job = try s.submit(a)
        XCTAssertEqual(s.spawnRequests, [a])
        let w = try XCTUnwrap(s.worker(a))
        XCTAssertEqual(s.state(a), .starting)
        XCTAssertEqual(s.runs(to: w).map(\.jobID), [job.id], "sent before ready: it waits in the worker's socket")
        s.ready(w)
        XCTAssertEqual(s.state(a), .busy)
        s.report(w, job.id)
        XCTAssertEqual(s.finished.map(\.state), [.succeeded])
        XCTAssertEqual(s.state(a), .ready)
        XCTAssertNotNil(s.timers[.idle(a, worker: w.id)], "an idle worker gets its idle timer")
    }

    func testIdleWorkerIsReapedAndANewOneStartsOnDemand() throws {
        let s = FakeShell(idleTimeoutMs: 5000)
        let a = s.addTenant("a")
        let job = try s.submit(a)
        let w = try XCTUnwrap(s.worker(a))
        s.ready(w); s.report(w, job.id)
        s.advance(4.9)
        XCTAssertEqual(s.state(a), .ready)
        s.advance(0.2)
        XCTAssertEqual(s.sent.last?.1, .shutdown)
        XCTAssertEqual(s.state(a), .stopping)
        s.exit(w, "exited with status 0")
        XCTAssertEqual(s.state(a), .idle)
        XCTAssertEqual(s.tenant(a).lifecycle.restarts, 0, "an idle stop is no restart")
        XCTAssertNil(s.tenant(a).lifecycle.lastError)
        try s.submit(a)
        XCTAssertEqual(s.spawnRequests.count, 2)
    }

    func testABusyWorkerIsNotReaped() throws {
        let s = FakeShell(idleTimeoutMs: 1000)
        let a = s.addTenant("a")
        let first = try s.submit(a)
        let w = try XCTUnwrap(s.worker(a))
        s.ready(w); s.report(w, first.id)
        s.advance(0.5)
        try s.submit(a) // running when the old idle timer would have fired
        s.advance(2)
        XCTAssertEqual(s.state(a), .busy)
        XCTAssertFalse(s.sent.contains { $0.1 == .shutdown })
    }

    func testAWorkerThatDiesRequeuesItsJobWithTheNextAttempt() throws {
        let s = FakeShell()
        let a = s.addTenant("a")
        let job = try s.submit(a)
        let w1 = try XCTUnwrap(s.worker(a))
        s.ready(w1)
        s.exit(w1)
        XCTAssertEqual(s.requeued, [job.id])
        XCTAssertEqual(s.tenant(a).lifecycle.restarts, 1)
        // First failure in a row: no back-off, a new worker at once, the job on it with attempt 2.
        let w2 = try XCTUnwrap(s.worker(a))
        XCTAssertNotEqual(w1, w2)
        XCTAssertEqual(s.runs(to: w2).map(\.jobID), [job.id])
        XCTAssertEqual(s.tenant(a).inFlight[job.id]?.attempt, 2)
        XCTAssertEqual("\(s.tenant(a).lifecycle.lastError!)", "worker was killed by signal 9")
    }

    func testAJobSentBehindConfigureToAWorkerThatNeverGotReadyKeepsItsAttempt() throws {
        let s = FakeShell()
        let a = s.addTenant("a")
        let job = try s.submit(a)
        let w1 = try XCTUnwrap(s.worker(a))
        s.exit(w1, "exited with status 3")
        XCTAssertEqual(s.requeued, [], "it never started: no attempt counted")
        XCTAssertEqual(s.tenant(a).lifecycle.restarts, 0, "a failed start is not a restart")
        let w2 = try XCTUnwrap(s.worker(a))
        XCTAssertEqual(s.tenant(a).inFlight[job.id]?.attempt, 1)
        XCTAssertEqual(s.runs(to: w2).map(\.jobID), [job.id])
    }

    func testGivesUpAfterMaxAttempts() throws {
        let s = FakeShell()
        let a = s.addTenant(
            "a",
            limits: FakeShell.limits {
                $0.maxAttempts = 3; $0.crashLoopMax = 100
            })
        let job = try s.submit(a)
        for attempt in 1...3 {
            let w = try XCTUnwrap(s.worker(a), "attempt \(attempt)")
            s.ready(w)
            XCTAssertEqual(s.tenant(a).inFlight[job.id]?.attempt, attempt)
            s.exit(w)
            s.advance(10) // whatever back-off
        }
        let done = try XCTUnwrap(s.finished.last)
        XCTAssertEqual(done.state, .failed)
        XCTAssertEqual(done.result?.error?.code, .workerCrashed)
        XCTAssertTrue(done.result?.error?.message.contains("attempt 3 of 3") ?? false, "\(String(describing: done.result?.error))")
        XCTAssertEqual(s.tenant(a).lifecycle.restarts, 3)
    }

    func testOneBackOffFormulaUpToTheCap() {
        let rule = CrashLoopRule(maxFailures: 5, windowSeconds: 60, backoffCapMs: 5000, maxAttempts: 3)
        XCTAssertEqual((1...9).map { rule.backoffMs(failures: $0) }, [0, 100, 200, 400, 800, 1600, 3200, 5000, 5000])
        XCTAssertEqual(rule.backoffMs(failures: 1000), 5000, "no overflow")
    }

    func testWhatBecomesOfAJobLostWithItsWorker() {
        let rule = CrashLoopRule(maxFailures: 5, windowSeconds: 60, backoffCapMs: 5000, maxAttempts: 3)
        func job(_ attempt: Int) -> JobRecord {
            JobRecord(
                id: "j", tenant: .t("a"), state: .running, argv: ["x"], env: [], cwd: "/home", stdin: [], timeoutSeconds: 1,
                outputCap: 1, idempotencyKey: nil, attempt: attempt, createdAt: 0)
        }
        func decide(_ attempt: Int, ready: Bool = true, cancel: Bool = false, quarantined: Bool = false, draining: Bool = false) -> LostJobDecision {
            CrashPolicy.decide(
                job(attempt), workerWasReady: ready, cancelRequested: cancel, rule: rule, quarantined: quarantined,
                draining: draining, reason: "worker was killed by signal 9")
        }
        XCTAssertEqual(decide(1), .retry)
        XCTAssertEqual(decide(2), .retry)
        XCTAssertEqual(decide(3), .fail("worker was killed by signal 9 while running this job (attempt 3 of 3)"))
        XCTAssertEqual(decide(1, cancel: true), .canceled, "a cancel asked for wins")
        XCTAssertEqual(decide(1, ready: false), .requeueUnstarted, "it never started")
        XCTAssertEqual(decide(1, ready: false, draining: true), .requeueUnstarted, "it stays queued for the next start")
        XCTAssertEqual(decide(1, ready: false, quarantined: true), .requeueUnstarted, "the quarantine fails it with the queue")
        guard case .fail(let why) = decide(1, quarantined: true) else { return XCTFail() }
        XCTAssertTrue(why.hasSuffix("the tenant is quarantined"), why)
        guard case .fail = decide(1, draining: true) else { return XCTFail("no retry while the daemon stops") }
    }

    func testRepeatedFailuresBackOffThenQuarantineTheTenant() throws {
        let s = FakeShell()
        let a = s.addTenant(
            "a",
            limits: FakeShell.limits {
                $0.crashLoopMax = 4; $0.crashLoopWindowSeconds = 60
            })
        s.spawnFails = WorkerFailure(.start, stage: "clone3", errno: 12, errnoText: "Cannot allocate memory")
        let queued = try s.submit(a)
        // Failure 1: at once again (failure 2), then 100 ms, then 200 ms.
        XCTAssertEqual(s.spawnRequests.count, 2)
        XCTAssertEqual(s.state(a), .crashed)
        XCTAssertEqual(s.timers[.restart(a)], s.clock.now + 0.1)
        s.advance(0.099)
        XCTAssertEqual(s.spawnRequests.count, 2, "not before its back-off")
        s.advance(0.002)
        XCTAssertEqual(s.spawnRequests.count, 3)
        // Armed at the restart (1 ms before now): 200 ms.
        XCTAssertEqual(try XCTUnwrap(s.timers[.restart(a)]) - s.clock.now, 0.199, accuracy: 0.0001)
        XCTAssertTrue(s.finished.isEmpty, "the job waits while the worker is retried")
        s.advance(0.2)
        // The fourth failure within the window quarantines the tenant.
        XCTAssertEqual(s.spawnRequests.count, 4)
        XCTAssertEqual(s.state(a), .quarantined)
        let q = try XCTUnwrap(s.tenant(a).lifecycle.quarantine)
        XCTAssertTrue(q.reason.contains("4 times within 60 s") && q.reason.contains("clone3"), q.reason)
        XCTAssertEqual(s.finished.map(\.id), [queued.id], "what waited fails now, with the reason")
        XCTAssertEqual(s.finished.first?.result?.error?.code, .workerCrashed)
        XCTAssertTrue(s.finished.first?.result?.error?.message.contains("cannot start") ?? false)
        XCTAssertEqual(s.audits.map(\.action), ["tenant.quarantined"])
        // Submits are refused, saying when it retries.
        guard case .failure(let refusal) = s.admit(a) else { return XCTFail("a quarantined tenant takes no job") }
        XCTAssertEqual(refusal.error.code, .unavailable)
        XCTAssertEqual(refusal.rule, "crash_loop_max")
        XCTAssertEqual(refusal.error.details["retry_after_ms"]?.intValue, 400)
        // After its back-off a new job may try again; the next failure keeps it quarantined, longer.
        s.advance(0.5)
        XCTAssertEqual(s.state(a), .quarantined, "still quarantined (no worker has served a window)")
        s.spawnFails = nil
        guard case .failure = s.admit(a) else { return XCTFail() }
    }

    func testAWorkerThatServesAWholeWindowClearsTheQuarantine() throws {
        let s = FakeShell()
        let a = s.addTenant(
            "a",
            limits: FakeShell.limits {
                $0.crashLoopMax = 2; $0.crashLoopWindowSeconds = 10
            })
        try s.submit(a)
        s.exit(try XCTUnwrap(s.worker(a)), "exited with status 1")
        s.exit(try XCTUnwrap(s.worker(a)), "exited with status 1")
        XCTAssertEqual(s.state(a), .quarantined)
        s.advance(1) // the back-off (100 ms)
        XCTAssertEqual(s.state(a), .quarantined, "idle, but still quarantined")
        let resume = s.core.resume(a) // an operator could; here: the window instead
        XCTAssertFalse(resume.isEmpty == false && s.tenant(a).lifecycle.quarantine != nil)
        s.perform(resume)
        // Now a worker serves for longer than the window, then dies: the count starts again.
        try s.submit(a)
        let w = try XCTUnwrap(s.worker(a))
        s.ready(w)
        s.advance(11)
        s.exit(w)
        XCTAssertNil(s.tenant(a).lifecycle.quarantine)
        XCTAssertEqual(s.tenant(a).lifecycle.failuresInARow, 1)
        XCTAssertEqual(s.state(a), .starting, "first failure in a row: restarted at once")
    }

    func testResumeLiftsAQuarantineAndStartsAtOnce() throws {
        let s = FakeShell()
        let a = s.addTenant("a", limits: FakeShell.limits { $0.crashLoopMax = 2 })
        s.spawnFails = WorkerFailure(.start, stage: "exec", errno: 2, errnoText: "No such file or directory")
        try s.submit(a)
        XCTAssertEqual(s.state(a), .quarantined)
        XCTAssertNotNil(s.timers[.restart(a)])
        s.spawnFails = nil
        s.perform(s.core.resume(a))
        XCTAssertNil(s.timers[.restart(a)], "the back-off is cancelled")
        XCTAssertEqual(s.state(a), .idle)
        XCTAssertEqual(s.tenant(a).lifecycle.failuresInARow, 0)
        try s.submit(a)
        XCTAssertEqual(s.state(a), .starting)
    }

    func testMisbehavingWorkerIsKilledAndCountsAsAFailure() throws {
        let s = FakeShell()
        let a = s.addTenant("a")
        let job = try s.submit(a)
        let w = try XCTUnwrap(s.worker(a))
        s.ready(w)
        s.ready(w) // ready twice
        XCTAssertEqual(s.killed, [w])
        XCTAssertEqual(s.state(a), .stopping)
        s.exit(w)
        XCTAssertEqual(s.tenant(a).lifecycle.lastError?.kind, .misbehaved)
        XCTAssertEqual("\(s.tenant(a).lifecycle.lastError!)", "worker misbehaved (said ready twice)")
        XCTAssertEqual(s.tenant(a).inFlight[job.id]?.attempt, 2, "its job runs again on the next worker")
    }

    func testAResultForAJobTheWorkerWasNotGivenIsMisbehaviour() throws {
        let s = FakeShell()
        let a = s.addTenant("a")
        try s.submit(a)
        let w = try XCTUnwrap(s.worker(a))
        s.ready(w)
        s.report(w, "not-mine")
        XCTAssertEqual(s.killed, [w])
    }

    func testNewsFromAnOldWorkerChangesNothing() throws {
        let s = FakeShell()
        let a = s.addTenant("a")
        let job = try s.submit(a)
        let old = try XCTUnwrap(s.worker(a))
        s.ready(old)
        s.exit(old)
        let new = try XCTUnwrap(s.worker(a))
        s.report(old, job.id) // late
        s.ready(old) // late
        s.exit(old) // twice
        XCTAssertTrue(s.finished.isEmpty)
        XCTAssertEqual(s.worker(a), new)
        XCTAssertEqual(s.tenant(a).lifecycle.restarts, 1)
        XCTAssertTrue(s.killed.isEmpty)
    }

    func testSuspendFreezesRefusesAndKeepsTheQueue() throws {
        let s = FakeShell()
        let a = s.addTenant("a", limits: FakeShell.limits { $0.maxConcurrentRuns = 1 })
        let running = try s.submit(a, timeout: 10)
        let w = try XCTUnwrap(s.worker(a))
        s.ready(w)
        let waiting = try s.submit(a)
        s.perform(s.core.suspend(a, by: "uid 0 (root)"))
        XCTAssertEqual(s.state(a), .suspended)
        XCTAssertEqual(s.frozen.map(\.1), [w])
        guard case .failure(let refusal) = s.admit(a) else { return XCTFail("a suspended tenant takes no job") }
        XCTAssertEqual(refusal.error.code, .unavailable)
        XCTAssertTrue(refusal.error.message.contains("suspended (by uid 0 (root))"), refusal.error.message)
        // The running job ends while suspended (it was frozen after its exit): the next waits.
        s.report(w, running.id)
        XCTAssertEqual(s.runs(to: w).map(\.jobID), [running.id], "nothing dispatched while suspended")
        XCTAssertEqual(s.tenant(a).queue.count, 1)
        s.advance(3600)
        XCTAssertEqual(s.state(a), .suspended, "a suspended worker is not reaped as idle")
        XCTAssertFalse(s.sent.contains { $0.1 == .shutdown })
        s.perform(s.core.resume(a))
        XCTAssertEqual(s.thawed.map(\.2), [3_600_000], "the worker moves deadlines by the pause")
        XCTAssertEqual(s.runs(to: w).map(\.jobID), [running.id, waiting.id])
        XCTAssertEqual(s.state(a), .busy)
    }

    func testSuspendedTenantStartsNoWorker() throws {
        let s = FakeShell()
        let a = s.addTenant("a")
        s.perform(s.core.suspend(a, by: "ops"))
        // A job accepted before the suspension (in the same tick) waits.
        let job = try JobRecord(
            id: "j1", tenant: .t("a"), state: .queued, argv: ["/usr/bin/true"], env: [], cwd: "/home", stdin: [],
            timeoutSeconds: 1, outputCap: 10, idempotencyKey: nil, attempt: 1, createdAt: 0)
        s.perform(s.core.accepted([job]))
        XCTAssertTrue(s.spawnRequests.isEmpty)
        s.perform(s.core.resume(a))
        XCTAssertEqual(s.spawnRequests, [a])
        XCTAssertTrue(s.frozen.isEmpty && s.thawed.isEmpty, "nothing was running to freeze")
        _ = try XCTUnwrap(s.worker(a))
    }

    func testShutdownLetsRunningJobsFinishThenStopsEveryWorker() throws {
        let s = FakeShell(shutdownGraceMs: 5000)
        let a = s.addTenant("a"), b = s.addTenant("b")
        let job = try s.submit(a)
        let wa = try XCTUnwrap(s.worker(a)); s.ready(wa)
        let jb = try s.submit(b)
        let wb = try XCTUnwrap(s.worker(b)); s.ready(wb); s.report(wb, jb.id)
        s.perform(s.core.beginShutdown())
        XCTAssertFalse(s.sent.contains { $0.1 == .shutdown }, "a job still runs")
        guard case .failure(let r) = s.admit(a) else { return XCTFail() }
        XCTAssertEqual(r.error.code, .unavailable)
        s.report(wa, job.id)
        XCTAssertEqual(s.sent.filter { $0.1 == .shutdown }.map(\.0).sorted { $0.id < $1.id }, [wa, wb])
        XCTAssertFalse(s.shutdownComplete)
        s.exit(wa, "exited with status 0")
        s.exit(wb, "exited with status 0")
        XCTAssertTrue(s.shutdownComplete)
        XCTAssertEqual(s.tenant(a).lifecycle.restarts, 0)
    }

    func testShutdownGracePeriodStopsWorkersWithJobsStillRunning() throws {
        let s = FakeShell(shutdownGraceMs: 5000)
        let a = s.addTenant("a")
        let job = try s.submit(a)
        let w = try XCTUnwrap(s.worker(a)); s.ready(w)
        s.perform(s.core.suspend(a, by: "ops"))
        s.perform(s.core.beginShutdown())
        s.advance(5.1)
        XCTAssertEqual(s.thawed.count, 1, "a frozen worker is thawed so that it can stop")
        XCTAssertEqual(s.sent.last?.1, .shutdown)
        s.advance(3.1)
        XCTAssertEqual(s.killed, [w], "one that does not stop in 3 s is killed")
        s.exit(w)
        XCTAssertTrue(s.shutdownComplete)
        XCTAssertFalse(s.finished.contains { $0.id == job.id }, "its job stays running in the store, for the next start")
    }

    func testCancelQueuedAndRunningJobs() throws {
        let s = FakeShell()
        let a = s.addTenant("a", limits: FakeShell.limits { $0.maxConcurrentRuns = 1 })
        let running = try s.submit(a)
        let w = try XCTUnwrap(s.worker(a)); s.ready(w)
        let queued = try s.submit(a)
        let (q, qa) = s.core.cancel(queued.id, tenant: a)
        s.perform(qa)
        XCTAssertEqual(q, .canceledQueued)
        XCTAssertEqual(s.finished.last?.state, .canceled)
        let (r, ra) = s.core.cancel(running.id, tenant: a)
        s.perform(ra)
        XCTAssertEqual(r, .cancelSent)
        XCTAssertEqual(s.sent.last?.1, .cancel(jobID: running.id))
        // The worker dies before reporting it: a cancel asked for ends canceled, not retried.
        s.exit(w)
        XCTAssertEqual(s.finished.last?.id, running.id)
        XCTAssertEqual(s.finished.last?.state, .canceled)
        XCTAssertTrue(s.requeued.isEmpty)
    }

    func testWithdrawnJobsAreNeitherRunNorRecorded() throws {
        let s = FakeShell()
        let a = s.addTenant("a")
        let job = try s.submit(a)
        let w = try XCTUnwrap(s.worker(a)); s.ready(w)
        s.perform(s.core.withdraw([job]))
        XCTAssertEqual(s.sent.last?.1, .cancel(jobID: job.id))
        s.report(w, job.id, exit: 137)
        XCTAssertTrue(s.finished.isEmpty, "a job whose acceptance failed leaves no record")
    }

    func testAnOOMKillIsReadFromTheTenantsMemoryEvents() throws {
        let s = FakeShell()
        let a = s.addTenant("a")
        let job = try s.submit(a)
        let w = try XCTUnwrap(s.worker(a)); s.ready(w)
        s.probe.oomKills[a] = 1
        s.perform(
            s.core.jobReported(
                w,
                JobReport(
                    jobID: job.id, outcome: .signaled(signal: 9), stdout: [], stderr: [],
                    stdoutTruncated: false, stderrTruncated: false, runMicros: 1, cpuMicros: 1, maxRSSKiB: 1)))
        XCTAssertEqual(s.finished.last?.state, .oomKilled)
        XCTAssertEqual(s.finished.last?.result?.error?.code, .oomKilled)
    }

    func testWorkerStatesFollowTheContract() throws {
        // Every state of the contract is produced by the life cycle.
        let s = FakeShell(idleTimeoutMs: 1000)
        let a = s.addTenant("a", limits: FakeShell.limits { $0.crashLoopMax = 2 })
        var seen: Set<WorkerState> = [s.state(a)]
        let job = try s.submit(a); seen.insert(s.state(a))
        let w = try XCTUnwrap(s.worker(a)); s.ready(w); seen.insert(s.state(a))
        s.report(w, job.id); seen.insert(s.state(a))
        s.advance(1.1); seen.insert(s.state(a)) // stopping
        s.exit(w, "exited with status 0")
        s.perform(s.core.suspend(a, by: "ops")); seen.insert(s.state(a))
        s.perform(s.core.resume(a))
        s.spawnFails = WorkerFailure(.start, stage: "exec", errno: 2)
        try s.submit(a)
        seen.insert(s.state(a)) // quarantined (two failures)
        s.perform(s.core.resume(a))
        let b = s.addTenant("b")
        s.spawnFails = nil
        try s.submit(b)
        let wb = try XCTUnwrap(s.worker(b)); s.ready(wb)
        s.spawnFails = WorkerFailure(.start, stage: "exec", errno: 2)
        s.exit(wb)
        seen.insert(s.state(b)) // crashed (backing off)
        XCTAssertEqual(seen, Set(WorkerState.allCases))
    }
}
