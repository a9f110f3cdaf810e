@testable import ClawpenSupervisor
import XCTest

/// A connection's rate while others are served (ClientPacing.swift), on a fake clock.
final class ClientPacingTests: XCTestCase {
    private let ms: UInt64 = 1_000_000

    func testAloneAConnectionIsNeverHeld() {
        var p = RequestPacer(ClientPacing(requestsPerSecond: 100))
        for i in 0..<10_000 { XCTAssertEqual(p.delay(now: 1_000 * ms + UInt64(i), contended: false), 0) }
    }

    func testContendedItGetsItsBurstThenTheRate() {
        let pacing = ClientPacing(requestsPerSecond: 100)
        XCTAssertEqual(pacing.burst, 25)
        var p = RequestPacer(pacing)
        let t0 = 1_000 * ms
        for i in 0..<25 { XCTAssertEqual(p.delay(now: t0, contended: true), 0, "request \(i) of the burst") }
        // The 26th waits a token's time: 10 ms at 100 a second.
        let wait = p.delay(now: t0, contended: true)
        XCTAssertEqual(Double(wait), 10e6, accuracy: 1e3)
        // Not yet after 9 ms; then one goes, and the next waits again.
        XCTAssertGreaterThan(p.delay(now: t0 + 9 * ms, contended: true), 0)
        XCTAssertEqual(p.delay(now: t0 + 10 * ms, contended: true), 0)
        XCTAssertGreaterThan(p.delay(now: t0 + 10 * ms, contended: true), 0)
    }

    func testOverASecondItAveragesTheRate() {
        var p = RequestPacer(ClientPacing(requestsPerSecond: 1000))
        var now = 5_000 * ms
        var admitted = 0
        // A flooder: asks again as soon as it may, for a second.
        while now < 6_000 * ms {
            let d = p.delay(now: now, contended: true)
            if d == 0 { admitted += 1 } else { now += d }
        }
        // 250 of burst and a thousand of rate.
        XCTAssertEqual(admitted, 1250, accuracy: 2)
    }

    func testAFloodAloneLeavesNoBurstForLater() {
        var p = RequestPacer(ClientPacing(requestsPerSecond: 100))
        let t0 = 1_000 * ms
        for _ in 0..<1000 { _ = p.delay(now: t0, contended: false) }
        XCTAssertGreaterThan(p.delay(now: t0, contended: true), 0, "the tokens went while it was alone")
        // Idle a while: the burst comes back, never more.
        for i in 0..<25 { XCTAssertEqual(p.delay(now: t0 + 10_000 * ms, contended: true), 0, "request \(i)") }
        XCTAssertGreaterThan(p.delay(now: t0 + 10_000 * ms, contended: true), 0)
    }

    func testActiveClientsCountsEachConnectionOncePerWindow() {
        var a = ActiveClients()
        var x: UInt64?, y: UInt64?
        let t0 = 10_000 * ms
        for i in 0..<100 { a.request(now: t0 + UInt64(i), seen: &x) }
        XCTAssertEqual(a.count(now: t0 + 100), 1)
        a.request(now: t0 + 200, seen: &y)
        XCTAssertEqual(a.count(now: t0 + 300), 2)
        // The next window: both are still counted (the last window's), until it passes.
        a.request(now: t0 + 100 * ms, seen: &x)
        XCTAssertEqual(a.count(now: t0 + 150 * ms), 2)
        XCTAssertEqual(a.count(now: t0 + 250 * ms), 1, "only x asked in the last window")
        XCTAssertEqual(a.count(now: t0 + 1_000 * ms), 0, "a gap of windows forgets everyone")
    }
}
