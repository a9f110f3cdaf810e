import ClawpenProtocol
import ClawpenTestSupport
import Foundation
import XCTest

/// Caller permissions with real Unix users: SO_PEERCRED on the socket, access.toml's tenant
/// grants (by user and by group) and the operator role.
final class CallerPermissionTests: XCTestCase {
    var daemon: Daemon!
    static let user = "clawpen-t-u1" // granted tenant alpha by name
    static let member = "clawpen-t-u2" // granted tenant alpha through its group
    static let group = "clawpen-t-grp"
    static let stranger = "clawpen-t-u3" // granted nothing

    override func setUpWithError() throws {
        guard geteuid() == 0 else { throw XCTSkip("needs root to create test users") }
        try Self.ensureGroup(Self.group)
        try Self.ensureUser(Self.user, groups: [])
        try Self.ensureUser(Self.member, groups: [Self.group])
        try Self.ensureUser(Self.stranger, groups: [])
        let dir = try Daemon.tempDir()
        chmod(dir, 0o755)
        let pol = try Daemon.policiesWithOverrides(in: dir, [:])
        try """
        [operators]
        users = ["root"]
        groups = []

        [tenants.alpha]
        users = ["\(Self.user)"]
        groups = ["\(Self.group)"]
        """.write(toFile: pol + "/access.toml", atomically: true, encoding: .utf8)
        daemon = try Daemon(dir: dir, policies: pol).start()
        chmod(daemon.socket, 0o666) // the test users reach the socket; access.toml decides what they may do
        try daemon.createTenant("alpha")
        try daemon.createTenant("beta")
    }

    override func tearDown() { daemon?.cleanup() }

    static func run(_ argv: [String], socket: String? = nil) throws -> (Int32, String) {
        let p = Process()
        if let socket { p.environment = ["CLAWPEN_SOCKET": socket, "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"] }
        p.executableURL = URL(fileURLWithPath: argv[0])
        p.arguments = Array(argv.dropFirst())
        let out = Pipe()
        p.standardOutput = out
        p.standardError = out
        try p.run()
        let data = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return (p.terminationStatus, String(decoding: data, as: UTF8.self))
    }

    static func ensureGroup(_ name: String) throws {
        if getgrnam(name) == nil { _ = try run(["/usr/sbin/groupadd", "--system", name]) }
        XCTAssertNotNil(getgrnam(name), "groupadd \(name)")
    }

    static func ensureUser(_ name: String, groups: [String]) throws {
        if getpwnam(name) == nil {
            var args = ["/usr/sbin/useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin"]
            if !groups.isEmpty { args += ["-G", groups.joined(separator: ",")] }
            _ = try run(args + [name])
        }
        XCTAssertNotNil(getpwnam(name), "useradd \(name)")
    }

    /// Runs the CLI as `user` (its uid, gid and supplementary groups), as a service would.
    func cliAs(_ user: String, _ args: [String]) throws -> (Int32, String) {
        try Self.run(
            ["/usr/bin/setpriv", "--reuid", user, "--regid", user, "--init-groups", "--", Daemon.clawpen] + args,
            socket: daemon.socket)
    }

    func testAGrantedUserSubmitsForItsTenantOnly() throws {
        let ok = try cliAs(Self.user, ["submit", "--tenant", "alpha", "--", "echo", "hi"])
        XCTAssertEqual(ok.0, 0, ok.1)
        XCTAssertEqual(ok.1, "hi\n")
        let other = try cliAs(Self.user, ["submit", "--tenant", "beta", "--", "echo", "hi"])
        XCTAssertEqual(other.0, 77, "permission_denied exits 77: \(other.1)")
        XCTAssertTrue(other.1.contains("permission_denied"), other.1)
        XCTAssertTrue(other.1.contains("beta"), other.1)
    }

    func testAGroupGrantCounts() throws {
        let ok = try cliAs(Self.member, ["submit", "--tenant", "alpha", "--", "true"])
        XCTAssertEqual(ok.0, 0, ok.1)
    }

    func testAStrangerMayDoNothingButAskWhoIsThere() throws {
        let s = try cliAs(Self.stranger, ["submit", "--tenant", "alpha", "--", "true"])
        XCTAssertEqual(s.0, 77, s.1)
        let st = try cliAs(Self.stranger, ["status"])
        XCTAssertEqual(st.0, 77, st.1)
        // Its refusals are in the audit log with its uid and the rule.
        let uid = Int(getpwnam(Self.stranger)!.pointee.pw_uid)
        let audit = try runCLI(["audit", "--json"], socket: daemon.socket)
        let events = try JSONValue.parse(Array(audit.stdout.utf8)).arrayValue ?? []
        let denied = events.filter { $0["action"]?.stringValue == "permission.denied" && $0["caller_uid"]?.intValue == Int64(uid) }
        XCTAssertGreaterThanOrEqual(denied.count, 2, audit.stdout)
        XCTAssertTrue(denied.allSatisfy { ($0["rule"]?.stringValue ?? "").isEmpty == false })
    }

    func testAdminCommandsNeedTheOperatorRole() throws {
        for args in [
            ["status"], ["tenant", "list"], ["tenant", "create", "gamma"], ["policy", "reload"],
            ["audit"], ["tenant", "set-quota", "alpha", "--max-runs", "9"],
            ["secret", "list", "alpha"], ["secret", "rm", "alpha", "KEY"],
        ] {
            let r = try cliAs(Self.user, args)
            XCTAssertEqual(r.0, 77, "\(args) as a non-operator: \(r.1)")
            XCTAssertTrue(r.1.contains("permission_denied"), r.1)
        }
        XCTAssertEqual(try runCLI(["status"], socket: daemon.socket).status, 0, "root is an operator")
    }

    func testJobsOfATenantAreReadableOnlyByItsCallers() throws {
        let job = try daemon.detach("beta", ["true"])
        let r = try cliAs(Self.user, ["job", "get", job.id])
        XCTAssertEqual(r.0, 77, r.1)
        let a = try daemon.detach("alpha", ["true"])
        let mine = try cliAs(Self.user, ["job", "wait", a.id])
        XCTAssertEqual(mine.0, 0, mine.1)
    }
}
