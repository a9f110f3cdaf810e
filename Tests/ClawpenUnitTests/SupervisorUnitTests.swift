@testable import ClawpenStore
@testable import ClawpenSupervisor
import ClawpenProtocol
import ClawpenWire
import Foundation
import XCTest

final class JobIDTests: XCTestCase {
    func testJobIDsAreWellFormedAndUnique() {
        let ids = (0..<1000).map { _ in JobID.make() }
        XCTAssertEqual(Set(ids).count, 1000)
        XCTAssertTrue(ids.allSatisfy(JobID.isWellFormed))
        XCTAssertFalse(JobID.isWellFormed("../etc"))
        XCTAssertFalse(JobID.isWellFormed(""))
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
        JobRecord(
            id: id, tenant: .t("a"), state: .queued, argv: ["echo", "a b", ""], env: [.init(name: "K", value: "v=1")],
            cwd: "/home", stdin: [0, 1], timeoutSeconds: 30, outputCap: 1 << 20, idempotencyKey: key, attempt: 1, createdAt: 1)
    }

    func testTenantsGetDistinctUidsFromTheRange() throws {
        let s = try Store(path: dir + "/db")
        guard case .created(let a) = try s.createTenant(name: .t("a"), tier: "free", uidRange: 10...11, now: 0),
            case .created(let b) = try s.createTenant(name: .t("b"), tier: "pro", uidRange: 10...11, now: 0)
        else { return XCTFail() }
        XCTAssertEqual([a.uid, b.uid], [10, 11])
        XCTAssertEqual(try s.createTenant(name: .t("a"), tier: "free", uidRange: 10...11, now: 0), .duplicate)
        XCTAssertEqual(try s.createTenant(name: .t("c"), tier: "free", uidRange: 10...11, now: 0), .uidRangeExhausted)
    }

    func testJobLifecycleAndRecoveryAcrossReopen() throws {
        do {
            let s = try Store(path: dir + "/db")
            _ = try s.createTenant(name: .t("a"), tier: "free", uidRange: 10...20, now: 0)
            try s.insertJobs([job("1", key: "k")])
            XCTAssertEqual(try s.job(tenant: .t("a"), idempotencyKey: "k")?.id, "1")
            XCTAssertThrowsError(try s.insertJobs([job("2", key: "k"), job("5")]), "a duplicate key fails the whole batch")
            XCTAssertNil(try s.job(id: "5"))
            try s.insertJobs([job("3"), job("4")])
            try s.finishJobs([
                .init(
                    id: "4", tenant: .t("a"), state: .failed, result: JobResult(exitCode: 3, stdout: [9], stderr: [], stdoutTruncated: true), startedAt: 2,
                    finishedAt: 3)
            ])
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
        XCTAssertEqual(try s.jobCounts()[.t("a")]?[.failed], 1)
    }
}
