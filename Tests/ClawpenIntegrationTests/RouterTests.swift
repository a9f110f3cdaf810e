import ClawpenClient
import ClawpenProtocol
import ClawpenTestSupport
import Foundation
import XCTest

/// The router against the real daemon: quotas refuse with their name, limit, current value and
/// retry_after_ms; a flooding tenant does not hold back a quiet one.
final class RouterQuotaTests: XCTestCase {
    var daemon: Daemon!

    override func tearDown() { daemon?.cleanup() }

    func start(_ overrides: [String: String], args: [String] = []) throws {
        let dir = try Daemon.tempDir()
        let pol = try Daemon.policiesWithOverrides(in: dir, overrides)
        daemon = try Daemon(extraArgs: args, dir: dir, policies: pol).start()
    }

    /// Submits through the CLI with --json; returns the exit status and the error object.
    func refusedSubmit(_ tenant: String, _ args: [String], _ cmd: [String]) throws -> (Int32, JSONValue?) {
        let r = try runCLI(["submit", "--tenant", tenant, "--json"] + args + ["--"] + cmd, socket: daemon.socket)
        let line = r.stdout.split(separator: "\n").last.map(String.init) ?? ""
        let v = try? JSONValue.parse(Array(line.utf8))
        return (r.status, v?["error"])
    }

    func testMaxQueuedRefusesWithTheQuotaAndARetryTime() throws {
        try start(["q": "max_concurrent_runs = 1\nmax_queued = 2\n"])
        try daemon.createTenant("q")
        let first = try daemon.detach("q", ["sleep", "30"])
        XCTAssertTrue(daemon.eventually { (try? self.daemon.tenantStatus("q")["jobs"]?["running"]?.intValue) == 1 })
        let queued = try (0..<2).map { _ in try daemon.detach("q", ["true"]) }
        let (status, error) = try refusedSubmit("q", [], ["true"])
        XCTAssertEqual(status, 75, "quota_exceeded exits 75 (EX_TEMPFAIL)")
        XCTAssertEqual(error?["code"]?.stringValue, "quota_exceeded")
        XCTAssertEqual(error?["quota"]?.stringValue, "max_queued")
        XCTAssertEqual(error?["limit"]?.stringValue, "2")
        XCTAssertEqual(error?["current"]?.stringValue, "2")
        XCTAssertGreaterThan(error?["retry_after_ms"]?.intValue ?? 0, 0)
        XCTAssertTrue(error?["message"]?.stringValue?.contains("max_queued") == true)
        // Cancelling the running job lets the queue move: the queued jobs run.
        _ = try daemon.connect().call(.jobCancel(jobID: first.id))
        for j in queued {
            let done = try daemon.connect().call(.jobWait(jobID: j.id))
            XCTAssertEqual(done["job"]?["state"]?.stringValue, "succeeded")
        }
        XCTAssertEqual(try daemon.run("q", ["true"]).state, .succeeded, "under the limit again")
    }

    func testJobsPerMinuteIsATokenBucket() throws {
        try start(["r": "jobs_per_minute = 3\n"])
        try daemon.createTenant("r")
        try daemon.createTenant("other")
        for _ in 0..<3 { XCTAssertEqual(try daemon.run("r", ["true"]).state, .succeeded) }
        let (status, error) = try refusedSubmit("r", [], ["true"])
        XCTAssertEqual(status, 75)
        XCTAssertEqual(error?["quota"]?.stringValue, "jobs_per_minute")
        XCTAssertEqual(error?["limit"]?.stringValue, "3")
        let retry = error?["retry_after_ms"]?.intValue ?? -1
        XCTAssertTrue((1...20_000).contains(retry), "one token every 20 s at 3/min: \(retry)")
        XCTAssertEqual(try daemon.run("other", ["true"]).state, .succeeded, "another tenant's rate is its own")
        XCTAssertEqual(try daemon.tenantStatus("r")["refused"]?["jobs_per_minute"]?.intValue, 1, "status counts the refusal")
        // An idempotent resubmission of an accepted job is not a new job: no token needed.
        let cli = try runCLI(["submit", "--tenant", "r", "--idempotency-key", "k1", "--", "true"], socket: daemon.socket)
        XCTAssertEqual(cli.status, 75, "a new key is a new job")
    }

