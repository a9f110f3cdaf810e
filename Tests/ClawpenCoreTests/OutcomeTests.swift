@testable import ClawpenCore
import ClawpenProtocol
import ClawpenStore
import ClawpenWire
import XCTest

final class OutcomeMappingTests: XCTestCase {
    let job = JobRecord(
        id: "j", tenant: .t("a"), state: .running, argv: ["x"], env: [], cwd: "/home", stdin: [],
        timeoutSeconds: 2, outputCap: 10, idempotencyKey: nil, attempt: 1, createdAt: 0)

    func report(_ o: JobOutcome) -> JobReport {
        JobReport(
            jobID: "j", outcome: o, stdout: [], stderr: Array("m".utf8), stdoutTruncated: false, stderrTruncated: false,
            runMicros: 1500, cpuMicros: 700, maxRSSKiB: 99)
    }

    func testEveryOutcomeMapsToItsContractState() {
        XCTAssertEqual(Outcome.map(report(.exited(code: 0)), job).0, .succeeded)
        XCTAssertEqual(Outcome.map(report(.exited(code: 2)), job).0, .failed)
        XCTAssertEqual(Outcome.map(report(.exited(code: 2)), job).1.exitCode, 2)
        let killed = Outcome.map(report(.signaled(signal: 11)), job)
        XCTAssertEqual(killed.0, .killed); XCTAssertEqual(killed.1.signal, 11); XCTAssertNil(killed.1.exitCode)
        let t = Outcome.map(report(.timedOut(signal: 9)), job)
        XCTAssertEqual(t.0, .timedOut); XCTAssertEqual(t.1.error?.code, .timedOut)
        XCTAssertEqual(Outcome.map(report(.canceled(signal: 9)), job).0, .canceled)
        let nf = Outcome.map(report(.spawnFailed(step: "exec", errno: 2)), job)
        XCTAssertEqual(nf.0, .failed); XCTAssertEqual(nf.1.exitCode, 127); XCTAssertEqual(nf.1.stderr, Array("m".utf8))
        XCTAssertNil(nf.1.runMs, "a job that never started has no run time")
        let ok = Outcome.map(report(.exited(code: 0)), job).1
        XCTAssertEqual(ok.runMs, 1.5); XCTAssertEqual(ok.cpuMs, 0.7); XCTAssertEqual(ok.maxRSSKiB, 99)
    }

    func testJobQueueOrderAndRemoval() {
        var q = JobQueue()
        func j(_ id: String) -> JobRecord { var r = job; r.id = id; return r }
        for i in 0..<5 { q.append(j("\(i)")) }
        XCTAssertEqual(q.popFirst()?.id, "0")
        XCTAssertEqual(q.remove(id: "3")?.id, "3")
        q.pushFront(j("x"))
        XCTAssertEqual((0..<4).compactMap { _ in q.popFirst()?.id }, ["x", "1", "2", "4"])
        XCTAssertTrue(q.isEmpty)
    }
}
