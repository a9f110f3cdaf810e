@testable import ClawpenProtocol
@testable import ClawpenSupervisor
import ClawpenWire
import XCTest

final class FramingTests: XCTestCase {
    func testFrameRoundTripAcrossArbitraryChunks() throws {
        var stream: [UInt8] = []
        let payloads: [[UInt8]] = [Array("a".utf8), [], Array(repeating: 7, count: 70_000), Array("{\"x\":1}".utf8)]
        for p in payloads { Framing.append(payload: p, to: &stream) }
        for chunk in [1, 3, 4, 5, 1000, stream.count] {
            var s = FrameSplitter(maxFrameBytes: 1 << 20)
            var got: [[UInt8]] = []
            var i = 0
            while i < stream.count {
                s.append(stream[i..<min(i + chunk, stream.count)])
                i += chunk
                while let f = try s.next() { got.append(f) }
            }
            XCTAssertEqual(got, payloads, "chunk size \(chunk)")
            XCTAssertEqual(s.bufferedByteCount, 0)
        }
    }

    func testOversizedHeaderIsRejectedBeforeThePayloadArrives() {
        var s = FrameSplitter(maxFrameBytes: 100)
        s.append([0, 0, 0, 101])
        XCTAssertThrowsError(try s.next()) { e in
            XCTAssertEqual(e as? FrameTooLarge, FrameTooLarge(announced: 101, limit: 100))
        }
    }

    func testBigEndianLength() {
        XCTAssertEqual(Framing.frame([1, 2, 3]).prefix(4), [0, 0, 0, 3])
        XCTAssertEqual(Framing.readLength([0x01, 0x00, 0x00, 0x00]), 16_777_216)
    }
}

final class TenantNameTests: XCTestCase {
    func testValidNames() throws {
        for n in ["a", "0", "acme", "a-b_c", "a1", String(repeating: "z", count: 63)] {
            XCTAssertEqual(try TenantName(validating: n).value, n)
        }
    }

    func testInvalidNamesSayWhy() {
        let cases: [(String, TenantName.Invalid)] = [
            ("", .empty), (String(repeating: "a", count: 64), .tooLong(64)), ("../x", .badFirstCharacter(".")),
            ("A", .badFirstCharacter("A")), ("a/b", .badCharacter("/")), ("-a", .badFirstCharacter("-")),
            ("_a", .badFirstCharacter("_")), ("a b", .badCharacter("\\x20")), ("a\u{0}", .badCharacter("\\x00")),
            ("aé", .badCharacter("\\xc3")), ("a.b", .badCharacter(".")), ("aB", .badCharacter("B")),
        ]
        for (name, why) in cases {
            XCTAssertThrowsError(try TenantName(validating: name), name.debugDescription) { e in
                XCTAssertEqual(e as? TenantName.Invalid, why, name.debugDescription)
                XCTAssertTrue("\(e)".contains("^[a-z0-9][a-z0-9_-]{0,62}$"))
            }
        }
    }
}

final class WorkerCodecTests: XCTestCase {
    func testSupervisorMessagesRoundTrip() throws {
        let run = RunRequest(
            jobID: "j1", argv: ["sh", "-c", "échο"], env: ["A=1", "B="], cwd: "/home",
            stdin: [0, 255, 10], timeoutMs: 30_000, outputCapBytes: 1 << 20)
        for m in [SupervisorToWorker.run(run), .cancel(jobID: "j1"), .shutdown] {
            XCTAssertEqual(try SupervisorToWorker.decode(m.encoded()), m)
        }
    }

    func testWorkerMessagesRoundTrip() throws {
        let outcomes: [JobOutcome] = [
            .exited(code: 3), .signaled(signal: 15), .timedOut(signal: 9), .canceled(signal: nil),
            .canceled(signal: 9), .spawnFailed(step: "exec", errno: 2),
        ]
        for o in outcomes {
            let rep = JobReport(
                jobID: "j", outcome: o, stdout: [1, 2], stderr: [], stdoutTruncated: true, stderrTruncated: false,
                runMicros: 5, cpuMicros: 6, maxRSSKiB: 7)
            XCTAssertEqual(try WorkerToSupervisor.decode(WorkerToSupervisor.finished(rep).encoded(), outputCap: 10), .finished(rep))
        }
        for m in [WorkerToSupervisor.ready(pid: 42), .setupFailed(step: "pivot_root", errno: 1, detail: "x"), .started(jobID: "j", pid: 9)] {
            XCTAssertEqual(try WorkerToSupervisor.decode(m.encoded(), outputCap: 10), m)
        }
    }

