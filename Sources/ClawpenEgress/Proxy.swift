import ClawpenPolicy
import NIOCore
import NIOPosix
import NIOSSL

/// One client connection from a tenant's job, from its first byte to its close: reads one
/// request head (bounded), decides with the tenant's allowlist, then either answers with a
/// refusal, tunnels (CONNECT without a secret for that host), or forwards a request it has read,
/// with the tenant's placeholders replaced in its headers for the secret's hosts: plain HTTP,
/// or HTTPS terminated with the tenant's CA (CONNECT to a secret's host).
///
/// The tenant is the listener's, fixed when the connection was accepted: nothing the job sends
/// changes it.
public final class ProxyHandler: ChannelInboundHandler, @unchecked Sendable {
    public typealias InboundIn = ByteBuffer
    public typealias OutboundOut = ByteBuffer

    public struct Limits: Sendable {
        /// Request line and headers together.
        public var maxHeadBytes = 16 * 1024
        public var maxHeaders = 64
        /// A client must finish its request head within this long.
        public var headTimeout = TimeAmount.seconds(10)
        public var connectTimeout = TimeAmount.seconds(10)
        /// A tunnel or forward with no byte either way for this long is closed (a job cannot
        /// park connections on the shared proxy for ever).
        public var idleTimeout = TimeAmount.minutes(5)
        public init() {}
    }

    enum Phase {
        case head
        /// After CONNECT to a secret's host, inside TLS: the next head is origin-form for it.
        case innerHead(host: String, port: Int, address: IPAddress)
        case resolving
        case relaying
        case closed
    }

    let tenantName: String
    let state: ProxyState
    let reporter: Reporter
    let resolver: FairResolver
    let limits: Limits
    /// The kernel relay for what the proxy carries without reading; nil: the event loop's.
    let splice: SpliceRelays?
    private var phase = Phase.head
    private var buffer: ByteBuffer?
    private var headDeadline: Scheduled<Void>?
    private var glue: GlueHandler?
    /// Counted against the tenant's egress_max_connections until the connection closes.
    private var admitted = false
    /// What the request was for, once known: refusals are reported with it.
    private var reportTarget: (host: String, port: Int) = ("-", 0)
    /// After CONNECT to a secret's host: the upstream TLS connection, opened at once so that its
    /// handshake runs while the job's handshake with the proxy does (one handshake's time saved
    /// on every intercepted request); taken by `forward`, closed if the request never comes.
    private var early: EventLoopFuture<Channel>?

    init(
        tenant: String, state: ProxyState, reporter: Reporter, resolver: FairResolver, limits: Limits = Limits(), splice: SpliceRelays? = nil
    ) {
        tenantName = tenant; self.state = state; self.reporter = reporter; self.resolver = resolver; self.limits = limits
        self.splice = splice
    }

    public func channelActive(context: ChannelHandlerContext) {
        if let tenant = state.tenant(tenantName) {
            guard state.admit(tenantName, limit: tenant.maxConnections) else {
                refuse(
                    context, 503, "Service Unavailable", rule: "egress_max_connections",
                    "tenant \(tenantName) has \(tenant.maxConnections) connections open through the proxy (egress_max_connections)")
                context.fireChannelActive()
                return
            }
            admitted = true
        }
        armHeadTimer(context)
        context.fireChannelActive()
    }

    private func armHeadTimer(_ context: ChannelHandlerContext) {
        headDeadline?.cancel()
        let ctx = NIOLoopBound(context, eventLoop: context.eventLoop)
        headDeadline = context.eventLoop.scheduleTask(in: limits.headTimeout) { [self] in
            // A slow client holds one connection for the timeout, then nothing.
            refuse(
                ctx.value, 408, "Request Timeout", rule: "head timeout",
                "the request head did not arrive within \(limits.headTimeout.nanoseconds / 1_000_000_000) s")
        }
    }

