@testable import ClawpenCore
import XCTest

/// The decisions of AgentConnections: a tenant at its limit is paused and its next connection
/// refused, the common limit holds every tenant, and closing makes room again.
final class AgentConnectionsTests: XCTestCase {
    func testATenantAtItsLimitIsPausedUntilOneCloses() {
        var c = AgentConnections(allLimit: 1000)
        for _ in 0..<3 { XCTAssertTrue(c.opened("a", limit: 3)) }
        XCTAssertFalse(c.accepts("a", limit: 3), "at its limit: paused")
        XCTAssertEqual(c.pauses, 1)
        XCTAssertFalse(c.opened("a", limit: 3), "one taken in the same read: refused, not counted")
        XCTAssertEqual(c.held(by: "a"), 3)
        XCTAssertEqual(c.refused, 1)
        XCTAssertTrue(c.accepts("b", limit: 3), "a neighbour is not held by it")
        XCTAssertTrue(c.opened("b", limit: 3))
        c.closed("a")
        XCTAssertTrue(c.accepts("a", limit: 3))
        XCTAssertEqual(c.total, 3)
    }

    func testTheCommonLimitHoldsEveryTenantAndLetsGoWhenOneCloses() {
        var c = AgentConnections(allLimit: 4, floor: 0)
        XCTAssertTrue(c.opened("a", limit: 10))
        XCTAssertTrue(c.opened("a", limit: 10))
        XCTAssertTrue(c.opened("b", limit: 10))
        XCTAssertTrue(c.opened("c", limit: 10))
        XCTAssertTrue(c.allHeld)
        XCTAssertFalse(c.accepts("d", limit: 10))
        XCTAssertFalse(c.opened("d", limit: 10))
        c.closed("b")
        XCTAssertFalse(c.allHeld)
        XCTAssertTrue(c.accepts("d", limit: 10))
    }

    /// Tenants that fill the common limit do not shut everyone else's socket: a tenant below
    /// the floor is still taken, up to it (and never past its own limit).
    func testATenantBelowTheFloorIsTakenWhenOthersHoldTheCommonLimit() {
        var c = AgentConnections(allLimit: 6, floor: 2)
        for _ in 0..<3 { XCTAssertTrue(c.opened("big1", limit: 100)) }
        for _ in 0..<3 { XCTAssertTrue(c.opened("big2", limit: 100)) }
        XCTAssertTrue(c.allHeld)
        XCTAssertFalse(c.accepts("big1", limit: 100), "above its floor: held at the common limit")
        XCTAssertFalse(c.opened("big2", limit: 100))
        XCTAssertTrue(c.accepts("small", limit: 100), "below the floor: taken")
        XCTAssertTrue(c.opened("small", limit: 100))
        XCTAssertTrue(c.opened("small", limit: 100))
        XCTAssertFalse(c.accepts("small", limit: 100), "at the floor: held like the others")
        XCTAssertFalse(c.opened("small", limit: 100))
        XCTAssertEqual(c.total, 8, "the common limit plus the floor of one tenant")
        XCTAssertTrue(c.opened("tiny", limit: 1))
        XCTAssertFalse(c.accepts("tiny", limit: 1), "never past its own limit")
        c.closed("small")
        XCTAssertTrue(c.accepts("small", limit: 100), "below its floor again")
    }

    func testAClosedConnectionNobodyCountedChangesNothing() {
        var c = AgentConnections(allLimit: 10)
        c.closed("ghost")
        XCTAssertEqual(c.total, 0)
        XCTAssertTrue(c.opened("a", limit: 1))
        c.closed("a")
        c.closed("a")
        XCTAssertEqual(c.total, 0)
        XCTAssertEqual(c.held(by: "a"), 0)
    }

    func testTheCommonLimitIsHalfTheDescriptors() {
        XCTAssertEqual(AgentConnections.allLimit(descriptors: 65_536), 32_768)
        XCTAssertEqual(AgentConnections.allLimit(descriptors: 20_000), 10_000)
        XCTAssertEqual(AgentConnections.allLimit(descriptors: 10), 64, "never below 64")
    }
}
