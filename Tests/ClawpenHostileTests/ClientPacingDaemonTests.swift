import ClawpenClient
import ClawpenProtocol
import ClawpenTestSupport
import ClawpenWire
import Foundation
import XCTest

/// A client that floods the socket while others are served is held to its rate
/// (`serve --client-requests-per-second`; docs/reliability.md, "Fairness between clients"):
/// slowed, every request still answered in order, the others served meanwhile; alone, it is not
/// held at all.
final class ClientPacingDaemonTests: XCTestCase {
    var daemon: Daemon!

    override func setUpWithError() throws {
        // 40 a second, a burst of 10: a pipeline of 60 needs about 1.25 s once contended.
        daemon = try Daemon(extraArgs: ["--client-requests-per-second", "40"]).start()
    }
    override func tearDown() { daemon?.cleanup() }

    private func pings(_ n: Int) -> [UInt8] {
        var all: [UInt8] = []
        for i in 0..<n { all += Framing.frame(JSONValue.object([("type", .string("ping")), ("id", .int(Int64(i)))]).serialized()) }
        return all
    }

    /// Pings every 50 ms on a connection of its own, and keeps the slowest answer.
    final class Pinger: @unchecked Sendable {
        let socket: String
        private let lock = NSLock()
        private var stopped = false
        private var worst = 0.0, answered = 0
        private(set) var error: String?
        init(socket: String) { self.socket = socket }
        var figures: (Double, Int) { lock.withLock { (worst, answered) } }
        func stop() { lock.withLock { stopped = true } }
        func run() {
            do {
                let conn = try ClawpenConnection(socketPath: socket)
                while !lock.withLock({ stopped }) {
                    let t0 = Date()
                    _ = try conn.call(.ping)
                    let took = Date().timeIntervalSince(t0)
                    lock.withLock {
                        worst = max(worst, took)
                        answered += 1
                    }
                    Thread.sleep(forTimeInterval: 0.05)
                }
            } catch { lock.withLock { self.error = "\(error)" } }
        }
    }

    /// Sends `n` pings in one write on a new connection and reads every answer, in order;
    /// returns the seconds it took.
    private func pipelinedPings(_ n: Int) throws -> Double {
        let s = try RawSocket(daemon.socket)
        let t0 = Date()
        s.send(pings(n))
        for i in 0..<n {
            guard let reply = s.readFrame() else {
                XCTFail("reply \(i) did not come")
                break
            }
            XCTAssertEqual(reply["id"]?.intValue, Int64(i), "in order")
        }
        return Date().timeIntervalSince(t0)
    }

    private func fairness() throws -> JSONValue { try daemon.status()["supervisor"]?["clients"]?["fairness"] ?? .null }

    func testAFlooderIsSlowedWhileAnotherClientIsServedOnTime() throws {
        let other = Pinger(socket: daemon.socket)
        let pinger = Thread { other.run() }
        pinger.start()
        Thread.sleep(forTimeInterval: 0.1)
        let took = try pipelinedPings(60)
        other.stop()
        Thread.sleep(forTimeInterval: 0.1)
        XCTAssertGreaterThan(took, 0.8, "60 pipelined pings at 40 a second (a burst of 10) while another client is served")
        let (w, n) = other.figures
        XCTAssertNil(other.error)
        XCTAssertGreaterThan(n, 10)
        XCTAssertLessThan(w, 0.5, "the other client's pings were answered on time (worst \(w) s)")
        let f = try fairness()
        XCTAssertEqual(f["client_requests_per_second"]?.intValue, 40)
        XCTAssertGreaterThan(f["paced_requests"]?.intValue ?? 0, 0)
    }

    func testAClientAloneIsNotHeld() throws {
        // Nobody else has asked for anything for two windows of ActiveClients.
        Thread.sleep(forTimeInterval: 0.3)
        // Held to 40 a second they would take ten seconds.
        XCTAssertLessThan(try pipelinedPings(400), 3)
        XCTAssertEqual(try fairness()["paced_requests"]?.intValue, 0)
    }

    func testTheFlagIsCheckedAndZeroTurnsItOff() throws {
        let bad = try Daemon(extraArgs: ["--client-requests-per-second=-1"])
        defer { bad.cleanup() }
        let r = try runCLI(bad.serveArguments, socket: nil)
        XCTAssertEqual(r.status, 64)
        XCTAssertTrue(r.stderr.contains("--client-requests-per-second must be a number >= 0"), r.stderr)
        let off = try Daemon(extraArgs: ["--client-requests-per-second", "0"]).start()
        defer { off.cleanup() }
        XCTAssertEqual(try off.status()["supervisor"]?["clients"]?["fairness"]?["client_requests_per_second"]?.intValue, 0)
    }
}
