import ClawpenProtocol
import Foundation
import ClawpenWire
import XCTest

/// The file requests' pure parts: the path check every request goes through first, the
/// supervisor<->worker messages (and their bounds on what a worker may send), the JSON requests.
final class FileMessageTests: XCTestCase {
    func path(_ s: String) -> Result<SandboxPath, FileFailure> { SandboxPath.parse(s) }

    func testPathsAreNormalizedAndEveryBadShapeNamesItsRule() throws {
        XCTAssertEqual(try path("/home//a/./b/").get().components, ["home", "a", "b"])
        XCTAssertEqual(try path("/").get().description, "/")
        XCTAssertEqual(try path("/").get().relative, ".")
        let cases: [(String, FileFailure.Kind)] = [
            ("home/x", .invalidPath), ("", .invalidPath), ("/home/a\u{0}b", .invalidPath), ("/home/../etc", .beneathRoot),
            ("/..", .beneathRoot), ("/home/" + String(repeating: "x", count: 256), .nameMax),
            ("/" + String(repeating: "a/", count: 2048), .pathMax),
        ]
        for (raw, kind) in cases {
            guard case .failure(let f) = path(raw) else { XCTFail("\(raw.prefix(40)) accepted"); continue }
            XCTAssertEqual(f.kind, kind, String(raw.prefix(40)))
            XCTAssertEqual(f.stage, "check")
            XCTAssertFalse(f.detail.isEmpty)
        }
        XCTAssertNoThrow(try path("/home/" + String(repeating: "x", count: 255)).get())
        XCTAssertTrue(try path("/proc/self/root").get().isUnderPseudoFilesystem)
        XCTAssertFalse(try path("/home").get().isWritable, "the roots themselves are not written")
        XCTAssertTrue(try path("/tmp/x").get().isWritable)
        XCTAssertFalse(try path("/usr/x").get().isWritable)
    }

    func testWorkerMessagesRoundTrip() throws {
        let p = try path("/home/a b/ü.bin").get()
        let info = FileInfo(name: "ü.bin", kind: .file, size: 5, mode: 0o644, uid: 200_000, gid: 200_000, mtimeNanos: 1_700_000_000_123_456_789)
        for m: SupervisorToWorker in [
            .file(.stat(op: 1, path: p)), .file(.list(op: 2, path: p, limit: 10)), .file(.remove(op: 3, path: p, recursive: true)),
            .file(.mkdir(op: 4, path: p, mode: 0o755, parents: true)), .file(.get(op: 5, path: p, maxBytes: 1 << 30, chunkBytes: 4096, window: 4)),
            .file(.getAck(op: 5)), .file(.put(op: 6, path: p, mode: 0o600, maxBytes: 9, data: [1, 2, 3], eof: false)),
            .file(.putChunk(op: 6, data: [4], eof: true)), .file(.abort(op: 7)),
        ] {
            XCTAssertEqual(try SupervisorToWorker.decode(m.encoded()), m)
        }
        for m: WorkerToSupervisor in [
            .file(.info(op: 1, info)), .file(.listing(op: 2, entries: [info, info], truncated: true, itself: false)),
            .file(.removed(op: 3, count: 42)), .file(.data(op: 5, offset: 4096, bytes: [9, 9], eof: true, info: info)),
            .file(.data(op: 5, offset: 0, bytes: [], eof: false, info: nil)), .file(.putAck(op: 6, bytes: 3)),
            .file(.failed(op: 7, FileFailure(.symlink, stage: "resolve", errno: 40, detail: "/home/link"))),
        ] {
            XCTAssertEqual(try WorkerToSupervisor.decode(m.encoded(), outputCap: 1 << 20), m)
        }
    }

