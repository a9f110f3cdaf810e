import ClawpenProtocol
import ClawpenWire
import Glibc

/// Durable state: tenants, jobs, audit events, in one SQLite database (WAL) in the state dir.
///
/// The interface is narrow on purpose (a handful of verbs on records) so that a PostgreSQL store
/// can take its place later. Durability: an accepted job is committed with `synchronous=FULL`
/// (fsync of the WAL) before the caller hears of it, when `fsyncAccepts` is on; later state
/// changes use `NORMAL` (they survive a daemon crash; after a power loss a finished job may be
/// found `running` and run again, which at-least-once allows).
/// Not thread-safe: one owner (the supervisor's event loop) uses it; `@unchecked Sendable` lets
/// that owner hand it to closures it schedules on the same loop.
public final class Store: @unchecked Sendable {
    let db: SQLiteConnection
    public let path: String
    public let fsyncAccepts: Bool
    private var synchronousFull = false
    /// A test hook: every write transaction holds its lock this long before COMMIT, as a disk
    /// whose fsync is slow would (`CLAWPEN_TEST_STORE_COMMIT_DELAY_MS`, the store writer only).
    public var commitDelayMicros: UInt32 = 0

    /// The schema this build writes: the last of `Store.migrations` (Migrations.swift).
    public static let schemaVersion = Store.latestSchemaVersion

    /// Seals and opens the job records' private fields with the tenants' data keys; nil: they
    /// are written in clear (tools and tests that do not hold the keys).
    public var cipher: (any JobCipher)?

    public init(path: String, fsyncAccepts: Bool = true) throws(StoreError) {
        self.path = path
        self.fsyncAccepts = fsyncAccepts
        db = try SQLiteConnection(path: path)
        try db.exec("PRAGMA journal_mode=WAL")
        try db.exec("PRAGMA synchronous=NORMAL")
        try db.exec("PRAGMA foreign_keys=ON")
        try migrate()
    }

    static func addColumnIfMissing(_ db: SQLiteConnection, table: String, column: String, type: String) throws(StoreError) {
        let columns = try db.rows("PRAGMA table_info(\(table))") { $0.text(1) }
        guard !columns.contains(column) else { return }
        try db.exec("ALTER TABLE \(table) ADD COLUMN \(column) \(type)")
    }

    func setSynchronousFull() throws(StoreError) { try setSynchronous(full: true) }

    func setSynchronous(full: Bool) throws(StoreError) {
        guard full != synchronousFull else { return }
        try db.run(full ? "PRAGMA synchronous=FULL" : "PRAGMA synchronous=NORMAL")
        synchronousFull = full
    }

    // MARK: Tenants

    public func tenants() throws(StoreError) -> [TenantRecord] {
        try db.rows("SELECT name, tier, uid, created_at FROM tenants ORDER BY name", [], Self.decodeTenant)
    }

    public func tenant(named name: TenantName) throws(StoreError) -> TenantRecord? {
        try db.rows("SELECT name, tier, uid, created_at FROM tenants WHERE name=?", [.text(name.value)], Self.decodeTenant).first
    }

    private static func decodeTenant(_ r: SQLiteConnection.Row) throws(StoreError) -> TenantRecord {
        TenantRecord(name: try tenantName(r.text(0)), tier: r.text(1), uid: Int(r.int(2)), createdAt: r.double(3))
    }

    /// A stored name goes through the one validator again: a row nobody wrote through clawpen
    /// cannot reach a path or a cgroup name.
    static func tenantName(_ raw: String) throws(StoreError) -> TenantName {
        do { return try TenantName(validating: raw) } catch { throw .corrupt("tenant name '\(raw.prefix(80))': \(error)") }
    }

    public enum CreateTenantOutcome: Equatable, Sendable { case created(TenantRecord), duplicate, uidRangeExhausted }

