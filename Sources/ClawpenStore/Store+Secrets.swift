import ClawpenWire

/// The tenants' data keys (wrapped by the master key) and secrets (sealed by a data key). The
/// store holds ciphertext only: wrapping and sealing are the supervisor's (ClawpenSecrets), so
/// a copy of the database without the master key opens nothing.
///
/// `tenant_keys` is shaped for more than secrets: a later release seals job records with the
/// same keys. A tenant has one `active` version that seals; `retired` versions still open what
/// they sealed (rotation re-seals lazily); `destroyed` ones have lost their wrapped key, so what
/// they sealed is gone for good (offboarding).
extension Store {
    static let secretTables = """
        CREATE TABLE IF NOT EXISTS tenant_keys(
            tenant TEXT NOT NULL REFERENCES tenants(name),
            version INTEGER NOT NULL,
            state TEXT NOT NULL CHECK(state IN ('active', 'retired', 'destroyed')),
            master_key_id TEXT NOT NULL,
            wrapped BLOB,
            created_at REAL NOT NULL,
            destroyed_at REAL,
            PRIMARY KEY(tenant, version));
        CREATE UNIQUE INDEX IF NOT EXISTS tenant_keys_active ON tenant_keys(tenant) WHERE state = 'active';
        CREATE TABLE IF NOT EXISTS secrets(
            tenant TEXT NOT NULL REFERENCES tenants(name),
            name TEXT NOT NULL,
            version INTEGER NOT NULL,
            key_version INTEGER NOT NULL,
            sealed BLOB NOT NULL,
            placeholder TEXT NOT NULL,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            PRIMARY KEY(tenant, name),
            FOREIGN KEY(tenant, key_version) REFERENCES tenant_keys(tenant, version));
        """

    // MARK: Data keys

    public func activeTenantKey(_ tenant: TenantName) throws(StoreError) -> TenantKeyRecord? {
        try db.rows(
            "SELECT \(Self.keyColumns) FROM tenant_keys WHERE tenant=? AND state='active'",
            [.text(tenant.value)], Self.decodeKey
        ).first
    }

    public func tenantKey(_ tenant: TenantName, version: Int) throws(StoreError) -> TenantKeyRecord? {
        try db.rows(
            "SELECT \(Self.keyColumns) FROM tenant_keys WHERE tenant=? AND version=?",
            [.text(tenant.value), .int(Int64(version))], Self.decodeKey
        ).first
    }

    static let keyColumns = "tenant, version, state, master_key_id, wrapped, created_at, key_file"

    /// Every key row that still holds its wrapped key (for rotation and the start-up check).
    public func liveTenantKeys() throws(StoreError) -> [TenantKeyRecord] {
        try db.rows("SELECT \(Self.keyColumns) FROM tenant_keys WHERE state != 'destroyed' ORDER BY tenant, version", [], Self.decodeKey)
    }

    /// Replaces the wrapped form of key rows (a master key rotation), all in one fsynced
    /// transaction: either every row is wrapped by the new key or none is.
    public func rewrapTenantKeys(_ rows: [(tenant: TenantName, version: Int, masterKeyID: String, wrapped: [UInt8])]) throws(StoreError) {
        try setSynchronousFull()
        try db.exec("BEGIN IMMEDIATE")
        do {
            for r in rows {
                try db.run(
                    "UPDATE tenant_keys SET master_key_id=?, wrapped=? WHERE tenant=? AND version=? AND state != 'destroyed'",
                    [.text(r.masterKeyID), .blob(r.wrapped), .text(r.tenant.value), .int(Int64(r.version))])
            }
            try db.exec("COMMIT")
        } catch {
            try? db.exec("ROLLBACK")
            throw error
        }
    }

    /// Crypto-shredding: erases the wrapped form of every key of the tenant (fsynced). What they
    /// sealed (job records, secrets) can no longer be opened by anyone, whatever copy of the
    /// database they hold, once the WAL is checkpointed (done here) and `secure_delete` zeroed
    /// the old pages.
    public func destroyTenantKeys(_ tenant: TenantName, now: Double) throws(StoreError) {
        try setSynchronousFull()
        try setSecureDelete(true)
        defer { try? setSecureDelete(false) }
        try db.run(
            "UPDATE tenant_keys SET state='destroyed', wrapped=NULL, destroyed_at=? WHERE tenant=? AND state != 'destroyed'",
            [.double(now), .text(tenant.value)])
        try db.exec("PRAGMA wal_checkpoint(TRUNCATE)")
    }

