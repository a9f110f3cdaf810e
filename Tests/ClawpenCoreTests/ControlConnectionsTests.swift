import ClawpenCore
import XCTest

/// The control socket's connection limits (ControlConnections): per peer uid and for all.
final class ControlConnectionsTests: XCTestCase {
    func testAUIDAtItsLimitIsRefusedAndOthersAreNot() {
        var c = ControlConnections(all: 10, perUID: 3)
        for _ in 0..<3 { XCTAssertEqual(c.opened(uid: 1000), .accepted) }
        XCTAssertEqual(c.opened(uid: 1000), .overUID(held: 3), "the fourth from that uid")
        XCTAssertEqual(c.opened(uid: 0), .accepted, "another uid is served")
        XCTAssertEqual(c.total, 4, "a refused connection is not counted")
        XCTAssertEqual(c.refusedPerUID, 1)
        c.closed(uid: 1000)
        XCTAssertEqual(c.opened(uid: 1000), .accepted, "one closed: one more")
        XCTAssertEqual(c.topHolders(2).map(\.uid), [1000, 0])
    }

    func testAtTheCommonLimitNothingMoreIsAcceptedUntilOneCloses() {
        var c = ControlConnections(all: 4, perUID: 4)
        for uid: UInt32 in [1, 2, 3, 4] { XCTAssertEqual(c.opened(uid: uid), .accepted) }
        XCTAssertFalse(c.accepts, "the listener pauses")
        XCTAssertEqual(c.opened(uid: 5), .overAll(held: 4), "one accepted in the same read is refused")
        XCTAssertEqual(c.refusedAll, 1)
        c.closed(uid: 2)
        XCTAssertTrue(c.accepts)
        c.closed(uid: 2)
        XCTAssertEqual(c.total, 3, "a close of a uid that holds nothing changes nothing")
    }

    func testTheDefaultsFollowTheDescriptorLimit() {
        XCTAssertEqual(ControlConnections.defaultAll(descriptors: 65_536), 16_384, "the shipped unit")
        XCTAssertEqual(ControlConnections.defaultPerUID(all: 16_384), 8_192)
        XCTAssertEqual(ControlConnections.defaultAll(descriptors: 1024), 512, "never below 512")
        XCTAssertEqual(ControlConnections.defaultPerUID(all: 300), 256)
        XCTAssertEqual(ControlConnections.defaultPerUID(all: 100), 100, "never more than all")
    }
}
