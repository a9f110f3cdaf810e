import ClawpenCore
import ClawpenPolicy
import ClawpenProtocol
import ClawpenStore
import ClawpenWire
import Glibc

/// The client requests: each checked against the caller's rights (access.toml), then handed to
/// the core or answered from it and the store.
extension Supervisor {
    func handle(_ request: Request, _ r: Responder) {
        loop.preconditionInEventLoop()
        // A read of what a commit in flight will make true waits for that commit, not the loop
        // (GroupCommit.swift); every other request goes on at once.
        if commit.hasUncommitted && readsCommittedState(request) {
            afterWrites { [self] in dispatch(request, r) }
            return
        }
        dispatch(request, r)
    }

    private func dispatch(_ request: Request, _ r: Responder) {
        // A job calling from inside its sandbox is its own principal (Requests+Agent.swift).
        if let agent = r.agent { handleAgent(request, r, agent); return }
        handleAny(request, r)
    }

    /// The request reads job records or the audit log from the store, so it must see every
    /// write made before it (a job's accept or result in flight).
    func readsCommittedState(_ request: Request) -> Bool {
        switch request {
        case .jobGet, .jobWait, .jobCancel, .jobTree, .audit:
            return true
        case .submit(let s):
            guard let key = s.idempotencyKey else { return false }
            return commit.acceptPending(tenant: s.tenant, key: key)
        case .runtime(let runtime):
            if case .list = runtime { return true }
            // A keystroke of a live interactive job is answered from memory.
            guard let id = runtime.jobID, let stream = streams.jobs[id] else { return true }
            return core.runningJob(id, tenant: stream.tenant) == nil
        default:
            return false
        }
    }

    /// A request of whoever `authorize` lets make it (an agent's, once Requests+Agent.swift let it through).
    func handleAny(_ request: Request, _ r: Responder) {
        do {
            switch request {
            case .ping:
                r.reply("pong", [("version", .string(ClawpenVersion.string)), ("pid", .int(Int64(getpid())))])
            case .submit(let s): try submit(s, r)
            case .jobGet(let id):
                let view = try activeOrStoredJob(id)
                try authorize(r, .submit(tenant: try jobTenant(view)), request: "job.get")
                r.job(view)
            case .jobWait(let id):
                let view = try activeOrStoredJob(id)
                try authorize(r, .submit(tenant: try jobTenant(view)), request: "job.wait")
                if view.state.isFinal { r.job(view) } else { addWaiter(id, for: r) { r.job($0) } }
            case .jobCancel(let id): try cancel(id, r)
            case .jobTree(let id): try jobTree(id, r)
            case .tenantCreate(let name, let tier):
                try authorize(r, .operator(command: "tenant create"), request: "tenant.create", tenant: name)
                r.reply("tenant", [("tenant", try createTenant(name, tier, r).json)])
            case .tenantList:
                try authorize(r, .operator(command: "tenant list"), request: "tenant.list")
                r.reply("tenants", [("tenants", .array(core.tenants.keys.sorted().compactMap { core.tenants[$0].map { view($0).json } }))])
            case .tenantShow(let name):
                try authorize(r, .operator(command: "tenant show"), request: "tenant.show", tenant: name)
                r.reply("tenant", [("tenant", view(try tenant(name)).json)])
            case .tenantSuspend(let name):
                try authorize(r, .operator(command: "tenant suspend"), request: "tenant.suspend", tenant: name)
                try suspend(try tenant(name), r)
            case .tenantResume(let name):
                try authorize(r, .operator(command: "tenant resume"), request: "tenant.resume", tenant: name)
                try refuseIfOffboarding(name, request: "tenant.resume")
                try resume(try tenant(name), r)
            case .status(let name):
                try authorize(r, .operator(command: "status"), request: "status", tenant: name)
                r.reply("status", [("status", try status(tenant: name))])
            case .audit(let name, let since, let limit):
                try authorize(r, .operator(command: "audit"), request: "audit", tenant: name)
                let events = try store.auditEvents(tenant: name?.value, since: since, limit: limit)
                r.reply("audit", [("events", .array(events.map(Self.auditJSON)))])
            case .policyExplain(let tenant, let argv, let env, let cwd): try explain(tenant, argv, env, cwd, r)
            case .policyReload:
                try authorize(r, .operator(command: "policy reload"), request: "policy.reload")
                try reloadPolicies(caller: r)
                r.reply("policy", [("policy", policySummary())])
            case .tenantInspect(let name):
                try authorize(r, .operator(command: "tenant inspect"), request: "tenant.inspect", tenant: name)
                r.reply("inspect", [("inspect", inspect(tenant: try tenant(name)))])
            case .tenantSetQuota(let name, let changes):
                try authorize(r, .operator(command: "tenant set-quota"), request: "tenant.set_quota", tenant: name)
                try setQuota(try tenant(name), changes, r)
            case .metrics:
                try authorize(r, .operator(command: "metrics"), request: "metrics")
                r.reply("metrics", [("text", .string(String(decoding: metricsText(), as: UTF8.self)))])
            case .runtime(let request): try handleRuntime(request, r)
            case .file(let c): try handleFile(c, r)
            case .secretPut, .secretList, .secretRemove: try handleSecret(request, r)
            case .egressExplain(let tenant, let url): try explainEgress(tenant, url, r)
            case .tenantData(let d): try handleTenantData(d, r)
            }
        } catch let e as ProtocolError {
            r.fail(e)
        } catch let e as StoreError {
            logger.error("store failure", metadata: ["error": "\(e)"])
            r.fail(Self.storeRefusal(e, "the request could not be recorded"))
        } catch {
            r.fail(ProtocolError(.internal, "\(error)"))
        }
    }