    /// Adds `version` as the tenant's active key; the previous active one becomes `retired`.
    /// `keyFile`: the tenant's own key wraps it (bring your own key), `masterKeyID` names that key.
    public func addTenantKey(
        _ tenant: TenantName, version: Int, masterKeyID: String, wrapped: [UInt8], now: Double, keyFile: String? = nil
    ) throws(StoreError) {
        try setSynchronousFull()
        try db.exec("BEGIN IMMEDIATE")
        do {
            try db.run("UPDATE tenant_keys SET state='retired' WHERE tenant=? AND state='active'", [.text(tenant.value)])
            try db.run(
                "INSERT INTO tenant_keys(tenant, version, state, master_key_id, wrapped, created_at, key_file) VALUES(?,?,'active',?,?,?,?)",
                [.text(tenant.value), .int(Int64(version)), .text(masterKeyID), .blob(wrapped), .double(now), .optional(keyFile)])
            try db.exec("COMMIT")
        } catch {
            try? db.exec("ROLLBACK")
            throw error
        }
    }

    private static func decodeKey(_ r: SQLiteConnection.Row) throws(StoreError) -> TenantKeyRecord {
        TenantKeyRecord(
            tenant: try tenantName(r.text(0)), version: Int(r.int(1)), state: r.text(2), masterKeyID: r.text(3),
            wrapped: r.isNull(4) ? nil : r.blob(4), createdAt: r.double(5), keyFile: r.optionalText(6))
    }

    // MARK: Secrets

    public func secrets(_ tenant: TenantName) throws(StoreError) -> [SecretRecord] {
        try db.rows(
            "SELECT tenant, name, version, key_version, sealed, placeholder, created_at, updated_at FROM secrets WHERE tenant=? ORDER BY name",
            [.text(tenant.value)], Self.decodeSecret)
    }

    public func secret(_ tenant: TenantName, name: String) throws(StoreError) -> SecretRecord? {
        try db.rows(
            "SELECT tenant, name, version, key_version, sealed, placeholder, created_at, updated_at FROM secrets WHERE tenant=? AND name=?",
            [.text(tenant.value), .text(name)], Self.decodeSecret
        ).first
    }

    /// Inserts or replaces a secret (the caller chose `version`, one above the stored one, and
    /// sealed the value with it: the version is part of the ciphertext's associated data).
    /// Committed with fsync: a secret the operator was told is stored survives a power loss.
    public func putSecret(_ s: SecretRecord) throws(StoreError) {
        try setSynchronousFull()
        try db.run(
            """
            INSERT INTO secrets(tenant, name, version, key_version, sealed, placeholder, created_at, updated_at) VALUES(?,?,?,?,?,?,?,?)
            ON CONFLICT(tenant, name) DO UPDATE SET version=excluded.version, key_version=excluded.key_version,
                sealed=excluded.sealed, placeholder=excluded.placeholder, updated_at=excluded.updated_at
            """,
            [
                .text(s.tenant.value), .text(s.name), .int(Int64(s.version)), .int(Int64(s.keyVersion)), .blob(s.sealed),
                .text(s.placeholder), .double(s.createdAt), .double(s.updatedAt),
            ])
    }

    /// Removes a secret; false when the tenant had none of that name.
    public func removeSecret(_ tenant: TenantName, name: String) throws(StoreError) -> Bool {
        try setSynchronousFull()
        return try db.run("DELETE FROM secrets WHERE tenant=? AND name=?", [.text(tenant.value), .text(name)]) > 0
    }

    private static func decodeSecret(_ r: SQLiteConnection.Row) throws(StoreError) -> SecretRecord {
        SecretRecord(
            tenant: try tenantName(r.text(0)), name: r.text(1), version: Int(r.int(2)), keyVersion: Int(r.int(3)), sealed: r.blob(4),
            placeholder: r.text(5), createdAt: r.double(6), updatedAt: r.double(7))
    }
}

/// One row of `tenant_keys`: a data key of a tenant, wrapped by the master key `masterKeyID`.
public struct TenantKeyRecord: Sendable, Equatable {
    public var tenant: TenantName
    public var version: Int
    /// `active` (seals new values), `retired` (opens old ones), `destroyed` (`wrapped` erased).
    public var state: String
    public var masterKeyID: String
    public var wrapped: [UInt8]?
    public var createdAt: Double
    /// Bring your own key: the file (on the daemon's side) of the tenant's key that wraps this one.
    public var keyFile: String?
}

/// One row of `secrets`. `sealed` is the value under the tenant's data key `keyVersion`, bound to
/// (tenant, name, version); `placeholder` is what jobs see instead of it.
public struct SecretRecord: Sendable, Equatable {
    public var tenant: TenantName
    public var name: String
    public var version: Int
    public var keyVersion: Int
    public var sealed: [UInt8]
    public var placeholder: String
    public var createdAt: Double
    public var updatedAt: Double

    public init(
        tenant: TenantName, name: String, version: Int, keyVersion: Int, sealed: [UInt8], placeholder: String, createdAt: Double, updatedAt: Double
    ) {
        self.tenant = tenant; self.name = name; self.version = version; self.keyVersion = keyVersion; self.sealed = sealed
        self.placeholder = placeholder; self.createdAt = createdAt; self.updatedAt = updatedAt
    }
}
