@testable import ClawpenProtocol
import ClawpenWire
import Glibc
import XCTest

/// Seconds of the fastest of `runs` calls (the fastest is the least disturbed by the machine).
func fastest(runs: Int = 3, _ body: () throws -> Void) rethrows -> Double {
    var best = Double.infinity
    for _ in 0..<runs {
        var a = timespec(), b = timespec()
        clock_gettime(CLOCK_MONOTONIC, &a)
        try body()
        clock_gettime(CLOCK_MONOTONIC, &b)
        best = min(best, Double(b.tv_sec - a.tv_sec) + Double(b.tv_nsec - a.tv_nsec) / 1e9)
    }
    return best
}

/// Asserts that parsing an input 8 times larger costs at most `bound` times as much: a linear
/// parser takes about 8x, a quadratic one 64x. The bound is generous because the machine is
/// shared and the small input pays more of the fixed costs.
func assertLinear(
    _ shape: String, bound: Double = 20, file: StaticString = #filePath, line: UInt = #line,
    _ parse: (Int) throws -> Void
) rethrows {
    let small = try fastest { try parse(1) }
    let large = try fastest { try parse(8) }
    let ratio = large / small
    print("cost \(shape): x1 \(String(small * 1000)) ms, x8 \(String(large * 1000)) ms, ratio \(ratio)")
    XCTAssertLessThan(ratio, bound, "\(shape): 8x the input cost \(ratio)x the time", file: file, line: line)
}

/// Every shape of input that could cost a JSON parser more than a constant per byte, at 128 KiB
/// and 1 MiB: enough for a quadratic cost to show (64x), small enough for a debug build (whose
/// parser is 50x slower than a release one). 16 MiB frames go to the daemon in the hostile suite.
final class JSONParserCostTests: XCTestCase {
    static let unit = 128 * 1024

    /// `count` copies of `item` separated by commas inside `open` and `close`, about `bytes` long.
    private func document(_ open: String, _ item: (Int) -> String, _ close: String, bytes: Int) -> [UInt8] {
        var out = Array(open.utf8)
        var i = 0
        while out.count < bytes {
            if i > 0 { out.append(UInt8(ascii: ",")) }
            out.append(contentsOf: item(i).utf8)
            i += 1
        }
        out.append(contentsOf: close.utf8)
        return out
    }

    private func parses(_ doc: [UInt8]) throws {
        _ = try JSONParser.parse(doc, limits: .default)
    }

    func testManyKeysCostLinearTime() throws {
        let docs = [1, 8].map { k in document("{", { "\"k\($0)\":0" }, "}", bytes: k * Self.unit) }
        try assertLinear("many keys") { try parses(docs[$0 == 1 ? 0 : 1]) }
    }

    func testHugeArraysCostLinearTime() throws {
        let docs = [1, 8].map { k in document("[", { _ in "0" }, "]", bytes: k * Self.unit) }
        try assertLinear("huge array") { try parses(docs[$0 == 1 ? 0 : 1]) }
    }

    func testManyNumbersCostLinearTime() throws {
        let docs = [1, 8].map { k in document("[", { "1\($0).25e-3,-\($0),\($0)e2" }, "]", bytes: k * Self.unit) }
        try assertLinear("many numbers") { try parses(docs[$0 == 1 ? 0 : 1]) }
    }

