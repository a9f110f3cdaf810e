import ClawpenTestSupport
import Foundation
import XCTest

/// A tenant's jobs opening connections to its agent socket without end (docs/subjobs.md,
/// "Connections"). Every accepted connection is a descriptor of the supervisor, shared by all
/// tenants; before agent_max_connections one tenant's jobs took the supervisor to its
/// RLIMIT_NOFILE and another tenant's submit took 100 s. The attack is harmless if it works:
/// it only holds connections of the test's own daemon.
final class AgentConnectionLimitTests: XCTestCase {
    var daemon: Daemon!
    static let client = "/opt/clawpen/bin/clawpen"
    static let limit: Int64 = 20

    override func setUpWithError() throws {
        let dir = try Daemon.tempDir()
        let policies = try Daemon.policiesWithOverrides(in: dir, ["flood": "agent_max_connections = \(Self.limit)\n"])
        daemon = try Daemon(dir: dir, policies: policies).start()
        try daemon.createTenant("flood")
        try daemon.createTenant("good")
        try daemon.assertSandboxed("flood")
        _ = try daemon.run("good", ["true"])
    }

    override func tearDown() { daemon?.cleanup() }

    func descriptors() -> Int { (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(daemon.pid)/fd").count) ?? -1 }

    /// Non-blocking connects: past the listener's backlog one fails at once instead of waiting.
    static let holder = """
        import socket, os, sys, time
        path = os.environ["CLAWPEN_SOCKET"]; held = []; failed = 0
        for i in range(int(sys.argv[1])):
            s = socket.socket(socket.AF_UNIX); s.setblocking(False)
            try:
                s.connect(path); held.append(s)
            except OSError:
                failed += 1; s.close()
        print(len(held), failed, flush=True)
        time.sleep(float(sys.argv[2]))
        """

    /// A job at its limit that closes one connection and opens another, over and over: each
    /// time the listener is paused again. Before, each pause was a warning in the journal all
    /// tenants share (300 cycles, 300 lines); now one per 10 s.
    func testGoingToTheLimitAndBackIsLoggedOncePerWindow() throws {
        let cycler = """
            import socket, os, time
            path = os.environ["CLAWPEN_SOCKET"]; held = []
            for i in range(\(Self.limit)):
                s = socket.socket(socket.AF_UNIX); s.connect(path); held.append(s)
            time.sleep(0.5)
            for i in range(300):
                held.pop(0).close()
                s = socket.socket(socket.AF_UNIX); s.connect(path); held.append(s)
                time.sleep(0.005)
            print("cycled", flush=True)
            """
        XCTAssertEqual(try runCLI(["cp", "-", "flood:/home/cycle.py"], socket: daemon.socket, stdin: cycler).status, 0)
        let done = try daemon.run("flood", ["python3", "/home/cycle.py"], timeout: 60)
        XCTAssertEqual(done.stdout, "cycled\n", done.stderr)
        let lines = daemon.log.components(separatedBy: "the tenant's jobs hold agent_max_connections").count - 1
        XCTAssertEqual(lines, 1, "one warning for the window, not one per pause: \(lines)")
        XCTAssertEqual(try daemon.run("good", ["echo", "hi"]).stdout, "hi\n")
    }

    /// Tenants that fill the common limit (half the supervisor's descriptors) do not shut every
    /// other tenant's agent socket: each keeps its floor (16). The supervisor runs with 256
    /// descriptors here, so that one tenant fills the common limit (128) alone.
    func testATenantKeepsItsFloorWhenOthersHoldTheCommonLimit() throws {
        daemon.cleanup()
        let dir = try Daemon.tempDir()
        let policies = try Daemon.policiesWithOverrides(in: dir, ["flood": "agent_max_connections = 1000\n"])
        let d = try Daemon(dir: dir, policies: policies)
        d.launcher = ["/usr/bin/prlimit", "--nofile=256:256", "--"]
        daemon = try d.start()
        try daemon.createTenant("flood")
        try daemon.createTenant("good")
        // A hard limit below the sandbox's 4096 stays (before, every worker's setup failed).
        try daemon.assertSandboxed("flood")
        XCTAssertEqual(try daemon.run("good", ["sh", "-c", "ulimit -Hn"]).stdout, "256\n")
        let clients = try daemon.status()["supervisor"]?["clients"]?["agent_connections"]
        XCTAssertEqual(clients?["all_limit"]?.intValue, 128, "\(String(describing: clients))")
        XCTAssertEqual(clients?["tenant_floor"]?.intValue, 16)
        XCTAssertEqual(try runCLI(["cp", "-", "flood:/home/hold.py"], socket: daemon.socket, stdin: Self.holder).status, 0)
        let job = try daemon.detach("flood", ["python3", "/home/hold.py", "300", "20"], timeout: 60)
        XCTAssertTrue(
            try daemon.eventually(10) { try daemon.tenantStatus("flood")["quotas"]?["agent_connections"]?.intValue == 128 },
            "flood holds the common limit: \(String(describing: try? daemon.tenantStatus("flood")["quotas"]))")
        // The neighbour's job reaches its own agent socket at once, within its floor.
        let started = Date()
        let ping = try daemon.run("good", ["sh", "-c", Self.client + " ping"], timeout: 20)
        XCTAssertEqual(ping.exitCode, 0, ping.stderr + daemon.log.suffix(2000))
        XCTAssertLessThan(Date().timeIntervalSince(started), 10, "not held until the flood ends")
        XCTAssertEqual(try daemon.tenantStatus("flood")["quotas"]?["agent_connections"]?.intValue, 128, "flood got no more meanwhile")
        _ = try? daemon.connect().job(.jobCancel(jobID: job.id))
    }

    func testATenantsJobsCannotTakeTheSupervisorsDescriptors() throws {
        XCTAssertEqual(try runCLI(["cp", "-", "flood:/home/hold.py"], socket: daemon.socket, stdin: Self.holder).status, 0)
        _ = try daemon.run("flood", ["true"])
        let before = descriptors()
        XCTAssertEqual(try daemon.tenantStatus("flood")["limits"]?["agent_max_connections"]?.intValue, Self.limit)

        // 400 connections from one job, held for 15 s.
        let job = try daemon.detach("flood", ["python3", "/home/hold.py", "400", "15"], timeout: 60)
        XCTAssertTrue(
            try daemon.eventually(10) { try daemon.tenantStatus("flood")["quotas"]?["agent_connections"]?.intValue == Self.limit },
            "the tenant holds its limit: \(String(describing: try? daemon.tenantStatus("flood")["quotas"]))")
        usleep(500_000)
        XCTAssertLessThanOrEqual(descriptors() - before, Int(Self.limit) + 8, "the supervisor took no more than the limit's descriptors")
        let clients = try daemon.status()["supervisor"]?["clients"]?["agent_connections"]
        XCTAssertEqual(clients?["held"]?.intValue, Self.limit)
        XCTAssertEqual(clients?["paused_tenants"]?.intValue, 1)
        XCTAssertTrue(daemon.log.contains("agent_max_connections"), "the pause is logged, naming the rule")

        // The neighbour is served as usual, on the control socket and on its own agent socket.
        let started = Date()
        let echo = try daemon.run("good", ["echo", "hi"])
        XCTAssertEqual(echo.stdout, "hi\n")
        let ping = try daemon.run("good", ["sh", "-c", Self.client + " ping"], timeout: 20)
        XCTAssertEqual(ping.exitCode, 0, ping.stderr)
        XCTAssertLessThan(Date().timeIntervalSince(started), 10)

        // When the holder ends, its connections go and the tenant's socket serves again.
        XCTAssertTrue(try daemon.eventually(40) { try daemon.connect().job(.jobGet(jobID: job.id)).job.state.isFinal })
        let counts = try daemon.connect().job(.jobGet(jobID: job.id)).job.stdout.split(separator: " ")
        XCTAssertEqual(counts.count, 2, "the holder reported: \(counts)")
        XCTAssertTrue(try daemon.eventually(10) { try daemon.tenantStatus("flood")["quotas"]?["agent_connections"]?.intValue == 0 })
        let again = try daemon.run("flood", ["sh", "-c", Self.client + " ping"], timeout: 20)
        XCTAssertEqual(again.exitCode, 0, again.stderr)
        XCTAssertEqual(try daemon.status()["supervisor"]?["clients"]?["agent_connections"]?["paused_tenants"]?.intValue, 0)
    }
}
