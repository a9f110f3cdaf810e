import ClawpenCore
import ClawpenPolicy
import ClawpenProtocol
import ClawpenSecrets
import ClawpenStore
import ClawpenWire
import Glibc
import NIOCore
import NIOPosix

/// What the supervisor keeps for the tenant-data features (docs/tenant-data.md).
struct TenantDataState {
    var keyring: TenantKeyring?
    var keyLocation: MasterKeyLocation?
    /// The offboarding decisions (ClawpenCore/Offboarding.swift), mirrored in `offboardings`.
    var book = OffboardingBook()
    /// The one timer at the book's next deadline.
    var deadlineTimer: Scheduled<Void>?
    /// Tenants whose shredding is under way (it waits for their worker's exit).
    var shredding: Set<TenantName> = []
    /// Callers of `offboard --now` waiting for the shredding to end.
    var shredWaiters: [TenantName: [() -> Void]] = [:]
    var retention = RetentionState()
    var records = RecordsBudgetState()
}

/// Keys, offboarding and the requests of TenantDataRequest.
extension Supervisor {
    /// At start (Server.run): the keyring seals the job records and opens the secrets.
    func installKeys(_ keys: LoadedKeys) {
        let keyring = TenantKeyring(master: keys.master, store: store)
        tenantData.keyring = keyring
        tenantData.keyLocation = keys.location
        store.cipher = keyring
        vault = SecretVault(keyring: keyring, store: store)
    }

    /// At start, before jobs are recovered: rows an older release wrote in clear are sealed,
    /// offboardings resume (their deadline timer, or a shredding a stop interrupted), and
    /// retention is scheduled.
    func startTenantData() throws(StoreError) {
        if tenantData.keyring != nil {
            let began = Clock.monotonic()
            let sealed = try store.sealClearJobs()
            if sealed > 0 {
                store.checkpoint()
                logger.notice(
                    "sealed job records an earlier release stored in clear",
                    metadata: ["jobs": "\(sealed)", "ms": "\(Int((Clock.monotonic() - began) * 1000))"])
            }
        }
        var entries: [OffboardingBook.Entry] = []
        for o in try store.offboardings() {
            guard let phase = OffboardingBook.Phase(rawValue: o.state) else { continue }
            entries.append(
                OffboardingBook.Entry(
                    tenant: o.tenant, uid: o.uid, phase: phase, requestedAt: o.requestedAt, deadline: o.deadline, requestedBy: o.requestedBy,
                    deleteAudit: o.deleteAudit))
            if phase != .done { vault?.revoked.insert(o.tenant) }
        }
        tenantData.book = OffboardingBook(entries)
        loop.execute { [self] in offboardingTick() }
        scheduleRetention(initialDelaySeconds: 5)
        scheduleRecordsMeasure(initialDelaySeconds: 6)
    }

    func refuseIfOffboarding(_ name: TenantName, request: String) throws(ProtocolError) {
        guard tenantData.book.isOffboarding(name) else { return }
        throw ProtocolError(
            .invalidRequest, "\(request): tenant '\(name)' is being offboarded; `clawpen tenant restore \(name)` undoes that during its grace period",
            details: ["rule": .string("offboarding in progress")])
    }

    func handleTenantData(_ request: TenantDataRequest, _ r: Responder) throws {
        switch request {
        case .createWithKey(let name, let tier, let keyFile):
            try authorize(r, .operator(command: "tenant create"), request: "tenant.create", tenant: name)
            guard let keyring = tenantData.keyring else { throw ProtocolError(.unavailable, "the daemon has no keys (see its log)") }
            // The key is checked before anything is made: a bad file creates nothing.
            do { _ = try MasterKey.fromFile(keyFile, source: "tenant key file \(keyFile)") } catch {
                throw ProtocolError(.invalidRequest, "tenant.create: --key-file: \(error.description)")
            }
            let view = try createTenant(name, tier, r)
            do { try keyring.createWithOwnKey(name, keyFile: keyFile, now: Clock.now()) } catch {
                throw ProtocolError(.internal, "tenant '\(name)' was created, but its own key could not wrap its data key: \(error)")
            }
            audit(tenant: name, caller: r, action: "tenant.key", rule: "operator", detail: "data key wrapped by the tenant's own key (\(keyFile))")
            r.reply("tenant", [("tenant", view.json)])
        case .offboard(let name, let dryRun, let days, let now, let deleteAudit):
            try authorize(r, .operator(command: "tenant offboard"), request: "tenant.offboard", tenant: name)
            try offboard(name, dryRun: dryRun, graceDays: days, now: now, deleteAudit: deleteAudit, r)
        case .restore(let name):
            try authorize(r, .operator(command: "tenant restore"), request: "tenant.restore", tenant: name)
            try restore(name, r)
        case .export(let name, let path):
            try authorize(r, .operator(command: "tenant export"), request: "tenant.export", tenant: name)
            _ = try tenant(name)
            exportTenant(name, to: path, r)
        case .keyRotate(let file):
            try authorize(r, .operator(command: "key rotate"), request: "key.rotate")
            try rotateMasterKey(newKeyFile: file, r)
        }
    }

