import ClawpenClient
import ClawpenProtocol
import ClawpenTestSupport
import Foundation
import XCTest

/// Tool permissions, explain, set-quota, reload, the CPU budget and the audit log, against the
/// real daemon through the CLI.
final class PolicyDaemonTests: XCTestCase {
    var daemon: Daemon!

    override func tearDown() { daemon?.cleanup() }

    func start(_ overrides: [String: String] = [:], dir: String? = nil) throws {
        let d = try dir ?? Daemon.tempDir()
        let pol = try Daemon.policiesWithOverrides(in: d, overrides)
        daemon = try Daemon(dir: d, policies: pol).start()
    }

    func cli(_ args: [String]) throws -> CLIResult { try runCLI(args, socket: daemon.socket) }

    func testADeniedCommandIsPolicyDeniedNamingTheRule() throws {
        try start()
        try daemon.createTenant("a")
        let r = try cli(["submit", "--tenant", "a", "--json", "--", "su", "-c", "id"])
        XCTAssertEqual(r.status, 77, "policy_denied exits 77")
        XCTAssertTrue(r.stderr.contains("policy_denied"), r.stderr)
        XCTAssertTrue(r.stderr.contains("commands_deny \"/usr/bin/su\""), "the rule, with its file and line: \(r.stderr)")
        let err = try JSONValue.parse(Array((r.stdout.split(separator: "\n").last ?? "").utf8))["error"]
        XCTAssertEqual(err?["code"]?.stringValue, "policy_denied")
        XCTAssertTrue(err?["rule"]?.stringValue?.contains("tiers/free.toml:") == true, "\(String(describing: err))")
        // A command outside commands_allow is denied by default.
        let outside = try cli(["submit", "--tenant", "a", "--", "/opt/swift/usr/bin/swift", "--version"])
        XCTAssertEqual(outside.status, 77, outside.stderr)
        XCTAssertTrue(outside.stderr.contains("commands_allow"), outside.stderr)
        // Allowed ones run.
        XCTAssertEqual(try cli(["submit", "--tenant", "a", "--", "echo", "ok"]).stdout, "ok\n")
    }

    func testEnvironmentVariablesPassOnlyByEnvAllow() throws {
        try start()
        try daemon.createTenant("a")
        let preload = try cli(["submit", "--tenant", "a", "--env", "LD_PRELOAD=/home/x.so", "--", "true"])
        XCTAssertEqual(preload.status, 77)
        XCTAssertTrue(preload.stderr.contains("LD_"), preload.stderr)
        let unlisted = try cli(["submit", "--tenant", "a", "--env", "SECRET_TOKEN=1", "--", "true"])
        XCTAssertEqual(unlisted.status, 77, "free's env_allow does not list SECRET_TOKEN")
        XCTAssertTrue(unlisted.stderr.contains("env_allow"), unlisted.stderr)
        let ok = try cli(["submit", "--tenant", "a", "--env", "TZ=UTC", "--", "sh", "-c", "echo $TZ"])
        XCTAssertEqual(ok.status, 0, ok.stderr)
        XCTAssertEqual(ok.stdout, "UTC\n")
    }

    func testExplainShowsTheDecisionAndItsRulesWithoutRunning() throws {
        try start()
        try daemon.createTenant("a")
        let allowed = try cli(["policy", "explain", "--tenant", "a", "--", "python3", "-c", "print(1)"])
        XCTAssertEqual(allowed.status, 0, allowed.stderr)
        XCTAssertTrue(allowed.stdout.contains("ALLOWED"), allowed.stdout)
        XCTAssertTrue(allowed.stdout.contains("/usr/bin/python3"), allowed.stdout)
        XCTAssertTrue(allowed.stdout.contains("commands_allow \"/usr/bin/*\" (tiers/free.toml:"), allowed.stdout)
        let denied = try cli(["policy", "explain", "--tenant", "a", "--json", "--", "/bin/mount", "-t", "tmpfs", "x", "/tmp"])
        XCTAssertEqual(denied.status, 77)
        let d = try JSONValue.parse(Array(denied.stdout.utf8))["decision"]
        XCTAssertEqual(d?["allowed"]?.boolValue, false)
        XCTAssertTrue(d?["refusing_rule"]?.stringValue?.contains("commands_deny") == true)
        XCTAssertGreaterThan(d?["steps"]?.arrayValue?.count ?? 0, 1, "every rule that took part is listed")
        let st = try daemon.tenantStatus("a")
        XCTAssertEqual(st["jobs"]?["succeeded"]?.intValue, 0, "explain runs nothing")
    }

