import ClawpenTestSupport
import Foundation
import XCTest

/// Floods in both directions (docs/protocol.md, "Flow control"): a job that writes as fast as it
/// can to a client that does not read, a client that is attached and stops reading, a client
/// that sends input to a job that never reads it. None of them may grow the supervisor's memory
/// without bound or hold up anyone else.
final class StreamFloodTests: XCTestCase {
    var daemon: Daemon!

    override func setUpWithError() throws {
        daemon = try Daemon().start()
        try daemon.createTenant("a")
        try daemon.createTenant("b")
        try daemon.assertSandboxed("a")
    }
    override func tearDown() { daemon?.cleanup() }

    /// The supervisor's resident set, in KiB (its workers are other processes).
    func daemonRSS() -> Int {
        let text = (try? String(contentsOfFile: "/proc/\(daemon.pid)/status", encoding: .utf8)) ?? ""
        let line = text.split(separator: "\n").first { $0.hasPrefix("VmRSS:") } ?? ""
        return Int(line.split(separator: " ").dropFirst().first ?? "") ?? -1
    }

    /// Decoded output bytes that arrive within `seconds`, reading as fast as possible.
    func drain(_ c: StreamClient, seconds: Double) -> (bytes: Int, closed: Bool) {
        var tv = timeval(tv_sec: 0, tv_usec: 200_000)
        setsockopt(c.socket.fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        let end = Date().addingTimeInterval(seconds)
        var total = 0
        while Date() < end {
            guard let f = c.next() else {
                var b: UInt8 = 0
                if recv(c.socket.fd, &b, 1, Int32(MSG_PEEK | MSG_DONTWAIT)) == 0 { return (total, true) }
                continue
            }
            if let d = f["data_b64"]?.stringValue, let data = Data(base64Encoded: d) { total += data.count }
        }
        return (total, false)
    }

    func testOutputFloodToAClientThatDoesNotReadIsHeldBack() throws {
        let before = daemonRSS()
        let c = try StreamClient(daemon)
        // Gigabytes a second if nothing held it back.
        let (_, jobID) = c.streamSubmit("a", ["cat", "/dev/zero"], extra: [("timeout_s", .int(60))])
        guard let jobID else { return XCTFail("not accepted") }
        sleep(3)
        let during = daemonRSS()
        XCTAssertLessThan(during - before, 32 * 1024, "the supervisor's memory stays bounded while its client does not read (\(before) -> \(during) KiB)")
        // What waited for us is the window and the socket buffers, not three seconds of output:
        // the first frames read carry offsets near the start. (Not the bytes read in a while
        // once reading again: the job goes on at full speed then, as it should.)
        var offsets: [Int64] = []
        while offsets.count < 32, let f = c.next() {
            if let o = f["offset"]?.intValue { offsets.append(o) }
        }
        XCTAssertEqual(offsets.count, 32)
        XCTAssertLessThan(offsets.max() ?? .max, 16 << 20, "the job was slowed to its reader's pace: output at offset \(offsets.max() ?? -1) waited")
        // Reading again lets it go on.
        let flowing = drain(c, seconds: 1)
        XCTAssertGreaterThan(flowing.bytes, 256 << 10, "the job runs again when its client reads")
        // Other tenants were served all along.
        XCTAssertEqual(try daemon.run("b", ["echo", "hi"]).stdout, "hi\n")
        _ = try daemon.connect().job(.jobCancel(jobID: jobID))
        XCTAssertLessThan(daemonRSS() - before, 48 * 1024)
    }

    func testAnAttachedClientThatStopsReadingIsDetachedAndHoldsNobody() throws {
        let submitter = try StreamClient(daemon)
        let (_, jobID) = submitter.streamSubmit("a", ["cat", "/dev/zero"], extra: [("timeout_s", .int(60))])
        guard let jobID else { return XCTFail("not accepted") }
        let slow = try StreamClient(daemon)
        let aid = slow.send("job.attach", [("job_id", .string(jobID))])
        XCTAssertNotNil(slow.until("attached", id: aid).frame)
        // The submitter reads on; the attached client reads nothing: after its grace (2 s) it is
        // detached, and the job goes on at the submitter's pace.
        _ = drain(submitter, seconds: 3.5)
        XCTAssertTrue(daemon.log.contains("detached a client that stopped reading"), daemon.log)
        let slowEnd = drain(slow, seconds: 3)
        XCTAssertTrue(slowEnd.closed, "the slow client was detached (its connection closed) after \(slowEnd.bytes) bytes")
        let after = drain(submitter, seconds: 1)
        XCTAssertGreaterThan(after.bytes, 256 << 10, "the job is not held by the client that was detached")
        _ = try daemon.connect().job(.jobCancel(jobID: jobID))
    }

    func testInputFloodIsSlowedToTheJobsPace() throws {
        let before = daemonRSS()
        let c = try StreamClient(daemon)
        // The job never reads its stdin.
        let (_, jobID) = c.streamSubmit("a", ["sleep", "30"], extra: [("stdin_open", .bool(true))])
        guard let jobID else { return XCTFail("not accepted") }
        let flags = fcntl(c.socket.fd, F_GETFL)
        _ = fcntl(c.socket.fd, F_SETFL, flags | O_NONBLOCK)
        let chunk = Array(repeating: UInt8(ascii: "x"), count: 48 * 1024)
        let frame = Framing.frame(
            JSONValue.object([
                ("type", .string("job.input")), ("id", .int(1)), ("job_id", .string(jobID)),
                ("data_b64", .string(Data(chunk).base64EncodedString())),
            ]).serialized())
        var sent = 0, offset = 0
        let end = Date().addingTimeInterval(3)
        while Date() < end {
            let n = frame[offset...].withUnsafeBytes { Glibc.send(c.socket.fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL | MSG_DONTWAIT)) }
            if n > 0 {
                sent += n
                offset = (offset + n) % frame.count
            } else {
                usleep(1000)
            }
        }
        XCTAssertLessThan(sent, 32 << 20, "the daemon stopped reading a client whose job does not read (\(sent) bytes taken in 3 s)")
        XCTAssertGreaterThan(sent, 256 << 10, "up to the window it was taken")
        XCTAssertLessThan(daemonRSS() - before, 48 * 1024, "bounded supervisor memory")
        // Other connections are served meanwhile.
        let t0 = Date()
        XCTAssertNotNil(try daemon.connect().call(.ping))
        XCTAssertLessThan(Date().timeIntervalSince(t0), 1)
        _ = try daemon.connect().job(.jobCancel(jobID: jobID))
    }