    /// Creates a tenant with the lowest free uid of the range (never one a living tenant holds,
    /// nor an offboarded tenant's (`retired_uids`: files it left anywhere stay nobody else's),
    /// nor one `isUsable` refuses: the supervisor skips uids the host uses).
    public func createTenant(
        name: TenantName, tier: String, uidRange: ClosedRange<Int>, now: Double,
        isUsable: (Int) -> Bool = { _ in true }
    ) throws(StoreError) -> CreateTenantOutcome {
        if try tenant(named: name) != nil { return .duplicate }
        let used = try db.rows(
            "SELECT uid FROM tenants WHERE uid BETWEEN ?1 AND ?2 UNION SELECT uid FROM retired_uids WHERE uid BETWEEN ?1 AND ?2",
            [.int(Int64(uidRange.lowerBound)), .int(Int64(uidRange.upperBound))]
        ) { Int($0.int(0)) }
        let taken = Set(used)
        var candidate = uidRange.lowerBound
        while candidate <= uidRange.upperBound && (taken.contains(candidate) || !isUsable(candidate)) { candidate += 1 }
        guard candidate <= uidRange.upperBound else { return .uidRangeExhausted }
        try setSynchronous(full: true)
        try db.run(
            "INSERT INTO tenants(name, tier, uid, created_at) VALUES(?,?,?,?)",
            [.text(name.value), .text(tier), .int(Int64(candidate)), .double(now)])
        return .created(TenantRecord(name: name, tier: tier, uid: candidate, createdAt: now))
    }

    /// Undoes a createTenant whose workspace could not be made.
    public func deleteTenant(name: TenantName) throws(StoreError) {
        try db.run("DELETE FROM tenants WHERE name=?", [.text(name.value)])
    }

    // MARK: Jobs

    static let jobColumns = """
        id, tenant, state, argv, env, cwd, stdin, timeout_s, output_cap, idempotency_key, attempt,
        created_at, started_at, finished_at, exit_code, signal, stdout, stderr, stdout_truncated,
        stderr_truncated, run_ms, cpu_ms, max_rss_kb, error_code, error_message, traceparent, seal_key, result_key,
        parent_id, root_id, depth
        """

    /// A row as a record, its sealed fields opened (Store+Sealing.swift). A field that does not
    /// open throws `.unreadable` for this record.
    func decodeJob(_ r: SQLiteConnection.Row) throws(StoreError) -> JobRecord {
        let id = r.text(0)
        guard let state = JobState(rawValue: r.text(2)) else { throw .corrupt("job \(id) has state '\(r.text(2))'") }
        let tenant = try Self.tenantName(r.text(1))
        let sealKey = r.optionalInt(26).map { Int($0) }
        let resultKey = r.optionalInt(27).map { Int($0) }
        let finished = state.isFinal
        var result: JobResult?
        if finished {
            var error: ProtocolError?
            if let code = r.optionalText(23) {
                error = ProtocolError(ErrorCode(rawValue: code) ?? .internal, r.optionalText(24) ?? code)
            }
            result = JobResult(
                exitCode: r.optionalInt(14).map { Int32(truncatingIfNeeded: $0) },
                signal: r.optionalInt(15).map { Int32(truncatingIfNeeded: $0) },
                stdout: try openField(r.blob(16), .stdout, tenant, id, resultKey),
                stderr: try openField(r.blob(17), .stderr, tenant, id, resultKey),
                stdoutTruncated: r.int(18) != 0, stderrTruncated: r.int(19) != 0,
                runMs: r.optionalDouble(20), cpuMs: r.optionalDouble(21), maxRSSKiB: r.optionalInt(22), error: error)
        }
        let stdin = r.isNull(6) ? [] : try openField(r.blob(6), .stdin, tenant, id, sealKey)
        var job = JobRecord(
            id: id, tenant: tenant, state: state, argv: Self.splitNUL(try openField(r.blob(3), .argv, tenant, id, sealKey)),
            env: Self.splitNUL(try openField(r.blob(4), .env, tenant, id, sealKey)).map { kv in
                let parts = kv.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
                return SubmitRequest.EnvVar(name: String(parts[0]), value: parts.count > 1 ? String(parts[1]) : "")
            },
            cwd: r.text(5), stdin: stdin, timeoutSeconds: r.double(7), outputCap: Int(r.int(8)),
            idempotencyKey: r.optionalText(9), attempt: Int(r.int(10)), createdAt: r.double(11),
            startedAt: r.optionalDouble(12), finishedAt: r.optionalDouble(13), result: result)
        job.trace = r.optionalText(25).flatMap(TraceContext.init(parsing:))
        job.parentID = r.optionalText(28)
        job.rootID = r.optionalText(29)
        job.depth = Int(r.optionalInt(30) ?? 0)
        return job
    }

