import ClawpenProtocol
import Glibc
import NIOCore

/// `struct ucred` of SO_PEERCRED (pid, uid, gid; three 32-bit fields, as the kernel lays it out).
struct PeerCredentials: Sendable, Equatable {
    var pid: Int32
    var uid: UInt32
    var gid: UInt32
}

extension ByteBufferAllocator {
    /// One frame: the 4-byte big-endian length, then the payload (docs/protocol.md).
    func frame(_ payload: [UInt8]) -> ByteBuffer {
        var out = buffer(capacity: payload.count + 4)
        out.writeInteger(UInt32(payload.count))
        out.writeBytes(payload)
        return out
    }
}

/// Where the reply to one request goes: the client's channel and the id it chose. A client that
/// has gone away simply does not receive it; the job it asked for is unaffected.
struct Responder: Sendable {
    let channel: Channel
    let id: JSONValue
    /// Who is on the other end (SO_PEERCRED, read when the connection was accepted).
    var caller: PeerCredentials? = nil

    var callerUID: Int? { caller.map { Int($0.uid) } }

    func reply(_ type: String, _ fields: [(String, JSONValue)]) {
        send(Reply.make(type, id: id, fields))
    }

    func fail(_ error: ProtocolError) {
        send(Reply.error(error, id: id))
    }

    func job(_ view: JobView, existing: Bool = false) {
        reply("job", [("job", view.json), ("existing", .bool(existing))])
    }

    func job(_ result: Result<JobView, ProtocolError>, existing: Bool = false) {
        switch result {
        case .success(let view): job(view, existing: existing)
        case .failure(let error): fail(error)
        }
    }

    private func send(_ payload: [UInt8]) {
        guard channel.isActive else { return }
        channel.writeAndFlush(channel.allocator.frame(payload), promise: nil)
    }
}

/// One client connection: frames in (already split by FrameReader), requests to the supervisor.
final class ClientHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer

    private let supervisor: Supervisor
    /// The peer's pid, uid and gid as the kernel saw them at connect time; nil until read.
    private var caller: PeerCredentials?

    init(supervisor: Supervisor) { self.supervisor = supervisor }

    func channelActive(context: ChannelHandlerContext) {
        // The kernel's word on who connected, not the client's: read once per connection. On
        // this loop the read completes at once, before any frame of the connection is handled.
        if let provider = context.channel as? SocketOptionProvider {
            let read: EventLoopFuture<PeerCredentials> = provider.unsafeGetSocketOption(
                level: SocketOptionLevel(SOL_SOCKET), name: SocketOptionName(SO_PEERCRED))
            read.whenComplete { [self] result in
                if case .success(let cred) = result { caller = cred }
            }
        }
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let payload = unwrapInboundIn(data)
        let (id, result) = RequestCodec.decode(Array(payload.readableBytesView))
        let responder = Responder(channel: context.channel, id: id, caller: caller)
        switch result {
        case .failure(let error): responder.fail(error)
        case .success(let request): supervisor.handle(request, responder)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}

/// The supervisor's end of a worker socketpair. Everything here is untrusted input: a frame over
/// the limit or one that does not decode marks the worker as misbehaving.
final class WorkerChannelHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer

    private let supervisor: Supervisor
    private let worker: WorkerHandle
    private let maxFrameBytes: Int
    private let outputCap: Int
    private var buffer: ByteBuffer?

    init(supervisor: Supervisor, worker: WorkerHandle, outputCap: Int) {
        self.supervisor = supervisor
        self.worker = worker
        self.outputCap = outputCap
        // Two capped streams plus headroom for ids and numbers.
        self.maxFrameBytes = 2 * outputCap + 64 * 1024
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var incoming = unwrapInboundIn(data)
        if buffer == nil { buffer = incoming } else { buffer!.writeBuffer(&incoming) }
        while var buf = buffer, buf.readableBytes >= 4 {
            let length = Int(buf.getInteger(at: buf.readerIndex, as: UInt32.self)!)
            guard length <= maxFrameBytes else {
                buffer = nil
                supervisor.workerMisbehaved(worker, "sent a frame of \(length) bytes (limit \(maxFrameBytes))")
                return
            }
            guard buf.readableBytes >= 4 + length else { break }
            buf.moveReaderIndex(forwardBy: 4)
            let payload = buf.readBytes(length: length)!
            buffer = buf.readableBytes > 0 ? buf : nil
            do {
                let message = try WorkerToSupervisor.decode(payload, outputCap: outputCap)
                supervisor.workerSent(message, worker)
            } catch {
                buffer = nil
                supervisor.workerMisbehaved(worker, "sent an undecodable frame (\(error))")
                return
            }
        }
        if var buf = buffer, buf.readerIndex > 64 * 1024 { buf.discardReadBytes(); buffer = buf }
    }

    func channelInactive(context: ChannelHandlerContext) {
        supervisor.workerChannelClosed(worker)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}

import ClawpenWire
