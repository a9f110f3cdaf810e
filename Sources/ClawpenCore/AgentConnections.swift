/// How many connections each tenant's jobs hold open to its agent socket, and whether its
/// listener should take more (docs/subjobs.md, "Connections").
///
/// Why: every accepted connection is a descriptor of the supervisor, which all tenants share
/// with the control socket, the workers' sockets and the store. Measured before this limit: a
/// tenant's jobs (six processes of 4,000 connections each) took the supervisor to its
/// RLIMIT_NOFILE, and another tenant's submit took 100 s. A tenant at its limit is not accepted
/// from (its listener stops reading, so further connections wait in the kernel's backlog and
/// cost the supervisor nothing) until one of its connections closes; all tenants together are
/// held to `allLimit` the same way. Pure bookkeeping: the shell pauses and resumes listeners.
public struct AgentConnections: Sendable {
    /// All tenants' agent connections together (derived from the supervisor's descriptor limit).
    public let allLimit: Int
    /// Connections every tenant may hold whatever the others hold (at most its own limit): the
    /// common limit does not let some tenants' jobs shut every other tenant's agent socket. What
    /// this adds above `allLimit` is bounded by the tenants with running jobs (connections come
    /// from jobs and close with them), at most `floor` each.
    public let floor: Int
    public private(set) var total = 0
    private var byTenant: [String: Int] = [:]
    /// Connections closed at once because they came past a limit (a listener accepts a few in
    /// one read before it can be paused).
    public private(set) var refused = 0
    /// Times a tenant's listener was paused at its own limit, or all were at `allLimit`.
    public private(set) var pauses = 0

    public static let defaultFloor = 16

    public init(allLimit: Int, floor: Int = Self.defaultFloor) {
        self.allLimit = max(1, allLimit)
        self.floor = max(0, floor)
    }

    public func held(by tenant: String) -> Int { byTenant[tenant] ?? 0 }

    /// A connection was accepted on `tenant`'s socket. False: it came past a limit and must be
    /// closed now (it is not counted).
    public mutating func opened(_ tenant: String, limit: Int) -> Bool {
        let mine = held(by: tenant)
        guard mine < limit, total < allLimit || mine < floor else {
            refused += 1
            return false
        }
        byTenant[tenant] = mine + 1
        total += 1
        if byTenant[tenant]! == limit || total == allLimit { pauses += 1 }
        return true
    }

    public mutating func closed(_ tenant: String) {
        guard let mine = byTenant[tenant], mine > 0 else { return }
        byTenant[tenant] = mine == 1 ? nil : mine - 1
        total -= 1
    }

    /// Whether `tenant`'s listener should take connections now.
    public func accepts(_ tenant: String, limit: Int) -> Bool {
        let mine = held(by: tenant)
        return mine < limit && (total < allLimit || mine < floor)
    }

    /// Whether the common limit is reached (every listener of a tenant at its floor or above is
    /// held).
    public var allHeld: Bool { total >= allLimit }

    /// The common limit for a supervisor allowed `descriptors` open files: half of them, so
    /// that workers, clients and the store always keep the other half.
    public static func allLimit(descriptors: Int) -> Int { max(64, descriptors / 2) }
}
