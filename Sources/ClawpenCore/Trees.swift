import ClawpenPolicy
import ClawpenProtocol
import ClawpenStore
import ClawpenWire

/// One job tree while any of its jobs is queued or running: a job submitted from outside (the
/// root) and every job submitted from inside its sandbox, however deep (docs/subjobs.md).
///
/// A tree exists in the core from its first sub-job on: a job that never submits is bounded by
/// its own timeout and the tenant's quotas, as before sub-jobs, and costs the core nothing more.
public struct JobTree: Sendable {
    public let root: String
    public let tenant: TenantName
    /// Wall-clock seconds of the root's acceptance: `tree_timeout_s` counts from there.
    public let createdAt: Double
    /// Jobs admitted to the tree, the root included, ended or not (`tree_max_jobs`).
    public internal(set) var jobs: Int
    /// Its jobs still queued or running.
    public internal(set) var live: Set<String>
    /// Each live job's parent (the root has none).
    var parent: [String: String] = [:]
    public internal(set) var deepest: Int
    /// CPU of its ended jobs.
    public internal(set) var endedCPUMicros: Int64 = 0
    /// The last CPU reading of each running job (its cgroup), kept for its end: a job's rusage
    /// misses what its orphaned processes used, its cgroup does not.
    var sampled: [String: Int64] = [:]
    /// The last total of `treeCPUMicros` and when (monotonic): admission takes it while fresh.
    var cpuTotal: Int64 = 0
    var cpuTotalAt = -Double.infinity
    /// Set once the whole tree is being canceled (a budget ran out, the root was canceled).
    public internal(set) var canceling: ProtocolError?

    /// The live jobs below `id`, children before their children.
    func descendants(of id: String) -> [String] {
        var children: [String: [String]] = [:]
        for (child, p) in parent { children[p, default: []].append(child) }
        var out: [String] = []
        var frontier = [id]
        while let next = frontier.popLast() {
            for c in (children[next] ?? []).sorted() {
                out.append(c)
                frontier.append(c)
            }
        }
        return out
    }
}

/// A tenant's live trees for status: how many, the deepest, their CPU.
public struct TreeSummary: Sendable, Equatable {
    public var live: Int
    public var jobs: Int
    public var deepest: Int
    public var cpuSeconds: Double
}

extension Core {
    static let treeCheckMs = 200

    // MARK: Admission

    /// The tree rules for a job that `parent` (a running job of `t`) submits from inside: its
    /// depth, the tree's size, CPU and age. nil: within every limit.
    func treeRefusal(_ t: TenantState, parent: JobRecord, now: Double) -> QuotaRefusal? {
        let limits = t.limits
        let tier = t.record.tier
        let depth = parent.depth + 1
        if depth > limits.maxDepth {
            return QuotaRefusal(
                quota: "tree_max_depth", limit: "\(limits.maxDepth)", current: "\(depth)", retryAfterMs: nil,
                message:
                    "job \(parent.id) is at depth \(parent.depth) of its tree; a sub-job of it would be at depth \(depth), tenant '\(t.name)'s max_depth is \(limits.maxDepth) (quota tree_max_depth, tier \(tier)); waiting does not help"
            )
        }
        let tree = t.trees[parent.treeRoot]
        if let reason = tree?.canceling {
            return QuotaRefusal(
                quota: reason.details["rule"]?.stringValue ?? "tree_canceled", limit: "-", current: "-", retryAfterMs: nil,
                message: "the tree of job \(parent.treeRoot) is being canceled: \(reason.message)")
        }
        let jobs = tree?.jobs ?? 1
        if jobs >= limits.treeMaxJobs {
            return QuotaRefusal(
                quota: "tree_max_jobs", limit: "\(limits.treeMaxJobs)", current: "\(jobs)", retryAfterMs: nil,
                message:
                    "the tree of job \(parent.treeRoot) already has \(jobs) jobs, tenant '\(t.name)'s tree_max_jobs is \(limits.treeMaxJobs) (quota tree_max_jobs, tier \(tier)); waiting does not help"
            )
        }
        // A reading up to 100 ms old will do here (the tree timer reads afresh every 200 ms):
        // a tree that submits in a loop should not pay a cgroup read per job per submit.
        let used = Double(treeCPUMicros(t, root: parent.treeRoot, alsoRunning: parent, maxAge: 0.1)) / 1e6
        if used >= limits.treeCPUSeconds {
            return QuotaRefusal(
                quota: "tree_cpu_seconds", limit: formatSeconds(limits.treeCPUSeconds), current: formatSeconds(used), retryAfterMs: nil,
                message:
                    "the tree of job \(parent.treeRoot) used \(formatSeconds(used)) CPU seconds, tenant '\(t.name)'s tree_cpu_seconds is \(formatSeconds(limits.treeCPUSeconds)) (quota tree_cpu_seconds, tier \(tier))"
            )
        }
        let rootCreated = tree?.createdAt ?? (parent.parentID == nil ? parent.createdAt : clock.wall())
        let age = clock.wall() - rootCreated
        if age >= limits.treeTimeoutSeconds {
            return QuotaRefusal(
                quota: "tree_timeout_s", limit: formatSeconds(limits.treeTimeoutSeconds), current: formatSeconds(age), retryAfterMs: nil,
                message:
                    "the tree of job \(parent.treeRoot) is \(formatSeconds(age)) s old, tenant '\(t.name)'s tree_timeout_s is \(formatSeconds(limits.treeTimeoutSeconds)) (quota tree_timeout_s, tier \(tier))"
            )
        }
        return nil
    }

