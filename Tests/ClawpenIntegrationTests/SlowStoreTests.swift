import ClawpenClient
import ClawpenProtocol
import ClawpenTestSupport
import Foundation
import XCTest

/// A store whose every commit takes 200 ms (the writer's test hook,
/// `CLAWPEN_TEST_STORE_COMMIT_DELAY_MS`): the loop does not wait for it, and nothing is
/// promised before it is committed.
final class SlowStoreTests: XCTestCase {
    static let delayMs = 200

    private func slowDaemon(dir: String? = nil) throws -> Daemon {
        let d = try Daemon(dir: dir)
        d.environment["CLAWPEN_TEST_STORE_COMMIT_DELAY_MS"] = "\(Self.delayMs)"
        return try d.start()
    }

    private func pct(_ xs: [Double], _ q: Double) -> Double { xs.sorted()[min(xs.count - 1, Int(Double(xs.count) * q))] }

    private func ms(since t0: UInt64) -> Double { Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e6 }

    /// Four clients submit and wait without pause while a fifth pings and asks `status`: the
    /// submits take at least the commit's 200 ms, pings and status stay under 10 ms at p99,
    /// and every acknowledged job is there, succeeded, read back at once and after a restart.
    func testASlowStoreLeavesPingAndStatusFast() throws {
        let d = try slowDaemon()
        defer { d.cleanup() }
        let tenants = ["slow-a", "slow-b"]
        for t in tenants {
            try d.createTenant(t, tier: "enterprise")
            _ = try d.run(t, ["true"]) // its data key is made now, not during the measurement
        }
        let status = try d.status()
        XCTAssertEqual(status["supervisor"]?["store"]?["test_commit_delay_ms"]?.intValue, Int64(Self.delayMs), "the hook is in force")

        let lock = NSLock()
        nonisolated(unsafe) var acknowledged: [String] = []
        nonisolated(unsafe) var submitMs: [Double] = []
        nonisolated(unsafe) var failures: [String] = []
        nonisolated(unsafe) var stop = false
        let group = DispatchGroup()
        nonisolated(unsafe) let daemon = d
        for c in 0..<4 {
            group.enter()
            Thread.detachNewThread {
                defer { group.leave() }
                var n = 0
                while !(lock.withLock { stop }) {
                    n += 1
                    let t0 = DispatchTime.now().uptimeNanoseconds
                    do {
                        let job = try daemon.run(tenants[c % 2], ["echo", "c\(c)-\(n)"], key: "c\(c)-\(n)")
                        let took = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e6
                        lock.withLock {
                            acknowledged.append(job.id)
                            submitMs.append(took)
                            if job.state != .succeeded || job.stdout != "c\(c)-\(n)\n" { failures.append("\(job.id): \(job.state) \(job.stdout)") }
                        }
                    } catch {
                        lock.withLock { failures.append("submit: \(error)") }
                    }
                }
            }
        }
        usleep(500_000)
        let conn = try d.connect()
        var pings: [Double] = []
        var statuses: [Double] = []
        let end = Date().addingTimeInterval(5)
        while Date() < end {
            var t0 = DispatchTime.now().uptimeNanoseconds
            _ = try conn.call(.ping)
            pings.append(ms(since: t0))
            if pings.count % 5 == 0 {
                t0 = DispatchTime.now().uptimeNanoseconds
                _ = try conn.status()
                statuses.append(ms(since: t0))
            }
            usleep(5_000)
        }
        lock.withLock { stop = true }
        XCTAssertEqual(group.wait(timeout: .now() + 30), .success)
        let ids = lock.withLock { acknowledged }
        let submits = lock.withLock { submitMs }
        print(
            "slow store (\(Self.delayMs) ms per commit): \(pings.count) pings p50 \(pct(pings, 0.5)) ms p99 \(pct(pings, 0.99)) ms max \(pings.max()!) ms; "
                + "\(statuses.count) status p50 \(pct(statuses, 0.5)) ms p99 \(pct(statuses, 0.99)) ms; "
                + "\(submits.count) submits p50 \(submits.isEmpty ? 0 : pct(submits, 0.5)) ms")
        XCTAssertEqual(lock.withLock { failures }, [])
        XCTAssertGreaterThan(ids.count, 8, "submits went on")
        XCTAssertGreaterThanOrEqual(submits.min() ?? 0, Double(Self.delayMs), "a submit waits for its commit (accepted means committed)")
        XCTAssertLessThan(pct(pings, 0.99), 10, "ping p99 under a slow store")
        XCTAssertLessThan(pct(statuses, 0.99), 10, "status p99 under a slow store")

        // What was acknowledged is committed: read back at once, and after a restart.
        for id in ids.prefix(20) { XCTAssertEqual(try d.connect().job(.jobGet(jobID: id)).job.state, .succeeded, id) }
        XCTAssertEqual(d.stop(), 0)
        let again = try Daemon(dir: d.dir).start()
        for id in ids { XCTAssertEqual(try again.connect().job(.jobGet(jobID: id)).job.state, .succeeded, id) }
        again.stop()
    }

