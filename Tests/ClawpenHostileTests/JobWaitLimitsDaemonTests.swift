import ClawpenClient
import ClawpenProtocol
import ClawpenTestSupport
import ClawpenWire
import Foundation
import XCTest

/// Waits are bounded per connection and for all of them, and a connection's waits go with it
/// (`serve --client-waits`, `--all-clients-waits`; JobWaiters.swift). Before, a million
/// pipelined `job.wait`s of one sleeping job held 160 MiB until the job ended, whether or not
/// their connection was still there.
final class JobWaitLimitsDaemonTests: XCTestCase {
    var daemon: Daemon!
    var jobID = ""

    override func setUpWithError() throws {
        daemon = try Daemon(extraArgs: ["--client-waits", "50", "--all-clients-waits", "80"]).start()
        try daemon.createTenant("waited", tier: "pro")
        jobID = try daemon.detach("waited", ["sleep", "60"], timeout: 120).id
    }
    override func tearDown() { daemon?.cleanup() }

    private func waits(_ ids: Range<Int>, of job: String) -> [UInt8] {
        var all: [UInt8] = []
        for i in ids {
            all += Framing.frame(JSONValue.object([("type", .string("job.wait")), ("id", .int(Int64(i))), ("job_id", .string(job))]).serialized())
        }
        return all
    }

    private func held() throws -> Int { Int(try daemon.status()["supervisor"]?["clients"]?["waits"]?["held"]?.intValue ?? -1) }

    /// Reads `n` replies, each a refusal of the wait with that id, by that rule.
    private func expectRefusals(_ s: RawSocket, ids: Range<Int>, quota: String, limit: Int, file: StaticString = #filePath, line: UInt = #line) {
        for i in ids {
            guard let reply = s.readFrame() else { return XCTFail("the refusal of wait \(i) did not come", file: file, line: line) }
            XCTAssertEqual(reply["id"]?.intValue, Int64(i), "refusals come at once, in order", file: file, line: line)
            XCTAssertEqual(reply["error"]?["code"]?.stringValue, "quota_exceeded", file: file, line: line)
            XCTAssertEqual(reply["error"]?["quota"]?.stringValue, quota, file: file, line: line)
            XCTAssertEqual(reply["error"]?["limit"]?.stringValue, String(limit), file: file, line: line)
            let message = reply["error"]?["message"]?.stringValue ?? ""
            XCTAssertTrue(message.contains("--\(quota.replacingOccurrences(of: "_", with: "-"))"), "names the flag: \(message)", file: file, line: line)
        }
    }

    func testWaitsAreBoundedPerConnectionAndInAllAndGoWithTheirConnection() throws {
        var a: RawSocket? = try RawSocket(daemon.socket)
        a!.send(waits(0..<60, of: jobID))
        expectRefusals(a!, ids: 50..<60, quota: "client_waits", limit: 50)
        XCTAssertEqual(try held(), 50)

        let b = try RawSocket(daemon.socket)
        b.send(waits(0..<40, of: jobID))
        expectRefusals(b, ids: 30..<40, quota: "all_clients_waits", limit: 80)
        XCTAssertEqual(try held(), 80)
        let status = try daemon.status()["supervisor"]?["clients"]?["waits"]
        XCTAssertEqual(status?["refused"]?.intValue, 20)
        XCTAssertEqual(status?["client_limit"]?.intValue, 50)
        XCTAssertEqual(status?["all_clients_limit"]?.intValue, 80)

        // A's fifty go with it; the job is untouched.
        a = nil // closes it
        XCTAssertTrue(try daemon.eventually { try held() == 30 }, "a closed connection's waits are let go")
        XCTAssertEqual(try daemon.connect().job(.jobGet(jobID: jobID)).job.state, .running)

        // Room again: C's fifty are all taken, and everyone left hears of the end.
        let c = try RawSocket(daemon.socket)
        c.send(waits(100..<150, of: jobID))
        XCTAssertTrue(try daemon.eventually { try held() == 80 })
        // The cancel goes through though no wait is left: its caller hears the job as it is.
        let asked = try daemon.connect().job(.jobCancel(jobID: jobID)).job
        XCTAssertEqual(asked.state, .running)
        for (s, ids) in [(b, 0..<30), (c, 100..<150)] {
            for i in ids {
                guard let reply = s.readFrame() else { return XCTFail("wait \(i) was not answered") }
                XCTAssertEqual(reply["id"]?.intValue, Int64(i))
                XCTAssertEqual(reply["job"]?["state"]?.stringValue, "canceled")
            }
        }
        XCTAssertTrue(try daemon.eventually { try held() == 0 })
    }

