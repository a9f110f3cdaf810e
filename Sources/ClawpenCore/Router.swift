/// How the router chooses the next job when several tenants wait (`serve --dispatch`).
public enum DispatchMode: String, Sendable, CaseIterable {
    /// Weighted fair: a tenant's first running job goes first, then deficit round robin by
    /// weight, and a reserve of slots kept for tenants with nothing running (the default).
    case fair
    /// First accepted, first started, whoever the tenant: only for comparison (clawpen-bench
    /// --scenario fairness shows why it is not the default).
    case fifo
}

/// The router's view of one tenant: what it needs to decide, and its own bookkeeping.
protocol RoutedTenant: AnyObject {
    var routing: RoutingState { get set }
    /// Relative share among tenants (the tier's cpu_weight: free 1, pro 4, enterprise 16).
    var routingWeight: Int { get }
    var runningCount: Int { get }
    var queuedCount: Int { get }
}

/// Per-tenant state owned by `Router`.
struct RoutingState {
    var inNewcomers = false
    var inRing = false
    /// Deficit round robin: jobs this tenant may still start in the current round.
    var deficit = 0
    /// FIFO mode: accepted jobs of this tenant not yet started, in the global arrival order.
    var fifoPending = 0
}

/// Chooses which tenant starts a job next, across all tenants, under a global limit of running
/// jobs. Confined to the supervisor's event loop.
///
/// Fair mode:
/// 1. *Deficit round robin* over every tenant with queued jobs: each visit grants `weight`
///    starts (free 1, pro 4, enterprise 16), so backlogs progress in proportion to weight, and
///    a tenant with 10,000 queued jobs gets no more turns than its weight buys.
/// 2. *A reserve*: DRR may not take the last `reserve` free slots. Those go only to tenants
///    with nothing running, first come first served. Jobs are not preemptible: without the
///    reserve, a flooding tenant that filled every slot would make every other tenant's next
///    job wait for one of its jobs to end. With it, a tenant that submits one job at a time
///    starts it at once, whatever another tenant's backlog.
///
/// Per-tenant limits (max_concurrent_runs, a ready worker) are the caller's `canStart`.
final class Router<Tenant: RoutedTenant> {
    let mode: DispatchMode
    let maxRunning: Int
    let reserve: Int
    private(set) var running = 0

    /// DRR: tenants with queued jobs (lazily pruned when visited).
    private var ring = RingBuffer<Tenant>()
    /// Candidates for the reserve: tenants that had nothing running when they got a job.
    private var newcomers = RingBuffer<Tenant>()
    /// FIFO mode: one entry per accepted job, naming its tenant.
    private var fifo = RingBuffer<Tenant>()

    init(mode: DispatchMode, maxRunning: Int, reserve: Int) {
        self.mode = mode
        self.maxRunning = max(1, maxRunning)
        self.reserve = max(0, min(reserve, self.maxRunning - 1))
    }

    /// Default global limit: 4 running jobs per online core (jobs of agents mostly wait).
    static func defaultMaxRunning(cores: Int) -> Int { 4 * max(1, cores) }
    /// Default reserve: a quarter of the slots, at least one.
    static func defaultReserve(maxRunning: Int) -> Int { max(1, maxRunning / 4) }

    var freeSlots: Int { maxRunning - running }

    /// A job of `t` was accepted (FIFO mode keeps the global arrival order).
    func accepted(_ t: Tenant) {
        if mode == .fifo {
            t.routing.fifoPending += 1
            fifo.append(t)
        } else {
            wake(t)
        }
    }

    /// `t` may be able to start a job now (it got a job, a job of it ended, its worker is ready).
    func wake(_ t: Tenant) {
        guard mode == .fair, t.queuedCount > 0 else { return }
        if !t.routing.inRing { t.routing.inRing = true; ring.append(t) }
        if t.runningCount == 0 && !t.routing.inNewcomers { t.routing.inNewcomers = true; newcomers.append(t) }
    }

    /// A queued job of `t` was taken out without starting (canceled, withdrawn, failed).
    func removedQueued(_ t: Tenant, count: Int = 1) {
        if mode == .fifo { t.routing.fifoPending = max(0, t.routing.fifoPending - count) }
    }

    /// A job started by `start` ended (or was lost with its worker).
    func ended(_ count: Int = 1) { running = max(0, running - count) }

    /// A job that lent its slot while it waited for a job of its tree runs on: it counts again,
    /// even if that puts the host one over its limit until a job ends (Trees.swift).
    func reacquired() { running += 1 }

    /// Starts jobs while slots are free. `canStart(t)`: t has a queued job and room for one more
    /// (worker ready, under max_concurrent_runs). `start(t)`: starts t's next queued job.
    func pump(canStart: (Tenant) -> Bool, start: (Tenant) -> Void) {
        switch mode {
        case .fair: pumpFair(canStart: canStart, start: start)
        case .fifo: pumpFIFO(canStart: canStart, start: start)
        }
    }

    private func pumpFair(canStart: (Tenant) -> Bool, start: (Tenant) -> Void) {
        // 1. DRR outside the reserve. Every visit starts a job or takes the tenant out of the
        //    ring (it is woken again when it can start), so this ends.
        while freeSlots > reserve, let t = ring.popFirst() {
            guard t.queuedCount > 0, canStart(t) else {
                t.routing.inRing = false; t.routing.deficit = 0
                continue
            }
            if t.routing.deficit <= 0 { t.routing.deficit += max(1, t.routingWeight) }
            while t.routing.deficit > 0, freeSlots > reserve, t.queuedCount > 0, canStart(t) {
                launch(t, start)
                t.routing.deficit -= 1
            }
            if t.queuedCount == 0 {
                t.routing.inRing = false; t.routing.deficit = 0
            } else if t.routing.deficit > 0 && canStart(t) {
                ring.pushFront(t) // only the slots ran out: its turn goes on at the next free slot
            } else {
                ring.append(t)
            }
        }
        // 2. The reserve: tenants with nothing running, in arrival order.
        while running < maxRunning, let t = newcomers.popFirst() {
            t.routing.inNewcomers = false
            guard t.runningCount == 0, t.queuedCount > 0, canStart(t) else { continue }
            launch(t, start)
        }
    }

    private func pumpFIFO(canStart: (Tenant) -> Bool, start: (Tenant) -> Void) {
        // The oldest accepted job whose tenant has room; jobs of tenants without room keep
        // their place.
        var kept = RingBuffer<Tenant>()
        while running < maxRunning, let t = fifo.popFirst() {
            guard t.routing.fifoPending > 0, t.queuedCount > 0 else {
                t.routing.fifoPending = 0
                continue
            }
            if canStart(t) {
                t.routing.fifoPending -= 1
                launch(t, start)
            } else {
                kept.append(t)
            }
        }
        while let t = fifo.popFirst() { kept.append(t) }
        fifo = kept
    }

    private func launch(_ t: Tenant, _ start: (Tenant) -> Void) {
        running += 1
        start(t)
    }
}
