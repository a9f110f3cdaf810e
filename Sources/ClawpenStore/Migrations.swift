/// The schema's history as numbered steps, applied in order at open (docs/tenant-data.md,
/// "Migrations"). The version a database is at lives in `meta.schema_version` (which every
/// release since the first reads, and refuses when it is not its own: an older clawpen never
/// writes into a newer schema) and, for tools, in `PRAGMA user_version`.
///
/// Opening runs every step above the database's version inside one transaction (SQLite's DDL is
/// transactional): a step that fails leaves the database as it was. A database newer than this
/// build is refused (`StoreError.newerSchema`; `clawpen serve` exits 78).
///
/// Rules for a new step: append it with the next number, never edit a released one; make it
/// idempotent where an earlier release added the same thing in place (see step 3).
extension Store {
    struct Migration: Sendable {
        let version: Int
        let summary: String
        let apply: @Sendable (SQLiteConnection) throws(StoreError) -> Void
    }

    static let migrations: [Migration] = [
        Migration(version: 1, summary: "tenants, jobs, audit, suspensions") { db throws(StoreError) in try db.exec(baseTables) },
        Migration(version: 2, summary: "tenant_keys and secrets") { db throws(StoreError) in try db.exec(secretTables) },
        Migration(version: 3, summary: "trace ids on jobs and audit rows") { db throws(StoreError) in
            // Releases at version 2 added these in place when they were missing: idempotent.
            try addColumnIfMissing(db, table: "jobs", column: "traceparent", type: "TEXT")
            try addColumnIfMissing(db, table: "audit", column: "trace_id", type: "TEXT")
        },
        Migration(version: 4, summary: "sealed job records, bring-your-own keys, offboarding, retired uids") { db throws(StoreError) in
            try db.exec(tenantDataTables)
        },
        Migration(version: 5, summary: "job trees: parent_id, root_id, depth") { db throws(StoreError) in
            // A job stored before has none of them: it is a root (root_id NULL reads as its own
            // id, depth 0).
            try addColumnIfMissing(db, table: "jobs", column: "parent_id", type: "TEXT")
            try addColumnIfMissing(db, table: "jobs", column: "root_id", type: "TEXT")
            try addColumnIfMissing(db, table: "jobs", column: "depth", type: "INTEGER NOT NULL DEFAULT 0")
            try db.exec("CREATE INDEX IF NOT EXISTS jobs_root ON jobs(root_id) WHERE root_id IS NOT NULL")
        },
    ]

    static let latestSchemaVersion = 5
    /// The last step that is idempotent and re-run below version 4 (see `migrate`).
    static let idempotentHistory = 3

    /// The steps' numbers, in order (a test checks they run 1...latest without a gap).
    public static var migrationVersions: [Int] { migrations.map(\.version) }

    /// The version the database is at: 0 when it is new (no meta table yet).
    func storedSchemaVersion() throws(StoreError) -> Int {
        let hasMeta = try db.rows("SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'") { $0.int(0) }
        guard !hasMeta.isEmpty else { return 0 }
        guard let raw = try db.rows("SELECT value FROM meta WHERE key='schema_version'", [], { $0.text(0) }).first else { return 0 }
        guard let v = Int(raw), v >= 0 else { throw .corrupt("meta.schema_version is '\(raw.prefix(40))'") }
        return v
    }

    func migrate() throws(StoreError) {
        let found = try storedSchemaVersion()
        let latest = Self.latestSchemaVersion
        if found > latest { throw .newerSchema(path: path, found: found, known: latest) }
        guard found < latest else { return }
        try db.exec("BEGIN IMMEDIATE")
        do {
            // Steps 1-3 are the history before numbered migrations: those releases ran them,
            // idempotent, at every open, so a database below 4 may lack any of them (a
            // version-1 file of only `meta`, say): they run again, whatever it says.
            for step in Self.migrations where step.version > found || step.version <= Self.idempotentHistory { try step.apply(db) }
            try db.run("INSERT OR REPLACE INTO meta(key, value) VALUES('schema_version', ?)", [.text(String(latest))])
            try db.exec("PRAGMA user_version=\(latest)")
            try db.exec("COMMIT")
        } catch {
            try? db.exec("ROLLBACK")
            throw error
        }
    }

