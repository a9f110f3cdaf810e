import ClawpenProtocol
import ClawpenWire
import FoundationEssentials
import Glibc

/// Streams and interactive jobs on one connection (docs/protocol.md, "Streaming"): requests go
/// out through a bounded buffer and frames come in as the socket has them, so a caller can poll
/// the socket beside its own descriptors (a terminal, a signalfd) without ever blocking on one
/// direction while the other is full.
extension ClawpenConnection {
    /// The socket, for poll(2).
    public var descriptor: Int32 { fd }

    /// A fresh request id.
    public func makeID() -> JSONValue {
        defer { nextID += 1 }
        return .int(nextID)
    }

    /// Every frame that has arrived, after one read of what the socket holds (call when poll
    /// says it is readable). Throws when the daemon closed the connection.
    public func readAvailable() throws(ClientError) -> [JSONValue] {
        var chunk = [UInt8](repeating: 0, count: 64 * 1024)
        let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if n < 0 && (errno == EINTR || errno == EAGAIN) { return try bufferedFrames() }
        guard n > 0 else {
            throw .unavailable(
                n == 0 ? "the daemon closed the connection" : "lost the connection to \(socketPath): \(String(cString: strerror(errno)))")
        }
        splitter.append(chunk[0..<n])
        return try bufferedFrames()
    }

    /// The complete frames already read.
    public func bufferedFrames() throws(ClientError) -> [JSONValue] {
        var frames: [JSONValue] = []
        while true {
            let payload: [UInt8]?
            do { payload = try splitter.next() } catch { throw .badReply("the daemon sent an oversized frame (\(error))") }
            guard let payload else { return frames }
            do { frames.append(try JSONValue.parse(payload)) } catch { throw .badReply("the daemon sent a frame that is not JSON (\(error))") }
        }
    }

    /// Writes as much of `pending` as the socket takes now (non-blocking socket); removes it.
    public func writeSome(_ pending: inout [UInt8]) throws(ClientError) {
        while !pending.isEmpty {
            let n = pending.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL | MSG_DONTWAIT)) }
            if n < 0 && errno == EINTR { continue }
            if n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) { return }
            guard n > 0 else { throw .unavailable("lost the connection to \(socketPath) while sending: \(String(cString: strerror(errno)))") }
            pending.removeFirst(n)
        }
    }
}

/// One `output` frame, decoded.
public struct OutputFrame: Sendable, Equatable {
    public var jobID: String
    public var stream: String
    public var seq: Int64?
    public var offset: Int64
    public var replay: Bool
    public var data: [UInt8]

    public init?(_ v: JSONValue) {
        guard v["type"]?.stringValue == "output", let id = v["job_id"]?.stringValue, let stream = v["stream"]?.stringValue,
            let b64 = v["data_b64"]?.stringValue, let data = Data(base64Encoded: b64)
        else { return nil }
        jobID = id; self.stream = stream; seq = v["seq"]?.intValue; offset = v["offset"]?.intValue ?? 0
        replay = v["replay"]?.boolValue ?? false; self.data = Array(data)
    }
}