    // MARK: Offboarding

    /// What offboarding `name` removes, as `--dry-run` lists it.
    func offboardingInventory(_ name: TenantName) throws -> JSONValue {
        let inv = try store.inventory(name)
        var o = JSONObjectBuilder()
        var ws = JSONObjectBuilder()
        ws.set("path", .string(workspacePath(name)))
        do {
            let m = try Workspace.measure(root: config.workspaceRoot, tenant: name)
            ws.set("files", .int(Int64(m.files)))
            ws.set("directories", .int(Int64(m.directories)))
            ws.set("bytes", .int(m.bytes))
        } catch {
            ws.set("error", .string(error.description))
        }
        o.set("workspace", ws.value)
        o.set("job_records", .int(Int64(inv.jobs)))
        o.set("secrets", .array(inv.secrets.map(JSONValue.string)))
        o.set("data_keys", .int(Int64(inv.keys)))
        let override = QuotaOverrides.path(tenant: name.value, directory: PolicyRuntime.quotaDirectory(config))
        o.set("overrides", .array(access(override, F_OK) == 0 ? [.string(override)] : []))
        o.set("audit_rows", .int(Int64(inv.auditRows)))
        return o.value
    }

    private func offboard(_ name: TenantName, dryRun: Bool, graceDays: Double?, now: Bool, deleteAudit: Bool, _ r: Responder) throws {
        let t = try tenant(name)
        drainWrites()
        let inventory = try offboardingInventory(name)
        if dryRun {
            // Read-only, like `tenant show`: nothing is written, not even an audit row.
            r.reply("offboard", [("tenant", .string(name.value)), ("dry_run", .bool(true)), ("would_remove", inventory)])
            return
        }
        let by = callerDescription(r)
        let wall = Clock.now()
        let entry: OffboardingBook.Entry
        switch tenantData.book.offboard(name, uid: t.record.uid, now: wall, graceDays: graceDays, immediate: now, deleteAudit: deleteAudit, by: by) {
        case .failure(let refusal): throw ProtocolError(.invalidRequest, "tenant.offboard: \(refusal.message)", details: ["rule": .string(refusal.rule)])
        case .success(let e): entry = e
        }
        try store.putOffboarding(record(entry))
        try store.setSuspension(tenant: name, by: "offboarding (\(by))", at: wall)
        perform(core.offboard(name, by: "offboarding (\(by))"))
        vault?.revoked.insert(name)
        secretsChanged(name)
        audit(
            tenant: name, caller: r, action: "tenant.offboard", rule: "operator",
            detail: "deadline=\(entry.deadline) delete_audit=\(deleteAudit) would_remove=\(inventory.serializedString)")
        logger.notice("tenant offboarding", metadata: ["tenant": "\(name)", "deadline": "\(entry.deadline)", "by": "\(by)"])
        let reply: () -> Void = { [self] in
            r.reply(
                "offboard",
                [
                    ("tenant", .string(name.value)), ("dry_run", .bool(false)), ("offboarding", offboardingJSON(name)),
                    ("removes", inventory),
                ])
        }
        if now {
            tenantData.shredWaiters[name, default: []].append(reply)
            offboardingTick()
        } else {
            reply()
            armDeadlineTimer()
        }
    }

