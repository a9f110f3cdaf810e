import ClawpenWire
import NIOCore

/// The supervisor's end of a worker socketpair: frames in (split by FrameDecoder), decoded
/// binary messages to the supervisor. Everything here is untrusted input: a frame over the limit
/// or one that does not decode marks the worker as misbehaving. Decoding is linear in the frame
/// and the frame is bounded by what the worker may report (two capped output streams), so it
/// stays on the loop.
final class WorkerChannelHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer

    private let supervisor: Supervisor
    private let worker: WorkerHandle
    private let outputCap: Int
    /// Two capped streams plus headroom for ids and numbers.
    let maxFrameBytes: Int
    /// Set once the worker misbehaved: whatever else it sends is dropped.
    private var misbehaved = false

    init(supervisor: Supervisor, worker: WorkerHandle, outputCap: Int) {
        self.supervisor = supervisor
        self.worker = worker
        self.outputCap = outputCap
        // Or one chunk of a file transfer (FileMessages.swift), whichever is more.
        self.maxFrameBytes = max(2 * outputCap, FileRequest.maxChunkBytes) + 64 * 1024
    }

    /// The decoder that goes in front of this handler, sized for it. The handler adds it itself
    /// (in `handlerAdded`), so that a worker channel cannot be set up without its frame limit.
    func handlerAdded(context: ChannelHandlerContext) {
        let decoder = ByteToMessageHandler(FrameDecoder(maxFrameBytes: maxFrameBytes))
        do { try context.pipeline.syncOperations.addHandler(decoder, position: .before(self)) } catch {
            misbehave("its channel could not be set up (\(error))", context: context)
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !misbehaved else { return }
        let payload = unwrapInboundIn(data)
        if let chunk = GetDataFrame(payload) {
            supervisor.fileDataArrived(chunk, worker)
            return
        }
        do {
            let message = try WorkerToSupervisor.decode(Array(payload.readableBytesView), outputCap: outputCap)
            supervisor.workerSent(message, worker)
        } catch {
            misbehave("sent an undecodable frame (\(error))", context: context)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        switch error as? FrameDecoder.Failure {
        case .tooLarge(let e)?: misbehave("sent a frame of \(e.announced) bytes (limit \(e.limit))", context: context)
        case .incomplete?, nil:
            // Said, not swallowed: a worker lost to a socket error is otherwise only "died".
            if !misbehaved {
                supervisor.logger.warning(
                    "worker socket error; closing it", metadata: ["tenant": "\(worker.tenant)", "worker_pid": "\(worker.pid)", "error": "\(error)"])
                context.close(promise: nil)
            }
        }
    }

    private func misbehave(_ what: String, context: ChannelHandlerContext) {
        guard !misbehaved else { return }
        misbehaved = true
        supervisor.workerMisbehaved(worker, what)
    }

    /// The worker took what was queued for it: input held back for its jobs may go (Streams.swift).
    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable { supervisor.workerWritable(worker) }
        context.fireChannelWritabilityChanged()
    }

    func channelInactive(context: ChannelHandlerContext) {
        supervisor.workerChannelClosed(worker)
    }
}
