@testable import ClawpenTOML
import Glibc
import XCTest

/// The TOML parser costs a small constant per byte whatever the shape of its input: each test
/// parses one shape at 64 KiB and at 512 KiB and asserts that 8x the input costs well under
/// 64x the time (what a quadratic parser would take).
final class TOMLCostTests: XCTestCase {
    static let unit = 64 * 1024

    private func fastest(_ body: () throws -> Void) rethrows -> Double {
        var best = Double.infinity
        for _ in 0..<3 {
            var a = timespec(), b = timespec()
            clock_gettime(CLOCK_MONOTONIC, &a)
            try body()
            clock_gettime(CLOCK_MONOTONIC, &b)
            best = min(best, Double(b.tv_sec - a.tv_sec) + Double(b.tv_nsec - a.tv_nsec) / 1e9)
        }
        return best
    }

    /// `make(k)` builds the input for scale k (1 or 8).
    private func assertLinear(_ shape: String, file: StaticString = #filePath, line: UInt = #line, _ make: (Int) -> String) throws {
        let small = make(1), large = make(8)
        let t1 = try fastest { _ = try TOMLDocument.parse(small, file: "t.toml") }
        let t8 = try fastest { _ = try TOMLDocument.parse(large, file: "t.toml") }
        print("cost \(shape): x1 \(t1 * 1000) ms, x8 \(t8 * 1000) ms, ratio \(t8 / t1)")
        XCTAssertLessThan(t8 / t1, 20, "\(shape): 8x the input cost \(t8 / t1)x the time", file: file, line: line)
    }

    /// Lines from `line(i)` until the text is `bytes` long.
    private func lines(bytes: Int, _ line: (Int) -> String) -> String {
        var out = ""
        var i = 0
        while out.utf8.count < bytes { out += line(i) + "\n"; i += 1 }
        return out
    }

    func testManyKeysCostLinearTime() throws {
        try assertLinear("many keys") { k in lines(bytes: k * Self.unit) { "key_\($0) = \($0)" } }
    }

    func testManyTablesCostLinearTime() throws {
        try assertLinear("many tables") { k in lines(bytes: k * Self.unit) { "[t\($0 / 4).s\($0)]\nv = 1" } }
    }

    func testKeysUnderALongHeaderCostLinearTime() throws {
        // A header of 32 long parts, then many keys in its table: the header's path must not be
        // walked again for every key.
        try assertLinear("keys under a long header") { k in
            let header = "[" + (0..<32).map { "p\($0)_" + String(repeating: "x", count: k * 200) }.joined(separator: ".") + "]\n"
            return header + lines(bytes: k * Self.unit) { "k\($0) = 1" }
        }
    }

    func testHugeArraysCostLinearTime() throws {
        try assertLinear("huge array") { k in "a = [" + Array(repeating: "1", count: k * Self.unit / 2).joined(separator: ",") + "]\n" }
    }

    func testManyNumbersCostLinearTime() throws {
        try assertLinear("many numbers") { k in
            "a = [" + (0..<(k * Self.unit / 16)).map { "1_\($0).5e-3" }.joined(separator: ", ") + "]\n"
        }
    }

    func testLongEscapesCostLinearTime() throws {
        try assertLinear("long escapes") { k in "a = \"" + String(repeating: #"\u00e9\U0001F600\n"#, count: k * Self.unit / 18) + "\"\n" }
    }

    func testNestedArraysCostLinearTime() throws {
        let nest = String(repeating: "[", count: 30) + "1" + String(repeating: "]", count: 30)
        try assertLinear("nested arrays") { k in "a = [" + Array(repeating: nest, count: k * Self.unit / 62).joined(separator: ",") + "]\n" }
    }

    func testNestingDeeperThanTheLimitIsAClearError() {
        // 100,000 levels would have overflowed the stack of a recursive parser without a cap.
        let deep = "a = " + String(repeating: "[", count: 100_000) + "\n"
        XCTAssertThrowsError(try TOMLDocument.parse(deep, file: "t.toml")) { e in
            guard let e = e as? TOMLError else { return XCTFail("\(e)") }
            XCTAssertEqual(e.line, 1)
            XCTAssertTrue(e.message.contains("arrays nested deeper than 32"), e.message)
        }
        let header = "[" + (0..<40).map { "t\($0)" }.joined(separator: ".") + "]\n"
        XCTAssertThrowsError(try TOMLDocument.parse(header, file: "t.toml")) { e in
            XCTAssertTrue((e as? TOMLError)?.message.contains("deeper than 32 parts") ?? false, "\(e)")
        }
        XCTAssertNoThrow(try TOMLDocument.parse("a = " + String(repeating: "[", count: 32) + String(repeating: "]", count: 32), file: "t.toml"))
    }
}