    /// A client that pipelines requests whose replies are large and never reads them: the
    /// supervisor stops reading it once its replies wait, instead of making a copy of the
    /// output per request (1,000 job.gets of a job with 256 KiB of output would be ~350 MB).
    func testPipelinedRequestsWithLargeRepliesThatAreNeverReadAreNotBuffered() throws {
        let job = try daemon.run("a", ["sh", "-c", "head -c 262144 /dev/zero | tr '\\0' y"])
        XCTAssertEqual(job.stdout.utf8.count, 262_144)
        let before = daemonRSS()
        let c = try StreamClient(daemon)
        let flags = fcntl(c.socket.fd, F_GETFL)
        _ = fcntl(c.socket.fd, F_SETFL, flags | O_NONBLOCK)
        let frame = Framing.frame(JSONValue.object([("type", .string("job.get")), ("id", .int(1)), ("job_id", .string(job.id))]).serialized())
        var all: [UInt8] = []
        for _ in 0..<1000 { all += frame }
        var sent = 0
        let end = Date().addingTimeInterval(3)
        while sent < all.count && Date() < end {
            let k = all[sent...].withUnsafeBytes { Glibc.send(c.socket.fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL | MSG_DONTWAIT)) }
            if k > 0 { sent += k } else { usleep(1000) }
        }
        usleep(500_000)
        XCTAssertLessThan(daemonRSS() - before, 64 * 1024, "replies to a client that does not read are not piled up (RSS grew by KiB)")
        // Others are served meanwhile.
        let t0 = Date()
        XCTAssertNotNil(try daemon.connect().call(.ping))
        XCTAssertLessThan(Date().timeIntervalSince(t0), 1)
        // Reading again, the client gets its replies (the first 50 of them are read here).
        _ = fcntl(c.socket.fd, F_SETFL, flags)
        var replies = 0
        while replies < 50, let f = c.next() {
            XCTAssertEqual(f["type"]?.stringValue, "job", "\(f)".prefix(300).description)
            replies += 1
        }
        XCTAssertEqual(replies, 50)
    }

    /// One job may have at most 64 clients following it; the 65th is refused by that rule.
    func testFollowersOfOneJobAreCapped() throws {
        let c = try StreamClient(daemon)
        let (_, jobID) = c.streamSubmit("a", ["sleep", "30"])
        guard let jobID else { return XCTFail("not accepted") }
        var clients: [StreamClient] = []
        for _ in 0..<63 {
            let a = try StreamClient(daemon)
            let id = a.send("job.attach", [("job_id", .string(jobID))])
            XCTAssertEqual(a.until("attached", id: id).frame?["type"]?.stringValue, "attached")
            clients.append(a)
        }
        let last = try StreamClient(daemon)
        let id = last.send("job.attach", [("job_id", .string(jobID))])
        let refusal = last.until("error", id: id).frame
        XCTAssertEqual(refusal?["error"]?["code"]?.stringValue, "quota_exceeded")
        XCTAssertEqual(refusal?["error"]?["rule"]?.stringValue, "max_followers_per_job")
        _ = try daemon.connect().job(.jobCancel(jobID: jobID))
    }
}
