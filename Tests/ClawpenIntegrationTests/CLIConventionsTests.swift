import ClawpenTestSupport
import Foundation
import XCTest

/// The client as an operator's scripts use it: `version`, `ping`, `status --watch` into a pipe,
/// and a `clawpen` that needs no Swift toolchain on the host (a static executable; the daemon is
/// `clawpen-serve`, which `clawpen serve` runs).
final class CLIConventionsTests: XCTestCase {
    var daemon: Daemon!

    override func setUpWithError() throws {
        daemon = try Daemon().start()
        try daemon.createTenant("a")
    }
    override func tearDown() { daemon?.cleanup() }

    private func cli(_ args: [String]) throws -> CLIResult { try runCLI(args, socket: daemon.socket) }

    /// `clawpen submit`'s hand parser of the common shapes (FastSubmit) against ArgumentParser
    /// (CLAWPEN_NO_FAST_SUBMIT=1): the same job for every shape, the same message and status for
    /// every mistake.
    func testTheFastSubmitParserAgreesWithArgumentParser() throws {
        func both(_ args: [String]) throws -> (fast: CLIResult, slow: CLIResult) {
            let fast = try cli(["submit"] + args)
            setenv("CLAWPEN_NO_FAST_SUBMIT", "1", 1)
            defer { unsetenv("CLAWPEN_NO_FAST_SUBMIT") }
            return (fast, try cli(["submit"] + args))
        }
        let trace = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        let jobs: [[String]] = [
            ["--tenant", "a", "--detach", "--json", "--", "sh", "-c", "echo hi"],
            ["--tenant=a", "--env", "AGENT_A=1", "--env=AGENT_B=2=3", "--cwd", "/tmp", "--timeout", "7.5", "--detach", "--json", "--", "env", "--", "x"],
            ["-it", "--tenant", "a", "--detach", "--json", "--", "cat"],
            ["-i", "--tty", "--tenant", "a", "--detach", "--json", "--", "cat"],
            ["--json", "--traceparent", trace, "--tenant", "a", "--detach", "--", "true"],
            ["--socket", daemon.socket, "--tenant", "a", "--json", "--detach", "--", "-x", "--json"],
        ]
        for args in jobs {
            let (fast, slow) = try both(args)
            XCTAssertEqual(fast.status, 0, "\(args): \(fast.stderr)")
            XCTAssertEqual(slow.status, 0, "\(args): \(slow.stderr)")
            let f = try JSONSerialization.jsonObject(with: Data(fast.stdout.utf8)) as? [String: Any] ?? [:]
            let s = try JSONSerialization.jsonObject(with: Data(slow.stdout.utf8)) as? [String: Any] ?? [:]
            for key in ["tenant", "argv", "cwd", "timeout_s", "stdin_open", "tty"] {
                XCTAssertEqual("\(f[key] ?? "-")", "\(s[key] ?? "-")", "\(args): \(key)")
            }
            if args.contains("--traceparent") { XCTAssertEqual(f["trace_id"] as? String, "0af7651916cd43dd8448eb211c80319c") }
            // The tier runs two jobs at once: the jobs that wait for input go.
            for id in [f["id"], s["id"]].compactMap({ $0 as? String }) { _ = try cli(["job", "cancel", id]) }
        }
        // A job that runs: its output and exit status, both ways.
        let (fast, slow) = try both(["--tenant", "a", "--", "sh", "-c", "echo out; exit 3"])
        XCTAssertEqual(fast.status, 3)
        XCTAssertEqual(slow.status, 3)
        XCTAssertEqual(fast.stdout, "out\n")
        XCTAssertEqual(slow.stdout, "out\n")
        // Mistakes take ArgumentParser's path either way: the same words, the same status.
        let mistakes: [[String]] = [
            ["--tenant", "a", "--timout", "5", "--", "true"],
            ["--tenant", "a", "--env", "NOEQ", "--", "true"],
            ["--tenant", "a", "--tenant", "b", "--", "true"],
            ["--tenant", "a", "--timeout", "soon", "--", "true"],
            ["--tenant", "--", "true"],
            ["--tenant", "a", "-i", "--stdin-file", "/etc/hostname", "--", "cat"],
            ["--tenant", "a", "--traceparent", "00-zz", "--", "true"],
            ["--tenant", "a", "--"],
            ["--tenant", "a", "--", "true", "--help"],
            ["--help", "--", "true"],
        ]
        for args in mistakes {
            let (fast, slow) = try both(args)
            XCTAssertEqual(fast.status, slow.status, "\(args)")
            XCTAssertEqual(fast.stderr, slow.stderr, "\(args)")
            XCTAssertEqual(fast.stdout, slow.stdout, "\(args)")
        }
    }