    private func restore(_ name: TenantName, _ r: Responder) throws {
        switch tenantData.book.restore(name, now: Clock.now()) {
        case .failure(let refusal): throw ProtocolError(.invalidRequest, "tenant.restore: \(refusal.message)", details: ["rule": .string(refusal.rule)])
        case .success: break
        }
        try store.removeOffboarding(name)
        try store.clearSuspension(tenant: name)
        perform(core.resume(name))
        vault?.revoked.remove(name)
        secretsChanged(name)
        armDeadlineTimer()
        audit(tenant: name, caller: r, action: "tenant.restore", rule: "operator", detail: "offboarding undone within its grace period")
        logger.notice("tenant restored", metadata: ["tenant": "\(name)"])
        r.reply("tenant", [("tenant", view(try tenant(name)).json), ("state", .string(try tenant(name).state.rawValue))])
    }

    func offboardingJSON(_ name: TenantName) -> JSONValue {
        guard let e = tenantData.book.entries[name] else { return .null }
        var o = JSONObjectBuilder()
        o.set("state", .string(e.phase.rawValue))
        o.set("requested_at", e.requestedAt)
        o.set("deadline", e.deadline)
        o.set("requested_by", .string(e.requestedBy))
        o.set("delete_audit", e.deleteAudit)
        o.set("uid", .int(Int64(e.uid)))
        return o.value
    }

    func record(_ e: OffboardingBook.Entry) -> OffboardingRecord {
        OffboardingRecord(
            tenant: e.tenant, uid: e.uid, state: e.phase.rawValue, requestedAt: e.requestedAt, deadline: e.deadline, requestedBy: e.requestedBy,
            deleteAudit: e.deleteAudit)
    }

    /// One timer at the next deadline (wall clock, re-armed from the book at each change and at
    /// start: the deadline is in the store, so a restart keeps it).
    func armDeadlineTimer() {
        tenantData.deadlineTimer?.cancel()
        tenantData.deadlineTimer = nil
        guard let next = tenantData.book.nextDeadline() else { return }
        // At most an hour at a time: a wall clock that jumps is looked at again soon.
        let delay = min(3600, max(0, next - Clock.now()))
        tenantData.deadlineTimer = loop.scheduleTask(in: .milliseconds(Int64(delay * 1000) + 1)) { [self] in offboardingTick() }
    }

    /// Runs every shredding that is due, then re-arms the timer.
    func offboardingTick() {
        for e in tenantData.book.due(now: Clock.now()) where !tenantData.shredding.contains(e.tenant) {
            tenantData.shredding.insert(e.tenant)
            shred(e.tenant)
        }
        armDeadlineTimer()
    }