    /// Waits as many as the default limits let in, all of one job: each is booked at the same
    /// cost however many there are. Before, the waits lived in a `lazy var` of the supervisor
    /// (a lazy property has no in-place mutation: each `add` copied the table and the job's
    /// list of waits), so booking them was quadratic: in a standalone check of the same shape,
    /// 4,000 waits of one job took 32 ms and 8,000 took 305 ms, all of it the event loop's time. Here 16 connections book 4,096 each (the default per connection, 65,536 in all:
    /// the default for all) while another client pings.
    func testManyWaitsOfOneJobCostEveryOtherClientNothing() throws {
        daemon.cleanup()
        daemon = try Daemon().start()
        try daemon.createTenant("waited", tier: "pro")
        let job = try daemon.detach("waited", ["sleep", "120"], timeout: 300).id
        let perClient = 4096, clients = 16
        var sockets: [RawSocket] = []
        for c in 0..<clients {
            let s = try RawSocket(daemon.socket)
            s.send(waits((c * perClient)..<((c + 1) * perClient), of: job))
            sockets.append(s)
        }
        let pinger = try daemon.connect()
        var slowest = 0.0
        let sent = Date()
        let deadline = sent.addingTimeInterval(60)
        var booked = 0
        while Date() < deadline {
            let t0 = Date()
            _ = try pinger.call(.ping)
            slowest = max(slowest, Date().timeIntervalSince(t0))
            booked = try held()
            if booked == perClient * clients { break }
            usleep(5_000)
        }
        let booking = Date().timeIntervalSince(sent)
        XCTAssertEqual(booked, perClient * clients, "every wait booked (the default limits let them all in)")
        // Quadratic, the booking took 18.5 s here (debug build); now 3.8 s, the pace of 1,000
        // requests a second per connection (ClientPacing) and not the table.
        XCTAssertLessThan(booking, 15, "booking 65,536 waits")
        // Generous for a debug build on a loaded machine.
        XCTAssertLessThan(slowest, 2.0, "the slowest ping while the waits were booked")
        // And they go as cheaply: the job's end answers all of them.
        XCTAssertEqual(try daemon.connect().job(.jobCancel(jobID: job)).job.state, .running)
        for (c, s) in sockets.enumerated() {
            for i in 0..<perClient {
                guard let reply = s.readFrame() else { return XCTFail("wait \(c * perClient + i) was not answered") }
                if i == perClient - 1 { XCTAssertEqual(reply["job"]?["state"]?.stringValue, "canceled") }
            }
        }
    }

    func testASubmitsOwnWaitIsNeverRefused() throws {
        let a = try RawSocket(daemon.socket)
        a.send(waits(0..<50, of: jobID))
        XCTAssertTrue(try daemon.eventually { try held() == 50 })
        // Same connection, at its limit: a submit that waits is accepted and answered.
        let submit = JSONValue.object([
            ("type", .string("submit")), ("id", .int(999)), ("tenant", .string("waited")),
            ("argv", .array([.string("true")])), ("wait", .bool(true)),
        ])
        a.sendFrame(submit.serialized())
        guard let reply = a.readFrame() else { return XCTFail("the submit was not answered") }
        XCTAssertEqual(reply["id"]?.intValue, 999)
        XCTAssertEqual(reply["job"]?["state"]?.stringValue, "succeeded", "\(reply)")
    }

    func testTheFlagsAreChecked() throws {
        for flag in ["--client-waits=0", "--all-clients-waits=-3"] {
            let bad = try Daemon(extraArgs: [flag])
            defer { bad.cleanup() }
            let r = try runCLI(bad.serveArguments, socket: nil)
            XCTAssertEqual(r.status, 64, flag)
            XCTAssertTrue(r.stderr.contains("must be an integer >= 1"), r.stderr)
        }
    }
}
