import ClawpenCore
import ClawpenProtocol
import ClawpenWire
import FoundationEssentials
import NIOCore

/// One file operation between a client and the tenant's worker. Confined to the event loop.
final class FileOp {
    let id: UInt32
    let tenant: TenantName
    let responder: Responder
    /// The request type, for messages ("file.get").
    let request: String
    var path = SandboxPath(components: [])
    var kind: Kind = .simple(.abort(op: 0))
    /// The worker it was sent to (nil while it waits for one).
    var worker: WorkerRef?
    /// Answered, failed or abandoned: nothing more is sent for it.
    var ended = false
    /// How it ended, for the metrics: `ok` or the error code its client was given.
    var result = "ok"

    enum Kind {
        case simple(FileRequest)
        case get(GetState)
        case put(PutState)
    }

    init(id: UInt32, tenant: TenantName, responder: Responder, request: String) {
        self.id = id; self.tenant = tenant; self.responder = responder; self.request = request
    }
}

struct GetState {
    let first: FileRequest
    let chunk: Int
    let maxBytes: UInt64
    var expectedOffset: UInt64 = 0
    /// Chunks the worker sent that have not been acknowledged (written to the client) yet: a
    /// worker may have at most the window it was given in flight (getWindow).
    var unacknowledged: UInt32 = 0
}

struct PutState {
    let key: PutKey
    let maxBytes: UInt64
    /// Bytes received from the client so far.
    var received: UInt64 = 0
    /// The client sent the last chunk.
    var eofSeen = false
    /// Frames held until a worker takes the operation.
    var pending: [ByteBuffer] = []
    var pendingBytes = 0
    /// Bytes sent to the worker that it has not acknowledged as written.
    var inFlight = 0
}

/// A put in progress on one connection, by the id its client chose.
struct PutKey: Hashable {
    let channel: ObjectIdentifier
    let id: String
}

/// The supervisor's file transfers: which operations run, which wait for a worker, which puts
/// each connection has open, which connections are not read because a put is ahead of its
/// worker. Confined to the event loop.
final class FileRelay {
    enum PutEntry: Equatable {
        case active(UInt32)
        /// Refused: the rest of its chunks are dropped up to the one with eof.
        case discarding
    }

    private(set) var nextOpID: UInt32 = 1
    var ops: [UInt32: FileOp] = [:]
    var waiting: [TenantName: [FileOp]] = [:]
    var puts: [PutKey: PutEntry] = [:]
    /// Connections whose close is watched (their operations are abandoned when they go).
    var watched: Set<ObjectIdentifier> = []
    /// Connections not read, and the puts that hold them.
    var paused: [ObjectIdentifier: Set<UInt32>] = [:]

    func newOpID() -> UInt32 {
        defer { nextOpID = nextOpID == .max ? 1 : nextOpID + 1 }
        return nextOpID
    }
}

extension Supervisor {
    // MARK: Starting

    /// The operation waits for the tenant's worker (the core starts one if needed).
    func startOrQueue(_ op: FileOp) {
        guard let t = core.tenants[op.tenant] else { return }
        fileRelay.ops[op.id] = op
        fileRelay.waiting[op.tenant, default: []].append(op)
        watchClose(op.responder.channel)
        perform(core.fileOpsRequested(t))
    }

    /// The core's `startFileOps`: every waiting operation of the tenant goes to `w`.
    func startFileOps(_ tenant: TenantName, _ w: WorkerRef) {
        let ops = fileRelay.waiting.removeValue(forKey: tenant) ?? []
        guard let channel = workers[w.id]?.channel else {
            for op in ops where !op.ended { failOp(op, ProtocolError(.unavailable, "\(op.request) \(op.path): the tenant's worker is gone; try again")) }
            for op in ops where op.ended { perform(core.fileOpEnded(tenant)) }
            return
        }
        for op in ops {
            if op.ended {
                perform(core.fileOpEnded(tenant)) // counted as sent by the core
                continue
            }
            op.worker = w
            switch op.kind {
            case .simple(let m): channel.write(channel.allocator.frame(SupervisorToWorker.file(m).encoded()), promise: nil)
            case .get(let g): channel.write(channel.allocator.frame(SupervisorToWorker.file(g.first).encoded()), promise: nil)
            case .put(var p):
                for frame in p.pending { channel.write(frame, promise: nil) }
                p.inFlight += p.pendingBytes
                p.pending = []
                p.pendingBytes = 0
                op.kind = .put(p)
            }
        }
        channel.flush()
    }

