import ClawpenClient
import ClawpenProtocol
import ClawpenTestSupport
import Foundation
import XCTest

/// Sub-jobs against the real daemon (docs/subjobs.md): jobs that submit jobs from inside their
/// sandbox through $CLAWPEN_SOCKET, with the static client and the Python package, and the tree
/// limits that bound them.
final class SubJobTests: XCTestCase {
    var daemon: Daemon!

    /// The client inside every sandbox of a development build.
    static let client = "/opt/clawpen/bin/clawpen"

    override func setUpWithError() throws {
        // The calling job is told from its cgroup: the sandbox (root) gives every job one.
        try XCTSkipUnless(geteuid() == 0, "sub-jobs need the sandbox and its job cgroups (run as root)")
    }

    override func tearDown() { daemon?.cleanup() }

    func start(_ overrides: [String: String] = [:]) throws {
        let dir = try Daemon.tempDir()
        let pol = try Daemon.policiesWithOverrides(in: dir, overrides)
        daemon = try Daemon(dir: dir, policies: pol).start()
    }

    /// Writes `text` into the tenant's sandbox at `path` (as the tenant's uid, by its worker).
    func put(_ tenant: String, _ path: String, _ text: String) throws {
        let r = try runCLI(["cp", "-", "\(tenant):\(path)"], socket: daemon.socket, stdin: text)
        XCTAssertEqual(r.status, 0, r.stderr)
    }

    func tree(_ id: String) throws -> [JobView] {
        let reply = try daemon.connect().call(.jobTree(jobID: id))
        return (reply["jobs"]?.arrayValue ?? []).compactMap(JobView.init(json:))
    }

    func testTheClientFindsTheSocketAndItsTenantFromInsideAJob() throws {
        try start()
        try daemon.createTenant("acme")
        let job = try daemon.run(
            "acme",
            [
                "sh", "-c",
                "echo socket=$CLAWPEN_SOCKET; \(Self.client) submit -- /bin/echo from the child; echo rc=$?; \(Self.client) ping --json 2>&1 || true",
            ])
        XCTAssertEqual(job.state, .succeeded, job.stderr)
        XCTAssertTrue(job.stdout.contains("socket=/run/clawpen/clawpen.sock"), job.stdout)
        XCTAssertTrue(job.stdout.contains("from the child\nrc=0"), job.stdout)
        let jobs = try tree(job.id)
        XCTAssertEqual(jobs.count, 2)
        let child = try XCTUnwrap(jobs.first { $0.id != job.id })
        XCTAssertEqual(child.parentID, job.id)
        XCTAssertEqual(child.rootID, job.id)
        XCTAssertEqual(child.depth, 1)
        XCTAssertEqual(child.argv, ["/bin/echo", "from", "the", "child"])
        // The audit has the sub-job with its parent.
        let audit = try runCLI(["audit", "--tenant", "acme"], socket: daemon.socket)
        XCTAssertTrue(audit.stdout.contains("job \(child.id) submitted by job \(job.id)"), audit.stdout)
        // And `job tree` shows it indented under its root.
        let shown = try runCLI(["job", "tree", child.id], socket: daemon.socket)
        XCTAssertEqual(shown.status, 0, shown.stderr)
        XCTAssertTrue(shown.stdout.hasPrefix(job.id), shown.stdout)
        XCTAssertTrue(shown.stdout.contains("\n  \(child.id)  succeeded exit 0  depth 1"), shown.stdout)
    }

