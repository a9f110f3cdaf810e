import ClawpenWire

/// One row of `offboardings` (the supervisor's OffboardingBook keeps the decisions).
public struct OffboardingRecord: Sendable, Equatable {
    public var tenant: TenantName
    public var uid: Int
    public var state: String
    public var requestedAt: Double
    public var deadline: Double
    public var requestedBy: String
    public var deleteAudit: Bool
    public init(
        tenant: TenantName, uid: Int, state: String, requestedAt: Double, deadline: Double, requestedBy: String, deleteAudit: Bool
    ) {
        self.tenant = tenant; self.uid = uid; self.state = state; self.requestedAt = requestedAt; self.deadline = deadline
        self.requestedBy = requestedBy; self.deleteAudit = deleteAudit
    }
}

/// What a tenant has in the store (`tenant offboard --dry-run`).
public struct TenantStoreInventory: Sendable, Equatable {
    public var jobs = 0
    public var secrets: [String] = []
    public var keys = 0
    public var auditRows = 0
}

/// Offboarding, retention and export: the tenant-data verbs of the store.
extension Store {
    // MARK: Offboardings

    public func offboardings() throws(StoreError) -> [OffboardingRecord] {
        try db.rows(
            "SELECT tenant, uid, state, requested_at, deadline, requested_by, delete_audit FROM offboardings ORDER BY tenant", []
        ) { r throws(StoreError) in
            OffboardingRecord(
                tenant: try Self.tenantName(r.text(0)), uid: Int(r.int(1)), state: r.text(2), requestedAt: r.double(3),
                deadline: r.double(4), requestedBy: r.text(5), deleteAudit: r.int(6) != 0)
        }
    }

    /// Inserts or replaces the tenant's offboarding (fsynced: the deadline must survive a power loss).
    public func putOffboarding(_ o: OffboardingRecord, finishedAt: Double? = nil) throws(StoreError) {
        try setSynchronousFull()
        try db.run(
            """
            INSERT OR REPLACE INTO offboardings(tenant, uid, state, requested_at, deadline, requested_by, delete_audit, finished_at)
            VALUES(?,?,?,?,?,?,?,?)
            """,
            [
                .text(o.tenant.value), .int(Int64(o.uid)), .text(o.state), .double(o.requestedAt), .double(o.deadline),
                .text(o.requestedBy), .int(o.deleteAudit ? 1 : 0), .optional(finishedAt),
            ])
    }

    public func removeOffboarding(_ tenant: TenantName) throws(StoreError) {
        try setSynchronousFull()
        try db.run("DELETE FROM offboardings WHERE tenant=?", [.text(tenant.value)])
    }

    public func inventory(_ tenant: TenantName) throws(StoreError) -> TenantStoreInventory {
        var i = TenantStoreInventory()
        let t: [SQLValue] = [.text(tenant.value)]
        i.jobs = Int(try db.rows("SELECT count(*) FROM jobs WHERE tenant=?", t) { $0.int(0) }.first ?? 0)
        i.secrets = try db.rows("SELECT name FROM secrets WHERE tenant=? ORDER BY name", t) { $0.text(0) }
        i.keys = Int(try db.rows("SELECT count(*) FROM tenant_keys WHERE tenant=? AND state != 'destroyed'", t) { $0.int(0) }.first ?? 0)
        i.auditRows = Int(try db.rows("SELECT count(*) FROM audit WHERE tenant=?", t) { $0.int(0) }.first ?? 0)
        return i
    }

    public func removeSecrets(_ tenant: TenantName) throws(StoreError) -> Int {
        try setSynchronousFull()
        return try db.run("DELETE FROM secrets WHERE tenant=?", [.text(tenant.value)])
    }

    /// Deletes at most `limit` of the tenant's job records (any state); returns how many.
    public func removeJobs(_ tenant: TenantName, limit: Int) throws(StoreError) -> Int {
        try setSynchronous(full: false)
        try setSecureDelete(true)
        defer { try? setSecureDelete(false) }
        return try db.run(
            "DELETE FROM jobs WHERE rowid IN (SELECT rowid FROM jobs WHERE tenant=? LIMIT ?)", [.text(tenant.value), .int(Int64(limit))])
    }

    /// The tenant's last rows go (its keys, suspension, the tenant row itself) and its uid is
    /// retired, never given to another tenant: one fsynced transaction.
    public func retireTenant(_ tenant: TenantName, uid: Int, now: Double) throws(StoreError) {
        try setSynchronousFull()
        try setSecureDelete(true)
        defer { try? setSecureDelete(false) }
        try transaction { () throws(StoreError) in
            let t: [SQLValue] = [.text(tenant.value)]
            try db.run("INSERT OR IGNORE INTO retired_uids(uid, tenant, retired_at) VALUES(?,?,?)", [.int(Int64(uid)), .text(tenant.value), .double(now)])
            try db.run("DELETE FROM secrets WHERE tenant=?", t)
            try db.run("DELETE FROM jobs WHERE tenant=?", t)
            try db.run("DELETE FROM tenant_keys WHERE tenant=?", t)
            try db.run("DELETE FROM suspensions WHERE tenant=?", t)
            try db.run("DELETE FROM tenants WHERE name=?", t)
        }
    }

