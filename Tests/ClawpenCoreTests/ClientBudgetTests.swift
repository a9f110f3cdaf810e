@testable import ClawpenCore
import XCTest

/// The decisions of ClientLedger: who is disconnected, by which rule, and what it leaves.
final class ClientBudgetTests: XCTestCase {
    let MiB = 1024 * 1024

    func ledger(perClient: Int, allClients: Int, connections: UInt64) -> ClientLedger {
        var l = ClientLedger(budget: ClientBudget(perClient: perClient, allClients: allClients))
        for id in 1...connections { l.open(id) }
        return l
    }

    func testAClientThatReadsIsNeverOverItsBudget() {
        var l = ledger(perClient: 4 * MiB, allClients: 64 * MiB, connections: 1)
        // A hundred 1 MiB replies, each taken by the socket before the next.
        for _ in 0..<100 {
            XCTAssertEqual(l.queued(1, bytes: MiB), [])
            l.written(1, bytes: MiB)
        }
        XCTAssertEqual(l.total, 0)
        XCTAssertEqual(l.connections, 1)
        XCTAssertEqual(l.disconnects, [:])
        XCTAssertEqual(l.peakTotal, MiB)
    }

    func testAClientThatDoesNotReadIsDisconnectedOnceOverItsOwnBudget() {
        var l = ledger(perClient: 4 * MiB, allClients: 64 * MiB, connections: 2)
        XCTAssertEqual(l.queued(2, bytes: MiB), [])
        for _ in 0..<4 { XCTAssertEqual(l.queued(1, bytes: MiB), []) }
        // Exactly at the budget is within it; one byte more is not.
        let out = l.queued(1, bytes: 1)
        XCTAssertEqual(out, [ClientLedger.Eviction(id: 1, reason: .clientBudget, queued: 4 * MiB + 1, inbound: 0, total: 5 * MiB + 1)])
        // Its bytes leave the accounting; the other connection is untouched.
        XCTAssertEqual(l.total, MiB)
        XCTAssertEqual(l.connections, 1)
        XCTAssertEqual(l.disconnects, [.clientBudget: 1])
        // What still comes for it (writes failing as it closes, the close itself) is ignored.
        l.written(1, bytes: 4 * MiB)
        XCTAssertEqual(l.queued(1, bytes: MiB), [])
        l.close(1)
        XCTAssertEqual(l.total, MiB)
        XCTAssertEqual(l.disconnects, [.clientBudget: 1])
    }

    func testOverTheAllClientsBudgetTheBiggestGoFirstUntilTheRestFit() {
        var l = ledger(perClient: 16 * MiB, allClients: 20 * MiB, connections: 5)
        XCTAssertEqual(l.queued(1, bytes: 3 * MiB), [])
        XCTAssertEqual(l.queued(2, bytes: 8 * MiB), [])
        XCTAssertEqual(l.queued(3, bytes: 6 * MiB), [])
        XCTAssertEqual(l.queued(4, bytes: 1 * MiB), [])
        // 18 MiB; 4 more on the smallest makes 22: the biggest (2, 8 MiB) goes, which is enough.
        let out = l.queued(5, bytes: 4 * MiB)
        XCTAssertEqual(out.map(\.id), [2])
        XCTAssertEqual(out.first?.reason, .allClientsBudget)
        XCTAssertEqual(out.first?.total, 22 * MiB)
        XCTAssertEqual(l.total, 14 * MiB)
        // 10 MiB more on 4 (11 MiB, now the biggest): it goes, then 3 (6 MiB) is not needed.
        let next = l.queued(4, bytes: 10 * MiB)
        XCTAssertEqual(next.map(\.id), [4])
        XCTAssertEqual(l.total, 13 * MiB)
        // 12 MiB more on 1 (15 MiB of 25): it alone brings the rest to 10.
        let burst = l.queued(1, bytes: 12 * MiB)
        XCTAssertEqual(burst.map(\.id), [1])
        XCTAssertEqual(l.disconnects, [.allClientsBudget: 3])
        XCTAssertEqual(Set(l.entries.keys), [3, 5])
    }

