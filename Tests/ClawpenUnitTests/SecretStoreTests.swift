import ClawpenSecrets
import ClawpenStore
import ClawpenWire
import Foundation
import XCTest

/// The key hierarchy and the secret tables, without a daemon.
final class SecretStoreTests: XCTestCase {
    var dir: String!

    override func setUpWithError() throws {
        dir = NSTemporaryDirectory() + "clawpen-keys-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    }

    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    func master(_ byte: UInt8 = 7) throws -> MasterKey { try MasterKey(bytes: [UInt8](repeating: byte, count: 32), source: "test") }

    func testADataKeyUnwrapsOnlyForItsTenantVersionAndMasterKey() throws {
        let m = try master()
        let (key, wrapped) = try m.newDataKey(tenant: "acme", version: 1)
        let again = try m.unwrap(wrapped, tenant: "acme", version: 1)
        let sealed = try key.seal(Array("v".utf8), purpose: "secret", name: "N", itemVersion: 1)
        XCTAssertEqual(try again.open(sealed, purpose: "secret", name: "N", itemVersion: 1), Array("v".utf8))
        XCTAssertThrowsError(try m.unwrap(wrapped, tenant: "other", version: 1), "bound to its tenant")
        XCTAssertThrowsError(try m.unwrap(wrapped, tenant: "acme", version: 2), "bound to its version")
        XCTAssertThrowsError(try master(8).unwrap(wrapped, tenant: "acme", version: 1), "another master key opens nothing")
        var flipped = wrapped
        flipped[flipped.count - 1] ^= 1
        XCTAssertThrowsError(try m.unwrap(flipped, tenant: "acme", version: 1), "an altered row does not open")
    }

    func testASealedValueIsBoundToTenantNameAndVersion() throws {
        let (key, _) = try master().newDataKey(tenant: "acme", version: 1)
        let value = Array("sk-live-1234567890".utf8)
        let sealed = try key.seal(value, purpose: "secret", name: "OPENAI", itemVersion: 3)
        XCTAssertNil(sealed.firstRange(of: value), "the value is not in its ciphertext")
        XCTAssertEqual(sealed.count, 12 + value.count + 16, "nonce, ciphertext, tag")
        XCTAssertThrowsError(try key.open(sealed, purpose: "secret", name: "OTHER", itemVersion: 3))
        XCTAssertThrowsError(try key.open(sealed, purpose: "secret", name: "OPENAI", itemVersion: 2))
        XCTAssertThrowsError(try key.open(sealed, purpose: "job.stdout", name: "OPENAI", itemVersion: 3))
        let (other, _) = try master().newDataKey(tenant: "globex", version: 1)
        XCTAssertThrowsError(try other.open(sealed, purpose: "secret", name: "OPENAI", itemVersion: 3), "another tenant's key")
        let twice = try key.seal(value, purpose: "secret", name: "OPENAI", itemVersion: 3)
        XCTAssertNotEqual(twice, sealed, "a fresh nonce each time")
    }

    func testTheMasterKeyFileIsGeneratedOwnerOnlyAndAWorldReadableOneIsRefused() throws {
        let (generated, wasGenerated) = try MasterKey.load(explicitFile: nil, credentialsDirectory: nil, stateDir: dir)
        XCTAssertTrue(wasGenerated)
        let path = dir + "/master.key"
        let mode = try XCTUnwrap(FileManager.default.attributesOfItem(atPath: path)[.posixPermissions] as? Int)
        XCTAssertEqual(mode & 0o777, 0o600)
        let (loaded, again) = try MasterKey.load(explicitFile: nil, credentialsDirectory: nil, stateDir: dir)
        XCTAssertFalse(again, "the second start reads it")
        XCTAssertEqual(loaded.id, generated.id)
        chmod(path, 0o644)
        XCTAssertThrowsError(try MasterKey.load(explicitFile: nil, credentialsDirectory: nil, stateDir: dir)) { e in
            XCTAssertTrue("\(e)".contains("mode 644"), "\(e)")
        }
        // The systemd credential comes before the state dir's file; an explicit file before both.
        let creds = dir + "/creds"
        try FileManager.default.createDirectory(atPath: creds, withIntermediateDirectories: true)
        let raw = [UInt8](repeating: 9, count: 32)
        FileManager.default.createFile(atPath: creds + "/clawpen-master-key", contents: Data(raw), attributes: [.posixPermissions: 0o400])
        let (cred, _) = try MasterKey.load(explicitFile: nil, credentialsDirectory: creds, stateDir: dir)
        XCTAssertEqual(cred.id, try MasterKey(bytes: raw, source: "x").id)
        XCTAssertEqual(cred.source, "systemd credential clawpen-master-key")
        let hexFile = dir + "/hex.key"
        FileManager.default.createFile(
            atPath: hexFile, contents: Data((String(repeating: "0a", count: 32) + "\n").utf8), attributes: [.posixPermissions: 0o600])
        XCTAssertEqual(try MasterKey.load(explicitFile: hexFile, credentialsDirectory: creds, stateDir: dir).0.id, try master(10).id)
        let short = dir + "/short.key"
        FileManager.default.createFile(atPath: short, contents: Data([1, 2, 3]), attributes: [.posixPermissions: 0o600])
        XCTAssertThrowsError(try MasterKey.fromFile(short))
    }

    func testAVersionOneStateDirGainsTheSecretTables() throws {
        let path = dir + "/old.db"
        // A database as the previous release left it: its meta row says version 1.
        let proc = Process()
        proc.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        proc.arguments = [
            "python3", "-c",
            "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.execute('CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL)'); c.execute(\"INSERT INTO meta VALUES('schema_version','1')\"); c.commit()",
            path,
        ]
        try proc.run()
        proc.waitUntilExit()
        XCTAssertEqual(proc.terminationStatus, 0)
        let store = try Store(path: path, fsyncAccepts: false)
        XCTAssertEqual(Store.schemaVersion, 5)
        _ = try store.createTenant(name: .t("acme"), tier: "pro", uidRange: 100...200, now: 1)
        XCTAssertNil(try store.activeTenantKey(.t("acme")))
        XCTAssertEqual(try store.secrets(.t("acme")), [])
    }

    func testSecretsAreStoredSealedAndRotatedKeysStillOpen() throws {
        let path = dir + "/s.db"
        let store = try Store(path: path, fsyncAccepts: false)
        _ = try store.createTenant(name: .t("acme"), tier: "pro", uidRange: 100...200, now: 1)
        let m = try master()
        let (k1, w1) = try m.newDataKey(tenant: "acme", version: 1)
        try store.addTenantKey(.t("acme"), version: 1, masterKeyID: m.id, wrapped: w1, now: 1)
        let value = Array("hunter2-very-secret".utf8)
        let record = SecretRecord(
            tenant: .t("acme"), name: "DB", version: 1, keyVersion: 1, sealed: try k1.seal(value, purpose: "secret", name: "DB", itemVersion: 1),
            placeholder: newPlaceholder(), createdAt: 1, updatedAt: 1)
        try store.putSecret(record)
        // Rotation: version 2 becomes active; version 1 still opens what it sealed.
        let (_, w2) = try m.newDataKey(tenant: "acme", version: 2)
        try store.addTenantKey(.t("acme"), version: 2, masterKeyID: m.id, wrapped: w2, now: 2)
        XCTAssertEqual(try store.activeTenantKey(.t("acme"))?.version, 2)
        XCTAssertEqual(try store.tenantKey(.t("acme"), version: 1)?.state, "retired")
        let row = try XCTUnwrap(try store.secret(.t("acme"), name: "DB"))
        let old = try XCTUnwrap(try store.tenantKey(.t("acme"), version: row.keyVersion)?.wrapped)
        XCTAssertEqual(try m.unwrap(old, tenant: "acme", version: 1).open(row.sealed, purpose: "secret", name: "DB", itemVersion: 1), value)
        XCTAssertTrue(try store.removeSecret(.t("acme"), name: "DB"))
        XCTAssertFalse(try store.removeSecret(.t("acme"), name: "DB"))
        store.checkpoint()
        let file = try Data(contentsOf: URL(fileURLWithPath: path))
        XCTAssertNil(file.firstRange(of: Data(value)), "the database file never holds the value")
    }

    func testPlaceholdersAreRandomAndUnrelatedToValues() {
        let a = newPlaceholder(), b = newPlaceholder()
        XCTAssertNotEqual(a, b)
        XCTAssertTrue(a.hasPrefix("clawpen-ph-"))
        XCTAssertEqual(a.count, "clawpen-ph-".count + 40)
    }
}
