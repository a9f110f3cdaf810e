/// How many bytes the supervisor may hold for its clients: replies and streamed output queued to
/// be written to a connection (bytes its socket has not taken yet), and the half-received frame
/// of each connection. A client that does not read, or that makes the supervisor hold more than
/// its share, is disconnected; the jobs it submitted go on (docs/reliability.md, "Bounded memory
/// under slow and hostile clients").
///
/// Two budgets:
/// * `perClient` (`clawpen serve --client-buffer-bytes`): bytes queued for one connection. The
///   default, 24 MiB, holds the largest reply the shipped policies allow (a job's view with both
///   of its streams at output_max_bytes = 1 MiB, each escaped up to six-fold as JSON) with room to
///   spare, so a client that reads is never cut off in the middle of a reply.
/// * `allClients` (`--all-clients-buffer-bytes`): bytes queued for all connections together, plus
///   every connection's half-received frame. Over it, the holder of the most goes first, until
///   the rest fit: a holder is one control connection, or all the agent connections of one
///   tenant together (so that a tenant that opens many connections, each under its own budget,
///   pays for what they hold together, and not a service with one large reply); of a tenant's,
///   its biggest connection goes.
///
/// A connection's half-received frame counts toward `allClients` only: one frame is already
/// bounded by `--max-frame-bytes`, and is what an ordinary upload of a large file chunk looks
/// like; a thousand of them at once are not.
public struct ClientBudget: Sendable, Equatable {
    public static let defaultPerClient = 24 * 1024 * 1024
    public static let defaultAllClients = 128 * 1024 * 1024
    /// Below this a budget would cut off a client that reads: three frames of streamed output
    /// (64 KiB of data each, base64) and NIO's 64 KiB high-water mark.
    public static let minimumPerClient = 256 * 1024

    public var perClient: Int
    public var allClients: Int

    public init(perClient: Int = Self.defaultPerClient, allClients: Int = Self.defaultAllClients) {
        self.perClient = perClient
        self.allClients = allClients
    }

    /// The all-clients budget when none is given: the default, or more when one connection's
    /// largest frame and its queued replies would not fit in it.
    public static func defaultAllClients(perClient: Int, maxFrameBytes: Int) -> Int {
        max(defaultAllClients, perClient + maxFrameBytes)
    }

    /// Why a pair of budgets cannot work, or nil. `maxFrameBytes`: the largest request frame.
    public func problem(maxFrameBytes: Int) -> String? {
        if perClient < Self.minimumPerClient {
            return "--client-buffer-bytes must be at least \(Self.minimumPerClient), not \(perClient)"
        }
        if allClients < perClient + maxFrameBytes {
            return
                "--all-clients-buffer-bytes (\(allClients)) must be at least --client-buffer-bytes (\(perClient)) plus --max-frame-bytes (\(maxFrameBytes)): one connection may hold that much"
        }
        return nil
    }

    /// The largest reply a job's view can be with `outputMaxBytes` per stream: both streams,
    /// escaped six-fold at worst (`\u0001`), plus the rest of the view.
    public static func largestReply(outputMaxBytes: Int) -> Int { 2 * 6 * outputMaxBytes + 64 * 1024 }
}

/// The rule a connection was disconnected by (the `reason` label of
/// `clawpen_client_disconnects_total`).
public enum ClientDisconnectReason: String, Sendable, CaseIterable {
    /// Its own queued replies went over `perClient`.
    case clientBudget = "client_budget"
    /// All connections together went over `allClients`, and it held the most.
    case allClientsBudget = "all_clients_budget"
}

/// What the supervisor holds for each client connection, and whom to disconnect. Pure: the
/// caller tells it what was queued, written and buffered, and carries out the evictions it
/// returns by closing those connections at once, which frees what was queued for them; so an
/// evicted connection's bytes leave the accounting at once, and later reports for it are
/// ignored.
public struct ClientLedger: Sendable {
    public struct Entry: Sendable, Equatable {
        /// Bytes written to the connection that its socket has not taken yet.
        public var queued = 0
        /// Bytes of the frame it is sending, received so far.
        public var inbound = 0
        /// The tenant whose agent socket it came through (nil: a control connection, a holder
        /// of its own).
        public var group: String?
        public var held: Int { queued + inbound }
    }

    /// One connection to disconnect, with what it held when the rule was broken.
    public struct Eviction: Sendable, Equatable {
        public var id: UInt64
        public var reason: ClientDisconnectReason
        public var queued: Int
        public var inbound: Int
        /// All connections' bytes when the rule was broken (this one's included).
        public var total: Int
        /// Over `allClients`, for an agent connection: its tenant, and what all that tenant's
        /// agent connections held together (this one's included).
        public var group: String? = nil
        public var groupHeld: Int? = nil
    }

