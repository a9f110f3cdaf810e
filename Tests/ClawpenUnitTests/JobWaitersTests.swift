@testable import ClawpenSupervisor
import XCTest

/// The bookkeeping of waits (JobWaiters.swift): limits per connection and in all, what a
/// closed connection leaves behind (nothing), and the order waiters hear in.
final class JobWaitersTests: XCTestCase {
    final class Conn {}
    let a = Conn(), b = Conn()
    var ida: ObjectIdentifier { ObjectIdentifier(a) }
    var idb: ObjectIdentifier { ObjectIdentifier(b) }

    func testAConnectionIsRefusedPastItsLimitAndTheRestPastTheirs() {
        var w = JobWaiters<Int>(limits: WaitLimits(perClient: 3, allClients: 5))
        for i in 0..<3 { XCTAssertNil(w.add("j1", owner: ida, i)) }
        XCTAssertEqual(w.add("j2", owner: ida, 3), .client(limit: 3), "a's limit holds across jobs")
        XCTAssertNil(w.add("j1", owner: idb, 10))
        XCTAssertNil(w.add("j1", owner: idb, 11))
        XCTAssertEqual(w.add("j1", owner: idb, 12), .allClients(limit: 5))
        XCTAssertEqual(w.clientWaits, 5)
        XCTAssertEqual(w.refusals, 2)
        // The supervisor's own waits are neither refused nor counted.
        XCTAssertNil(w.add("j1", owner: nil, 99))
        XCTAssertEqual(w.clientWaits, 5)
        // Nor is a submit's own wait refused, though it counts.
        XCTAssertNil(w.add("j3", owner: ida, limited: false, 4))
        XCTAssertEqual(w.waits(of: ida), 4)
        XCTAssertEqual(w.clientWaits, 6)
    }

    /// An agent socket's connections count per tenant, not against the control clients' common
    /// limit: a tenant's jobs cannot take the waits a service needs, nor another tenant's.
    func testAgentWaitsAreBoundedPerTenantAndLeaveTheCommonLimitAlone() {
        let c = Conn(), d = Conn()
        var w = JobWaiters<Int>(limits: WaitLimits(perClient: 3, allClients: 4))
        // Two connections of tenant t: three waits between them.
        XCTAssertNil(w.add("j", owner: ida, agentTenant: "t", 1))
        XCTAssertNil(w.add("j", owner: ida, agentTenant: "t", 2))
        XCTAssertNil(w.add("k", owner: idb, agentTenant: "t", 3))
        XCTAssertEqual(w.add("k", owner: idb, agentTenant: "t", 4), .tenant(limit: 3))
        XCTAssertEqual(w.waits(ofTenant: "t"), 3)
        XCTAssertEqual(w.clientWaits, 0, "not the control clients' count")
        // Another tenant and a service are not held by it.
        XCTAssertNil(w.add("j", owner: ObjectIdentifier(c), agentTenant: "u", 5))
        for i in 0..<3 { XCTAssertNil(w.add("j", owner: ObjectIdentifier(d), 10 + i)) }
        XCTAssertEqual(w.clientWaits, 3)
        XCTAssertEqual(w.agentWaitsHeld, 4)
        // Closing and the job's end let them go.
        XCTAssertEqual(w.drop(owner: idb), 1)
        XCTAssertEqual(w.waits(ofTenant: "t"), 2)
        XCTAssertEqual(w.take("j").count, 6)
        XCTAssertEqual(w.waits(ofTenant: "t"), 0)
        XCTAssertEqual(w.agentWaitsHeld, 0)
        XCTAssertEqual(w.clientWaits, 0)
    }

    func testWaitersHearInOrderAndAreLetGo() {
        var w = JobWaiters<Int>(limits: WaitLimits(perClient: 10, allClients: 10))
        _ = w.add("j", owner: ida, 1)
        _ = w.add("j", owner: idb, 2)
        _ = w.add("j", owner: nil, 3)
        _ = w.add("k", owner: ida, 4)
        XCTAssertEqual(w.take("j"), [1, 2, 3])
        XCTAssertEqual(w.take("j"), [], "heard once")
        XCTAssertEqual(w.waits(of: ida), 1)
        XCTAssertEqual(w.waits(of: idb), 0)
        XCTAssertEqual(w.clientWaits, 1)
        XCTAssertEqual(w.take("k"), [4])
        XCTAssertEqual(w.clientWaits, 0)
        XCTAssertTrue(w.isEmpty)
    }

    func testAClosedConnectionLeavesNothingAndOthersKeepTheirs() {
        var w = JobWaiters<Int>(limits: WaitLimits(perClient: 3, allClients: 4))
        for i in 0..<3 { _ = w.add("j\(i)", owner: ida, i) }
        _ = w.add("j0", owner: idb, 10)
        XCTAssertEqual(w.add("j0", owner: idb, 11), .allClients(limit: 4))
        XCTAssertEqual(w.drop(owner: ida), 3)
        XCTAssertEqual(w.drop(owner: ida), 0)
        XCTAssertEqual(w.clientWaits, 1)
        XCTAssertEqual(w.take("j1"), [], "a's waits of jobs only it waited for are gone")
        XCTAssertEqual(w.take("j0"), [10])
        XCTAssertTrue(w.isEmpty)
        // There is room again for a: its count started over.
        for i in 0..<3 { XCTAssertNil(w.add("j", owner: ida, i)) }
    }

    func testTakeAllEmptiesEverything() {
        var w = JobWaiters<Int>()
        _ = w.add("j", owner: ida, 1)
        _ = w.add("k", owner: nil, 2)
        let all = w.takeAll().sorted { $0.0 < $1.0 }
        XCTAssertEqual(all.map(\.0), ["j", "k"])
        XCTAssertEqual(all.map(\.1), [[1], [2]])
        XCTAssertEqual(w.clientWaits, 0)
        XCTAssertEqual(w.waits(of: ida), 0)
        XCTAssertTrue(w.isEmpty)
    }
}
