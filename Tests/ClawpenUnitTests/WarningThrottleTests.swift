@testable import ClawpenSupervisor
import XCTest

/// WarningThrottle: one warning per key per window, a bounded number of keys.
final class WarningThrottleTests: XCTestCase {
    func testOneWarningPerKeyPerWindow() {
        var w = WarningThrottle<String?>(window: 10)
        XCTAssertTrue(w.allows("a", now: 100))
        XCTAssertFalse(w.allows("a", now: 109.9), "within the window")
        XCTAssertTrue(w.allows("b", now: 101), "another key has a window of its own")
        XCTAssertTrue(w.allows(nil, now: 101), "nil is a key too")
        XCTAssertTrue(w.allows("a", now: 110), "the window has passed")
        w.forget("a")
        XCTAssertTrue(w.allows("a", now: 111), "forgotten: warned again")
    }

    func testKeysAreBoundedAndTheExpiredGoFirst() {
        var w = WarningThrottle<Int>(window: 10, maxKeys: 3)
        XCTAssertTrue(w.allows(1, now: 0))
        XCTAssertTrue(w.allows(2, now: 5))
        XCTAssertTrue(w.allows(3, now: 6))
        // Full: 1's window has passed at 12 and it makes room; 2 and 3 are still in theirs.
        XCTAssertTrue(w.allows(4, now: 12))
        XCTAssertFalse(w.allows(2, now: 12))
        XCTAssertFalse(w.allows(3, now: 12))
    }
}
