import CClawpenShim
import ClawpenPolicy
import Glibc
import NIOCore
import NIOPosix

/// Connections the proxy carries without reading them (a plain HTTP request once its head is
/// decided, a CONNECT tunnel), handed from the event loop to the kernel: the relay thread of
/// cp_splice.h connects to the upstream and moves the bytes with splice(2), so a download no
/// longer goes through the proxy's memory (and its one loop) twice, and a request costs the loop
/// no upstream channel (its registration, its connect's wake-up, its close). What stays with the
/// loop: the tenant's connection slot, released when the relay ends, and the counts (or the
/// refusal, when the upstream cannot be reached) reported then.
///
/// Only real sockets are handed over: a channel whose fd cannot be found and proven to be its
/// socket (by SO_COOKIE, unique per socket) stays on the event-loop relay (GlueHandler).
final class SpliceRelays: @unchecked Sendable {
    private struct Owner {
        let tenant: String
        let admitted: Bool
        let host: String
        let port: Int
    }

    private let engine: OpaquePointer
    private let loop: EventLoop
    private let state: ProxyState
    private let reporter: Reporter
    // Loop-confined.
    private var owners: [UInt64: Owner] = [:]
    private var nextID: UInt64 = 1
    private var refused = 0

    /// Nil when the relay thread cannot start: every relay then runs on the event loop.
    init?(loop: EventLoop, state: ProxyState, reporter: Reporter) {
        guard let engine = cp_relay_engine_start() else { return nil }
        self.engine = engine
        self.loop = loop
        self.state = state
        self.reporter = reporter
        let doneFD = fcntl(cp_relay_done_fd(engine), F_DUPFD_CLOEXEC, 0)
        guard doneFD >= 0 else { return nil }
        let handler = DoneReader(relays: self)
        do {
            _ = try NIOPipeBootstrap(group: loop)
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(handler) }
                }
                .takingOwnershipOfDescriptor(input: doneFD).wait()
        } catch {
            // Not closed here: NIO may have taken the descriptor before it failed, and a second
            // close could end another fd of the same number.
            reporter.log("error", "the kernel relay's end notices cannot be read (\(error)): relays run on the event loop")
            return nil
        }
    }

    var active: Int { cp_relay_active(engine) }

    /// Hands the client channel's socket to the relay thread, which connects to the upstream
    /// itself (`address`, `port`) and sends `toUpstream` there and `toClient` to the client once
    /// connected; if the connection cannot be made, the client gets a 502 saying so (rule
    /// `upstream`), reported as a refusal. On success the channel is closed (its fd only: the
    /// socket lives on in the relay) and true is returned. On the loop, before anything was
    /// written to the channel.
    func relay(
        client: Channel, address: IPAddress, host: String, port: Int, toUpstream: ByteBuffer, toClient: [UInt8], tenant: String,
        admitted: Bool, connectTimeout: TimeAmount, idle: TimeAmount
    ) -> Bool {
        loop.preconditionInEventLoop()
        guard let clientFD = Self.ownSocket(of: client) else { return false }
        let id = nextID
        nextID += 1
        let status = "HTTP/1.1 502 Bad Gateway\r\nX-Clawpen-Rule: upstream\r\nContent-Type: text/plain\r\n"
        let message = "clawpen egress: cannot reach \(host):\(port) (\(address))"
        let rc = toUpstream.withUnsafeReadableBytes { up in
            toClient.withUnsafeBytes { down in
                address.bytes.withUnsafeBufferPointer { addr in
                    status.withCString { status in
                        message.withCString { message in
                            var spec = cp_relay_spec(
                                id: id, client_fd: clientFD, upstream_fd: -1, address: addr.baseAddress, address_len: addr.count,
                                port: UInt16(clamping: port), to_upstream: up.baseAddress, to_upstream_len: up.count,
                                to_client: down.baseAddress, to_client_len: down.count, fail_status_lines: status, fail_message: message,
                                connect_ms: Int32(clamping: connectTimeout.nanoseconds / 1_000_000),
                                idle_ms: Int32(clamping: idle.nanoseconds / 1_000_000))
                            return cp_relay_start(engine, &spec)
                        }
                    }
                }
            }
        }
        guard rc == 0 else {
            // The duplicate is closed by cp_relay_start; the channel still holds the socket, untouched.
            refused += 1
            if refused & (refused - 1) == 0 {
                reporter.log(
                    "warning",
                    "kernel relay refused (\(String(cString: strerror(errno))); \(refused) so far, \(active) running): such connections are relayed by the event loop, with a copy of every byte"
                )
            }
            return false
        }
        owners[id] = Owner(tenant: tenant, admitted: admitted, host: host, port: port)
        client.close(promise: nil)
        return true
    }

    fileprivate func drainEnds() {
        var ends = [cp_relay_done](repeating: cp_relay_done(), count: 64)
        while true {
            let n = ends.withUnsafeMutableBufferPointer { cp_relay_take_done(engine, $0.baseAddress, $0.count) }
            for end in ends[0..<n] {
                guard let owner = owners.removeValue(forKey: end.id) else { continue }
                if owner.admitted { state.release(owner.tenant) }
                if end.stage == Int32(CP_RELAY_CONNECT_FAILED.rawValue) {
                    reporter.denied(owner.tenant, owner.host, owner.port, "upstream")
                } else {
                    reporter.done(owner.tenant, allowed: true, up: Int(end.up_bytes), down: Int(end.down_bytes))
                }
            }
            if n < ends.count { return }
        }
    }

    /// A duplicate of the channel's socket fd, proven to be that socket. NIO keeps its fd to
    /// itself; its description names it ("fd=N"), and the socket's SO_COOKIE as NIO reads it on
    /// its own fd must equal the duplicate's: a number that does not name that very socket is
    /// never used.
    static func ownSocket(of channel: Channel) -> Int32? {
        let text = Array(String(describing: channel).utf8), key = Array("fd=".utf8)
        guard let at = text.indices.first(where: { text[$0...].starts(with: key) }) else { return nil }
        let digits = text[(at + key.count)...].prefix(while: { $0 >= 0x30 && $0 <= 0x39 })
        guard let fd = Int32(String(decoding: digits, as: UTF8.self)), fd >= 0 else { return nil }
        guard let provider = channel as? SocketOptionProvider else { return nil }
        let seen = CookieBox()
        provider.unsafeGetSocketOption(level: SocketOptionLevel(SOL_SOCKET), name: SocketOptionName(cp_so_cookie_option()))
            .whenSuccess { (cookie: UInt64) in seen.value = cookie }
        guard seen.value != 0 else { return nil }
        let dup = fcntl(fd, F_DUPFD_CLOEXEC, 0)
        guard dup >= 0 else { return nil }
        guard cp_socket_cookie(dup) == seen.value else {
            close(dup)
            return nil
        }
        return dup
    }
}

/// The socket option read on the loop completes at once; this carries its value out.
private final class CookieBox: @unchecked Sendable {
    var value: UInt64 = 0
}

/// Reads the engine's eventfd on the loop: each read means relays have ended.
private final class DoneReader: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    let relays: SpliceRelays
    init(relays: SpliceRelays) { self.relays = relays }
    func channelRead(context: ChannelHandlerContext, data: NIOAny) { relays.drainEnds() }
}
