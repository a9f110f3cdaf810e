import CClawpenShim
@testable import ClawpenEgress
import ClawpenPolicy
import ClawpenProtocol
@testable import ClawpenSupervisor
import ClawpenWire
import Foundation
import NIOCore
import NIOEmbedded
import NIOPosix
import Synchronization
import XCTest

final class Flag: Sendable {
    let done = Atomic<Bool>(false)
}

final class SendResult: Sendable {
    let thread = Atomic<UInt>(0)
    let rc = Atomic<Int>(-2)
    let done = Atomic<Bool>(false)
}

/// The sockets between the supervisor and its egress proxy, and the bounds that keep one side
/// from stalling the other.
final class EgressChannelTests: XCTestCase {
    func pair() throws -> (Int32, Int32) {
        var fds: [Int32] = [-1, -1]
        XCTAssertEqual(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds), 0)
        return (fds[0], fds[1])
    }

    /// A send that a signal cuts short (part of the frame is on the socket) goes on with the
    /// rest: the reader gets the whole frame and the fd once, not half a frame.
    func testAShortSendWithAnFDSendsTheRest() throws {
        let (a, b) = try pair()
        defer { close(a); close(b) }
        // A handler that does nothing: the signal only interrupts the blocked sendmsg, which then
        // returns the bytes it had sent.
        signal(SIGUSR1) { _ in }
        let payload = (0..<(1 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 31) }
        let passed = open("/dev/null", O_RDONLY | O_CLOEXEC)
        defer { close(passed) }
        let result = SendResult()
        let sender = Thread {
            result.thread.store(UInt(pthread_self()), ordering: .releasing)
            let rc = payload.withUnsafeBytes { cp_send_with_fd(a, $0.baseAddress, $0.count, passed) }
            result.rc.store(Int(rc), ordering: .releasing)
            result.done.store(true, ordering: .releasing)
        }
        sender.start()
        // No one reads yet: the socket buffer fills and sendmsg blocks with part of the frame sent.
        usleep(200_000)
        let thread = result.thread.load(ordering: .acquiring)
        XCTAssertNotEqual(thread, 0)
        pthread_kill(pthread_t(thread), SIGUSR1)
        usleep(100_000)
        var got: [UInt8] = []
        var fds: [Int32] = []
        var buf = [UInt8](repeating: 0, count: 64 * 1024)
        var tv = timeval(tv_sec: 2, tv_usec: 0)
        setsockopt(b, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        while got.count < payload.count {
            var fd: Int32 = -1
            let n = buf.withUnsafeMutableBytes { cp_recv_with_fd(b, $0.baseAddress, $0.count, &fd) }
            if fd >= 0 { fds.append(fd) }
            if n <= 0 { break }
            got += buf[0..<n]
        }
        for _ in 0..<200 where !result.done.load(ordering: .acquiring) { usleep(10_000) }
        XCTAssertEqual(result.rc.load(ordering: .acquiring), 0, "the send finished the frame")
        XCTAssertEqual(got.count, payload.count)
        XCTAssertTrue(got == payload, "the bytes in order")
        XCTAssertEqual(fds.count, 1, "the fd once, with the first bytes")
        for fd in fds { close(fd) }
    }

    /// The proxy's reports never block its event loop: with no one reading, sends return at
    /// once, and what does not fit is dropped and counted.
    func testReportsToASupervisorThatDoesNotReadNeverBlock() throws {
        let (a, b) = try pair()
        defer { close(a); close(b) }
        let reporter = Reporter(fd: a)
        let big = String(repeating: "x", count: 4 * 1024)
        // 4 MiB of reports to a reader that reads nothing: a blocking send would never return.
        let flag = Flag()
        let sender = Thread {
            for _ in 0..<1000 { reporter.log("info", big) }
            flag.done.store(true, ordering: .releasing)
        }
        sender.start()
        for _ in 0..<1000 where !flag.done.load(ordering: .acquiring) { usleep(10_000) }
        XCTAssertTrue(flag.done.load(ordering: .acquiring), "the sends returned")
        XCTAssertGreaterThan(reporter.droppedCount, 0)
        // Once the supervisor reads again, the next report carries the count of those dropped.
        let drainer = Thread {
            var buf = [UInt8](repeating: 0, count: 1 << 16)
            while recv(b, &buf, buf.count, 0) > 0 {}
        }
        drainer.start()
        for _ in 0..<200 where reporter.droppedCount > 0 {
            reporter.log("info", "after")
            usleep(10_000)
        }
        XCTAssertEqual(reporter.droppedCount, 0, "handed over with a report")
    }

    /// The supervisor's control writer: a proxy that reads nothing is found stuck by the bound,
    /// and the caller never waits.
    func testTheControlWriterNeverBlocksAndFindsAStuckProxy() throws {
        let (a, b) = try pair()
        defer { close(a); close(b) }
        let writer = try XCTUnwrap(EgressControlWriter(controlFD: a))
        let frame = [UInt8](repeating: 7, count: 256 * 1024)
        let t0 = Date()
        var outcome = EgressControlWriter.Outcome.queued
        for _ in 0..<200 {
            outcome = writer.enqueue(frame)
            if outcome != .queued { break }
        }
        XCTAssertLessThan(Date().timeIntervalSince(t0), 2)
        guard case .stuck(let why) = outcome else { return XCTFail("\(outcome)") }
        XCTAssertTrue(why.contains("bytes of control frames wait"), why)
        writer.finish()
        XCTAssertEqual(writer.enqueue(frame), .closed)
    }

    func testDeniedAuditRowsAreCoalescedPerWindow() {
        var w = AuditWindow()
        let key = AuditWindow.Key(tenant: .t("a"), kind: .egress, action: "egress.denied", rule: "default deny", subject: "x.com", port: 80)
        XCTAssertEqual(w.record(key, now: 0).map(\.summary), [false], "the first at once")
        for i in 1...500 { XCTAssertEqual(w.record(key, now: Double(i) / 100), [], "then counted") }
        XCTAssertEqual(w.flush(now: 5), [], "the window is still open")
        let rows = w.flush(now: 10)
        XCTAssertEqual(rows.map(\.count), [500])
        XCTAssertTrue(rows.first?.detail.contains("host=x.com port=80 job=unknown repeated=500") == true)
        XCTAssertTrue(w.isEmpty)
        // A report after the window, before the flush: the old window's summary, then a new first row.
        _ = w.record(key, now: 20)
        _ = w.record(key, now: 21)
        XCTAssertEqual(w.record(key, now: 31).map(\.summary), [true, false])
        // Invented host names: past keysPerTenant, one shared key.
        var v = AuditWindow()
        var written = 0
        for i in 0..<1000 {
            written +=
                v.record(.init(tenant: .t("b"), kind: .egress, action: "egress.denied", rule: "default deny", subject: "h\(i).com", port: 80), now: 0).count
        }
        XCTAssertEqual(written, AuditWindow.keysPerTenant)
        XCTAssertEqual(v.record(key, now: 0).count, 1, "another tenant is not affected")
        let summary = v.flush(now: 10).filter { $0.key.subject == "*" }
        XCTAssertEqual(summary.map(\.count), [1000 - AuditWindow.keysPerTenant])
    }

    func testRefusalRowsAreCoalescedPerTenantRuleAndRequest() {
        var w = AuditWindow()
        let status = AuditWindow.Key(tenant: .t("a"), kind: .refusal, action: "permission.denied", rule: "principal agent", subject: "status")
        XCTAssertEqual(w.record(status, now: 0).count, 1, "the first at once (with the caller's detail)")
        for i in 1...1000 { XCTAssertEqual(w.record(status, now: Double(i) / 1000), []) }
        // Another request, another tenant, a caller with no tenant: each has its own first row.
        XCTAssertEqual(
            w.record(.init(tenant: .t("a"), kind: .refusal, action: "permission.denied", rule: "principal agent", subject: "audit"), now: 1).count, 1)
        XCTAssertEqual(
            w.record(.init(tenant: .t("b"), kind: .refusal, action: "permission.denied", rule: "principal agent", subject: "status"), now: 1).count, 1)
        XCTAssertEqual(w.record(.init(tenant: nil, kind: .refusal, action: "permission.denied", rule: "operator", subject: "status"), now: 1).count, 1)
        let rows = w.flush(now: 11)
        XCTAssertEqual(rows.map(\.count), [1000])
        let detail = rows.first?.detail ?? ""
        XCTAssertTrue(detail.hasPrefix("status: 1000 more refused within 10 s") && detail.contains("repeated=1000"), detail)
    }

    /// A relay whose IdleStateHandler says it carried no byte for the idle timeout closes both
    /// sides (a job cannot park connections on the shared proxy). NIO's handler measures real
    /// time, so the test gives the relay its event directly.
    func testAnIdleRelayClosesBothSides() throws {
        let loop = EmbeddedEventLoop()
        let client = EmbeddedChannel(loop: loop), upstream = EmbeddedChannel(loop: loop)
        let counter = ByteCounter(tenant: "a", reporter: Reporter(fd: -1))
        let (local, remote) = GlueHandler.matchedPair(counter: counter)
        try client.pipeline.syncOperations.addHandler(local)
        try upstream.pipeline.syncOperations.addHandler(remote)
        try client.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        try upstream.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 2)).wait()
        try client.writeInbound(client.allocator.buffer(string: "x"))
        XCTAssertEqual(try upstream.readOutbound(as: ByteBuffer.self)?.readableBytes, 1)
        client.pipeline.fireUserInboundEventTriggered(IdleStateHandler.IdleStateEvent.write)
        XCTAssertTrue(client.isActive, "another event than idleness in both directions changes nothing")
        client.pipeline.fireUserInboundEventTriggered(IdleStateHandler.IdleStateEvent.all)
        loop.run()
        XCTAssertFalse(client.isActive, "idle for the timeout: closed")
        XCTAssertFalse(upstream.isActive, "and its partner with it")
        XCTAssertEqual(counter.up, 1)
    }

    func testTheLeafCacheKeepsTheMostRecentlyUsed() {
        var c = ProxyState.LeafCache<Int>()
        for i in 0..<10 { c.put("h\(i)", i, limit: 4) }
        XCTAssertEqual(c.count, 4)
        XCTAssertNil(c.get("h0"))
        XCTAssertEqual(c.get("h6"), 6)
        c.put("new", 99, limit: 4)
        XCTAssertEqual(c.get("h6"), 6, "used a moment ago: kept")
        XCTAssertNil(c.get("h7"), "the least recently used went")
    }
}

