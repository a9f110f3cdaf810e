@testable import ClawpenCore
import ClawpenProtocol
import ClawpenWire
import XCTest

/// File operations in the core: they start a worker as a job does, go to it once it can take
/// them, keep it from being reaped while a transfer runs, and are refused or failed on the same
/// availability rules as a submit.
final class FileOpsCoreTests: XCTestCase {
    func testAFileOperationStartsAWorkerAndGoesToItOnceItsSocketIsAttached() throws {
        let s = FakeShell()
        let a = s.addTenant("a")
        XCTAssertNil(s.core.fileRefusal(s.tenant(a)))
        s.perform(s.core.fileOpsRequested(s.tenant(a)))
        XCTAssertEqual(s.spawnRequests, [a], "a file operation needs a worker like a job")
        let w = try XCTUnwrap(s.worker(a))
        XCTAssertEqual(s.fileOpsStarted.map(\.1), [w], "sent behind the configure frame, as a first job is")
        XCTAssertEqual(s.tenant(a).fileOpsActive, 1)
        XCTAssertEqual(s.tenant(a).fileOpsWaiting, 0)
        // A second one goes to the running worker at once; no second spawn.
        s.ready(w)
        s.perform(s.core.fileOpsRequested(s.tenant(a)))
        XCTAssertEqual(s.spawnRequests.count, 1)
        XCTAssertEqual(s.fileOpsStarted.count, 2)
    }

    func testAWorkerWithATransferUnderWayIsNotReapedAsIdle() throws {
        let s = FakeShell(idleTimeoutMs: 1000)
        let a = s.addTenant("a")
        s.perform(s.core.fileOpsRequested(s.tenant(a)))
        let w = try XCTUnwrap(s.worker(a))
        s.ready(w)
        XCTAssertNil(s.timers[.idle(a, worker: w.id)], "no idle timer while a file operation runs")
        s.advance(5)
        XCTAssertFalse(s.sent.contains { $0.1 == .shutdown }, "a long get keeps its worker")
        XCTAssertEqual(s.state(a), .ready)
        s.perform(s.core.fileOpEnded(a))
        XCTAssertNotNil(s.timers[.idle(a, worker: w.id)], "idle once the transfer is over")
        s.advance(1.1)
        XCTAssertEqual(s.sent.last?.1, .shutdown)
    }

    func testAnIdleTimerArmedBeforeAFileOperationIsCanceled() throws {
        let s = FakeShell(idleTimeoutMs: 1000)
        let a = s.addTenant("a")
        let job = try s.submit(a)
        let w = try XCTUnwrap(s.worker(a))
        s.ready(w); s.report(w, job.id)
        XCTAssertNotNil(s.timers[.idle(a, worker: w.id)])
        s.advance(0.5)
        s.perform(s.core.fileOpsRequested(s.tenant(a)))
        s.advance(2)
        XCTAssertFalse(s.sent.contains { $0.1 == .shutdown })
    }

    func testSuspendedQuarantinedAndDrainingTenantsRefuseFileOperations() throws {
        let s = FakeShell()
        let a = s.addTenant("a")
        s.perform(s.core.suspend(a, by: "uid 0 (root)"))
        let refusal = try XCTUnwrap(s.core.fileRefusal(s.tenant(a)))
        XCTAssertEqual(refusal.code, .unavailable)
        XCTAssertEqual(refusal.details["rule"], .string("suspended"))
        s.perform(s.core.resume(a))
        XCTAssertNil(s.core.fileRefusal(s.tenant(a)))

        let b = s.addTenant("b", limits: FakeShell.limits { $0.crashLoopMax = 2 })
        s.spawnFails = WorkerFailure(.start, stage: "clone3", errno: 12, errnoText: "Cannot allocate memory")
        s.perform(s.core.fileOpsRequested(s.tenant(b)))
        XCTAssertEqual(s.state(b), .quarantined)
        XCTAssertEqual(s.fileOpsFailed.map(\.0), [b], "what waits for a worker that cannot start fails, with the reason")
        XCTAssertEqual(s.fileOpsFailed.first?.1.details["rule"], .string("crash_loop_max"))
        XCTAssertEqual(s.tenant(b).fileOpsWaiting, 0)
        XCTAssertEqual(s.core.fileRefusal(s.tenant(b))?.details["rule"], .string("crash_loop_max"))

        s.perform(s.core.beginShutdown())
        XCTAssertEqual(s.core.fileRefusal(s.tenant(a))?.code, .unavailable)
    }
}
