import CSystemd
import Glibc

/// Socket activation: the listening socket systemd passed (clawpen.socket), if any.
public enum ListenFDs {
    /// The first passed descriptor when it is a listening Unix stream socket; nil when the
    /// process was not socket-activated (then the supervisor binds its own socket). Clears
    /// LISTEN_PID/LISTEN_FDS so that nothing the supervisor starts sees them.
    public static func takeUnixListener() throws(Failure) -> (fd: Int32, path: String)? {
        let n = sd_listen_fds(1)
        if n < 0 { throw .listenFDs(-n) }
        guard n > 0 else { return nil }
        let fd = clawpen_sd_listen_fds_start()
        // Extra descriptors are not ours to keep open.
        for extra in 1..<n { close(fd + Int32(extra)) }
        guard sd_is_socket_unix(fd, Int32(SOCK_STREAM.rawValue), 1, nil, 0) > 0 else {
            throw .notAUnixListener(count: Int(n))
        }
        _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        return (fd, socketPath(fd) ?? "(inherited socket)")
    }

    /// `fd`, one of the `passed` descriptors systemd passed, checked to be a listening Unix
    /// stream socket (the listener among a file descriptor store's descriptors, FDStore).
    public static func unixListener(_ fd: Int32, passed: Int) throws(Failure) -> (fd: Int32, path: String) {
        guard sd_is_socket_unix(fd, Int32(SOCK_STREAM.rawValue), 1, nil, 0) > 0 else {
            throw .notAUnixListener(count: passed)
        }
        _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        return (fd, socketPath(fd) ?? "(inherited socket)")
    }

    /// The path the socket is bound to (getsockname).
    static func socketPath(_ fd: Int32) -> String? {
        var addr = sockaddr_un()
        var len = socklen_t(MemoryLayout<sockaddr_un>.size)
        let ok =
            withUnsafeMutablePointer(to: &addr) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) }
            } == 0
        guard ok else { return nil }
        return withUnsafeBytes(of: addr.sun_path) { raw in
            let bytes = raw.prefix { $0 != 0 }
            return bytes.isEmpty ? nil : String(decoding: bytes, as: UTF8.self)
        }
    }

    public enum Failure: Error, CustomStringConvertible {
        case listenFDs(Int32)
        case notAUnixListener(count: Int)
        public var description: String {
            switch self {
            case .listenFDs(let e): return "sd_listen_fds failed: \(String(cString: strerror(e)))"
            case .notAUnixListener(let n):
                return "systemd passed \(n) descriptor(s), but the first is not a listening Unix stream socket (check ListenStream= in clawpen.socket)"
            }
        }
    }
}
