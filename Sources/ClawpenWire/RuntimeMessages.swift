/// The agent runtime's part of the supervisor<->worker link (docs/protocol.md, "Streaming,
/// stdin, terminals"): how a job is run (streamed, stdin open, on a terminal), and the messages
/// that carry its output, input, window size and signals while it runs. Bulk bytes travel in
/// `output` and `input`; the window (`ack`, `inputTaken`) keeps both directions bounded.

/// How a job is run beyond its command: the flags of an interactive or streamed job.
public struct RunOptions: Equatable, Sendable {
    /// Send `output` from the first byte (a streamed submit): no `watch` needed.
    public var stream: Bool
    /// Keep stdin open for `input` until an `input` with eof.
    public var stdinOpen: Bool
    /// Run on a pseudo-terminal made by the worker (stdin, stdout and stderr; controlling tty).
    public var tty: Bool
    public var rows: UInt16
    public var cols: UInt16

    public init(stream: Bool = false, stdinOpen: Bool = false, tty: Bool = false, rows: UInt16 = 24, cols: UInt16 = 80) {
        self.stream = stream; self.stdinOpen = stdinOpen; self.tty = tty; self.rows = rows; self.cols = cols
    }

    /// A job that talks to someone: bounded by `interactive_timeout_max_s`, not `timeout_max_s`.
    public var isInteractive: Bool { stdinOpen || tty }

    func encode(into w: inout BinaryWriter) {
        w.u8((stream ? 1 : 0) | (stdinOpen ? 2 : 0) | (tty ? 4 : 0))
        w.u32(UInt32(rows) << 16 | UInt32(cols))
    }

    static func decode(_ r: inout BinaryReader) throws(BinaryReader.Failure) -> RunOptions {
        let flags = try r.u8()
        guard flags & ~7 == 0 else { throw .badValue }
        let size = try r.u32()
        return RunOptions(
            stream: flags & 1 != 0, stdinOpen: flags & 2 != 0, tty: flags & 4 != 0,
            rows: UInt16(truncatingIfNeeded: size >> 16), cols: UInt16(truncatingIfNeeded: size))
    }
}

/// Which of a job's streams a chunk belongs to.
public enum OutputStream: UInt8, Equatable, Sendable {
    case stdout = 1
    case stderr = 2

    public var name: String { self == .stdout ? "stdout" : "stderr" }
}

/// One chunk of a job's output, as the worker read it from the job's pipe or terminal.
public struct OutputChunk: Equatable, Sendable {
    public var jobID: String
    public var stream: OutputStream
    /// The job's chunk number, both streams together (nil for a replayed chunk).
    public var seq: UInt64?
    /// Byte offset of the chunk within its stream.
    public var offset: UInt64
    /// Non-zero: part of the replay that `watch` with this token asked for.
    public var replayToken: UInt32
    public var data: [UInt8]

    public init(jobID: String, stream: OutputStream, seq: UInt64?, offset: UInt64, replayToken: UInt32 = 0, data: [UInt8]) {
        self.jobID = jobID; self.stream = stream; self.seq = seq; self.offset = offset
        self.replayToken = replayToken; self.data = data
    }

    /// Largest chunk a worker sends: what one read of its 64 KiB buffer returns.
    public static let maxBytes = 64 * 1024
}

/// The runtime messages the supervisor sends (tags 20-29 of `SupervisorToWorker`).
public enum RuntimeCommand: Equatable, Sendable {
    /// Start sending the job's output; `replayToken` > 0: first what is kept of it, then
    /// `replayed` with the token.
    case watch(jobID: String, replayToken: UInt32)
    /// Nobody follows the job any more: stop sending its output (it is still captured).
    case unwatch(jobID: String)
    /// The supervisor has passed on `bytes` more of the job's output: the window opens by that.
    case ack(jobID: String, bytes: UInt32)
    /// Bytes for the job's stdin, then (eof) close it (on a terminal: the EOF character).
    case input(jobID: String, data: [UInt8], eof: Bool)
    case resize(jobID: String, rows: UInt16, cols: UInt16)
    /// A signal to the job's process group.
    case signal(jobID: String, signal: Int32)

