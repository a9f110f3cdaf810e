import ClawpenProtocol
import NIOCore
@testable import ClawpenSupervisor
import XCTest

/// The `job` reply built around a view serialized once (Responder.job, for the many waiters of
/// one job) is the reply Reply.make builds, byte for byte.
final class JobReplyTests: XCTestCase {
    func view(_ out: String, state: JobState = .succeeded) -> JobView {
        JobView(
            id: "01a-b", tenant: "a", state: state, exitCode: 0, stdout: out, stderr: "e\u{1}\"", argv: ["sh", "-c", "x"], cwd: "/home",
            timeoutSeconds: 60, createdAt: 1000, startedAt: 1001, finishedAt: 1002)
    }

    func testTheSplicedReplyIsReplyMakesReply() {
        let allocator = ByteBufferAllocator()
        for id: JSONValue in [.int(7), .string("req \"1\""), .null] {
            for existing in [false, true] {
                let v = view(String(repeating: "x\n", count: 1000))
                let expected = allocator.frame(Reply.make("job", id: id, [("job", v.json), ("existing", .bool(existing))]))
                let viewBytes = JobViewBytes().serialized(v, allocator: allocator)
                var (frame, tail) = Responder.jobReplyParts(id: id, viewBytes: viewBytes.readableBytes, existing: existing, allocator: allocator)
                var shared = viewBytes
                frame.writeBuffer(&shared)
                frame.writeBuffer(&tail)
                XCTAssertEqual(frame, expected)
            }
        }
    }

    func testTheCacheServesOnlyTheSameView() {
        let cache = JobViewBytes()
        let allocator = ByteBufferAllocator()
        let a = view("one"), b = view("two"), running = view("one", state: .running)
        func bytes(_ v: JobView) -> [UInt8] { Array(cache.serialized(v, allocator: allocator).readableBytesView) }
        XCTAssertEqual(bytes(a), a.json.serialized())
        XCTAssertEqual(bytes(a), a.json.serialized())
        XCTAssertEqual(bytes(b), b.json.serialized())
        XCTAssertEqual(bytes(running), running.json.serialized())
        XCTAssertEqual(bytes(a), a.json.serialized())
    }
}
