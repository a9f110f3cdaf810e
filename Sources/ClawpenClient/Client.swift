import CClawpenShim
import ClawpenProtocol
import ClawpenWire
import Glibc

/// Why a call to the daemon failed.
public enum ClientError: Error, CustomStringConvertible, Sendable {
    /// The daemon refused or failed the request (it said so in an error frame).
    case server(ProtocolError)
    /// The daemon could not be reached, or went away mid-call.
    case unavailable(String)
    /// The daemon sent something that is not a valid reply.
    case badReply(String)

    public var code: ErrorCode {
        switch self {
        case .server(let e): return e.code
        case .unavailable: return .unavailable
        case .badReply: return .internal
        }
    }

    public var message: String {
        switch self {
        case .server(let e): return e.message
        case .unavailable(let m), .badReply(let m): return m
        }
    }

    public var description: String { "\(code.rawValue): \(message)" }
}

/// Where the daemon listens: `--socket`, else `$CLAWPEN_SOCKET`, else the default (docs/protocol.md).
public enum SocketPath {
    public static let `default` = "/run/clawpen/clawpen.sock"

    public static func resolve(_ flag: String?) -> String {
        if let flag, !flag.isEmpty { return flag }
        if let env = getenv("CLAWPEN_SOCKET").map({ String(cString: $0) }), !env.isEmpty { return env }
        return Self.default
    }
}

/// A blocking connection to the supervisor, one request at a time. Used by the CLI and the
/// benchmark; services in other languages speak the same protocol (docs/protocol.md).
public final class ClawpenConnection {
    let fd: Int32
    var nextID: Int64 = 1
    var splitter = FrameSplitter(maxFrameBytes: Framing.maxReplyBytes)
    /// Reads from the socket land here first: 256 KiB, so that a chunk of a file (a frame of up
    /// to 5.6 MB) takes a few reads, not one per 64 KiB.
    private let readBuffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 256 * 1024, alignment: 16)
    public let socketPath: String

    public init(socketPath: String) throws(ClientError) {
        self.socketPath = socketPath
        let fd = cp_unix_connect(socketPath)
        guard fd >= 0 else {
            let e = errno
            let hint: String
            switch e {
            case ENOENT, ECONNREFUSED: hint = " (is `clawpen serve` running? set --socket or CLAWPEN_SOCKET)"
            case EACCES: hint = " (permission denied: are you in the socket's group?)"
            default: hint = ""
            }
            throw .unavailable("cannot connect to \(socketPath): \(String(cString: strerror(e)))\(hint)")
        }
        self.fd = fd
    }

    deinit {
        close(fd)
        readBuffer.deallocate()
    }

    /// Sends one request and returns the reply object; an error reply throws `.server`.
    public func call(_ request: Request) throws(ClientError) -> JSONValue {
        let id = nextID
        nextID += 1
        try send(RequestCodec.encode(request, id: .int(id)))
        while true {
            let reply = try receive()
            if let rid = reply["id"], rid != .int(id), !rid.isNull { continue } // not ours
            if reply["type"]?.stringValue == "error" {
                throw .server(reply["error"].flatMap(ProtocolError.init(json:)) ?? ProtocolError(.internal, "error reply without details"))
            }
            return reply
        }
    }

    public func send(_ payload: [UInt8]) throws(ClientError) {
        try writeAll(Framing.frame(payload))
    }

    /// Writes raw bytes (tests use it to send broken frames).
    public func writeAll(_ bytes: [UInt8]) throws(ClientError) {
        let failure: ClientError? = bytes.withUnsafeBytes { raw in
            do throws(ClientError) { try writeAll(raw); return nil } catch { return error }
        }
        if let failure { throw failure }
    }

    /// Writes raw bytes from memory the caller owns (a put's frame buffer, reused per chunk).
    public func writeAll(_ bytes: UnsafeRawBufferPointer) throws(ClientError) {
        guard let base = bytes.baseAddress else { return }
        var offset = 0
        while offset < bytes.count {
            let n = Glibc.send(fd, base + offset, bytes.count - offset, Int32(MSG_NOSIGNAL))
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { throw .unavailable("lost the connection to \(socketPath) while sending: \(String(cString: strerror(errno)))") }
            offset += n
        }
    }

    public func receive() throws(ClientError) -> JSONValue {
        let payload = try receivePayload()
        do { return try JSONValue.parse(payload) } catch {
            throw .badReply("the daemon sent a frame that is not JSON (\(error))")
        }
    }

    /// The next frame's payload, unparsed (a file's chunks are read without the JSON parser).
    func receivePayload() throws(ClientError) -> [UInt8] {
        while true {
            let payload: [UInt8]?
            do { payload = try splitter.next() } catch { throw .badReply("the daemon sent an oversized frame (\(error))") }
            if let payload { return payload }
            let n = read(fd, readBuffer.baseAddress, readBuffer.count)
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else {
                throw .unavailable(
                    n == 0
                        ? "the daemon closed the connection (is it shutting down?)"
                        : "lost the connection to \(socketPath): \(String(cString: strerror(errno)))")
            }
            splitter.append(UnsafeRawBufferPointer(rebasing: readBuffer[0..<n]))
        }
    }

    // MARK: Typed calls

    public func job(_ request: Request) throws(ClientError) -> (job: JobView, existing: Bool) {
        let reply = try call(request)
        guard let v = reply["job"], let job = JobView(json: v) else { throw .badReply("reply without a job") }
        return (job, reply["existing"]?.boolValue ?? false)
    }

    public func submit(_ s: SubmitRequest) throws(ClientError) -> (job: JobView, existing: Bool) {
        try job(.submit(s))
    }

    public func tenant(_ request: Request) throws(ClientError) -> TenantView {
        let reply = try call(request)
        guard let v = reply["tenant"], let t = TenantView(json: v) else { throw .badReply("reply without a tenant") }
        return t
    }

    public func tenants() throws(ClientError) -> [TenantView] {
        let reply = try call(.tenantList)
        return (reply["tenants"]?.arrayValue ?? []).compactMap(TenantView.init(json:))
    }

    public func status(tenant: TenantName? = nil) throws(ClientError) -> JSONValue {
        let reply = try call(.status(tenant: tenant))
        guard let s = reply["status"] else { throw .badReply("reply without a status") }
        return s
    }
}