    func testAmongEqualHoldersTheOneThatWentOverGoes() {
        var l = ledger(perClient: 16 * MiB, allClients: 10 * MiB, connections: 4)
        for id: UInt64 in 1...4 { XCTAssertEqual(l.inbound(id, bytes: 2 * MiB), []) }
        // 8 MiB; 6 more on 1 (8 MiB): 14 > 10: 1 goes, leaving 6.
        XCTAssertEqual(l.queued(1, bytes: 6 * MiB).map(\.id), [1])
        XCTAssertEqual(l.inbound(2, bytes: 4 * MiB), [])
        XCTAssertEqual(l.inbound(3, bytes: 4 * MiB), [], "exactly at the budget is within it")
        // 2, 3 and 4 hold 4 MiB each, 12 in all: 4 broke the budget, so 4 goes, not 2 or 3.
        XCTAssertEqual(l.queued(4, bytes: 2 * MiB).map(\.id), [4])
        XCTAssertEqual(l.total, 8 * MiB)
        // The biggest goes even when another broke the budget.
        XCTAssertEqual(l.queued(3, bytes: 1 * MiB), [])
        XCTAssertEqual(l.inbound(2, bytes: 6 * MiB).map(\.id), [2], "2 holds 6 of 11 MiB")
        XCTAssertEqual(l.inbound(3, bytes: 9 * MiB + 1).map(\.id), [3])
        XCTAssertEqual(l.total, 0)
    }

    /// A tenant's agent connections hold together: many of them, each under its own budget
    /// and each smaller than a service's one large reply, are what goes over the all-clients
    /// budget, not the service.
    func testATenantsAgentConnectionsAreOneHolderAndGoBeforeAServiceWithLess() {
        var l = ClientLedger(budget: ClientBudget(perClient: 16 * MiB, allClients: 40 * MiB))
        l.open(1) // a service
        for id: UInt64 in 2...11 { l.open(id, group: "flood") }
        l.open(12, group: "quiet")
        XCTAssertEqual(l.queued(1, bytes: 12 * MiB), [], "the service's one large reply")
        XCTAssertEqual(l.queued(12, bytes: 1 * MiB), [])
        for id: UInt64 in 2...10 { XCTAssertEqual(l.queued(id, bytes: 3 * MiB), []) }
        // 12 + 1 + 27 = 40: at the budget. 3 more on 11: 43 > 40; the flooding tenant holds 30,
        // more than the service's 12: its biggest (11, the one that went over, among equals) goes.
        let out = l.queued(11, bytes: 3 * MiB)
        XCTAssertEqual(out.map(\.id), [11])
        XCTAssertEqual(out.first?.group, "flood")
        XCTAssertEqual(out.first?.groupHeld, 30 * MiB)
        XCTAssertEqual(l.total, 40 * MiB)
        // Its biggest goes first, and as many as it takes: 7 more on 2 (10 MiB): 47, flood 34.
        XCTAssertEqual(l.queued(2, bytes: 7 * MiB).map(\.id), [2], "the tenant's biggest")
        XCTAssertEqual(l.queued(3, bytes: 9 * MiB).map(\.id), [3], "flood holds 33 of 46")
        XCTAssertNotNil(l.entries[1], "the service is never the one that goes")
        XCTAssertNotNil(l.entries[12], "nor the quiet tenant")
        // A control connection is its own holder: once it holds the most, it goes.
        XCTAssertEqual(l.queued(1, bytes: 13 * MiB).map(\.id), [1], "25 MiB, more than flood's 21")
        XCTAssertNil(l.entries[1])
    }

    func testAmongEqualHoldersTheOneWithTheTriggerGoesFirst() {
        var l = ClientLedger(budget: ClientBudget(perClient: 16 * MiB, allClients: 8 * MiB - 1))
        l.open(1)
        l.open(2, group: "t")
        l.open(3, group: "t")
        XCTAssertEqual(l.queued(1, bytes: 4 * MiB), [])
        XCTAssertEqual(l.queued(2, bytes: 2 * MiB), [])
        // t holds 4 with 3's 2 more, as much as the service; 3 went over, so t goes (3 of it).
        XCTAssertEqual(l.queued(3, bytes: 2 * MiB).map(\.id), [3])
        XCTAssertEqual(l.total, 6 * MiB)
        // Equal (t 4, a service 4) when the service went over: the service goes.
        var m = ClientLedger(budget: ClientBudget(perClient: 16 * MiB, allClients: 8 * MiB - 1))
        m.open(1)
        m.open(2, group: "t")
        XCTAssertEqual(m.queued(2, bytes: 4 * MiB), [])
        XCTAssertEqual(m.queued(1, bytes: 4 * MiB).map(\.id), [1])
    }

