@testable import ClawpenCore
import ClawpenStore
import ClawpenWire
import XCTest

/// An upgrade without killing tenants: which passed descriptors are whose, what becomes of a
/// worker that answers (or does not), and the core's side of a handoff and an adoption.
final class HandoffTests: XCTestCase {
    private func record(_ id: String, tenant: String = "a", attempt: Int = 2) -> JobRecord {
        JobRecord(
            id: id, tenant: .t(tenant), state: .queued, argv: ["sleep", "9"], env: [], cwd: "/home", stdin: [], timeoutSeconds: 60,
            outputCap: 1024, idempotencyKey: nil, attempt: attempt, createdAt: 0)
    }

    func testTheStoredNamesPairEachWorkersSocketWithItsPidfd() {
        XCTAssertEqual(Handoff.socketName(tenant: .t("a-1"), pid: 42), "worker.42.a-1")
        XCTAssertEqual(Handoff.pidfdName(tenant: .t("a-1"), pid: 42), "pidfd.42.a-1")
        let passed = Handoff.classify([
            ("clawpen.socket", 3), ("worker.42.a", 4), ("pidfd.42.a", 5), ("pidfd.77.b", 6), ("worker.77.b", 7),
            ("worker.9.c", 8),
        ])
        XCTAssertEqual(passed.listener, 3)
        XCTAssertEqual(
            passed.workers,
            [
                Handoff.Stored(tenant: .t("a"), pid: 42, socketFD: 4, pidFD: 5),
                Handoff.Stored(tenant: .t("b"), pid: 77, socketFD: 7, pidFD: 6),
                Handoff.Stored(tenant: .t("c"), pid: 9, socketFD: 8, pidFD: nil),
            ])
        XCTAssertTrue(passed.strays.isEmpty)
    }

    func testWhatDoesNotParseOrPairIsAStrayToClose() {
        let passed = Handoff.classify([
            ("worker.42.a", 3), ("worker.42.a", 4), // a second socket for one pid
            ("pidfd.42.b", 5), // a pidfd named for another tenant than the socket
            ("pidfd.50.a", 6), // a pidfd without its socket
            ("worker.x.a", 7), ("worker.1.a", 8), ("worker.12.Bad!", 9), ("worker.12", 10), // no pid, pid 1, bad tenant, no tenant
            ("clawpen.socket", 11), ("other", 12), // a second listener
        ])
        XCTAssertEqual(passed.listener, 11)
        XCTAssertEqual(passed.workers, [Handoff.Stored(tenant: .t("a"), pid: 42, socketFD: 3, pidFD: nil)])
        XCTAssertEqual(
            Set(passed.strays.map(\.fd)), [4, 5, 6, 7, 8, 9, 10, 12], "everything but the listener and the one worker is closed")
    }

    func testAWorkerIsAdoptedOnlyWhenItIsWhoItsNameSaysAndRunsWhatTheStoreWaitsFor() {
        let stored = Handoff.Stored(tenant: .t("a"), pid: 42, socketFD: 4, pidFD: 5)
        let unfinished = ["j1": record("j1"), "j2": record("j2"), "jb": record("jb", tenant: "b")]
        func answer(version: UInt32 = WorkerProtocol.version, pid: Int32 = 42, tenant: String = "a", jobs: [String]) -> Handoff.Answer {
            .answered(AdoptedState(version: version, pid: pid, tenant: tenant, jobs: jobs.map { .init(jobID: $0, pid: 100, slot: 1) }))
        }
        func decide(_ a: Handoff.Answer, exists: Bool = true) -> Handoff.Verdict {
            Handoff.decide(stored, answer: a, tenantExists: exists, unfinished: unfinished, adoptable: WorkerProtocol.adoptable)
        }
        XCTAssertEqual(decide(answer(jobs: ["j2", "j1"])), .adopt([record("j2"), record("j1")]), "in the worker's order")
        XCTAssertEqual(decide(answer(jobs: [])), .adopt([]), "an idle worker is adopted too")
        let newer = WorkerProtocol.adoptable.upperBound + 1
        guard case .stop(let why) = decide(answer(version: newer, jobs: ["j1"])) else { return XCTFail("a newer protocol is stopped") }
        XCTAssertTrue(why.contains("protocol \(newer)"), why)
        // Version 1 workers left the jobs that ended between the supervisors out of the answer.
        guard case .stop = decide(answer(version: 1, jobs: [])) else { return XCTFail("an older protocol is stopped") }
        guard case .stop = decide(answer(pid: 43, jobs: [])) else { return XCTFail("another pid than the stored one") }
        guard case .stop = decide(answer(tenant: "b", jobs: [])) else { return XCTFail("another tenant than the stored one") }
        guard case .stop = decide(answer(jobs: []), exists: false) else { return XCTFail("a tenant deleted meanwhile") }
        guard case .stop(let other) = decide(answer(jobs: ["j1", "jb"])) else { return XCTFail("another tenant's job") }
        XCTAssertTrue(other.contains("jb"), other)
        guard case .stop = decide(answer(jobs: ["j1", "gone"])) else { return XCTFail("a job the store has finished") }
        guard case .stop = decide(answer(jobs: ["j1", "j1"])) else { return XCTFail("a job listed twice") }
        XCTAssertEqual(decide(.none("its socket closed")), .lost(why: "its socket closed"))
    }

