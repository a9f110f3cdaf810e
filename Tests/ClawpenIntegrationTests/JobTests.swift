import ClawpenTestSupport
import Foundation
import XCTest

final class JobTests: XCTestCase {
    var daemon: Daemon!

    override func setUpWithError() throws {
        daemon = try Daemon().start()
        try daemon.createTenant("a")
        try daemon.createTenant("b", tier: "pro")
    }
    override func tearDown() { daemon?.cleanup() }

    func testSubmitBehavesLikeRunningLocally() throws {
        let r = try runCLI(["submit", "--tenant", "a", "--", "sh", "-c", "echo out; echo err >&2; exit 3"], socket: daemon.socket)
        XCTAssertEqual(r.status, 3)
        XCTAssertEqual(r.stdout, "out\n")
        XCTAssertEqual(r.stderr, "err\n")
    }

    func testJSONResultHasContractFields() throws {
        let r = try runCLI(["submit", "--tenant", "a", "--json", "--", "echo", "hi"], socket: daemon.socket)
        XCTAssertEqual(r.status, 0, r.stderr)
        let j = try JSONValue.parse(Array(r.stdout.utf8))
        for key in [
            "id", "tenant", "state", "exit_code", "signal", "stdout", "stderr", "stdout_truncated",
            "stderr_truncated", "queued_ms", "run_ms", "cpu_ms", "max_rss_kb", "attempt", "error",
        ] {
            XCTAssertNotNil(j[key], "missing \(key)")
        }
        XCTAssertEqual(j["state"]?.stringValue, "succeeded")
        XCTAssertEqual(j["exit_code"]?.intValue, 0)
        XCTAssertEqual(j["signal"], .null)
        XCTAssertEqual(j["error"], .null)
        XCTAssertEqual(j["stdout"]?.stringValue, "hi\n")
        XCTAssertEqual(j["attempt"]?.intValue, 1)
        XCTAssertNotNil(j["run_ms"]?.doubleValue)
        XCTAssertGreaterThan(j["max_rss_kb"]?.intValue ?? 0, 0)
    }

    func testCommandNotFoundIsFailed127WithMessage() throws {
        let job = try daemon.run("a", ["no-such-command-xyz"])
        XCTAssertEqual(job.state, .failed)
        XCTAssertEqual(job.exitCode, 127)
        XCTAssertTrue(job.stderr.contains("no-such-command-xyz: command not found"), job.stderr)
        // An absolute path the tool policy allows (/usr/bin/*) but that does not exist.
        let r = try runCLI(["submit", "--tenant", "a", "--", "/usr/bin/no-such-binary-xyz"], socket: daemon.socket)
        XCTAssertEqual(r.status, 127)
        XCTAssertTrue(r.stderr.contains("No such file or directory"), r.stderr)
    }

    func testEnvCwdAndStdin() throws {
        XCTAssertEqual(try daemon.run("a", ["mkdir", "-p", "sub"]).state, .succeeded)
        let job = try daemon.run(
            "a", ["sh", "-c", "echo \"$AGENT_GREETING\"; pwd; cat"], env: ["AGENT_GREETING": "hello there"],
            stdin: Array("from stdin".utf8), cwd: "/home/sub")
        XCTAssertEqual(job.state, .succeeded, job.stderr)
        let lines = job.stdout.split(separator: "\n").map(String.init)
        XCTAssertEqual(lines.first, "hello there")
        XCTAssertEqual(lines[1], "/home/sub", "the job sees its workspace as /")
        XCTAssertEqual(lines.last, "from stdin")
        // Nothing of the daemon's environment leaks into the job.
        let envJob = try daemon.run("a", ["env"])
        let env = envJob.stdout
        XCTAssertTrue(env.contains("USER=a"))
        XCTAssertTrue(env.contains("PATH=/usr/local/bin:/usr/bin:/bin"))
        // Only the job's own agent socket and id (docs/subjobs.md), none of the daemon's CLAWPEN_*.
        let ours = env.split(separator: "\n").filter { $0.hasPrefix("CLAWPEN_") }.map { String($0.prefix { $0 != "=" }) }
        XCTAssertEqual(ours.sorted(), ["CLAWPEN_JOB_ID", "CLAWPEN_SOCKET"], env)
        XCTAssertTrue(env.contains("CLAWPEN_JOB_ID=\(envJob.id)\n"), env)
        // Binary stdin (not UTF-8) round-trips byte for byte.
        let bytes: [UInt8] = [0, 1, 2, 0xFF, 0xFE, 10]
        let od = try daemon.run("a", ["od", "-An", "-tx1"], stdin: bytes)
        XCTAssertEqual(od.stdout.split(whereSeparator: { $0 == " " || $0 == "\n" }), ["00", "01", "02", "ff", "fe", "0a"])
    }