    func testATimeoutAboveTheMaximumIsRefusedForGood() throws {
        try start([:])
        try daemon.createTenant("t")
        let (status, error) = try refusedSubmit("t", ["--timeout", "1000"], ["true"])
        XCTAssertEqual(status, 75)
        XCTAssertEqual(error?["quota"]?.stringValue, "timeout_max_s")
        XCTAssertEqual(error?["limit"]?.stringValue, "300")
        XCTAssertEqual(error?["current"]?.stringValue, "1000")
        XCTAssertEqual(error?["retry_after_ms"], .null, "waiting does not help")
    }

    func testRefusalsAreAudited() throws {
        try start(["r": "jobs_per_minute = 1\n"])
        try daemon.createTenant("r")
        XCTAssertEqual(try daemon.run("r", ["true"]).state, .succeeded)
        XCTAssertEqual(try refusedSubmit("r", [], ["true"]).0, 75)
        daemon.stop()
        // The audit table holds the refusal with the rule, the tenant and the caller's uid.
        let db = daemon.stateDir + "/clawpen.db"
        let q = Process()
        q.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        q.arguments = [
            "-c",
            "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); print(c.execute(\"select tenant, caller_uid, action, rule from audit where action='submit.refused'\").fetchall())",
            db,
        ]
        let pipe = Pipe()
        q.standardOutput = pipe
        try q.run(); q.waitUntilExit()
        let out = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        XCTAssertTrue(out.contains("('r', \(getuid()), 'submit.refused', 'jobs_per_minute')"), out)
    }
}

/// Fair dispatch at small scale: one tenant floods, another submits one job at a time.
final class FairDispatchTests: XCTestCase {
    var daemon: Daemon!

    override func tearDown() { daemon?.cleanup() }

    /// `flood` (weight 16, may run 32 at once) queues 40 jobs of 0.3 s on a daemon that runs 3
    /// jobs at once; then `quiet` runs one job. Returns how many flood jobs were still queued
    /// when quiet's job had finished.
    func floodThenQuiet(dispatch: String) throws -> (floodQueuedAfter: Int, floodRunningMax: Int) {
        let dir = try Daemon.tempDir()
        let pol = try Daemon.policiesWithOverrides(in: dir, ["flood": "tier = \"enterprise\"\nmax_concurrent_runs = 32\n"])
        daemon = try Daemon(extraArgs: ["--max-running", "3", "--reserved-slots", "1", "--dispatch", dispatch], dir: dir, policies: pol).start()
        try daemon.createTenant("flood", tier: "enterprise")
        try daemon.createTenant("quiet")
        XCTAssertEqual(try daemon.run("quiet", ["true"]).state, .succeeded) // its worker is up
        let c = try daemon.connect()
        for _ in 0..<40 { _ = try c.submit(SubmitRequest(tenant: .t("flood"), argv: ["sleep", "0.3"])) }
        XCTAssertTrue(daemon.eventually { (try? self.daemon.status()["supervisor"]?["router"]?["running"]?.intValue) ?? 0 >= 2 })
        let job = try daemon.run("quiet", ["true"])
        XCTAssertEqual(job.state, .succeeded)
        let st = try daemon.tenantStatus("flood")
        let queued = st["jobs"]?["queued"]?.intValue ?? -1
        let running = st["jobs"]?["running"]?.intValue ?? -1
        return (Int(queued), Int(running))
    }

    func testAQuietTenantIsNotQueuedBehindAFlood() throws {
        let fair = try floodThenQuiet(dispatch: "fair")
        XCTAssertGreaterThan(fair.floodQueuedAfter, 20, "quiet's job ran while the flood's backlog was still there")
        XCTAssertLessThanOrEqual(fair.floodRunningMax, 2, "the flood stays out of the reserved slot")
    }

    func testFIFOQueuesTheQuietTenantBehindTheFlood() throws {
        let fifo = try floodThenQuiet(dispatch: "fifo")
        XCTAssertLessThanOrEqual(fifo.floodQueuedAfter, 0, "under FIFO, quiet's job starts only after every flood job accepted before it")
    }

    func testStatusReportsTheRouter() throws {
        daemon = try Daemon(extraArgs: ["--max-running", "5"]).start()
        let r = try daemon.status()["supervisor"]?["router"]
        XCTAssertEqual(r?["dispatch"]?.stringValue, "fair")
        XCTAssertEqual(r?["max_running"]?.intValue, 5)
        XCTAssertEqual(r?["reserved_slots"]?.intValue, 1)
    }
}
