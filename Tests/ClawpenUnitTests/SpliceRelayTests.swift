import CClawpenShim
@testable import ClawpenEgress
import ClawpenTestSupport
import Foundation
import Glibc
import NIOCore
import NIOEmbedded
import NIOPosix
import XCTest

/// The kernel relay of the egress proxy (cp_splice.h) on real loopback TCP connections: each
/// relay joins the inner ends of two connections, and the test plays the job (the client's
/// outer end) and the upstream (the upstream's outer end).
final class SpliceRelayTests: XCTestCase {
    struct Connection {
        let outer: Int32 // the test's end, blocking, with a receive timeout
        let inner: Int32 // the relay's end, non-blocking
    }

    var opened: [Int32] = []
    override func tearDown() {
        for fd in opened { close(fd) }
        opened = []
    }

    func connection() throws -> Connection {
        let (l, port) = try XCTUnwrap(Loopback.listener(backlog: 4))
        defer { close(l) }
        let outer = Loopback.connect(port: port)
        XCTAssertGreaterThanOrEqual(outer, 0)
        let inner = accept(l, nil, nil)
        XCTAssertGreaterThanOrEqual(inner, 0)
        XCTAssertEqual(fcntl(inner, F_SETFL, fcntl(inner, F_GETFL) | O_NONBLOCK), 0)
        var tv = timeval(tv_sec: 10, tv_usec: 0)
        setsockopt(outer, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        opened.append(outer)
        return Connection(outer: outer, inner: inner)
    }

    func send(_ fd: Int32, _ bytes: [UInt8]) {
        var off = 0
        while off < bytes.count {
            let n = bytes[off...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            guard n > 0 else { return XCTFail("send: \(String(cString: strerror(errno)))") }
            off += n
        }
    }

    /// Exactly `count` bytes, or fewer if the stream ends (or times out) first.
    func receive(_ fd: Int32, _ count: Int) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count)
        var got = 0
        while got < count {
            let n = out[got...].withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n <= 0 { break }
            got += n
        }
        return Array(out[0..<got])
    }

