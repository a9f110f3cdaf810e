import ClawpenProtocol
import ClawpenWire
import NIOCore

/// The bytes of a file transfer on their way through the supervisor, touched once each way: a
/// client's `file.chunk` is decoded from base64 straight into the frame its worker gets, and a
/// worker's chunk of a get is encoded from the slice NIO read it into straight into the client's
/// `file.data` frame (FileRelay.swift). Before, a 1 MiB chunk was copied four or five times on
/// the way and its base64 validated as UTF-8 and copied into a String; that was most of the
/// supervisor's CPU in a transfer (BENCHMARKS.md, "Files").

extension Supervisor {
    /// Reads of up to 256 KiB on client and worker channels: adaptive, so an idle connection
    /// keeps a small buffer, and one moving a file grows to it.
    static let bulkReads = AdaptiveRecvByteBufferAllocator(minimum: 64, initial: 2048, maximum: 256 * 1024)
}

/// A client's `file.chunk` in the fast shape (ChunkFrame), already laid out as the body of the
/// `SupervisorToWorker.file(.putChunk)` frame: the data, eof. Its head (length, tags 40 and 8,
/// the op, the data's length) is made when the put is known (`frame(op:)`) and written before it
/// in the same writev. The op used to be set in place in one buffer, which copied the whole chunk
/// (copy-on-write: the parsed value still held the buffer), 2 % of the loop's time in a put.
struct PutChunkFrame: Sendable {
    let id: JSONValue
    let offset: UInt64
    let eof: Bool
    /// Bytes of file data in the frame.
    let count: Int
    private let body: ByteBuffer

    /// Smaller frames take the general parser: the saving is in the data, not the head.
    static let minimumBytes = 256

    /// Nil when the payload is not a `file.chunk` in the fast shape, or its base64 does not
    /// decode: the general parser then answers it as it always did.
    init?(_ payload: ByteBuffer, allocator: ByteBufferAllocator) {
        let made: (ChunkFrame, Int, ByteBuffer)? = payload.withUnsafeReadableBytes { raw -> (ChunkFrame, Int, ByteBuffer)? in
            guard let f = ChunkFrame.scan(raw, type: "file.chunk") else { return nil }
            let b64 = f.data(in: raw)
            guard let count = Base64.decodedCount(b64), count <= FileRequest.maxChunkBytes else { return nil }
            var out = allocator.buffer(capacity: count + 1)
            var ok = true
            if count > 0 {
                out.writeWithUnsafeMutableBytes(minimumWritableBytes: count) { dst in
                    guard let p = dst.baseAddress?.assumingMemoryBound(to: UInt8.self) else { ok = false; return 0 }
                    ok = Base64.decode(b64, to: p)
                    return count
                }
            }
            out.writeInteger(UInt8(f.eof ? 1 : 0))
            return ok ? (f, count, out) : nil
        }
        guard let (f, count, out) = made else { return nil }
        id = f.id; offset = f.offset; eof = f.eof; self.count = count; body = out
    }

    /// The frame for the worker, for operation `op`: its head, then the body.
    func frame(op: UInt32, allocator: ByteBufferAllocator) -> [ByteBuffer] {
        var head = allocator.buffer(capacity: Framing.headerSize + 10)
        head.writeInteger(UInt32(2 + 4 + 4 + count + 1))
        head.writeInteger(UInt8(40))
        head.writeInteger(UInt8(8))
        head.writeInteger(op)
        head.writeInteger(UInt32(count))
        return [head, body]
    }
}

/// A worker's `FileReply.data` that is not the last chunk (no file info follows), read in place:
/// the op, the offset and a slice of the data, without decoding the frame into arrays. The last
/// chunk, and anything not in exactly this shape, takes the general decoder.
struct GetDataFrame {
    let op: UInt32
    let offset: UInt64
    let data: ByteBuffer

    init?(_ payload: ByteBuffer) {
        let r = payload.readerIndex
        let n = payload.readableBytes
        // 40, 4, op, offset, length, data, eof (0), no info (0)
        guard n >= FileReply.dataHeaderBytes + 2, payload.getInteger(at: r, as: UInt8.self) == 40,
            payload.getInteger(at: r + 1, as: UInt8.self) == 4,
            let op = payload.getInteger(at: r + 2, as: UInt32.self), let offset = payload.getInteger(at: r + 6, as: UInt64.self),
            let length = payload.getInteger(at: r + 14, as: UInt32.self), Int(length) <= FileRequest.maxChunkBytes,
            FileReply.dataHeaderBytes + Int(length) + 2 == n,
            payload.getInteger(at: r + n - 2, as: UInt8.self) == 0, payload.getInteger(at: r + n - 1, as: UInt8.self) == 0,
            let data = payload.getSlice(at: r + FileReply.dataHeaderBytes, length: Int(length))
        else { return nil }
        self.op = op; self.offset = offset; self.data = data
    }
}