    func testUntrustedWorkerBytesAreRejectedNotTrusted() {
        let rep = JobReport(
            jobID: "j", outcome: .exited(code: 0), stdout: Array(repeating: 1, count: 11), stderr: [],
            stdoutTruncated: false, stderrTruncated: false, runMicros: 0, cpuMicros: 0, maxRSSKiB: 0)
        let encoded = WorkerToSupervisor.finished(rep).encoded()
        XCTAssertThrowsError(try WorkerToSupervisor.decode(encoded, outputCap: 10), "more output than the cap")
        // Every truncation of a valid message fails cleanly.
        for n in 0..<encoded.count {
            XCTAssertThrowsError(try WorkerToSupervisor.decode(Array(encoded.prefix(n)), outputCap: 100))
        }
        XCTAssertThrowsError(try WorkerToSupervisor.decode([99], outputCap: 10), "unknown tag")
        XCTAssertThrowsError(try WorkerToSupervisor.decode(WorkerToSupervisor.ready(pid: 1).encoded() + [0], outputCap: 10), "trailing bytes")
        // A length field that claims 4 GiB does not allocate it.
        XCTAssertThrowsError(try WorkerToSupervisor.decode([3, 0xFF, 0xFF, 0xFF, 0xFF], outputCap: 10))
        // Invalid UTF-8 in a job id.
        XCTAssertThrowsError(try WorkerToSupervisor.decode([3, 0, 0, 0, 1, 0xFF, 0, 0, 0, 1], outputCap: 10))
        // An over-long job id.
        let long = WorkerToSupervisor.started(jobID: String(repeating: "x", count: 500), pid: 1).encoded()
        XCTAssertThrowsError(try WorkerToSupervisor.decode(long, outputCap: 10))
    }

