import ClawpenCore
import ClawpenPolicy
import ClawpenProtocol
import ClawpenWire
import Glibc

/// `clawpen status`: the supervisor, the router, and every tenant's worker, limits, usage and
/// how each limit is enforced right now (read back from the cgroup files where they exist).
extension Supervisor {
    func status(tenant name: TenantName?) throws(ProtocolError) -> JSONValue {
        let selected: [TenantState]
        if let name { selected = [try tenant(name)] } else { selected = core.tenants.keys.sorted().compactMap { core.tenants[$0] } }
        let now = Clock.monotonic()
        return .object([("supervisor", supervisorJSON()), ("tenants", .array(selected.map { tenantJSON($0, now: now) }))])
    }

    private func supervisorJSON() -> JSONValue {
        var sup = JSONObjectBuilder()
        sup.set("pid", Int(getpid()))
        sup.set("uptime_s", ((Clock.monotonic() - startedAt) * 1000).rounded() / 1000)
        sup.set("version", .string(ClawpenVersion.string))
        var cg = JSONObjectBuilder()
        cg.set("mode", .string(cgroup.mode.rawValue))
        cg.set("path", cgroup.path)
        cg.set("controllers", .array(cgroup.controllers.map(JSONValue.string)))
        cg.set("tenants_base", cgroups?.base)
        cg.set("enabled_controllers", .array((cgroups?.controllers.sorted() ?? []).map(JSONValue.string)))
        sup.set("cgroup", cg.value)
        sup.set("socket", .string(config.socketPath))
        var st = JSONObjectBuilder()
        st.set("path", store.path)
        // Group commits handed to the writer thread and not completed yet: above a few, the
        // disk is slow and submits wait for it (GroupCommit.swift).
        st.set("commits_in_flight", commit.inFlight.count)
        st.set("results_kept_uncommitted", commit.finishes.count)
        if writer.commitDelayMicros > 0 { st.set("test_commit_delay_ms", Int(writer.commitDelayMicros / 1000)) }
        sup.set("store", st.value)
        sup.set("egress", egressProxyStatus())
        sup.set("policies", policySourceDescription)
        sup.set("draining", core.draining)
        sup.set(
            "sandbox",
            .string(
                sandboxEnabled
                    ? "namespaces (mount, pid, ipc, uts, net, cgroup), pivot_root to the workspace, tenant uid, no capabilities, no_new_privs, seccomp"
                    : "off: the supervisor is not root, so jobs run unsandboxed with its identity"))
        sup.set("landlock_abi", HostEnforcement.landlockABI)
        sup.set(
            "warnings",
            .array(
                HostEnforcement.warnings(
                    controllers: cgroups?.controllers ?? [], sandboxed: sandboxEnabled,
                    disk: diskQuotas.support
                ).map(JSONValue.string)))
        sup.set("tenant_count", core.tenants.count)
        sup.set("workers", core.tenants.values.filter { $0.lifecycle.worker != nil }.count)
        sup.set("spare_workers", spares.count)
        if sandboxEnabled {
            sup.set(
                "worker_mounts",
                .string(
                    workerMountsFallback.map { "fallback: " + $0 }
                        ?? "the supervisor builds each new worker's mounts while the worker starts"))
        }
        // How a suspended tenant is frozen here.
        sup.set("suspend", .string(cgroups != nil ? FreezeMethod.cgroupFreeze.rawValue : FreezeMethod.stopSignals.rawValue))
        var router = JSONObjectBuilder()
        router.set("dispatch", .string(core.dispatchMode.rawValue))
        router.set("max_running", core.maxRunning)
        router.set("reserved_slots", core.reservedSlots)
        router.set("running", core.running)
        router.set("queued", core.tenants.values.reduce(0) { $0 + $1.queue.count })
        sup.set("router", router.value)
        var states = JSONObjectBuilder()
        for state in WorkerState.allCases { states.set(state.rawValue, core.tenants.values.filter { $0.state == state }.count) }
        sup.set("tenant_states", states.value)
        sup.set("clients", clientsJSON())
        return sup.value
    }

