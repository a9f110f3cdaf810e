/// How many bytes of finished job records the store holds per tenant, against the tier's
/// `job_records_max` (the shell's RecordsBudget.swift purges; this decides when and how much).
///
/// Why: a tenant's finished jobs stay in the store for `job_retention_days`, and nothing
/// bounded their size: a free tenant running 600 jobs a minute, each printing its 1 MiB of
/// stdout and stderr, would write over a gigabyte a minute into the disk every tenant's store
/// shares, and once it is full every tenant's submits are refused. Past its limit a tenant's
/// oldest finished records go first, until `target` of the limit is left, so that a purge is
/// not run for every job that ends. Pure: what a pass measured is the shell's to report.
public struct RecordsLedger: Sendable {
    /// A purge leaves this share of the limit, so that the next one is not due at once.
    public static let target = 0.9

    private var bytes: [String: Int64] = [:]
    /// Added while a pass runs: its measure may not include them.
    private var addedDuringPass: [String: Int64] = [:]
    public private(set) var passRunning = false
    /// Tenants found over their limit, for the next pass.
    public private(set) var due: Set<String> = []

    public init() {}

    public func held(by tenant: String) -> Int64 { bytes[tenant] ?? 0 }

    /// A finished record of `size` bytes was committed. True: the tenant is now over `limit`
    /// and a pass is due.
    public mutating func finished(_ tenant: String, size: Int64, limit: Int64) -> Bool {
        bytes[tenant, default: 0] += size
        if passRunning { addedDuringPass[tenant, default: 0] += size }
        guard held(by: tenant) > limit else { return false }
        due.insert(tenant)
        return true
    }

    /// The bytes a pass should free for a tenant holding `total` under `limit`.
    public static func excess(total: Int64, limit: Int64) -> Int64 {
        total > limit ? total - Int64(Double(limit) * target) : 0
    }

    /// A pass begins: it measures (and purges) `tenants`, or every tenant at the first pass.
    public mutating func passStarted() -> Set<String> {
        passRunning = true
        addedDuringPass = [:]
        defer { due = [] }
        return due
    }

    /// What the pass found a tenant holding after its purge: that, and what finished meanwhile
    /// (counted twice if the pass saw it too: a purge a little early, never one missed).
    public mutating func measured(_ tenant: String, bytes total: Int64) {
        bytes[tenant] = total + (addedDuringPass[tenant] ?? 0)
    }

    /// The tenant's records were removed (offboarding): nothing is counted for the name, so a
    /// tenant created later under it starts at 0.
    public mutating func forget(_ tenant: String) {
        bytes[tenant] = nil
        addedDuringPass[tenant] = nil
        due.remove(tenant)
    }

    /// The pass ended. True: more became due while it ran.
    public mutating func passEnded() -> Bool {
        passRunning = false
        addedDuringPass = [:]
        return !due.isEmpty
    }
}