    func testRandomBytesNeverCrashTheDecoder() {
        var rng = SystemRandomNumberGenerator()
        for _ in 0..<20_000 {
            let bytes = (0..<Int.random(in: 0...64, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
            _ = try? WorkerToSupervisor.decode(bytes, outputCap: 1 << 20)
            _ = try? SupervisorToWorker.decode(bytes)
        }
    }
}

final class RequestCodecTests: XCTestCase {
    func testSubmitRoundTrip() throws {
        let s = SubmitRequest(
            tenant: .t("a"), argv: ["echo", "hi"], env: [.init(name: "K", value: "V=1")], cwd: "/home/x",
            stdin: [0xFF, 0], timeoutSeconds: 2.5, idempotencyKey: "k", wait: true)
        let (id, result) = RequestCodec.decode(RequestCodec.encode(.submit(s), id: .int(7)))
        XCTAssertEqual(id, .int(7))
        XCTAssertEqual(try result.get(), .submit(s))
    }

    func testEveryRequestTypeRoundTrips() throws {
        let all: [Request] = [
            .ping, .jobGet(jobID: "x"), .jobWait(jobID: "x"), .jobCancel(jobID: "x"),
            .tenantCreate(name: .t("a"), tier: "pro"), .tenantList, .tenantShow(name: .t("a")),
            .status(tenant: nil), .status(tenant: .t("a")),
        ]
        for r in all {
            XCTAssertEqual(try RequestCodec.decode(RequestCodec.encode(r, id: .string("i"))).request.get(), r)
        }
    }

    func testRefusalsKeepTheIdAndSayWhat() {
        let (id, result) = RequestCodec.decode(Array(#"{"type":"submit","id":"abc","tenant":"a","argv":[]}"#.utf8))
        XCTAssertEqual(id, .string("abc"))
        guard case .failure(let e) = result else { return XCTFail() }
        XCTAssertEqual(e.code, .invalidRequest)
        XCTAssertTrue(e.message.contains("argv"))
    }

    func testJSONSerializationEscapesAndKeepsNulls() throws {
        let v = JSONValue.object([
            ("s", .string("a\"b\\c\n\u{1}é")), ("n", .null), ("i", .int(-3)), ("d", .double(0.25)),
            ("a", .array([.bool(true), .double(2)])),
        ])
        XCTAssertEqual(v.text, #"{"s":"a\"b\\c\n\u0001é","n":null,"i":-3,"d":0.25,"a":[true,2]}"#)
        XCTAssertEqual(try JSONValue.parse(v.serialized()), v)
    }

    func testJobViewJSONRoundTripAndExitStatus() throws {
        var v = JobView(id: "x", tenant: "a", state: .failed, exitCode: 3, argv: ["false"], cwd: "/home", timeoutSeconds: 30, createdAt: 1)
        XCTAssertEqual(JobView(json: v.json), v)
        XCTAssertEqual(v.cliExitStatus, 3)
        v.state = .timedOut; XCTAssertEqual(v.cliExitStatus, 124)
        v.state = .killed; v.signal = 15; XCTAssertEqual(v.cliExitStatus, 143)
        v.state = .oomKilled; XCTAssertEqual(v.cliExitStatus, 137)
        v.state = .succeeded; XCTAssertEqual(v.cliExitStatus, 0)
        for code in ErrorCode.allCases { XCTAssertTrue([64, 66, 69, 70, 75, 77, 124, 137].contains(code.exitCode)) }
    }
}

final class JSONParserTests: XCTestCase {
    func testParsesWhatTheSpecAllows() throws {
        let doc = #" { "a" : [1, -2, 3.5, -0.25e2, 1E3, true, false, null, "x\"\\\/\b\f\n\r\t\u00e9\ud83d\ude00", {}, []] } "#
        let v = try JSONValue.parse(Array(doc.utf8))
        XCTAssertEqual(
            v["a"],
            .array([
                .int(1), .int(-2), .double(3.5), .double(-25), .double(1000), .bool(true), .bool(false),
                .null, .string("x\"\\/\u{8}\u{c}\n\r\té😀"), .object([]), .array([]),
            ]))
        XCTAssertEqual(try JSONValue.parse(Array("\"é\"".utf8)), .string("é"))
        XCTAssertEqual(try JSONValue.parse(Array("9223372036854775807".utf8)), .int(Int64.max))
        XCTAssertEqual(try JSONValue.parse(Array("92233720368547758070".utf8)), .double(9.223372036854775807e19))
    }

    func testRejectsWhatTheSpecDoesNot() {
        let bad = [
            "", " ", "{", "}", "[1,]", "{\"a\":1,}", "{a:1}", "'x'", "01", "1.", ".5", "-", "1e", "+1", "NaN",
            "tru", "nulll", "\"abc", "\"\u{1}\"", "\"\\x\"", "\"\\u12\"", "\"\\ud800\"", "\"\\udc00\"", "[1] [2]",
            "{\"a\":1,\"a\":2}", "1e999", String(repeating: "[", count: 300) + String(repeating: "]", count: 300),
        ]
        for b in bad { XCTAssertThrowsError(try JSONValue.parse(Array(b.utf8)), b.debugDescription) }
        XCTAssertThrowsError(try JSONValue.parse([0x22, 0xFF, 0x22]), "invalid UTF-8")
        XCTAssertThrowsError(try JSONValue.parse([0x22, 0xC3, 0x22]), "truncated UTF-8")
    }

    func testSerializeParseRoundTripOfRandomValues() throws {
        var rng = SystemRandomNumberGenerator()
        func random(_ depth: Int) -> JSONValue {
            switch Int.random(in: 0..<(depth > 3 ? 5 : 7), using: &rng) {
            case 0: return .null
            case 1: return .bool(Bool.random(using: &rng))
            case 2: return .int(Int64.random(in: -1_000_000...1_000_000, using: &rng))
            case 3: return .double(Double(Int.random(in: -1000...1000, using: &rng)) / 8)
            case 4:
                return .string(
                    String((0..<Int.random(in: 0...8, using: &rng)).map { _ in Character(Unicode.Scalar(UInt8.random(in: 1...127, using: &rng))) }) + "é")
            case 5: return .array((0..<Int.random(in: 0...4, using: &rng)).map { _ in random(depth + 1) })
            default: return .object((0..<Int.random(in: 0...4, using: &rng)).map { i in ("k\(i)", random(depth + 1)) })
            }
        }
        for _ in 0..<2000 {
            let v = random(0)
            XCTAssertEqual(try JSONValue.parse(v.serialized()), v)
        }
    }

    func testRandomBytesNeverCrashTheParser() {
        var rng = SystemRandomNumberGenerator()
        let alphabet = Array("{}[]\",:0123456789.eE+-tfrueasln\\u \n".utf8) + [0xFF, 0xC3, 0x00]
        for _ in 0..<20_000 {
            let bytes = (0..<Int.random(in: 0...40, using: &rng)).map { _ in alphabet.randomElement(using: &rng)! }
            _ = try? JSONValue.parse(bytes)
        }
    }
}
