import ClawpenTestSupport
import Foundation
import XCTest

/// Hostile clients whose frames are cheap to send and were expensive to parse: one test per
/// shape (many keys, deep nesting, long escapes, huge arrays, many numbers, a long number, a
/// duplicate key at the end), each a frame of the maximum size (16 MiB). Each asserts a clear
/// answer, and that another client's pings are answered while the frame is parsed: the parse
/// costs its sender only.
final class CostlyFrameTests: XCTestCase {
    var daemon: Daemon!
    static let maxFrame = 16 * 1024 * 1024

    override func setUpWithError() throws {
        daemon = try Daemon().start()
    }
    override func tearDown() { daemon?.cleanup() }

    /// `{"type":"ping","id":"hostile",<fields>}` padded to exactly the maximum frame size:
    /// `open` starts the padding, then `item(i)` separated by `separator`, and `close` ends it. The first
    /// 70,000 items are generated (more than the 65,536 values a request may hold, so a limit is
    /// reached among distinct items); after them, the last 1,000 are repeated, which keeps
    /// building 16 MiB cheap in a debug build.
    private func frame(_ open: String, _ item: (Int) -> String, _ close: String, separator: String = ",") -> [UInt8] {
        var out = Array("{\"type\":\"ping\",\"id\":\"hostile\",".utf8) + Array(open.utf8)
        let tail = Array(close.utf8) + [UInt8(ascii: "}")]
        out.reserveCapacity(Self.maxFrame)
        let room = Self.maxFrame - tail.count
        var blockStart = 0
        var i = 0
        while i < 70_000 {
            if i == 69_000 { blockStart = out.count }
            let next = Array(((i > 0 ? separator : "") + item(i)).utf8)
            if out.count + next.count > room { break }
            out += next
            i += 1
        }
        if i == 70_000 {
            let block = Array(out[blockStart...])
            while out.count + block.count <= room { out += block }
        }
        // The last bytes are whitespace, which JSON allows between tokens.
        out += Array(repeating: UInt8(ascii: " "), count: room - out.count)
        out += tail
        XCTAssertEqual(out.count, Self.maxFrame)
        return out
    }