    public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var incoming = Self.unwrapInboundIn(data)
        switch phase {
        case .head, .innerHead:
            if buffer == nil { buffer = incoming } else { buffer?.writeBuffer(&incoming) }
            processHead(context)
        case .resolving:
            // Bytes that follow the head (a request body) wait for the upstream.
            if buffer == nil { buffer = incoming } else { buffer?.writeBuffer(&incoming) }
            if (buffer?.readableBytes ?? 0) > 4 * limits.maxHeadBytes { context.channel.setOption(ChannelOptions.autoRead, value: false).whenComplete { _ in } }
        case .relaying, .closed:
            context.fireChannelRead(data)
        }
    }

    public func channelInactive(context: ChannelHandlerContext) {
        headDeadline?.cancel()
        dropEarly()
        phase = .closed
        if admitted {
            admitted = false
            state.release(tenantName)
        }
        context.fireChannelInactive()
    }

    public func errorCaught(context: ChannelHandlerContext, error: Error) {
        context.close(promise: nil)
    }

    /// A client that ends its side before its head is whole will send nothing more: its
    /// connection (one of its tenant's egress_max_connections) is closed now, not at the head
    /// timeout. After the head, a half-close is the client's right (the relay carries it).
    public func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let e = event as? ChannelEvent, case .inputClosed = e {
            switch phase {
            case .head, .innerHead:
                phase = .closed
                headDeadline?.cancel()
                context.close(promise: nil)
                return
            case .resolving, .relaying, .closed: break
            }
        }
        context.fireUserInboundEventTriggered(event)
    }

    // MARK: The head

    private func processHead(_ context: ChannelHandlerContext) {
        guard var buf = buffer else { return }
        let view = buf.readableBytesView
        guard let end = Self.headEnd(view) else {
            if view.count > limits.maxHeadBytes {
                refuse(context, 431, "Request Header Fields Too Large", rule: "head too large", "the request head is over \(limits.maxHeadBytes) bytes")
            }
            return
        }
        guard end <= limits.maxHeadBytes else {
            refuse(context, 431, "Request Header Fields Too Large", rule: "head too large", "the request head is over \(limits.maxHeadBytes) bytes")
            return
        }
        guard let headBytes = buf.readBytes(length: end) else { return }
        buffer = buf
        let head: RequestHead
        switch RequestHead.parse(headBytes, maxHeaders: limits.maxHeaders) {
        case .failure(let e):
            refuse(context, e.status, e.reason, rule: e.status == 431 ? "head too large" : "malformed request", e.message)
            return
        case .success(let h): head = h
        }
        headDeadline?.cancel()
        guard let tenant = state.tenant(tenantName) else {
            refuse(context, 403, "Forbidden", rule: "network", "tenant \(tenantName) has no egress (its policy changed)")
            return
        }
        if case .innerHead(let host, let port, let address) = phase {
            // Inside the tenant's TLS to host: the request must be for that host (checked with
            // its Host and origin form by RequestHead.upstream).
            phase = .resolving
            forward(context, tenant: tenant, head: head, host: host, port: port, address: address, tls: true)
            return
        }
        let target: EgressTarget
        if head.method == "CONNECT" {
            guard let (h, p) = EgressTarget.splitHostPort(head.target, defaultPort: nil) else {
                refuse(context, 400, "Bad Request", rule: "malformed request", "CONNECT needs host:port")
                return
            }
            target = EgressTarget(host: EgressRule.normalize(h), port: p, tls: true)
        } else {
            guard head.target.lowercased().hasPrefix("http://"), let t = EgressTarget(url: head.target) else {
                refuse(context, 400, "Bad Request", rule: "malformed request", "a proxy request names an absolute http:// URL (or is CONNECT host:port)")
                return
            }
            target = EgressTarget(host: t.host, port: t.port, tls: false)
        }
        phase = .resolving
        reportTarget = (target.host, target.port)
        let host = target.host
        let allow = tenant.allow
        // A name that no rule names is refused before it is even resolved.
        if IPAddress(host) == nil, !allow.contains(where: { $0.matches(host: host, port: target.port) }) {
            decided(context, tenant: tenant, head: head, target: target, addresses: [])
            return
        }
        // An address needs no lookup, and a name looked up a moment ago none either (ResolverCache).
        if let literal = IPAddress(host) {
            decided(context, tenant: tenant, head: head, target: target, addresses: [literal])
            return
        }
        if let kept = state.resolved.lookup(tenant: tenantName, host: host) {
            decided(context, tenant: tenant, head: head, target: target, addresses: kept)
            return
        }
        let loopContext = NIOLoopBound(context, eventLoop: context.eventLoop)
        let cache = state.resolved, tenantName = self.tenantName
        guard let lookup = resolver.resolve(tenant: tenantName, host: host, eventLoop: context.eventLoop) else {
            refuse(
                context, 503, "Service Unavailable", rule: "resolve queue", "tenant \(tenantName) has \(FairResolver.maxQueuedPerTenant) name lookups waiting")
            return
        }
        lookup.whenComplete { [self] r in
            if case .success(let addresses) = r { cache.store(tenant: tenantName, host: host, addresses) }
            decided(loopContext.value, tenant: tenant, head: head, target: target, addresses: (try? r.get()) ?? [])
        }
    }

    private func decided(_ context: ChannelHandlerContext, tenant: ProxyState.Tenant, head: RequestHead, target: EgressTarget, addresses: [IPAddress]) {
        guard context.channel.isActive else { return }
        let d = EgressPolicy.decide(host: target.host, port: target.port, addresses: addresses, allow: tenant.allow)
        guard d.allowed, let address = d.address else {
            refuse(context, 403, "Forbidden", rule: d.rule, d.message)
            return
        }
        if head.method == "CONNECT" {
            if tenant.intercepts(host: target.host, port: target.port) {
                intercept(context, tenant: tenant, host: target.host, port: target.port, address: address)
            } else {
                tunnel(context, host: target.host, port: target.port, address: address)
            }
        } else {
            forward(context, tenant: tenant, head: head, host: target.host, port: target.port, address: address, tls: false)
        }
    }

    // MARK: Tunnel, intercept, forward

    private func dropEarly() {
        early?.whenSuccess { $0.close(promise: nil) }
        early = nil
    }

    /// `autoRead`: off for a connection whose first bytes are relayed once it is joined; on for
    /// one opened early, whose TLS handshake must read before anything is joined to it (nothing
    /// but the handshake arrives before the request is sent).
    private func connect(_ context: ChannelHandlerContext, address: IPAddress, port: Int, tlsHost: String?, autoRead: Bool = false)
        -> EventLoopFuture<Channel>
    {
        let sockaddr: SocketAddress
        do { sockaddr = try SocketAddress(ipAddress: address.description, port: port) } catch {
            return context.eventLoop.makeFailedFuture(error)
        }
        let upstreamContext: NIOSSLContext?
        if tlsHost != nil {
            do { upstreamContext = try state.upstreamContext() } catch { return context.eventLoop.makeFailedFuture(error) }
        } else {
            upstreamContext = nil
        }
        return ClientBootstrap(group: context.eventLoop)
            .connectTimeout(limits.connectTimeout)
            .channelOption(ChannelOptions.autoRead, value: autoRead)
            .channelOption(ChannelOptions.tcpOption(.tcp_nodelay), value: 1)
            .channelOption(ChannelOptions.recvAllocator, value: ProxyHandler.bulkReads)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    if let upstreamContext, let tlsHost {
                        try channel.pipeline.syncOperations.addHandler(NIOSSLClientHandler(context: upstreamContext, serverHostname: tlsHost))
                    }
                }
            }
            .connect(to: sockaddr)
    }

    private func tunnel(_ context: ChannelHandlerContext, host: String, port: Int, address: IPAddress) {
        // The 200 goes once the upstream is connected; after it, what either side sends is the tunnel's.
        if relayInKernel(context, host: host, port: port, address: address, toUpstream: [], toClient: Self.established) { return }
        let ctx = NIOLoopBound(context, eventLoop: context.eventLoop)
        connect(context, address: address, port: port, tlsHost: nil).whenComplete { [self] result in
            let context = ctx.value
            switch result {
            case .failure(let e):
                refuse(context, 502, "Bad Gateway", rule: "upstream", "cannot reach \(host):\(port) (\(address)): \(e)")
            case .success(let upstream):
                connectionEstablished(context)
                join(context, upstream, initial: [])
            }
        }
    }

    /// The answer to a CONNECT the proxy carries out (a tunnel, or an interception).
    private func connectionEstablished(_ context: ChannelHandlerContext) {
        var ok = context.channel.allocator.buffer(capacity: 64)
        ok.writeBytes(Self.established)
        context.writeAndFlush(Self.wrapOutboundOut(ok), promise: nil)
    }
    static let established = Array("HTTP/1.1 200 Connection Established\r\n\r\n".utf8)

    /// CONNECT to a secret's host: answer 200, speak TLS to the job with a leaf certificate for
    /// the host from the tenant's CA, then read the request inside it.
    private func intercept(_ context: ChannelHandlerContext, tenant: ProxyState.Tenant, host: String, port: Int, address: IPAddress) {
        let tls: NIOSSLContext
        do { tls = try tenant.serverContext(host: host) } catch {
            refuse(context, 502, "Bad Gateway", rule: "upstream", "cannot make a certificate for \(host): \(error)")
            return
        }
        connectionEstablished(context)
        do {
            try context.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: tls), position: .before(self))
        } catch {
            context.close(promise: nil)
            return
        }
        phase = .innerHead(host: host, port: port, address: address)
        early = connect(context, address: address, port: port, tlsHost: host, autoRead: true)
        armHeadTimer(context)
        // Bytes already read after the CONNECT head are the start of the TLS handshake.
        if let rest = buffer, rest.readableBytes > 0 {
            buffer = nil
            context.pipeline.syncOperations.fireChannelRead(NIOAny(rest))
        }
    }

    private func forward(
        _ context: ChannelHandlerContext, tenant: ProxyState.Tenant, head: RequestHead, host: String, port: Int, address: IPAddress, tls: Bool
    ) {
        let bytes: [UInt8]
        switch head.upstream(host: host, port: port, intercepted: tls, substitutions: tenant.secrets) {
        case .failure(let r):
            refuse(context, r.status, r.reason, rule: r.rule, r.message)
            return
        case .success(let u):
            bytes = u.bytes
            for name in u.used { reporter.used(tenantName, name, host, port) }
        }
        // Plain HTTP: after its head the proxy reads nothing of the exchange. Inside TLS every
        // byte goes through the proxy's TLS on both sides.
        if !tls, relayInKernel(context, host: host, port: port, address: address, toUpstream: bytes, toClient: []) { return }
        let ctx = NIOLoopBound(context, eventLoop: context.eventLoop)
        let upstream = (tls ? early : nil) ?? connect(context, address: address, port: port, tlsHost: tls ? host : nil)
        early = nil
        upstream.whenComplete { [self] result in
            let context = ctx.value
            switch result {
            case .failure(let e):
                refuse(context, 502, "Bad Gateway", rule: "upstream", "cannot reach \(host):\(port) (\(address)): \(e)")
            case .success(let upstream) where !upstream.isActive:
                // Opened early and closed by the upstream while the job was still sending.
                refuse(context, 502, "Bad Gateway", rule: "upstream", "\(host):\(port) (\(address)) closed the connection")
            case .success(let upstream):
                join(context, upstream, initial: bytes)
            }
        }
    }

    /// The connection goes to the kernel relay (SpliceRelays), which connects to the upstream,
    /// sends `toUpstream` (and what the client sent after its head) there and `toClient` to the
    /// client. False if there is none or it cannot take this one: then the loop relays it.
    private func relayInKernel(
        _ context: ChannelHandlerContext, host: String, port: Int, address: IPAddress, toUpstream: [UInt8], toClient: [UInt8]
    ) -> Bool {
        guard let splice else { return false }
        var first = context.channel.allocator.buffer(capacity: toUpstream.count + (buffer?.readableBytes ?? 0))
        first.writeBytes(toUpstream)
        if let rest = buffer, rest.readableBytes > 0 { first.writeImmutableBuffer(rest) }
        // The slot and the counts become the relay's: the channel's close (inside relay) must
        // not release the slot as well.
        let slot = admitted
        admitted = false
        if splice.relay(
            client: context.channel, address: address, host: host, port: port, toUpstream: first, toClient: toClient, tenant: tenantName,
            admitted: slot, connectTimeout: limits.connectTimeout, idle: limits.idleTimeout)
        {
            buffer = nil
            return true
        }
        admitted = slot
        return false
    }

    /// Both sides relay to each other from now on, with back-pressure, on the loop (GlueHandler).
    private func join(_ context: ChannelHandlerContext, _ upstream: Channel, initial: [UInt8]) {
        guard context.channel.isActive else {
            upstream.close(promise: nil)
            return
        }
        phase = .relaying
        let counter = ByteCounter(tenant: tenantName, reporter: reporter)
        let (local, remote) = GlueHandler.matchedPair(counter: counter)
        do {
            try context.pipeline.syncOperations.addHandler(local)
            try upstream.pipeline.syncOperations.addHandler(remote)
            // First in each pipeline, so that it sees every read and write (TLS records too).
            try context.pipeline.syncOperations.addHandler(IdleStateHandler(allTimeout: limits.idleTimeout), position: .first)
            try upstream.pipeline.syncOperations.addHandler(IdleStateHandler(allTimeout: limits.idleTimeout), position: .first)
        } catch {
            upstream.close(promise: nil)
            context.close(promise: nil)
            return
        }
        var first = upstream.allocator.buffer(capacity: initial.count)
        first.writeBytes(initial)
        if var rest = buffer, rest.readableBytes > 0 { first.writeBuffer(&rest) }
        buffer = nil
        counter.up += first.readableBytes
        if first.readableBytes > 0 { upstream.writeAndFlush(first, promise: nil) }
        upstream.setOption(ChannelOptions.autoRead, value: true).whenComplete { _ in }
        context.channel.setOption(ChannelOptions.autoRead, value: true).whenComplete { _ in }
        upstream.read()
    }

    /// Reads of up to 1 MiB: a download relayed in 64 KiB reads (NIO's default ceiling) costs
    /// the proxy's one loop a syscall pair per 64 KiB each way.
    public static let bulkReads = AdaptiveRecvByteBufferAllocator(minimum: 4096, initial: 65536, maximum: 1 << 20)

    /// An answer of the proxy's own, then close. Every refusal says what and by which rule
    /// (X-Clawpen-Rule), and is reported: counted and audited by the supervisor.
    func refuse(_ context: ChannelHandlerContext, _ status: Int, _ reason: String, rule: String, _ message: String) {
        if case .closed = phase { return }
        phase = .closed
        headDeadline?.cancel()
        reporter.denied(tenantName, reportTarget.host, reportTarget.port, rule)
        dropEarly()
        let body = "clawpen egress: \(message)\n"
        var out = context.channel.allocator.buffer(capacity: 256)
        out.writeString("HTTP/1.1 \(status) \(reason)\r\n")
        out.writeString("X-Clawpen-Rule: \(rule.filter { $0 != "\r" && $0 != "\n" })\r\n")
        out.writeString("Content-Type: text/plain\r\nContent-Length: \(body.utf8.count)\r\nConnection: close\r\n\r\n\(body)")
        let channel = context.channel
        context.writeAndFlush(Self.wrapOutboundOut(out)).whenComplete { _ in channel.close(promise: nil) }
    }

    /// Offset just past "\r\n\r\n", if the head is complete.
    static func headEnd(_ v: ByteBufferView) -> Int? {
        var i = v.startIndex
        let end = v.endIndex
        var n = 0
        while i < end {
            let b = v[i]
            if b == 0x0A && n >= 3 && v[i - 1] == 0x0D && v[i - 2] == 0x0A && v[i - 3] == 0x0D { return n + 1 }
            i = v.index(after: i)
            n += 1
        }
        return nil
    }
}

