import ClawpenProtocol
import ClawpenTestSupport
import Foundation
import XCTest

/// The crash-loop quarantine and operator suspension against the real daemon, as an operator and
/// a service would see them: status, the CLI's exit codes and messages, the audit log.
final class QuarantineTests: XCTestCase {
    var daemon: Daemon?
    override func tearDown() { daemon?.cleanup() }

    /// A daemon whose worker is a script that exits at once, and a tenant whose crash-loop rule
    /// trips after three failures.
    func crashLoopingDaemon() throws -> Daemon {
        let dir = try Daemon.tempDir()
        let worker = dir + "/dying-worker"
        try "#!/bin/sh\nexit 3\n".write(toFile: worker, atomically: true, encoding: .utf8)
        chmod(worker, 0o755)
        let pol = try Daemon.policiesWithOverrides(in: dir, ["a": "crash_loop_max = 3\ncrash_loop_window_s = 60\ncrash_backoff_max_s = 30\n"])
        let d = try Daemon(extraArgs: ["--worker-path", worker], dir: dir, policies: pol)
        daemon = d
        try d.start()
        try d.createTenant("a")
        try d.createTenant("b")
        return d
    }

    func testAWorkerThatKeepsDyingQuarantinesItsTenantUntilAnOperatorResumesIt() throws {
        let d = try crashLoopingDaemon()
        let job = try d.run("a", ["true"])
        XCTAssertEqual(job.state, .failed)
        XCTAssertEqual(job.error?.code, .workerCrashed)
        XCTAssertTrue(job.error?.message.contains("quarantined") ?? false, job.error?.message ?? "")
        XCTAssertTrue(job.error?.message.contains("exited with status 3") ?? false, job.error?.message ?? "")

        let t = try d.tenantStatus("a")
        XCTAssertEqual(t["state"]?.stringValue, "quarantined", "\(t)")
        let q = try XCTUnwrap(t["quarantine"], "\(t)")
        XCTAssertTrue(q["reason"]?.stringValue?.contains("3 times within 60 s") ?? false, "\(q)")
        XCTAssertGreaterThan(q["retry_in_s"]?.doubleValue ?? 0, 0, "it says when it retries: \(q)")
        XCTAssertEqual(q["lift"]?.stringValue, "clawpen tenant resume a")
        XCTAssertEqual(t["last_error_detail"]?["kind"]?.stringValue, "exited")

        // A submit is refused with unavailable (exit 69), naming the rule and the way out.
        let refused = try runCLI(["submit", "--tenant", "a", "--", "true"], socket: d.socket)
        XCTAssertEqual(refused.status, 69, refused.stderr)
        XCTAssertTrue(refused.stderr.contains("quarantined") && refused.stderr.contains("clawpen tenant resume a"), refused.stderr)
        // The neighbour is not affected by the rule (its worker dies too, but it has its own count).
        XCTAssertEqual(try d.tenantStatus("b")["state"]?.stringValue, "idle")

        // The table shows it too.
        let table = try runCLI(["status"], socket: d.socket)
        XCTAssertTrue(table.stdout.contains("quarantined"), table.stdout)

        let resumed = try runCLI(["tenant", "resume", "a"], socket: d.socket)
        XCTAssertEqual(resumed.status, 0, resumed.stderr)
        XCTAssertTrue(resumed.stdout.contains("lifted quarantine"), resumed.stdout)
        XCTAssertEqual(try d.tenantStatus("a")["state"]?.stringValue, "idle")
        XCTAssertTrue(try d.tenantStatus("a")["quarantine"]?.isNull ?? false)

        let audit = try runCLI(["audit", "--tenant", "a", "--json"], socket: d.socket)
        XCTAssertTrue(audit.stdout.contains("tenant.quarantined") && audit.stdout.contains("tenant.resume"), audit.stdout)
    }
}

