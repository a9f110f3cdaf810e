@testable import ClawpenCore
import XCTest

/// A tenant as the router sees it, with jobs that run until the test ends them.
final class FakeTenant: RoutedTenant {
    let name: String
    var routing = RoutingState()
    let routingWeight: Int
    var queuedCount: Int
    var runningCount = 0
    var limit: Int
    var started = 0

    init(_ name: String, weight: Int = 1, queued: Int, limit: Int = 1000) {
        self.name = name; self.routingWeight = weight; self.queuedCount = queued; self.limit = limit
    }
}

final class RouterTests: XCTestCase {
    /// Starts what the router picks; returns the names in start order.
    @discardableResult
    func pump(_ r: Router<FakeTenant>) -> [String] {
        var order: [String] = []
        r.pump(
            canStart: { $0.queuedCount > 0 && $0.runningCount < $0.limit },
            start: { t in
                t.queuedCount -= 1; t.runningCount += 1; t.started += 1
                order.append(t.name)
            })
        return order
    }

    /// Ends one running job of `t` and lets the router refill the slot.
    func end(_ t: FakeTenant, _ r: Router<FakeTenant>) -> [String] {
        t.runningCount -= 1
        r.ended()
        r.wake(t)
        return pump(r)
    }

    func testBacklogsProgressInProportionToWeight() {
        let r = Router<FakeTenant>(mode: .fair, maxRunning: 5, reserve: 0)
        let pro = FakeTenant("pro", weight: 4, queued: 10_000)
        let free = FakeTenant("free", weight: 1, queued: 10_000)
        let byName = ["pro": pro, "free": free]
        for t in [pro, free] { r.accepted(t) }
        // Jobs of equal length: the oldest running job ends first.
        var running = pump(r)
        XCTAssertEqual(r.running, 5)
        var counts: [String: Int] = [:]
        for _ in 0..<1000 {
            let oldest = byName[running.removeFirst()]!
            let started = end(oldest, r)
            running += started
            for name in started { counts[name, default: 0] += 1 }
        }
        let ratio = Double(counts["pro"] ?? 0) / Double(max(1, counts["free"] ?? 0))
        XCTAssertEqual(ratio, 4, accuracy: 0.3, "pro (weight 4) should start 4 jobs per free (weight 1) job: \(counts)")
        XCTAssertEqual(r.running, 5, "every ended job's slot is refilled")
    }

    func testATenantWithNothingRunningGoesFirstAndMayUseTheReserve() {
        let r = Router<FakeTenant>(mode: .fair, maxRunning: 4, reserve: 1)
        let flood = FakeTenant("flood", weight: 16, queued: 10_000)
        r.accepted(flood)
        XCTAssertEqual(pump(r), ["flood", "flood", "flood"], "a backlog stops short of the reserve")
        XCTAssertEqual(r.freeSlots, 1)
        let quiet = FakeTenant("quiet", queued: 1)
        r.accepted(quiet)
        XCTAssertEqual(pump(r), ["quiet"], "a tenant with nothing running takes the reserved slot at once")
        // A flood job ends: the freed slot goes to the next newcomer before the flood.
        let quiet2 = FakeTenant("quiet2", queued: 1)
        r.accepted(quiet2)
        XCTAssertEqual(pump(r), [], "no slot free")
        XCTAssertEqual(end(flood, r), ["quiet2"])
        XCTAssertEqual(end(flood, r), [], "the flood may not take the last free slot")
        XCTAssertEqual(r.freeSlots, 1)
    }

    func testATenantAtItsOwnLimitDoesNotBlockOthers() {
        let r = Router<FakeTenant>(mode: .fair, maxRunning: 10, reserve: 0)
        let capped = FakeTenant("capped", queued: 100, limit: 2)
        let other = FakeTenant("other", queued: 3)
        r.accepted(capped); r.accepted(other)
        let order = pump(r)
        XCTAssertEqual(capped.runningCount, 2)
        XCTAssertEqual(other.runningCount, 3)
        XCTAssertEqual(order.count, 5)
        XCTAssertEqual(end(capped, r), ["capped"], "woken when a job of it ends")
    }

    func testEveryQueuedTenantProgressesAmongThousands() {
        let r = Router<FakeTenant>(mode: .fair, maxRunning: 8, reserve: 2)
        let big = FakeTenant("big", weight: 1, queued: 10_000)
        r.accepted(big)
        var running: [FakeTenant] = []
        var byName: [String: FakeTenant] = ["big": big]
        running += pump(r).map { byName[$0]! }
        XCTAssertEqual(big.started, 6, "a backlog alone stops short of the reserve (2 of 8)")
        let small = (0..<1000).map { FakeTenant("t\($0)", queued: 1) }
        for t in small { byName[t.name] = t; r.accepted(t) }
        while small.contains(where: { $0.started == 0 }) && !running.isEmpty {
            let oldest = running.removeFirst()
            running += end(oldest, r).map { byName[$0]! }
        }
        XCTAssertTrue(small.allSatisfy { $0.started == 1 }, "every one-job tenant started its job")
        XCTAssertGreaterThan(big.started, 6, "the backlog kept its round-robin turns beside them")
    }

    func testFIFOStartsInAcceptanceOrderWhateverTheTenant() {
        let r = Router<FakeTenant>(mode: .fifo, maxRunning: 2, reserve: 1)
        let flood = FakeTenant("flood", queued: 0)
        let quiet = FakeTenant("quiet", queued: 0)
        for _ in 0..<5 { flood.queuedCount += 1; r.accepted(flood) }
        quiet.queuedCount += 1; r.accepted(quiet)
        XCTAssertEqual(pump(r), ["flood", "flood"], "FIFO has no reserve")
        XCTAssertEqual(end(flood, r), ["flood"])
        XCTAssertEqual(end(flood, r), ["flood"])
        XCTAssertEqual(end(flood, r), ["flood"])
        XCTAssertEqual(end(flood, r), ["quiet"], "the quiet tenant waits for every job accepted before it")
    }
}

final class QuotaMathTests: XCTestCase {
    func testTokenBucketAllowsAMinuteAndRefillsAtTheRate() {
        var b = TokenBucket(perMinute: 60, now: 0)
        for _ in 0..<60 { XCTAssertNil(b.take(now: 0)) }
        let wait = b.take(now: 0)
        XCTAssertEqual(wait, 1000, "one token per second at 60/min")
        XCTAssertNil(b.take(now: 1.0))
        XCTAssertNotNil(b.take(now: 1.0))
    }

    func testCPUBudgetSlidesOverAnHour() {
        var c = CPUBudget()
        c.record(micros: 5_000_000, now: 10) // minute 0
        c.record(micros: 1_000_000, now: 30 * 60) // minute 30
        XCTAssertEqual(c.usedMicros(now: 40 * 60), 6_000_000)
        XCTAssertNil(c.retryAfterMs(budgetMicros: 7_000_000, now: 40 * 60))
        // Over a 5 s budget: minute 0 leaves the window at 60:00, 20 minutes after 40:00.
        XCTAssertEqual(c.retryAfterMs(budgetMicros: 5_000_000, now: 40 * 60), 20 * 60 * 1000)
        XCTAssertEqual(c.usedMicros(now: 61 * 60), 1_000_000, "minute 0 is out of the window")
        XCTAssertEqual(c.usedMicros(now: 91 * 60), 0)
    }
}