    /// An admitted sub-job of `parent` takes its place in the tree (made now for a root's first
    /// sub-job), before its commit, so that the next submit of the same tick counts it.
    func reserveInTree(_ job: inout JobRecord, _ t: TenantState, parent: JobRecord) {
        let root = parent.treeRoot
        job.parentID = parent.id
        job.rootID = root
        job.depth = parent.depth + 1
        if t.trees[root] == nil {
            // The parent is the root (a deeper parent has a tree already): a tree of one so far.
            var tree = JobTree(root: root, tenant: t.name, createdAt: parent.createdAt, jobs: 1, live: [root], deepest: 0)
            if let p = parent.parentID { tree.parent[parent.id] = p }
            t.trees[root] = tree
        }
        t.trees[root]?.jobs += 1
    }

    /// A sub-job whose commit failed gives its place back.
    func unreserveInTree(_ job: JobRecord, _ t: TenantState) {
        guard job.parentID != nil, var tree = t.trees[job.treeRoot] else { return }
        tree.jobs = max(1, tree.jobs - 1)
        t.trees[job.treeRoot] = tree
    }

    /// A committed sub-job joins its tree's live jobs; false when the tree is gone or being
    /// canceled (the root ended in the meantime): the job then ends canceled at once.
    func joinTree(_ job: JobRecord, _ t: TenantState) -> Bool {
        guard let p = job.parentID else { return true }
        guard var tree = t.trees[job.treeRoot], tree.canceling == nil, tree.live.contains(p) || tree.live.contains(job.treeRoot) else {
            let why = t.trees[job.treeRoot]?.canceling?.message ?? "its tree's root \(job.treeRoot) has ended"
            finish(job, t, state: .canceled, result: JobResult(error: Self.treeCancel("tree_root_ended", "canceled before it started: \(why)")))
            return false
        }
        tree.live.insert(job.id)
        tree.parent[job.id] = p
        tree.deepest = max(tree.deepest, job.depth)
        t.trees[job.treeRoot] = tree
        if !treeTimerArmed {
            treeTimerArmed = true
            out.append(.arm(.treeBudgets, afterMs: Self.treeCheckMs))
        }
        return true
    }

    /// After a restart: jobs of a tree that were left queued or running form it again. A tree
    /// whose root had ended is not run on: its jobs end canceled.
    func rejoinTrees(_ jobs: [JobRecord]) -> Set<String> {
        var orphans: Set<String> = []
        let byID = Dictionary(jobs.map { ($0.id, $0) }, uniquingKeysWith: { a, _ in a })
        for job in jobs where job.parentID != nil {
            guard let t = tenants[job.tenant] else { continue }
            guard byID[job.treeRoot] != nil else { orphans.insert(job.id); continue }
            if t.trees[job.treeRoot] == nil {
                let root = byID[job.treeRoot]
                t.trees[job.treeRoot] = JobTree(
                    root: job.treeRoot, tenant: t.name, createdAt: root?.createdAt ?? clock.wall(), jobs: 1, live: [job.treeRoot], deepest: 0)
            }
            guard var tree = t.trees[job.treeRoot] else { continue }
            tree.jobs += 1
            tree.live.insert(job.id)
            tree.parent[job.id] = job.parentID
            tree.deepest = max(tree.deepest, job.depth)
            t.trees[job.treeRoot] = tree
        }
        if !treeTimerArmed, tenants.values.contains(where: { !$0.trees.isEmpty }) {
            treeTimerArmed = true
            out.append(.arm(.treeBudgets, afterMs: Self.treeCheckMs))
        }
        return orphans
    }

    // MARK: Ends and cancels