    /// Reads to the end of the stream: nil if it does not end within the receive timeout.
    func receiveToEnd(_ fd: Int32) -> [UInt8]? {
        var out: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n == 0 { return out }
            if n < 0 { return errno == ECONNRESET ? out : nil }
            out += chunk[0..<n]
        }
    }

    func waitForEnds(_ engine: OpaquePointer, count: Int, within seconds: Double = 10) -> [cp_relay_done] {
        var ends: [cp_relay_done] = []
        let deadline = Date().addingTimeInterval(seconds)
        var buf = [cp_relay_done](repeating: cp_relay_done(), count: 16)
        while ends.count < count, Date() < deadline {
            let n = buf.withUnsafeMutableBufferPointer { cp_relay_take_done(engine, $0.baseAddress, $0.count) }
            ends += buf[0..<n]
            if n == 0 { usleep(5000) }
        }
        return ends
    }

    func relay(
        _ engine: OpaquePointer, id: UInt64, _ client: Connection, _ upstream: Connection, toUpstream: String = "", toClient: String = "", idleMs: Int32 = 60000
    )
        -> Int32
    {
        start(engine, id: id, client: client.inner, upstreamFD: upstream.inner, toUpstream: toUpstream, toClient: toClient, idleMs: idleMs)
    }

    func start(
        _ engine: OpaquePointer, id: UInt64, client: Int32, upstreamFD: Int32, port: UInt16 = 0, toUpstream: String = "", toClient: String = "",
        connectMs: Int32 = 10000, idleMs: Int32 = 60000
    ) -> Int32 {
        let up = Array(toUpstream.utf8), down = Array(toClient.utf8), address: [UInt8] = [127, 0, 0, 1]
        return up.withUnsafeBytes { u in
            down.withUnsafeBytes { d in
                address.withUnsafeBufferPointer { a in
                    var spec = cp_relay_spec(
                        id: id, client_fd: client, upstream_fd: upstreamFD, address: a.baseAddress, address_len: a.count, port: port,
                        to_upstream: u.baseAddress, to_upstream_len: u.count, to_client: d.baseAddress, to_client_len: d.count,
                        fail_status_lines: "HTTP/1.1 502 Bad Gateway\r\nX-Clawpen-Rule: upstream\r\n", fail_message: "clawpen egress: cannot reach test",
                        connect_ms: connectMs, idle_ms: idleMs)
                    return cp_relay_start(engine, &spec)
                }
            }
        }
    }

    /// A listener on 127.0.0.1 with `backlog`, closed at the end of the test.
    func listener(backlog: Int32 = 8) throws -> (Int32, UInt16) {
        let (fd, port) = try XCTUnwrap(Loopback.listener(backlog: backlog))
        opened.append(fd)
        return (fd, port)
    }

    /// The engine's own connection: the request head goes once it is made, the 200 of a
    /// CONNECT before anything the upstream says.
    func testTheEngineConnectsSendsTheHeadsAndRelays() throws {
        let engine = try XCTUnwrap(cp_relay_engine_start())
        let (l, port) = try listener()
        let client = try connection()
        XCTAssertEqual(start(engine, id: 9, client: client.inner, upstreamFD: -1, port: port, toUpstream: "HEAD\r\n", toClient: "200\r\n"), 0)
        let up = accept(l, nil, nil)
        XCTAssertGreaterThanOrEqual(up, 0)
        opened.append(up)
        var tv = timeval(tv_sec: 10, tv_usec: 0)
        setsockopt(up, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        XCTAssertEqual(String(decoding: receive(up, 6), as: UTF8.self), "HEAD\r\n")
        send(up, Array("answer".utf8))
        close(up)
        opened.removeAll { $0 == up }
        XCTAssertEqual(receiveToEnd(client.outer).map { String(decoding: $0, as: UTF8.self) }, "200\r\nanswer")
        shutdown(client.outer, Int32(SHUT_WR))
        let ends = waitForEnds(engine, count: 1)
        XCTAssertEqual(ends.first?.stage, Int32(CP_RELAY_RELAYED.rawValue))
        XCTAssertEqual(ends.first?.up_bytes, 6)
        XCTAssertEqual(ends.first?.down_bytes, 5 + 6)
    }

    /// Nothing listens: the client gets a 502 that says why and by which rule, and nothing of
    /// the 200 meant for a connection that was never made.
    func testAnUpstreamThatRefusesIsA502ThatSaysWhy() throws {
        let engine = try XCTUnwrap(cp_relay_engine_start())
        let (l, port) = try listener()
        close(l)
        opened.removeAll { $0 == l }
        let client = try connection()
        XCTAssertEqual(start(engine, id: 4, client: client.inner, upstreamFD: -1, port: port, toClient: "HTTP/1.1 200 Connection Established\r\n\r\n"), 0)
        let answer = String(decoding: receiveToEnd(client.outer) ?? [], as: UTF8.self)
        XCTAssertTrue(answer.hasPrefix("HTTP/1.1 502 Bad Gateway\r\nX-Clawpen-Rule: upstream\r\n"), answer)
        XCTAssertTrue(answer.hasSuffix("\r\n\r\nclawpen egress: cannot reach test: Connection refused\n"), answer)
        XCTAssertFalse(answer.contains("200"), answer)
        let ends = waitForEnds(engine, count: 1)
        XCTAssertEqual(ends.first?.stage, Int32(CP_RELAY_CONNECT_FAILED.rawValue))
        XCTAssertEqual(ends.first?.reason, ECONNREFUSED)
    }

    /// An upstream that never answers the SYN (its accept queue is full, so the kernel drops it)
    /// holds the connection for connect_ms, then the client hears it timed out.
    func testAConnectionNotMadeInTimeIsA502() throws {
        let engine = try XCTUnwrap(cp_relay_engine_start())
        let (_, port) = try listener(backlog: 0)
        // Fill the accept queue: later SYNs are dropped, the connect hangs.
        var fillers: [Int32] = []
        for _ in 0..<3 {
            let f = Loopback.connect(port: port, nonBlocking: true)
            XCTAssertGreaterThanOrEqual(f, 0)
            fillers.append(f)
        }
        opened += fillers
        usleep(100_000)
        let client = try connection()
        let t0 = Date()
        XCTAssertEqual(start(engine, id: 5, client: client.inner, upstreamFD: -1, port: port, toUpstream: "GET", connectMs: 700), 0)
        let answer = String(decoding: receiveToEnd(client.outer) ?? [], as: UTF8.self)
        let waited = Date().timeIntervalSince(t0)
        XCTAssertTrue(answer.contains("cannot reach test: Connection timed out"), answer)
        XCTAssertGreaterThan(waited, 0.6)
        XCTAssertLessThan(waited, 3)
        XCTAssertEqual(waitForEnds(engine, count: 1).first?.reason, ETIMEDOUT)
    }

    func pattern(_ count: Int, seed: UInt8) -> [UInt8] { (0..<count).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ $0 >> 11) ^ seed } }

    func testHeadsGoFirstThenBothWaysAndHalfClosesArePassedOn() throws {
        let engine = try XCTUnwrap(cp_relay_engine_start())
        let client = try connection(), upstream = try connection()
        // The upstream speaks first (an SSH banner would): it must still reach the client after
        // the proxy's own answer to CONNECT.
        send(upstream.outer, Array("banner\n".utf8))
        XCTAssertEqual(relay(engine, id: 7, client, upstream, toUpstream: "GET / HTTP/1.1\r\n\r\n", toClient: "HTTP/1.1 200 OK\r\n\r\n"), 0)
        XCTAssertEqual(String(decoding: receive(client.outer, 26), as: UTF8.self), "HTTP/1.1 200 OK\r\n\r\nbanner\n")
        XCTAssertEqual(String(decoding: receive(upstream.outer, 18), as: UTF8.self), "GET / HTTP/1.1\r\n\r\n")
        send(client.outer, Array("body".utf8))
        shutdown(client.outer, Int32(SHUT_WR))
        // The client's end of input reaches the upstream after its last byte...
        XCTAssertEqual(receiveToEnd(upstream.outer).map { String(decoding: $0, as: UTF8.self) }, "body")
        // ...and the upstream can still answer: 16 MiB, more than any pipe or socket buffer.
        let big = pattern(16 << 20, seed: 0x5a)
        let writer = Thread { [upstream] in
            big.withUnsafeBytes { b in
                var off = 0
                while off < b.count {
                    let n = Glibc.send(upstream.outer, b.baseAddress! + off, b.count - off, Int32(MSG_NOSIGNAL))
                    if n <= 0 { break }
                    off += n
                }
            }
            shutdown(upstream.outer, Int32(SHUT_WR))
        }
        writer.start()
        let got = receiveToEnd(client.outer)
        XCTAssertEqual(got?.count, big.count)
        XCTAssertTrue(got == big, "the relayed bytes differ from those sent")
        let ends = waitForEnds(engine, count: 1)
        XCTAssertEqual(ends.count, 1)
        XCTAssertEqual(ends.first?.id, 7)
        XCTAssertEqual(ends.first?.reason, 0)
        XCTAssertEqual(ends.first?.up_bytes, UInt64(18 + 4))
        XCTAssertEqual(ends.first?.down_bytes, UInt64(19 + 7 + big.count))
        XCTAssertEqual(cp_relay_active(engine), 0)
    }

    func testAPeerThatResetsEndsTheRelayAndClosesTheOtherSide() throws {
        let engine = try XCTUnwrap(cp_relay_engine_start())
        let client = try connection(), upstream = try connection()
        XCTAssertEqual(relay(engine, id: 1, client, upstream), 0)
        send(client.outer, Array("x".utf8))
        XCTAssertEqual(receive(upstream.outer, 1), Array("x".utf8))
        var linger = linger(l_onoff: 1, l_linger: 0)
        setsockopt(client.outer, SOL_SOCKET, SO_LINGER, &linger, socklen_t(MemoryLayout<linger>.size))
        close(client.outer)
        opened.removeAll { $0 == client.outer }
        XCTAssertNotNil(receiveToEnd(upstream.outer), "the upstream's side must be closed once the client reset")
        let ends = waitForEnds(engine, count: 1)
        XCTAssertEqual(ends.first?.id, 1)
        XCTAssertNotEqual(ends.first?.reason, 0)
    }

    func testAnIdleRelayIsClosedOnBothSides() throws {
        let engine = try XCTUnwrap(cp_relay_engine_start())
        let client = try connection(), upstream = try connection()
        let start = Date()
        XCTAssertEqual(relay(engine, id: 3, client, upstream, idleMs: 300), 0)
        XCTAssertEqual(receiveToEnd(client.outer), [])
        XCTAssertEqual(receiveToEnd(upstream.outer), [])
        XCTAssertLessThan(Date().timeIntervalSince(start), 5)
        let ends = waitForEnds(engine, count: 1)
        XCTAssertEqual(ends.first?.reason, ETIMEDOUT)
    }

    /// Many relays at once, each downloading its own pattern: no byte crosses from one relay to
    /// another, and a large download does not keep small ones waiting for its end.
    func testConcurrentRelaysKeepTheirBytesApart() throws {
        let engine = try XCTUnwrap(cp_relay_engine_start())
        let count = 24
        var pairs: [(Connection, Connection)] = []
        for i in 0..<count {
            let c = try connection(), u = try connection()
            XCTAssertEqual(relay(engine, id: UInt64(100 + i), c, u), 0)
            pairs.append((c, u))
        }
        let sizes = (0..<count).map { $0 == 0 ? 16 << 20 : 1000 + $0 * 7919 }
        let writers = (0..<count).map { i in
            Thread { [pairs, sizes] in
                let bytes = (0..<sizes[i]).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ $0 >> 11) ^ UInt8(i) }
                bytes.withUnsafeBytes { b in
                    var off = 0
                    while off < b.count {
                        let n = Glibc.send(pairs[i].1.outer, b.baseAddress! + off, b.count - off, Int32(MSG_NOSIGNAL))
                        if n <= 0 { break }
                        off += n
                    }
                }
                close(pairs[i].1.outer)
            }
        }
        opened.removeAll { fd in pairs.contains { $0.1.outer == fd } }
        for w in writers { w.start() }
        for i in (0..<count).reversed() {
            let got = receiveToEnd(pairs[i].0.outer)
            XCTAssertTrue(got == pattern(sizes[i], seed: UInt8(i)), "relay \(i) delivered \(got?.count ?? -1) bytes, not its own \(sizes[i])")
            shutdown(pairs[i].0.outer, Int32(SHUT_WR))
        }
        let ends = waitForEnds(engine, count: count)
        XCTAssertEqual(Set(ends.map(\.id)), Set((0..<count).map { UInt64(100 + $0) }))
        XCTAssertEqual(cp_relay_active(engine), 0)
    }

    /// The proxy hands over a NIO channel's socket only when it can prove which fd it is.
    func testOnlyARealSocketIsHandedOver() throws {
        XCTAssertNil(SpliceRelays.ownSocket(of: EmbeddedChannel()))
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        defer { try? group.syncShutdownGracefully() }
        let server = try ServerBootstrap(group: group).bind(host: "127.0.0.1", port: 0).wait()
        defer { server.close(promise: nil) }
        let client = try ClientBootstrap(group: group).connect(to: server.localAddress!).wait()
        defer { client.close(promise: nil) }
        let fd = try client.eventLoop.submit { SpliceRelays.ownSocket(of: client) }.wait()
        let dup = try XCTUnwrap(fd)
        defer { close(dup) }
        var local = sockaddr_in()
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &local) { p in p.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(dup, $0, &len) } }
        XCTAssertEqual(Int(UInt16(bigEndian: local.sin_port)), client.localAddress?.port)
    }
}