    /// The core's `failFileOps`: the waiting operations cannot be done.
    func failWaitingFileOps(_ tenant: TenantName, _ error: ProtocolError) {
        for op in fileRelay.waiting.removeValue(forKey: tenant) ?? [] where !op.ended {
            op.worker = nil
            failOp(op, ProtocolError(error.code, "\(op.request) \(op.path): \(error.message)", details: error.details), counted: false)
        }
    }

    /// Sends a put's next frame to its worker, or holds it until the operation has one.
    /// `frame`: one message for the worker, in one buffer or more (written in order, flushed
    /// together).
    func sendOrHold(_ op: FileOp, _ frame: [ByteBuffer], bytes: Int) {
        guard case .put(var p) = op.kind else { return }
        if let w = op.worker, let channel = workers[w.id]?.channel {
            for part in frame { channel.write(part, promise: nil) }
            channel.flush()
            p.inFlight += bytes
        } else {
            p.pending.append(contentsOf: frame)
            p.pendingBytes += bytes
        }
        op.kind = .put(p)
    }

    /// A put ahead of its worker by more than the window stops its connection being read; the
    /// client then waits on its own socket. Reading resumes below half the window.
    func throttle(_ op: FileOp) {
        guard case .put(let p) = op.kind else { return }
        let id = ObjectIdentifier(op.responder.channel)
        let ahead = p.inFlight + p.pendingBytes
        if ahead > Self.putWindowBytes && !op.ended {
            if fileRelay.paused[id, default: []].insert(op.id).inserted, fileRelay.paused[id]?.count == 1 {
                op.responder.channel.setOption(ChannelOptions.autoRead, value: false).whenComplete { _ in }
            }
        } else if ahead <= Self.putWindowBytes / 2 || op.ended {
            release(op)
        }
    }

    private func release(_ op: FileOp) {
        let id = ObjectIdentifier(op.responder.channel)
        guard fileRelay.paused[id]?.remove(op.id) != nil else { return }
        if fileRelay.paused[id]?.isEmpty ?? true {
            fileRelay.paused[id] = nil
            op.responder.channel.setOption(ChannelOptions.autoRead, value: true).whenComplete { _ in }
        }
    }

    func watchClose(_ channel: Channel) {
        let id = ObjectIdentifier(channel)
        guard fileRelay.watched.insert(id).inserted else { return }
        channel.closeFuture.whenComplete { [self] _ in
            loop.execute { self.clientClosed(id) }
        }
    }

    /// The client went away: its operations are abandoned (a put's temporary file removed).
    private func clientClosed(_ id: ObjectIdentifier) {
        fileRelay.watched.remove(id)
        fileRelay.paused[id] = nil
        for key in fileRelay.puts.keys where key.channel == id { fileRelay.puts[key] = nil }
        for op in fileRelay.ops.values where ObjectIdentifier(op.responder.channel) == id {
            op.result = "client_gone"
            abandon(op)
        }
    }

    // MARK: Ending

    /// Fails the operation with `error` (the client hears it), tells the worker to drop it.
    func failOp(_ op: FileOp, _ error: ProtocolError, counted: Bool = true) {
        guard !op.ended else { return }
        op.result = error.code.rawValue
        op.responder.fail(error)
        if case .put(let p) = op.kind { fileRelay.puts[p.key] = p.eofSeen ? nil : .discarding }
        abandon(op, counted: counted)
    }

