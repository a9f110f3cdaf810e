import Glibc

public enum Sockets {
    /// Writes all of `bytes` to a blocking socket (after a signal or a short write it sends the
    /// rest); false when the peer is gone. The one send loop of both ends of the egress sockets.
    public static func sendAll(_ fd: Int32, _ bytes: [UInt8]) -> Bool {
        var off = 0
        while off < bytes.count {
            let n = bytes[off...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { return false }
            off += n
        }
        return true
    }
}
