import ClawpenWire
import NIOCore

/// The one frame decoder of the supervisor's sockets, client connections and worker
/// socketpairs alike: a 4-byte big-endian length, then that many bytes of payload
/// (docs/protocol.md). It emits each payload as a slice of NIO's buffer, without copying.
///
/// It defends the daemon against hostile peers, and reports what it refused as a typed
/// `Failure` (through `errorCaught`) to the handler behind it, which decides the answer:
/// - the header is checked against the limit (`Framing.payloadLength`, as the client and the
///   worker check theirs) *before* any payload is buffered, so announcing 4 GiB costs nothing;
///   NIOExtras' length-field decoder would buffer up to Int32.max first, and could not tell the
///   client handler what to answer;
/// - with a `partialTimeout` (client connections), a frame left incomplete that long closes the
///   connection, so a client that announces 16 MiB and goes silent holds its buffer for a
///   bounded time only. The clock restarts with every complete frame: a client that streams
///   frames back to back is never cut off. Nor is one whose rest of a frame waits because the
///   supervisor stopped reading it (ClientHandler holds reads while the client does not read
///   its replies): the clock starts again once it is read from again;
/// - with `onBuffered` (client connections), it tells how many bytes of an incomplete frame it
///   holds whenever that changes, so that they count toward the all-clients budget
///   (ClientBudgetHandler): a thousand clients each sending most of a 16 MiB frame and no more
///   cannot make the daemon hold 16 GB.
///
/// With `runs` (client connections) it emits, per read, one slice holding every whole frame the
/// read completed, headers included (a `FrameRun`), instead of one message per frame: the
/// handler behind splits them as it takes them up. A client that pipelines two hundred requests
/// and is made to wait its turn then costs one message through the pipeline, not two hundred;
/// thirty such clients connecting at once held the loop for 50 ms before (mostly NIO's
/// per-message path and the budget's bookkeeping per frame), a stall for every other client.
final class FrameDecoder: ByteToMessageDecoder {
    typealias InboundOut = ByteBuffer

    enum Failure: Error, CustomStringConvertible {
        case tooLarge(FrameTooLarge)
        /// A frame stayed incomplete for the whole timeout; `received` bytes of it had come.
        case incomplete(received: Int, timeout: TimeAmount)

        var description: String {
            switch self {
            case .tooLarge(let e): return e.description
            case .incomplete(let received, let timeout):
                return "frame left incomplete for \(Double(timeout.nanoseconds) / 1e9) s (\(received) bytes received)"
            }
        }
    }

    let maxFrameBytes: Int
    let partialTimeout: TimeAmount?
    /// The one timer of the partial-frame clock, armed when a frame is first left incomplete
    /// and kept across complete ones: when it fires it looks at `partialSince` and either
    /// reports, or waits for what is left of the timeout. Scheduling and cancelling a task per
    /// frame (as a client streaming frames in small reads makes the decoder do) cost more than
    /// the rest of the decoding of a small frame: 0.6 µs against 0.3 µs.
    private var partialTimer: Scheduled<Void>?
    /// Since when the current frame has been incomplete (nil: none is).
    private var partialSince: NIODeadline?
    /// Bytes of the incomplete frame so far, for the timeout's message.
    private var buffered = 0
    /// Told the bytes of the incomplete frame held (0: none) when that changes.
    var onBuffered: ((Int) -> Void)?
    private var reported = 0

    /// Emits runs of whole frames (see the type's comment), not single payloads.
    let runs: Bool

    init(maxFrameBytes: Int, partialTimeout: TimeAmount? = nil, runs: Bool = false) {
        self.maxFrameBytes = maxFrameBytes
        self.partialTimeout = partialTimeout
        self.runs = runs
    }

