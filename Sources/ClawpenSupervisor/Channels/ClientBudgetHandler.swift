import ClawpenCore
import ClawpenProtocol
import ClawpenWire
import Glibc
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

/// Every client connection of the daemon (the control socket and the agent sockets) and what the
/// supervisor holds for it: the ledger of ClientBudget.swift, and the handlers to close when it
/// says so. Confined to the supervisor's event loop, like every connection.
final class ClientTable {
    private(set) var ledger: ClientLedger
    private var handlers: [UInt64: ClientBudgetHandler] = [:]
    private var lastID: UInt64 = 0
    let logger: Logger
    /// The last job view serialized for a reply (Responder.job).
    let views = JobViewBytes()

    init(budget: ClientBudget, logger: Logger) {
        ledger = ClientLedger(budget: budget)
        self.logger = logger
    }

    var budget: ClientBudget { ledger.budget }

    /// `group`: the tenant of an agent socket's connection (its connections hold together).
    func open(_ handler: ClientBudgetHandler, group: String?) -> UInt64 {
        lastID += 1
        handlers[lastID] = handler
        ledger.open(lastID, group: group)
        return lastID
    }

    func close(_ id: UInt64) {
        handlers[id] = nil
        ledger.close(id)
    }

    func queued(_ id: UInt64, bytes: Int) { carryOut(ledger.queued(id, bytes: bytes), trigger: id, inDecoder: false) }
    func written(_ id: UInt64, bytes: Int) { ledger.written(id, bytes: bytes) }
    func inbound(_ id: UInt64, bytes: Int) { carryOut(ledger.inbound(id, bytes: bytes), trigger: id, inDecoder: true) }

    /// Closes the evicted connections now, so that what was queued for them is freed before
    /// anything more is built: when a job with a thousand waiters ends, the replies for forty
    /// clients that never read are made in one turn of the loop, and with the closes put off to
    /// the next turn each of them would hold its whole budget at once (a gigabyte, measured).
    /// Only the connection whose own decoder reported is closed on the next turn (its decoder is
    /// in the middle of a read); what it holds is its unfinished frame, which no reply adds to.
    private func carryOut(_ evictions: [ClientLedger.Eviction], trigger: UInt64, inDecoder: Bool) {
        for e in evictions {
            guard let handler = handlers.removeValue(forKey: e.id) else { continue }
            handler.evict(e, budget: ledger.budget, logger: logger, now: !(inDecoder && e.id == trigger))
        }
    }
}

/// Whether a connection is being disconnected over a budget, for whoever builds replies for it
/// (Responder). Confined to the supervisor's event loop (hence `@unchecked Sendable`: a
/// Responder, which is Sendable, carries it).
final class ClientLink: @unchecked Sendable {
    fileprivate(set) var closing: ClientDisconnectReason?
    /// Shared by every connection (ClientTable).
    let views: JobViewBytes

    init(views: JobViewBytes) { self.views = views }
}