    func testOnlyTheAdoptedJobsStayOutOfTheQueue() {
        let all = [record("j1"), record("j2"), record("j3")]
        XCTAssertEqual(Handoff.requeued(all, adopted: ["j2"]).map(\.id), ["j1", "j3"])
        XCTAssertEqual(Handoff.requeued(all, adopted: []).map(\.id), ["j1", "j2", "j3"])
    }

    func testTheAdoptionMessagesRoundTrip() throws {
        for m: SupervisorToWorker in [.handoff(version: 1), .adopt(version: 7)] {
            XCTAssertEqual(try SupervisorToWorker.decode(m.encoded()), m)
        }
        let state = AdoptedState(version: 1, pid: 4242, tenant: "a", jobs: [.init(jobID: "j1", pid: 5, slot: 3), .init(jobID: "j2", pid: 6, slot: 0)])
        for m: WorkerToSupervisor in [.handoffReady(version: 1), .adopted(state)] {
            XCTAssertEqual(try WorkerToSupervisor.decode(m.encoded(), outputCap: 0), m)
        }
        // Untrusted: a count beyond what the payload holds, an over-long job id.
        var w = BinaryWriter()
        w.u8(7); w.u32(1); w.i32(1); w.string("a"); w.u32(AdoptedState.maxJobs + 1)
        XCTAssertThrowsError(try WorkerToSupervisor.decode(w.bytes, outputCap: 0))
        var long = BinaryWriter()
        long.u8(7); long.u32(1); long.i32(1); long.string("a"); long.u32(1); long.string(String(repeating: "x", count: 200)); long.i32(1); long.u32(0)
        XCTAssertThrowsError(try WorkerToSupervisor.decode(long.bytes, outputCap: 0))
    }

    func testAHandedOffWorkerLeavesWithoutAResultAndTheRestShutsDown() throws {
        let shell = FakeShell()
        let a = shell.addTenant("a"), b = shell.addTenant("b")
        let ja = try shell.submit(a)
        try shell.submit(b)
        let wa = try XCTUnwrap(shell.worker(a)), wb = try XCTUnwrap(shell.worker(b))
        shell.ready(wa); shell.ready(wb)
        XCTAssertEqual(shell.core.running, 2)
        shell.perform(shell.core.suspend(b, by: "test"))
        // b is suspended (frozen): only a is handed over.
        XCTAssertEqual(shell.core.beginHandoff(), [wa])
        XCTAssertTrue(shell.core.draining)
        shell.perform(shell.core.workerHandedOff(wa))
        XCTAssertNil(shell.worker(a))
        XCTAssertEqual(shell.tenant(a).runningCount, 0)
        XCTAssertFalse(shell.finished.contains { $0.id == ja.id }, "no result recorded: the job runs on under the next supervisor")
        XCTAssertTrue(shell.spawnRequests.filter { $0 == a }.count == 1, "no new worker for a")
        shell.perform(shell.core.finishHandoff())
        XCTAssertFalse(shell.shutdownComplete, "b's running job gets the grace period")
        shell.advance(10)
        XCTAssertTrue(shell.sent.contains { $0.0 == wb && $0.1 == .shutdown }, "the rest stops as in a shutdown")
        XCTAssertFalse(shell.sent.contains { $0.0 == wa && $0.1 == .shutdown }, "the handed-off worker is never told to stop")
        XCTAssertFalse(shell.killed.contains(wa))
        shell.exit(wb)
        XCTAssertTrue(shell.shutdownComplete)
    }

    func testAnAdoptedWorkersJobsRunOnAndTheirResultsAreRecorded() throws {
        let shell = FakeShell()
        let a = shell.addTenant("a")
        let job = record("j1")
        let w = shell.core.workerSpawned(a, pid: 4242)
        shell.core.workerAdopted(w, jobs: [job])
        XCTAssertEqual(shell.core.running, 1, "its slot is taken")
        XCTAssertEqual(shell.tenant(a).runningCount, 1)
        shell.perform(shell.core.workerAttached(w))
        shell.ready(w)
        XCTAssertTrue(shell.runs(to: w).isEmpty, "an adopted job is not sent again")
        shell.report(w, "j1", exit: 0)
        XCTAssertEqual(shell.finished.map(\.id), ["j1"])
        XCTAssertEqual(shell.finished.first?.state, .succeeded)
        XCTAssertEqual(shell.core.running, 0)
    }
}