    /// For listings: a record whose fields do not open is listed with its clear metadata and the
    /// reason in its error, instead of failing the whole list.
    func decodeJobForListing(_ r: SQLiteConnection.Row) throws(StoreError) -> JobRecord {
        do { return try decodeJob(r) } catch {
            guard case .unreadable(_, let message) = error, let state = JobState(rawValue: r.text(2)) else { throw error }
            var job = JobRecord(
                id: r.text(0), tenant: try Self.tenantName(r.text(1)), state: state, argv: [], env: [], cwd: r.text(5), stdin: [],
                timeoutSeconds: r.double(7), outputCap: Int(r.int(8)), idempotencyKey: r.optionalText(9), attempt: Int(r.int(10)),
                createdAt: r.double(11), startedAt: r.optionalDouble(12), finishedAt: r.optionalDouble(13))
            job.result = JobResult(error: ProtocolError(.internal, "the job's record cannot be decrypted: \(message)"))
            return job
        }
    }

    /// argv and env are stored NUL-separated: NUL cannot occur inside a C string.
    static func joinNUL(_ items: [String]) -> [UInt8] {
        var out: [UInt8] = []
        for (i, s) in items.enumerated() {
            if i > 0 { out.append(0) }
            out.append(contentsOf: s.utf8)
        }
        return out
    }

    static func splitNUL(_ bytes: [UInt8]) -> [String] {
        guard !bytes.isEmpty else { return [] }
        return bytes.split(separator: 0, omittingEmptySubsequences: false).map { String(decoding: $0, as: UTF8.self) }
    }

    /// Commits newly accepted jobs in one transaction (fsynced when `fsyncAccepts`): the
    /// supervisor batches every accept of one event-loop tick (group commit). Idempotency keys are
    /// checked by the caller first (`job(tenant:idempotencyKey:)`); a duplicate here is a
    /// constraint error and nothing of the batch is kept.
    public func insertJobs(_ jobs: [JobRecord]) throws(StoreError) {
        try writeAccepts(try sealAccepts(jobs))
    }

    /// The rows of `insertJobs`, sealed (on the connection that holds the cipher; Store+Writes.swift).
    public func sealAccepts(_ jobs: [JobRecord]) throws(StoreError) -> SealedRows {
        // Keys first: a tenant's first key is made (and committed) outside the write transaction.
        let keys = try activeKeys(jobs.map(\.tenant))
        var rows: [[SQLValue]] = []
        rows.reserveCapacity(jobs.count)
        for job in jobs {
            let key = keys[job.tenant]
            rows.append([
                .text(job.id), .text(job.tenant.value), .text(job.state.rawValue),
                .blob(try sealField(Self.joinNUL(job.argv), .argv, job.tenant, job.id, key)),
                .blob(try sealField(Self.joinNUL(job.env.map { "\($0.name)=\($0.value)" }), .env, job.tenant, job.id, key)),
                .text(job.cwd), job.stdin.isEmpty ? .null : .blob(try sealField(job.stdin, .stdin, job.tenant, job.id, key)),
                .double(job.timeoutSeconds), .int(Int64(job.outputCap)),
                .optional(job.idempotencyKey), .int(Int64(job.attempt)), .double(job.createdAt),
                .optional(job.trace?.traceparent), .optional(key.map { Int64($0) }),
                .optional(job.parentID), .optional(job.parentID == nil ? nil : job.rootID), .int(Int64(job.depth)),
            ])
        }
        return SealedRows(rows)
    }