    /// A job of `t` reached its final state: its tree counts its CPU; a root that ends takes
    /// its running descendants with it.
    func treeJobEnded(_ job: JobRecord, _ t: TenantState, cpuMs: Double?) {
        guard var tree = t.trees[job.treeRoot], tree.live.contains(job.id) else { return }
        tree.live.remove(job.id)
        tree.parent[job.id] = nil
        let rusage = Int64((cpuMs ?? 0) * 1000)
        tree.endedCPUMicros += max(rusage, tree.sampled.removeValue(forKey: job.id) ?? 0)
        t.trees[job.treeRoot] = tree
        if job.id == tree.root && !tree.live.isEmpty {
            cancelTree(
                tree.root, t,
                reason: Self.treeCancel(
                    "tree_root_ended", "canceled: the root of its tree, job \(tree.root), ended (\(job.state.rawValue)); a root's end ends its tree"),
                audit: false)
        }
        if let tree = t.trees[job.treeRoot], tree.live.isEmpty { t.trees[job.treeRoot] = nil }
    }

    /// Cancels every live job of the tree: queued ones end at once, running ones are killed by
    /// their worker and end `canceled` with `reason` as their error.
    func cancelTree(_ root: String, _ t: TenantState, reason: ProtocolError, audit: Bool) {
        guard var tree = t.trees[root] else { return }
        if tree.canceling == nil { tree.canceling = reason }
        t.trees[root] = tree
        if audit {
            out.append(
                .audit(
                    AuditEvent(
                        at: clock.wall(), tenant: t.name.value, callerUID: nil, action: "tree.canceled",
                        rule: reason.details["rule"]?.stringValue, detail: "root \(root): \(reason.message)")))
        }
        var ids = [root] + tree.descendants(of: root)
        ids.removeAll { !tree.live.contains($0) }
        for id in ids { cancelOne(id, t, reason: reason) }
    }

    /// Cancels `id` and, first, every live job below it in its tree.
    func cancelDescendants(of id: String, root: String, _ t: TenantState) {
        guard let tree = t.trees[root] else { return }
        let reason = Self.treeCancel("tree_parent_canceled", "canceled: job \(id), above it in its tree, was canceled")
        for d in tree.descendants(of: id) where tree.live.contains(d) { cancelOne(d, t, reason: reason) }
    }

    private func cancelOne(_ id: String, _ t: TenantState, reason: ProtocolError) {
        if let job = t.takeQueued(id: id, router) {
            finish(job, t, state: .canceled, result: JobResult(error: reason))
        } else if let w = t.lifecycle.worker, t.inFlight[id] != nil, !t.cancelRequested.contains(id) {
            t.cancelRequested.insert(id)
            t.cancelReasons[id] = reason
            out.append(.send(w, .cancel(jobID: id)))
        }
    }

    /// The error a job canceled by a tree rule ends with. The message names the rule too: the
    /// store keeps a job's error code and message, not its details.
    static func treeCancel(_ rule: String, _ message: String) -> ProtocolError {
        ProtocolError(.quotaExceeded, "\(message) (rule \(rule))", details: ["rule": .string(rule), "quota": .string(rule)])
    }

    // MARK: Budgets while trees run

    /// CPU of the tree so far: its ended jobs, and each running job's cgroup (kept as its last
    /// reading). `alsoRunning` counts a job that has no tree yet (a root's first sub-job).
    func treeCPUMicros(_ t: TenantState, root: String, alsoRunning: JobRecord? = nil, maxAge: Double = 0) -> Int64 {
        guard var tree = t.trees[root] else {
            guard let job = alsoRunning, t.inFlight[job.id] != nil else { return 0 }
            return probe.jobCPUMicros(t.name, jobID: job.id) ?? 0
        }
        let now = clock.monotonic()
        if maxAge > 0, now - tree.cpuTotalAt <= maxAge { return max(tree.cpuTotal, tree.endedCPUMicros) }
        var total = tree.endedCPUMicros
        for id in tree.live where t.inFlight[id] != nil {
            if let us = probe.jobCPUMicros(t.name, jobID: id) { tree.sampled[id] = max(us, tree.sampled[id] ?? 0) }
            total += tree.sampled[id] ?? 0
        }
        tree.cpuTotal = total
        tree.cpuTotalAt = now
        t.trees[root] = tree
        return total
    }

    /// The tree timer: every live tree against its CPU and time budgets; one over is canceled as
    /// a whole and audited.
    func checkTreeBudgets() {
        treeTimerArmed = false
        let wall = clock.wall()
        for t in tenants.values {
            for root in t.trees.keys.sorted() {
                guard let tree = t.trees[root], tree.canceling == nil else { continue }
                let limits = t.limits
                let used = Double(treeCPUMicros(t, root: root)) / 1e6
                if used >= limits.treeCPUSeconds {
                    cancelTree(
                        root, t,
                        reason: Self.treeCancel(
                            "tree_cpu_seconds",
                            "canceled with its whole tree: the tree of job \(root) used \(formatSeconds(used)) CPU seconds, tenant '\(t.name)'s tree_cpu_seconds is \(formatSeconds(limits.treeCPUSeconds))"
                        ), audit: true)
                    continue
                }
                let age = wall - tree.createdAt
                if age >= limits.treeTimeoutSeconds {
                    cancelTree(
                        root, t,
                        reason: Self.treeCancel(
                            "tree_timeout_s",
                            "canceled with its whole tree: the tree of job \(root) is \(formatSeconds(age)) s old, tenant '\(t.name)'s tree_timeout_s is \(formatSeconds(limits.treeTimeoutSeconds))"
                        ), audit: true)
                }
            }
        }
        if tenants.values.contains(where: { !$0.trees.isEmpty }) {
            treeTimerArmed = true
            out.append(.arm(.treeBudgets, afterMs: Self.treeCheckMs))
        }
    }

