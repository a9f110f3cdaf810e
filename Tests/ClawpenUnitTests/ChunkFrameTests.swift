import ClawpenProtocol
import ClawpenWire
import Foundation
import XCTest

/// The file chunks' fast path: base64 on raw buffers, and the in-place reading of `file.chunk`
/// and `file.data` frames, which must accept only what the general parser reads the same way
/// and leave everything else to it.
final class ChunkFrameTests: XCTestCase {
    func testBase64AgreesWithFoundationForEverySizeAndRefusesWhatIsNotBase64() throws {
        var rng = SystemRandomNumberGenerator()
        for n in Array(0..<70) + [1000, 4095, 65536, 1 << 20] {
            let bytes = (0..<n).map { _ in UInt8.random(in: 0...255, using: &rng) }
            let ours = Base64.encode(bytes)
            XCTAssertEqual(String(decoding: ours, as: UTF8.self), Data(bytes).base64EncodedString(), "encode \(n)")
            XCTAssertEqual(ours.withUnsafeBytes { Base64.decodedCount($0) }, n)
            XCTAssertEqual(ours.withUnsafeBytes { Base64.decode($0) }, bytes, "decode \(n)")
        }
        for bad in ["A", "AB", "ABC", "AB=C", "A===", "====", "AB*D", "ABCD\u{0}AAA", "ABCDAB\"=", "AB\\/", "éééé"] {
            XCTAssertNil(Base64.decode(bad), bad)
        }
        XCTAssertEqual(Base64.decode("AA=="), [0])
        XCTAssertEqual(Base64.decode("AAA="), [0, 0])
        XCTAssertEqual(Base64.decode(""), [])
    }

    func scan(_ s: String, _ type: StaticString = "file.chunk") -> ChunkFrame? {
        Array(s.utf8).withUnsafeBytes { ChunkFrame.scan($0, type: type) }
    }

    func testTheFastShapeReadsAsTheGeneralParserReadsIt() throws {
        let data = (0..<3000).map { UInt8(truncatingIfNeeded: $0 * 7) }
        let b64 = String(decoding: Base64.encode(data), as: UTF8.self)
        let frames = [
            #"{"type":"file.chunk","id":7,"offset":262144,"eof":false,"data_b64":"\#(b64)"}"#,
            #" { "data_b64" : "\#(b64)" ,"eof":true, "offset":0,"id":"put-1","type":"file.chunk"} "#,
            #"{"type":"file.chunk","id":-3,"offset":5,"data_b64":"\#(b64)"}"#,
            #"{"type":"file.chunk","id":null,"eof":false}"#,
        ]
        for text in frames {
            let f = try XCTUnwrap(scan(text), text.prefix(80).description)
            let general = try JSONValue.parse(Array(text.utf8))
            XCTAssertEqual(f.id, general["id"] ?? .null)
            XCTAssertEqual(Int64(f.offset), general["offset"]?.intValue ?? 0)
            XCTAssertEqual(f.eof, general["eof"]?.boolValue ?? false)
            let text8 = Array(text.utf8)
            let fast = text8.withUnsafeBytes { Base64.decode(f.data(in: $0)) }
            let slow = general["data_b64"]?.stringValue.flatMap { Base64.decode($0) } ?? []
            XCTAssertEqual(fast, slow)
            // The same frame through the supervisor's general path is the same chunk.
            if case .success(.file(.chunk(let d, let o, let e))) = RequestCodec.decode(text8).request {
                XCTAssertEqual(d, fast); XCTAssertEqual(o, f.offset); XCTAssertEqual(e, f.eof)
            } else {
                XCTFail("the general path refused \(text.prefix(80))")
            }
        }
        XCTAssertNotNil(scan(#"{"type":"file.data","id":1,"offset":0,"eof":false,"data_b64":"AAAA"}"#, "file.data"))
    }

    func testAnythingElseIsLeftToTheGeneralParser() {
        let others = [
            #"{"type":"file.put","id":1,"data_b64":"AAAA"}"#, // another type
            #"{"type":"file.chunk","id":1,"offset":1,"offset":2}"#, // a duplicate key
            #"{"type":"file.chunk","id":1,"trace":{"id":"x"}}"#, // a key it does not read
            #"{"type":"file.chunk","id":"a\"b"}"#, // an escape
            #"{"type":"file.chunk","id":"é"}"#, // non-ASCII
            #"{"type":"file.chunk","id":1.5}"#, #"{"type":"file.chunk","offset":1e3}"#, #"{"type":"file.chunk","offset":-1}"#,
            #"{"type":"file.chunk","offset":01}"#, #"{"type":"file.chunk","offset":1234567890123456789}"#,
            #"{"type":"file.chunk","eof":null}"#, #"{"type":"file.chunk","eof":1}"#,
            #"{"type":"file.chunk"} x"#, #"{"type":"file.chunk""#, #"{"type":"file.chunk","data_b64":"AAAA}"#,
            #"{"id":1}"#, #"{}"#, #"[]"#, "",
            #"{"type":"file.chunk","data_b64":"AAAA",}"#, // a trailing comma
        ]
        for text in others { XCTAssertNil(scan(text), text) }
        // An escape inside the base64 is found by the decode, not the scan: the frame then goes
        // the general way, which reads "\/" as "/" (valid JSON, valid base64).
        let escaped = #"{"type":"file.chunk","id":1,"data_b64":"ab\/c"}"#
        let f = scan(escaped)
        XCTAssertNil(Array(escaped.utf8).withUnsafeBytes { raw in f.flatMap { Base64.decode($0.data(in: raw)) } })
        if case .success(.file(.chunk(let d, _, _))) = RequestCodec.decode(Array(escaped.utf8)).request {
            XCTAssertEqual(d, Base64.decode("ab/c"))
        } else {
            XCTFail("the general path refused the escaped frame")
        }
    }
}