    /// The end of the grace period, in OffboardingBook.steps order. Each step is idempotent and
    /// the phase `shredding` is stored first, so a stop half-way is finished at the next start.
    private func shred(_ name: TenantName) {
        guard let e = tenantData.book.beginShredding(name) else { tenantData.shredding.remove(name); return }
        var done: [String] = []
        do {
            try store.putOffboarding(record(e))
            for step in OffboardingBook.steps(for: e) {
                // Nothing of the tenant's is served from memory once its keys or records go.
                recentJobs.removeAll()
                switch step {
                case .destroyKey:
                    try store.destroyTenantKeys(name, now: Clock.now())
                    tenantData.keyring?.drop(name)
                case .removeWorkspace:
                    // The worker must be gone first: it holds the workspace mounted.
                    if let t = core.tenants[name], t.lifecycle.worker != nil {
                        perform(core.offboard(name, by: e.requestedBy))
                        loop.scheduleTask(in: .milliseconds(100)) { [self] in
                            tenantData.shredding.remove(name)
                            offboardingTick()
                        }
                        return
                    }
                    try Workspace.remove(root: config.workspaceRoot, tenant: name)
                case .removeSecrets:
                    _ = try store.removeSecrets(name)
                    secretsChanged(name)
                case .removeOverrides:
                    let path = QuotaOverrides.path(tenant: name.value, directory: PolicyRuntime.quotaDirectory(config))
                    if unlink(path) != 0 && errno != ENOENT { throw StepFailure(step: "remove override", errno: errno, detail: path) }
                case .removeJobs:
                    // Batches: a tenant with many records does not hold the write lock long.
                    while try store.removeJobs(name, limit: 1000) > 0 {}
                    tenantData.records.ledger.forget(name.value)
                case .retireUID:
                    _ = core.removeTenant(name)
                    agentTenantRemoved(name)
                    egressTenantRemoved(name)
                    runtimeCounters.forget(name)
                    metrics.forget(name)
                    freezeMethods[name] = nil
                    try store.retireTenant(name, uid: e.uid, now: Clock.now())
                    _ = cgroups?.tryRemove(tenant: name)
                case .removeAudit:
                    drainWrites()
                    _ = try store.removeAudit(name)
                }
                done.append(step.rawValue)
            }
            guard let finished = tenantData.book.finished(name) else { return }
            try store.putOffboarding(record(finished), finishedAt: Clock.now())
            store.checkpoint()
        } catch {
            logger.error("offboarding step failed; retried in a minute", metadata: ["tenant": "\(name)", "done": "\(done)", "error": "\(error)"])
            audit(tenant: name, caller: nil, action: "tenant.offboard.failed", rule: "offboarding", detail: "after [\(done.joined(separator: ", "))]: \(error)")
            loop.scheduleTask(in: .seconds(60)) { [self] in
                tenantData.shredding.remove(name)
                offboardingTick()
            }
            return
        }
        tenantData.shredding.remove(name)
        vault?.revoked.remove(name)
        audit(
            tenant: name, caller: nil, action: "tenant.offboarded", rule: "offboarding",
            detail: "uid \(e.uid) retired; \(done.joined(separator: ", ")) (requested by \(e.requestedBy) at \(e.requestedAt))")
        drainWrites()
        logger.notice("tenant offboarded", metadata: ["tenant": "\(name)", "uid": "\(e.uid)"])
        for w in tenantData.shredWaiters.removeValue(forKey: name) ?? [] { w() }
    }

    // MARK: Master key rotation

    private func rotateMasterKey(newKeyFile: String?, _ r: Responder) throws {
        guard let keyring = tenantData.keyring, let location = tenantData.keyLocation else {
            throw ProtocolError(.unavailable, "the daemon has no master key (see its log)")
        }
        let old = keyring.master
        let count: Int
        do {
            switch location {
            case .stateDir(let path):
                // 1. the new key, durable beside the old; 2. every row rewrapped in one
                // transaction; 3. the new key replaces the old. A stop between steps is finished
                // (or undone) at the next start by MasterKeySetup, which looks at which key the
                // rows name.
                let next = MasterKeySetup.pendingPath(path)
                unlink(next)
                let new = try newKeyFile.map { f throws(KeyError) in try MasterKey.fromFile(f) } ?? MasterKey.random(source: path)
                try new.write(to: next)
                count = try keyring.rotate(to: new)
                guard rename(next, path) == 0 else { throw KeyError("master key", errno: errno, "cannot rename \(next) to \(path)") }
                syncDirectory(of: path)
            case .external(let source):
                guard let newKeyFile else {
                    throw ProtocolError(
                        .invalidRequest,
                        "key.rotate: the master key comes from \(source), which clawpen does not write; give --new-key-file F (a new 32-byte key, mode 0600), then start the daemon with F"
                    )
                }
                let new = try MasterKey.fromFile(newKeyFile)
                count = try keyring.rotate(to: new)
                tenantData.keyLocation = .external(source: new.source)
            }
        } catch let e as KeyError {
            throw ProtocolError(.internal, "key.rotate: \(e.description) (nothing was changed unless the log says otherwise)")
        }
        let new = keyring.master
        audit(tenant: nil, caller: r, action: "key.rotate", rule: "operator", detail: "master key \(old.id) -> \(new.id); \(count) data key(s) rewrapped")
        logger.notice("master key rotated", metadata: ["old": "\(old.id)", "new": "\(new.id)", "rewrapped": "\(count)"])
        var o: [(String, JSONValue)] = [("old_key_id", .string(old.id)), ("new_key_id", .string(new.id)), ("rewrapped", .int(Int64(count)))]
        if case .external = location {
            o.append(("restart_with", .string(new.source)))
        } else {
            o.append(("key_file", .string(new.source)))
        }
        r.reply("key", o)
    }
}

extension JSONValue {
    var serializedString: String { String(decoding: serialized(), as: UTF8.self) }
}