    // MARK: A parent that waits lends its slot

    /// A running job of `tenant` waits (a submit that waits or streams, `job.wait`) for `target`,
    /// a job of its own tree that has not ended: while it waits, it does not count against the
    /// tenant's max_concurrent_runs nor the host's running limit, so that the job it waits for
    /// can start even when the waiting job holds the tenant's last slot (no deadlock however
    /// deep the tree). The wait ends with `target`'s end (before anything else may start in the
    /// slot), or when the waiter ends. Answers whether a slot was lent.
    public func agentWaitBegan(_ tenant: TenantName, waiter: String, target: String) -> (Bool, [Action]) {
        guard let t = tenants[tenant], t.inFlight[waiter] != nil, waiter != target,
            t.inFlight[target] != nil || t.queue.first(where: { $0.id == target }) != nil
        else { return (false, []) }
        t.lentSlots[waiter, default: 0] += 1
        t.lendsByTarget[target, default: []].append(waiter)
        if t.lentSlots[waiter] == 1 { router.ended() }
        dispatch(t)
        return (true, take())
    }

    /// A wait that lent `waiter`'s slot was given up before `target` ended (the agent's
    /// connection closed): the waiter counts again, as if its target had ended. Without this a
    /// job could wait, hang up and go on running in a slot it lent until the target ended.
    /// Nothing happens when that lend is gone already (the target or the waiter ended).
    public func agentWaitEnded(_ tenant: TenantName, waiter: String, target: String) {
        guard let t = tenants[tenant], var waiters = t.lendsByTarget[target], let i = waiters.firstIndex(of: waiter) else { return }
        waiters.remove(at: i)
        t.lendsByTarget[target] = waiters.isEmpty ? nil : waiters
        returnLend(of: waiter, t)
    }

    /// Whether `waiter` still lends its slot while it waits for `target` (the lend ends with
    /// the target, the waiter, or `agentWaitEnded`).
    public func isLending(_ tenant: TenantName, waiter: String, target: String) -> Bool {
        tenants[tenant]?.lendsByTarget[target]?.contains(waiter) ?? false
    }

    /// `target` ended: the jobs that waited for it count again (those still running).
    func endLends(for target: String, _ t: TenantState) {
        guard let waiters = t.lendsByTarget.removeValue(forKey: target) else { return }
        for waiter in waiters { returnLend(of: waiter, t) }
    }

    private func returnLend(of waiter: String, _ t: TenantState) {
        guard let n = t.lentSlots[waiter] else { return }
        if n > 1 {
            t.lentSlots[waiter] = n - 1
        } else {
            t.lentSlots[waiter] = nil
            if t.inFlight[waiter] != nil { router.reacquired() }
        }
    }

    /// The run slots of jobs that left their worker: a job whose slot is lent gave it back already.
    func releaseRunSlots(_ t: TenantState, _ ids: [String]) {
        var n = 0
        for id in ids where t.lentSlots.removeValue(forKey: id) == nil { n += 1 }
        router.ended(n)
    }

    // MARK: Views

    /// The tenant's live trees (those with sub-jobs), for status.
    public func treeSummary(_ t: TenantState) -> TreeSummary {
        var s = TreeSummary(live: 0, jobs: 0, deepest: 0, cpuSeconds: 0)
        for root in t.trees.keys {
            guard let tree = t.trees[root] else { continue }
            s.live += 1
            s.jobs += tree.live.count
            s.deepest = max(s.deepest, tree.deepest)
            s.cpuSeconds += Double(treeCPUMicros(t, root: root)) / 1e6
        }
        return s
    }

    /// CPU seconds the live tree of `root` used so far (0 when there is none).
    public func treeCPUSeconds(_ tenant: TenantName, root: String) -> Double {
        guard let t = tenants[tenant] else { return 0 }
        return Double(treeCPUMicros(t, root: root)) / 1e6
    }

    /// The live tree whose root is `root`, if any.
    public func tree(_ tenant: TenantName, root: String) -> JobTree? { tenants[tenant]?.trees[root] }
}