    func testHalfReceivedFramesCountTowardAllClientsOnly() {
        var l = ledger(perClient: 1 * MiB, allClients: 40 * MiB, connections: 1000)
        // A frame of 15.9 MiB in the making is not over the per-client budget (that is replies'),
        // but a few of them are over everyone's.
        let frame = 15 * MiB + 900 * 1024
        XCTAssertEqual(l.inbound(1, bytes: frame), [])
        XCTAssertEqual(l.inbound(2, bytes: frame), [])
        let third = l.inbound(3, bytes: frame)
        XCTAssertEqual(third, [ClientLedger.Eviction(id: 3, reason: .allClientsBudget, queued: 0, inbound: frame, total: 3 * frame)])
        // A thousand of them never hold more than the budget plus one frame.
        var peakAfterEvictions = 0
        for id: UInt64 in 4...1000 {
            _ = l.inbound(id, bytes: frame)
            peakAfterEvictions = max(peakAfterEvictions, l.total)
        }
        XCTAssertLessThanOrEqual(peakAfterEvictions, 40 * MiB)
        XCTAssertLessThanOrEqual(l.peakTotal, 40 * MiB + frame)
        XCTAssertEqual(l.disconnects[.allClientsBudget], 1000 - 2)
        // A frame that completes leaves nothing held.
        let kept = Array(l.entries.keys)
        for id in kept { XCTAssertEqual(l.inbound(id, bytes: 0), []) }
        XCTAssertEqual(l.total, 0)
    }

    func testAClosedConnectionReleasesWhatItHeld() {
        var l = ledger(perClient: 4 * MiB, allClients: 8 * MiB, connections: 2)
        _ = l.queued(1, bytes: 3 * MiB)
        _ = l.inbound(1, bytes: 2 * MiB)
        _ = l.queued(2, bytes: 2 * MiB)
        l.close(1)
        XCTAssertEqual(l.total, 2 * MiB)
        XCTAssertEqual(l.queuedTotal, 2 * MiB)
        XCTAssertEqual(l.inboundTotal, 0)
        // More than was queued is never subtracted.
        l.written(2, bytes: 5 * MiB)
        XCTAssertEqual(l.total, 0)
        XCTAssertEqual(l.disconnects, [:])
    }

    func testBudgetsThatCannotWorkAreRefusedNamingTheFlag() {
        XCTAssertNil(ClientBudget().problem(maxFrameBytes: 16 * MiB))
        XCTAssertEqual(ClientBudget.defaultAllClients(perClient: 24 * MiB, maxFrameBytes: 16 * MiB), 128 * MiB)
        XCTAssertEqual(ClientBudget.defaultAllClients(perClient: 24 * MiB, maxFrameBytes: 1 << 30), 24 * MiB + (1 << 30))
        let small = ClientBudget(perClient: 1000, allClients: 128 * MiB).problem(maxFrameBytes: 16 * MiB)
        XCTAssertTrue(small?.contains("--client-buffer-bytes must be at least 262144") == true, small ?? "nil")
        let tight = ClientBudget(perClient: 24 * MiB, allClients: 32 * MiB).problem(maxFrameBytes: 16 * MiB)
        XCTAssertTrue(tight?.contains("--all-clients-buffer-bytes (33554432) must be at least") == true, tight ?? "nil")
        // The default covers the shipped policies' largest reply (output_max_bytes = 1 MiB).
        XCTAssertLessThan(ClientBudget.largestReply(outputMaxBytes: MiB), ClientBudget.defaultPerClient)
        XCTAssertGreaterThan(ClientBudget.largestReply(outputMaxBytes: 64 * MiB), ClientBudget.defaultPerClient)
    }
}
