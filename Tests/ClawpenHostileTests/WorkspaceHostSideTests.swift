import ClawpenTestSupport
import Foundation
import XCTest

/// Class: the host side of a workspace. The workspace root is root's and closed to other host
/// users; setuid, setgid and device files in a tenant's data are inert inside (nosuid, nodev on
/// every writable mount) and unreachable outside.
final class WorkspaceHostSideTests: XCTestCase {
    var daemon: Daemon!

    override func setUpWithError() throws {
        try XCTSkipUnless(geteuid() == 0, "the sandbox needs root")
        try XCTSkipUnless(FileManager.default.isExecutableFile(atPath: "/usr/bin/setpriv"), "needs setpriv (util-linux)")
        daemon = try Daemon().start()
        try daemon.createTenant("a")
        try daemon.assertSandboxed("a")
    }
    override func tearDown() { daemon?.cleanup() }

    func testAHostUserCannotTraverseIntoTheWorkspaceRoot() throws {
        let secret = "SECRET-\(UInt64.random(in: 1...UInt64.max))"
        XCTAssertEqual(try daemon.run("a", ["sh", "-c", "echo \(secret) > /home/secret; chmod 644 /home/secret"]).state, .succeeded)
        var st = stat()
        XCTAssertEqual(stat(daemon.workspaceRoot, &st), 0)
        XCTAssertEqual(st.st_uid, 0)
        XCTAssertEqual(st.st_mode & 0o7777, 0o700, "the workspace root is closed")
        XCTAssertEqual(stat(daemon.workspaceRoot + "/a", &st), 0)
        XCTAssertEqual(st.st_uid, 0, "the tenant's directory is root's, only its home is the tenant's")
        // Even a world-readable file in a tenant's home is out of reach: the walk stops at the root.
        for argv in [["ls", daemon.workspaceRoot], ["cat", daemon.workspaceRoot + "/a/home/secret"], ["ls", daemon.workspaceRoot + "/a/home"]] {
            let r = try runAsNobody(argv)
            XCTAssertNotEqual(r.status, 0, "\(argv) as nobody: \(r.output)")
            XCTAssertFalse(r.output.contains(secret), r.output)
            XCTAssertTrue(r.output.contains("Permission denied"), r.output)
        }
        // A workspace root left open (an older install's 0755) is closed at the next start, and
        // the log says what it was.
        XCTAssertEqual(daemon.stop(), 0)
        XCTAssertEqual(chmod(daemon.workspaceRoot, 0o755), 0)
        let next = try Daemon(dir: daemon.dir).start()
        defer { _ = next.stop() }
        XCTAssertEqual(stat(next.workspaceRoot, &st), 0)
        XCTAssertEqual(st.st_mode & 0o7777, 0o700)
        XCTAssertTrue(next.log.contains("workspace root made root's and closed") && next.log.contains("mode 0755"), next.log)
    }

    func testSetuidAndDeviceFilesInTheTenantsDataAreInert() throws {
        let home = daemon.workspaceRoot + "/a/home"
        // What the tenant could never make itself, planted by the host as the worst case: a
        // setuid-root copy of `id` and a device node. Harmless if they work: `id` only prints,
        // and the node is /dev/null's.
        let suid = home + "/suid-id"
        try FileManager.default.copyItem(atPath: "/usr/bin/id", toPath: suid)
        XCTAssertEqual(chown(suid, 0, 0), 0)
        XCTAssertEqual(chmod(suid, 0o6755), 0)
        XCTAssertEqual(mknod(home + "/null-dev", S_IFCHR | 0o666, dev_t((1 << 8) | 3)), 0) // makedev(1, 3): /dev/null
        XCTAssertEqual(chmod(home + "/null-dev", 0o666), 0)
        let job = try daemon.run(
            "a",
            [
                "sh", "-c",
                """
                /home/suid-id -u; /home/suid-id -g
                cp /usr/bin/id /tmp/mine && chmod 6755 /tmp/mine && /tmp/mine -u
                echo x > /home/null-dev && echo DEVICE-OPENED
                cat /proc/self/mountinfo
                """,
            ])
        let lines = job.stdout.split(separator: "\n").map(String.init)
        let uid = try daemon.uid(of: "a")
        XCTAssertEqual(Array(lines.prefix(3)), ["\(uid)", "\(uid)", "\(uid)"], "no privilege from setuid files: \(job.stdout) \(job.stderr)")
        XCTAssertFalse(job.stdout.contains("DEVICE-OPENED"), "a device node in /home works: \(job.stdout)")
        // Every writable mount is nosuid and nodev. devpts is the exception that proves it: its
        // nodes are the terminals, made by the kernel (nobody can mknod there), so it must allow
        // devices, and it is nosuid and noexec.
        for line in lines where line.contains(" - ") {
            let fields = line.split(separator: " ").map(String.init)
            guard fields.count > 5 else { continue }
            let options = fields[5].split(separator: ",").map(String.init)
            if fields[4] == "/dev/pts" {
                XCTAssertTrue(line.contains(" - devpts ") && options.contains("nosuid") && options.contains("noexec"), "/dev/pts: \(line)")
                continue
            }
            if options.contains("rw") && fields[4] != "/proc" {
                XCTAssertTrue(options.contains("nosuid") && options.contains("nodev"), "writable mount \(fields[4]) without nosuid, nodev: \(line)")
            }
        }
        XCTAssertTrue(lines.contains { $0.split(separator: " ").dropFirst(4).first == "/home" }, "/home is a mount of its own")
        // And outside, nobody reaches them.
        let r = try runAsNobody([suid, "-u"])
        XCTAssertNotEqual(r.status, 0, r.output)
        XCTAssertTrue(r.output.contains("Permission denied"), r.output)
    }
}
