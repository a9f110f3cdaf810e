@testable import ClawpenProtocol
@testable import ClawpenSupervisor
import ClawpenWire
import Foundation
import NIOCore
import NIOEmbedded
import XCTest

/// What the supervisor remembers of jobs read lately (RecentJobs.swift): only final views, within
/// its bounds, forgotten all at once when records are removed.
final class RecentJobsTests: XCTestCase {
    private func view(_ id: String, _ state: JobState, output: Int = 0) -> JobView {
        JobView(
            id: id, tenant: "a", state: state, exitCode: state == .succeeded ? 0 : nil, stdout: String(repeating: "x", count: output),
            argv: ["true"], cwd: "/home", timeoutSeconds: 30, createdAt: 1)
    }

    func testKeepsFinalViewsAndTheTenantOfEveryJobRead() {
        let recent = RecentJobs()
        recent.keep(view("running", .running), tenant: .t("a"))
        recent.keep(view("done", .succeeded), tenant: .t("a"))
        XCTAssertNil(recent.finishedView("running"), "a running job changes: never kept")
        XCTAssertEqual(recent.tenant("running"), .t("a"), "its tenant does not change: kept")
        XCTAssertEqual(recent.finishedView("done")?.state, .succeeded)
        recent.removeAll()
        XCTAssertNil(recent.finishedView("done"))
        XCTAssertNil(recent.tenant("running"))
        XCTAssertEqual(recent.counts.finishedBytes, 0)
    }

    func testFinishedViewsStayWithinTheirBytesOldestGoingFirst() {
        let recent = RecentJobs(maxFinishedBytes: 10_000)
        for i in 0..<5 { recent.keep(view("j\(i)", .succeeded, output: 3_000), tenant: .t("a")) }
        XCTAssertLessThanOrEqual(recent.counts.finishedBytes, 10_000)
        XCTAssertNil(recent.finishedView("j0"), "the oldest went first")
        XCTAssertNotNil(recent.finishedView("j4"))
        recent.keep(view("huge", .failed, output: 20_000), tenant: .t("a"))
        XCTAssertNil(recent.finishedView("huge"), "larger than the whole bound: not kept")
        XCTAssertNotNil(recent.finishedView("j4"), "and nothing was dropped for it")
    }

    func testBoundedMapForgetsItsOldestPastItsCount() {
        var map = BoundedMap<Int>(maxCount: 3)
        for i in 0..<5000 { map.insert("k\(i)", i) }
        XCTAssertEqual(map.count, 3)
        XCTAssertNil(map["k4996"])
        XCTAssertEqual(map["k4999"], 4999)
        XCTAssertNil(map.insert("k4999", -1), "an existing key is left as it is")
        XCTAssertEqual(map["k4999"], 4999)
    }
}

/// The bulk paths of the wire: base64 in pieces and JSON strings in runs must give the same
/// bytes as the plain definitions, at every boundary.
final class BulkEncodingTests: XCTestCase {
    func testBase64AppendsTheSameBytesAsFoundationAcrossPieceBoundaries() {
        for n in [0, 1, 2, 3, 3071, 3072, 3073, 6143, 6144, 6145, 100_001] {
            let bytes = (0..<n).map { UInt8(truncatingIfNeeded: $0 &* 7919 &+ 13) }
            var out: [UInt8] = Array("prefix:".utf8)
            bytes.withUnsafeBytes { Base64.encode($0, into: &out) }
            XCTAssertEqual(String(decoding: out, as: UTF8.self), "prefix:" + Data(bytes).base64EncodedString(), "n = \(n)")
        }
    }

    func testJSONStringsEscapeEveryByteThatNeedsItWhereverItFalls() throws {
        let samples = [
            "", "plain", "\"", "\\", "a\"b\\c", "line\nnext\r\ttab", "\u{0}\u{1}\u{1F}\u{7F}", "é ü 日本 🙂",
            String(repeating: "x", count: 100_000) + "\"" + String(repeating: "y", count: 10) + "\n",
        ]
        for s in samples {
            var out: [UInt8] = []
            JSONValue.writeString(s, to: &out)
            let back = try JSONSerialization.jsonObject(with: Data(out), options: [.fragmentsAllowed]) as? String
            XCTAssertEqual(back, s)
            XCTAssertFalse(out.dropFirst().dropLast().contains { $0 < 0x20 || $0 == 0x7F }, "no raw control byte")
            XCTAssertEqual(try JSONValue.parse(out), .string(s))
        }
    }
}

/// The connections that gave way are taken up in turn, one at a time in order, and each run of
/// the line ends once the tick's budget is spent (LoopTicks.swift).
final class ClientTurnsTests: XCTestCase {
    func testTurnsGoInOrderOnePerRunWhenEachSpendsTheBudget() {
        let loop = EmbeddedEventLoop()
        let ticks = LoopTicks()
        let turns = ClientTurns(ticks: ticks, loop: loop)
        var order: [Int] = []
        for i in 0..<6 {
            turns.giveWay {
                order.append(i)
                // Each turn spends the whole budget, so a run takes one turn only (the first of
                // a run goes whatever the budget says).
                ticks.spend(LoopTicks.budgetNanos)
            }
        }
        XCTAssertEqual(order, [], "taken up in a later tick, not now")
        for run in 1...6 {
            loop.advanceTime(by: LoopTicks.yieldDelay)
            XCTAssertEqual(order, Array(0..<run), "run \(run)")
            // NIO's delegate ends the tick; here, by hand.
            ticks.endTick()
            XCTAssertFalse(ticks.overBudget)
        }
        XCTAssertEqual(turns.count, 0)
    }

    func testARunWithinTheBudgetTakesEveryoneUp() {
        let loop = EmbeddedEventLoop()
        let ticks = LoopTicks()
        let turns = ClientTurns(ticks: ticks, loop: loop)
        var order: [Int] = []
        for i in 0..<50 { turns.giveWay { order.append(i) } }
        loop.advanceTime(by: LoopTicks.yieldDelay)
        XCTAssertEqual(order, Array(0..<50))
    }
}
