import ClawpenTestSupport
import Foundation
import XCTest

/// `clawpen policy check` as an operator runs it: no daemon, a directory of files.
final class PolicyCheckTests: XCTestCase {
    private var shipped: String { Daemon.repoRoot + "/policies" }

    private func scratchCopy() throws -> String {
        let dir = NSTemporaryDirectory() + "clawpen-policy-check-" + UUID().uuidString
        try FileManager.default.copyItem(atPath: shipped, toPath: dir)
        addTeardownBlock { try? FileManager.default.removeItem(atPath: dir) }
        return dir
    }

    /// Replaces the line starting with `prefix` in `file`; returns its 1-based number.
    private func replaceLine(_ file: String, startingWith prefix: String, with text: String) throws -> Int {
        var lines = try String(contentsOfFile: file, encoding: .utf8).components(separatedBy: "\n")
        let i = try XCTUnwrap(lines.firstIndex { $0.hasPrefix(prefix) }, "no line \(prefix) in \(file)")
        lines[i] = text
        try lines.joined(separator: "\n").write(toFile: file, atomically: true, encoding: .utf8)
        return i + 1
    }

    func testShippedPoliciesAreValid() throws {
        let r = try runCLI(["policy", "check", shipped], socket: nil)
        XCTAssertEqual(r.status, 0, r.stdout + r.stderr)
        XCTAssertEqual(
            r.stdout, "policy check: \(shipped): OK (3 tiers, 0 tenant overrides, 2 seccomp profiles, access: 1 rule)\n")

        let j = try runCLI(["policy", "check", "--json", shipped], socket: nil)
        XCTAssertEqual(j.status, 0)
        let json = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(j.stdout.utf8)) as? [String: Any])
        XCTAssertEqual(json["ok"] as? Bool, true)
        XCTAssertEqual(json["tiers"] as? Int, 3)
        XCTAssertEqual((json["problems"] as? [Any])?.count, 0)
    }

    func testDirectoryFromTheEnvironmentAndMissingDirectory() throws {
        setenv("CLAWPEN_POLICIES", shipped, 1)
        defer { unsetenv("CLAWPEN_POLICIES") }
        let r = try runCLI(["policy", "check"], socket: nil)
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stdout.hasPrefix("policy check: \(shipped): OK"), r.stdout)

        let missing = "/nonexistent/clawpen-\(UUID().uuidString)"
        let m = try runCLI(["policy", "check", missing], socket: nil)
        XCTAssertEqual(m.status, 66)
        XCTAssertEqual(m.stderr, "clawpen: policy check: \(missing): policy directory does not exist\n")
    }

    func testProblemsNameFileLineAndKey() throws {
        let dir = try scratchCopy()
        let free = dir + "/tiers/free.toml", pro = dir + "/tiers/pro.toml"
        let unknownLine = try replaceLine(pro, startingWith: "cpu_weight =", with: "cpu_wieght = 4")
        let typeLine = try replaceLine(free, startingWith: "pids_max =", with: "pids_max = \"64\"")
        let valueLine = try replaceLine(free, startingWith: "cpu_seconds_per_hour =", with: "cpu_seconds_per_hour = -5")
        try "tier = \"pro\"\ncommands_deny = [\n    \"/usr/bin/su\",\n    \"sudo\",\n]\n"
            .write(toFile: dir + "/tenants/acme.toml", atomically: true, encoding: .utf8)

        let r = try runCLI(["policy", "check", dir], socket: nil)
        XCTAssertEqual(r.status, 65, r.stdout + r.stderr)
        let lines = r.stdout.split(separator: "\n").map(String.init)
        XCTAssertEqual(lines.count, 6, r.stdout)
        XCTAssertEqual(lines[0], "\(free):\(typeLine): pids_max: expected an integer (write 64 without quotes), found string \"64\"")
        XCTAssertTrue(lines[1].hasPrefix("\(free):\(valueLine): cpu_seconds_per_hour: must be greater than 0 s"), lines[1])
        XCTAssertEqual(lines[2], "\(pro):\(unknownLine): cpu_wieght: unknown key (did you mean 'cpu_weight'?)")
        XCTAssertEqual(
            lines[3],
            "\(pro): cpu_weight: missing key (a tier file must set every limit: max_concurrent_runs, jobs_per_minute, max_queued, memory_max, pids_max, cpu_max, cpu_weight, cpu_seconds_per_hour, timeout_default_s, timeout_max_s, output_max_bytes, network, seccomp_profile, tmp_size, commands_allow, commands_deny, env_allow)"
        )
        XCTAssertTrue(lines[4].hasPrefix("\(dir)/tenants/acme.toml:4: commands_deny: \"sudo\" is not an absolute path or glob"), lines[4])
        XCTAssertEqual(lines[5], "policy check: \(dir): 5 problems")

        let j = try runCLI(["policy", "check", "--json", dir], socket: nil)
        XCTAssertEqual(j.status, 65)
        let json = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(j.stdout.utf8)) as? [String: Any])
        XCTAssertEqual(json["ok"] as? Bool, false)
        let problems = try XCTUnwrap(json["problems"] as? [[String: Any]])
        XCTAssertEqual(problems.count, 5)
        XCTAssertEqual(problems[0]["file"] as? String, free)
        XCTAssertEqual(problems[0]["line"] as? Int, typeLine)
        XCTAssertEqual(problems[0]["key"] as? String, "pids_max")
        XCTAssertTrue(problems[3]["line"] is NSNull)
    }

    func testQuotaDirectory() throws {
        let dir = try scratchCopy()
        let quota = dir + "-quota"
        try FileManager.default.createDirectory(atPath: quota, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(atPath: quota) }
        try "pids_max = 128\n".write(toFile: quota + "/acme.toml", atomically: true, encoding: .utf8)
        let ok = try runCLI(["policy", "check", dir, "--quota-dir", quota], socket: nil)
        XCTAssertEqual(ok.status, 0, ok.stdout)
        XCTAssertTrue(ok.stdout.contains("0 tenant overrides, 1 quota override, 2 seccomp profiles"), ok.stdout)
        try "\n\nmemory_max = \"1Q\"\n".write(toFile: quota + "/acme.toml", atomically: true, encoding: .utf8)
        let bad = try runCLI(["policy", "check", dir, "--quota-dir", quota], socket: nil)
        XCTAssertEqual(bad.status, 65)
        XCTAssertTrue(bad.stdout.hasPrefix("\(quota)/acme.toml:3: memory_max: \"1Q\" is not a size"), bad.stdout)
    }
}