    public var budget: ClientBudget
    public private(set) var entries: [UInt64: Entry] = [:]
    /// Every connection's `held`, summed.
    public private(set) var total = 0
    /// The largest `total` seen since the start.
    public private(set) var peakTotal = 0
    public private(set) var disconnects: [ClientDisconnectReason: Int] = [:]

    public init(budget: ClientBudget) { self.budget = budget }

    public var connections: Int { entries.count }
    public var queuedTotal: Int { entries.values.reduce(0) { $0 + $1.queued } }
    public var inboundTotal: Int { entries.values.reduce(0) { $0 + $1.inbound } }

    /// A new connection; `group`: the tenant of an agent socket's connection.
    public mutating func open(_ id: UInt64, group: String? = nil) { entries[id] = entries[id] ?? Entry(group: group) }

    /// The connection is gone: what it held is released.
    public mutating func close(_ id: UInt64) {
        guard let e = entries.removeValue(forKey: id) else { return }
        total -= e.held
    }

    /// `bytes` were written to the connection (not yet taken by its socket).
    public mutating func queued(_ id: UInt64, bytes: Int) -> [Eviction] {
        guard var e = entries[id] else { return [] }
        e.queued += bytes
        entries[id] = e
        total += bytes
        peakTotal = max(peakTotal, total)
        if e.queued > budget.perClient {
            return [evict(id, .clientBudget)] + overAll(trigger: id)
        }
        return overAll(trigger: id)
    }

    /// The socket took `bytes` of what was queued (or the write failed: they are dropped).
    public mutating func written(_ id: UInt64, bytes: Int) {
        guard var e = entries[id] else { return }
        let n = min(bytes, e.queued)
        e.queued -= n
        entries[id] = e
        total -= n
    }

    /// The connection's half-received frame is now `bytes` long (0: none).
    public mutating func inbound(_ id: UInt64, bytes: Int) -> [Eviction] {
        guard var e = entries[id] else { return [] }
        total += bytes - e.inbound
        e.inbound = bytes
        entries[id] = e
        peakTotal = max(peakTotal, total)
        return overAll(trigger: id)
    }

    /// Over the all-clients budget: holders go, the one holding the most first, until the rest
    /// fit (a holder: a control connection, or one tenant's agent connections together; of a
    /// tenant's, the biggest). Among equals, the one with `trigger` (whose bytes broke the
    /// budget) goes first, then the newest, so that the decision does not depend on the
    /// dictionary's order.
    private mutating func overAll(trigger: UInt64) -> [Eviction] {
        var out: [Eviction] = []
        while total > budget.allClients {
            // One pass for each holder's bytes and its biggest connection (not a sort: there may
            // be thousands of connections).
            var holders: [String: (held: Int, biggest: UInt64, biggestHeld: Int)] = [:]
            // `key`: the id it is compared by among equals (a tenant's: the trigger if it is
            // one of them, else its biggest); `id`: the connection that goes.
            var best: (key: UInt64, held: Int, id: UInt64, group: String?)?
            /// The one rule among connections and among holders alike: more bytes, then the
            /// trigger, then the newest.
            func goesBefore(_ key: UInt64, _ held: Int, _ otherKey: UInt64, _ otherHeld: Int) -> Bool {
                if held != otherHeld { return held > otherHeld }
                return otherKey != trigger && (key == trigger || key > otherKey)
            }
            for (id, e) in entries where e.held > 0 {
                guard let g = e.group else {
                    if best.map({ goesBefore(id, e.held, $0.key, $0.held) }) ?? true { best = (id, e.held, id, nil) }
                    continue
                }
                var h = holders[g] ?? (0, id, e.held)
                h.held += e.held
                if goesBefore(id, e.held, h.biggest, h.biggestHeld) { h.biggest = id; h.biggestHeld = e.held }
                holders[g] = h
            }
            let triggerGroup = entries[trigger]?.group
            for (g, h) in holders {
                let key = triggerGroup == g ? trigger : h.biggest
                if best.map({ goesBefore(key, h.held, $0.key, $0.held) }) ?? true { best = (key, h.held, h.biggest, g) }
            }
            guard let best else { break }
            var eviction = evict(best.id, .allClientsBudget)
            if let g = best.group {
                eviction.group = g
                eviction.groupHeld = best.held
            }
            out.append(eviction)
        }
        return out
    }

    private mutating func evict(_ id: UInt64, _ reason: ClientDisconnectReason) -> Eviction {
        let e = entries[id] ?? Entry()
        let eviction = Eviction(id: id, reason: reason, queued: e.queued, inbound: e.inbound, total: total)
        close(id)
        disconnects[reason, default: 0] += 1
        return eviction
    }
}