    func testCLIStdinEnvAndCwdFlags() throws {
        let r = try runCLI(
            ["submit", "--tenant", "a", "-i", "--env", "AGENT_X=1", "--", "sh", "-c", "cat; echo $AGENT_X"], socket: daemon.socket, stdin: "abc\n")
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertEqual(r.stdout, "abc\n1\n")
    }

    func testTimeoutKillsTheWholeProcessGroup() throws {
        // The job starts a background sleeper, records its pid, then hangs.
        let started = Date()
        let job = try daemon.run("a", ["sh", "-c", "sleep 60 & echo $! > $HOME/bg.pid; sleep 60"], timeout: 0.5)
        XCTAssertLessThan(Date().timeIntervalSince(started), 5)
        XCTAssertEqual(job.state, .timedOut)
        XCTAssertEqual(job.signal, 9)
        XCTAssertEqual(job.error?.code, .timedOut)
        // The pid is in the worker's pid namespace: ask from there.
        XCTAssertTrue(
            try daemon.eventually(5) {
                try daemon.run("a", ["sh", "-c", "kill -0 $(cat $HOME/bg.pid) 2>/dev/null && echo alive || echo gone"]).stdout == "gone\n"
            }, "the background process of the timed-out job survived")
        let r = try runCLI(["submit", "--tenant", "a", "--timeout", "0.3", "--", "sleep", "10"], socket: daemon.socket)
        XCTAssertEqual(r.status, 124)
        XCTAssertTrue(r.stderr.contains("timed_out"), r.stderr)
    }

    func testTimeoutAboveTierMaximumIsRefused() throws {
        XCTAssertThrowsError(try daemon.run("a", ["true"], timeout: 301)) { e in
            XCTAssertEqual((e as? ClientError)?.code, .quotaExceeded)
            XCTAssertTrue((e as? ClientError)?.message.contains("timeout_max_s") ?? false)
        }
        let r = try runCLI(["submit", "--tenant", "a", "--timeout", "1000", "--", "true"], socket: daemon.socket)
        XCTAssertEqual(r.status, 75)
    }

    func testSignalledJobReports128PlusN() throws {
        let job = try daemon.run("a", ["sh", "-c", "kill -TERM $$"])
        XCTAssertEqual(job.state, .killed)
        XCTAssertEqual(job.signal, 15)
        let r = try runCLI(["submit", "--tenant", "a", "--", "sh", "-c", "kill -KILL $$"], socket: daemon.socket)
        XCTAssertEqual(r.status, 137)
    }

    func testDetachGetWaitAndCLIWait() throws {
        let r = try runCLI(["submit", "--tenant", "a", "--detach", "--", "sh", "-c", "sleep 0.3; echo done; exit 4"], socket: daemon.socket)
        XCTAssertEqual(r.status, 0)
        let id = r.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        let early = try daemon.connect().job(.jobGet(jobID: id)).job
        XCTAssertTrue([.queued, .running].contains(early.state), "\(early.state)")
        let w = try runCLI(["job", "wait", id], socket: daemon.socket)
        XCTAssertEqual(w.status, 4)
        XCTAssertEqual(w.stdout, "done\n")
        let g = try runCLI(["job", "get", id, "--json"], socket: daemon.socket)
        XCTAssertEqual(try JSONValue.parse(Array(g.stdout.utf8))["state"]?.stringValue, "failed")
        let unknown = try runCLI(["job", "get", "0123-abc"], socket: daemon.socket)
        XCTAssertEqual(unknown.status, 64)
    }