    /// The client connections and what is held for them against the budgets (ClientBudget).
    private func clientsJSON() -> JSONValue {
        let ledger = clients.ledger
        var o = JSONObjectBuilder()
        o.set("connected", ledger.connections)
        o.set("queued_bytes", ledger.queuedTotal)
        o.set("inbound_bytes", ledger.inboundTotal)
        o.set("peak_bytes", ledger.peakTotal)
        o.set("client_budget_bytes", ledger.budget.perClient)
        o.set("all_clients_budget_bytes", ledger.budget.allClients)
        // The largest reply the policies allow (a job's view with both streams full): a client
        // fetching it must fit in its budget.
        let largest = ClientBudget.largestReply(outputMaxBytes: policies.largestOutputMaxBytes)
        o.set("largest_reply_bytes", largest)
        if largest > ledger.budget.perClient {
            o.set(
                "warning",
                "a job's view may reach \(largest) bytes (output_max_bytes), more than --client-buffer-bytes (\(ledger.budget.perClient)): a client fetching it may be disconnected"
            )
        }
        var d = JSONObjectBuilder()
        for reason in ClientDisconnectReason.allCases { d.set(reason.rawValue, ledger.disconnects[reason] ?? 0) }
        o.set("disconnects", d.value)
        // JobWaiters.swift: the waits client connections hold, their limits, and the refusals.
        var w = JSONObjectBuilder()
        w.set("held", waiters.clientWaits)
        w.set("client_limit", waiters.limits.perClient)
        w.set("all_clients_limit", waiters.limits.allClients)
        w.set("refused", waiters.refusals)
        w.set("agent_held", waiters.agentWaitsHeld)
        o.set("waits", w.value)
        // AgentConnections: what tenants' jobs hold on their agent sockets.
        var a = JSONObjectBuilder()
        a.set("held", agent.connections.total)
        a.set("all_limit", agent.connections.allLimit)
        a.set("tenant_floor", agent.connections.floor)
        a.set("paused_tenants", agent.paused.count)
        a.set("refused", agent.connections.refused)
        o.set("agent_connections", a.value)
        // ControlConnections: the control socket's connections, per peer uid and for all.
        var c = JSONObjectBuilder()
        c.set("held", control.connections.total)
        c.set("limit", control.connections.all)
        c.set("per_uid_limit", control.connections.perUID)
        c.set("listener_paused", control.paused)
        c.set("refused_per_uid", control.connections.refusedPerUID)
        c.set("refused_all", control.connections.refusedAll)
        c.set(
            "top_uids",
            JSONValue.array(
                control.connections.topHolders(3).map { JSONValue.object([("uid", .int(Int64($0.uid))), ("held", .int(Int64($0.held)))]) }))
        o.set("control_connections", c.value)
        // Fairness between clients (LoopTicks.swift): how often a tick's budget ran out (clients
        // gave way) and how many connections wait in line now.
        if let ticks = loopTicks {
            var f = JSONObjectBuilder()
            f.set("tick_budget_us", Int(LoopTicks.budgetNanos / 1000))
            f.set("ticks_over_budget", Int(ticks.exhaustedTicks))
            f.set("connections_waiting_turn", clientTurns?.count ?? 0)
            // ClientPacing.swift: 0 when there is no limit.
            f.set("client_requests_per_second", Int(clientTurns?.pacing?.requestsPerSecond ?? 0))
            f.set("paced_requests", Int(ticks.pacedRequests))
            let recent = recentJobs.counts
            f.set("recent_finished_jobs", recent.finished)
            f.set("recent_finished_bytes", recent.finishedBytes)
            o.set("fairness", f.value)
        }
        return o.value
    }