    /// `--delete-audit`: every audit row of the tenant goes (the offboarding writes its own
    /// record afterwards).
    public func removeAudit(_ tenant: TenantName) throws(StoreError) -> Int {
        try setSynchronousFull()
        return try db.run("DELETE FROM audit WHERE tenant=?", [.text(tenant.value)])
    }

    public func retiredUIDs() throws(StoreError) -> [Int] {
        try db.rows("SELECT uid FROM retired_uids ORDER BY uid") { Int($0.int(0)) }
    }

    // MARK: Retention

    /// Deletes at most `limit` finished job records of `tenant` that finished before `before`
    /// (wall-clock seconds); returns how many. One short transaction: the purge calls it in a
    /// loop with pauses (Retention.swift), never holding the write lock for long.
    public func purgeFinishedJobs(_ tenant: TenantName, before: Double, limit: Int) throws(StoreError) -> Int {
        try setSynchronous(full: false)
        // A purged record's ciphertext would still open with its tenant's key: zeroed.
        try setSecureDelete(true)
        return try db.run(
            """
            DELETE FROM jobs WHERE rowid IN (
                SELECT rowid FROM jobs WHERE tenant=? AND finished_at IS NOT NULL AND finished_at < ? LIMIT ?)
            """,
            [.text(tenant.value), .double(before), .int(Int64(limit))])
    }

    // MARK: Size of the records (job_records_max)

    /// What one job's record holds in bytes, as SQLite stores it (the sealed output, request,
    /// argv and environment; length() of a blob reads no overflow page).
    static let recordBytes =
        "IFNULL(length(stdout),0)+IFNULL(length(stderr),0)+IFNULL(length(stdin),0)+IFNULL(length(argv),0)+IFNULL(length(env),0)"

    /// Bytes of the tenant's finished job records.
    public func finishedRecordBytes(_ tenant: TenantName) throws(StoreError) -> Int64 {
        try db.rows(
            "SELECT IFNULL(SUM(\(Self.recordBytes)),0) FROM jobs WHERE tenant=? AND finished_at IS NOT NULL", [.text(tenant.value)]
        ) { $0.int(0) }.first ?? 0
    }

    /// Deletes the tenant's oldest finished records, at most `limit` of them, until `bytes` are
    /// gone (or no finished record is left). Returns what went.
    public func purgeOldestFinishedJobs(_ tenant: TenantName, bytes: Int64, limit: Int) throws(StoreError) -> (jobs: Int, bytes: Int64) {
        guard bytes > 0 else { return (0, 0) }
        try setSynchronous(full: false)
        try setSecureDelete(true)
        let oldest = try db.rows(
            "SELECT rowid, \(Self.recordBytes) FROM jobs WHERE tenant=? AND finished_at IS NOT NULL ORDER BY finished_at LIMIT ?",
            [.text(tenant.value), .int(Int64(limit))]
        ) { ($0.int(0), $0.int(1)) }
        var chosen: [Int64] = []
        var freed: Int64 = 0
        for (rowid, size) in oldest where freed < bytes {
            chosen.append(rowid)
            freed += size
        }
        guard !chosen.isEmpty else { return (0, 0) }
        let marks = Array(repeating: "?", count: chosen.count).joined(separator: ",")
        let n = try db.run("DELETE FROM jobs WHERE rowid IN (\(marks))", chosen.map { .int($0) })
        return (n, freed)
    }

    // MARK: Export

    /// The tenant's job records, oldest first, `limit` from `offset` (export pages through them).
    public func jobsForExport(_ tenant: TenantName, after: (Double, String)?, limit: Int) throws(StoreError) -> [JobRecord] {
        if let (at, id) = after {
            return try db.rows(
                "SELECT \(Self.jobColumns) FROM jobs WHERE tenant=? AND (created_at > ? OR (created_at = ? AND id > ?)) ORDER BY created_at, id LIMIT ?",
                [.text(tenant.value), .double(at), .double(at), .text(id), .int(Int64(limit))], decodeJobForListing)
        }
        return try db.rows(
            "SELECT \(Self.jobColumns) FROM jobs WHERE tenant=? ORDER BY created_at, id LIMIT ?", [.text(tenant.value), .int(Int64(limit))],
            decodeJobForListing)
    }
}
