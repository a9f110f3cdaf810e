import ClawpenTestSupport
import Foundation
import XCTest

/// Start-up, shutdown, restart, idle reaping and crashes of the daemon and its workers.
final class LifecycleTests: XCTestCase {
    var daemons: [Daemon] = []

    override func tearDown() { daemons.forEach { $0.cleanup() } }

    func make(_ args: [String] = [], dir: String? = nil, policies: String? = nil) throws -> Daemon {
        let d = try Daemon(extraArgs: args, dir: dir, policies: policies)
        daemons.append(d)
        return d
    }

    func testSocketModeAndCleanShutdownRemovesSocket() throws {
        let d = try make().start()
        var st = stat()
        XCTAssertEqual(lstat(d.socket, &st), 0)
        XCTAssertEqual(st.st_mode & 0o777, 0o660)
        try d.createTenant("a")
        _ = try d.run("a", ["true"])
        let worker = Int32(try d.tenantStatus("a")["worker_pid"]!.intValue!)
        XCTAssertEqual(d.stop(), 0)
        XCTAssertNotEqual(lstat(d.socket, &st), 0, "socket removed on shutdown")
        XCTAssertTrue(d.eventually(3) { kill(worker, 0) != 0 }, "worker stopped with the daemon")
    }

    func testSocketParentDirectoryIsCreated0755() throws {
        let d = try make()
        let nested = d.dir + "/run/clawpen"
        let d2 = try make(["--socket", nested + "/c.sock"], dir: d.dir)
        let p = Process()
        p.executableURL = URL(fileURLWithPath: Daemon.clawpen)
        p.arguments = d2.serveArguments
        p.standardError = FileHandle.nullDevice
        try p.run()
        defer { kill(p.processIdentifier, SIGTERM); p.waitUntilExit() }
        XCTAssertTrue(d.eventually { (try? ClawpenConnection(socketPath: nested + "/c.sock").call(.ping)) != nil })
        var st = stat()
        XCTAssertEqual(stat(nested, &st), 0)
        XCTAssertEqual(st.st_mode & 0o777, 0o755)
    }