    /// Commits sealed accepts in one transaction, fsynced when `fsyncAccepts`.
    public func writeAccepts(_ sealed: SealedRows) throws(StoreError) {
        guard !sealed.rows.isEmpty else { return }
        try setSynchronous(full: fsyncAccepts)
        try transaction { () throws(StoreError) in
            for row in sealed.rows {
                try db.run(
                    """
                    INSERT INTO jobs(id, tenant, state, argv, env, cwd, stdin, timeout_s, output_cap, idempotency_key, attempt, created_at, traceparent, seal_key,
                        parent_id, root_id, depth)
                    VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)
                    """, row)
            }
        }
    }

    func transaction(_ body: () throws(StoreError) -> Void) throws(StoreError) {
        try db.run("BEGIN IMMEDIATE")
        do {
            try body()
            // The slow-store test hook (Store+Writes.swift): the lock is held as a slow fsync would.
            if commitDelayMicros > 0 { usleep(commitDelayMicros) }
            try db.run("COMMIT")
        } catch {
            _ = try? db.run("ROLLBACK")
            throw error
        }
    }

    public func job(id: String) throws(StoreError) -> JobRecord? {
        try db.rows("SELECT \(Self.jobColumns) FROM jobs WHERE id=?", [.text(id)], decodeJob).first
    }

    /// Jobs newest first (`job.list`): of the given tenants (nil: all), in the given stored
    /// states (nil: any), at most `limit`, none of the ids in `excluding`.
    public func jobs(tenants: [TenantName]?, states: [JobState]?, limit: Int, excluding: Set<String> = []) throws(StoreError) -> [JobRecord] {
        var clauses: [String] = []
        var bind: [SQLValue] = []
        if let tenants {
            guard !tenants.isEmpty else { return [] }
            clauses.append("tenant IN (" + tenants.map { _ in "?" }.joined(separator: ",") + ")")
            bind += tenants.map { .text($0.value) }
        }
        if let states {
            guard !states.isEmpty else { return [] }
            clauses.append("state IN (" + states.map { _ in "?" }.joined(separator: ",") + ")")
            bind += states.map { .text($0.rawValue) }
        }
        let filter = clauses.isEmpty ? "" : " WHERE " + clauses.joined(separator: " AND ")
        bind.append(.int(Int64(limit + excluding.count)))
        let rows = try db.rows("SELECT \(Self.jobColumns) FROM jobs\(filter) ORDER BY created_at DESC, id DESC LIMIT ?", bind, decodeJobForListing)
        return Array(rows.lazy.filter { !excluding.contains($0.id) }.prefix(limit))
    }

    /// Every job of the tree whose root is `rootID`, the root first, then in acceptance order
    /// (`job.tree`); at most `limit`.
    public func jobTree(rootID: String, limit: Int = 10_000) throws(StoreError) -> [JobRecord] {
        try db.rows(
            "SELECT \(Self.jobColumns) FROM jobs WHERE id=? OR root_id=? ORDER BY depth, created_at, id LIMIT ?",
            [.text(rootID), .text(rootID), .int(Int64(limit))], decodeJobForListing)
    }

    public func job(tenant: TenantName, idempotencyKey: String) throws(StoreError) -> JobRecord? {
        try db.rows(
            "SELECT \(Self.jobColumns) FROM jobs WHERE tenant=? AND idempotency_key=?",
            [.text(tenant.value), .text(idempotencyKey)], decodeJob
        ).first
    }

    /// A running job goes back to the queue (its worker died): attempt + 1.
    public func requeue(id: String) throws(StoreError) { try requeue(ids: [id]) }

    public func requeue(ids: [String]) throws(StoreError) {
        guard !ids.isEmpty else { return }
        try setSynchronous(full: false)
        try transaction { () throws(StoreError) in
            for id in ids { try db.run("UPDATE jobs SET attempt=attempt+1 WHERE id=?", [.text(id)]) }
        }
    }

    /// A job's final state and result, as `finishJobs` records it.
    public struct Finished: Sendable {
        public var id: String
        /// Whose data key seals the output.
        public var tenant: TenantName
        public var state: JobState
        public var result: JobResult
        public var startedAt: Double?
        public var finishedAt: Double
        public init(id: String, tenant: TenantName, state: JobState, result: JobResult, startedAt: Double?, finishedAt: Double) {
            self.id = id; self.tenant = tenant; self.state = state; self.result = result; self.startedAt = startedAt; self.finishedAt = finishedAt
        }
    }

