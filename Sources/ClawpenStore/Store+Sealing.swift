import ClawpenWire

/// The private fields of a job record, each sealed on its own (a fresh nonce per value).
public enum JobField: String, Sendable, CaseIterable {
    case argv, env, stdin, stdout, stderr
    /// The purpose in the associated data (`KeyHierarchy.sealAAD`): `job.argv`, ...
    public var purpose: String { "job." + rawValue }
}

/// Seals and opens job fields with the tenants' data keys. The store holds no key: the
/// supervisor's keyring does (ClawpenSupervisor/TenantKeyring.swift). Every value is bound to its
/// tenant, job id and field, so a ciphertext copied onto another row, or into another field,
/// does not open.
public protocol JobCipher: AnyObject {
    /// The version of the tenant's data key that seals its new values (made at first use).
    func activeKeyVersion(_ tenant: TenantName) throws(StoreError) -> Int
    func seal(_ plaintext: [UInt8], field: JobField, tenant: TenantName, job: String, keyVersion: Int) throws(StoreError) -> [UInt8]
    /// Throws `.unreadable(job:...)` when the value does not open.
    func open(_ sealed: [UInt8], field: JobField, tenant: TenantName, job: String, keyVersion: Int) throws(StoreError) -> [UInt8]
}

extension Store {
    /// `PRAGMA secure_delete`: freed space is overwritten with zeros in the database file. On
    /// where clear bytes or still-openable ciphertext are freed: sealing an earlier release's
    /// clear rows, the retention purge, offboarding's deletions. Off on the event loop's ordinary
    /// writes: what they free is ciphertext the row itself still holds (an UPDATE moves it), and
    /// zeroing would only cost time there.
    func setSecureDelete(_ on: Bool) throws(StoreError) {
        try db.exec("PRAGMA secure_delete=\(on ? "ON" : "OFF")")
    }

    /// The sealing key version of each tenant (none without a cipher), looked up before a write
    /// transaction begins: making a tenant's first key commits a transaction of its own.
    func activeKeys(_ tenants: [TenantName]) throws(StoreError) -> [TenantName: Int] {
        guard let cipher else { return [:] }
        var out: [TenantName: Int] = [:]
        for t in tenants where out[t] == nil { out[t] = try cipher.activeKeyVersion(t) }
        return out
    }

    /// `key` nil: the store has no cipher, the value is written as it is.
    func sealField(_ plain: [UInt8], _ field: JobField, _ tenant: TenantName, _ job: String, _ key: Int?) throws(StoreError) -> [UInt8] {
        guard let key, let cipher else { return plain }
        return try cipher.seal(plain, field: field, tenant: tenant, job: job, keyVersion: key)
    }

    /// `key` nil: a row an earlier release wrote in clear (sealed by `sealClearJobs` at start).
    func openField(_ stored: [UInt8], _ field: JobField, _ tenant: TenantName, _ job: String, _ key: Int?) throws(StoreError) -> [UInt8] {
        guard let key else { return stored }
        guard let cipher else { throw .unreadable(job: job, message: "it is sealed and this store was opened without the tenants' keys") }
        return try cipher.open(stored, field: field, tenant: tenant, job: job, keyVersion: key)
    }

    /// Seals the rows an earlier release wrote in clear, `batch` at a time, each batch one
    /// transaction (a crash leaves every row either clear or sealed, both readable). Returns how
    /// many rows it sealed. With `secure_delete` the clear bytes are overwritten in the database
    /// file; the WAL is truncated by the next checkpoint.
    public func sealClearJobs(batch: Int = 500) throws(StoreError) -> Int {
        guard cipher != nil else { return 0 }
        try setSecureDelete(true)
        defer { try? setSecureDelete(false) }
        var total = 0
        while true {
            let rows = try db.rows(
                "SELECT \(Self.jobColumns) FROM jobs WHERE seal_key IS NULL OR (result_key IS NULL AND stdout IS NOT NULL) LIMIT ?",
                [.int(Int64(batch))], decodeJob)
            guard !rows.isEmpty else { break }
            let keys = try activeKeys(rows.map(\.tenant))
            try setSynchronousFull()
            try db.run("BEGIN IMMEDIATE")
            do {
                for job in rows {
                    let key = keys[job.tenant]
                    try db.run(
                        "UPDATE jobs SET argv=?, env=?, stdin=?, seal_key=? WHERE id=?",
                        [
                            .blob(try sealField(Self.joinNUL(job.argv), .argv, job.tenant, job.id, key)),
                            .blob(try sealField(Self.joinNUL(job.env.map { "\($0.name)=\($0.value)" }), .env, job.tenant, job.id, key)),
                            job.stdin.isEmpty ? .null : .blob(try sealField(job.stdin, .stdin, job.tenant, job.id, key)),
                            .optional(key.map { Int64($0) }), .text(job.id),
                        ])
                    if let r = job.result {
                        try db.run(
                            "UPDATE jobs SET stdout=?, stderr=?, result_key=? WHERE id=?",
                            [
                                .blob(try sealField(r.stdout, .stdout, job.tenant, job.id, key)),
                                .blob(try sealField(r.stderr, .stderr, job.tenant, job.id, key)), .optional(key.map { Int64($0) }),
                                .text(job.id),
                            ])
                    }
                }
                try db.run("COMMIT")
            } catch {
                _ = try? db.run("ROLLBACK")
                throw error
            }
            total += rows.count
        }
        return total
    }

    /// Raw access for tests and tools: runs `sql` and returns the first column of each row as text.
    public func debugQuery(_ sql: String, _ bind: [String] = []) throws(StoreError) -> [String] {
        try db.rows(sql, bind.map { .text($0) }) { $0.isNull(0) ? "NULL" : $0.text(0) }
    }
}