    func testLongEscapesCostLinearTime() throws {
        let docs = [1, 8].map { k in
            Array(("\"" + String(repeating: #"\u00e9\n\"\ud83d\ude00"#, count: k * Self.unit / 24) + "\"").utf8)
        }
        try assertLinear("long escapes") { try parses(docs[$0 == 1 ? 0 : 1]) }
    }

    func testDeepNestingCostsLinearTime() throws {
        // As deep as the limit allows, again and again.
        let nest = String(repeating: "[", count: 250) + "1" + String(repeating: "]", count: 250)
        let docs = [1, 8].map { k in document("[", { _ in nest }, "]", bytes: k * Self.unit) }
        try assertLinear("deep nesting") { try parses(docs[$0 == 1 ? 0 : 1]) }
    }

    func testManyObjectsWithManyKeysCostLinearTime() throws {
        let object = "{" + (0..<40).map { "\"key\($0)\":\"v\"" }.joined(separator: ",") + "}"
        let docs = [1, 8].map { k in document("[", { _ in object }, "]", bytes: k * Self.unit) }
        try assertLinear("many objects of 40 keys") { try parses(docs[$0 == 1 ? 0 : 1]) }
    }

    func testNestingDeeperThanTheLimitIsAClearError() {
        let deep = Array(String(repeating: "[", count: 100_000).utf8)
        XCTAssertThrowsError(try JSONParser.parse(deep, limits: .default)) { e in
            XCTAssertTrue("\(e)".contains("nested deeper than 256"), "\(e)")
        }
    }

    func testRequestsAreBoundedInValuesAndDepth() {
        let many = Array(("{\"type\":\"ping\",\"x\":[" + Array(repeating: "0", count: 70_000).joined(separator: ",") + "]}").utf8)
        let (_, r) = RequestCodec.decode(many)
        guard case .failure(let e) = r else { return XCTFail("accepted") }
        XCTAssertEqual(e.code, .invalidRequest)
        XCTAssertTrue(e.message.contains("more than 65536 values"), e.message)
        let deep = Array(("{\"type\":\"ping\",\"x\":" + String(repeating: "[", count: 40) + String(repeating: "]", count: 40) + "}").utf8)
        guard case .failure(let d) = RequestCodec.decode(deep).request else { return XCTFail("accepted") }
        XCTAssertTrue(d.message.contains("nested deeper than 32"), d.message)
    }

    func testRequestFieldsAmongManyUnknownKeysCostLinearTime() throws {
        // A submit whose known fields sit among thousands of unknown ones: each lookup must not
        // scan them all.
        func request(_ k: Int) -> [UInt8] {
            let filler = (0..<(k * 7_000)).map { "\"u\($0)\":0" }.joined(separator: ",")
            return Array(("{" + filler + ",\"type\":\"submit\",\"tenant\":\"a\",\"argv\":[\"true\"]}").utf8)
        }
        let docs = [request(1), request(8)]
        try assertLinear("request among unknown keys") { k in
            guard case .success = RequestCodec.decode(docs[k == 1 ? 0 : 1]).request else { throw ProtocolError(.internal, "refused") }
        }
    }

    func testEchoedStringsAreShortened() {
        let long = String(repeating: "x", count: 100_000)
        let (_, r) = RequestCodec.decode(Array("{\"type\":\"\(long)\"}".utf8))
        guard case .failure(let e) = r else { return XCTFail("accepted") }
        XCTAssertLessThan(e.message.utf8.count, 1000, "the refusal does not echo 100 KB")
    }
}

/// The binary supervisor<->worker codec: linear in its payload, and no count makes it reserve
/// more than the payload holds.
final class BinaryCodecCostTests: XCTestCase {
    func testManyStringsCostLinearTime() throws {
        let runs = [1, 8].map { k in
            SupervisorToWorker.run(
                RunRequest(
                    jobID: "j", argv: (0..<(k * 8000)).map { "arg\($0)" }, env: ["A=b"],
                    cwd: "/home", stdin: Array(repeating: 7, count: k * 100_000),
                    timeoutMs: 1, outputCapBytes: 1)
            ).encoded()
        }
        try assertLinear("run with many arguments") { k in _ = try SupervisorToWorker.decode(runs[k == 1 ? 0 : 1]) }
    }

    func testACountThePayloadCannotHoldIsRefusedBeforeAnythingIsReserved() {
        var w = BinaryWriter()
        w.u8(1); w.string("j"); w.u32(65_000) // 65,000 arguments announced, none sent
        XCTAssertThrowsError(try SupervisorToWorker.decode(w.bytes)) { e in
            XCTAssertEqual(e as? BinaryReader.Failure, .truncated)
        }
    }
}