    /// The caller's right to `action` (SO_PEERCRED against access.toml; root is an operator).
    /// A refusal is audited and thrown as permission_denied naming the rule.
    func authorize(_ r: Responder, _ action: AccessAction, request: String, tenant: TenantName? = nil) throws(ProtocolError) {
        if let agent = r.agent { try authorizeAgent(r, agent, action, request: request); return }
        guard let cred = r.caller else {
            auditRefusal(tenant: tenant, caller: r, action: "permission.denied", rule: "no peer credentials", request: request, detail: request)
            throw ProtocolError(
                .permissionDenied, "\(request): the caller's credentials (SO_PEERCRED) could not be read, so nothing but ping is allowed",
                details: ["rule": .string("no peer credentials")])
        }
        let decision = policies.access.decide(callers.caller(cred), action)
        guard decision.allowed else {
            var target = tenant
            if case .submit(let t) = action { target = t }
            auditRefusal(tenant: target, caller: r, action: "permission.denied", rule: decision.rule, request: request, detail: request)
            throw ProtocolError(.permissionDenied, "\(request): \(decision.message)", details: ["rule": .string(decision.rule)])
        }
    }

    /// "uid 0 (root)": who an operator is, in audit details and status.
    func callerDescription(_ r: Responder) -> String {
        guard let cred = r.caller else { return "an unknown caller" }
        let c = callers.caller(cred)
        return "uid \(cred.uid)" + (c.userName.map { " (\($0))" } ?? "")
    }

    static func auditJSON(_ e: AuditEvent) -> JSONValue {
        var o = JSONObjectBuilder()
        o.set("seq", e.seq)
        o.set("at", e.at)
        o.set("tenant", e.tenant)
        o.set("caller_uid", e.callerUID)
        o.set("action", .string(e.action))
        o.set("rule", e.rule)
        o.set("detail", e.detail)
        o.set("trace_id", e.traceID)
        return o.value
    }

    /// The tenant of a job as its view names it (a job of ours always has a valid one).
    func jobTenant(_ view: JobView) throws(ProtocolError) -> TenantName {
        do { return try TenantName(validating: view.tenant) } catch { throw ProtocolError(.internal, "job \(view.id): \(error)") }
    }

    func tenant(_ name: TenantName) throws(ProtocolError) -> TenantState {
        guard let t = core.tenants[name] else {
            throw ProtocolError(.unknownTenant, "no tenant named '\(name)' (create it with: clawpen tenant create \(name))")
        }
        return t
    }

    func view(_ t: TenantState) -> TenantView {
        TenantView(
            name: t.name.value, tier: t.record.tier, uid: t.record.uid,
            workspace: workspacePath(t.name), createdAt: t.record.createdAt)
    }

    // MARK: Tenants

    func createTenant(_ name: TenantName, _ rawTier: String, _ r: Responder) throws -> TenantView {
        guard let tier = Tier(rawValue: rawTier) else {
            throw ProtocolError(.invalidRequest, "unknown tier '\(rawTier)' (tiers: free, pro, enterprise)")
        }
        if core.tenants[name] != nil {
            throw ProtocolError(.invalidRequest, "tenant '\(name)' already exists")
        }
        let outcome = try store.createTenant(
            name: name, tier: tier.rawValue, uidRange: config.uidRange, now: Clock.now(),
            isUsable: sandboxEnabled ? UIDRange.unusedOnHost() : { _ in true })
        if case .created(let record) = outcome {
            do { try Workspace.create(root: config.workspaceRoot, tenant: name, owner: sandboxEnabled ? record.uid : nil) } catch {
                try? store.deleteTenant(name: name)
                throw ProtocolError(.internal, error.description)
            }
        }
        switch outcome {
        case .duplicate: throw ProtocolError(.invalidRequest, "tenant '\(name)' already exists")
        case .uidRangeExhausted:
            throw ProtocolError(
                .internal, "no free uid left in \(config.uidRange.lowerBound)-\(config.uidRange.upperBound) for a new tenant (widen the uid range)")
        case .created(let record):
            let t = core.addTenant(record, name: name, limits: limits(for: record))
            audit(tenant: name, caller: r, action: "tenant.create", rule: "operator", detail: "tier=\(tier.rawValue) uid=\(record.uid)")
            logger.info("tenant created", metadata: ["tenant": "\(name)", "tier": "\(tier.rawValue)", "uid": "\(record.uid)"])
            return view(t)
        }
    }

