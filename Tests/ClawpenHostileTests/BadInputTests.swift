import ClawpenTestSupport
import Foundation
import XCTest

/// Hostile clients: broken frames, garbage, slow senders, crowds. Each test names the attack;
/// each asserts the refusal and that the daemon keeps serving everyone else.
final class BadInputTests: XCTestCase {
    var daemon: Daemon!

    override func setUpWithError() throws {
        daemon = try Daemon(extraArgs: ["--partial-frame-timeout", "1"]).start()
        try daemon.createTenant("a")
        try daemon.createTenant("b")
    }
    override func tearDown() { daemon?.cleanup() }

    private func assertDaemonServes(file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(try? daemon.run("b", ["echo", "ok"]).stdout, "ok\n", "daemon still serves others", file: file, line: line)
    }

    func testMalformedJSONIsInvalidRequestAndTheConnectionSurvives() throws {
        let raw = try RawSocket(daemon.socket)
        let bad: [[UInt8]] = [
            Array("not json".utf8), Array("[1,2,3]".utf8), Array("{\"id\":1}".utf8), Array("{\"type\":42}".utf8),
            Array("{\"type\":\"launch-missiles\",\"id\":2}".utf8), [0xFF, 0xFE, 0x7B, 0x7D],
            Array(String(repeating: "[", count: 100_000).utf8), Array("{\"type\":\"submit\",\"tenant\":\"a\"}".utf8),
            Array("\"just a string\"".utf8), Array("{\"type\":\"ping\"".utf8),
        ]
        for payload in bad {
            raw.sendFrame(payload)
            let reply = raw.readFrame()
            XCTAssertEqual(reply?["type"]?.stringValue, "error", "payload \(payload.prefix(20))")
            XCTAssertEqual(reply?["error"]?["code"]?.stringValue, "invalid_request", "payload \(payload.prefix(20))")
        }
        raw.sendFrame(Array("{\"type\":\"ping\",\"id\":\"still-here\"}".utf8))
        let pong = raw.readFrame()
        XCTAssertEqual(pong?["type"]?.stringValue, "pong")
        XCTAssertEqual(pong?["id"]?.stringValue, "still-here")
    }

    func testEmptyFrameIsInvalidRequest() throws {
        let raw = try RawSocket(daemon.socket)
        raw.send([0, 0, 0, 0])
        XCTAssertEqual(raw.readFrame()?["error"]?["code"]?.stringValue, "invalid_request")
    }

    func testFrameOverTheLimitIsRefusedAndClosed() throws {
        let raw = try RawSocket(daemon.socket)
        let n = UInt32(16 * 1024 * 1024 + 1)
        raw.send([UInt8(n >> 24), UInt8((n >> 16) & 0xFF), UInt8((n >> 8) & 0xFF), UInt8(n & 0xFF)] + Array(repeating: 0x41, count: 100))
        let reply = raw.readFrame()
        XCTAssertEqual(reply?["error"]?["code"]?.stringValue, "frame_too_large")
        XCTAssertTrue(reply?["error"]?["message"]?.stringValue?.contains("16777216") ?? false)
        XCTAssertTrue(raw.isClosedByPeer(), "connection closed after frame_too_large")
        let huge = try RawSocket(daemon.socket)
        huge.send([0xFF, 0xFF, 0xFF, 0xFF])
        XCTAssertEqual(huge.readFrame()?["error"]?["code"]?.stringValue, "frame_too_large")
        assertDaemonServes()
    }

    func testHalfSentFrameDoesNotBlockOthersAndIsDisconnected() throws {
        // Announce 16 MiB, send 10 bytes, go silent.
        let slow = try RawSocket(daemon.socket)
        let n = UInt32(16 * 1024 * 1024)
        slow.send([UInt8(n >> 24), UInt8((n >> 16) & 0xFF), UInt8((n >> 8) & 0xFF), UInt8(n & 0xFF)] + Array(repeating: 0x7B, count: 10))
        // Meanwhile everyone else is served at once.
        let started = Date()
        for _ in 0..<20 { assertDaemonServes() }
        XCTAssertLessThan(Date().timeIntervalSince(started), 5)
        // And the silent one is cut off after --partial-frame-timeout (1 s here).
        let reply = slow.readFrame()
        XCTAssertEqual(reply?["error"]?["code"]?.stringValue, "invalid_request")
        XCTAssertTrue(reply?["error"]?["message"]?.stringValue?.contains("incomplete") ?? false)
        XCTAssertTrue(slow.isClosedByPeer())
    }