    func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        if runs { return try decodeRun(context: context, buffer: &buffer) }
        buffered = buffer.readableBytes
        guard let header = buffer.getInteger(at: buffer.readerIndex, as: UInt32.self) else {
            armPartialTimer(context: context)
            report(buffer.readableBytes)
            return .needMoreData
        }
        let length: Int
        do { length = try Framing.payloadLength(announced: header, limit: maxFrameBytes) } catch {
            cancelPartialTimer()
            throw Failure.tooLarge(error)
        }
        guard buffer.readableBytes >= Framing.headerSize + length else {
            armPartialTimer(context: context)
            report(buffer.readableBytes)
            return .needMoreData
        }
        buffer.moveReaderIndex(forwardBy: Framing.headerSize)
        // readSlice cannot fail: the bytes were counted above.
        guard let payload = buffer.readSlice(length: length) else { return .needMoreData }
        // The clock restarts with every complete frame; the timer stays (see partialTimer).
        partialSince = nil
        report(buffer.readableBytes)
        context.fireChannelRead(Self.wrapInboundOut(payload))
        return .continue
    }

    /// Every whole frame in `buffer` as one slice, headers included. A header over the limit ends
    /// the run: the frames before it are passed on, then the refusal.
    private func decodeRun(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        var end = buffer.readerIndex
        let limit = buffer.writerIndex
        var refusal: FrameTooLarge?
        while let header = buffer.getInteger(at: end, as: UInt32.self) {
            let length: Int
            do { length = try Framing.payloadLength(announced: header, limit: maxFrameBytes) } catch {
                refusal = error
                break
            }
            guard limit - end >= Framing.headerSize + length else { break }
            end += Framing.headerSize + length
        }
        if end > buffer.readerIndex, let run = buffer.readSlice(length: end - buffer.readerIndex) {
            // The clock restarts with every complete frame; the timer stays (see partialTimer).
            partialSince = nil
            context.fireChannelRead(Self.wrapInboundOut(run))
        }
        if let refusal {
            cancelPartialTimer()
            throw Failure.tooLarge(refusal)
        }
        buffered = buffer.readableBytes
        if buffered > 0 { armPartialTimer(context: context) }
        report(buffered)
        return .needMoreData
    }

    func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws -> DecodingState {
        // Whole frames that came before the end are still delivered; a partial one is dropped.
        let state = try decode(context: context, buffer: &buffer)
        if state == .needMoreData {
            cancelPartialTimer()
            report(0)
        }
        return state
    }

    func decoderRemoved(context: ChannelHandlerContext) {
        cancelPartialTimer()
        report(0)
    }

    private func report(_ bytes: Int) {
        guard bytes != reported, let onBuffered else { return }
        reported = bytes
        onBuffered(bytes)
    }

    private func armPartialTimer(context: ChannelHandlerContext) {
        guard let timeout = partialTimeout, buffered > 0 else { return }
        if partialSince == nil { partialSince = context.eventLoop.now }
        guard partialTimer == nil else { return }
        schedulePartialCheck(context: context, in: timeout)
    }

    private func schedulePartialCheck(context: ChannelHandlerContext, in delay: TimeAmount) {
        guard let timeout = partialTimeout else { return }
        let bound = NIOLoopBound((context, self), eventLoop: context.eventLoop)
        partialTimer = context.eventLoop.scheduleTask(in: delay) {
            let (context, decoder) = bound.value
            decoder.partialTimer = nil
            // No frame incomplete now: the next one arms the clock again.
            guard let since = decoder.partialSince else { return }
            let left = since + timeout - context.eventLoop.now
            if left > .zero {
                decoder.schedulePartialCheck(context: context, in: left)
                return
            }
            // Reads are held while the client does not read its replies: the rest of its frame
            // may be waiting for that; the clock starts again.
            if !context.channel.isWritable {
                decoder.partialSince = context.eventLoop.now
                decoder.schedulePartialCheck(context: context, in: timeout)
                return
            }
            // The handler behind this one answers and closes the connection.
            context.fireErrorCaught(Failure.incomplete(received: decoder.buffered, timeout: timeout))
        }
    }

    private func cancelPartialTimer() {
        partialTimer?.cancel()
        partialTimer = nil
        partialSince = nil
    }
}

/// A run of whole frames as FrameDecoder emits it for client connections: each a 4-byte
/// big-endian length and that many bytes, checked against the limit already.
struct FrameRun {
    private(set) var bytes: ByteBuffer

    init(_ bytes: ByteBuffer) { self.bytes = bytes }

    var isEmpty: Bool { bytes.readableBytes == 0 }
    /// Bytes left, headers included.
    var readableBytes: Int { bytes.readableBytes }

    /// It holds exactly one frame.
    var isSingleFrame: Bool {
        guard let length = bytes.getInteger(at: bytes.readerIndex, as: UInt32.self) else { return false }
        return Int(length) + Framing.headerSize == bytes.readableBytes
    }

    /// The next frame's payload (a slice, no copy).
    mutating func next() -> ByteBuffer? {
        guard let length = bytes.readInteger(as: UInt32.self) else { return nil }
        return bytes.readSlice(length: Int(length))
    }
}

extension ByteBufferAllocator {
    /// The one frame writer of the supervisor's sockets: the 4-byte big-endian length, then the
    /// payload (what `Framing.frame` writes for the client and the worker).
    func frame(_ payload: [UInt8]) -> ByteBuffer {
        var out = buffer(capacity: payload.count + Framing.headerSize)
        out.writeInteger(UInt32(truncatingIfNeeded: payload.count))
        out.writeBytes(payload)
        return out
    }
}
