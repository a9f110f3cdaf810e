/// Length-prefixed framing shared by every clawpen connection: a 4-byte unsigned big-endian
/// payload length, then the payload (docs/protocol.md). The limits live here so that the client,
/// the supervisor and the worker agree on them.
public enum Framing {
    public static let headerSize = 4
    /// Default cap on a client request (docs/protocol.md: 16 MiB, `serve --max-frame-bytes`).
    public static let defaultMaxRequestBytes = 16 * 1024 * 1024
    /// Replies carry up to two 1 MiB streams JSON-escaped (up to 6x for control bytes).
    public static let maxReplyBytes = 64 * 1024 * 1024

    /// Appends one frame (header + payload) to `out`.
    public static func append<C: Collection>(payload: C, to out: inout [UInt8]) where C.Element == UInt8 {
        let n = UInt32(truncatingIfNeeded: payload.count)
        out.append(UInt8(truncatingIfNeeded: n >> 24))
        out.append(UInt8(truncatingIfNeeded: n >> 16))
        out.append(UInt8(truncatingIfNeeded: n >> 8))
        out.append(UInt8(truncatingIfNeeded: n))
        out.append(contentsOf: payload)
    }

    public static func frame<C: Collection>(_ payload: C) -> [UInt8] where C.Element == UInt8 {
        var out: [UInt8] = []
        out.reserveCapacity(payload.count + headerSize)
        append(payload: payload, to: &out)
        return out
    }

    public static func readLength<C: Collection>(_ header: C) -> Int where C.Element == UInt8 {
        var n = 0
        for b in header.prefix(4) { n = (n << 8) | Int(b) }
        return n
    }

    /// The payload length a header announces, checked against the limit: every reader (the
    /// supervisor's NIO decoder, the client, the worker) calls this on the 4 header bytes
    /// before it buffers any of the payload, so an announced 4 GiB costs nothing.
    public static func payloadLength<C: Collection>(header: C, limit: Int) throws(FrameTooLarge) -> Int
    where C.Element == UInt8 {
        try payloadLength(announced: UInt32(truncatingIfNeeded: readLength(header)), limit: limit)
    }

    /// The same check on a header already read as a big-endian UInt32 (the supervisor's NIO
    /// decoder reads it with `ByteBuffer.getInteger`: the generic form above, called across
    /// modules on a ByteBufferView, costs a metadata lookup and an iterator per frame).
    public static func payloadLength(announced: UInt32, limit: Int) throws(FrameTooLarge) -> Int {
        let n = Int(announced)
        guard n <= limit else { throw FrameTooLarge(announced: n, limit: limit) }
        return n
    }
}

/// A frame header that announced more than the reader's limit.
public struct FrameTooLarge: Error, Equatable, Sendable, CustomStringConvertible {
    public let announced: Int
    public let limit: Int
    public init(announced: Int, limit: Int) { self.announced = announced; self.limit = limit }
    public var description: String { "frame of \(announced) bytes announced; the limit is \(limit) bytes" }
}

/// Incremental frame splitter for byte streams read in arbitrary chunks: the one the worker's
/// poll loop and the blocking client share (the supervisor's NIO sockets use FrameDecoder, which
/// checks headers with the same `Framing.payloadLength`). It never buffers more than one frame's worth beyond its limit: a
/// header announcing more than `maxFrameBytes` is reported before any payload is read.
public struct FrameSplitter: Sendable {
    public let maxFrameBytes: Int
    private var buffer: [UInt8] = []
    private var start = 0

    public init(maxFrameBytes: Int) { self.maxFrameBytes = maxFrameBytes }

    public var bufferedByteCount: Int { buffer.count - start }

    public mutating func append<C: Collection>(_ bytes: C) where C.Element == UInt8 {
        if start > 0 && start == buffer.count {
            buffer.removeAll(keepingCapacity: buffer.capacity <= 1 << 20)
            start = 0
        }
        buffer.append(contentsOf: bytes)
    }

    /// The next complete frame's payload, nil when more bytes are needed.
    public mutating func next() throws(FrameTooLarge) -> [UInt8]? {
        try withNext { Array($0) }
    }

    /// Hands the next complete frame's payload to `body` in place (valid only during the call:
    /// a chunk of a file is written from here, not copied first); nil when more bytes are needed.
    public mutating func withNext<R>(_ body: (UnsafeRawBufferPointer) -> R) throws(FrameTooLarge) -> R? {
        let available = buffer.count - start
        guard available >= Framing.headerSize else { return nil }
        let n = try Framing.payloadLength(header: buffer[start..<(start + 4)], limit: maxFrameBytes)
        guard available >= Framing.headerSize + n else { return nil }
        let s = start
        let payload = buffer.withUnsafeBytes { body(UnsafeRawBufferPointer(rebasing: $0[(s + 4)..<(s + 4 + n)])) }
        start += 4 + n
        if start == buffer.count {
            buffer.removeAll(keepingCapacity: buffer.capacity <= 1 << 20)
            start = 0
        } else if start > 1 << 20 {
            buffer.removeFirst(start)
            start = 0
        }
        return payload
    }
}
