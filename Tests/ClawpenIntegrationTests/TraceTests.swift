import ClawpenTestSupport
import Foundation
import XCTest

/// W3C trace context end to end: the caller's traceparent (or a new one) becomes the JOB's
/// trace_id, the job's TRACEPARENT (same trace, the job's own span), the audit row of a refusal,
/// and survives a restart of the daemon in the store.
final class TraceTests: XCTestCase {
    var daemon: Daemon!
    override func setUpWithError() throws {
        daemon = try Daemon().start()
        try daemon.createTenant("a")
    }
    override func tearDown() { daemon?.cleanup() }

    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    let traceID = "4bf92f3577b34da6a3ce929d0e0e4736"

    private func submit(_ argv: [String], trace: String?) throws -> JobView {
        var s = SubmitRequest(tenant: .t("a"), argv: argv, wait: true)
        s.trace = trace.flatMap(TraceContext.init(parsing:))
        return try daemon.connect().submit(s).job
    }

    func testTheCallersTraceReachesTheJobAndItsRecord() throws {
        let job = try submit(["sh", "-c", "echo $TRACEPARENT"], trace: parent)
        XCTAssertEqual(job.traceID, traceID)
        let env = job.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        let fields = env.split(separator: "-").map(String.init)
        XCTAssertEqual(fields.count, 4, env)
        XCTAssertEqual(fields[0], "00")
        XCTAssertEqual(fields[1], traceID, "the job is in the caller's trace")
        XCTAssertNotEqual(fields[2], "00f067aa0ba902b7", "the job is a span of its own, not the caller's")
        XCTAssertEqual(fields[2], String(job.id.suffix(16)))
        XCTAssertEqual(fields[3], "01", "the sampled flag travels")
        // Stored: job get, and again after a restart.
        XCTAssertEqual(try daemon.connect().job(.jobGet(jobID: job.id)).job.traceID, traceID)
        _ = daemon.stop()
        try daemon.start()
        XCTAssertEqual(try daemon.connect().job(.jobGet(jobID: job.id)).job.traceID, traceID)
    }

    func testASubmitWithoutATraceGetsANewOne() throws {
        let job = try submit(["sh", "-c", "echo $TRACEPARENT"], trace: nil)
        let made = try XCTUnwrap(job.traceID)
        XCTAssertEqual(made.count, 32)
        XCTAssertTrue(job.stdout.hasPrefix("00-\(made)-"), "the job's TRACEPARENT carries the new trace: \(job.stdout)")
        let other = try submit(["true"], trace: nil)
        XCTAssertNotEqual(other.traceID, made, "each submit without a trace starts a new one")
    }

    func testAnInvalidTraceparentIsRefusedNamingTheField() throws {
        for bad in [
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7", "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", "hello",
        ] {
            let raw = try RawSocket(daemon.socket)
            raw.sendFrame(Array(#"{"type":"submit","id":1,"tenant":"a","argv":["true"],"traceparent":"\#(bad)"}"#.utf8))
            let reply = raw.readFrame()
            XCTAssertEqual(reply?["error"]?["code"]?.stringValue, "invalid_request", bad)
            XCTAssertTrue(reply?["error"]?["message"]?.stringValue?.contains("traceparent") == true, "\(reply ?? .null)")
        }
        let cli = try runCLI(["submit", "--tenant", "a", "--traceparent", "nope", "--", "true"], socket: daemon.socket)
        XCTAssertEqual(cli.status, 64, cli.stderr)
        XCTAssertTrue(cli.stderr.contains("--traceparent"), cli.stderr)
    }

    func testTheCLIPassesItsTraceAndARefusalIsAuditedWithIt() throws {
        let r = try runCLI(["submit", "--tenant", "a", "--json", "--traceparent", parent, "--", "true"], socket: daemon.socket)
        XCTAssertEqual(r.status, 0, r.stderr)
        let o = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any]
        XCTAssertEqual(o?["trace_id"] as? String, traceID)
        // A job that runs clawpen continues its trace through $TRACEPARENT: here the CLI's own env.
        let p = Process()
        p.executableURL = URL(fileURLWithPath: Daemon.clawpen)
        p.arguments = ["submit", "--tenant", "a", "--json", "--socket", daemon.socket, "--", "true"]
        p.environment = ["TRACEPARENT": "00-11111111111111111111111111111111-2222222222222222-00"]
        let out = Pipe()
        p.standardOutput = out
        try p.run()
        p.waitUntilExit()
        let inherited = try JSONSerialization.jsonObject(with: out.fileHandleForReading.readDataToEndOfFile()) as? [String: Any]
        XCTAssertEqual(inherited?["trace_id"] as? String, "11111111111111111111111111111111")
        // A refusal (timeout over the tier's maximum) is audited with the request's trace id.
        let refused = try runCLI(["submit", "--tenant", "a", "--timeout", "100000", "--traceparent", parent, "--", "true"], socket: daemon.socket)
        XCTAssertEqual(refused.status, 75, refused.stderr)
        let audit = try daemon.connect().call(.audit(tenant: .t("a"), since: nil, limit: 10))
        let events = audit["events"]?.arrayValue ?? []
        XCTAssertTrue(
            events.contains { $0["action"]?.stringValue == "submit.refused" && $0["trace_id"]?.stringValue == traceID },
            "\(events)")
    }
}
