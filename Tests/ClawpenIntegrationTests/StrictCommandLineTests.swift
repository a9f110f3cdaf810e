import ClawpenTestSupport
import Foundation
import XCTest

/// `submit` and `policy explain` take the command only after `--`: a misspelt option before it
/// is a usage error with a suggestion, never a job that runs the misspelling. Against the real
/// daemon, with a marker file that the job would write if it ran.
final class StrictCommandLineTests: XCTestCase {
    var daemon: Daemon!

    override func setUpWithError() throws {
        daemon = try Daemon().start()
        try daemon.createTenant("a")
    }
    override func tearDown() { daemon?.cleanup() }

    private func cli(_ args: [String]) throws -> CLIResult { try runCLI(args, socket: daemon.socket) }

    /// The job's /home/marker on the host.
    private var marker: String { daemon.workspaceRoot + "/a/home/marker" }
    private let writeMarker = ["sh", "-c", "echo ran > /home/marker"]

    private func assertNothingRan(file: StaticString = #filePath, line: UInt = #line) throws {
        XCTAssertFalse(FileManager.default.fileExists(atPath: marker), "the job ran", file: file, line: line)
        let jobs = try daemon.tenantStatus("a")["jobs"]
        for state in ["queued", "running", "succeeded", "failed"] {
            XCTAssertEqual(jobs?[state]?.intValue, 0, "no job was \(state)", file: file, line: line)
        }
    }

    func testAMisspeltOptionIsAUsageErrorWithASuggestionAndNothingRuns() throws {
        let r = try cli(["submit", "--tenant", "a", "--timout", "5", "--"] + writeMarker)
        XCTAssertEqual(r.status, 64, "EX_USAGE: \(r.stderr)")
        XCTAssertTrue(r.stderr.contains("Unknown option '--timout'"), r.stderr)
        XCTAssertTrue(r.stderr.contains("Did you mean '--timeout'?"), r.stderr)
        XCTAssertEqual(r.stdout, "")
        try assertNothingRan()
        // The control: spelt right, the same line runs the job and writes the marker.
        let ok = try cli(["submit", "--tenant", "a", "--timeout", "5", "--"] + writeMarker)
        XCTAssertEqual(ok.status, 0, ok.stderr)
        XCTAssertEqual(try String(contentsOfFile: marker, encoding: .utf8), "ran\n")
    }

    func testAnyUnknownOptionBeforeTheTerminatorIsRefused() throws {
        for bad in [["--detatch"], ["--env=A=b", "--cwdd", "/home"], ["-x"], ["--idempotency", "k"]] {
            let r = try cli(["submit", "--tenant", "a"] + bad + ["--"] + writeMarker)
            XCTAssertEqual(r.status, 64, "\(bad): \(r.stderr)")
            XCTAssertTrue(r.stderr.contains("Unknown option"), "\(bad): \(r.stderr)")
        }
        XCTAssertTrue(try cli(["submit", "--tenant", "a", "--detatch", "--", "true"]).stderr.contains("Did you mean '--detach'?"))
        try assertNothingRan()
    }

    func testACommandWithoutTheTerminatorIsRefused() throws {
        let r = try cli(["submit", "--tenant", "a", "touch", "/home/marker"])
        XCTAssertEqual(r.status, 64, r.stderr)
        XCTAssertTrue(r.stderr.contains("unexpected arguments: 'touch', '/home/marker'"), r.stderr)
        XCTAssertTrue(r.stderr.contains("-- [<cmd> ...]"), "the usage line shows where the command goes: \(r.stderr)")
        let none = try cli(["submit", "--tenant", "a", "--"])
        XCTAssertEqual(none.status, 64)
        XCTAssertTrue(none.stderr.contains("no command given"), none.stderr)
        try assertNothingRan()
    }

    func testEverythingAfterTheTerminatorIsTheCommandsOwn() throws {
        let r = try cli(["submit", "--tenant", "a", "--", "echo", "--timout", "--", "-x"])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertEqual(r.stdout, "--timout -- -x\n")
    }

    func testPolicyExplainIsAsStrict() throws {
        let r = try cli(["policy", "explain", "--tenant", "a", "--evn", "A=b", "--", "ls"])
        XCTAssertEqual(r.status, 64, r.stderr)
        XCTAssertTrue(r.stderr.contains("Did you mean '--env'?"), r.stderr)
        XCTAssertEqual(r.stdout, "", "nothing was asked of the daemon")
        let stray = try cli(["policy", "explain", "--tenant", "a", "ls"])
        XCTAssertEqual(stray.status, 64, stray.stderr)
        XCTAssertTrue(stray.stderr.contains("nexpected argument 'ls'"), stray.stderr)
        let ok = try cli(["policy", "explain", "--tenant", "a", "--", "ls", "--evn"])
        XCTAssertEqual(ok.status, 0, ok.stderr)
        XCTAssertTrue(ok.stdout.contains("command: ls --evn"), ok.stdout)
    }
}
