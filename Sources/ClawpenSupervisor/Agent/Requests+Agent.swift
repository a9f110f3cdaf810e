import ClawpenCore
import ClawpenPolicy
import ClawpenProtocol
import ClawpenStore
import ClawpenWire

/// The agent principal (docs/subjobs.md): a job calling from inside its sandbox may submit
/// sub-jobs and follow, wait for, cancel and talk to the jobs of its own tree, and use its
/// tenant's files. Nothing else: no operator request, no other tenant, no other tree. Every
/// refusal says `principal agent`, in the reply and in the audit.
extension Supervisor {
    /// The requests a job may make, by wire type.
    static let agentRequests: Set<String> = [
        "ping", "submit", "job.get", "job.wait", "job.cancel", "job.tree", "job.attach", "job.detach", "job.input",
    ]

    func handleAgent(_ request: Request, _ r: Responder, _ agent: AgentCaller) {
        do {
            guard let jobID = agent.jobID else {
                throw agentRefusal(r, agent, request.typeName, agent.unidentified + "; it may make no request")
            }
            guard let me = core.runningJob(jobID, tenant: agent.tenant) else {
                throw agentRefusal(r, agent, request.typeName, "job \(jobID), which opened this connection, is no longer running")
            }
            let type = request.typeName
            let isFile: Bool
            if case .file = request { isFile = true } else { isFile = false }
            guard Self.agentRequests.contains(type) || isFile else {
                throw agentRefusal(
                    r, agent, type,
                    "a job may only submit, get, wait for, cancel, attach to and write to jobs of its own tree, and use its tenant's files (\(type) is not among them)"
                )
            }
            switch request {
            case .ping:
                r.reply(
                    "pong",
                    [
                        ("version", .string(ClawpenVersion.string)), ("principal", .string("agent")),
                        ("tenant", .string(agent.tenant.value)), ("job_id", .string(jobID)),
                    ])
            case .submit(let s):
                guard s.tenant == agent.tenant else {
                    throw agentRefusal(r, agent, type, "job \(jobID) of tenant '\(agent.tenant)' may not submit for tenant '\(s.tenant)'")
                }
                try submit(s, r)
            case .jobGet(let id), .jobWait(let id), .jobCancel(let id), .jobTree(let id):
                try requireOwnTree(id, me, agent, r, type)
                if case .jobWait = request {
                    let view = try activeOrStoredJob(id)
                    if view.state.isFinal {
                        r.job(view)
                    } else {
                        if addWaiter(id, for: r, { r.job($0) }) { lendWhileAgentWaits(r, for: id) }
                    }
                    return
                }
                handleAny(request, r)
            case .runtime(let rr):
                if let id = rr.jobID { try requireOwnTree(id, me, agent, r, type) }
                handleAny(request, r)
            case .file(let c):
                if let t = c.tenant, t != agent.tenant {
                    throw agentRefusal(r, agent, type, "job \(jobID) of tenant '\(agent.tenant)' may not use tenant '\(t)'s files")
                }
                handleAny(request, r)
            default:
                throw agentRefusal(r, agent, type, "\(type) is not a request a job may make")
            }
        } catch let e as ProtocolError {
            r.fail(e)
        } catch {
            r.fail(ProtocolError(.internal, "\(error)"))
        }
    }

    /// `authorize` for the agent principal: its own tenant's job and file requests only, never
    /// an operator's.
    func authorizeAgent(_ r: Responder, _ agent: AgentCaller, _ action: AccessAction, request: String) throws(ProtocolError) {
        switch action {
        case .submit(let tenant) where tenant == agent.tenant && agent.jobID != nil:
            return
        case .submit(let tenant):
            throw agentRefusal(r, agent, request, "a job of tenant '\(agent.tenant)' may not act for tenant '\(tenant)'")
        case .operator(let command):
            throw agentRefusal(r, agent, request, "\(command) is an operator's command, and a job is never an operator")
        }
    }

    /// The calling job, when a submit comes from inside a sandbox: its sub-job's parent.
    func agentParent(_ r: Responder, tenant: TenantName) throws(ProtocolError) -> JobRecord? {
        guard let agent = r.agent else { return nil }
        guard let id = agent.jobID, let job = core.runningJob(id, tenant: tenant) else {
            throw agentRefusal(r, agent, "submit", "the calling job is not running")
        }
        return job
    }