    /// Ends the operation without a reply: the worker drops it, the core counts it done.
    private func abandon(_ op: FileOp, counted: Bool = true) {
        guard !op.ended else { return }
        if let w = op.worker, let channel = workers[w.id]?.channel {
            channel.writeAndFlush(channel.allocator.frame(SupervisorToWorker.file(.abort(op: op.id)).encoded()), promise: nil)
        }
        end(op, counted: counted)
    }

    /// Done: forgotten, its connection read again, and counted done by the core once it was
    /// sent (one still waiting is counted when the worker comes: startFileOps).
    private func end(_ op: FileOp, counted: Bool = true) {
        guard !op.ended else { return }
        op.ended = true
        runtimeCounters.fileOpEnded(op.tenant, request: op.request, result: op.result)
        fileRelay.ops[op.id] = nil
        release(op)
        if case .put(let p) = op.kind, fileRelay.puts[p.key] == .active(op.id) { fileRelay.puts[p.key] = nil }
        if op.worker != nil && counted { perform(core.fileOpEnded(op.tenant)) }
    }

    /// The worker's socket closed: what ran on it fails.
    func fileWorkerGone(_ w: WorkerHandle) {
        for op in fileRelay.ops.values where op.worker == w.ref {
            failOp(
                op,
                ProtocolError(
                    .unavailable, "\(op.request) \(op.path): the tenant's worker stopped during the request; try again",
                    details: ["path": .string(op.path.description), "stage": .string("worker"), "errno": .null]))
        }
    }

    // MARK: The worker's answers

    func fileReplied(_ reply: FileReply, _ w: WorkerHandle) {
        guard let op = fileRelay.ops[reply.op] else {
            // An answer to an operation that ended (aborted, failed): it crossed the abort.
            if reply.op >= fileRelay.nextOpID { workerMisbehaved(w, "answered file operation \(reply.op), which it was never given") }
            return
        }
        guard op.worker == w.ref else {
            workerMisbehaved(w, "answered file operation \(reply.op) of another worker")
            return
        }
        let r = op.responder
        switch (reply, op.kind) {
        case (.failed(_, let f), _):
            failOp(op, fileError(f, op))
        case (.info(_, let info), .simple(.stat)), (.info(_, let info), .simple(.mkdir)):
            r.reply("file", [("file", FileView(path: op.path.description, info: info).json)])
            end(op)
        case (.listing(_, let entries, let truncated, let itself), .simple(.list)):
            let base = op.path
            let views = entries.map { e in
                FileView(path: itself ? base.description : SandboxPath(components: base.components + [e.name]).description, info: e).json
            }
            r.reply("files", [("path", .string(base.description)), ("entries", .array(views)), ("truncated", .bool(truncated))])
            end(op)
        case (.removed(_, let n), .simple(.remove)):
            r.reply("removed", [("path", .string(op.path.description)), ("removed", .int(Int64(clamping: n)))])
            end(op)
        case (.putAck(_, let n), .put(var p)):
            guard Int(n) <= p.inFlight else { workerMisbehaved(w, "acknowledged more of a put than it was sent"); return }
            p.inFlight -= Int(n)
            op.kind = .put(p)
            throttle(op)
        case (.info(_, let info), .put(let p)) where p.eofSeen:
            r.reply("file", [("file", FileView(path: op.path.description, info: info).json)])
            end(op)
        case (.data(_, let offset, let bytes, let eof, let info), .get):
            var buffer = r.channel.allocator.buffer(capacity: bytes.count)
            buffer.writeBytes(bytes)
            fileData(op, offset: offset, bytes: buffer, eof: eof, info: info, w)
        default:
            workerMisbehaved(w, "answered file operation \(reply.op) with the wrong kind of reply")
            failOp(op, ProtocolError(.internal, "\(op.request) \(op.path): the worker sent a wrong answer"))
        }
    }

