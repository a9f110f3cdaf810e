import ClawpenTestSupport
import Foundation
import XCTest

/// Uids: a tenant's uid is unused on the host, and the range is registered (in files of the
/// test's own: `serve --subuid-file/--subgid-file`, never the host's /etc/subuid) so that a
/// second daemon cannot hand out the same uids.
///
/// Safety: only temporary files and daemons of this test; the "host process" holding a uid is
/// a `sleep` the test starts with setpriv and kills.
final class UIDRangeTests: XCTestCase {
    var dirs: [Daemon] = []
    override func tearDown() { dirs.forEach { $0.cleanup() } }

    func daemon(_ extra: [String] = [], dir: String? = nil) throws -> Daemon {
        let d = try Daemon(extraArgs: extra, dir: dir)
        dirs.append(d)
        return d
    }

    func testRangeIsRegisteredAndAnOverlappingEntryRefusesTheStart() throws {
        let d = try daemon().start()
        let subuid = try String(contentsOfFile: d.dir + "/subuid", encoding: .utf8)
        let subgid = try String(contentsOfFile: d.dir + "/subgid", encoding: .utf8)
        XCTAssertEqual(subuid, "clawpen:200000:65536\n")
        XCTAssertEqual(subgid, "clawpen:200000:65536\n")
        // A restart of the same daemon (same state directory) finds its own entry.
        d.stop()
        try d.start()
        XCTAssertEqual(try String(contentsOfFile: d.dir + "/subuid", encoding: .utf8), "clawpen:200000:65536\n", "registered once")
        d.stop()

        // Someone else's subordinate range overlapping ours: refused, with the fix.
        let other = try daemon()
        try "# podman users\nalice:100000:65536\nbob:231072:65536\n".write(toFile: other.dir + "/subuid", atomically: true, encoding: .utf8)
        let r = try runCLI(other.serveArguments, socket: nil)
        XCTAssertEqual(r.status, 78, r.stderr)
        XCTAssertTrue(r.stderr.contains("overlaps \(other.dir)/subuid line 3 (bob:231072:65536"), r.stderr)
        XCTAssertTrue(r.stderr.contains("uid_min and uid_max"), "says how to fix it: \(r.stderr)")
        XCTAssertEqual(
            try String(contentsOfFile: other.dir + "/subuid", encoding: .utf8), "# podman users\nalice:100000:65536\nbob:231072:65536\n", "nothing appended")
    }

    func testASecondDaemonCannotHandOutTheSameUids() throws {
        let first = try daemon().start()
        try first.createTenant("a")
        // A second daemon on the same host (same registry files, its own state directory).
        let second = try daemon()
        let args = second.serveArguments.map {
            $0 == second.dir + "/subuid" ? first.dir + "/subuid" : $0 == second.dir + "/subgid" ? first.dir + "/subgid" : $0
        }
        let r = try runCLI(args, socket: nil)
        XCTAssertEqual(r.status, 78, r.stderr)
        XCTAssertTrue(r.stderr.contains("another clawpen daemon registered it"), r.stderr)
        // With a range of its own it starts, and registers beside the first.
        let cfg = second.dir + "/serve.toml"
        try "[serve]\nuid_min = 300000\nuid_max = 300999\n".write(toFile: cfg, atomically: true, encoding: .utf8)
        let p = try Daemon.launch(args + ["--config", cfg])
        defer { p.terminate(); p.waitUntilExit() }
        XCTAssertTrue(
            first.eventually(10) { (try? ClawpenConnection(socketPath: second.socket).call(.ping)) != nil }, "the second daemon with its own range serves")
        XCTAssertEqual(try String(contentsOfFile: first.dir + "/subuid", encoding: .utf8), "clawpen:200000:65536\nclawpen:300000:1000\n")
    }

    /// A daemon whose [serve] table sets the uid range.
    func daemon(uidMin: Int, uidMax: Int) throws -> Daemon {
        let dir = try Daemon.tempDir()
        try "[serve]\nuid_min = \(uidMin)\nuid_max = \(uidMax)\n".write(toFile: dir + "/serve.toml", atomically: true, encoding: .utf8)
        return try daemon(["--config", dir + "/serve.toml"], dir: dir)
    }

    func testAUidHeldOnTheHostIsSkipped() throws {
        // A host process runs as 310000, the first uid of the range.
        let holder = Process()
        holder.executableURL = URL(fileURLWithPath: "/usr/bin/setpriv")
        holder.arguments = ["--reuid", "310000", "--regid", "310000", "--clear-groups", "sleep", "60"]
        try holder.run()
        defer { holder.terminate(); holder.waitUntilExit() }
        usleep(200_000)
        let d = try daemon(uidMin: 310_000, uidMax: 310_010).start()
        XCTAssertEqual(try d.connect().tenant(.tenantCreate(name: .t("a"), tier: "free")).uid, 310_001, "310000 is held by a running host process")
        holder.terminate(); holder.waitUntilExit()
        XCTAssertEqual(try d.connect().tenant(.tenantCreate(name: .t("b"), tier: "free")).uid, 310_000, "free again once nothing holds it")
        // A uid the user database knows: 65534 is nobody (and nogroup) on Debian.
        let nobody = 65_534
        let n = try daemon(uidMin: nobody, uidMax: nobody + 5).start()
        XCTAssertEqual(try n.connect().tenant(.tenantCreate(name: .t("n"), tier: "free")).uid, nobody + 1, "uid \(nobody) is 'nobody' in the user database")
    }
}