    func testCancelRunningAndQueuedJobs() throws {
        // Tier free runs two at once: the third waits in the router.
        let first = try daemon.detach("a", ["sleep", "30"])
        let second = try daemon.detach("a", ["sleep", "30"])
        let third = try daemon.detach("a", ["sleep", "30"])
        XCTAssertTrue(daemon.eventually { (try? daemon.tenantStatus("a")["jobs"]?["running"]?.intValue) == 2 })
        XCTAssertEqual(try daemon.tenantStatus("a")["jobs"]?["queued"]?.intValue, 1)
        let c = try daemon.connect()
        let q = try c.job(.jobCancel(jobID: third.id)).job
        XCTAssertEqual(q.state, .canceled)
        let started = Date()
        let r = try c.job(.jobCancel(jobID: first.id)).job
        XCTAssertEqual(r.state, .canceled)
        XCTAssertEqual(r.signal, 9)
        XCTAssertLessThan(Date().timeIntervalSince(started), 3)
        let cli = try runCLI(["job", "cancel", second.id], socket: daemon.socket)
        XCTAssertEqual(cli.status, 0)
        XCTAssertTrue(cli.stdout.contains("canceled"))
        // Canceling a finished job changes nothing.
        XCTAssertEqual(try c.job(.jobCancel(jobID: third.id)).job.state, .canceled)
        XCTAssertTrue(daemon.eventually { (try? daemon.tenantStatus("a")["jobs"]?["running"]?.intValue) == 0 })
    }

    func testMaxConcurrentRunsHoldsPerTenant() throws {
        // Each job records when it ran; at no instant may more than 2 (tier free) overlap.
        for i in 0..<6 { _ = try daemon.detach("a", ["sh", "-c", "echo start >> $HOME/log; sleep 0.3; echo end >> $HOME/log"], key: "k\(i)") }
        var peak = 0
        XCTAssertTrue(
            try daemon.eventually(15) {
                let t = try daemon.tenantStatus("a")
                peak = max(peak, Int(t["jobs"]?["running"]?.intValue ?? 0))
                return t["jobs"]?["succeeded"]?.intValue == 6
            })
        XCTAssertEqual(peak, 2)
        var running = 0, maxRunning = 0
        for line in try String(contentsOfFile: daemon.workspaceRoot + "/a/home/log", encoding: .utf8).split(separator: "\n") {
            running += line == "start" ? 1 : -1
            maxRunning = max(maxRunning, running)
        }
        XCTAssertEqual(maxRunning, 2)
    }

    func testIdempotencyKeyReturnsTheFirstJob() throws {
        let c = try daemon.connect()
        let one = try c.submit(SubmitRequest(tenant: .t("a"), argv: ["sh", "-c", "echo $$"], idempotencyKey: "order-42", wait: true))
        let two = try c.submit(SubmitRequest(tenant: .t("a"), argv: ["sh", "-c", "echo $$"], idempotencyKey: "order-42", wait: true))
        XCTAssertFalse(one.existing)
        XCTAssertTrue(two.existing)
        XCTAssertEqual(one.job.id, two.job.id)
        XCTAssertEqual(one.job.stdout, two.job.stdout)
        // Keys are per tenant.
        let other = try c.submit(SubmitRequest(tenant: .t("b"), argv: ["true"], idempotencyKey: "order-42", wait: true))
        XCTAssertFalse(other.existing)
        XCTAssertEqual(try daemon.tenantStatus("a")["jobs"]?["succeeded"]?.intValue, 1)
    }