    /// A chunk of a get that is not the last, read in place from the worker's frame
    /// (FileFastPath.swift); checked as `fileReplied` checks every answer.
    func fileDataArrived(_ d: GetDataFrame, _ w: WorkerHandle) {
        guard let op = fileRelay.ops[d.op] else {
            if d.op >= fileRelay.nextOpID { workerMisbehaved(w, "answered file operation \(d.op), which it was never given") }
            return
        }
        guard op.worker == w.ref else {
            workerMisbehaved(w, "answered file operation \(d.op) of another worker")
            return
        }
        guard case .get = op.kind else {
            workerMisbehaved(w, "answered file operation \(d.op) with the wrong kind of reply")
            failOp(op, ProtocolError(.internal, "\(op.request) \(op.path): the worker sent a wrong answer"))
            return
        }
        fileData(op, offset: d.offset, bytes: d.data, eof: false, info: nil, w)
    }

    /// One chunk of a get, in order and within its bounds, goes to the client.
    private func fileData(_ op: FileOp, offset: UInt64, bytes: ByteBuffer, eof: Bool, info: FileInfo?, _ w: WorkerHandle) {
        guard case .get(var g) = op.kind else { return }
        let count = bytes.readableBytes
        g.unacknowledged += 1
        guard offset == g.expectedOffset, count <= g.chunk, offset + UInt64(count) <= g.maxBytes, eof || info == nil,
            g.unacknowledged <= Self.getWindow
        else {
            workerMisbehaved(w, "sent a chunk of a get out of order, over its size, over file_max_bytes, or beyond its window")
            failOp(op, ProtocolError(.internal, "\(op.request) \(op.path): the worker sent a malformed chunk"))
            return
        }
        g.expectedOffset += UInt64(count)
        op.kind = .get(g)
        sendChunk(op, offset: offset, bytes: bytes, eof: eof, info: info, worker: w)
    }

    /// Writes one `file.data` frame; once it is in the client's socket, the worker may read
    /// the next chunk (its credit). A client that does not read holds its own transfer only.
    private func sendChunk(_ op: FileOp, offset: UInt64, bytes: ByteBuffer, eof: Bool, info: FileInfo?, worker w: WorkerHandle) {
        var fields: [(String, JSONValue)] = [("offset", .int(Int64(clamping: offset))), ("eof", .bool(eof))]
        if eof, let info { fields.append(("file", FileView(path: op.path.description, info: info).json)) }
        let channel = op.responder.channel
        runtimeCounters.fileOut(op.tenant, bytes: bytes.readableBytes)
        // The small fields as JSON, then `data_b64` encoded straight into the frame (a chunk is
        // never escaped byte by byte as a JSON string).
        let head = Reply.make("file.data", id: op.responder.id, fields)
        let b64Count = Base64.encodedCount(bytes.readableBytes)
        var frame = channel.allocator.buffer(capacity: Framing.headerSize + head.count + b64Count + 16)
        frame.writeInteger(UInt32(truncatingIfNeeded: head.count + 13 + b64Count + 1))
        frame.writeBytes(head.dropLast())
        frame.writeBytes(#","data_b64":""#.utf8)
        frame.writeWithUnsafeMutableBytes(minimumWritableBytes: b64Count) { out in
            guard let dst = out.baseAddress?.assumingMemoryBound(to: UInt8.self) else { return 0 }
            bytes.withUnsafeReadableBytes { Base64.encode($0, to: dst) }
            return b64Count
        }
        frame.writeBytes(#""}"#.utf8)
        if eof {
            channel.writeAndFlush(frame, promise: nil)
            end(op)
            return
        }
        channel.writeAndFlush(frame).whenComplete { [self] result in
            guard !op.ended else { return }
            switch result {
            case .success:
                if case .get(var g) = op.kind {
                    g.unacknowledged = g.unacknowledged > 0 ? g.unacknowledged - 1 : 0
                    op.kind = .get(g)
                }
                if let wc = workers[w.ref.id]?.channel, op.worker == w.ref {
                    wc.writeAndFlush(wc.allocator.frame(SupervisorToWorker.file(.getAck(op: op.id)).encoded()), promise: nil)
                }
            case .failure:
                op.result = "client_gone"
                abandon(op)
            }
        }
    }
}
