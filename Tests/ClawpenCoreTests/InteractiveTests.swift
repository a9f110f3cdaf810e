import ClawpenCore
import ClawpenPolicy
import ClawpenProtocol
import ClawpenWire
import XCTest

/// Interactive jobs (stdin open or a terminal) in the core: their own timeout key, their flags
/// carried to the worker, and a worker that is not reaped while one runs however long it idles.
final class InteractiveTests: XCTestCase {
    func request(_ t: TenantName, timeout: Double? = nil, _ options: RunOptions) -> SubmitRequest {
        SubmitRequest(tenant: t, argv: ["/usr/bin/python3"], timeoutSeconds: timeout, options: options)
    }

    func testInteractiveJobsTakeInteractiveTimeoutMax() throws {
        let s = FakeShell()
        let a = s.addTenant("a")
        let admitted = try s.core.admit(
            request(a, RunOptions(stdinOpen: true)), tenant: s.tenant(a), jobID: "j1", isExecutable: { _ in true }
        ).get()
        XCTAssertEqual(admitted.timeoutSeconds, 600, "the default is the tier's interactive_timeout_max_s")
        guard
            case .failure(let refusal) = s.core.admit(
                request(a, timeout: 601, RunOptions(tty: true)), tenant: s.tenant(a), jobID: "j2", isExecutable: { _ in true })
        else { return XCTFail("over interactive_timeout_max_s") }
        XCTAssertEqual(refusal.error.details["quota"], .string("interactive_timeout_max_s"))
        XCTAssertTrue(refusal.error.message.contains("interactive"), refusal.error.message)
        // Not interactive: the old key still rules (301 > timeout_max_s 300, even though 600 is allowed interactively).
        guard
            case .failure(let plain) = s.core.admit(
                request(a, timeout: 301, RunOptions(stream: true)), tenant: s.tenant(a), jobID: "j3", isExecutable: { _ in true })
        else { return XCTFail("a streamed job is not interactive") }
        XCTAssertEqual(plain.error.details["quota"], .string("timeout_max_s"))
    }

    func testTheRunCarriesTheFlagsAndTheWorkerIsNotReapedWhileItRuns() throws {
        let s = FakeShell(idleTimeoutMs: 1000)
        let a = s.addTenant("a")
        let options = RunOptions(stream: true, stdinOpen: true, tty: true, rows: 50, cols: 132)
        let job = try s.core.admit(request(a, options), tenant: s.tenant(a), jobID: "tty-1", isExecutable: { _ in true }).get()
        s.perform(s.core.accepted([job]))
        let w = try XCTUnwrap(s.worker(a))
        s.ready(w)
        XCTAssertEqual(s.runs(to: w).first?.options, options)
        s.perform(s.core.workerStarted(w, jobID: job.id))
        s.advance(3600)
        XCTAssertEqual(s.state(a), .busy, "an interactive job that idles for an hour keeps its worker")
        XCTAssertFalse(s.sent.contains { $0.1 == .shutdown })
        s.report(w, job.id)
        s.advance(1.1)
        XCTAssertEqual(s.sent.last?.1, .shutdown, "once it ends the idle timer runs")
    }
}
