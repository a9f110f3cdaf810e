import ClawpenEgress
import ClawpenWire
import XCTest

/// Inputs the fuzz harnesses (fuzz/, scripts/fuzz) found that a decoder got wrong, each kept as
/// the harness wrote it, with what must hold of it now (docs/reliability.md, "Fuzzed decoders").
final class FuzzRegressionTests: XCTestCase {
    /// fuzz-request-head: a bare CR (here before 0x0E) inside a header value was accepted and
    /// passed on upstream. A server that ends a line at a bare CR would read a second header the
    /// proxy never saw (`Accept: p-Alive`), and the same trick in the target or the Host header
    /// smuggles past the allowlist what the proxy checked.
    func testABareCRInARequestHeadIsRefused() {
        let found: [UInt8] =
            Array("GET http://example.com/path?q=1 HTTP/1.1\r\nHost: */*\r\nProxy-Connection: K curl/8.5.0\r".utf8)
            + [0x0E] + Array("Accept: p-Alive\r\n\r\n".utf8)
        guard case .failure(let f) = RequestHead.parse(found, maxHeaders: 64) else { return XCTFail("a bare CR was accepted") }
        XCTAssertEqual(f.status, 400)
        XCTAssertTrue(f.message.contains("bare CR"), f.message)
        for s in ["GET http://a/ HTTP/1.1\rHost: a\r\n\r\n", "GET http://a/\r HTTP/1.1\r\n\r\n", "GET http://a/ HTTP/1.1\r\nHost: a\r\r\n\r\n"] {
            guard case .failure(let f) = RequestHead.parse(Array(s.utf8), maxHeaders: 64) else { XCTFail(s); continue }
            XCTAssertEqual(f.status, 400, s)
        }
        // A CR of a CRLF is still the end of a line.
        guard case .success(let h) = RequestHead.parse(Array("GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n".utf8), maxHeaders: 64) else { return XCTFail() }
        XCTAssertEqual(h.header("host"), "a")
    }

    /// fuzz-worker-codec: an output chunk without a seq (its flag 0) still carried 8 bytes of
    /// seq, and the decoder took any value there and dropped it: two frames read as one message,
    /// so the codec's "one form per message" (what lets the supervisor hold a worker's frame to
    /// the letter) did not hold. A seq other than 0 without its flag is now refused.
    func testAnOutputChunkWithoutSeqMustCarryZero() {
        let found: [UInt8] = [
            0x14, 0x00, 0x00, 0x00, 0x01, 0x28, 0x02, 0x00, 0xFF, 0xFF, 0xFF, 0xFF, 0x41, 0x00, 0x00, 0x00,
            0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x79, 0x00, 0x00, 0xFF, 0xFF, 0x46, 0x00, 0x00, 0x00, 0x00,
        ]
        XCTAssertThrowsError(try WorkerToSupervisor.decode(found, outputCap: 1 << 20)) { XCTAssertEqual($0 as? BinaryReader.Failure, .badValue) }
        // The same chunk as the worker writes it: seq 0 without the flag, and it reads back.
        let chunk = OutputChunk(jobID: "(", stream: .stderr, seq: nil, offset: 0x7900, replayToken: 0xFF_FF46, data: [])
        let written = WorkerToSupervisor.runtime(.output(chunk)).encoded()
        XCTAssertEqual(try WorkerToSupervisor.decode(written, outputCap: 1 << 20), .runtime(.output(chunk)))
        var withSeq = chunk
        withSeq.seq = 0xFFFF_FFFF_4100_0000
        let again = WorkerToSupervisor.runtime(.output(withSeq)).encoded()
        XCTAssertEqual(try WorkerToSupervisor.decode(again, outputCap: 1 << 20), .runtime(.output(withSeq)))
    }
}
