import ClawpenProtocol
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
        for id: JSONValue in [.int(7), .string("req \"1\""), .null] {
            for existing in [false, true] {
                let v = view(String(repeating: "x\n", count: 1000))
                let expected = Reply.make("job", id: id, [("job", v.json), ("existing", .bool(existing))])
                XCTAssertEqual(Responder.jobReply(id: id, view: v.json.serialized(), existing: existing), expected)
            }
        }
    }

    func testTheCacheServesOnlyTheSameView() {
        let cache = JobViewBytes()
        let a = view("one"), b = view("two"), running = view("one", state: .running)
        XCTAssertEqual(cache.serialized(a), a.json.serialized())
        XCTAssertEqual(cache.serialized(a), a.json.serialized())
        XCTAssertEqual(cache.serialized(b), b.json.serialized())
        XCTAssertEqual(cache.serialized(running), running.json.serialized())
        XCTAssertEqual(cache.serialized(a), a.json.serialized())
    }
}
