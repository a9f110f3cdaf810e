import ClawpenProtocol
import Foundation
import XCTest

@testable import ClawpenStore

/// The store's failures an operator or a client acts on, typed from SQLite's result codes:
/// a full disk (retried, `unavailable` to a client), a corrupt file and another process's lock
/// (exit 78 at start).
final class StoreFailureTests: XCTestCase {
    var dir = ""

    override func setUpWithError() throws {
        dir = NSTemporaryDirectory() + "clawpen-storefail-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    }

    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    func job(_ id: String, stdin: Int) -> JobRecord {
        JobRecord(
            id: id, tenant: .t("acme"), state: .queued, argv: ["/bin/true"], env: [], cwd: "/home", stdin: [UInt8](repeating: 7, count: stdin),
            timeoutSeconds: 1, outputCap: 10, idempotencyKey: "k-\(id)", attempt: 1, createdAt: 1)
    }

    /// SQLITE_FULL (here from a page limit, the same code a full file system gives) is `.full`,
    /// the batch is rolled back whole, and the same connection writes again once there is room.
    func testAFullDatabaseIsTypedAndTheSameStoreWritesAgainOnceThereIsRoom() throws {
        let store = try Store(path: dir + "/db", fsyncAccepts: false)
        _ = try store.createTenant(name: .t("acme"), tier: "pro", uidRange: 100...200, now: 1)
        let pages = try store.db.rows("PRAGMA page_count") { $0.int(0) }[0]
        try store.db.exec("PRAGMA max_page_count=\(pages + 2)")
        var failure: StoreError?
        for i in 0..<50 where failure == nil {
            do { try store.insertJobs([job("j\(i)a", stdin: 3000), job("j\(i)b", stdin: 3000)]) } catch { failure = error }
        }
        let e = try XCTUnwrap(failure)
        XCTAssertTrue(e.isDiskFull, "\(e)")
        XCTAssertFalse(e.needsOperator)
        XCTAssertTrue(e.description.contains("the disk is full"), e.description)
        XCTAssertTrue(e.description.contains(dir + "/db"), e.description)
        let kept = try store.jobs(tenants: nil, states: nil, limit: 1000).count
        XCTAssertEqual(kept % 2, 0, "a batch is kept whole or not at all")
        try store.db.exec("PRAGMA max_page_count=1000000")
        try store.insertJobs([job("after", stdin: 3000)])
        XCTAssertNotNil(try store.job(id: "after"))
    }

    func testAFileThatIsNotADatabaseIsCorruptAndNeedsAnOperator() throws {
        let path = dir + "/db"
        FileManager.default.createFile(atPath: path, contents: Data((0..<8192).map { _ in UInt8.random(in: 0...255) }))
        XCTAssertThrowsError(try Store(path: path)) { error in
            guard let e = error as? StoreError, case .corruptFile = e else { return XCTFail("\(error)") }
            XCTAssertTrue(e.needsOperator)
            XCTAssertTrue(e.description.contains("state database \(path) is corrupt"), e.description)
        }
    }

    func testADatabaseAnotherProcessHoldsIsLockedAndNeedsAnOperator() throws {
        let path = dir + "/db"
        _ = try Store(path: path)
        let holder = Process()
        holder.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        holder.arguments = [
            "-c",
            "import sqlite3,sys,time\nc=sqlite3.connect(sys.argv[1],isolation_level=None)\nc.execute('PRAGMA locking_mode=EXCLUSIVE')\nc.execute('BEGIN EXCLUSIVE')\nprint('locked',flush=True)\ntime.sleep(60)",
            path,
        ]
        let out = Pipe()
        holder.standardOutput = out
        try holder.run()
        defer { holder.terminate(); holder.waitUntilExit() }
        XCTAssertTrue(String(decoding: out.fileHandleForReading.availableData, as: UTF8.self).hasPrefix("locked"))
        XCTAssertThrowsError(try Store(path: path)) { error in
            guard let e = error as? StoreError, case .locked = e else { return XCTFail("\(error)") }
            XCTAssertTrue(e.needsOperator)
            XCTAssertTrue(e.description.contains("locked by another process"), e.description)
        }
    }
}