    /// Version 1 (the first release), exactly.
    static let baseTables = """
        CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE IF NOT EXISTS tenants(
            name TEXT PRIMARY KEY,
            tier TEXT NOT NULL,
            uid INTEGER NOT NULL UNIQUE,
            created_at REAL NOT NULL);
        CREATE TABLE IF NOT EXISTS jobs(
            id TEXT PRIMARY KEY,
            tenant TEXT NOT NULL REFERENCES tenants(name),
            state TEXT NOT NULL,
            argv BLOB NOT NULL,
            env BLOB NOT NULL,
            cwd TEXT NOT NULL,
            stdin BLOB,
            timeout_s REAL NOT NULL,
            output_cap INTEGER NOT NULL,
            idempotency_key TEXT,
            attempt INTEGER NOT NULL DEFAULT 1,
            created_at REAL NOT NULL,
            started_at REAL,
            finished_at REAL,
            exit_code INTEGER,
            signal INTEGER,
            stdout BLOB,
            stderr BLOB,
            stdout_truncated INTEGER NOT NULL DEFAULT 0,
            stderr_truncated INTEGER NOT NULL DEFAULT 0,
            run_ms REAL,
            cpu_ms REAL,
            max_rss_kb INTEGER,
            error_code TEXT,
            error_message TEXT);
        CREATE UNIQUE INDEX IF NOT EXISTS jobs_idempotency ON jobs(tenant, idempotency_key) WHERE idempotency_key IS NOT NULL;
        CREATE INDEX IF NOT EXISTS jobs_tenant_state ON jobs(tenant, state);
        CREATE TABLE IF NOT EXISTS audit(
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            at REAL NOT NULL,
            tenant TEXT,
            caller_uid INTEGER,
            action TEXT NOT NULL,
            rule TEXT,
            detail TEXT);
        CREATE TABLE IF NOT EXISTS suspensions(
            tenant TEXT PRIMARY KEY REFERENCES tenants(name),
            suspended_by TEXT NOT NULL,
            at REAL NOT NULL);
        """

    /// Version 4. `jobs.seal_key` / `result_key`: the tenant's data key version that sealed the
    /// request fields (argv, env, stdin) and the output (stdout, stderr); NULL: written in clear
    /// by a release before this one, sealed by the supervisor at its next start.
    /// `tenant_keys.key_file`: a bring-your-own key (`tenant create --key-file`) wraps that
    /// tenant's data key instead of the master key; `master_key_id` then names that key.
    /// `offboardings`: a tenant being offboarded and its deadline (the timer survives restarts).
    /// `retired_uids`: uids of offboarded tenants, never given to a new tenant.
    static let tenantDataTables = """
        ALTER TABLE jobs ADD COLUMN seal_key INTEGER;
        ALTER TABLE jobs ADD COLUMN result_key INTEGER;
        CREATE INDEX IF NOT EXISTS jobs_tenant_finished ON jobs(tenant, finished_at) WHERE finished_at IS NOT NULL;
        ALTER TABLE tenant_keys ADD COLUMN key_file TEXT;
        CREATE TABLE IF NOT EXISTS offboardings(
            tenant TEXT PRIMARY KEY,
            uid INTEGER NOT NULL,
            state TEXT NOT NULL CHECK(state IN ('grace', 'shredding', 'done')),
            requested_at REAL NOT NULL,
            deadline REAL NOT NULL,
            requested_by TEXT NOT NULL,
            delete_audit INTEGER NOT NULL DEFAULT 0,
            finished_at REAL);
        CREATE TABLE IF NOT EXISTS retired_uids(
            uid INTEGER PRIMARY KEY,
            tenant TEXT NOT NULL,
            retired_at REAL NOT NULL);
        """
}
