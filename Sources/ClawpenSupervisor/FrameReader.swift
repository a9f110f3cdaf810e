import ClawpenProtocol
import ClawpenWire
import NIOCore

/// Splits a client byte stream into frames (4-byte big-endian length + payload).
///
/// Defends the daemon against hostile clients: a header announcing more than the limit is
/// answered with `frame_too_large` and the connection closed before any payload is buffered; a
/// frame left half-sent for longer than `partialTimeout` closes the connection, so a client that
/// announces 16 MiB and then goes silent holds its buffer for a bounded time only.
final class FrameReader: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    private let maxFrameBytes: Int
    private let partialTimeout: TimeAmount
    private var buffer: ByteBuffer?
    private var partialTimer: Scheduled<Void>?
    private var closed = false

    init(maxFrameBytes: Int, partialTimeoutSeconds: Double) {
        self.maxFrameBytes = maxFrameBytes
        self.partialTimeout = .milliseconds(Int64(partialTimeoutSeconds * 1000))
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !closed else { return }
        var incoming = unwrapInboundIn(data)
        if buffer == nil { buffer = incoming } else { buffer!.writeBuffer(&incoming) }
        while var buf = buffer, buf.readableBytes >= 4 {
            let length = Int(buf.getInteger(at: buf.readerIndex, as: UInt32.self)!)
            if length > maxFrameBytes {
                refuse(context: context, ProtocolError(.frameTooLarge, "frame of \(length) bytes announced; the limit is \(maxFrameBytes) bytes (clawpen serve --max-frame-bytes); closing the connection"))
                return
            }
            guard buf.readableBytes >= 4 + length else { break }
            buf.moveReaderIndex(forwardBy: 4)
            let payload = buf.readSlice(length: length)!
            buffer = buf.readableBytes > 0 ? buf : nil
            if length == 0 {
                context.writeAndFlush(NIOAny(context.channel.allocator.frame(Reply.error(ProtocolError(.invalidRequest, "empty frame: a frame must hold a JSON object"), id: .null))), promise: nil)
                continue
            }
            context.fireChannelRead(wrapInboundOut(payload))
        }
        // Keep memory proportional to what is buffered.
        if var buf = buffer, buf.readerIndex > 64 * 1024 { buf.discardReadBytes(); buffer = buf }
        armPartialTimer(context: context)
    }

    private func armPartialTimer(context: ChannelHandlerContext) {
        if buffer == nil || buffer!.readableBytes == 0 {
            partialTimer?.cancel(); partialTimer = nil
            buffer = nil
            return
        }
        guard partialTimer == nil else { return }
        let ctx = NIOLoopBound(context, eventLoop: context.eventLoop)
        let selfBound = NIOLoopBound(self, eventLoop: context.eventLoop)
        partialTimer = context.eventLoop.scheduleTask(in: partialTimeout) {
            let me = selfBound.value
            me.partialTimer = nil
            guard let b = me.buffer, b.readableBytes > 0 else { return }
            me.refuse(context: ctx.value, ProtocolError(.invalidRequest, "frame left incomplete for \(me.partialTimeout.nanoseconds / 1_000_000_000) s (\(b.readableBytes) bytes received); closing the connection"))
        }
    }

    private func refuse(context: ChannelHandlerContext, _ error: ProtocolError) {
        closed = true
        buffer = nil
        partialTimer?.cancel(); partialTimer = nil
        let channel = context.channel
        context.writeAndFlush(NIOAny(context.channel.allocator.frame(Reply.error(error, id: .null)))).whenComplete { _ in
            channel.close(promise: nil)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        partialTimer?.cancel(); partialTimer = nil
        buffer = nil
        context.fireChannelInactive()
    }
}
