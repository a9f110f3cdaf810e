import ClawpenProtocol
import ClawpenSecrets
import ClawpenStore
import ClawpenWire

/// The supervisor's side of the key hierarchy for secrets: the tenants' data keys (TenantKeyring)
/// and the store rows they seal. Values are opened
/// only to be handed to the egress proxy (or, with `expose = "env"`, to the listed commands):
/// never for a reply, a log line or an audit row.
/// Loop-confined like the store it uses.
final class SecretVault: @unchecked Sendable {
    var master: MasterKey { keyring.master }
    private let store: Store
    /// The data keys, shared with the job records' sealing.
    let keyring: TenantKeyring
    /// Tenants being offboarded: their secrets open for nobody (nothing is deleted until the
    /// grace period ends; `tenant restore` lifts it).
    var revoked: Set<TenantName> = []

    init(keyring: TenantKeyring, store: Store) {
        self.keyring = keyring
        self.store = store
    }

    /// The tenant's active data key; made (and stored wrapped) at the tenant's first use.
    func activeKey(_ tenant: TenantName, now: Double) throws -> DataKey { try keyring.activeKey(tenant, now: now) }

    /// Seals and stores `value` as the tenant's secret `name` (one version above the stored one;
    /// the placeholder stays, so running jobs' environments stay valid).
    func put(_ tenant: TenantName, name: String, value: [UInt8], now: Double) throws -> SecretRecord {
        guard !revoked.contains(tenant) else {
            throw ProtocolError(.invalidRequest, "tenant '\(tenant)' is being offboarded: its secrets are revoked (clawpen tenant restore \(tenant) undoes it)")
        }
        let key = try activeKey(tenant, now: now)
        let old = try store.secret(tenant, name: name)
        let version = (old?.version ?? 0) + 1
        let sealed = try key.seal(value, purpose: "secret", name: name, itemVersion: version)
        let record = SecretRecord(
            tenant: tenant, name: name, version: version, keyVersion: key.version, sealed: sealed,
            placeholder: old?.placeholder ?? newPlaceholder(), createdAt: old?.createdAt ?? now, updatedAt: now)
        try store.putSecret(record)
        return record
    }

    /// The clear value of a stored secret, for the proxy or an `expose = "env"` command.
    func open(_ record: SecretRecord) throws -> [UInt8] {
        guard !revoked.contains(record.tenant) else { throw KeyError("secret", "tenant '\(record.tenant)' is being offboarded: its secrets are revoked") }
        let key = try keyring.key(record.tenant, version: record.keyVersion)
        return try key.open(record.sealed, purpose: "secret", name: record.name, itemVersion: record.version)
    }
}

/// What `secret list` shows of a secret: never its value.
extension SecretRecord {
    var json: JSONValue {
        var o = JSONObjectBuilder()
        o.set("tenant", .string(tenant.value))
        o.set("name", .string(name))
        o.set("version", .int(Int64(version)))
        o.set("created_at", .double(createdAt))
        o.set("updated_at", .double(updatedAt))
        o.set("key_id", .int(Int64(keyVersion)))
        return o.value
    }
}
