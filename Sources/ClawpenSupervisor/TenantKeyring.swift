import ClawpenProtocol
import ClawpenSecrets
import ClawpenStore
import ClawpenWire

/// The tenants' data keys in memory, for the job records (Store's `JobCipher`) and the secrets
/// (SecretVault) alike: one key per tenant and version, unwrapped from `tenant_keys` by the
/// master key, or by the tenant's own key file (bring your own key), at first use.
///
/// "Only while needed": at most `capacity` keys are held (least recently used goes first: a key
/// is needed while its tenant submits or its records are read, and a tenant idle long enough to
/// fall out is unwrapped again, ~10 µs, at its next use); a tenant's keys are dropped at once when
/// it is offboarded (`drop`), and a key destroyed in the store is never unwrapped again.
/// Loop-confined like the store.
final class TenantKeyring: JobCipher, @unchecked Sendable {
    private(set) var master: MasterKey
    private let store: Store
    let capacity: Int
    private struct Entry {
        let key: DataKey
        var used: UInt64
    }
    private var keys: [KeyRef: Entry] = [:]
    private var active: [TenantName: Int] = [:]
    private var tick: UInt64 = 0
    private(set) var unwraps = 0

    struct KeyRef: Hashable {
        let tenant: TenantName
        let version: Int
    }

    init(master: MasterKey, store: Store, capacity: Int = 1024) {
        self.master = master
        self.store = store
        self.capacity = max(1, capacity)
    }

    var cachedCount: Int { keys.count }

    /// The tenant's active data key: made (and stored wrapped by the master key) at first use.
    func activeKey(_ tenant: TenantName, now: Double = Clock.now()) throws -> DataKey {
        if let v = active[tenant], let k = cached(KeyRef(tenant: tenant, version: v)) { return k }
        if let row = try store.activeTenantKey(tenant) {
            let k = try unwrap(row)
            remember(k)
            active[tenant] = k.version
            return k
        }
        let (key, wrapped) = try master.newDataKey(tenant: tenant.value, version: 1)
        try store.addTenantKey(tenant, version: 1, masterKeyID: master.id, wrapped: wrapped, now: now)
        remember(key)
        active[tenant] = 1
        return key
    }

    /// The tenant's data key at `version` (to open what it sealed).
    func key(_ tenant: TenantName, version: Int) throws -> DataKey {
        if let k = cached(KeyRef(tenant: tenant, version: version)) { return k }
        guard let row = try store.tenantKey(tenant, version: version) else {
            throw KeyError("data key", "tenant '\(tenant)' has no data key version \(version)")
        }
        let k = try unwrap(row)
        remember(k)
        return k
    }

    /// A tenant's own key (bring your own key) wraps its first data key: read from `keyFile`,
    /// a file of the daemon's user, mode 0600, 32 bytes or 64 hex digits (as the master key).
    func createWithOwnKey(_ tenant: TenantName, keyFile: String, now: Double) throws {
        let own = try MasterKey.fromFile(keyFile, source: "tenant key file \(keyFile)")
        let (key, wrapped) = try own.newDataKey(tenant: tenant.value, version: 1)
        try store.addTenantKey(tenant, version: 1, masterKeyID: own.id, wrapped: wrapped, now: now, keyFile: keyFile)
        remember(key)
        active[tenant] = 1
    }

    /// Forgets the tenant's keys (offboarding: nothing of it stays in memory).
    func drop(_ tenant: TenantName) {
        keys = keys.filter { $0.key.tenant != tenant }
        active[tenant] = nil
    }

    /// A master key rotation: every key row the master key wraps is wrapped again by `new`, in
    /// one transaction; rows a tenant's own key wraps are left alone. Returns the count rewrapped.
    /// The data keys do not change, so no record is rewritten and the cache stays valid.
    func rotate(to new: MasterKey) throws -> Int {
        var rewrapped: [(tenant: TenantName, version: Int, masterKeyID: String, wrapped: [UInt8])] = []
        for row in try store.liveTenantKeys() where row.keyFile == nil {
            guard let wrapped = row.wrapped else { continue }
            guard row.masterKeyID == master.id || row.masterKeyID == new.id else {
                throw KeyError(
                    "key rotate",
                    "tenant '\(row.tenant)' key version \(row.version) is wrapped by master key \(row.masterKeyID), not by the daemon's \(master.id)")
            }
            let dataKey =
                row.masterKeyID == new.id
                ? try new.unwrap(wrapped, tenant: row.tenant.value, version: row.version)
                : try master.unwrap(wrapped, tenant: row.tenant.value, version: row.version)
            rewrapped.append((row.tenant, row.version, new.id, try new.wrap(dataKey)))
        }
        try store.rewrapTenantKeys(rewrapped)
        master = new
        return rewrapped.count
    }

    private func cached(_ ref: KeyRef) -> DataKey? {
        guard var e = keys[ref] else { return nil }
        tick &+= 1
        e.used = tick
        keys[ref] = e
        return e.key
    }

    private func remember(_ key: DataKey) {
        guard let tenant = try? TenantName(validating: key.tenant) else { return }
        tick &+= 1
        keys[KeyRef(tenant: tenant, version: key.version)] = Entry(key: key, used: tick)
        if keys.count > capacity, let oldest = keys.min(by: { $0.value.used < $1.value.used })?.key {
            keys[oldest] = nil
            if active[oldest.tenant] == oldest.version { active[oldest.tenant] = nil }
        }
    }

    private func unwrap(_ row: TenantKeyRecord) throws -> DataKey {
        guard let wrapped = row.wrapped, row.state != "destroyed" else {
            throw KeyError("data key", "tenant '\(row.tenant)' key version \(row.version) was destroyed (the tenant was offboarded)")
        }
        unwraps += 1
        if let file = row.keyFile {
            let own = try MasterKey.fromFile(file, source: "tenant key file \(file)")
            guard own.id == row.masterKeyID else {
                throw KeyError("data key", "tenant '\(row.tenant)' key file \(file) holds key \(own.id), but its data key is wrapped by \(row.masterKeyID)")
            }
            return try own.unwrap(wrapped, tenant: row.tenant.value, version: row.version)
        }
        guard row.masterKeyID == master.id else {
            throw KeyError(
                "data key",
                "tenant '\(row.tenant)' key version \(row.version) is wrapped by master key \(row.masterKeyID), the daemon has \(master.id) (\(master.source)): start it with the master key this state dir was written with"
            )
        }
        return try master.unwrap(wrapped, tenant: row.tenant.value, version: row.version)
    }

    // MARK: JobCipher

    func activeKeyVersion(_ tenant: TenantName) throws(StoreError) -> Int {
        do { return try activeKey(tenant).version } catch { throw .unreadable(job: "-", message: "tenant '\(tenant)': \(error)") }
    }

    func seal(_ plaintext: [UInt8], field: JobField, tenant: TenantName, job: String, keyVersion: Int) throws(StoreError) -> [UInt8] {
        do {
            return try key(tenant, version: keyVersion).seal(plaintext, purpose: field.purpose, name: job, itemVersion: 1)
        } catch { throw .unreadable(job: job, message: "\(error)") }
    }

    func open(_ sealed: [UInt8], field: JobField, tenant: TenantName, job: String, keyVersion: Int) throws(StoreError) -> [UInt8] {
        do {
            return try key(tenant, version: keyVersion).open(sealed, purpose: field.purpose, name: job, itemVersion: 1)
        } catch { throw .unreadable(job: job, message: "\(error)") }
    }
}
