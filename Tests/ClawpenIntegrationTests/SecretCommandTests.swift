import ClawpenTestSupport
import Foundation
import XCTest

/// `clawpen secret put|list|rm` against the real daemon: values in, never out.
final class SecretCommandTests: XCTestCase {
    var daemon: Daemon!
    override func tearDown() { daemon?.cleanup() }

    func cli(_ args: [String], stdin: String? = nil) throws -> CLIResult { try runCLI(args, socket: daemon.socket, stdin: stdin) }

    func testPutListRemoveAndTheValueIsNowhereTheDaemonWrites() throws {
        daemon = try Daemon().start()
        try daemon.createTenant("acme")
        let value = "ghp_SECRETVALUE_0123456789_not_in_any_file"
        let file = daemon.dir + "/value.txt"
        try (value + "\n").write(toFile: file, atomically: true, encoding: .utf8)
        var r = try cli(["secret", "put", "acme", "GITHUB", "--from-file", file, "--json"])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stdout.contains("\"version\":1"), r.stdout)
        r = try cli(["secret", "put", "acme", "GITHUB", "--from-stdin"], stdin: value + "-v2")
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertEqual(r.stdout, "stored secret GITHUB of tenant acme (version 2)\n")
        r = try cli(["secret", "put", "acme", "OTHER", "--from-stdin"], stdin: "x")
        XCTAssertEqual(r.status, 0, r.stderr)
        r = try cli(["secret", "list", "acme", "--json"])
        let list = try JSONValue.parse(Array(r.stdout.utf8)).arrayValue ?? []
        XCTAssertEqual(list.compactMap { $0["name"]?.stringValue }, ["GITHUB", "OTHER"])
        XCTAssertEqual(list.first?["version"]?.intValue, 2)
        XCTAssertNotNil(list.first?["created_at"]?.doubleValue)
        XCTAssertFalse(r.stdout.contains(value))
        XCTAssertTrue(try cli(["secret", "list", "acme"]).stdout.contains("GITHUB  2"))
        r = try cli(["secret", "rm", "acme", "OTHER"])
        XCTAssertEqual(r.status, 0, r.stderr)
        r = try cli(["secret", "rm", "acme", "OTHER"])
        XCTAssertEqual(r.status, 66, "not_found is EX_NOINPUT, as for a file")
        XCTAssertTrue(r.stderr.contains("not_found") && r.stderr.contains("no secret named 'OTHER'"), r.stderr)
        XCTAssertEqual(try cli(["secret", "list", "nobody"]).status, 64, "unknown tenant")
        XCTAssertEqual(try cli(["secret", "put", "acme", "bad name", "--from-stdin"], stdin: "x").status, 64)
        XCTAssertEqual(try cli(["secret", "put", "acme", "N", "--from-stdin"], stdin: "").status, 64, "an empty value")
        let audit = try cli(["audit", "--tenant", "acme"]).stdout
        XCTAssertTrue(audit.contains("secret.put") && audit.contains("name=GITHUB version=2") && audit.contains("secret.rm"), audit)
        // Grep everything the daemon wrote: the SQLite file and WAL, the master key's dir, the log.
        XCTAssertEqual(filesContain(daemon.stateDir, value), [])
        XCTAssertFalse(daemon.log.contains(value))
        XCTAssertFalse(try cli(["status", "--json"]).stdout.contains(value))
        let mode = try XCTUnwrap(FileManager.default.attributesOfItem(atPath: daemon.stateDir + "/master.key")[.posixPermissions] as? Int)
        XCTAssertEqual(mode & 0o777, 0o600, "generated owner-only")
        // The same state dir with another master key: the daemon does not start (exit 78),
        // saying which key wraps the data keys, instead of failing on every record later.
        daemon.stop()
        let other = daemon.dir + "/other.key"
        FileManager.default.createFile(atPath: other, contents: Data(repeating: 1, count: 32), attributes: [.posixPermissions: 0o600])
        let again = try Daemon(extraArgs: ["--master-key-file", other], dir: daemon.dir)
        r = try runCLI(["serve"] + again.serveArguments.dropFirst(), socket: nil)
        XCTAssertEqual(r.status, 78, r.stderr)
        XCTAssertTrue(r.stderr.contains("wrong master key") && r.stderr.contains("wrapped by master key"), r.stderr)
    }

    func testAWorldReadableMasterKeyFileIsRefusedAtStart() throws {
        let dir = try Daemon.tempDir()
        let key = dir + "/m.key"
        FileManager.default.createFile(atPath: key, contents: Data(repeating: 2, count: 32), attributes: [.posixPermissions: 0o644])
        daemon = try Daemon(extraArgs: ["--master-key-file", key], dir: dir)
        let r = try runCLI(["serve"] + daemon.serveArguments.dropFirst(), socket: nil)
        XCTAssertEqual(r.status, 78, r.stderr)
        XCTAssertTrue(r.stderr.contains("mode 644") && r.stderr.contains("chmod 600"), r.stderr)
    }
}
