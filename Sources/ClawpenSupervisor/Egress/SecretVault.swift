import ClawpenProtocol
import ClawpenSecrets
import ClawpenStore
import ClawpenWire

/// The supervisor's side of the key hierarchy: the master key, the tenants' data keys it has
/// unwrapped (cached for the daemon's life), and the store rows they seal. Values are opened
/// only to be handed to the egress proxy (or, with `expose = "env"`, to the listed commands):
/// never for a reply, a log line or an audit row.
/// Loop-confined like the store it uses.
final class SecretVault: @unchecked Sendable {
    let master: MasterKey
    private let store: Store
    private var dataKeys: [TenantName: DataKey] = [:]

    init(master: MasterKey, store: Store) {
        self.master = master
        self.store = store
    }

    /// The tenant's active data key; made (and stored wrapped) at the tenant's first secret.
    func activeKey(_ tenant: TenantName, now: Double) throws -> DataKey {
        if let k = dataKeys[tenant] { return k }
        if let row = try store.activeTenantKey(tenant) {
            let k = try unwrap(row)
            dataKeys[tenant] = k
            return k
        }
        let (key, wrapped) = try master.newDataKey(tenant: tenant.value, version: 1)
        try store.addTenantKey(tenant, version: 1, masterKeyID: master.id, wrapped: wrapped, now: now)
        dataKeys[tenant] = key
        return key
    }

    private func unwrap(_ row: TenantKeyRecord) throws -> DataKey {
        guard let wrapped = row.wrapped, row.state != "destroyed" else {
            throw KeyError("data key", "tenant '\(row.tenant)' key version \(row.version) was destroyed")
        }
        guard row.masterKeyID == master.id else {
            throw KeyError(
                "data key",
                "tenant '\(row.tenant)' key version \(row.version) is wrapped by master key \(row.masterKeyID), the daemon has \(master.id) (\(master.source)): start it with the master key this state dir was written with"
            )
        }
        return try master.unwrap(wrapped, tenant: row.tenant.value, version: row.version)
    }

    /// Seals and stores `value` as the tenant's secret `name` (one version above the stored one;
    /// the placeholder stays, so running jobs' environments stay valid).
    func put(_ tenant: TenantName, name: String, value: [UInt8], now: Double) throws -> SecretRecord {
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
        let key: DataKey
        if let k = dataKeys[record.tenant], k.version == record.keyVersion {
            key = k
        } else {
            guard let row = try store.tenantKey(record.tenant, version: record.keyVersion) else {
                throw KeyError("data key", "tenant '\(record.tenant)' has no key version \(record.keyVersion) for secret '\(record.name)'")
            }
            key = try unwrap(row)
        }
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