/// Counts what the supervisor holds for one client connection (ClientTable) and closes the
/// connection when a budget says so. It sits between FrameDecoder and ClientHandler: every reply
/// and every chunk of streamed output passes through `write` on its way to the socket, and the
/// decoder reports the frame it is in the middle of (`inboundBuffered`).
///
/// A write's bytes count from the moment it is queued until its promise completes (the socket
/// took them, or the connection closed and they were dropped). An evicted connection is closed
/// at once (ClientTable.carryOut); what is still written to it is dropped.
final class ClientBudgetHandler: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    /// The error of a write dropped because the connection is being disconnected.
    struct Disconnected: Error, CustomStringConvertible {
        let reason: ClientDisconnectReason
        var description: String { "the connection is being closed: over its \(reason.rawValue)" }
    }

    private let table: ClientTable
    /// The tenant whose agent socket this connection came through (nil: the control socket).
    private let group: String?
    private var id: UInt64 = 0
    private var context: ChannelHandlerContext?
    let link: ClientLink
    private var evicted: ClientDisconnectReason? { link.closing }

    init(table: ClientTable, group: String? = nil) {
        self.table = table
        self.group = group
        link = ClientLink(views: table.views)
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        id = table.open(self, group: group)
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        table.close(id)
        self.context = nil
    }

    func channelInactive(context: ChannelHandlerContext) {
        table.close(id)
        context.fireChannelInactive()
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        if let evicted {
            promise?.fail(Disconnected(reason: evicted))
            return
        }
        let bytes = unwrapOutboundIn(data).readableBytes
        let done = promise ?? context.eventLoop.makePromise(of: Void.self)
        let bound = NIOLoopBound(table, eventLoop: context.eventLoop)
        let id = self.id
        done.futureResult.whenComplete { _ in bound.value.written(id, bytes: bytes) }
        table.queued(id, bytes: bytes)
        if let evicted {
            // This write put it over: dropped, like any that follow.
            done.fail(Disconnected(reason: evicted))
            return
        }
        context.write(data, promise: done)
    }

    /// FrameDecoder: the frame this connection is sending is `bytes` long so far.
    func inboundBuffered(_ bytes: Int) {
        guard evicted == nil else { return }
        table.inbound(id, bytes: bytes)
    }

    /// ClientTable: a budget says this connection goes. Logged with the kernel's word on who it
    /// is, then closed, `now` or on the next turn of the loop.
    func evict(_ e: ClientLedger.Eviction, budget: ClientBudget, logger: Logger, now: Bool) {
        guard evicted == nil, let context else { return }
        link.closing = e.reason
        let channel = context.channel
        var metadata: Logger.Metadata = [
            "rule": "\(e.reason.rawValue)", "queued_bytes": "\(e.queued)", "inbound_bytes": "\(e.inbound)",
            "all_clients_bytes": "\(e.total)",
        ]
        let flag: String
        switch e.reason {
        case .clientBudget:
            flag = "--client-buffer-bytes"
            metadata["budget_bytes"] = "\(budget.perClient)"
        case .allClientsBudget:
            flag = "--all-clients-buffer-bytes"
            metadata["budget_bytes"] = "\(budget.allClients)"
            if let g = e.group, let held = e.groupHeld {
                metadata["tenant"] = "\(g)"
                metadata["tenant_agent_bytes"] = "\(held)"
            }
        }
        if let cred = Self.peer(channel) {
            metadata["peer_pid"] = "\(cred.pid)"
            metadata["peer_uid"] = "\(cred.uid)"
        }
        let what =
            e.reason == .clientBudget
            ? "its own replies queued unread"
            : e.group == nil ? "the most of all clients' queued bytes" : "its tenant's agent connections together held the most of all clients' queued bytes"
        logger.warning(
            "disconnected a client over its buffer budget (\(flag)): \(what); its jobs go on", metadata: metadata)
        // Nothing of ours waits ahead of it (the connection held only the frame it was sending):
        // the client is told the rule. Behind queued replies it would never be read.
        let answer: ByteBuffer? = e.queued > 0 ? nil : channel.allocator.frame(Reply.error(Self.refusal(e, budget: budget, flag: flag), id: .null))
        if now {
            // Pending writes are failed and freed by the close, at once.
            if let answer { context.writeAndFlush(NIOAny(answer), promise: nil) }
            context.close(promise: nil)
            return
        }
        let bound = NIOLoopBound(context, eventLoop: context.eventLoop)
        context.eventLoop.execute {
            if let answer { bound.value.writeAndFlush(NIOAny(answer), promise: nil) }
            channel.close(promise: nil)
        }
    }

    static func refusal(_ e: ClientLedger.Eviction, budget: ClientBudget, flag: String) -> ProtocolError {
        let limit = e.reason == .clientBudget ? budget.perClient : budget.allClients
        let message: String
        switch e.reason {
        case .clientBudget:
            message = "this connection has \(e.queued) bytes of replies queued unread, over \(flag) (\(limit)); closing the connection"
        case .allClientsBudget:
            let holder =
                e.groupHeld.map {
                    "this tenant's agent connections held the most together (\($0) bytes), this one the most of them"
                } ?? "this connection held the most"
            message =
                "the supervisor holds \(e.total) bytes for its clients, over \(flag) (\(limit)), and \(holder) (\(e.inbound) bytes of an unfinished frame, \(e.queued) of replies); closing the connection"
        }
        return ProtocolError(.quotaExceeded, message, details: ["rule": .string(e.reason.rawValue), "limit": .int(Int64(limit))])
    }

    /// SO_PEERCRED of the connection, read now (it is open: the kernel still knows).
    static func peer(_ channel: Channel) -> PeerCredentials? {
        guard let provider = channel as? SocketOptionProvider else { return nil }
        let read: EventLoopFuture<PeerCredentials> = provider.unsafeGetSocketOption(
            level: SocketOptionLevel(SOL_SOCKET), name: SocketOptionName(SO_PEERCRED))
        // On the channel's loop the option is read at once and the future is complete.
        let cred = NIOLockedValueBox<PeerCredentials?>(nil)
        read.whenSuccess { value in cred.withLockedValue { $0 = value } }
        return cred.withLockedValue { $0 }
    }
}

extension Supervisor {
    /// The handlers of one client connection, the control socket's or an agent socket's.
    func addClientHandlers(
        _ channel: Channel, parser: NIOThreadPool, maxFrameBytes: Int, partialTimeout: TimeAmount, agentTenant: TenantName? = nil
    ) throws {
        let budget = ClientBudgetHandler(table: clients, group: agentTenant?.value)
        let decoder = FrameDecoder(maxFrameBytes: maxFrameBytes, partialTimeout: partialTimeout, runs: true)
        decoder.onBuffered = { [weak budget] bytes in budget?.inboundBuffered(bytes) }
        try channel.pipeline.syncOperations.addHandlers(
            ByteToMessageHandler(decoder), budget,
            ClientHandler(supervisor: self, parser: parser, agentTenant: agentTenant, link: budget.link, turns: clientTurns))
    }
}