/// The proxy's name lookups, fair between tenants.
final class FairResolverTests: XCTestCase {
    func testATenantWithSlowNamesDelaysOnlyItself() throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        defer { try? group.syncShutdownGracefully() }
        let loop = group.next()
        let r = FairResolver(threads: 2) { host in
            if host.hasPrefix("slow") { usleep(200_000) }
            return [IPAddress("93.184.215.14")].compactMap { $0 }
        }
        r.start()
        var slow: [EventLoopFuture<[IPAddress]>] = []
        for i in 0..<10 { slow.append(try XCTUnwrap(r.resolve(tenant: "a", host: "slow\(i).example.com", eventLoop: loop))) }
        let t0 = Date()
        let fast = try XCTUnwrap(r.resolve(tenant: "b", host: "fast.example.com", eventLoop: loop))
        XCTAssertEqual(try fast.wait().count, 1)
        XCTAssertLessThan(Date().timeIntervalSince(t0), 0.5, "b waited behind a's ten 200 ms lookups")
        XCTAssertEqual(r.load("a").running, 1, "a holds one thread at most")
        for f in slow { _ = try f.wait() }
        // A queue of its own, bounded.
        let blocked = FairResolver(threads: 2) { _ in
            usleep(50_000)
            return []
        }
        blocked.start()
        var kept: [EventLoopFuture<[IPAddress]>] = []
        var refused = 0
        for i in 0..<(FairResolver.maxQueuedPerTenant + 10) {
            if let f = blocked.resolve(tenant: "a", host: "h\(i)", eventLoop: loop) { kept.append(f) } else { refused += 1 }
        }
        XCTAssertGreaterThan(refused, 0)
        XCTAssertNotNil(blocked.resolve(tenant: "b", host: "x", eventLoop: loop), "another tenant still gets in")
        for f in kept { _ = try f.wait() }
    }
}
