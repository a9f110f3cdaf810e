import ClawpenProtocol
import ClawpenTestSupport
import ClawpenWire
import Foundation
import Glibc
import XCTest

/// Clients that pipeline many requests share the event loop a tick at a time (docs/protocol.md,
/// "Fairness between clients"): each gives way after its share, every request is still answered,
/// in the order it was sent, and whoever waits for a job that a thousand requests wait for hears
/// of it like everyone else.
final class PipelineFairnessTests: XCTestCase {
    var daemon: Daemon!

    override func setUpWithError() throws {
        daemon = try Daemon().start()
        try daemon.createTenant("a")
    }
    override func tearDown() { daemon?.cleanup() }

    private func frame(_ fields: [(String, JSONValue)]) -> [UInt8] { Framing.frame(JSONValue.object(fields).serialized()) }

    /// 3,000 requests in one write, each reading a record with output: every reply comes back,
    /// each to its request, in the order sent, though the connection gave way many times on the
    /// way. (Requests that read job records all wait for commits in flight alike, so their
    /// replies keep their order; a ping may overtake them.)
    func testAPipelineOfThousandsIsAnsweredInOrder() throws {
        let job = try daemon.run("a", ["sh", "-c", "head -c 20000 /dev/zero | tr '\\0' z"])
        XCTAssertEqual(job.state, .succeeded)
        let s = try RawSocket(daemon.socket)
        var all: [UInt8] = []
        for i in 0..<3000 {
            let type = i % 2 == 0 ? "job.get" : "job.wait"
            all += frame([("type", .string(type)), ("id", .int(Int64(i))), ("job_id", .string(job.id))])
        }
        // Sent from another thread while this one reads: the replies would fill the socket
        // before the requests were all written.
        let bytes = all, fd = s.fd
        let sender = Thread {
            var off = 0
            while off < bytes.count {
                let n = bytes[off...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                if n <= 0 { return }
                off += n
            }
        }
        sender.start()
        for i in 0..<3000 {
            guard let reply = s.readFrame() else { return XCTFail("reply \(i) did not come") }
            XCTAssertEqual(reply["id"]?.intValue, Int64(i), "in order")
            XCTAssertEqual(reply["job"]?["stdout"]?.stringValue?.utf8.count, 20000, "reply \(i)")
        }
    }

    /// Twenty clients pile up 250 `job.wait`s each of one running job (5,000 waiters, heard a
    /// few dozen per tick when it ends), and a client that pings meanwhile is answered; then
    /// every waiter hears that the job succeeded.
    func testThousandsOfWaitersAllHearAndOthersAreServedMeanwhile() throws {
        let job = try daemon.detach("a", ["sh", "-c", "sleep 1; echo done"])
        let clients = try (0..<20).map { _ in try RawSocket(daemon.socket) }
        for c in clients {
            var all: [UInt8] = []
            for i in 0..<250 { all += frame([("type", .string("job.wait")), ("id", .int(Int64(i))), ("job_id", .string(job.id))]) }
            c.send(all)
        }
        let pinger = try daemon.connect()
        let t0 = Date()
        for _ in 0..<20 { _ = try pinger.call(.ping) }
        XCTAssertLessThan(Date().timeIntervalSince(t0), 2, "pings answered while 5,000 waits were taken in")
        for (n, c) in clients.enumerated() {
            for i in 0..<250 {
                guard let reply = c.readFrame() else { return XCTFail("client \(n): reply \(i) did not come") }
                XCTAssertEqual(reply["id"]?.intValue, Int64(i))
                XCTAssertEqual(reply["job"]?["state"]?.stringValue, "succeeded", "client \(n) reply \(i)")
            }
        }
    }
}
