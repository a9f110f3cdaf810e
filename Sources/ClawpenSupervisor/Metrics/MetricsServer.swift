import Glibc
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix

/// What `/readyz` answers: ready once the store is open, the policies are loaded and the socket
/// serves; not ready while the store cannot be opened or once a shutdown has begun. Written by
/// `Server.run` and the shutdown path, read by the HTTP server's thread.
public final class Readiness: Sendable {
    struct State {
        var store: String? = "the store is not open yet"
        var policies: String? = "the policies are not loaded yet"
        var serving: String? = "the control socket does not serve yet"
        var draining: String?
    }
    private let state = NIOLockedValueBox(State())

    public init() {}

    func storeOpened() { state.withLockedValue { $0.store = nil } }
    func storeFailed(_ why: String) { state.withLockedValue { $0.store = "the store cannot be opened: \(why)" } }
    func policiesLoaded() { state.withLockedValue { $0.policies = nil } }
    func serving() { state.withLockedValue { $0.serving = nil } }
    func draining() { state.withLockedValue { $0.draining = "the daemon is shutting down" } }

    /// nil: ready; else every reason it is not.
    var notReady: [String]? {
        let s = state.withLockedValue { $0 }
        let reasons = [s.store, s.policies, s.serving, s.draining].compactMap { $0 }
        return reasons.isEmpty ? nil : reasons
    }
}

/// `serve --metrics-listen ADDR`: HTTP/1.1 on its own thread, so that a stuck supervisor loop
/// cannot stall it and `/healthz` can say so. `GET /metrics` (Prometheus text, built on the
/// supervisor's loop), `/healthz` (200 when the supervisor's event loop runs a task within a
/// second), `/readyz` (200 when `Readiness` says so, else 503 with the reasons).
public final class MetricsServer: Sendable {
    /// How long /metrics and /healthz wait for the supervisor's loop.
    static let loopDeadline = TimeAmount.seconds(1)

    let group: MultiThreadedEventLoopGroup
    let channel: Channel
    public var localAddress: String { channel.localAddress.map { "\($0)" } ?? "?" }

    /// Binds `host:port` (an IPv6 host in brackets). `supervisor` is nil until the store is
    /// open: before that /metrics and /healthz answer 503 and /readyz says why.
    public static func start(listen: String, readiness: Readiness, supervisor: NIOLockedValueBox<Supervisor?>) throws(ServeError)
        -> MetricsServer
    {
        guard let (host, port) = parse(listen) else {
            throw .config("--metrics-listen must be HOST:PORT (e.g. 127.0.0.1:9464 or [::1]:9464), not '\(listen)'")
        }
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        do {
            let channel = try ServerBootstrap(group: group)
                .serverChannelOption(.backlog, value: 64)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .childChannelInitializer { channel in
                    channel.pipeline.configureHTTPServerPipeline(withErrorHandling: true).flatMapThrowing {
                        try channel.pipeline.syncOperations.addHandler(HTTPHandler(readiness: readiness, supervisor: supervisor))
                    }
                }
                .bind(host: host, port: port).wait()
            return MetricsServer(group: group, channel: channel)
        } catch {
            try? group.syncShutdownGracefully()
            throw .bind(path: "metrics \(listen)", message: "\(error)")
        }
    }

    private init(group: MultiThreadedEventLoopGroup, channel: Channel) {
        self.group = group; self.channel = channel
    }

    public func stop() {
        try? channel.close().wait()
        try? group.syncShutdownGracefully()
    }

    static func parse(_ s: String) -> (String, Int)? {
        guard let colon = s.lastIndex(of: ":"), let port = Int(s[s.index(after: colon)...]), (1...65535).contains(port) else { return nil }
        var host = String(s[..<colon])
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        guard !host.isEmpty else { return nil }
        return (host, port)
    }
}

private final class HTTPHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    let readiness: Readiness
    let supervisor: NIOLockedValueBox<Supervisor?>
    private var head: HTTPRequestHead?

    init(readiness: Readiness, supervisor: NIOLockedValueBox<Supervisor?>) {
        self.readiness = readiness; self.supervisor = supervisor
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let h): head = h
        case .body: break // requests here have no body worth reading
        case .end:
            guard let h = head else { return }
            head = nil
            answer(h, context: context)
        }
    }

    private func answer(_ h: HTTPRequestHead, context: ChannelHandlerContext) {
        guard h.method == .GET || h.method == .HEAD else {
            return respond(context, h, .methodNotAllowed, "only GET and HEAD\n", extra: [("Allow", "GET, HEAD")])
        }
        let path = h.uri.split(separator: "?", maxSplits: 1).first.map(String.init) ?? h.uri
        switch path {
        case "/readyz":
            if let reasons = readiness.notReady {
                respond(context, h, .serviceUnavailable, "not ready: " + reasons.joined(separator: "; ") + "\n")
            } else {
                respond(context, h, .ok, "ready\n")
            }
        case "/healthz", "/metrics":
            guard let sup = supervisor.withLockedValue({ $0 }) else {
                return respond(
                    context, h, .serviceUnavailable, "the supervisor is not running yet: " + (readiness.notReady ?? []).joined(separator: "; ") + "\n")
            }
            let here = context.eventLoop
            let bound = NIOLoopBound((self, context), eventLoop: here)
            let work: EventLoopFuture<[UInt8]> =
                path == "/metrics" ? sup.loop.submit { sup.metricsText() } : sup.loop.submit { Array("ok\n".utf8) }
            // Whichever comes first answers: the supervisor's loop, or the deadline.
            let answered = NIOLoopBoundBox(false, eventLoop: here)
            let deadline = here.scheduleTask(in: MetricsServer.loopDeadline) {
                guard !answered.value else { return }
                answered.value = true
                let (me, ctx) = bound.value
                me.respond(ctx, h, .serviceUnavailable, "the supervisor's event loop did not answer within 1 s\n")
            }
            work.hop(to: here).whenComplete { result in
                guard !answered.value else { return }
                answered.value = true
                deadline.cancel()
                let (me, ctx) = bound.value
                switch result {
                case .success(let body):
                    me.respond(
                        ctx, h, .ok, body,
                        contentType: path == "/metrics" ? "text/plain; version=0.0.4; charset=utf-8" : "text/plain; charset=utf-8")
                case .failure(let e): me.respond(ctx, h, .serviceUnavailable, "\(e)\n")
                }
            }
        default:
            respond(context, h, .notFound, "not found: \(path) (try /metrics, /healthz, /readyz)\n")
        }
    }

    private func respond(
        _ context: ChannelHandlerContext, _ h: HTTPRequestHead, _ status: HTTPResponseStatus, _ body: String,
        extra: [(String, String)] = []
    ) {
        respond(context, h, status, Array(body.utf8), contentType: "text/plain; charset=utf-8", extra: extra)
    }

    private func respond(
        _ context: ChannelHandlerContext, _ h: HTTPRequestHead, _ status: HTTPResponseStatus, _ body: [UInt8], contentType: String,
        extra: [(String, String)] = []
    ) {
        var headers = HTTPHeaders([("Content-Type", contentType), ("Content-Length", "\(body.count)")] + extra)
        if !h.isKeepAlive { headers.add(name: "Connection", value: "close") }
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: h.version, status: status, headers: headers))), promise: nil)
        if h.method != .HEAD {
            context.write(wrapOutboundOut(.body(.byteBuffer(context.channel.allocator.buffer(bytes: body)))), promise: nil)
        }
        let keep = h.isKeepAlive
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in
            if !keep { channel.close(promise: nil) }
        }
    }
}
