@testable import ClawpenCore
import XCTest

/// RecordsLedger: when a tenant's finished records are over job_records_max, how much a pass
/// frees, and what finishes while a pass runs.
final class RecordsLedgerTests: XCTestCase {
    func testATenantOverItsLimitIsDueAndAPassFreesDownToNinetyPercent() {
        var l = RecordsLedger()
        XCTAssertFalse(l.finished("a", size: 600, limit: 1000))
        XCTAssertFalse(l.finished("a", size: 400, limit: 1000), "at the limit is not over it")
        XCTAssertTrue(l.finished("a", size: 1, limit: 1000))
        XCTAssertFalse(l.finished("b", size: 10, limit: 1000), "a neighbour is not due")
        XCTAssertEqual(l.due, ["a"])
        XCTAssertEqual(RecordsLedger.excess(total: 1001, limit: 1000), 101, "down to 900")
        XCTAssertEqual(RecordsLedger.excess(total: 1000, limit: 1000), 0)
        XCTAssertEqual(l.passStarted(), ["a"])
        XCTAssertTrue(l.due.isEmpty)
        l.measured("a", bytes: 900)
        XCTAssertEqual(l.held(by: "a"), 900)
        XCTAssertFalse(l.passEnded())
    }

    func testWhatFinishesDuringAPassIsKeptAndMayMakeItDueAgain() {
        var l = RecordsLedger()
        _ = l.finished("a", size: 2000, limit: 1000)
        _ = l.passStarted()
        XCTAssertTrue(l.finished("a", size: 300, limit: 1000), "still over, by the count before the pass")
        l.measured("a", bytes: 900)
        XCTAssertEqual(l.held(by: "a"), 1200, "the pass's measure plus what finished meanwhile")
        XCTAssertTrue(l.passEnded(), "due again: another pass follows")
        XCTAssertEqual(l.passStarted(), ["a"])
    }

    func testAForgottenTenantStartsAtNothing() {
        var l = RecordsLedger()
        XCTAssertTrue(l.finished("a", size: 2000, limit: 1000))
        l.forget("a")
        XCTAssertEqual(l.held(by: "a"), 0)
        XCTAssertEqual(l.passStarted(), [], "no longer due")
        _ = l.passEnded()
        XCTAssertFalse(l.finished("a", size: 500, limit: 1000), "a new tenant of the name counts from 0")
    }
}