    func testThePythonClientWorksFromInsideAJob() throws {
        try start()
        try daemon.createTenant("acme")
        let package = Daemon.repoRoot + "/clients/python/clawpen"
        XCTAssertEqual(try runCLI(["mkdir", "-p", "acme:/home/py/clawpen"], socket: daemon.socket).status, 0)
        for file in try FileManager.default.contentsOfDirectory(atPath: package) where file.hasSuffix(".py") {
            try put("acme", "/home/py/clawpen/\(file)", try String(contentsOfFile: package + "/" + file, encoding: .utf8))
        }
        try put(
            "acme", "/home/agent.py",
            """
            import sys
            sys.path.insert(0, "/home/py")
            import clawpen
            with clawpen.Client() as c:
                me = c.ping()
                child = c.run(None, ["/bin/echo", "py child"])
                print(me["principal"], me["job_id"], child.state, child.stdout.strip(), child.parent_id == me["job_id"], child.depth)
                print([j.depth for j in c.jobs.tree(me["job_id"])])
                try:
                    c.status()
                except clawpen.PermissionDenied as e:
                    print("refused:", e)
            """)
        let job = try daemon.run("acme", ["python3", "/home/agent.py"])
        XCTAssertEqual(job.state, .succeeded, job.stderr)
        XCTAssertTrue(job.stdout.hasPrefix("agent \(job.id) succeeded py child True 1\n[0, 1]\n"), job.stdout)
        XCTAssertTrue(job.stdout.contains("refused:") && job.stdout.contains("principal agent"), job.stdout)
    }

    /// A job waiting for its child lends it its run slot; if the wait is given up (the client
    /// killed, its connection closed) before the child ends, the job counts again at once:
    /// otherwise it would go on running in a slot it lent.
    func testAWaitGivenUpTakesTheLentSlotBack() throws {
        let dir = try Daemon.tempDir()
        let pol = try Daemon.policiesWithOverrides(in: dir, ["acme": "max_concurrent_runs = 1\n"])
        daemon = try Daemon(extraArgs: ["--max-running", "4", "--reserved-slots", "0"], dir: dir, policies: pol).start()
        try daemon.createTenant("acme")
        func routerRunning() throws -> Int64? { try daemon.status()["supervisor"]?["router"]?["running"]?.intValue }
        let script = """
            C=\(Self.client)
            CHILD=$($C submit --detach -- /bin/sleep 20)
            echo child=$CHILD
            timeout -s KILL 2 $C job wait $CHILD
            echo gave up
            sleep 20
            """
        let root = try daemon.detach("acme", ["sh", "-c", script], timeout: 60)
        // While the root waits, it and its child hold one slot of the host's between them.
        XCTAssertTrue(
            try daemon.eventually(10) { try daemon.tenantStatus("acme")["jobs"]?["running"]?.intValue == 2 && routerRunning() == 1 },
            "the waiting root lends its slot: \(String(describing: try? daemon.status()["supervisor"]?["router"]))")
        // The client is killed: its wait is given up, and the root counts again.
        XCTAssertTrue(
            try daemon.eventually(10) { try routerRunning() == 2 },
            "the root took its slot back: \(String(describing: try? daemon.status()["supervisor"]?["router"]))")
        XCTAssertEqual(try daemon.tenantStatus("acme")["jobs"]?["running"]?.intValue, 2)
        _ = try daemon.connect().call(.jobCancel(jobID: root.id))
        XCTAssertTrue(try daemon.eventually(10) { try routerRunning() == 0 }, "nothing counted twice")
    }

    func testATreeThatTriesToGrowTenDeepStopsAtMaxDepth() throws {
        try start()
        try daemon.createTenant("acme")
        // Each level submits the next and waits for it: with max_concurrent_runs 2 this only
        // works because a waiting parent lends its slot.
        try put(
            "acme", "/home/grow.sh",
            """
            echo "level $1"
            if [ "$1" -lt 10 ]; then
                \(Self.client) submit -- /bin/sh /home/grow.sh $(( $1 + 1 ))
                echo "rc=$? at level $1"
            fi
            """)
        let root = try daemon.run("acme", ["sh", "/home/grow.sh", "0"], timeout: 120)
        XCTAssertEqual(root.state, .succeeded, root.stdout + root.stderr)
        for level in 0...3 { XCTAssertTrue(root.stdout.contains("level \(level)\n"), root.stdout) }
        XCTAssertFalse(root.stdout.contains("level 4"), root.stdout)
        XCTAssertTrue(root.stdout.contains("rc=75 at level 3"), "the fourth level is refused with quota_exceeded (75): \(root.stdout)")
        XCTAssertTrue(root.stderr.contains("tree_max_depth"), root.stderr)
        let jobs = try tree(root.id)
        XCTAssertEqual(jobs.map(\.depth), [0, 1, 2, 3])
        XCTAssertEqual(Set(jobs.map(\.state)), [.succeeded])
    }

