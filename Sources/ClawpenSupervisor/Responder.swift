import ClawpenProtocol
import NIOCore

/// `struct ucred` of SO_PEERCRED (pid, uid, gid; three 32-bit fields, as the kernel lays it out).
struct PeerCredentials: Sendable, Equatable {
    var pid: Int32
    var uid: UInt32
    var gid: UInt32
}

/// Where the reply to one request goes: the client's channel and the id it chose. A client that
/// has gone away simply does not receive it; the job it asked for is unaffected.
struct Responder: Sendable {
    let channel: Channel
    let id: JSONValue
    /// Who is on the other end (SO_PEERCRED, read when the connection was accepted).
    var caller: PeerCredentials? = nil
    /// Set on the agent socket inside a tenant's sandbox: the principal is that tenant's job,
    /// never an operator (Agent/AgentSockets.swift).
    var agent: AgentCaller? = nil

    /// The connection's budget state (ClientBudgetHandler): once it is being disconnected over a
    /// budget, nothing more is built for it.
    var link: ClientLink? = nil

    var callerUID: Int? { caller.map { Int($0.uid) } }

    /// The reply would reach the client: its connection is open and not being disconnected. A
    /// thousand `job.wait`s of one job by a client that does not read must not cost a thousand
    /// serialized views once the first few put it over its budget.
    var wanted: Bool { channel.isActive && link?.closing == nil }

    func reply(_ type: String, _ fields: [(String, JSONValue)]) {
        guard wanted else { return }
        send(Reply.make(type, id: id, fields))
    }

    func fail(_ error: ProtocolError) {
        guard wanted else { return }
        send(Reply.error(error, id: id))
    }

    func job(_ view: JobView, existing: Bool = false) {
        guard wanted else { return }
        guard let views = link?.views else {
            reply("job", [("job", view.json), ("existing", .bool(existing))])
            return
        }
        // Three writes, one frame: the view's bytes are the same buffer for every reply that
        // carries it (NIO writes it with writev, without a copy).
        let shared = views.serialized(view, allocator: channel.allocator)
        let (head, tail) = Self.jobReplyParts(id: id, viewBytes: shared.readableBytes, existing: existing, allocator: channel.allocator)
        channel.write(head, promise: nil)
        channel.write(shared, promise: nil)
        channel.writeAndFlush(tail, promise: nil)
    }

    /// The frame of `Reply.make("job", id: id, [("job", view.json), ("existing", .bool(existing))])`
    /// but for the view's `viewBytes` bytes, which go between the two parts.
    static func jobReplyParts(id: JSONValue, viewBytes: Int, existing: Bool, allocator: ByteBufferAllocator) -> (ByteBuffer, ByteBuffer) {
        var open: [UInt8] = Array(#"{"type":"job","id":"#.utf8)
        id.write(to: &open)
        open += #","job":"#.utf8
        let close = Array((existing ? #","existing":true}"# : #","existing":false}"#).utf8)
        var head = allocator.buffer(capacity: 4 + open.count)
        head.writeInteger(UInt32(truncatingIfNeeded: open.count + viewBytes + close.count))
        head.writeBytes(open)
        return (head, allocator.buffer(bytes: close))
    }

    func job(_ result: Result<JobView, ProtocolError>, existing: Bool = false) {
        switch result {
        case .success(let view): job(view, existing: existing)
        case .failure(let error): fail(error)
        }
    }

    private func send(_ payload: [UInt8]) {
        guard channel.isActive else { return }
        channel.writeAndFlush(channel.allocator.frame(payload), promise: nil)
    }
}

/// The last job view serialized for a reply, kept for the next reply of the same view (the
/// same buffer, sent to each): when a
/// job ends, every `job.wait` of it gets the same view, and a view with a megabyte of output
/// takes a millisecond or more to serialize. Its waiters may be hundreds (a client that piles
/// them up and never reads is cut off at its budget, but only after its budget's worth). The
/// comparison is cheap for the same view: its strings share their storage. Confined to the
/// supervisor's event loop.
final class JobViewBytes: @unchecked Sendable {
    private var view: JobView?
    private var bytes = ByteBuffer()

    func serialized(_ v: JobView, allocator: ByteBufferAllocator) -> ByteBuffer {
        if let view, view == v { return bytes }
        view = v
        bytes = allocator.buffer(bytes: v.json.serialized())
        return bytes
    }
}
