import ClawpenProtocol
import ClawpenSecrets
import ClawpenStore
import ClawpenWire
import Foundation
import XCTest

@testable import ClawpenSupervisor

/// Migrations, sealed job records, the keyring and the retention purge, on real SQLite files
/// with the real key hierarchy, without a daemon.
final class TenantDataStoreTests: XCTestCase {
    var dir: String!

    override func setUpWithError() throws {
        dir = NSTemporaryDirectory() + "clawpen-data-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    }
    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    func master(_ byte: UInt8 = 3) throws -> MasterKey { try MasterKey(bytes: [UInt8](repeating: byte, count: 32), source: "test") }

    func job(_ id: String, _ tenant: String, argv: [String] = ["echo", "ARGV-MARK"], stdin: [UInt8] = Array("STDIN-MARK".utf8)) -> JobRecord {
        JobRecord(
            id: id, tenant: .t(tenant), state: .queued, argv: argv, env: [.init(name: "AGENT_K", value: "ENV-MARK")], cwd: "/home",
            stdin: stdin, timeoutSeconds: 30, outputCap: 1 << 20, idempotencyKey: nil, attempt: 1, createdAt: 1)
    }

    func finished(_ id: String, _ tenant: String, at: Double = 2, out: String = "OUT-MARK") -> Store.Finished {
        Store.Finished(
            id: id, tenant: .t(tenant), state: .succeeded, result: JobResult(exitCode: 0, stdout: Array(out.utf8), stderr: Array("ERR-MARK".utf8)),
            startedAt: at - 1, finishedAt: at)
    }

    func fileContains(_ path: String, _ s: String) -> Bool {
        guard let d = FileManager.default.contents(atPath: path) else { return false }
        return d.range(of: Data(s.utf8)) != nil
    }

    // MARK: Migrations

    func testANewDatabaseIsAtTheLatestVersionAndANewerOneIsRefused() throws {
        let path = dir + "/a.db"
        do {
            let s = try Store(path: path, fsyncAccepts: false)
            XCTAssertEqual(try s.debugQuery("SELECT value FROM meta WHERE key='schema_version'"), [String(Store.schemaVersion)])
            XCTAssertEqual(try s.debugQuery("PRAGMA user_version"), [String(Store.schemaVersion)])
            XCTAssertEqual(Store.schemaVersion, 5)
            XCTAssertEqual(Store.migrationVersions, Array(1...Store.schemaVersion), "numbered, in order, none missing")
            _ = try s.debugQuery("UPDATE meta SET value='\(Store.schemaVersion + 1)' WHERE key='schema_version'")
        }
        XCTAssertThrowsError(try Store(path: path, fsyncAccepts: false)) { e in
            guard case StoreError.newerSchema(_, let found, let known) = e else { return XCTFail("\(e)") }
            XCTAssertEqual(found, Store.schemaVersion + 1)
            XCTAssertEqual(known, Store.schemaVersion)
            XCTAssertTrue("\(e)".contains("newer than this clawpen's"), "\(e)")
        }
    }

    /// The fixture: a state database written by the release before migrations (schema 2) through
    /// a real daemon (Tests/Fixtures/release-85eeac2/README.md). Every job is found, with its
    /// output, and the upgrade seals what it held in clear.
    func testTheLastReleasesDatabaseUpgradesInPlaceAndEveryJobIsFound() throws {
        let fixture = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Fixtures/release-85eeac2")
        let manifest = try JSONValue.parse(Array(try Data(contentsOf: fixture.appendingPathComponent("jobs.json"))))
        let expected = try XCTUnwrap(manifest.arrayValue)
        XCTAssertGreaterThanOrEqual(expected.count, 5)
        let path = dir + "/clawpen.db"
        try FileManager.default.copyItem(atPath: fixture.appendingPathComponent("clawpen.db").path, toPath: path)
        let store = try Store(path: path, fsyncAccepts: false)
        XCTAssertEqual(try store.debugQuery("SELECT value FROM meta WHERE key='schema_version'"), ["5"])
        // Before sealing: the old rows read as they are.
        for e in expected {
            let id = try XCTUnwrap(e["id"]?.stringValue)
            let j = try XCTUnwrap(try store.job(id: id), "job \(id) not found")
            XCTAssertEqual(j.tenant.value, e["tenant"]?.stringValue)
            XCTAssertEqual(String(decoding: j.result?.stdout ?? [], as: UTF8.self), e["stdout"]?.stringValue, id)
        }
        // The supervisor's start: the keyring seals every clear row, once.
        // That release's master key (it wraps bob's data key, made for bob's secret).
        let keyPath = dir + "/master.key"
        try FileManager.default.copyItem(atPath: fixture.appendingPathComponent("master.key").path, toPath: keyPath)
        chmod(keyPath, 0o600)
        let keyring = TenantKeyring(master: try MasterKey.fromFile(keyPath), store: store)
        store.cipher = keyring
        XCTAssertEqual(try store.sealClearJobs(batch: 2), expected.count)
        XCTAssertEqual(try store.sealClearJobs(), 0)
        store.checkpoint()
        for e in expected {
            let id = try XCTUnwrap(e["id"]?.stringValue)
            let j = try XCTUnwrap(try store.job(id: id))
            XCTAssertEqual(String(decoding: j.result?.stdout ?? [], as: UTF8.self), e["stdout"]?.stringValue, id)
            XCTAssertEqual(j.argv, e["argv"]?.arrayValue?.compactMap(\.stringValue), id)
            if let out = e["stdout"]?.stringValue, out.count > 8 { XCTAssertFalse(fileContains(path, out), "\(id)'s output left in clear") }
        }
    }

    // MARK: Sealing

    func testJobFieldsAreSealedAndBoundToTheirRowAndField() throws {
        let path = dir + "/s.db"
        let store = try Store(path: path, fsyncAccepts: false)
        for t in ["acme", "bob"] { _ = try store.createTenant(name: .t(t), tier: "free", uidRange: 100...200, now: 1) }
        let keyring = TenantKeyring(master: try master(), store: store)
        store.cipher = keyring
        try store.insertJobs([job("j1", "acme"), job("j2", "acme"), job("j3", "bob")])
        try store.finishJobs([finished("j1", "acme"), finished("j2", "acme"), finished("j3", "bob")])
        store.checkpoint()
        for m in ["ARGV-MARK", "ENV-MARK", "STDIN-MARK", "OUT-MARK", "ERR-MARK"] { XCTAssertFalse(fileContains(path, m), m) }
        XCTAssertEqual(try store.job(id: "j1")?.argv, ["echo", "ARGV-MARK"])
        XCTAssertEqual(try store.job(id: "j1")?.env.first?.value, "ENV-MARK")
        XCTAssertEqual(try store.job(id: "j3")?.result?.stderr, Array("ERR-MARK".utf8))
        // Another row, another field, another tenant: none opens.
        _ = try store.debugQuery("UPDATE jobs SET stdout=(SELECT stdout FROM jobs WHERE id='j1') WHERE id='j2'")
        _ = try store.debugQuery("UPDATE jobs SET stderr=(SELECT stdout FROM jobs WHERE id='j3') WHERE id='j3'")
        _ = try store.debugQuery("UPDATE jobs SET argv=(SELECT argv FROM jobs WHERE id='j1') WHERE id='j3'")
        for id in ["j2", "j3"] {
            XCTAssertThrowsError(try store.job(id: id)) { e in
                guard case StoreError.unreadable(let job, _) = e else { return XCTFail("\(e)") }
                XCTAssertEqual(job, id)
            }
        }
        XCTAssertEqual(try store.job(id: "j1")?.result?.stdout, Array("OUT-MARK".utf8), "the source row still opens")
        let listed = try store.jobs(tenants: nil, states: nil, limit: 10)
        XCTAssertEqual(listed.count, 3, "a listing keeps going past a bad record")
        XCTAssertTrue(listed.first { $0.id == "j2" }?.result?.error?.message.contains("cannot be decrypted") ?? false)
        // The store without keys opens nothing sealed, and says so.
        let bare = try Store(path: path, fsyncAccepts: false)
        XCTAssertThrowsError(try bare.job(id: "j1"))
    }

    func testTheKeyringIsBoundedAndForgetsAnOffboardedTenant() throws {
        let store = try Store(path: dir + "/k.db", fsyncAccepts: false)
        let names = (0..<5).map { "t\($0)" }
        for t in names { _ = try store.createTenant(name: .t(t), tier: "free", uidRange: 100...200, now: 1) }
        let keyring = TenantKeyring(master: try master(), store: store, capacity: 2)
        store.cipher = keyring
        for (i, t) in names.enumerated() { try store.insertJobs([job("j\(i)", t)]) }
        XCTAssertEqual(keyring.cachedCount, 2, "at most `capacity` keys in memory")
        let unwrapsBefore = keyring.unwraps
        for i in names.indices { XCTAssertEqual(try store.job(id: "j\(i)")?.stdin, Array("STDIN-MARK".utf8)) }
        XCTAssertGreaterThan(keyring.unwraps, unwrapsBefore, "evicted keys are unwrapped again")
        keyring.drop(.t("t4"))
        XCTAssertEqual(keyring.cachedCount, 1)
        // Destroyed: nothing it sealed opens any more, in memory or not.
        try store.destroyTenantKeys(.t("t3"), now: 9)
        keyring.drop(.t("t3"))
        XCTAssertThrowsError(try store.job(id: "j3"))
        XCTAssertEqual(try store.job(id: "j2")?.stdin, Array("STDIN-MARK".utf8))
    }

    func testRotationRewrapsEveryKeyAndNoRecordChanges() throws {
        let path = dir + "/r.db"
        let store = try Store(path: path, fsyncAccepts: false)
        for t in ["a", "b"] { _ = try store.createTenant(name: .t(t), tier: "free", uidRange: 100...200, now: 1) }
        let keyring = TenantKeyring(master: try master(1), store: store)
        store.cipher = keyring
        try store.insertJobs([job("j1", "a"), job("j2", "b")])
        let before = try store.debugQuery("SELECT hex(argv) FROM jobs ORDER BY id")
        XCTAssertEqual(try keyring.rotate(to: try master(2)), 2)
        XCTAssertEqual(Set(try store.liveTenantKeys().map(\.masterKeyID)), [try master(2).id])
        XCTAssertEqual(try store.debugQuery("SELECT hex(argv) FROM jobs ORDER BY id"), before, "no record rewritten")
        // A fresh keyring with the new key opens everything; one with the old key opens nothing.
        store.cipher = TenantKeyring(master: try master(2), store: store)
        XCTAssertEqual(try store.job(id: "j2")?.argv, ["echo", "ARGV-MARK"])
        store.cipher = TenantKeyring(master: try master(1), store: store)
        XCTAssertThrowsError(try store.job(id: "j2"))
    }

    // MARK: Retention

    func testThePurgeRemovesOnlyFinishedRecordsPastTheCutoffInBatches() throws {
        let store = try Store(path: dir + "/p.db", fsyncAccepts: false)
        for t in ["a", "b"] { _ = try store.createTenant(name: .t(t), tier: "free", uidRange: 100...200, now: 1) }
        try store.insertJobs((0..<7).map { job("a\($0)", "a") } + [job("b0", "b"), job("q", "a")])
        try store.finishJobs((0..<7).map { finished("a\($0)", "a", at: $0 < 5 ? 100 : 900) } + [finished("b0", "b", at: 100)])
        XCTAssertEqual(try store.purgeFinishedJobs(.t("a"), before: 500, limit: 2), 2, "a batch at most")
        XCTAssertEqual(try store.purgeFinishedJobs(.t("a"), before: 500, limit: 100), 3)
        XCTAssertEqual(try store.purgeFinishedJobs(.t("a"), before: 500, limit: 100), 0)
        XCTAssertNotNil(try store.job(id: "a5"), "newer than the cutoff")
        XCTAssertNotNil(try store.job(id: "q"), "queued: never purged")
        XCTAssertNotNil(try store.job(id: "b0"), "another tenant's")
    }
    // MARK: Cost

    /// What sealing adds to the event loop's store writes and reads, per job (insert, finish, get
    /// of a job with a 1 KiB output), measured with and without the keyring, alternated.
    /// Printed for BENCHMARKS.md; the assertion only catches a gross regression.
    func testSealingCostPerJob() throws {
        let n = 1000
        var perJob: [Bool: [Double]] = [:]
        let out = String(repeating: "x", count: 1024)
        for round in 0..<6 {
            let sealed = round % 2 == 1
            let store = try Store(path: dir + "/cost-\(round).db", fsyncAccepts: false)
            _ = try store.createTenant(name: .t("acme"), tier: "free", uidRange: 100...200, now: 1)
            if sealed { store.cipher = TenantKeyring(master: try master(), store: store) }
            let began = DispatchTime.now().uptimeNanoseconds
            for i in 0..<n {
                try store.insertJobs([job("c\(i)", "acme")])
                try store.finishJobs([finished("c\(i)", "acme", out: out)])
                _ = try store.job(id: "c\(i)")
            }
            perJob[sealed, default: []].append(Double(DispatchTime.now().uptimeNanoseconds - began) / 1000 / Double(n))
        }
        // The AES-GCM part alone: five seals and five opens of the same sizes.
        let (key, _) = try master().newDataKey(tenant: "acme", version: 1)
        let fields: [[UInt8]] = [
            Array("echo ARGV-MARK".utf8), Array("AGENT_K=ENV-MARK".utf8), Array("STDIN-MARK".utf8), Array(out.utf8), Array("ERR-MARK".utf8),
        ]
        let t0 = DispatchTime.now().uptimeNanoseconds
        for i in 0..<n {
            for f in fields {
                let sealed = try key.seal(f, purpose: "job.stdout", name: "c\(i)", itemVersion: 1)
                _ = try key.open(sealed, purpose: "job.stdout", name: "c\(i)", itemVersion: 1)
            }
        }
        print("aes-gcm alone: \(String(format: "%.1f", Double(DispatchTime.now().uptimeNanoseconds - t0) / 1000 / Double(n))) us/job")
        let clear = perJob[false, default: []].sorted()[1], withSeal = perJob[true, default: []].sorted()[1]
        print(
            "sealing cost: \(String(format: "%.1f", clear)) us/job clear, \(String(format: "%.1f", withSeal)) us/job sealed, +\(String(format: "%.1f", withSeal - clear)) us"
        )
        XCTAssertLessThan(withSeal - clear, 5000, "a debug build: the release figure is in BENCHMARKS.md")
    }
}