    func testAJobThatForks200SubJobsStopsAtTreeMaxJobs() throws {
        try start()
        try daemon.createTenant("acme")
        try put(
            "acme", "/home/fork.sh",
            """
            ok=0; refused=0
            i=0
            while [ $i -lt 200 ]; do
                if \(Self.client) submit --detach -- /bin/true >/dev/null 2>/tmp/err; then ok=$((ok+1)); else refused=$((refused+1)); fi
                i=$((i+1))
            done
            echo "ok=$ok refused=$refused"
            tail -1 /tmp/err
            """)
        let root = try daemon.run("acme", ["sh", "/home/fork.sh"], timeout: 240)
        XCTAssertEqual(root.state, .succeeded, root.stderr)
        XCTAssertTrue(root.stdout.hasPrefix("ok=49 refused=151\n"), "the root and 49 sub-jobs make tree_max_jobs 50: \(root.stdout)")
        XCTAssertTrue(root.stdout.contains("tree_max_jobs"), root.stdout)
        XCTAssertEqual(try tree(root.id).count, 50)
        let refused = try daemon.tenantStatus("acme")["refused"]?["tree_max_jobs"]?.intValue
        XCTAssertEqual(refused, 151)
    }

    func testCancelingTheRootStopsEveryDescendant() throws {
        try start(["acme": "max_concurrent_runs = 8\n"])
        try daemon.createTenant("acme")
        try put(
            "acme", "/home/tree.sh",
            """
            if [ "$1" = child ]; then \(Self.client) submit --detach -- /bin/sleep 120 >/dev/null; exec sleep 120; fi
            \(Self.client) submit --detach -- /bin/sleep 120 >/dev/null
            \(Self.client) submit --detach -- /bin/sh /home/tree.sh child >/dev/null
            exec sleep 120
            """)
        let root = try daemon.detach("acme", ["sh", "/home/tree.sh"], timeout: 200)
        XCTAssertTrue(
            daemon.eventually(20) { ((try? self.tree(root.id)) ?? []).filter { $0.state == .running }.count == 4 },
            "root, two children and a grandchild run: \(((try? tree(root.id)) ?? []).map { "\($0.depth):\($0.state)" })")
        XCTAssertEqual(try daemon.tenantStatus("acme")["trees"]?["deepest"]?.intValue, 2)
        let r = try runCLI(["job", "cancel", root.id], socket: daemon.socket)
        XCTAssertNotEqual(r.status, 70, r.stderr)
        XCTAssertTrue(
            daemon.eventually(20) { ((try? self.tree(root.id)) ?? []).allSatisfy { $0.state == .canceled } },
            "\(((try? tree(root.id)) ?? []).map { "\($0.depth):\($0.state)" })")
        let below = try tree(root.id).filter { $0.id != root.id }
        XCTAssertEqual(below.count, 3)
        for job in below { XCTAssertTrue(job.error?.message.hasSuffix("(rule tree_parent_canceled)") == true, "\(job.error?.message ?? "-")") }
        XCTAssertEqual(try daemon.tenantStatus("acme")["trees"]?["live"]?.intValue, 0)
    }