    func testOneWorkerPerTenantReusedAcrossJobs() throws {
        // A worker is its own pid namespace: jobs that share one see the same namespace.
        let ns = ["readlink", "/proc/self/ns/pid"]
        let a1 = try daemon.run("a", ns).stdout
        let a2 = try daemon.run("a", ns).stdout
        let b1 = try daemon.run("b", ns).stdout
        XCTAssertFalse(a1.isEmpty)
        XCTAssertEqual(a1, a2, "a's jobs share a's worker")
        XCTAssertNotEqual(a1, b1, "b's job ran in a different worker")
        let worker = try XCTUnwrap(try daemon.tenantStatus("a")["worker_pid"]?.intValue)
        let hostView = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(worker)/ns/pid_for_children")
        XCTAssertEqual(hostView + "\n", a1, "a's jobs run in the worker the status names")
        let cmdline = try String(contentsOfFile: "/proc/\(worker)/cmdline", encoding: .utf8)
        XCTAssertTrue(cmdline.contains("clawpen-worker"), cmdline)
        XCTAssertEqual(try String(contentsOfFile: "/proc/\(worker)/comm", encoding: .utf8), "cp-a\n", "ps shows whose worker it is")
        XCTAssertEqual(try daemon.run("a", ["sh", "-c", "echo $PPID"]).stdout, "1\n", "the worker is PID 1 of its namespace")
    }

    func testFiftyMiBOfOutputIsTruncatedAndDaemonStaysBounded() throws {
        let job = try daemon.run("a", ["head", "-c", "52428800", "/dev/zero"])
        XCTAssertEqual(job.state, .succeeded)
        XCTAssertTrue(job.stdoutTruncated)
        XCTAssertEqual(job.stdout.utf8.count, 1024 * 1024)
        let both = try daemon.run("a", ["sh", "-c", "yes out | head -c 52428800; yes err | head -c 52428800 >&2"])
        XCTAssertTrue(both.stdoutTruncated && both.stderrTruncated)
        XCTAssertEqual(both.stderr.utf8.count, 1024 * 1024)
        let rssKiB =
            try String(contentsOfFile: "/proc/\(daemon.pid)/status", encoding: .utf8)
            .split(separator: "\n").first { $0.hasPrefix("VmHWM:") }?.split(separator: " ").dropFirst().first.flatMap { Int($0) } ?? .max
        XCTAssertLessThan(rssKiB, 200 * 1024, "daemon peak RSS \(rssKiB) KiB after 150 MiB of job output")
        // The CLI prints the output as it is written: all of it; the stored capture is capped.
        let r = try runCLI(["submit", "--tenant", "a", "--", "head", "-c", "3000000", "/dev/zero"], socket: daemon.socket)
        XCTAssertEqual(r.stdout.utf8.count, 3_000_000)
        let j = try runCLI(["submit", "--tenant", "a", "--json", "--", "head", "-c", "3000000", "/dev/zero"], socket: daemon.socket)
        let v = try JSONValue.parse(Array(j.stdout.utf8))
        XCTAssertEqual(v["stdout_truncated"], .bool(true))
        XCTAssertEqual(v["stdout"]?.stringValue?.utf8.count, 1024 * 1024)
    }

