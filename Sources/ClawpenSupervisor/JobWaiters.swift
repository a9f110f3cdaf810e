/// Who waits to hear of which job's result (`job.wait`, `submit` with `wait`, `job.cancel` of a
/// running job, a stream's final frame), and how many waits each client connection may hold
/// (`serve --client-waits`, `--all-clients-waits`; docs/reliability.md, "Waits").
///
/// Why a limit: a wait costs the supervisor memory for as long as its job runs (up to the
/// tier's timeout_max_s), and nothing else bounds how many a client registers. Measured before
/// the limit: one connection pipelining a million `job.wait`s of a sleeping job took the
/// daemon from 25 to 185 MiB, and connections that registered ten thousand each and hung up
/// left theirs behind (another 165 MiB), since a wait was only let go when its job ended.
/// Now a connection's waits go with it, and past its limit (or all connections' limit) a wait
/// is refused with `quota_exceeded` naming the rule; the job is not touched.
///
/// Pure bookkeeping, generic over what a waiter is, so that its rules are tested without a
/// daemon (JobWaitersTests).
struct JobWaiters<Callback> {
    /// Whose wait it is: a client connection's, or the supervisor's own (nil; not limited, and
    /// bounded by what registers it).
    typealias Owner = ObjectIdentifier

    private struct Entry {
        let owner: Owner?
        let callback: Callback
    }

    let limits: WaitLimits
    private var byJob: [String: [Entry]] = [:]
    /// Per connection: how many waits, of which jobs (to let them go when it closes), and for
    /// an agent socket's connection, its tenant.
    private var owned: [Owner: (count: Int, jobs: Set<String>, tenant: String?)] = [:]
    /// Waits held for control socket connections (the supervisor's own are not counted).
    private(set) var clientWaits = 0
    /// Waits held for agent socket connections, by tenant. Their own limit, per tenant, and not
    /// the control clients' common one: a tenant's jobs must not be able to take the waits a
    /// service needs (nor another tenant's).
    private var agentWaits: [String: Int] = [:]
    var agentWaitsHeld: Int { agentWaits.values.reduce(0, +) }
    /// Waits refused over a limit since the start.
    private(set) var refusals = 0

    init(limits: WaitLimits = .default) { self.limits = limits }

    var isEmpty: Bool { byJob.isEmpty }
    func waits(of owner: Owner) -> Int { owned[owner]?.count ?? 0 }

    /// Registers `callback` for job `id`. A wait of a client connection is refused past a
    /// limit when `limited` (a `job.wait`, a resubmission's wait, a cancel's); an accepted
    /// submit's own wait is counted but never refused (its job is already accepted, and the
    /// tenant's queue quota bounds how many there are).
    mutating func add(_ id: String, owner: Owner?, agentTenant: String? = nil, limited: Bool = true, _ callback: Callback) -> WaitRefusal? {
        if let owner {
            let mine = owned[owner]?.count ?? 0
            if limited {
                if mine >= limits.perClient {
                    refusals += 1
                    return .client(limit: limits.perClient)
                }
                if let agentTenant {
                    if agentWaits[agentTenant, default: 0] >= limits.perClient {
                        refusals += 1
                        return .tenant(limit: limits.perClient)
                    }
                } else if clientWaits >= limits.allClients {
                    refusals += 1
                    return .allClients(limit: limits.allClients)
                }
            }
            var o = owned[owner] ?? (0, [], agentTenant)
            o.count += 1
            o.jobs.insert(id)
            owned[owner] = o
            count(o.tenant, +1)
        }
        byJob[id, default: []].append(Entry(owner: owner, callback: callback))
        return nil
    }

    /// Everyone waiting for job `id`, in the order they came; they wait no more.
    mutating func take(_ id: String) -> [Callback] {
        guard let entries = byJob.removeValue(forKey: id) else { return [] }
        for e in entries { if let owner = e.owner { release(owner, job: id, count: 1, jobDone: true) } }
        return entries.map(\.callback)
    }

    /// A connection closed: its waits are let go (its jobs are untouched). Returns how many.
    @discardableResult
    mutating func drop(owner: Owner) -> Int {
        guard let o = owned.removeValue(forKey: owner) else { return 0 }
        for id in o.jobs {
            guard var entries = byJob[id] else { continue }
            entries.removeAll { $0.owner == owner }
            byJob[id] = entries.isEmpty ? nil : entries
        }
        count(o.tenant, -o.count)
        return o.count
    }

    func waits(ofTenant tenant: String) -> Int { agentWaits[tenant] ?? 0 }

    private mutating func count(_ tenant: String?, _ delta: Int) {
        guard let tenant else {
            clientWaits += delta
            return
        }
        let n = agentWaits[tenant, default: 0] + delta
        agentWaits[tenant] = n > 0 ? n : nil
    }

    /// Every wait, by job (the daemon is stopping); none is held after.
    mutating func takeAll() -> [(String, [Callback])] {
        let all = byJob.map { ($0.key, $0.value.map(\.callback)) }
        byJob.removeAll()
        owned.removeAll()
        clientWaits = 0
        agentWaits.removeAll()
        return all
    }

    private mutating func release(_ owner: Owner, job id: String, count: Int, jobDone: Bool) {
        guard var o = owned[owner] else { return }
        o.count -= count
        if jobDone { o.jobs.remove(id) }
        self.count(o.tenant, -count)
        owned[owner] = o.count > 0 ? o : nil
    }
}

/// How many waits client connections may hold (`serve --client-waits`, `--all-clients-waits`).
public struct WaitLimits: Sendable, Equatable {
    /// Waits one client connection may hold at once.
    public var perClient: Int
    /// Waits all client connections together may hold.
    public var allClients: Int

    public static let defaultPerClient = 4096
    public static let defaultAllClients = 65536
    public static let `default` = WaitLimits(perClient: defaultPerClient, allClients: defaultAllClients)

    public init(perClient: Int, allClients: Int) {
        self.perClient = perClient
        self.allClients = allClients
    }
}

/// Why a wait was not registered (JobWaiters).
enum WaitRefusal: Equatable {
    case client(limit: Int)
    case allClients(limit: Int)
    /// An agent socket's connections of one tenant together (the same number as per client).
    case tenant(limit: Int)
}