    /// Records results in one transaction (not fsynced: after a power loss a finished job may be
    /// found unfinished and run again, which at-least-once allows). A job is `queued` in the store
    /// until it finishes; `running` lives in the supervisor's memory, and a restart re-queues both
    /// alike.
    public func finishJobs(_ items: [Finished]) throws(StoreError) {
        try writeFinishes(try sealFinishes(items))
    }

    /// The rows of `finishJobs`, sealed.
    public func sealFinishes(_ items: [Finished]) throws(StoreError) -> SealedRows {
        let keys = try activeKeys(items.map(\.tenant))
        var rows: [[SQLValue]] = []
        rows.reserveCapacity(items.count)
        for f in items {
            let r = f.result
            let key = keys[f.tenant]
            rows.append([
                .text(f.state.rawValue), .optional(f.startedAt), .double(f.finishedAt), .optional(r.exitCode.map { Int64($0) }),
                .optional(r.signal.map { Int64($0) }), .blob(try sealField(r.stdout, .stdout, f.tenant, f.id, key)),
                .blob(try sealField(r.stderr, .stderr, f.tenant, f.id, key)),
                .int(r.stdoutTruncated ? 1 : 0), .int(r.stderrTruncated ? 1 : 0),
                .optional(r.runMs), .optional(r.cpuMs), .optional(r.maxRSSKiB),
                .optional(r.error?.code.rawValue), .optional(r.error?.message), .optional(key.map { Int64($0) }), .text(f.id),
            ])
        }
        return SealedRows(rows)
    }

    /// Commits sealed results in one transaction (not fsynced).
    public func writeFinishes(_ sealed: SealedRows) throws(StoreError) {
        guard !sealed.rows.isEmpty else { return }
        try setSynchronous(full: false)
        try transaction { () throws(StoreError) in
            for row in sealed.rows {
                try db.run(
                    """
                    UPDATE jobs SET state=?, started_at=?, finished_at=?, exit_code=?, signal=?, stdout=?, stderr=?,
                        stdout_truncated=?, stderr_truncated=?, run_ms=?, cpu_ms=?, max_rss_kb=?, error_code=?, error_message=?,
                        result_key=?
                    WHERE id=?
                    """, row)
            }
        }
    }

    /// At start-up: every job a previous run left `queued` or `running` is queued again with
    /// attempt + 1 (at-least-once), and returned in acceptance order.
    public func recoverUnfinishedJobs() throws(StoreError) -> [JobRecord] {
        try setSynchronous(full: true)
        try db.exec("BEGIN IMMEDIATE")
        do {
            try db.run("UPDATE jobs SET state='queued', started_at=NULL, attempt=attempt+1 WHERE state IN ('queued','running')")
            try db.exec("COMMIT")
        } catch {
            try? db.exec("ROLLBACK")
            throw error
        }
        try setSynchronous(full: false)
        // A job whose record does not open cannot run again: it fails, alone, with the reason.
        let rows = try db.rows("SELECT \(Self.jobColumns) FROM jobs WHERE state='queued' ORDER BY created_at, id", []) {
            r throws(StoreError) -> Result<JobRecord, StoreError> in
            do throws(StoreError) { return .success(try decodeJob(r)) } catch {
                guard case .unreadable = error else { throw error }
                return .failure(error)
            }
        }
        var out: [JobRecord] = []
        for row in rows {
            switch row {
            case .success(let job): out.append(job)
            case .failure(let e):
                guard case .unreadable(let id, _) = e else { continue }
                try db.run(
                    "UPDATE jobs SET state='failed', finished_at=?, error_code='internal', error_message=? WHERE id=?",
                    [.double(Double(time(nil))), .text("not run again: \(e)"), .text(id)])
            }
        }
        return out
    }