    func testStatusJSONContract() throws {
        _ = try daemon.run("a", ["true"])
        _ = try daemon.run("a", ["false"])
        let r = try runCLI(["status", "--json"], socket: daemon.socket)
        XCTAssertEqual(r.status, 0)
        let s = try JSONValue.parse(Array(r.stdout.utf8))
        let sup = s["supervisor"]!
        XCTAssertEqual(sup["pid"]?.intValue, Int64(daemon.pid))
        XCTAssertNotNil(sup["uptime_s"]?.doubleValue)
        XCTAssertNotNil(sup["version"]?.stringValue)
        XCTAssertTrue(["v2", "v2-no-controllers", "none"].contains(sup["cgroup"]?["mode"]?.stringValue ?? ""))
        XCTAssertNotNil(sup["cgroup"]?["controllers"]?.arrayValue)
        let tenants = s["tenants"]!.arrayValue!
        XCTAssertEqual(tenants.map { $0["tenant"]?.stringValue }, ["a", "b"])
        let a = tenants[0]
        XCTAssertEqual(a["tier"]?.stringValue, "free")
        XCTAssertEqual(a["state"]?.stringValue, "ready")
        XCTAssertNotNil(a["worker_pid"]?.intValue)
        XCTAssertEqual(a["restarts"]?.intValue, 0)
        XCTAssertEqual(a["jobs"]?["succeeded"]?.intValue, 1)
        XCTAssertEqual(a["jobs"]?["failed"]?.intValue, 1)
        XCTAssertEqual(a["jobs"]?["queued"]?.intValue, 0)
        XCTAssertEqual(a["jobs"]?["running"]?.intValue, 0)
        XCTAssertEqual(a["limits"]?["memory_max"]?.intValue, 268_435_456)
        XCTAssertEqual(a["limits"]?["pids_max"]?.intValue, 64)
        XCTAssertEqual(a["limits"]?["cpu_max"]?.stringValue, "50000 100000")
        XCTAssertEqual(a["limits"]?["max_concurrent_runs"]?.intValue, 2)
        // Read from the tenant's cgroup: cpu.stat exists without controllers, memory.current and
        // pids.current do not here, so they are null, never a made-up 0.
        let cgroupMode = sup["cgroup"]?["mode"]?.stringValue
        if cgroupMode != "none" { XCTAssertGreaterThan(a["usage"]?["cpu_usec"]?.intValue ?? 0, 0, "\(a)") }
        if !(sup["cgroup"]?["enabled_controllers"]?.arrayValue ?? []).contains(.string("memory")) {
            XCTAssertEqual(a["usage"]?["memory_current"], .null)
        }
        if !(sup["cgroup"]?["enabled_controllers"]?.arrayValue ?? []).contains(.string("pids")) {
            XCTAssertEqual(a["usage"]?["pids_current"], .null)
        }
        XCTAssertEqual(tenants[1]["usage"]?["cpu_usec"], .null, "b has no worker: nothing to read")
        // Root runs the sandbox; without cgroup controllers memory and pids fall back to rlimits
        // (memory's, RLIMIT_AS per job process, is named for what it is: no tenant limit).
        XCTAssertEqual(a["enforcement"]?["memory"]?.stringValue, "per-process-rlimit")
        XCTAssertEqual(a["enforcement"]?["pids"]?.stringValue, "rlimit")
        XCTAssertEqual(a["enforcement"]?["cpu"]?.stringValue, "none")
        // b never ran anything: no worker, idle, null pid and uptime.
        XCTAssertEqual(tenants[1]["state"]?.stringValue, "idle")
        XCTAssertEqual(tenants[1]["worker_pid"], .null)
        XCTAssertEqual(tenants[1]["uptime_s"], .null)
        // --tenant narrows; the table shows - for what cannot be read.
        let one = try JSONValue.parse(Array(try runCLI(["status", "--json", "--tenant", "b"], socket: daemon.socket).stdout.utf8))
        XCTAssertEqual(one["tenants"]?.arrayValue?.count, 1)
        let table = try runCLI(["status"], socket: daemon.socket).stdout
        XCTAssertTrue(table.contains("TENANT") && table.contains("SUCCEEDED"), table)
        let bRow = table.split(separator: "\n").first { $0.hasPrefix("b ") } ?? ""
        XCTAssertTrue(bRow.contains(" - "), "b's row shows - for its missing pid: \(bRow)")
    }

    func testStatusWatchRedraws() throws {
        let text = try runCLIFor(2.3, ["status", "--watch", "--socket", daemon.socket])
        // Into a pipe: shown again every second, without terminal escapes (CLIConventionsTests).
        XCTAssertGreaterThanOrEqual(text.components(separatedBy: "TENANT").count - 1, 2, "shown at least twice in 2.3 s")
        XCTAssertFalse(text.contains("\u{1B}"))
    }
}