    func testStaleSocketIsReplacedLiveOneRefused() throws {
        let d = try make()
        try FileManager.default.createDirectory(atPath: d.dir, withIntermediateDirectories: true)
        // A socket file nobody listens on: what a daemon killed with SIGKILL leaves behind.
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in for (i, b) in d.socket.utf8.enumerated() { raw[i] = b } }
        _ = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
        close(fd)
        try d.start()
        // A second daemon on the same socket refuses to start and leaves the first alone.
        let second = try runCLI(d.serveArguments, socket: nil)
        XCTAssertEqual(second.status, 69)
        XCTAssertTrue(second.stderr.contains("already serving"), second.stderr)
        XCTAssertNoThrow(try d.connect().call(.ping))
    }

    /// A second daemon on the same state directory, listening elsewhere, would take the first
    /// one's running job for a crash's leftover and run it again: it must refuse to start.
    func testASecondDaemonOnTheSameStateDirExits78AndTouchesNothing() throws {
        let first = try make().start()
        try first.createTenant("one")
        let job = try first.detach("one", ["/bin/sleep", "30"], timeout: 60)
        XCTAssertTrue(try first.eventually { try first.connect().job(.jobGet(jobID: job.id)).job.state == .running })
        let other = try make(["--socket", first.dir + "/other.sock"], dir: first.dir)
        XCTAssertEqual(other.stateDir, first.stateDir)
        // Run with a deadline: without the lock the second daemon would serve, not exit.
        let p = Process()
        p.executableURL = URL(fileURLWithPath: Daemon.clawpen)
        p.arguments = other.serveArguments
        let err = Pipe()
        p.standardError = err
        p.standardOutput = FileHandle.nullDevice
        try p.run()
        XCTAssertTrue(first.eventually(20) { !p.isRunning }, "a second daemon on the same state directory kept running")
        if p.isRunning { kill(p.processIdentifier, SIGKILL) }
        p.waitUntilExit()
        let second = (status: p.terminationStatus, stderr: String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self))
        XCTAssertEqual(second.status, 78, second.stderr)
        XCTAssertTrue(second.stderr.contains("state directory \(first.stateDir) is in use"), second.stderr)
        XCTAssertTrue(second.stderr.contains("pid \(first.pid)"), "names the holder: \(second.stderr)")
        XCTAssertFalse(FileManager.default.fileExists(atPath: first.dir + "/other.sock"), "the refused daemon never listened")
        // The first daemon's job is its own still: attempt 1, running, one worker.
        let view = try first.connect().job(.jobGet(jobID: job.id)).job
        XCTAssertEqual(view.state, .running)
        XCTAssertEqual(view.attempt, 1)
        XCTAssertFalse(first.log.contains("re-queued"), first.log)
        // A crash leaves no stale lock: killed with SIGKILL, the daemon starts again on the same
        // state directory at once, and only now is the job taken up again (attempt 2).
        XCTAssertEqual(first.stop(signal: SIGKILL), SIGKILL)
        try first.start()
        XCTAssertTrue(try first.eventually { try first.connect().job(.jobGet(jobID: job.id)).job.attempt == 2 })
    }

    /// A SIGTERM the moment the socket first answers (what a test's or systemd's quick stop
    /// does) stops the daemon cleanly every time: the handler is in place before the socket is
    /// bound. (With dispatch signal sources, armed asynchronously, such a SIGTERM was sometimes
    /// lost on a loaded machine and the daemon served on.)
    func testASIGTERMTheMomentTheSocketAnswersStopsTheDaemon() throws {
        for round in 0..<8 {
            let d = try make().start()
            let started = Date()
            XCTAssertEqual(d.stop(timeout: 15), 0, "round \(round): stopped by its SIGTERM, not killed")
            XCTAssertLessThan(Date().timeIntervalSince(started), 10, "round \(round)")
            d.cleanup()
        }
    }

    func testNonSocketAtSocketPathIsNotReplaced() throws {
        let d = try make()
        try FileManager.default.createDirectory(atPath: d.dir, withIntermediateDirectories: true)
        FileManager.default.createFile(atPath: d.socket, contents: Data("precious".utf8))
        let r = try runCLI(d.serveArguments, socket: nil)
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.stderr.contains("not a socket"), r.stderr)
        XCTAssertEqual(try String(contentsOfFile: d.socket, encoding: .utf8), "precious")
    }

    func testInvalidPolicyIsAStartupErrorNamingFileAndKey() throws {
        let d = try make()
        let pol = d.dir + "/policies"
        try FileManager.default.createDirectory(atPath: pol + "/tiers", withIntermediateDirectories: true)
        for tier in ["free", "pro", "enterprise"] {
            try FileManager.default.copyItem(atPath: Daemon.repoRoot + "/policies/tiers/\(tier).toml", toPath: pol + "/tiers/\(tier).toml")
        }
        var text = try String(contentsOfFile: pol + "/tiers/pro.toml", encoding: .utf8)
        text = text.replacingOccurrences(of: "pids_max = 256", with: "pids_max = \"lots\"")
        try text.write(toFile: pol + "/tiers/pro.toml", atomically: true, encoding: .utf8)
        let d2 = try make(dir: d.dir, policies: pol)
        let bad = try runCLI(d2.serveArguments, socket: nil)
        XCTAssertEqual(bad.status, 78, "EX_CONFIG")
        XCTAssertTrue(bad.stderr.contains("pro.toml") && bad.stderr.contains("pids_max"), bad.stderr)
        // A missing tier file is named too.
        try FileManager.default.removeItem(atPath: pol + "/tiers/pro.toml")
        try FileManager.default.copyItem(atPath: Daemon.repoRoot + "/policies/tiers/pro.toml", toPath: pol + "/tiers/pro.toml")
        try FileManager.default.removeItem(atPath: pol + "/tiers/enterprise.toml")
        let missing = try runCLI(d2.serveArguments, socket: nil)
        XCTAssertTrue(missing.stderr.contains("enterprise.toml"), missing.stderr)
    }

    func testGracefulShutdownLetsRunningJobsFinish() throws {
        let d = try make(["--shutdown-grace", "10"]).start()
        try d.createTenant("a")
        let job = try d.detach("a", ["sh", "-c", "sleep 1; echo finished"])
        XCTAssertTrue(d.eventually { (try? d.tenantStatus("a")["jobs"]?["running"]?.intValue) == 1 })
        XCTAssertEqual(d.stop(), 0)
        // Read the result through a new daemon on the same state.
        let d2 = try make(dir: d.dir).start()
        let done = try d2.connect().job(.jobGet(jobID: job.id)).job
        XCTAssertEqual(done.state, .succeeded)
        XCTAssertEqual(done.stdout, "finished\n")
        XCTAssertEqual(done.attempt, 1)
    }

    func testRestartRequeuesQueuedAndRunningJobs() throws {
        let d = try make(["--shutdown-grace", "0"]).start()
        try d.createTenant("a")
        // Two run (tier free), one waits.
        let ids = try (0..<3).map { _ in try d.detach("a", ["sh", "-c", "sleep 2; echo ran"]).id }
        XCTAssertTrue(d.eventually { (try? d.tenantStatus("a")["jobs"]?["running"]?.intValue) == 2 })
        // Crash the daemon: no chance to record anything. Its workers die with it (PDEATHSIG).
        let workerPID = Int32(try d.tenantStatus("a")["worker_pid"]!.intValue!)
        d.stop(signal: SIGKILL)
        XCTAssertTrue(d.eventually(5) { kill(workerPID, 0) != 0 }, "worker outlived the daemon")
        let d2 = try make(dir: d.dir).start()
        let c = try d2.connect()
        for id in ids {
            let job = try c.job(.jobWait(jobID: id)).job
            XCTAssertEqual(job.state, .succeeded, "job \(id)")
            XCTAssertEqual(job.stdout, "ran\n")
            XCTAssertEqual(job.attempt, 2, "job \(id) was queued again with attempt + 1")
        }
    }

    func testIdleWorkerIsReapedAndRespawnedOnDemand() throws {
        let d = try make(["--idle-timeout", "0.5"]).start()
        try d.createTenant("a")
        _ = try d.run("a", ["true"])
        let first = try XCTUnwrap(try d.tenantStatus("a")["worker_pid"]?.intValue)
        XCTAssertTrue(d.eventually(5) { (try? d.tenantStatus("a")["state"]?.stringValue) == "idle" })
        let t = try d.tenantStatus("a")
        XCTAssertEqual(t["worker_pid"], .null)
        XCTAssertEqual(t["restarts"]?.intValue, 0, "an idle stop is no restart")
        XCTAssertNotEqual(kill(Int32(first), 0), 0, "the idle worker exited")
        XCTAssertEqual(try d.run("a", ["echo", "again"]).stdout, "again\n")
        let second = try XCTUnwrap(try d.tenantStatus("a")["worker_pid"]?.intValue)
        XCTAssertNotEqual(second, first, "a new worker")
    }

    /// Kills the tenant's current worker from outside (a tenant cannot: it is PID 1 of its own
    /// pid namespace) once it runs a job, and returns its pid.
    private func killWorkerWhileBusy(_ d: Daemon, _ tenant: String, after previous: Int64?) throws -> Int64 {
        var pid: Int64 = -1
        XCTAssertTrue(
            d.eventually(10) {
                // busy: set up and running the job (a starting worker may already hold it, unstarted)
                guard let t = try? d.tenantStatus(tenant), t["jobs"]?["running"]?.intValue == 1, t["state"]?.stringValue == "busy",
                    let p = t["worker_pid"]?.intValue, p != previous
                else { return false }
                pid = p
                return true
            }, "a worker running the job")
        kill(Int32(pid), SIGKILL)
        return pid
    }

    func testWorkerCrashRequeuesItsJobAndRespawns() throws {
        let d = try make().start()
        try d.createTenant("a")
        // The first attempt hangs until its worker is killed; the retry (in a new worker) finishes.
        let job = try d.detach("a", ["sh", "-c", "test -f $HOME/once || { touch $HOME/once; sleep 30; }; echo second try"])
        XCTAssertTrue(d.eventually { FileManager.default.fileExists(atPath: d.workspaceRoot + "/a/home/once") })
        _ = try killWorkerWhileBusy(d, "a", after: nil)
        let done = try d.connect().job(.jobWait(jobID: job.id)).job
        XCTAssertEqual(done.state, .succeeded, done.stderr)
        XCTAssertEqual(done.stdout, "second try\n")
        XCTAssertEqual(done.attempt, 2)
        let t = try d.tenantStatus("a")
        XCTAssertEqual(t["restarts"]?.intValue, 1)
        XCTAssertTrue(t["last_error"]?.stringValue?.contains("signal 9") ?? false, "\(t)")
    }

    func testJobWhoseWorkerKeepsDyingEndsWorkerCrashed() throws {
        let d = try make().start()
        try d.createTenant("a")
        let job = try d.detach("a", ["sleep", "30"])
        var last: Int64?
        for _ in 0..<3 { last = try killWorkerWhileBusy(d, "a", after: last) }
        let done = try d.connect().job(.jobWait(jobID: job.id)).job
        XCTAssertEqual(done.state, .failed)
        XCTAssertEqual(done.error?.code, .workerCrashed)
        XCTAssertEqual(done.attempt, 3)
        let cli = try runCLI(["job", "wait", job.id], socket: d.socket)
        XCTAssertEqual(cli.status, 70)
        XCTAssertTrue(cli.stderr.contains("worker_crashed"), cli.stderr)
        XCTAssertEqual(try d.run("a", ["echo", "fine"]).stdout, "fine\n", "the tenant still works afterwards")
        XCTAssertEqual(try d.tenantStatus("a")["restarts"]?.intValue, 3)
    }

    func testMissingWorkerBinaryFailsJobsClearly() throws {
        let d = try make(["--worker-path", "/bin/false"]).start()
        try d.createTenant("a")
        let job = try d.run("a", ["true"])
        XCTAssertEqual(job.state, .failed)
        XCTAssertEqual(job.error?.code, .workerCrashed)
        XCTAssertTrue(job.error?.message.contains("cannot start") ?? false, job.error?.message ?? "")
        // It was handed to workers behind their configure frame, but never started: no attempt counted.
        XCTAssertEqual(job.attempt, 1)
        // No retry loop: after crash_loop_max failures the tenant is quarantined, says why, and
        // refuses new jobs until its back-off is over.
        let t = try d.tenantStatus("a")
        XCTAssertEqual(t["state"]?.stringValue, "quarantined", "\(t)")
        XCTAssertNotNil(t["quarantine"]?["retry_in_s"]?.doubleValue, "\(t)")
        XCTAssertEqual(t["last_error_detail"]?["kind"]?.stringValue, "exited", "\(t)")
        XCTAssertNoThrow(try d.connect().call(.ping))
    }

    func testClientThatDisconnectsMidJobDoesNotLoseIt() throws {
        let d = try make().start()
        try d.createTenant("a")
        do {
            let raw = try RawSocket(d.socket)
            raw.sendFrame(
                Array(#"{"type":"submit","id":1,"tenant":"a","argv":["sh","-c","sleep 0.5; echo survived"],"idempotency_key":"gone","wait":true}"#.utf8))
            usleep(100_000)
        } // closed here, mid-job
        // The same key finds the job; it ran to the end.
        let again = try d.connect().submit(SubmitRequest(tenant: .t("a"), argv: ["true"], idempotencyKey: "gone", wait: true))
        XCTAssertTrue(again.existing)
        XCTAssertEqual(again.job.state, .succeeded)
        XCTAssertEqual(again.job.stdout, "survived\n")
        XCTAssertEqual(try d.connect().job(.jobGet(jobID: again.job.id)).job.stdout, "survived\n")
    }

    func testConfigFileAndUnknownKey() throws {
        let d = try make()
        try FileManager.default.createDirectory(atPath: d.dir, withIntermediateDirectories: true)
        let cfg = d.dir + "/clawpen.toml"
        // A bad config is EX_CONFIG (78), naming the file, the line and the key.
        try "[serve]\nidle-timeout = 0.4\nbogus = 1\n".write(toFile: cfg, atomically: true, encoding: .utf8)
        var r = try runCLI(d.serveArguments + ["--config", cfg], socket: nil)
        XCTAssertEqual(r.status, 78, r.stderr)
        XCTAssertTrue(r.stderr.contains("clawpen.toml:3") && r.stderr.contains("bogus"), r.stderr)
        try "[serve]\nmax-running = \"many\"\n".write(toFile: cfg, atomically: true, encoding: .utf8)
        r = try runCLI(d.serveArguments + ["--config", cfg], socket: nil)
        XCTAssertEqual(r.status, 78, r.stderr)
        XCTAssertTrue(r.stderr.contains("clawpen.toml:2: max-running must be"), r.stderr)
        // The keys are the long flags' names (the first version's snake_case names still work).
        try "[serve]\nidle-timeout = 0.4\nlog-level = \"debug\"\nshutdown_grace_s = 1\n".write(toFile: cfg, atomically: true, encoding: .utf8)
        let d2 = try make(["--config", cfg], dir: d.dir).start()
        try d2.createTenant("a")
        _ = try d2.run("a", ["true"])
        XCTAssertTrue(d2.eventually(5) { (try? d2.tenantStatus("a")["state"]?.stringValue) == "idle" }, "idle timeout from the config file")
    }

    func testTenantCgroupsHoldTheWorkerAndLeaveNothingBehind() throws {
        let d = try make(["--idle-timeout", "0.5"]).start()
        let cg = try d.status()["supervisor"]?["cgroup"] ?? .null
        guard let base = cg["tenants_base"]?.stringValue else { throw XCTSkip("no cgroup2 hierarchy here: \(cg)") }
        try d.createTenant("a")
        let job = try d.run("a", ["sh", "-c", "grep '^0::' /proc/self/cgroup"])
        XCTAssertTrue(job.stdout.hasPrefix("0::/job-"), "each job in a cgroup of its own, the namespace rooted at the tenant's node: \(job.stdout)")
        let worker = try XCTUnwrap(try d.tenantStatus("a")["worker_pid"]?.intValue)
        let procs = try String(contentsOfFile: base + "/tenant-a/cgroup.procs", encoding: .utf8)
        XCTAssertTrue(procs.split(separator: "\n").contains(Substring(String(worker))), "worker \(worker) in tenant-a: \(procs)")
        let slot = job.stdout.dropFirst("0::/".count).trimmingCharacters(in: .whitespacesAndNewlines)
        XCTAssertTrue(
            try String(contentsOfFile: base + "/tenant-a/\(slot)/cgroup.events", encoding: .utf8).contains("populated 0"),
            "the job's cgroup is empty once the job has ended")
        // Delegated to the tenant's uid, except the limits and cgroup.kill.
        var st = stat()
        XCTAssertEqual(stat(base + "/tenant-a/cgroup.procs", &st), 0)
        XCTAssertEqual(Int(st.st_uid), try d.connect().tenant(.tenantShow(name: .t("a"))).uid)
        XCTAssertEqual(stat(base + "/tenant-a/cgroup.kill", &st), 0)
        XCTAssertEqual(st.st_uid, 0)
        XCTAssertTrue(try String(contentsOfFile: "/proc/\(d.pid)/cgroup", encoding: .utf8).contains("/supervisor\n"), "the daemon sits in its leaf")
        // The worker goes idle: its cgroup goes with it.
        XCTAssertTrue(d.eventually(5) { !FileManager.default.fileExists(atPath: base + "/tenant-a") }, "tenant-a cgroup removed after the worker exited")
        _ = try d.run("a", ["true"])
        XCTAssertTrue(FileManager.default.fileExists(atPath: base + "/tenant-a"))
        XCTAssertEqual(d.stop(), 0)
        XCTAssertFalse(FileManager.default.fileExists(atPath: base + "/tenant-a"), "no tenant cgroup after the daemon stopped")
        if base.hasSuffix("/clawpen-\(d.pid)") { XCTAssertFalse(FileManager.default.fileExists(atPath: base)) }
    }

    /// `--worker-cgroup`: the tenant nodes go under another unit's cgroup, whose own process
    /// (`serve --hold-worker-cgroup`) sits in a holder/ leaf, and the daemon stays where it was
    /// started, handing nothing down (so that systemd can start the next daemon there). A
    /// cgroup with a process of its own, or one outside the cgroup2 mount, is refused by name.
    func testAWorkerCgroupOfAnotherUnitHoldsTheTenantNodes() throws {
        let mounts = (try? String(contentsOfFile: "/proc/mounts", encoding: .utf8)) ?? ""
        var mount: String?
        for line in mounts.split(separator: "\n") {
            let fields = line.split(separator: " ")
            if fields.count > 2 && fields[2] == "cgroup2" { mount = String(fields[1]); break }
        }
        guard let mount else { throw XCTSkip("no cgroup2 mount here") }
        func processes(in path: String) -> [Int32] {
            ((try? String(contentsOfFile: path + "/cgroup.procs", encoding: .utf8)) ?? "").split(separator: "\n").compactMap { Int32($0) }
        }
        func removeTree(_ path: String) {
            _ = try? "1".write(toFile: path + "/cgroup.kill", atomically: false, encoding: .utf8)
            for child in (try? FileManager.default.contentsOfDirectory(atPath: path)) ?? [] {
                var isDir: ObjCBool = false
                if FileManager.default.fileExists(atPath: path + "/" + child, isDirectory: &isDir), isDir.boolValue { removeTree(path + "/" + child) }
            }
            for _ in 0..<100 where rmdir(path) != 0 && errno != ENOENT { usleep(20_000) }
        }
        let unit = mount + "/clawpen-test-workers-\(getpid())"
        XCTAssertEqual(mkdir(unit, 0o755), 0, String(cString: strerror(errno)))
        defer { removeTree(unit) }
        // The holder, as clawpen-workers.service runs it: started in `unit`, it moves into holder/.
        let holder = Process()
        holder.executableURL = URL(fileURLWithPath: "/bin/sh")
        holder.arguments = ["-c", "echo $$ > \(unit)/cgroup.procs && exec \(Daemon.buildDir)/clawpen-serve --hold-worker-cgroup"]
        try holder.run()
        let holderPID = holder.processIdentifier
        defer { holder.terminate() }
        XCTAssertTrue(
            waitFor(5) { processes(in: unit + "/holder").contains(holderPID) && processes(in: unit).isEmpty },
            "the holder moved into holder/: \(processes(in: unit)) \(processes(in: unit + "/holder"))")

        let d = try make(["--worker-cgroup", unit]).start()
        let cg = try d.status()["supervisor"]?["cgroup"] ?? .null
        XCTAssertEqual(cg["tenants_base"]?.stringValue, unit, "\(cg)")
        try d.createTenant("a")
        let job = try d.run("a", ["sh", "-c", "grep '^0::' /proc/self/cgroup"])
        XCTAssertTrue(job.stdout.hasPrefix("0::/job-"), job.stdout)
        let worker = try XCTUnwrap(try d.tenantStatus("a")["worker_pid"]?.intValue)
        XCTAssertTrue(processes(in: unit + "/tenant-a").contains(Int32(worker)), "the worker is in the other unit's tenant-a")
        let own = try String(contentsOfFile: "/proc/\(d.pid)/cgroup", encoding: .utf8)
        XCTAssertFalse(own.contains("/supervisor\n"), "the daemon did not move into a leaf of its own: \(own)")
        XCTAssertEqual(d.stop(), 0)
        XCTAssertFalse(FileManager.default.fileExists(atPath: unit + "/tenant-a"), "its nodes go at a stop")
        XCTAssertTrue(FileManager.default.fileExists(atPath: unit), "the other unit's cgroup stays")

        // Refusals: a cgroup that holds a process itself, a path outside the mount.
        let busy = unit + "/busy"
        XCTAssertEqual(mkdir(busy, 0o755), 0)
        _ = try? "\(holderPID)".write(toFile: busy + "/cgroup.procs", atomically: false, encoding: .utf8)
        for (arg, why) in [(busy, "holds processes of its own"), ("/tmp", "is not a cgroup v2 directory")] {
            let r = try runCLI(d.serveArguments + ["--worker-cgroup", arg, "--require-cgroup-limits"], socket: nil)
            XCTAssertEqual(r.status, 78, r.stderr)
            XCTAssertTrue(r.stderr.contains(why), "\(arg): \(r.stderr)")
        }
    }

    private func waitFor(_ seconds: Double, _ condition: () -> Bool) -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if condition() { return true }
            usleep(20_000)
        }
        return condition()
    }

    /// A SIGTERM sent the moment the socket first answers stops the daemon: the signal sources
    /// are armed before the socket is bound (they arm asynchronously; a signal in between was
    /// ignored for good, and the daemon served on).
    func testASigtermAsSoonAsTheSocketAnswersStopsTheDaemon() throws {
        for round in 0..<10 {
            let d = try make()
            let p = try Daemon.launch(d.serveArguments)
            XCTAssertTrue(d.eventually(20) { (try? d.connect().call(.ping)) != nil }, "round \(round): serving")
            kill(p.processIdentifier, SIGTERM)
            let deadline = Date().addingTimeInterval(15)
            while p.isRunning && Date() < deadline { usleep(10_000) }
            let stopped = !p.isRunning
            if !stopped { kill(p.processIdentifier, SIGKILL); p.waitUntilExit() }
            XCTAssertTrue(stopped, "round \(round): SIGTERM right after the socket answered stopped the daemon")
            if !stopped { break }
        }
    }

    func testCgroupsOfADaemonThatWasKilledAreCleanedAtTheNextStart() throws {
        let d = try make().start()
        guard let base = try d.status()["supervisor"]?["cgroup"]?["tenants_base"]?.stringValue, base.contains("/clawpen-") else {
            throw XCTSkip("the daemon was delegated its cgroup: nothing of its own to clean")
        }
        try d.createTenant("a")
        _ = try d.run("a", ["true"])
        d.stop(signal: SIGKILL)
        XCTAssertTrue(FileManager.default.fileExists(atPath: base), "a killed daemon leaves its tree")
        let d2 = try make(dir: d.dir).start()
        XCTAssertTrue(d2.eventually(5) { !FileManager.default.fileExists(atPath: base) }, "the next daemon removed \(base)")
    }

    func testSpareWorkersServeNewTenantsAndAreRefilled() throws {
        let d = try make(["--prespawn", "2"]).start()
        XCTAssertTrue(d.eventually { (try? d.status()["supervisor"]?["spare_workers"]?.intValue) == 2 }, "two spares waiting")
        for name in ["a", "b", "c"] {
            try d.createTenant(name)
            let job = try d.run(name, ["sh", "-c", "id -u; hostname"])
            XCTAssertEqual(job.state, .succeeded, job.stderr)
            XCTAssertEqual(job.stdout.split(separator: "\n").last.map(String.init), name, "the spare took on \(name)'s sandbox")
            let worker = try XCTUnwrap(try d.tenantStatus(name)["worker_pid"]?.intValue)
            XCTAssertEqual(try String(contentsOfFile: "/proc/\(worker)/comm", encoding: .utf8), "cp-\(name)\n")
        }
        XCTAssertTrue(d.eventually { (try? d.status()["supervisor"]?["spare_workers"]?.intValue) == 2 }, "the pool refills")
        XCTAssertNotEqual(try d.run("a", ["id", "-u"]).stdout, try d.run("b", ["id", "-u"]).stdout, "each tenant its own uid")
        XCTAssertEqual(d.stop(), 0)
        XCTAssertTrue(d.eventually(3) { (try? String(contentsOfFile: "/proc/\(d.pid)/status", encoding: .utf8)) == nil })
    }
}
