import CClawpenShim
import ClawpenProtocol
import ClawpenWire
import Glibc
import NIOCore
import NIOPosix

/// One client connection: frames in (split by FrameDecoder), requests to the supervisor, in the
/// order they came.
///
/// A frame that is expensive to parse costs its sender only. Parsing is linear in the frame's
/// size, but a 16 MiB frame of escapes still takes about 65 ms, and the supervisor has one
/// event loop for every client and worker. So the loop parses at most `inlineParseBytes` of a
/// connection's frames per read (nearly every request is far smaller: for them the hop to
/// another thread and back would cost more than parsing), and every frame beyond that goes to
/// the `parser` thread pool while the loop serves everyone else. Frames read meanwhile wait
/// behind it, so its requests reach the supervisor in order; the connection is still read until
/// `readAheadBytes` of them wait (the next chunk of a put arrives while this one is decoded),
/// then not until the parse is back, so a pipelining client cannot queue up work off the loop
/// faster than it is done.
///
/// Replies are bounded the same way: while the connection is not writable (more than NIO's
/// high-water mark of replies queued for a client that does not read them), it is not read
/// and the frames already read wait. A client that pipelines `job.get`s of a job with a
/// megabyte of output and never reads would otherwise make the supervisor hold a copy of that
/// output per request.
final class ClientHandler: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    /// Bytes of frames parsed on the loop per connection and read: in the costliest shape
    /// (arrays nested as deep as allowed, one allocation per byte or two) 4 KiB take 0.15 to
    /// 0.3 ms in a release build (BENCHMARKS.md, "hostile frames"). The budget is per read, not
    /// per frame, so that many small costly frames sent back to back cannot add up on the loop.
    static let inlineParseBytes = 4 * 1024

    /// Requests of one connection handled in one tick of the loop (LoopTicks.swift); the rest
    /// of what it sent waits for the next tick, after every other connection that is ready. The
    /// tick's budget of request handling is shared by every connection: past it, each gives way
    /// after the frame it is in. A client that pipelines two hundred requests that each read a
    /// record held the loop for all of them at once before (a fifth of a second, measured, for
    /// every other client).
    static let framesPerTurn = 16

    /// Bytes of frames read and waiting behind a parse off the loop before the connection is no
    /// longer read (all connections together: `ReadAhead`). Two 1 MiB put chunks (base64: 1.4 MiB
    /// each): with reads held for every parse the client's next chunk sat in its socket while
    /// this one was decoded (BENCHMARKS.md, "Files, session 11").
    static let readAheadBytes = 3 * 1024 * 1024

    private let supervisor: Supervisor
    private let parser: NIOThreadPool
    /// The peer's pid, uid and gid as the kernel saw them at connect time; nil until read.
    private var caller: PeerCredentials?
    /// A frame is being parsed off the loop: later frames wait in `waiting`.
    private var parsing = false
    /// Runs of frames as FrameDecoder passes them on, split only as they are taken up.
    private var waiting = CircularBuffer<FrameRun>()
    /// Bytes of the frames in `waiting`, headers included.
    private var waitingBytes = 0
    private var readHeld = false
    /// The connection was refused (frame too large, frame left incomplete): nothing more is read.
    private var refused = false
    /// Bytes parsed on the loop since the last read completed (see `inlineParseBytes`).
    private var parsedInline = 0
    /// The loop's ticks and its line of connections that gave way (nil: no fairness between
    /// connections, as in tests on a loop of their own).
    private let turns: ClientTurns?
    /// Frames handled in tick `turnTick` (see `framesPerTurn`).
    private var framesThisTurn = 0
    private var turnTick: UInt64 = 0
    /// It has given way: what it sent waits for the next tick.
    private var yielded = false
    /// Taken up again after giving way: its next frame goes whatever the budget says, so that
    /// every turn makes progress.
    private var resumeFree = false
    /// Frames the current read brought (1, or 2 for more than one: only that is asked), and
    /// whether the last read brought one: a client that sends one request at a time (and waits
    /// for its answer) is served ahead of the budget.
    private var framesThisRead = 0
    private var interactive = false
    /// Its rate while others are served (ClientPacing.swift), and whether it waits for it now.
    private var pacer: RequestPacer?
    private var paced = false
    /// The window of ActiveClients it was last counted in.
    private var activeWindow: UInt64?

    /// The agent socket's tenant (nil: the control socket). Its requests may leave the tenant out.
    private let agentTenant: TenantName?
    /// Who the agent socket's caller is (set once the kernel's answer is checked); reads are
    /// held until then.
    private var agent: AgentCaller?
    private var identifying = false

    /// The connection's budget state, handed to every Responder (ClientBudgetHandler).
    private let link: ClientLink?

    init(supervisor: Supervisor, parser: NIOThreadPool, agentTenant: TenantName? = nil, link: ClientLink? = nil, turns: ClientTurns? = nil) {
        self.supervisor = supervisor
        self.parser = parser
        self.turns = turns
        pacer = turns?.pacing.map(RequestPacer.init)
        self.agentTenant = agentTenant
        self.link = link
    }

    func channelActive(context: ChannelHandlerContext) {
        if let tenant = agentTenant {
            identifying = true
            identifyAgent(tenant, context: context)
            context.fireChannelActive()
            return
        }
        // The kernel's word on who connected, not the client's: read once per connection. On
        // this loop the read completes at once, before any frame of the connection is handled.
        if let provider = context.channel as? SocketOptionProvider {
            let read: EventLoopFuture<PeerCredentials> = provider.unsafeGetSocketOption(
                level: SocketOptionLevel(SOL_SOCKET), name: SocketOptionName(SO_PEERCRED))
            let me = NIOLoopBound(self, eventLoop: context.eventLoop)
            read.whenComplete { result in
                if case .success(let cred) = result { me.value.caller = cred }
            }
        }
        context.fireChannelActive()
    }

    /// The agent socket: the calling job from the kernel (the connecting process's pid, pidfd and
    /// cgroup; Agent/AgentSockets.swift), never from what it sends. Nothing is read before.
    private func identifyAgent(_ tenant: TenantName, context: ChannelHandlerContext) {
        let me = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        let finish: (PeerCredentials?, Int32) -> Void = { cred, pidfd in
            let (handler, context) = me.value
            handler.caller = cred
            handler.supervisor.identifyAgent(tenant: tenant, cred: cred, pidfd: pidfd) { caller in
                let (handler, context) = me.value
                handler.agent = caller
                handler.identifying = false
                handler.drain(context: context)
            }
            _ = context
        }
        guard let provider = context.channel as? SocketOptionProvider else { finish(nil, -1); return }
        let credRead: EventLoopFuture<PeerCredentials> = provider.unsafeGetSocketOption(
            level: SocketOptionLevel(SOL_SOCKET), name: SocketOptionName(SO_PEERCRED))
        credRead.whenComplete { result in
            let cred = try? result.get()
            let pidfdRead: EventLoopFuture<Int32> = provider.unsafeGetSocketOption(
                level: SocketOptionLevel(SOL_SOCKET), name: SocketOptionName(CP_SO_PEERPIDFD))
            pidfdRead.whenComplete { result in finish(cred, (try? result.get()) ?? -1) }
        }
    }

    /// The client went away: whatever it followed keeps running (Streams.swift).
    func channelInactive(context: ChannelHandlerContext) {
        dropWaiting()
        supervisor.clientClosed(context.channel)
        context.fireChannelInactive()
    }

    /// Its connection took what was queued: a job held back for it may go on (Streams.swift),
    /// and its own requests are read again.
    func channelWritabilityChanged(context: ChannelHandlerContext) {
        supervisor.clientWritabilityChanged(context.channel)
        if context.channel.isWritable { drain(context: context) }
        context.fireChannelWritabilityChanged()
    }

    /// Requests wait: the agent socket's caller is being identified, one is parsed off the loop,
    /// or the client is not reading its replies.
    private func held(_ context: ChannelHandlerContext) -> Bool { identifying || parsing || yielded || paced || !context.channel.isWritable }

    /// The socket is not read: requests are held for anything but a parse, or one is and enough
    /// read frames wait behind it.
    private func readsHeld(_ context: ChannelHandlerContext) -> Bool {
        identifying || yielded || paced || !context.channel.isWritable
            || (parsing && (waitingBytes >= Self.readAheadBytes || !supervisor.readAhead.hasRoom))
    }

    private func wait(_ run: FrameRun) {
        waiting.append(run)
        waitingBytes += run.readableBytes
        supervisor.readAhead.add(run.readableBytes)
    }

    /// The next waiting frame's payload, split from the first run.
    private func takeWaiting() -> ByteBuffer? {
        while var run = waiting.popFirst() {
            let before = run.readableBytes
            let next = run.next()
            // A run that does not split (FrameDecoder checked every header: it cannot happen)
            // is dropped whole rather than taken up again and again.
            let taken = next == nil ? before : before - run.readableBytes
            waitingBytes -= taken
            supervisor.readAhead.remove(taken)
            if next != nil, !run.isEmpty { waiting.prepend(run) }
            if let next { return next }
        }
        return nil
    }

    private func dropWaiting() {
        waiting.removeAll()
        supervisor.readAhead.remove(waitingBytes)
        waitingBytes = 0
    }

    /// This connection has had its share of the tick, or the tick its budget.
    private func mustYield() -> Bool {
        guard let ticks = turns?.ticks else { return false }
        if ticks.tick != turnTick {
            turnTick = ticks.tick
            framesThisTurn = 0
        }
        if resumeFree {
            resumeFree = false
            return false
        }
        // The first frame in a tick of a connection that sends one request at a time goes
        // whatever the budget says: it is served in the tick it arrives, ahead of the line of
        // those with many queued (the sparse-flow rule of fair queuing). One whose last read
        // brought many, or a new one, waits for the budget like the rest.
        if framesThisTurn == 0 && interactive { return false }
        return framesThisTurn >= Self.framesPerTurn || ticks.overBudget
    }

    /// Gives way to the other connections (ClientTurns); what it sent waits in `waiting`.
    private func yieldTurn(_ context: ChannelHandlerContext) {
        guard !yielded, let turns else { return }
        yielded = true
        let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        turns.giveWay {
            let (me, context) = bound.value
            me.yielded = false
            me.resumeFree = true
            me.framesThisTurn = 0
            if let ticks = me.turns?.ticks { me.turnTick = ticks.tick }
            // A new turn: its own allowance of parsing on the loop, as after a read.
            me.parsedInline = 0
            me.drain(context: context)
        }
    }

    /// Nanoseconds until this connection's next request may go (0: now), counting it among
    /// those that asked to be served.
    private func paceDelay() -> UInt64 {
        guard var p = pacer, let ticks = turns?.ticks else { return 0 }
        let now = NIODeadline.now().uptimeNanoseconds
        ticks.active.request(now: now, seen: &activeWindow)
        let delay = p.delay(now: now, contended: ticks.active.count(now: now) >= 2)
        pacer = p
        return delay
    }

    /// Holds the connection (nothing more is read or handled) until its next request may go.
    private func pause(_ delay: UInt64, _ context: ChannelHandlerContext) {
        guard !paced else { return }
        paced = true
        turns?.ticks.pacedRequests &+= 1
        let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        context.eventLoop.assumeIsolatedUnsafeUnchecked().scheduleTask(in: .nanoseconds(Int64(delay))) {
            let (me, context) = bound.value
            me.paced = false
            me.drain(context: context)
        }
    }

    /// A run of whole frames (FrameDecoder): handled one by one until the connection must wait
    /// or give way; the rest waits as it came, unsplit.
    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !refused else { return }
        var run = FrameRun(unwrapInboundIn(data))
        framesThisRead += run.isSingleFrame ? 1 : 2
        while !run.isEmpty, !refused {
            if held(context) || !waiting.isEmpty {
                wait(run)
                return
            }
            if mustYield() {
                wait(run)
                yieldTurn(context)
                return
            }
            let delay = paceDelay()
            if delay > 0 {
                wait(run)
                pause(delay, context)
                return
            }
            guard let next = run.next() else { return }
            process(next, context: context)
        }
    }

    /// Parses one frame (here or on the pool) and hands the request to the supervisor.
    private func process(_ payload: ByteBuffer, context: ChannelHandlerContext) {
        framesThisTurn += 1
        guard let ticks = turns?.ticks else { handle(payload, context: context); return }
        ticks.charge { handle(payload, context: context) }
    }

    private func handle(_ payload: ByteBuffer, context: ChannelHandlerContext) {
        if payload.readableBytes == 0 {
            reply(Reply.error(ProtocolError(.invalidRequest, "empty frame: a frame must hold a JSON object"), id: .null), context: context)
            return
        }
        let allocator = context.channel.allocator
        if parsedInline + payload.readableBytes <= Self.inlineParseBytes {
            parsedInline += payload.readableBytes
            deliver(Self.parse(payload, allocator, defaultTenant: agentTenant), context: context)
            return
        }
        parsing = true
        let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        let tenant = agentTenant
        parser.runIfActive(eventLoop: context.eventLoop) {
            Self.parse(payload, allocator, defaultTenant: tenant)
        }.whenComplete { result in
            let (me, context) = bound.value
            me.parsing = false
            switch result {
            case .success(let parsed): me.deliver(parsed, context: context)
            case .failure:
                // The pool is gone: the daemon is shutting down.
                me.reply(Reply.error(ProtocolError(.unavailable, "the supervisor is shutting down"), id: .null), context: context)
            }
            me.drain(context: context)
        }
    }

    /// A frame as the supervisor takes it: a `file.chunk` in the fast shape is already the frame
    /// its worker gets (PutChunkFrame); anything else is a request.
    enum Parsed: Sendable {
        case request(id: JSONValue, request: Result<Request, ProtocolError>)
        case chunk(PutChunkFrame)
    }

    /// `defaultTenant`: an agent socket's tenant (the worker's), whatever the request says.
    static func parse(_ payload: ByteBuffer, _ allocator: ByteBufferAllocator, defaultTenant: TenantName?) -> Parsed {
        if payload.readableBytes >= PutChunkFrame.minimumBytes, let chunk = PutChunkFrame(payload, allocator: allocator) {
            return .chunk(chunk)
        }
        let decoded = RequestCodec.decode(Array(payload.readableBytesView), defaultTenant: defaultTenant)
        return .request(id: decoded.id, request: decoded.request)
    }

    /// The frames that arrived during a parse, in order, until the next one goes to the pool.
    private func drain(context: ChannelHandlerContext) {
        while !held(context), !refused, !waiting.isEmpty {
            if mustYield() {
                yieldTurn(context)
                return
            }
            let delay = paceDelay()
            if delay > 0 {
                pause(delay, context)
                return
            }
            guard let next = takeWaiting() else { break }
            process(next, context: context)
        }
        if !readsHeld(context) && readHeld {
            readHeld = false
            context.read()
        }
    }

    private func deliver(_ parsed: Parsed, context: ChannelHandlerContext) {
        switch parsed {
        case .chunk(let chunk):
            var responder = Responder(channel: context.channel, id: chunk.id, caller: caller)
            responder.agent = agent
            responder.link = link
            supervisor.handlePutChunk(chunk, responder)
        case .request(let id, let request):
            var responder = Responder(channel: context.channel, id: id, caller: caller)
            responder.agent = agent
            responder.link = link
            switch request {
            case .failure(let error): responder.fail(error)
            case .success(let request): supervisor.handle(request, responder)
            }
        }
    }

    private func reply(_ payload: [UInt8], context: ChannelHandlerContext) {
        context.writeAndFlush(wrapOutboundOut(context.channel.allocator.frame(payload)), promise: nil)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        parsedInline = 0
        if framesThisRead > 0 { interactive = framesThisRead == 1 }
        framesThisRead = 0
        context.fireChannelReadComplete()
    }

    /// Outbound `read`: held while a parse is off the loop or replies wait (see the type's
    /// comment).
    func read(context: ChannelHandlerContext) {
        if readsHeld(context) { readHeld = true } else { context.read() }
    }

    /// What FrameDecoder refused is answered, then the connection is closed; it reads nothing
    /// more (the decoder is in its error state and drops what still comes).
    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        guard !refused else { return }
        refused = true
        dropWaiting()
        let answer: ProtocolError?
        switch error as? FrameDecoder.Failure {
        case .tooLarge(let e)?:
            answer = ProtocolError(.frameTooLarge, "\(e) (clawpen serve --max-frame-bytes); closing the connection")
        case .incomplete?:
            answer = ProtocolError(.invalidRequest, "\(error); closing the connection")
        case nil:
            answer = nil
        }
        guard let answer else { context.close(promise: nil); return }
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(channel.allocator.frame(Reply.error(answer, id: .null)))).whenComplete { _ in
            channel.close(promise: nil)
        }
    }
}
