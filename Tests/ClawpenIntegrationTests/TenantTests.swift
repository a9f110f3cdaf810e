import ClawpenTestSupport
import Foundation
import XCTest

final class TenantTests: XCTestCase {
    var daemon: Daemon!

    override func setUpWithError() throws { daemon = try Daemon().start() }
    override func tearDown() { daemon?.cleanup() }

    func testCreateListShowMakesWorkspaceAndAllocatesUids() throws {
        let c = try daemon.connect()
        let a = try c.tenant(.tenantCreate(name: .t("acme"), tier: "free"))
        let b = try c.tenant(.tenantCreate(name: .t("beta"), tier: "pro"))
        XCTAssertEqual(a.tier, "free")
        XCTAssertEqual(b.tier, "pro")
        // The lowest free uids of the range: free of other tenants and of the host (on a shared
        // machine other daemons' workers may hold the first ones: those are skipped).
        XCTAssertTrue((200_000...265_535).contains(a.uid), "\(a.uid)")
        XCTAssertGreaterThan(b.uid, a.uid)
        XCTAssertEqual(a.workspace, daemon.workspaceRoot + "/acme")
        var st = stat()
        XCTAssertEqual(lstat(daemon.workspaceRoot + "/acme/home", &st), 0, "workspace home/ exists")
        XCTAssertEqual(st.st_mode & 0o777, 0o700)
        XCTAssertEqual(lstat(daemon.workspaceRoot + "/acme", &st), 0)
        XCTAssertEqual(st.st_mode & 0o777, 0o700)
        XCTAssertEqual(try c.tenants().map(\.name), ["acme", "beta"])
        XCTAssertEqual(try c.tenant(.tenantShow(name: .t("beta"))), b)
    }

    func testDuplicateTenantIsRefused() throws {
        try daemon.createTenant("acme")
        XCTAssertThrowsError(try daemon.createTenant("acme")) { e in
            XCTAssertEqual((e as? ClientError)?.code, .invalidRequest)
            XCTAssertTrue((e as? ClientError)?.message.contains("already exists") ?? false)
        }
    }

    func testUnknownTierIsRefused() throws {
        XCTAssertThrowsError(try daemon.createTenant("acme", tier: "gold")) { e in
            XCTAssertEqual((e as? ClientError)?.code, .invalidRequest)
        }
    }

    func testInvalidTenantNamesAreRefusedEverywhere() throws {
        let bad = ["../x", "A", "", String(repeating: "a", count: 64), "a/b", "-a", "a b", "a\u{0}b", "acme\n", "é"]
        let c = try daemon.connect()
        // The client library cannot even build such a request (TenantName); a service in another
        // language can, so they go as raw frames.
        let raw = try RawSocket(daemon.socket)
        for name in bad {
            XCTAssertThrowsError(try TenantName(validating: name), "the client refuses \(name.debugDescription) too")
            let requests: [(String, [(String, JSONValue)])] = [
                ("tenant.create", [("name", .string(name))]),
                ("submit", [("tenant", .string(name)), ("argv", .array([.string("true")]))]),
                ("status", [("tenant", .string(name))]),
                ("tenant.suspend", [("name", .string(name))]),
                ("audit", [("tenant", .string(name))]),
            ]
            for (type, fields) in requests {
                raw.sendFrame(JSONValue.object([("type", .string(type)), ("id", .int(1))] + fields).serialized())
                let reply = raw.readFrame()
                XCTAssertEqual(reply?["error"]?["code"]?.stringValue, "invalid_tenant", "\(type) \(name.debugDescription): \(String(describing: reply))")
            }
        }
        // Nothing was created by any of them.
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: daemon.workspaceRoot), [])
        XCTAssertEqual(try c.tenants().count, 0)
        // 63 characters is the longest valid name.
        try daemon.createTenant(String(repeating: "a", count: 63))
    }

    func testCLIInvalidAndUnknownTenantExit64() throws {
        var r = try runCLI(["submit", "--tenant", "../x", "--", "true"], socket: daemon.socket)
        XCTAssertEqual(r.status, 64)
        XCTAssertTrue(r.stderr.hasPrefix("clawpen: invalid_tenant: "), r.stderr)
        r = try runCLI(["submit", "--tenant", "nobody", "--", "true"], socket: daemon.socket)
        XCTAssertEqual(r.status, 64)
        XCTAssertTrue(r.stderr.hasPrefix("clawpen: unknown_tenant: "), r.stderr)
        r = try runCLI(["tenant", "create", "Upper"], socket: daemon.socket)
        XCTAssertEqual(r.status, 64)
    }

    func testCLITenantCommands() throws {
        var r = try runCLI(["tenant", "create", "acme", "--tier", "pro"], socket: daemon.socket)
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stdout.contains("created tenant acme"))
        r = try runCLI(["tenant", "list", "--json"], socket: daemon.socket)
        XCTAssertEqual(r.status, 0)
        let list = try JSONValue.parse(Array(r.stdout.utf8))
        XCTAssertEqual(list.arrayValue?.first?["tenant"]?.stringValue, "acme")
        XCTAssertEqual(list.arrayValue?.first?["tier"]?.stringValue, "pro")
        r = try runCLI(["tenant", "show", "acme"], socket: daemon.socket)
        XCTAssertTrue(r.stdout.contains("uid:"), r.stdout)
    }

    func testDaemonUnreachableExit69() throws {
        let r = try runCLI(["status"], socket: daemon.dir + "/nothing-here.sock")
        XCTAssertEqual(r.status, 69)
        XCTAssertTrue(r.stderr.hasPrefix("clawpen: unavailable: "), r.stderr)
    }
}
