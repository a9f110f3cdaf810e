import ClawpenPolicy
import Glibc
import Synchronization

/// Names the proxy resolved, kept for `ttl` per tenant: getaddrinfo blocks, so every lookup is a
/// hop to a resolver thread and back (two wake-ups, and with this machine's two cores often a
/// wait for one), and glibc keeps no cache of its own. A kept answer is decided on exactly as a
/// fresh one (EgressPolicy.decide, and the connection goes to the address that was checked), so
/// it changes nothing of what is allowed; it is per tenant so that one tenant's lookups cannot
/// be timed by another's. Failures are not kept.
final class ResolverCache: Sendable {
    struct Key: Hashable {
        let tenant: String
        let host: String
    }

    let ttlNanos: UInt64
    let maxEntries: Int
    private let entries = Mutex<[Key: (addresses: [IPAddress], expires: UInt64)]>([:])

    init(ttlSeconds: Double = 2, maxEntries: Int = 4096) {
        ttlNanos = UInt64(ttlSeconds * 1e9)
        self.maxEntries = maxEntries
    }

    func lookup(tenant: String, host: String) -> [IPAddress]? {
        let now = Self.now()
        return entries.withLock { e -> [IPAddress]? in
            guard let hit = e[Key(tenant: tenant, host: host)] else { return nil }
            if hit.expires <= now {
                e[Key(tenant: tenant, host: host)] = nil
                return nil
            }
            return hit.addresses
        }
    }

    func store(tenant: String, host: String, _ addresses: [IPAddress]) {
        guard !addresses.isEmpty, ttlNanos > 0 else { return }
        let expires = Self.now() + ttlNanos
        entries.withLock { e in
            if e.count >= maxEntries { e.removeAll(keepingCapacity: true) }
            e[Key(tenant: tenant, host: host)] = (addresses, expires)
        }
    }

    func forget(tenant: String) {
        entries.withLock { e in e = e.filter { $0.key.tenant != tenant } }
    }

    private static func now() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
    }
}
