@testable import ClawpenCore
import ClawpenProtocol
import ClawpenStore
import ClawpenWire
import XCTest

/// `max_queued_bytes`: the stdin the queued jobs of a tenant hold in the supervisor's memory.
final class QueuedBytesTests: XCTestCase {
    let KiB = 1024

    func submit(_ s: FakeShell, _ t: TenantName, stdin: Int, id: String) -> Result<JobRecord, Refusal> {
        let request = SubmitRequest(tenant: t, argv: ["/usr/bin/cat"], stdin: [UInt8](repeating: 0x78, count: stdin))
        let result = s.core.admit(request, tenant: s.tenant(t), jobID: id, isExecutable: { _ in true })
        if case .success(let job) = result { s.perform(s.core.accepted([job])) }
        return result
    }

    func quota(_ r: Result<JobRecord, Refusal>) -> (String?, JSONValue?) {
        guard case .failure(let refusal) = r else { return (nil, nil) }
        return (refusal.error.details["quota"]?.stringValue, refusal.error.details["retry_after_ms"])
    }

    func testQueuedStdinIsBoundedAndFreedAsJobsStart() throws {
        let s = FakeShell()
        let a = s.addTenant(
            "a",
            limits: FakeShell.limits {
                $0.maxQueuedBytes = 1024 * 1024; $0.maxConcurrentRuns = 1
            })
        let b = s.addTenant("b", limits: FakeShell.limits { $0.maxQueuedBytes = 1024 * 1024 })
        // The first runs at once (its worker starts): nothing of it is queued.
        XCTAssertNoThrow(try submit(s, a, stdin: 600 * KiB, id: "j1").get())
        XCTAssertNoThrow(try submit(s, a, stdin: 600 * KiB, id: "j2").get(), "queued: 600 KiB held")
        XCTAssertEqual(s.tenant(a).queuedBytes, 600 * KiB)
        let (q, retry) = quota(submit(s, a, stdin: 600 * KiB, id: "j3"))
        XCTAssertEqual(q, "max_queued_bytes")
        XCTAssertNotNil(retry?.intValue, "room comes as the queue drains: retry_after_ms")
        XCTAssertNoThrow(try submit(s, a, stdin: 0, id: "j4").get(), "a job without stdin is not held back by it")
        XCTAssertNoThrow(try submit(s, b, stdin: 600 * KiB, id: "k1").get(), "a neighbour has its own")
        // One over the limit by itself: waiting does not help.
        let (alone, none) = quota(submit(s, a, stdin: 2 * 1024 * KiB, id: "j5"))
        XCTAssertEqual(alone, "max_queued_bytes")
        XCTAssertEqual(none, .null)
        // j1 ends, j2 starts: its stdin leaves the queue.
        let w = try XCTUnwrap(s.worker(a))
        s.ready(w)
        s.report(w, "j1")
        XCTAssertEqual(s.tenant(a).queuedBytes, 0)
        XCTAssertNoThrow(try submit(s, a, stdin: 600 * KiB, id: "j6").get())
        // A canceled queued job frees its bytes too.
        _ = s.core.cancel("j6", tenant: a)
        XCTAssertEqual(s.tenant(a).queuedBytes, 0)
    }
}