/// Bytes each way of one proxied connection, reported once when it ends.
final class ByteCounter: @unchecked Sendable {
    let tenant: String
    let reporter: Reporter
    var up = 0
    var down = 0
    private var reported = false
    init(tenant: String, reporter: Reporter) { self.tenant = tenant; self.reporter = reporter }
    func finish() {
        guard !reported else { return }
        reported = true
        reporter.done(tenant, allowed: true, up: up, down: down)
    }
}

/// Relays between two channels on one event loop (SwiftNIO's connect-proxy glue): what one
/// reads the other writes; a side that cannot keep up stops the other's reads; either closing
/// closes both.
final class GlueHandler: ChannelDuplexHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private var partner: GlueHandler?
    private var context: ChannelHandlerContext?
    private var pendingRead = false
    /// This side's peer has ended its input (FIN; the channel allows half-closure).
    private var inputEnded = false
    /// The other side has gone: this one closes once its queued writes are out.
    private var partnerGone = false
    private let counter: ByteCounter
    private let isClientSide: Bool

    private init(counter: ByteCounter, clientSide: Bool) { self.counter = counter; isClientSide = clientSide }

    static func matchedPair(counter: ByteCounter) -> (GlueHandler, GlueHandler) {
        let a = GlueHandler(counter: counter, clientSide: true), b = GlueHandler(counter: counter, clientSide: false)
        a.partner = b
        b.partner = a
        return (a, b)
    }

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }
    func handlerRemoved(context: ChannelHandlerContext) { self.context = nil; partner = nil }

    private func partnerWrite(_ data: NIOAny) { context?.write(data, promise: nil) }
    private func partnerFlush() { context?.flush() }
    /// The other side ended: what it sent is still queued here, so the close waits for the
    /// queue (an empty write completes after every write before it); a plain close would drop
    /// the tail of a download.
    private func partnerWriteEOF() {
        guard let context else { return }
        let channel = context.channel
        context.writeAndFlush(NIOAny(channel.allocator.buffer(capacity: 0))).whenComplete { _ in channel.close(mode: .output, promise: nil) }
    }
    private func partnerCloseFull() {
        guard let context else { return }
        partnerGone = true
        let channel = context.channel
        let hard = inputEnded
        context.writeAndFlush(NIOAny(channel.allocator.buffer(capacity: 0))).whenComplete { _ in
            if hard { Self.closeBelowTLS(channel) } else { channel.close(promise: nil) }
        }
    }

    /// Closes the socket itself, under a TLS handler if there is one. A TLS close sends
    /// close_notify and waits for the peer's (NIOSSL's shutdown timeout: 5 s), which a peer
    /// whose input has ended can never send: every intercepted request from a client that closes
    /// without close_notify (Python's ssl, many others) kept its connection, and its place in
    /// the tenant's egress_max_connections, 5 s after the exchange; 256 requests within 5 s and
    /// the next was refused (503, a reset for the client). What was written is out by then: this
    /// runs once the queued writes have completed, or when nothing more can be relayed.
    static func closeBelowTLS(_ channel: Channel) {
        if let first = try? channel.pipeline.syncOperations.context(handlerType: IdleStateHandler.self) {
            first.close(promise: nil) // IdleStateHandler is first in the pipeline (join): next is the socket
        } else {
            channel.close(promise: nil)
        }
    }
    private var partnerWritable: Bool { context?.channel.isWritable ?? false }
    private func partnerBecameWritable() {
        if pendingRead {
            pendingRead = false
            context?.read()
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let n = Self.unwrapInboundIn(data).readableBytes
        if isClientSide { counter.up += n } else { counter.down += n }
        partner?.partnerWrite(data)
    }

    func channelReadComplete(context: ChannelHandlerContext) { partner?.partnerFlush() }

    func channelInactive(context: ChannelHandlerContext) {
        counter.finish()
        partner?.partnerCloseFull()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let idle = event as? IdleStateHandler.IdleStateEvent, idle == .all {
            // No byte either way for Limits.idleTimeout: both sides close.
            context.close(promise: nil)
            return
        }
        if let e = event as? ChannelEvent, case .inputClosed = e {
            inputEnded = true
            // Nothing more can come in, and the other side has gone: nothing is left to relay.
            if partnerGone || partner == nil {
                Self.closeBelowTLS(context.channel)
                return
            }
            partner?.partnerWriteEOF()
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) { context.close(promise: nil) }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable { partner?.partnerBecameWritable() }
    }

    func read(context: ChannelHandlerContext) {
        if let partner, partner.partnerWritable { context.read() } else { pendingRead = true }
    }
}
