import ClawpenProtocol
import ClawpenStore
import ClawpenWire

/// The offboarding life cycle of tenants (docs/tenant-data.md, "Offboarding") as a value type:
/// the shell persists each record (`offboardings`) and arms one timer at `nextDeadline`; every
/// decision (may it start, may it be restored, what is due, in which order the data goes) is
/// made here, on the clock it is given.
///
///     (none) --offboard--> grace --deadline--> shredding --every step done--> done
///                            \--restore--> (none)
///
/// `--now` is a grace period of zero: the deadline is the request's instant. `shredding` is
/// persisted before its first step, so a daemon that stops half-way finishes the steps at its
/// next start (each step is idempotent), never restores a tenant whose key is gone.
public struct OffboardingBook: Sendable, Equatable {
    public enum Phase: String, Sendable, Equatable { case grace, shredding, done }

    public struct Entry: Sendable, Equatable {
        public var tenant: TenantName
        public var uid: Int
        public var phase: Phase
        public var requestedAt: Double
        public var deadline: Double
        public var requestedBy: String
        public var deleteAudit: Bool
        public init(
            tenant: TenantName, uid: Int, phase: Phase, requestedAt: Double, deadline: Double, requestedBy: String, deleteAudit: Bool
        ) {
            self.tenant = tenant; self.uid = uid; self.phase = phase; self.requestedAt = requestedAt; self.deadline = deadline
            self.requestedBy = requestedBy; self.deleteAudit = deleteAudit
        }
    }

    /// The steps at the end of the grace period, in this order. The key first: from then on every
    /// sealed record is unreadable even if a later step fails or the daemon stops.
    public enum ShredStep: String, Sendable, CaseIterable {
        case destroyKey = "data key destroyed"
        case removeWorkspace = "workspace removed"
        case removeSecrets = "secrets removed"
        case removeOverrides = "overrides removed"
        case removeJobs = "job records removed"
        case retireUID = "uid retired"
        case removeAudit = "audit rows removed"
    }

    /// The default grace period when the operator names none.
    public static let defaultGraceDays = 30.0

    public private(set) var entries: [TenantName: Entry] = [:]

    public init(_ entries: [Entry] = []) {
        for e in entries { self.entries[e.tenant] = e }
    }

    public enum Refusal: Error, Equatable, Sendable {
        case alreadyOffboarding(TenantName, Phase, deadline: Double)
        case notOffboarding(TenantName)
        case pastGrace(TenantName, Phase)

        public var message: String {
            switch self {
            case .alreadyOffboarding(let t, let p, let d):
                return "tenant '\(t)' is already being offboarded (\(p.rawValue), deadline \(d)); restore it first to start over"
            case .notOffboarding(let t): return "tenant '\(t)' is not being offboarded: nothing to restore"
            case .pastGrace(let t, let p):
                return "tenant '\(t)' is past its grace period (\(p.rawValue)): its data key is destroyed, nothing can be restored"
            }
        }
        public var rule: String {
            switch self {
            case .alreadyOffboarding: return "offboarding in progress"
            case .notOffboarding: return "not offboarding"
            case .pastGrace: return "grace period over"
            }
        }
    }

    /// Starts an offboarding. `graceDays` nil: the default; `immediate`: no grace period.
    public mutating func offboard(
        _ tenant: TenantName, uid: Int, now: Double, graceDays: Double?, immediate: Bool, deleteAudit: Bool, by: String
    ) -> Result<Entry, Refusal> {
        if let e = entries[tenant], e.phase != .done { return .failure(.alreadyOffboarding(tenant, e.phase, deadline: e.deadline)) }
        let days = immediate ? 0 : max(0, graceDays ?? Self.defaultGraceDays)
        let e = Entry(
            tenant: tenant, uid: uid, phase: .grace, requestedAt: now, deadline: now + days * 86_400, requestedBy: by, deleteAudit: deleteAudit)
        entries[tenant] = e
        return .success(e)
    }

    /// Undoes an offboarding during its grace period (not once shredding began).
    public mutating func restore(_ tenant: TenantName, now: Double) -> Result<Entry, Refusal> {
        guard let e = entries[tenant], e.phase != .done else { return .failure(.notOffboarding(tenant)) }
        guard e.phase == .grace, now < e.deadline else { return .failure(.pastGrace(tenant, e.phase == .grace ? .shredding : e.phase)) }
        entries[tenant] = nil
        return .success(e)
    }

    /// Whether the tenant is offboarding (suspended, its secrets revoked).
    public func isOffboarding(_ tenant: TenantName) -> Bool { entries[tenant].map { $0.phase != .done } ?? false }

    /// The tenants whose shredding is due at `now` (grace over, or shredding left half-done),
    /// earliest deadline first.
    public func due(now: Double) -> [Entry] {
        entries.values.filter { ($0.phase == .grace && $0.deadline <= now) || $0.phase == .shredding }
            .sorted { ($0.deadline, $0.tenant.value) < ($1.deadline, $1.tenant.value) }
    }

    /// When the shell's timer should fire next: the earliest deadline still in grace.
    public func nextDeadline() -> Double? {
        entries.values.filter { $0.phase == .grace }.map(\.deadline).min()
    }

    /// Marks the start of shredding (persist this before the first step).
    public mutating func beginShredding(_ tenant: TenantName) -> Entry? {
        guard var e = entries[tenant], e.phase == .grace || e.phase == .shredding else { return nil }
        e.phase = .shredding
        entries[tenant] = e
        return e
    }

    public mutating func finished(_ tenant: TenantName) -> Entry? {
        guard var e = entries[tenant], e.phase == .shredding else { return nil }
        e.phase = .done
        entries[tenant] = e
        return e
    }

    /// The steps for this entry, in order (audit rows only with `--delete-audit`).
    public static func steps(for e: Entry) -> [ShredStep] {
        ShredStep.allCases.filter { $0 != .removeAudit || e.deleteAudit }
    }
}

extension Core {
    /// Offboarding begins: the tenant is suspended (submits refused, queued jobs wait) and its
    /// worker stopped (thawed first if frozen, so that it can exit).
    public func offboard(_ tenant: TenantName, by: String) -> [Action] {
        guard let t = tenants[tenant] else { return [] }
        if let id = t.idleTimerFor { out.append(.cancel(.idle(t.name, worker: id))); t.idleTimerFor = nil }
        out += t.lifecycle.suspend(by: by, wall: clock.wall(), now: clock.monotonic())
        out += t.lifecycle.stopForShutdown(now: clock.monotonic())
        return take()
    }

    /// The tenant leaves the core for good (its data is gone). Refused (false) while it still
    /// has a worker: the shell waits for the worker's exit.
    public func removeTenant(_ tenant: TenantName) -> Bool {
        guard let t = tenants[tenant] else { return true }
        guard t.lifecycle.worker == nil, t.inFlight.isEmpty else { return false }
        let queued = t.queue.removeAll().count
        if queued > 0 { router.removedQueued(t, count: queued) }
        removeTenantState(tenant)
        return true
    }
}