    func testSetQuotaIsCheckedAppliedAndSurvivesARestart() throws {
        try start()
        try daemon.createTenant("a")
        let set = try cli(["tenant", "set-quota", "a", "--max-queued", "5", "--jobs-per-minute", "7", "--memory-max", "512M"])
        XCTAssertEqual(set.status, 0, set.stderr)
        var lim = try daemon.tenantStatus("a")["limits"]
        XCTAssertEqual(lim?["max_queued"]?.intValue, 5)
        XCTAssertEqual(lim?["jobs_per_minute"]?.intValue, 7)
        XCTAssertEqual(lim?["memory_max"]?.intValue, 512 << 20)
        let bad = try cli(["tenant", "set-quota", "a", "--cpu-max", "-1"])
        XCTAssertEqual(bad.status, 64)
        XCTAssertTrue(bad.stderr.contains("cpu_max"), bad.stderr)
        XCTAssertEqual(try cli(["tenant", "set-quota", "nobody-here", "--max-runs", "1"]).status, 64, "unknown tenant")
        // Restart on the same state dir: the override is still there.
        daemon.stop()
        daemon = try Daemon(dir: daemon.dir, policies: daemon.policies).start()
        lim = try daemon.tenantStatus("a")["limits"]
        XCTAssertEqual(lim?["jobs_per_minute"]?.intValue, 7, "set-quota survives a restart")
        let audit = try cli(["audit", "--tenant", "a", "--json"])
        XCTAssertTrue(audit.stdout.contains("tenant.set_quota"), audit.stdout)
    }

    func testABadReloadKeepsTheOldPolicyAndSaysWhy() throws {
        try start()
        try daemon.createTenant("a")
        let free = daemon.policies + "/tiers/free.toml"
        let original = try String(contentsOfFile: free, encoding: .utf8)
        try (original + "\nmax_queud = 3\n").write(toFile: free, atomically: true, encoding: .utf8)
        let r = try cli(["policy", "reload"])
        XCTAssertEqual(r.status, 64)
        XCTAssertTrue(r.stderr.contains("free.toml") && r.stderr.contains("max_queud"), "names the file and the key: \(r.stderr)")
        XCTAssertTrue(r.stderr.contains("old policy"), r.stderr)
        kill(daemon.pid, SIGHUP)
        XCTAssertTrue(daemon.eventually { self.daemon.log.contains("policy reload failed") })
        XCTAssertEqual(try daemon.run("a", ["true"]).state, .succeeded, "still serving with the old policy")
        // A good change applies at once.
        try original.replacingOccurrences(of: "max_queued = 1000", with: "max_queued = 77").write(toFile: free, atomically: true, encoding: .utf8)
        XCTAssertEqual(try cli(["policy", "reload"]).status, 0)
        XCTAssertEqual(try daemon.tenantStatus("a")["limits"]?["max_queued"]?.intValue, 77)
    }

    func testTheCPUBudgetCountsTheWholeTenant() throws {
        try start(["spin": "cpu_seconds_per_hour = 0.05\n"])
        try daemon.createTenant("spin")
        // Two processes spinning (~0.3 s each here): the tenant as a whole is far over 0.05 s.
        let job = try daemon.run("spin", ["sh", "-c", "spin() { i=0; while [ $i -lt 150000 ]; do i=$((i+1)); done; }; spin & spin; wait"])
        XCTAssertEqual(job.state, .succeeded, job.stderr)
        let r = try cli(["submit", "--tenant", "spin", "--json", "--", "true"])
        XCTAssertEqual(r.status, 75, "over the budget: \(r.stdout) \(r.stderr)")
        let err = try JSONValue.parse(Array((r.stdout.split(separator: "\n").last ?? "").utf8))["error"]
        XCTAssertEqual(err?["quota"]?.stringValue, "cpu_seconds_per_hour")
        XCTAssertGreaterThan(err?["retry_after_ms"]?.intValue ?? 0, 0)
    }
}
