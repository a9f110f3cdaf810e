import ClawpenCore
import ClawpenProtocol
import ClawpenWire
import Glibc
import NIOCore

/// The control socket's listener and its connections against `--max-clients` and
/// `--max-clients-per-uid` (ControlConnections, ClawpenCore). Confined to the event loop.
struct ControlSocketState {
    var connections: ControlConnections
    /// The listening channel, once bound: paused (autoRead off) while all connections are held.
    var listener: Channel?
    var paused = false
    /// The limit warnings, per uid and (nil) for the common limit: a client can go to its limit
    /// and back without end.
    var warnings = WarningThrottle<UInt32?>()
}

extension Supervisor {
    /// The listener is bound: it can be paused from now on.
    func controlListenerBound(_ channel: Channel) {
        loop.preconditionInEventLoop()
        control.listener = channel
        refreshControlListener()
    }

    /// A control connection was accepted: counted, or refused with why (the caller closes it
    /// after the refusal). Returns the frame to answer with, or nil when it is accepted, and
    /// the uid it counts under.
    func controlConnectionOpened(_ channel: Channel) -> (refusal: [UInt8]?, uid: UInt32) {
        let uid = ClientBudgetHandler.peer(channel).map { $0.uid } ?? ControlConnections.unknownUID
        let verdict = control.connections.opened(uid: uid)
        refreshControlListener()
        switch verdict {
        case .accepted:
            if control.connections.held(by: uid) == control.connections.perUID, control.warnings.allows(uid) {
                logger.warning(
                    "control socket: a peer uid holds its limit of connections (--max-clients-per-uid); more from it are refused until some close",
                    metadata: ["peer_uid": "\(uid)", "limit": "\(control.connections.perUID)"])
            }
            return (nil, uid)
        case .overUID(let held):
            return (
                controlRefusal(
                    "peer uid \(uid) holds \(held) connections to the control socket, its limit (--max-clients-per-uid \(control.connections.perUID)): close one first",
                    quota: "client_connections_per_uid", limit: control.connections.perUID, held: held), uid
            )
        case .overAll(let held):
            return (
                controlRefusal(
                    "the control socket holds \(held) connections, its limit (--max-clients \(control.connections.all)): try again when some close",
                    quota: "client_connections", limit: control.connections.all, held: held), uid
            )
        }
    }

    private func controlRefusal(_ message: String, quota: String, limit: Int, held: Int) -> [UInt8] {
        let e = ProtocolError(
            .quotaExceeded, message, details: ["quota": .string(quota), "limit": .int(Int64(limit)), "current": .int(Int64(held))])
        return Reply.error(e, id: .null)
    }

    func controlConnectionClosed(uid: UInt32) {
        control.connections.closed(uid: uid)
        refreshControlListener()
    }

    /// Pauses the listener at the common limit and resumes it below: paused, it does not
    /// accept, and further connections wait in the kernel's backlog.
    private func refreshControlListener() {
        let accepts = control.connections.accepts
        guard accepts == control.paused, let listener = control.listener else { return }
        control.paused = !accepts
        if control.paused, control.warnings.allows(nil) {
            logger.warning(
                "control socket: all connections reached --max-clients; it accepts again when some close",
                metadata: ["limit": "\(control.connections.all)"])
        }
        try? listener.syncOptions?.setOption(ChannelOptions.autoRead, value: accepts)
    }
}