    /// Each read sees what a reply promised, though the commit behind it is slow: a job id from
    /// a detached submit is found at once; `job.wait` hears the end; a keyed resubmission made
    /// while the first is in flight names the same job; a streamed submit's first frame is
    /// `accepted`, before any output; `job.cancel` of a queued job answers `canceled`.
    func testReadsSeeWhatWasPromisedWhileCommitsAreSlow() throws {
        let d = try slowDaemon()
        defer { d.cleanup() }
        try d.createTenant("slow-r", tier: "enterprise")
        _ = try d.run("slow-r", ["true"])

        let detached = try d.detach("slow-r", ["sh", "-c", "echo done"])
        let got = try d.connect().job(.jobGet(jobID: detached.id)).job
        XCTAssertEqual(got.id, detached.id)
        let waited = try d.connect().job(.jobWait(jobID: detached.id)).job
        XCTAssertEqual(waited.state, .succeeded)
        XCTAssertEqual(waited.stdout, "done\n")

        // Two submits with one key on two connections, the second sent while the first's
        // commit is in flight: one job.
        let a = try StreamClient(d)
        let b = try StreamClient(d)
        let fields: [(String, JSONValue)] = [
            ("tenant", .string("slow-r")), ("argv", .array([.string("sleep"), .string("0.2")])), ("idempotency_key", .string("once")),
        ]
        let ia = a.send("submit", fields)
        usleep(20_000)
        let ib = b.send("submit", fields)
        let ja = a.until("job", id: ia).frame
        let jb = b.until("job", id: ib).frame
        XCTAssertNotNil(ja?["job"]?["id"]?.stringValue)
        XCTAssertEqual(ja?["job"]?["id"], jb?["job"]?["id"], "one key, one job")
        XCTAssertEqual(jb?["existing"], .bool(true))

        // A streamed submit: `accepted` first, then its output, then the final job.
        let s = try StreamClient(d)
        let sid = s.send(
            "submit", [("tenant", .string("slow-r")), ("argv", .array(["sh", "-c", "echo one; echo two"].map(JSONValue.string))), ("stream", .bool(true))])
        var frames: [JSONValue] = []
        while let f = s.next() {
            frames.append(f)
            if f["type"]?.stringValue == "job" || f["type"]?.stringValue == "error" { break }
        }
        XCTAssertEqual(frames.first?["type"]?.stringValue, "accepted", "\(frames)")
        XCTAssertEqual(frames.first?["id"], .int(sid))
        XCTAssertEqual(frames.last?["type"]?.stringValue, "job", "\(frames)")
        XCTAssertEqual(StreamClient.text(frames), "one\ntwo\n")

        // A queued job canceled: the answer is its end, once recorded.
        let busy = try (0..<40).map { _ in try d.detach("slow-r", ["sleep", "5"]) }
        let queued = try d.detach("slow-r", ["sleep", "5"]) // queued or running: canceled either way
        let canceled = try d.connect().job(.jobCancel(jobID: queued.id)).job
        XCTAssertEqual(canceled.state, .canceled)
        for j in busy { _ = try? d.connect().job(.jobCancel(jobID: j.id)) }
    }
}