    private func tenantJSON(_ t: TenantState, now: Double) -> JSONValue {
        let worker = t.lifecycle.worker.flatMap { workers[$0.id] }
        var o = JSONObjectBuilder()
        o.set("tenant", .string(t.name.value))
        o.set("tier", .string(t.record.tier))
        o.set("state", .string(t.state.rawValue))
        o.set("worker_pid", t.lifecycle.worker.map { Int($0.pid) })
        o.set("uptime_s", worker.map { ((now - $0.startedAt) * 1000).rounded() / 1000 })
        o.set("restarts", t.lifecycle.restarts)
        let c = t.finishedCounts
        var jobs = JSONObjectBuilder()
        jobs.set("queued", t.queue.count)
        jobs.set("running", t.runningCount)
        jobs.set("succeeded", c[.succeeded] ?? 0)
        // "failed" counts every unsuccessful end but a cancel; the kinds follow.
        let unsuccessful: [JobState] = [.failed, .timedOut, .oomKilled, .killed]
        jobs.set("failed", unsuccessful.reduce(0) { $0 + (c[$1] ?? 0) })
        jobs.set("timed_out", c[.timedOut] ?? 0)
        jobs.set("oom_killed", c[.oomKilled] ?? 0)
        jobs.set("killed", c[.killed] ?? 0)
        jobs.set("canceled", c[.canceled] ?? 0)
        jobs.set("rejected", c[.rejected] ?? 0)
        o.set("jobs", jobs.value)
        // While the worker lives, the limits are read back from its cgroup (what the kernel
        // holds), else they are the policy's.
        let inForce = worker.flatMap { _ in cgroups?.limitsInForce(t.name, t.limits) }
        var lim = JSONObjectBuilder()
        lim.set("memory_max", inForce?.memoryMax ?? Int64(t.limits.memoryMaxBytes))
        lim.set("pids_max", inForce?.pidsMax.map(Int.init) ?? t.limits.pidsMax)
        lim.set("cpu_max", .string(inForce?.cpuMax ?? t.limits.cpuMaxCgroupString))
        lim.set("disk_max", t.limits.diskMaxBytes)
        lim.set("inodes_max", t.limits.inodesMax)
        lim.set("max_concurrent_runs", t.limits.maxConcurrentRuns)
        lim.set("timeout_max_s", t.limits.timeoutMaxSeconds)
        lim.set("interactive_timeout_max_s", t.limits.interactiveTimeoutMaxSeconds)
        lim.set("output_max_bytes", t.limits.outputMaxBytes)
        lim.set("max_queued", t.limits.maxQueued)
        lim.set("jobs_per_minute", t.limits.jobsPerMinute)
        lim.set("cpu_seconds_per_hour", t.limits.cpuSecondsPerHour)
        lim.set("weight", t.limits.cpuWeight)
        lim.set("max_attempts", t.limits.maxAttempts)
        lim.set("crash_loop_max", t.limits.crashLoopMax)
        lim.set("crash_loop_window_s", t.limits.crashLoopWindowSeconds)
        lim.set("max_depth", t.limits.maxDepth)
        lim.set("tree_max_jobs", t.limits.treeMaxJobs)
        lim.set("tree_cpu_seconds", t.limits.treeCPUSeconds)
        lim.set("tree_timeout_s", t.limits.treeTimeoutSeconds)
        lim.set("agent_max_connections", t.limits.agentMaxConnections)
        lim.set("job_records_max", t.limits.jobRecordsMaxBytes)
        lim.set("max_queued_bytes", t.limits.maxQueuedBytes)
        o.set("limits", lim.value)
        // Its live job trees (those with sub-jobs; docs/subjobs.md).
        let trees = core.treeSummary(t)
        var tr = JSONObjectBuilder()
        tr.set("live", trees.live)
        tr.set("live_jobs", trees.jobs)
        tr.set("deepest", trees.deepest)
        tr.set("cpu_seconds", (trees.cpuSeconds * 1000).rounded() / 1000)
        o.set("trees", tr.value)
        // Where the tenant stands against its router quotas.
        core.sampleCPUForStatus(t)
        var q = JSONObjectBuilder()
        q.set("queued", t.queue.count + t.pendingAccepts)
        q.set("queued_bytes", t.queuedBytes + t.pendingBytes)
        q.set("running", t.runningCount)
        q.set("jobs_per_minute_available", core.tokensAvailable(t))
        q.set("cpu_seconds_last_hour", (Double(t.cpu.usedMicros(now: now)) / 1000).rounded() / 1000)
        q.set("cpu_measured_by", .string(t.cgroupCPUSeen != nil ? "cgroup" : "rusage"))
        q.set("agent_connections", agent.connections.held(by: t.name.value))
        // RecordsBudget.swift: measured by the last pass, plus what finished since.
        q.set("job_records_bytes", tenantData.records.ledger.held(by: t.name.value))
        o.set("quotas", q.value)
        // Submits refused since the daemon started, by quota or rule kind: who is in trouble.
        o.set("refused", .object(t.refusals.sorted { $0.key < $1.key }.map { ($0.key, .int(Int64($0.value))) }))
        // Read from the tenant's cgroup while it has one; null when there is nothing to read.
        var usage = JSONObjectBuilder()
        let live = worker != nil
        usage.set("memory_current", live ? cgroups?.memoryCurrent(t.name) : nil)
        usage.set("pids_current", live ? cgroups?.pidsCurrent(t.name) : nil)
        usage.set("cpu_usec", live ? cgroups?.cpuUsageMicros(t.name) : nil)
        let disk = diskQuotas.read(tenant: t.name, projectID: t.record.uid)
        usage.set("disk_bytes", disk.map { Int64($0.bytesUsed) })
        usage.set("disk_inodes", disk.map { Int64($0.inodesUsed) })
        o.set("usage", usage.value)
        // What holds right now: without cgroup controllers, RLIMIT_AS per job (memory) and
        // RLIMIT_NPROC on the tenant's uid (pids) in the sandbox; nothing limits cpu.max.
        var enf = JSONObjectBuilder()
        func how(_ limit: String, fallback: Bool) -> JSONValue {
            // cgroup only when the tenant's cgroup file holds the policy's value right now (or,
            // with no worker, when the controller is there to hold it at the next start).
            if let inForce {
                if inForce.enforced.contains(limit) { return .string("cgroup") }
            } else if worker == nil && cgroups?.controllers.contains(limit) == true {
                return .string("cgroup")
            }
            // The rlimit fallback is planned only where the controller is missing.
            let controller = cgroups?.controllers.contains(limit) == true
            // Memory's fallback is RLIMIT_AS per job process: not a limit of the tenant.
            return .string(fallback && sandboxEnabled && !controller ? (limit == "memory" ? "per-process-rlimit" : "rlimit") : "none")
        }
        enf.set("memory", how("memory", fallback: true))
        enf.set("pids", how("pids", fallback: true))
        enf.set("cpu", how("cpu", fallback: false))
        enf.set("seccomp", .string(sandboxEnabled && seccompPrograms[t.limits.seccompProfile] != nil ? t.limits.seccompProfile : "none"))
        enf.set("job_isolation", .string(HostEnforcement.jobIsolation(sandboxed: sandboxEnabled)))
        enf.set("disk", .string(sandboxEnabled ? diskQuotas.enforcement : "none"))
        enf.set("timeout", .string("worker"))
        enf.set("output", .string("worker"))
        o.set("enforcement", enf.value)
        o.set("last_error", t.lifecycle.lastError.map { "\($0)" })
        o.set("last_error_detail", t.lifecycle.lastError.map(Self.failureJSON) ?? .null)
        o.set("quarantine", quarantineJSON(t, now: now))
        o.set("suspension", suspensionJSON(t))
        o.set("egress", egressStatus(t))
        return o.value
    }

