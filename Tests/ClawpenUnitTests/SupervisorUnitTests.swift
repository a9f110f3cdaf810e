@testable import ClawpenStore
@testable import ClawpenSupervisor
import ClawpenProtocol
import ClawpenWire
import Foundation
import XCTest

final class OutcomeMappingTests: XCTestCase {
    let job = JobRecord(id: "j", tenant: "a", state: .running, argv: ["x"], env: [], cwd: "/home", stdin: [],
                        timeoutSeconds: 2, outputCap: 10, idempotencyKey: nil, attempt: 1, createdAt: 0)

    func report(_ o: JobOutcome) -> JobReport {
        JobReport(jobID: "j", outcome: o, stdout: [], stderr: Array("m".utf8), stdoutTruncated: false, stderrTruncated: false,
                  runMicros: 1500, cpuMicros: 700, maxRSSKiB: 99)
    }

    func testEveryOutcomeMapsToItsContractState() {
        XCTAssertEqual(Supervisor.outcome(report(.exited(code: 0)), job).0, .succeeded)
        XCTAssertEqual(Supervisor.outcome(report(.exited(code: 2)), job).0, .failed)
        XCTAssertEqual(Supervisor.outcome(report(.exited(code: 2)), job).1.exitCode, 2)
        let killed = Supervisor.outcome(report(.signaled(signal: 11)), job)
        XCTAssertEqual(killed.0, .killed); XCTAssertEqual(killed.1.signal, 11); XCTAssertNil(killed.1.exitCode)
        let t = Supervisor.outcome(report(.timedOut(signal: 9)), job)
        XCTAssertEqual(t.0, .timedOut); XCTAssertEqual(t.1.error?.code, .timedOut)
        XCTAssertEqual(Supervisor.outcome(report(.canceled(signal: 9)), job).0, .canceled)
        let nf = Supervisor.outcome(report(.spawnFailed(step: "exec", errno: 2)), job)
        XCTAssertEqual(nf.0, .failed); XCTAssertEqual(nf.1.exitCode, 127); XCTAssertEqual(nf.1.stderr, Array("m".utf8))
        XCTAssertNil(nf.1.runMs, "a job that never started has no run time")
        let ok = Supervisor.outcome(report(.exited(code: 0)), job).1
        XCTAssertEqual(ok.runMs, 1.5); XCTAssertEqual(ok.cpuMs, 0.7); XCTAssertEqual(ok.maxRSSKiB, 99)
    }

    func testJobIDsAreWellFormedAndUnique() {
        let ids = (0..<1000).map { _ in JobID.make() }
        XCTAssertEqual(Set(ids).count, 1000)
        XCTAssertTrue(ids.allSatisfy(JobID.isWellFormed))
        XCTAssertFalse(JobID.isWellFormed("../etc"))
        XCTAssertFalse(JobID.isWellFormed(""))
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

final class StoreTests: XCTestCase {
    var dir: String!
    override func setUp() {
        var t = Array("/tmp/clawpen-store-XXXXXX".utf8CString)
        dir = String(cString: mkdtemp(&t)!)
    }
    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    func job(_ id: String, key: String? = nil) -> JobRecord {
        JobRecord(id: id, tenant: "a", state: .queued, argv: ["echo", "a b", ""], env: [.init(name: "K", value: "v=1")],
                  cwd: "/home", stdin: [0, 1], timeoutSeconds: 30, outputCap: 1 << 20, idempotencyKey: key, attempt: 1, createdAt: 1)
    }

    func testTenantsGetDistinctUidsFromTheRange() throws {
        let s = try Store(path: dir + "/db")
        guard case .created(let a) = try s.createTenant(name: "a", tier: "free", uidRange: 10...11, now: 0),
              case .created(let b) = try s.createTenant(name: "b", tier: "pro", uidRange: 10...11, now: 0) else { return XCTFail() }
        XCTAssertEqual([a.uid, b.uid], [10, 11])
        XCTAssertEqual(try s.createTenant(name: "a", tier: "free", uidRange: 10...11, now: 0), .duplicate)
        XCTAssertEqual(try s.createTenant(name: "c", tier: "free", uidRange: 10...11, now: 0), .uidRangeExhausted)
    }

    func testJobLifecycleAndRecoveryAcrossReopen() throws {
        do {
            let s = try Store(path: dir + "/db")
            _ = try s.createTenant(name: "a", tier: "free", uidRange: 10...20, now: 0)
            try s.insertJobs([job("1", key: "k")])
            XCTAssertEqual(try s.job(tenant: "a", idempotencyKey: "k")?.id, "1")
            XCTAssertThrowsError(try s.insertJobs([job("2", key: "k"), job("5")]), "a duplicate key fails the whole batch")
            XCTAssertNil(try s.job(id: "5"))
            try s.insertJobs([job("3"), job("4")])
            try s.finishJobs([.init(id: "4", state: .failed, result: JobResult(exitCode: 3, stdout: [9], stderr: [], stdoutTruncated: true), startedAt: 2, finishedAt: 3)])
        }
        let s = try Store(path: dir + "/db")
        let recovered = try s.recoverUnfinishedJobs()
        XCTAssertEqual(recovered.map(\.id), ["1", "3"])
        XCTAssertEqual(recovered.map(\.attempt), [2, 2])
        XCTAssertEqual(recovered[0].argv, ["echo", "a b", ""])
        XCTAssertEqual(recovered[0].env, [.init(name: "K", value: "v=1")])
        XCTAssertEqual(recovered[0].stdin, [0, 1])
        let done = try XCTUnwrap(try s.job(id: "4"))
        XCTAssertEqual(done.state, .failed)
        XCTAssertEqual(done.result?.exitCode, 3)
        XCTAssertEqual(done.result?.stdout, [9])
        XCTAssertEqual(done.result?.stdoutTruncated, true)
        XCTAssertEqual(done.startedAt, 2)
        XCTAssertEqual(try s.jobCounts()["a"]?[.failed], 1)
    }
}
