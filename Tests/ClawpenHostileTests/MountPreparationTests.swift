import ClawpenProtocol
import ClawpenTestSupport
import Foundation
import XCTest

/// The supervisor builds a new worker's mounts from inside the worker's mount
/// namespace (Mounts.prepareFromSupervisor), as root, in a workspace the tenant has written to
/// before. It must not follow what the tenant planted there, and none of its threads may stay
/// in a tenant's namespace afterwards.
final class MountPreparationTests: XCTestCase {
    var daemon: Daemon!
    override func setUpWithError() throws {
        try XCTSkipUnless(geteuid() == 0, "the sandbox (and the supervisor's part of it) needs root")
        daemon = try Daemon().start()
    }
    override func tearDown() { daemon?.cleanup() }

    func testSymlinkPlantedAtTheHomeDirectoryIsNotFollowed() throws {
        let host = daemon.dir + "/host-dir"
        try FileManager.default.createDirectory(atPath: host, withIntermediateDirectories: true)
        try daemon.createTenant("a")
        try daemon.createTenant("b")
        // The one thing the supervisor opens in a workspace is its home, to bind it at /home:
        // swapped for a link to a host directory (as a tenant owning its old-layout workspace
        // could have left it), it would be the host directory that the tenant gets to write.
        let home = daemon.workspaceRoot + "/a/home"
        XCTAssertEqual(rmdir(home), 0)
        try FileManager.default.createSymbolicLink(atPath: home, withDestinationPath: host)

        let job = try daemon.run("a", ["true"])
        XCTAssertEqual(job.state, .failed)
        XCTAssertEqual(job.error?.code, .workerCrashed)
        XCTAssertTrue(job.error?.message.contains("open /home") ?? false, "\(String(describing: job.error))")
        XCTAssertTrue(job.error?.message.contains("refusing to follow") ?? false, "\(String(describing: job.error))")
        let mounts = try String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8)
        XCTAssertFalse(mounts.contains(host), "nothing was mounted on the link's target")
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: host), [], "nothing was created through the link")
        var st = stat()
        XCTAssertEqual(stat(host, &st), 0)
        XCTAssertEqual(st.st_uid, 0, "the link's target was not chowned")
        XCTAssertTrue(try daemon.tenantStatus("a")["last_error"]?.stringValue?.contains("/home") ?? false)

        // The daemon and the other tenant carry on; a cleaned workspace works again (its home
        // is made afresh, the tenant's) once an operator lifts the quarantine its failed starts
        // put the tenant in.
        XCTAssertEqual(try daemon.run("b", ["true"]).state, .succeeded)
        XCTAssertEqual(unlink(home), 0)
        XCTAssertEqual(try daemon.tenantStatus("a")["state"]?.stringValue, "quarantined")
        _ = try daemon.connect().call(.tenantResume(name: .t("a")))
        XCTAssertEqual(try daemon.run("a", ["true"]).state, .succeeded)
    }

    func testNoSupervisorThreadStaysInATenantsMountNamespace() throws {
        let pid = daemon.pid
        let ownNamespace = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/ns/mnt")
        let ownCwd = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/cwd")
        for name in ["a", "b", "c"] {
            try daemon.createTenant(name)
            XCTAssertEqual(try daemon.run(name, ["true"]).state, .succeeded)
        }
        let workerNamespace = try FileManager.default.destinationOfSymbolicLink(
            atPath: "/proc/\(try XCTUnwrap(daemon.tenantStatus("a")["worker_pid"]?.intValue))/ns/mnt")
        XCTAssertNotEqual(workerNamespace, ownNamespace, "the worker has a mount namespace of its own")
        let mounts = try XCTUnwrap(daemon.status()["supervisor"]?["worker_mounts"]?.stringValue)
        XCTAssertFalse(mounts.hasPrefix("fallback"), "as root, the supervisor builds the mounts: \(mounts)")
        let tasks = try FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task")
        XCTAssertGreaterThan(tasks.count, 1)
        for tid in tasks {
            let ns = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/task/\(tid)/ns/mnt")
            XCTAssertEqual(ns, ownNamespace, "thread \(tid) is back in the supervisor's mount namespace")
            let cwd = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/task/\(tid)/cwd")
            XCTAssertEqual(cwd, ownCwd, "thread \(tid) is back in the supervisor's working directory")
        }
    }

    /// Without CAP_SYS_CHROOT (which setns into a mount namespace needs), the supervisor cannot
    /// join a worker's namespace: each worker then builds all its mounts, and status says so.
    func testWithoutCapSysChrootWorkersBuildTheirOwnMountsAndStatusSaysSo() throws {
        try XCTSkipUnless(FileManager.default.isExecutableFile(atPath: "/usr/bin/setpriv"), "needs setpriv (util-linux)")
        daemon.cleanup()
        daemon = try Daemon()
        daemon.launcher = ["/usr/bin/setpriv", "--bounding-set", "-sys_chroot"]
        try daemon.start()
        try daemon.createTenant("a")
        let job = try daemon.run("a", ["sh", "-c", "grep NoNewPrivs /proc/self/status; cat /etc/hostname; ls /dev/null"])
        XCTAssertEqual(job.state, .succeeded, job.stderr)
        XCTAssertEqual(job.stdout, "NoNewPrivs:\t1\na\n/dev/null\n")
        let mounts = try XCTUnwrap(daemon.status()["supervisor"]?["worker_mounts"]?.stringValue)
        XCTAssertTrue(mounts.hasPrefix("fallback: ") && mounts.contains("CAP_SYS_CHROOT"), mounts)
        let table = try runCLI(["status"], socket: daemon.socket)
        XCTAssertTrue(table.stdout.contains("worker mounts: FALLBACK"), table.stdout)
    }
}