final class SuspendTests: XCTestCase {
    var daemon: Daemon!
    override func setUpWithError() throws {
        let dir = try Daemon.tempDir()
        let pol = try Daemon.policiesWithOverrides(in: dir, ["a": "max_concurrent_runs = 1\n"])
        daemon = try Daemon(dir: dir, policies: pol).start()
        try daemon.createTenant("a")
        try daemon.createTenant("b")
    }
    override func tearDown() { daemon?.cleanup() }

    func ticks() -> Int {
        ((try? String(contentsOfFile: daemon.workspaceRoot + "/a/home/ticks", encoding: .utf8)) ?? "").split(separator: "\n").count
    }

    func testSuspendFreezesRunningJobsKeepsQueuedOnesAndResumeContinuesThem() throws {
        let d = daemon!
        // 30 ticks of 0.1 s: 3 s of work under a 6 s timeout; the suspension lasts longer than
        // the timeout's slack, so the job only succeeds if frozen time does not count.
        let ticker = try d.detach("a", ["sh", "-c", "for i in $(seq 1 30); do echo $i >> $HOME/ticks; sleep 0.1; done; echo done"], timeout: 6)
        let queued = try d.detach("a", ["echo", "after"])
        XCTAssertTrue(d.eventually { self.ticks() >= 3 }, "the job runs")

        let out = try runCLI(["tenant", "suspend", "a"], socket: d.socket)
        XCTAssertEqual(out.status, 0, out.stderr)
        let t = try d.tenantStatus("a")
        XCTAssertEqual(t["state"]?.stringValue, "suspended", "\(t)")
        XCTAssertEqual(t["suspension"]?["by"]?.stringValue, "uid 0 (root)")
        let method = try XCTUnwrap(t["suspension"]?["frozen_by"]?.stringValue, "\(t)")
        XCTAssertTrue(method == "cgroup.freeze" || method.hasPrefix("SIGSTOP"), method)

        // Frozen: no tick for 4 s; a new submit is refused; the queued job waits.
        usleep(300_000)
        let frozenAt = ticks()
        usleep(4_000_000)
        XCTAssertEqual(ticks(), frozenAt, "a suspended job makes no progress")
        let refused = try runCLI(["submit", "--tenant", "a", "--", "true"], socket: d.socket)
        XCTAssertEqual(refused.status, 69, refused.stderr)
        XCTAssertTrue(refused.stderr.contains("suspended (by uid 0 (root))"), refused.stderr)
        XCTAssertEqual(try d.connect().job(.jobGet(jobID: queued.id)).job.state, .queued)
        // Other tenants are untouched.
        XCTAssertEqual(try d.run("b", ["echo", "b"]).stdout, "b\n")

        let resumed = try runCLI(["tenant", "resume", "a"], socket: d.socket)
        XCTAssertEqual(resumed.status, 0, resumed.stderr)
        let done = try d.connect().job(.jobWait(jobID: ticker.id)).job
        XCTAssertEqual(done.state, .succeeded, "frozen time is not run time against the timeout: \(done.stderr)")
        XCTAssertEqual(done.stdout, "done\n")
        XCTAssertEqual(ticks(), 30)
        XCTAssertEqual(try d.connect().job(.jobWait(jobID: queued.id)).job.stdout, "after\n")

        let audit = try runCLI(["audit", "--tenant", "a", "--json"], socket: d.socket)
        XCTAssertTrue(audit.stdout.contains("tenant.suspend") && audit.stdout.contains("tenant.resume"), audit.stdout)
    }

    func testASuspensionOutlivesARestartAndNeedsAnOperator() throws {
        let d = daemon!
        XCTAssertEqual(try runCLI(["tenant", "suspend", "a"], socket: d.socket).status, 0)
        XCTAssertEqual(d.stop(), 0)
        try d.start()
        XCTAssertEqual(try d.tenantStatus("a")["state"]?.stringValue, "suspended")
        XCTAssertEqual(try runCLI(["submit", "--tenant", "a", "--", "true"], socket: d.socket).status, 69)
        XCTAssertEqual(try runCLI(["tenant", "resume", "a"], socket: d.socket).status, 0)
        XCTAssertEqual(try d.run("a", ["echo", "ok"]).stdout, "ok\n")
    }
}
