/// How many connections the control socket holds, per peer uid and for all, and whether its
/// listener should take more (docs/reliability.md, "Descriptors").
///
/// Why: every accepted connection is a descriptor of the supervisor, shared with the workers'
/// sockets, the agent sockets and the store. Agent sockets are held to half of RLIMIT_NOFILE
/// (AgentConnections); the control socket had no limit, so one service that leaked connections
/// could take the supervisor to its RLIMIT_NOFILE, after which no worker could be started and
/// no other client accepted. Two limits:
/// * `perUID` (`--max-clients-per-uid`): connections from one peer uid (SO_PEERCRED). One past
///   it is accepted and closed at once with a refusal naming the rule, so that a leaking
///   service is told and other services (other uids) go on being accepted.
/// * `all` (`--max-clients`): all control connections. At it the listener stops accepting
///   (further connections wait in the kernel's backlog and cost nothing) until one closes; one
///   accepted past it in the same read is refused like the above.
/// Pure bookkeeping: the shell reads the peer's uid, closes and pauses.
public struct ControlConnections: Sendable {
    public enum Verdict: Equatable, Sendable {
        case accepted
        /// Its uid holds `perUID` connections already.
        case overUID(held: Int)
        /// All connections together hold `all`.
        case overAll(held: Int)
    }

    public let all: Int
    public let perUID: Int
    public private(set) var total = 0
    private var byUID: [UInt32: Int] = [:]
    public private(set) var refusedPerUID = 0
    public private(set) var refusedAll = 0

    /// A peer whose credentials could not be read counts under this uid (none is that high).
    public static let unknownUID = UInt32.max

    public init(all: Int, perUID: Int) {
        self.all = max(1, all)
        self.perUID = max(1, perUID)
    }

    public func held(by uid: UInt32) -> Int { byUID[uid] ?? 0 }

    /// A connection from `uid` was accepted by the kernel. Anything but `.accepted`: close it
    /// now with the refusal (it is not counted).
    public mutating func opened(uid: UInt32) -> Verdict {
        let mine = held(by: uid)
        if total >= all {
            refusedAll += 1
            return .overAll(held: total)
        }
        if mine >= perUID {
            refusedPerUID += 1
            return .overUID(held: mine)
        }
        byUID[uid] = mine + 1
        total += 1
        return .accepted
    }

    public mutating func closed(uid: UInt32) {
        guard let mine = byUID[uid], mine > 0 else { return }
        byUID[uid] = mine == 1 ? nil : mine - 1
        total -= 1
    }

    /// Whether the listener should take connections now.
    public var accepts: Bool { total < all }

    /// The uids holding the most, the most first (for status), at most `count`.
    public func topHolders(_ count: Int) -> [(uid: UInt32, held: Int)] {
        byUID.sorted { $0.value != $1.value ? $0.value > $1.value : $0.key < $1.key }.prefix(count).map { ($0.key, $0.value) }
    }

    /// `--max-clients` when none is given, for a supervisor allowed `descriptors` open files: a
    /// quarter of them (agent sockets may hold half; workers and the store keep the rest), and
    /// never below 512 (under 2,048 descriptors that is more than a quarter: a host that low
    /// runs few tenants). 16,384 under the shipped unit (LimitNOFILE=65536).
    public static func defaultAll(descriptors: Int) -> Int { max(512, descriptors / 4) }
    /// `--max-clients-per-uid` when none is given: half of all, and at least 256 (no more than
    /// all).
    public static func defaultPerUID(all: Int) -> Int { min(all, max(256, all / 2)) }
}