    /// Job counts per tenant and state (for `status`).
    public func jobCounts() throws(StoreError) -> [TenantName: [JobState: Int]] {
        var out: [TenantName: [JobState: Int]] = [:]
        for (tenant, state, n) in try db.rows(
            "SELECT tenant, state, count(*) FROM jobs GROUP BY tenant, state", [],
            { r in
                (r.text(0), r.text(1), Int(r.int(2)))
            })
        {
            if let s = JobState(rawValue: state) { out[try Self.tenantName(tenant), default: [:]][s] = n }
        }
        return out
    }

    // MARK: Suspensions

    /// Tenants an operator suspended (`clawpen tenant suspend`), and by whom: a suspension
    /// outlives a restart of the daemon.
    public func suspensions() throws(StoreError) -> [(tenant: TenantName, by: String)] {
        try db.rows("SELECT tenant, suspended_by FROM suspensions ORDER BY tenant", []) { r throws(StoreError) in
            (tenant: try Self.tenantName(r.text(0)), by: r.text(1))
        }
    }

    public func setSuspension(tenant: TenantName, by: String, at: Double) throws(StoreError) {
        try setSynchronous(full: false)
        try db.run("INSERT OR REPLACE INTO suspensions(tenant, suspended_by, at) VALUES(?,?,?)", [.text(tenant.value), .text(by), .double(at)])
    }

    public func clearSuspension(tenant: TenantName) throws(StoreError) {
        try setSynchronous(full: false)
        try db.run("DELETE FROM suspensions WHERE tenant=?", [.text(tenant.value)])
    }

    // MARK: Audit

    public func audit(tenant: String?, callerUID: Int?, action: String, rule: String?, detail: String?, at: Double) throws(StoreError) {
        try insertAudit([AuditEvent(at: at, tenant: tenant, callerUID: callerUID, action: action, rule: rule, detail: detail)])
    }

    /// Records audit events in one transaction (not fsynced: the supervisor batches the events
    /// of one event-loop tick, as it does results).
    public func insertAudit(_ events: [AuditEvent]) throws(StoreError) {
        try writeAudit(Self.auditRows(events))
    }

    /// Audit rows hold nothing sealed: made anywhere.
    public static func auditRows(_ events: [AuditEvent]) -> SealedRows {
        SealedRows(
            events.map { e in
                [
                    .double(e.at), .optional(e.tenant), .optional(e.callerUID.map { Int64($0) }), .text(e.action),
                    .optional(e.rule), .optional(e.detail), .optional(e.traceID),
                ]
            })
    }

    public func writeAudit(_ rows: SealedRows) throws(StoreError) {
        guard !rows.rows.isEmpty else { return }
        try setSynchronous(full: false)
        try transaction { () throws(StoreError) in
            for row in rows.rows {
                try db.run("INSERT INTO audit(at, tenant, caller_uid, action, rule, detail, trace_id) VALUES(?,?,?,?,?,?,?)", row)
            }
        }
    }

    /// Audit events, oldest first: of one tenant (or all), from `since` (wall-clock seconds) on,
    /// at most the newest `limit`.
    public func auditEvents(tenant: String?, since: Double?, limit: Int) throws(StoreError) -> [AuditEvent] {
        var sql = "SELECT seq, at, tenant, caller_uid, action, rule, detail, trace_id FROM audit WHERE 1=1"
        var bind: [SQLValue] = []
        if let tenant { sql += " AND tenant=?"; bind.append(.text(tenant)) }
        if let since { sql += " AND at>=?"; bind.append(.double(since)) }
        sql += " ORDER BY seq DESC LIMIT ?"
        bind.append(.int(Int64(max(0, limit))))
        let rows = try db.rows(sql, bind) { r in
            AuditEvent(
                seq: r.int(0), at: r.double(1), tenant: r.optionalText(2), callerUID: r.optionalInt(3).map { Int($0) },
                action: r.text(4), rule: r.optionalText(5), detail: r.optionalText(6), traceID: r.optionalText(7))
        }
        return rows.reversed()
    }

    /// Merges the WAL back into the database (at shutdown).
    public func checkpoint() {
        try? db.exec("PRAGMA wal_checkpoint(TRUNCATE)")
    }
}