    func testAWorkerCannotSendMoreThanTheBoundsAllow() {
        let big = WorkerToSupervisor.file(.data(op: 1, offset: 0, bytes: [UInt8](repeating: 0, count: FileRequest.maxChunkBytes + 1), eof: false, info: nil))
        XCTAssertThrowsError(try WorkerToSupervisor.decode(big.encoded(), outputCap: 1 << 20), "a chunk over the largest chunk size")
        let longName = FileInfo(name: String(repeating: "n", count: 300), kind: .file, size: 0, mode: 0, uid: 0, gid: 0, mtimeNanos: 0)
        XCTAssertThrowsError(try WorkerToSupervisor.decode(WorkerToSupervisor.file(.info(op: 1, longName)).encoded(), outputCap: 1 << 20))
        // A listing that says "itself" with two entries is not one the worker may send.
        let info = FileInfo(name: "a", kind: .file, size: 0, mode: 0, uid: 0, gid: 0, mtimeNanos: 0)
        XCTAssertThrowsError(
            try WorkerToSupervisor.decode(
                WorkerToSupervisor.file(.listing(op: 1, entries: [info, info], truncated: false, itself: true)).encoded(), outputCap: 1 << 20))
        // A path with a '..' component is refused by the worker's decoder too.
        var w = BinaryWriter()
        w.u8(20); w.u8(1); w.u32(1); w.strings(["home", ".."])
        XCTAssertThrowsError(try SupervisorToWorker.decode(w.bytes))
    }

    func testFileRequestsDecodeAndEncode() throws {
        let t = try TenantName(validating: "acme")
        for r: FileCommand in [
            .put(FilePut(tenant: t, path: "/home/x", mode: 0o600, size: 3, data: [0, 255, 7], eof: false)),
            .chunk(data: [1, 2], offset: 3, eof: true), .get(tenant: t, path: "/home/x", chunkBytes: 65536),
            .stat(tenant: t, path: "/home"), .list(tenant: t, path: "/home", limit: 7), .remove(tenant: t, path: "/home/d", recursive: true),
            .mkdir(tenant: t, path: "/home/d", mode: 0o700, parents: true),
        ] {
            let (id, decoded) = RequestCodec.decode(RequestCodec.encode(.file(r), id: .int(5)))
            XCTAssertEqual(id, .int(5))
            XCTAssertEqual(try decoded.get(), .file(r))
        }
        let bad = RequestCodec.decode(Array(#"{"type":"file.put","id":1,"tenant":"acme","path":"/home/x","offset":4}"#.utf8)).request
        guard case .failure(let e) = bad else { return XCTFail("a first chunk not at offset 0 accepted") }
        XCTAssertEqual(e.code, .invalidRequest)
        let unknown = RequestCodec.decode(Array(#"{"type":"file.move","id":1}"#.utf8)).request
        guard case .failure(let u) = unknown else { return XCTFail() }
        XCTAssertTrue(u.message.contains("file.put"), u.message)
    }

    func testBase64MatchesFoundationAndRefusesWhatIsNotBase64() {
        var g = SystemRandomNumberGenerator()
        for n in [0, 1, 2, 3, 4, 5, 6, 7, 100, 1000, 65537] {
            let bytes = (0..<n).map { _ in UInt8.random(in: 0...255, using: &g) }
            let mine = Base64.encode(bytes)
            XCTAssertEqual(String(decoding: mine, as: UTF8.self), Data(bytes).base64EncodedString(), "n=\(n)")
            XCTAssertEqual(mine.withUnsafeBytes { Base64.decode($0) }, bytes, "n=\(n)")
        }
        for bad in ["A", "AB=", "A===", "AB*D", "AB=C", "====", "QUJD\n"] {
            XCTAssertNil(Base64.decode(bad), bad)
        }
        XCTAssertEqual(Base64.decode("QUJD"), Array("ABC".utf8))
        XCTAssertEqual(Base64.decode("QUI="), Array("AB".utf8))
        XCTAssertEqual(Base64.decode("QQ=="), Array("A".utf8))
    }

    func testLongStringsParseWithAnEscapeOrAControlByteAtAnyPosition() throws {
        for n in 0..<40 {
            let plain = String(repeating: "A", count: n)
            XCTAssertEqual(try JSONValue.parse(Array("\"\(plain)\\nB\"".utf8)), .string(plain + "\nB"), "n=\(n)")
            XCTAssertEqual(try JSONValue.parse(Array("\"\(plain)é\\\"\"".utf8)), .string(plain + "é\""), "n=\(n)")
            XCTAssertThrowsError(try JSONValue.parse(Array("\"\(plain)\u{1}x\"".utf8)), "a raw control byte at \(n)")
            XCTAssertThrowsError(try JSONValue.parse(Array("\"\(plain)".utf8)), "unterminated at \(n)")
        }
    }
}