    public var jobID: String {
        switch self {
        case .watch(let id, _), .unwatch(let id), .ack(let id, _), .input(let id, _, _), .resize(let id, _, _), .signal(let id, _):
            return id
        }
    }

    func encode(into w: inout BinaryWriter) {
        switch self {
        case .watch(let id, let token): w.u8(20); w.string(id); w.u32(token)
        case .unwatch(let id): w.u8(21); w.string(id)
        case .ack(let id, let n): w.u8(22); w.string(id); w.u32(n)
        case .input(let id, let data, let eof): w.u8(23); w.string(id); w.bytes(data); w.bool(eof)
        case .resize(let id, let rows, let cols): w.u8(24); w.string(id); w.u32(UInt32(rows) << 16 | UInt32(cols))
        case .signal(let id, let sig): w.u8(25); w.string(id); w.i32(sig)
        }
    }

    static func decode(tag: UInt8, _ r: inout BinaryReader) throws(BinaryReader.Failure) -> RuntimeCommand? {
        switch tag {
        case 20: return .watch(jobID: try r.string(), replayToken: try r.u32())
        case 21: return .unwatch(jobID: try r.string())
        case 22: return .ack(jobID: try r.string(), bytes: try r.u32())
        case 23: return .input(jobID: try r.string(), data: try r.bytes(), eof: try r.bool())
        case 24:
            let id = try r.string(), size = try r.u32()
            return .resize(jobID: id, rows: UInt16(truncatingIfNeeded: size >> 16), cols: UInt16(truncatingIfNeeded: size))
        case 25: return .signal(jobID: try r.string(), signal: try r.i32())
        default: return nil
        }
    }
}

/// The runtime messages a worker sends (tags 20-29 of `WorkerToSupervisor`). Untrusted.
public enum RuntimeEvent: Equatable, Sendable {
    case output(OutputChunk)
    /// The replay that `watch` with this token asked for is complete.
    case replayed(jobID: String, replayToken: UInt32)
    /// So many bytes of input were written to the job's stdin (or dropped: it closed it).
    case inputTaken(jobID: String, bytes: UInt32)

    public var jobID: String {
        switch self {
        case .output(let c): return c.jobID
        case .replayed(let id, _), .inputTaken(let id, _): return id
        }
    }

    func encode(into w: inout BinaryWriter) {
        switch self {
        case .output(let c):
            w.u8(20); w.string(c.jobID); w.u8(c.stream.rawValue)
            w.bool(c.seq != nil); w.u64(c.seq ?? 0); w.u64(c.offset); w.u32(c.replayToken); w.bytes(c.data)
        case .replayed(let id, let token): w.u8(21); w.string(id); w.u32(token)
        case .inputTaken(let id, let n): w.u8(22); w.string(id); w.u32(n)
        }
    }

    static func decode(tag: UInt8, _ r: inout BinaryReader) throws(BinaryReader.Failure) -> RuntimeEvent? {
        switch tag {
        case 20:
            let id = try r.string()
            guard let stream = OutputStream(rawValue: try r.u8()) else { throw .badValue }
            let hasSeq = try r.bool(), seq = try r.u64(), offset = try r.u64(), token = try r.u32()
            // Without a seq the encoder writes 0: anything else is not a frame this release
            // writes (the reader is strict; one form per message).
            guard hasSeq || seq == 0 else { throw .badValue }
            let data = try r.bytes()
            guard data.count <= OutputChunk.maxBytes else { throw .tooMany }
            return .output(OutputChunk(jobID: id, stream: stream, seq: hasSeq ? seq : nil, offset: offset, replayToken: token, data: data))
        case 21: return .replayed(jobID: try r.string(), replayToken: try r.u32())
        case 22: return .inputTaken(jobID: try r.string(), bytes: try r.u32())
        default: return nil
        }
    }
}