    // MARK: Jobs

    func submit(_ request: SubmitRequest, _ r: Responder) throws {
        // Every job belongs to a trace: the caller's traceparent, or a new one.
        var s = request
        let name = s.tenant
        try authorize(r, .submit(tenant: name), request: "submit")
        let t = try tenant(name)
        // From inside a job's sandbox: a sub-job of that job (nil: a root).
        let parent = try agentParent(r, tenant: name)
        // A sub-job without a traceparent of its own is a child span of the job that submitted it.
        if s.trace == nil, let p = parent, let trace = p.trace { s.trace = trace.child(spanID: TraceContext.spanID(forJob: p.id)) }
        if s.trace == nil { s.trace = TraceContext.generate() }
        if let key = s.idempotencyKey {
            // A resubmission returns the first job: no quota applies to it again.
            if let existing = try store.job(tenant: name, idempotencyKey: key) {
                // From inside a job, a key names a job of the caller's own tree or nothing.
                if let p = parent, let agent = r.agent, existing.treeRoot != p.treeRoot {
                    throw agentRefusal(r, agent, "submit", "idempotency key \(key.prefix(80)) belongs to a job of another tree")
                }
                let current = try activeOrStoredJob(existing.id)
                if s.options.stream { try streamExisting(current, r); return }
                if s.wait && !current.state.isFinal { addWaiter(existing.id, for: r) { r.job($0, existing: true) } } else { r.job(current, existing: true) }
                return
            }
        }
        switch core.admit(s, tenant: t, jobID: JobID.make(), parent: parent, isExecutable: PolicyRuntime.isExecutableInSandbox) {
        case .failure(let refusal):
            auditRefusal(
                tenant: name, caller: r, action: refusal.auditAction, rule: refusal.rule, request: "submit", detail: refusal.auditDetail,
                traceID: s.trace?.traceID)
            throw refusal.error
        case .success(let job):
            if let parent { auditSubJob(job, parent: parent, r) }
            // Accepted means committed: the reply and the dispatch follow the flush's commit.
            registerStream(job, s, r)
            commit.accepts.append(GroupCommit.PendingAccept(job: job, responder: r, wait: s.wait, stream: s.options.stream))
            scheduleFlush()
        }
    }

    /// A job's current view: from memory while it is queued or running, else from the store.
    func activeOrStoredJob(_ id: String) throws -> JobView {
        if let finished = recentJobs.finishedView(id) { return finished }
        if let tenant = recentJobs.tenant(id), let running = core.runningJob(id, tenant: tenant) { return running.view }
        guard JobID.isWellFormed(id), let stored = try store.job(id: id) else {
            throw ProtocolError(.unknownJob, "no job with id '\(id.prefix(80))'")
        }
        if let running = core.runningJob(id, tenant: stored.tenant) {
            recentJobs.keep(running.view, tenant: stored.tenant)
            return running.view
        }
        let view = stored.view
        recentJobs.keep(view, tenant: stored.tenant)
        return view
    }

    private func cancel(_ id: String, _ r: Responder) throws {
        let view = try activeOrStoredJob(id)
        try authorize(r, .submit(tenant: try jobTenant(view)), request: "job.cancel")
        if view.state.isFinal { r.job(view); return }
        let (outcome, actions) = core.cancel(id, tenant: try jobTenant(view))
        // The cancel is sent whether or not its caller may wait for the end: past the waits'
        // limits it hears the job as it is now (running, the cancel on its way), not an error.
        if outcome == .cancelSent { addWaiter(id, for: r, refused: { r.job(view) }) { r.job($0) } }
        perform(actions)
        switch outcome {
        case .canceledQueued:
            // Its end is recorded with this tick's writes: heard once committed (a queued job
            // is canceled once, so this wait is never refused).
            addWaiter(id, for: r, limited: false) { r.job($0) }
        case .cancelSent: break
        case .notActive: r.job(view)
        }
    }
}