    func testRandomGarbageNeverTakesTheDaemonDown() throws {
        var rng = SystemRandomNumberGenerator()
        for i in 0..<200 {
            let raw = try RawSocket(daemon.socket)
            var bytes = (0..<Int.random(in: 1...512, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
            if i % 2 == 0 { bytes = [0, 0, 1, 0] + bytes } // plausible length, garbage body
            raw.send(bytes)
        }
        usleep(200_000)
        XCTAssertNoThrow(try daemon.connect().call(.ping))
        assertDaemonServes()
    }

    func testHostileSubmitFieldsAreRefusedByRule() throws {
        let cases: [(String, String)] = [
            (#"{"type":"submit","tenant":"a","argv":[]}"#, "non-empty"),
            (#"{"type":"submit","tenant":"a","argv":["a\u0000b"]}"#, "NUL"),
            (#"{"type":"submit","tenant":"a","argv":[1]}"#, "string"),
            (#"{"type":"submit","tenant":"a","argv":[""]}"#, "empty"),
            (#"{"type":"submit","tenant":"a","argv":["true"],"env":{"A=B":"x"}}"#, "'='"),
            (#"{"type":"submit","tenant":"a","argv":["true"],"env":{"A":1}}"#, "string"),
            (#"{"type":"submit","tenant":"a","argv":["true"],"cwd":"relative"}"#, "absolute"),
            (#"{"type":"submit","tenant":"a","argv":["true"],"stdin_b64":"%%%"}"#, "base64"),
            (#"{"type":"submit","tenant":"a","argv":["true"],"timeout_s":-1}"#, "positive"),
            (#"{"type":"submit","tenant":"a","argv":["true"],"timeout_s":"soon"}"#, "positive"),
            (#"{"type":"submit","tenant":"a","argv":["true"],"wait":"yes"}"#, "true or false"),
            (#"{"type":"submit","tenant":"a","argv":["true"],"stdin":"x","stdin_b64":"eA=="}"#, "not both"),
            (#"{"type":"job.get","job_id":"../../../etc/passwd"}"#, "no job"),
        ]
        let raw = try RawSocket(daemon.socket)
        for (json, words) in cases {
            raw.sendFrame(Array(json.utf8))
            let reply = raw.readFrame()
            XCTAssertEqual(reply?["type"]?.stringValue, "error", json)
            XCTAssertTrue(reply?["error"]?["message"]?.stringValue?.contains(words) ?? false, "\(json): \(reply?.text ?? "no reply")")
        }
        let many = "{\"type\":\"submit\",\"tenant\":\"a\",\"argv\":[" + Array(repeating: "\"x\"", count: 5000).joined(separator: ",") + "]}"
        raw.sendFrame(Array(many.utf8))
        XCTAssertTrue(raw.readFrame()?["error"]?["message"]?.stringValue?.contains("limit") ?? false)
        XCTAssertEqual(try daemon.tenantStatus("a")["jobs"]?["succeeded"]?.intValue, 0, "nothing ran")
    }

    func testThousandConcurrentClients() throws {
        // 1,000 connections open at once, each with a job in flight, spread over 4 tenants.
        for t in ["c", "d"] { try daemon.createTenant(t, tier: "enterprise") }
        let tenants = ["a", "b", "c", "d"]
        var sockets: [RawSocket] = []
        for i in 0..<1000 {
            let raw = try RawSocket(daemon.socket)
            raw.sendFrame(Array("{\"type\":\"submit\",\"id\":\(i),\"tenant\":\"\(tenants[i % 4])\",\"argv\":[\"echo\",\"\(i)\"],\"wait\":true}".utf8))
            sockets.append(raw)
        }
        var ok = 0
        for (i, raw) in sockets.enumerated() {
            let reply = raw.readFrame()
            if reply?["job"]?["state"]?.stringValue == "succeeded" && reply?["job"]?["stdout"]?.stringValue == "\(i)\n" && reply?["id"]?.intValue == Int64(i) {
                ok += 1
            }
        }
        XCTAssertEqual(ok, 1000)
        var succeeded: Int64 = 0
        for t in tenants { succeeded += try daemon.tenantStatus(t)["jobs"]?["succeeded"]?.intValue ?? 0 }
        XCTAssertEqual(succeeded, 1000)
    }
}
