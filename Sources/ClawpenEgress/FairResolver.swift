import ClawpenPolicy
import NIOCore
import NIOPosix
import Synchronization

/// Name lookups for every tenant of the proxy, on a few threads (getaddrinfo blocks), fair
/// between tenants: each tenant has its own queue (at most `maxQueuedPerTenant` waiting: past
/// that its request is refused, rule `resolve queue`), the threads take the tenants' queues in
/// turn, and one tenant has at most `maxInFlightPerTenant` lookups running. A tenant whose jobs
/// look up slow names under an allowed `*.domain` waits behind its own lookups, not the others'.
public final class FairResolver: Sendable {
    public static let maxQueuedPerTenant = 64

    struct Item {
        let host: String
        let promise: EventLoopPromise<[IPAddress]>
    }

    struct Queues {
        var waiting: [String: [Item]] = [:]
        /// Tenants with lookups waiting, in turn order.
        var order: [String] = []
        var running: [String: Int] = [:]
    }

    private let pool: NIOThreadPool
    let maxInFlightPerTenant: Int
    private let queues = Mutex(Queues())
    private let lookup: @Sendable (String) -> [IPAddress]

    public init(threads: Int, lookup: @escaping @Sendable (String) -> [IPAddress] = HostResolver.resolve) {
        pool = NIOThreadPool(numberOfThreads: threads)
        maxInFlightPerTenant = max(1, threads / 2)
        self.lookup = lookup
    }

    public func start() { pool.start() }

    /// The addresses of `host`, looked up for `tenant`; nil when the tenant has too many waiting.
    public func resolve(tenant: String, host: String, eventLoop: EventLoop) -> EventLoopFuture<[IPAddress]>? {
        let promise = eventLoop.makePromise(of: [IPAddress].self)
        let queued = queues.withLock { q -> Bool in
            var list = q.waiting[tenant, default: []]
            guard list.count < Self.maxQueuedPerTenant else { return false }
            if list.isEmpty { q.order.append(tenant) }
            list.append(Item(host: host, promise: promise))
            q.waiting[tenant] = list
            return true
        }
        guard queued else {
            promise.succeed([])
            return nil
        }
        // Whichever thread runs this (or one already running) takes the next item in turn.
        pool.submit { [self] state in drain(cancelled: state == .cancelled) }
        return promise.futureResult
    }

    /// Runs lookups, fairly, until none may run now. A thread that finishes one looks for the
    /// next, so an item left waiting (its tenant at its in-flight bound) is taken when that
    /// tenant's running lookup ends.
    private func drain(cancelled: Bool) {
        while let (tenant, item) = next() {
            item.promise.succeed(cancelled ? [] : lookup(item.host))
            queues.withLock { q in
                let n = q.running[tenant, default: 1] - 1
                q.running[tenant] = n > 0 ? n : nil
            }
        }
    }

    private func next() -> (String, Item)? {
        queues.withLock { q -> (String, Item)? in
            guard let i = q.order.firstIndex(where: { q.running[$0, default: 0] < maxInFlightPerTenant }) else { return nil }
            let tenant = q.order.remove(at: i)
            var list = q.waiting[tenant] ?? []
            let item = list.removeFirst()
            q.waiting[tenant] = list.isEmpty ? nil : list
            // Its next lookup waits for the other tenants' turns.
            if !list.isEmpty { q.order.append(tenant) }
            q.running[tenant, default: 0] += 1
            return (tenant, item)
        }
    }

    /// Lookups waiting and running of `tenant` (for tests and status).
    func load(_ tenant: String) -> (waiting: Int, running: Int) {
        queues.withLock { ($0.waiting[tenant]?.count ?? 0, $0.running[tenant] ?? 0) }
    }
}