    /// The failure's fields, kept apart for scripts: kind, stage, errno.
    static func failureJSON(_ f: WorkerFailure) -> JSONValue {
        var o = JSONObjectBuilder()
        o.set("kind", .string(f.kind.rawValue))
        o.set("stage", .string(f.stage))
        o.set("errno", f.errno.map { Int($0) })
        o.set("errno_text", f.errnoText)
        o.set("detail", f.detail.isEmpty ? nil : f.detail)
        return o.value
    }

    private func quarantineJSON(_ t: TenantState, now: Double) -> JSONValue {
        guard let q = t.lifecycle.quarantine else { return .null }
        var o = JSONObjectBuilder()
        o.set("reason", .string(q.reason))
        o.set("since_s_ago", ((now - q.since) * 1000).rounded() / 1000)
        o.set("retry_in_s", (max(0, q.retryAt - now) * 1000).rounded() / 1000)
        o.set("failures_in_window", q.failuresInWindow)
        o.set("lift", .string("clawpen tenant resume \(t.name)"))
        return o.value
    }
}

extension PolicySet {
    /// The largest output_max_bytes of any tier, tenant policy or set-quota override.
    var largestOutputMaxBytes: Int {
        let tiers = [free, pro, enterprise].map(\.outputMaxBytes)
        let overrides = (Array(tenantOverrides.values) + Array(quotaOverrides.values)).compactMap(\.outputMaxBytes)
        return (tiers + overrides).max() ?? 0
    }
}
