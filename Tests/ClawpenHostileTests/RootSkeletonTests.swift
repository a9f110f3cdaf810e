import ClawpenTestSupport
import Foundation
import XCTest

/// Class: a root the tenant cannot rewrite. `/` is a root-owned, read-only tmpfs skeleton;
/// the tenant's writable, persistent data is /home alone. A job that tries to re-point a loader
/// path or a mount point must fail, and a later worker must not see it.
final class RootSkeletonTests: XCTestCase {
    var daemon: Daemon!

    override func setUpWithError() throws {
        try XCTSkipUnless(geteuid() == 0, "the sandbox needs root")
        daemon = try Daemon().start()
        try daemon.createTenant("a")
        try daemon.assertSandboxed("a")
    }
    override func tearDown() { daemon?.cleanup() }

    func testReplacingLoaderPathsOrMountPointsDoesNotTakeForLaterJobs() throws {
        // Each attempt is harmless if it works (it changes only a's own view); every one must fail.
        let attempts = [
            "ln -sfn /home/evil /lib64", "rm -f /lib64", "mv /usr /usr.old", "rmdir /proc", "mkdir /new",
            "mv /home /home.real", "ln -s /etc /home2", "touch /etc/ld.so.preload", "sh -c 'echo x >> /etc/passwd'",
            "rm /bin", "chmod 777 /", "mkdir /home/x && mv /home/x /x",
        ]
        let script =
            "mkdir -p /home/evil; "
            + attempts.map { "if \($0) 2>/dev/null; then echo 'TOOK: \($0.replacingOccurrences(of: "'", with: ""))'; fi" }.joined(separator: "; ")
        let job = try daemon.run("a", ["sh", "-c", script])
        XCTAssertEqual(job.state, .succeeded, job.stderr)
        XCTAssertFalse(job.stdout.contains("TOOK"), job.stdout)

        // A new worker (and its jobs) still has the host's layout.
        try daemon.restartWorker("a")
        let check = try daemon.run(
            "a",
            ["sh", "-c", "readlink /lib64 || echo no-link; stat -c '%u %a' /; ls -A /; test -e /etc/ld.so.preload && echo PRELOAD; /usr/bin/true && echo ran"])
        XCTAssertEqual(check.state, .succeeded, check.stderr)
        let lines = check.stdout.split(separator: "\n").map(String.init)
        let hostLib64 = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/lib64")) ?? "no-link"
        XCTAssertEqual(lines.first, hostLib64, "/lib64 is the host's link")
        XCTAssertEqual(lines.dropFirst().first, "0 755", "/ is root's, 0755")
        XCTAssertFalse(check.stdout.contains("PRELOAD"))
        XCTAssertTrue(check.stdout.contains("ran"))
        XCTAssertFalse(lines.contains("new") || lines.contains("x"), check.stdout)
        let mounts = try daemon.run("a", ["cat", "/proc/self/mountinfo"]).stdout
        let rootLine = try XCTUnwrap(mounts.split(separator: "\n").first { $0.split(separator: " ").dropFirst(4).first == "/" })
        XCTAssertTrue(rootLine.contains(" / / ro,") && rootLine.contains(" - tmpfs "), "a read-only tmpfs root: \(rootLine)")
    }

    /// A workspace made by the old layout (the tenant's own `/`, with mount points, links and
    /// the tenant's files at its top, and a planted link) keeps working: it is migrated by fd,
    /// the tenant's files land in /home/old-root, and nothing is followed.
    func testAnOldLayoutWorkspaceIsMigratedWithoutFollowingLinks() throws {
        let uid = try daemon.uid(of: "a")
        try daemon.restartWorker("a")
        let ws = daemon.workspaceRoot + "/a"
        let fm = FileManager.default
        for dir in ["usr", "proc", "dev", "tmp", "etc"] { try? fm.createDirectory(atPath: ws + "/" + dir, withIntermediateDirectories: true) }
        try fm.createSymbolicLink(atPath: ws + "/bin", withDestinationPath: "usr/bin")
        try fm.createSymbolicLink(atPath: ws + "/lib64", withDestinationPath: "/etc") // planted
        try "notes\n".write(toFile: ws + "/notes.txt", atomically: false, encoding: .utf8)
        try fm.createDirectory(atPath: ws + "/project", withIntermediateDirectories: true)
        try "code\n".write(toFile: ws + "/project/main.py", atomically: false, encoding: .utf8)
        try fm.createSymbolicLink(atPath: ws + "/shadow-link", withDestinationPath: "/etc/shadow") // planted
        for path in [ws, ws + "/notes.txt", ws + "/project", ws + "/project/main.py"] { XCTAssertEqual(chown(path, uid, uid), 0) }
        XCTAssertEqual(lchown(ws + "/shadow-link", uid, uid), 0)
        XCTAssertEqual(chmod(ws, 0o700), 0)
        var etcBefore = stat()
        XCTAssertEqual(stat("/etc", &etcBefore), 0)

        let job = try daemon.run(
            "a",
            [
                "sh", "-c",
                "cat /home/old-root/notes.txt /home/old-root/project/main.py; ls -A /home/old-root | sort | tr '\\n' ' '; echo; readlink /lib64 || echo no-link; stat -c '%u' /",
            ])
        XCTAssertEqual(job.state, .succeeded, job.stderr + (job.error?.message ?? ""))
        let lines = job.stdout.split(separator: "\n").map(String.init)
        XCTAssertEqual(Array(lines.prefix(2)), ["notes", "code"], job.stdout)
        XCTAssertEqual(lines.dropFirst(2).first, "notes.txt project shadow-link ", "the tenant's entries, links moved as links")
        XCTAssertEqual(lines.dropFirst(3).first, (try? fm.destinationOfSymbolicLink(atPath: "/lib64")) ?? "no-link")
        XCTAssertEqual(lines.dropFirst(4).first, "0")

        var st = stat()
        XCTAssertEqual(stat(ws, &st), 0)
        XCTAssertEqual(st.st_uid, 0, "the workspace directory is root's now")
        XCTAssertEqual(st.st_mode & 0o7777, 0o700)
        XCTAssertEqual(try fm.destinationOfSymbolicLink(atPath: ws + "/home/old-root/shadow-link"), "/etc/shadow", "moved, not followed")
        XCTAssertNil(try? fm.destinationOfSymbolicLink(atPath: ws + "/lib64"), "the planted link is gone")
        var etcAfter = stat()
        XCTAssertEqual(stat("/etc", &etcAfter), 0)
        XCTAssertEqual(etcAfter.st_uid, 0)
        XCTAssertEqual(etcAfter.st_mode, etcBefore.st_mode, "the host's /etc is untouched")
        var shadow = stat()
        XCTAssertEqual(stat("/etc/shadow", &shadow), 0)
        XCTAssertEqual(shadow.st_uid, 0, "/etc/shadow still root's")
        XCTAssertEqual(try daemon.run("a", ["true"]).state, .succeeded, "the migrated workspace keeps working")
    }
}