    /// `id` must be a job of the caller's tree (same tenant, same root).
    private func requireOwnTree(_ id: String, _ me: JobRecord, _ agent: AgentCaller, _ r: Responder, _ type: String) throws {
        let view: JobView
        do { view = try activeOrStoredJob(id) } catch let e as ProtocolError where e.code == .unknownJob {
            throw agentRefusal(r, agent, type, "job \(id.prefix(80)) is not in the tree of job \(me.id)")
        }
        guard view.tenant == agent.tenant.value, (view.rootID ?? view.id) == me.treeRoot else {
            throw agentRefusal(r, agent, type, "job \(id.prefix(80)) is not in the tree of job \(me.id) (root \(me.treeRoot))")
        }
    }

    /// A refusal of the agent principal: audited, and thrown as permission_denied.
    func agentRefusal(_ r: Responder, _ agent: AgentCaller, _ request: String, _ why: String) -> ProtocolError {
        let job = agent.jobID.map { "job \($0)" } ?? "an unidentified caller"
        auditRefusal(
            tenant: agent.tenant, caller: r, action: "permission.denied", rule: "principal agent", request: request, detail: "\(request) by \(job): \(why)")
        return ProtocolError(
            .permissionDenied, "\(request): refused for principal agent (\(job) of tenant '\(agent.tenant)'): \(why)",
            details: ["rule": .string("principal agent"), "principal": .string("agent")])
    }

    /// Every sub-job is in the audit with its parent.
    func auditSubJob(_ job: JobRecord, parent: JobRecord, _ r: Responder) {
        audit(
            tenant: job.tenant, caller: r, action: "job.subjob", rule: nil,
            detail:
                "job \(job.id) submitted by job \(parent.id) (root \(job.treeRoot), depth \(job.depth)): \(job.argv.first.map { String($0.prefix(200)) } ?? "")",
            traceID: job.trace?.traceID)
    }

    /// A job that waits for a job of its tree (a submit that waits or streams, job.wait) lends
    /// its run slot until that job ends (the core's rule: no deadlock on max_concurrent_runs).
    func lendWhileAgentWaits(_ r: Responder, for target: String) {
        guard let agent = r.agent, let waiter = agent.jobID else { return }
        let (lent, actions) = core.agentWaitBegan(agent.tenant, waiter: waiter, target: target)
        if lent {
            // The core says which lends still stand (each ends with its target, whichever way
            // the connection heard of it): those that ended are forgotten here as new ones come.
            let key = ObjectIdentifier(r.channel)
            var lends = agentLends[key] ?? []
            lends.removeAll { !core.isLending($0.tenant, waiter: $0.waiter, target: $0.target) }
            lends.append(AgentLend(tenant: agent.tenant, waiter: waiter, target: target))
            agentLends[key] = lends
        }
        perform(actions)
    }

    /// The connection closed with waits unanswered: their jobs count again (ClawpenCore,
    /// `agentWaitEnded`), so that a job cannot wait, hang up and run on in a lent slot.
    func agentConnectionGone(_ key: ObjectIdentifier) {
        guard let lends = agentLends.removeValue(forKey: key) else { return }
        for l in lends { core.agentWaitEnded(l.tenant, waiter: l.waiter, target: l.target) }
    }

    // MARK: job.tree

    /// The tree of `id`: its root and every job below it, from the store and, for running jobs,
    /// from memory.
    func jobTree(_ id: String, _ r: Responder) throws {
        let view = try activeOrStoredJob(id)
        let tenant = try jobTenant(view)
        try authorize(r, .submit(tenant: tenant), request: "job.tree")
        let root = view.rootID ?? view.id
        let jobs = try store.jobTree(rootID: root).map { stored in core.runningJob(stored.id, tenant: tenant)?.view ?? stored.view }
        var fields: [(String, JSONValue)] = [("root_id", .string(root)), ("jobs", .array(jobs.map(\.json)))]
        if let live = core.tree(tenant, root: root) {
            fields.append(("live", .int(Int64(live.live.count))))
            fields.append(("cpu_seconds", .double(core.treeCPUSeconds(tenant, root: root))))
            fields.append(("canceling", live.canceling.map { $0.json } ?? .null))
        }
        r.reply("tree", fields)
    }
}

/// A run slot lent by an agent's wait: `waiter`'s, while it waits for `target`.
struct AgentLend {
    let tenant: TenantName
    let waiter: String
    let target: String
}
