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

    var callerUID: Int? { caller.map { Int($0.uid) } }

    func reply(_ type: String, _ fields: [(String, JSONValue)]) {
        send(Reply.make(type, id: id, fields))
    }

    func fail(_ error: ProtocolError) {
        send(Reply.error(error, id: id))
    }

    func job(_ view: JobView, existing: Bool = false) {
        reply("job", [("job", view.json), ("existing", .bool(existing))])
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
