import XCTest

@testable import ClawpenCore
import ClawpenProtocol
import ClawpenWire

/// The offboarding life cycle (OffboardingBook) on a clock the test moves.
final class OffboardingTests: XCTestCase {
    let day = 86_400.0

    func testGraceThenDueThenShreddingThenDone() throws {
        var book = OffboardingBook()
        let t0 = 1_000_000.0
        guard case .success(let e) = book.offboard(.t("acme"), uid: 100_001, now: t0, graceDays: 2, immediate: false, deleteAudit: false, by: "root")
        else { return XCTFail("refused") }
        XCTAssertEqual(e.deadline, t0 + 2 * day)
        XCTAssertEqual(e.phase, .grace)
        XCTAssertTrue(book.isOffboarding(.t("acme")))
        XCTAssertEqual(book.nextDeadline(), t0 + 2 * day)
        XCTAssertEqual(book.due(now: t0 + 2 * day - 1), [], "not before the deadline")
        XCTAssertEqual(book.due(now: t0 + 2 * day).map(\.tenant), [.t("acme")])
        XCTAssertEqual(book.beginShredding(.t("acme"))?.phase, .shredding)
        XCTAssertNil(book.nextDeadline(), "no timer for a shredding tenant")
        XCTAssertEqual(book.due(now: t0).map(\.tenant), [.t("acme")], "a shredding left half-done is due at once (a restart)")
        guard case .failure(.pastGrace) = book.restore(.t("acme"), now: t0) else { return XCTFail("restored after shredding began") }
        XCTAssertEqual(book.finished(.t("acme"))?.phase, .done)
        XCTAssertFalse(book.isOffboarding(.t("acme")))
        XCTAssertEqual(book.due(now: t0 + 100 * day), [])
        guard case .failure(.notOffboarding) = book.restore(.t("acme"), now: t0) else { return XCTFail("done is final") }
    }

    func testNowIsAZeroGracePeriodAndTheDefaultIsThirtyDays() {
        var book = OffboardingBook()
        guard case .success(let now) = book.offboard(.t("a"), uid: 1, now: 50, graceDays: nil, immediate: true, deleteAudit: true, by: "op"),
            case .success(let later) = book.offboard(.t("b"), uid: 2, now: 50, graceDays: nil, immediate: false, deleteAudit: false, by: "op")
        else { return XCTFail("refused") }
        XCTAssertEqual(now.deadline, 50)
        XCTAssertEqual(later.deadline, 50 + OffboardingBook.defaultGraceDays * day)
        XCTAssertEqual(book.due(now: 50).map(\.tenant), [.t("a")])
        XCTAssertEqual(book.nextDeadline(), 50, "the earliest deadline")
        XCTAssertEqual(OffboardingBook.steps(for: now).last, .removeAudit, "audit rows only with --delete-audit")
        XCTAssertFalse(OffboardingBook.steps(for: later).contains(.removeAudit))
        XCTAssertEqual(OffboardingBook.steps(for: later).first, .destroyKey, "the key goes first")
    }

    func testRestoreOnlyWithinTheGracePeriodAndNoSecondOffboarding() {
        var book = OffboardingBook()
        _ = book.offboard(.t("a"), uid: 1, now: 0, graceDays: 1, immediate: false, deleteAudit: false, by: "op")
        guard case .failure(.alreadyOffboarding) = book.offboard(.t("a"), uid: 1, now: 1, graceDays: 1, immediate: false, deleteAudit: false, by: "op")
        else { return XCTFail("a second offboarding started") }
        guard case .failure(.pastGrace) = book.restore(.t("a"), now: day) else { return XCTFail("restored at the deadline") }
        guard case .success = book.restore(.t("a"), now: day - 1) else { return XCTFail("not restored within the grace") }
        XCTAssertFalse(book.isOffboarding(.t("a")))
        XCTAssertNil(book.nextDeadline())
        // A book rebuilt from the store's rows decides the same (the timer survives restarts).
        _ = book.offboard(.t("b"), uid: 2, now: 10, graceDays: 3, immediate: false, deleteAudit: false, by: "op")
        let reloaded = OffboardingBook(Array(book.entries.values))
        XCTAssertEqual(reloaded, book)
        XCTAssertEqual(reloaded.nextDeadline(), 10 + 3 * day)
    }

    func testOffboardSuspendsAndStopsTheWorkerAndTheTenantCanBeRemovedOnceItIsGone() throws {
        let shell = FakeShell()
        let acme = shell.addTenant("acme")
        try shell.submit(acme)
        let w = try XCTUnwrap(shell.worker(acme))
        shell.ready(w)
        shell.perform(shell.core.offboard(acme, by: "offboarding"))
        XCTAssertNotNil(shell.tenant(acme).lifecycle.suspension, "suspended")
        let told = shell.sent.contains { sent in
            if case .shutdown = sent.1 { return sent.0 == w }
            return false
        }
        XCTAssertTrue(told || shell.killed.contains(w), "the worker is told to stop")
        XCTAssertFalse(shell.core.removeTenant(acme), "not while its worker lives")
        shell.perform(shell.core.workerExited(w, how: WorkerFailure(.exited, stage: "exit", detail: "exited 0")))
        XCTAssertNil(shell.worker(acme), "no new worker for an offboarding tenant")
        XCTAssertTrue(shell.core.removeTenant(acme))
        XCTAssertNil(shell.core.tenants[acme])
    }
}