    func testPingAnswersZeroAndSixtyNineWhenNobodyListens() throws {
        let up = try cli(["ping"])
        XCTAssertEqual(up.status, 0, up.stderr)
        XCTAssertTrue(up.stdout.hasPrefix("pong from clawpen "), up.stdout)
        let json = try cli(["ping", "--json"])
        XCTAssertEqual(json.status, 0, json.stderr)
        let pong = try JSONSerialization.jsonObject(with: Data(json.stdout.utf8)) as? [String: Any]
        XCTAssertEqual(pong?["type"] as? String, "pong")
        XCTAssertNotNil(pong?["round_trip_ms"] as? Double)
        let down = try runCLI(["ping"], socket: daemon.dir + "/nobody.sock")
        XCTAssertEqual(down.status, 69, "EX_UNAVAILABLE: \(down.stderr)")
        XCTAssertTrue(down.stderr.hasPrefix("clawpen: unavailable: "), down.stderr)
    }

    func testVersionNamesClientAndDaemon() throws {
        let v = try cli(["version", "--json"])
        XCTAssertEqual(v.status, 0, v.stderr)
        let o = try JSONSerialization.jsonObject(with: Data(v.stdout.utf8)) as? [String: Any]
        let client = o?["client"] as? String
        XCTAssertNotNil(client)
        XCTAssertEqual(o?["daemon"] as? String, client, "the daemon answered with its version")
        let alone = try runCLI(["version"], socket: daemon.dir + "/nobody.sock")
        XCTAssertEqual(alone.status, 0)
        XCTAssertTrue(alone.stdout.contains("daemon not reachable"), alone.stdout)
        XCTAssertEqual(try cli(["--version"]).stdout, "\(client ?? "?")\n")
    }

    /// Into a pipe `status --watch --json` writes JSON lines and no terminal escapes.
    func testStatusWatchIntoAPipeIsJSONLinesWithoutEscapes() throws {
        let text = try runCLIFor(2.3, ["status", "--watch", "--json", "--socket", daemon.socket])
        XCTAssertFalse(text.contains("\u{1B}"), "no escape sequences into a pipe")
        let lines = text.split(separator: "\n")
        XCTAssertGreaterThanOrEqual(lines.count, 2, text)
        for line in lines {
            let o = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any]
            XCTAssertNotNil(o?["supervisor"], String(line))
        }
        // Plain text into a pipe: no escapes either.
        let plainText = try runCLIFor(1.3, ["status", "--watch", "--socket", daemon.socket])
        XCTAssertTrue(plainText.contains("TENANT"), plainText)
        XCTAssertFalse(plainText.contains("\u{1B}"))
    }

    /// The client runs with the Swift toolchain's directory hidden (an empty tmpfs over it, in a
    /// mount namespace of the test's own): it loads no library from it.
    func testTheClientRunsWithTheToolchainHidden() throws {
        guard geteuid() == 0 else { throw XCTSkip("hiding the toolchain takes a mount namespace (root)") }
        let toolchain = try swiftRuntimeDirectory()
        let script = """
            mount -t tmpfs none '\(toolchain)' && test ! -e '\(toolchain)/libswiftCore.so' && \
            exec '\(Daemon.clawpen)' ping --socket '\(daemon.socket)'
            """
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/unshare")
        p.arguments = ["--mount", "--propagation", "private", "/bin/sh", "-c", script]
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        try p.run()
        p.waitUntilExit()
        let stdout = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        let stderr = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        XCTAssertEqual(p.terminationStatus, 0, "clawpen ping with \(toolchain) hidden: \(stdout) \(stderr)")
        XCTAssertTrue(stdout.hasPrefix("pong from clawpen"), stdout)
        // The control: the daemon binary does need the directory in a debug build, so the tmpfs
        // really hid what a dynamic Swift binary loads.
        let control = Process()
        control.executableURL = URL(fileURLWithPath: "/usr/bin/unshare")
        control.arguments = [
            "--mount", "--propagation", "private", "/bin/sh", "-c",
            "mount -t tmpfs none '\(toolchain)' && exec '\(Daemon.buildDir)/clawpen-serve' --help",
        ]
        control.standardOutput = FileHandle.nullDevice
        control.standardError = FileHandle.nullDevice
        try control.run()
        control.waitUntilExit()
        if try linksSwiftDynamically(Daemon.buildDir + "/clawpen-serve") {
            XCTAssertNotEqual(control.terminationStatus, 0, "a dynamically linked Swift binary cannot start with \(toolchain) hidden")
        }
    }

    /// Where the dynamic Swift runtime lives (ldd of clawpen-serve): what a host without the
    /// toolchain lacks.
    private func swiftRuntimeDirectory() throws -> String {
        let lines = try ldd(Daemon.buildDir + "/clawpen-serve")
        guard let line = lines.first(where: { $0.contains("libswiftCore.so =>") }),
            let path = line.components(separatedBy: "=> ").last?.components(separatedBy: " (").first
        else { throw XCTSkip("clawpen-serve does not link libswiftCore.so dynamically here: nothing to hide") }
        return (path as NSString).deletingLastPathComponent
    }

    private func linksSwiftDynamically(_ exe: String) throws -> Bool { try ldd(exe).contains { $0.contains("libswiftCore.so") } }

    private func ldd(_ exe: String) throws -> [String] {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/ldd")
        p.arguments = [exe]
        let out = Pipe()
        p.standardOutput = out
        p.standardError = FileHandle.nullDevice
        try p.run()
        p.waitUntilExit()
        return String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self).split(separator: "\n").map(String.init)
    }
}