    func testARootThatEndsTakesItsRunningDescendantsWithIt() throws {
        try start()
        try daemon.createTenant("acme")
        let root = try daemon.run("acme", ["sh", "-c", "\(Self.client) submit --detach -- /bin/sleep 120"])
        XCTAssertEqual(root.state, .succeeded, root.stderr)
        let child = root.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        XCTAssertTrue(daemon.eventually(10) { (try? self.daemon.connect().job(.jobGet(jobID: child)).job.state) == .canceled })
        let view = try daemon.connect().job(.jobGet(jobID: child)).job
        XCTAssertEqual(view.error?.code, .quotaExceeded)
        XCTAssertTrue(view.error?.message.hasSuffix("(rule tree_root_ended)") == true, view.error?.message ?? "-")
    }

    func testATreeOfSpinnersIsCanceledAtItsCPUBudgetWhileANeighbourKeepsItsLatency() throws {
        try start(["spin": "tree_cpu_seconds = 2\nmax_concurrent_runs = 4\n"])
        try daemon.createTenant("spin")
        try daemon.createTenant("calm")
        func latencies(_ n: Int) throws -> [Double] {
            try (0..<n).map { _ in
                let t0 = Date()
                XCTAssertEqual(try daemon.run("calm", ["/bin/true"]).state, .succeeded)
                return Date().timeIntervalSince(t0) * 1000
            }.sorted()
        }
        let before = try latencies(20)[10]
        let spinner = "while :; do :; done"
        let root = try daemon.detach(
            "spin",
            [
                "sh", "-c",
                "for i in 1 2 3; do \(Self.client) submit --detach -- /bin/sh -c '\(spinner)' >/dev/null; done; \(spinner)",
            ], timeout: 60)
        let t0 = Date()
        var during: [Double] = []
        // Batches of 5 with a pause: the neighbour stays well inside its jobs_per_minute.
        while Date().timeIntervalSince(t0) < 40 {
            during += try latencies(5)
            if (try? daemon.connect().job(.jobGet(jobID: root.id)).job.state.isFinal) == true { break }
            usleep(50_000)
        }
        let end = try daemon.connect().job(.jobWait(jobID: root.id)).job
        let elapsed = Date().timeIntervalSince(t0)
        XCTAssertEqual(end.state, .canceled)
        XCTAssertEqual(end.error?.code, .quotaExceeded)
        XCTAssertTrue(end.error?.message.hasSuffix("(rule tree_cpu_seconds)") == true, end.error?.message ?? "-")
        XCTAssertLessThan(elapsed, 30, "2 CPU seconds of four spinners take a few seconds of wall time here")
        let jobs = try tree(root.id)
        XCTAssertEqual(jobs.count, 4)
        XCTAssertTrue(jobs.allSatisfy { $0.state == .canceled }, "\(jobs.map(\.state))")
        let cpu = jobs.compactMap(\.cpuMs).reduce(0, +) / 1000
        XCTAssertGreaterThanOrEqual(cpu, 1.5, "the budget was used before the cancel: \(cpu) s")
        XCTAssertLessThan(cpu, 5, "and the tree was stopped soon after it ran out: \(cpu) s")
        let audit = try runCLI(["audit", "--tenant", "spin"], socket: daemon.socket)
        XCTAssertTrue(audit.stdout.contains("tree.canceled") && audit.stdout.contains("tree_cpu_seconds"), audit.stdout)
        // The neighbour kept being served while the spinners ran: this host has no cpu
        // controller (cpu.max, cpu.weight), so four spinners on two cores slow it by the
        // scheduler's share. Once the tree is stopped at its budget, the neighbour is back where
        // it was.
        during.sort()
        let median = during[during.count / 2]
        XCTAssertLessThan(median, before * 8 + 50, "calm's p50: \(before) ms before, \(median) ms during the spin")
        let after = try latencies(20)[10]
        XCTAssertLessThan(after, before * 2 + 20, "calm's p50: \(before) ms before, \(after) ms after the tree was canceled")
    }
}