    /// Sends `payload` on its own connection while another client pings the daemon in a loop;
    /// returns the hostile frame's answer, how long it took from the last byte sent, and the
    /// other client's slowest ping meanwhile.
    private func send(_ payload: [UInt8], file: StaticString = #filePath, line: UInt = #line)
        throws -> (reply: JSONValue?, seconds: Double, slowestPing: Double, pings: Int)
    {
        let other = try daemon.connect()
        _ = try other.call(.ping)
        nonisolated(unsafe) let hostile = try RawSocket(daemon.socket)
        let done = DispatchSemaphore(value: 0)
        nonisolated(unsafe) var reply: JSONValue?
        nonisolated(unsafe) var answeredAt = Date()
        nonisolated(unsafe) var sentAt = Date()
        Thread.detachNewThread {
            hostile.sendFrame(payload)
            sentAt = Date()
            reply = hostile.readFrame()
            answeredAt = Date()
            done.signal()
        }
        var slowest = 0.0, pings = 0
        while done.wait(timeout: .now()) == .timedOut {
            let t0 = Date()
            XCTAssertNoThrow(try other.call(.ping), "the other client is served", file: file, line: line)
            slowest = max(slowest, Date().timeIntervalSince(t0))
            pings += 1
            usleep(2_000)
        }
        return (reply, answeredAt.timeIntervalSince(sentAt), slowest, pings)
    }

    /// The answer is an error with `code` whose message contains `words`, or a pong; the
    /// daemon serves others meanwhile and afterwards.
    private func assertAnswered(
        _ payload: [UInt8], code: String?, _ words: String = "",
        file: StaticString = #filePath, line: UInt = #line
    ) throws {
        let r = try send(payload, file: file, line: line)
        print("hostile frame: answered in \(r.seconds) s, other client's slowest ping \(r.slowestPing * 1000) ms over \(r.pings) pings")
        if let code {
            XCTAssertEqual(r.reply?["type"]?.stringValue, "error", r.reply?.text ?? "no reply", file: file, line: line)
            XCTAssertEqual(r.reply?["error"]?["code"]?.stringValue, code, file: file, line: line)
            let message = r.reply?["error"]?["message"]?.stringValue ?? ""
            XCTAssertTrue(message.contains(words), message, file: file, line: line)
            XCTAssertLessThan(message.utf8.count, 2000, "the answer does not echo the frame", file: file, line: line)
        } else {
            XCTAssertEqual(r.reply?["type"]?.stringValue, "pong", r.reply.map { String($0.text.prefix(300)) } ?? "no reply", file: file, line: line)
            XCTAssertEqual(r.reply?["id"]?.stringValue, "hostile", file: file, line: line)
        }
        // Generous for a debug build on a shared machine; a quadratic parse of 16 MiB takes hours.
        XCTAssertLessThan(r.seconds, 30, "answered in \(r.seconds) s", file: file, line: line)
        // The loop never waited for the parse: a ping took a small part of it at most.
        XCTAssertLessThan(r.slowestPing, max(0.5, r.seconds / 4), "slowest ping \(r.slowestPing) s while parsing", file: file, line: line)
        XCTAssertNoThrow(try daemon.connect().call(.ping), file: file, line: line)
    }

    func testManyKeysAreRefusedByTheValueLimit() throws {
        try assertAnswered(frame("\"pad\":{", { "\"k\($0)\":0" }, "}"), code: "invalid_request", "more than 65536 values")
    }

    func testTheLargestObjectTheLimitAllowsEndingInADuplicateKey() throws {
        // 30,000 distinct keys, then the first one again: found through a hash set, not by
        // comparing with every key before it. The rest of the frame is a long string.
        var keys = (0..<30_000).map { "\"k\($0)\":0" }.joined(separator: ",") + ",\"k0\":1"
        keys = "\"pad\":{" + keys + "},\"fill\":\""
        try assertAnswered(frame(keys, { _ in "abcdefgh" }, "\""), code: "invalid_request", "duplicate key")
    }

    func testDeepNestingIsRefusedByTheDepthLimit() throws {
        try assertAnswered(
            frame("\"pad\":" + String(repeating: "[", count: 8 * 1024 * 1024), { _ in "0" }, ""),
            code: "invalid_request", "nested deeper than 32")
    }

    func testNestingAsDeepAsAllowedOverAndOverIsRefusedByTheValueLimit() throws {
        let nest = String(repeating: "[", count: 30) + "0" + String(repeating: "]", count: 30)
        try assertAnswered(frame("\"pad\":[", { _ in nest }, "]"), code: "invalid_request", "more than 65536 values")
    }

    func testLongEscapesAreParsedInLinearTime() throws {
        // One string value of 16 MiB of escapes: parsed to the end (the value limit does not
        // apply to one string), off the event loop.
        try assertAnswered(frame("\"pad\":\"", { _ in #"\u00e9\n\"\ud83d\ude00"# }, "\""), code: nil)
    }

    func testALongStringWithABadByteAtTheEndIsRefused() throws {
        var payload = frame("\"pad\":\"", { _ in "abcdefghijklmnop" }, "\"")
        payload[payload.count - 3] = 0xFF
        try assertAnswered(payload, code: "invalid_request", "not valid UTF-8")
    }

    func testHugeArraysAreRefusedByTheValueLimit() throws {
        try assertAnswered(frame("\"pad\":[", { _ in "0" }, "]"), code: "invalid_request", "more than 65536 values")
    }

    func testManyNumbersAreRefusedByTheValueLimit() throws {
        try assertAnswered(frame("\"pad\":[", { "-\($0).25e-7" }, "]"), code: "invalid_request", "more than 65536 values")
    }

    func testALongNumberIsParsedInLinearTime() throws {
        try assertAnswered(frame("\"pad\":1", { _ in "234567890" }, "", separator: ""), code: "invalid_request", "number out of range")
    }

    func testManySmallCostlyFramesBackToBackCostTheirSenderOnly() throws {
        // 2,000 frames of 4 KiB of arrays nested as deep as allowed, in one send: each is under
        // the inline size, but the loop parses at most 4 KiB of a connection's frames per read;
        // the rest go to the pool, one at a time and in order.
        let nest = String(repeating: "[", count: 30) + "0" + String(repeating: "]", count: 30)
        var stream: [UInt8] = []
        let count = 2_000
        for i in 0..<count {
            var p = Array("{\"type\":\"ping\",\"id\":\(i),\"pad\":[".utf8)
            while p.count + nest.utf8.count + 3 < 4096 { p += Array(nest.utf8) + [UInt8(ascii: ",")] }
            p += Array("0]}".utf8)
            stream += Framing.frame(p)
        }
        let other = try daemon.connect()
        let frames = stream
        nonisolated(unsafe) let hostile = try RawSocket(daemon.socket)
        nonisolated(unsafe) var ids: [Int64] = []
        let done = DispatchSemaphore(value: 0)
        // Sent from a thread of its own while this one reads: the daemon stops reading a client
        // whose replies it has not taken (ClientHandler), so a sender that read nothing until
        // its last frame was sent would wait forever.
        Thread.detachNewThread { hostile.send(frames) }
        Thread.detachNewThread {
            for _ in 0..<count { if let id = hostile.readFrame()?["id"]?.intValue { ids.append(id) } else { break } }
            done.signal()
        }
        var pings: [Double] = []
        while done.wait(timeout: .now()) == .timedOut {
            let t0 = Date()
            XCTAssertNoThrow(try other.call(.ping))
            pings.append(Date().timeIntervalSince(t0))
            usleep(1_000)
        }
        XCTAssertEqual(ids, (0..<Int64(count)).map { $0 }, "every frame answered, in order")
        pings.sort()
        let median = pings.isEmpty ? 0 : pings[pings.count / 2]
        print("small costly frames: other client's median ping \(median * 1000) ms, slowest \((pings.last ?? 0) * 1000) ms over \(pings.count)")
        // Parsed on the loop without the per-read budget, these frames stall it for up to 64
        // frames per read (about 0.1 s in a debug build), and most pings would wait for that.
        XCTAssertLessThan(median, 0.02, "the other client's median ping")
    }

    func testAPipelinedSmallRequestBehindALargeOneIsAnsweredInOrder() throws {
        // The small frame is parsed on the loop at once; its answer must still come after the
        // large frame's, because a connection's requests are handled in the order they came.
        let raw = try RawSocket(daemon.socket)
        let large = frame("\"pad\":\"", { _ in #"\n\t"# }, "\"")
        var both: [UInt8] = []
        for p in [large, Array("{\"type\":\"ping\",\"id\":\"second\"}".utf8)] { both += Framing.frame(p) }
        raw.send(both)
        XCTAssertEqual(raw.readFrame()?["id"]?.stringValue, "hostile")
        XCTAssertEqual(raw.readFrame()?["id"]?.stringValue, "second")
    }
}
