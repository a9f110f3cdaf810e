import ClawpenCore
import ClawpenProtocol
import ClawpenStore
import ClawpenWire
import Prometheus

/// `GET /metrics` and `clawpen metrics`: the state-derived series brought up to date, then the
/// registry's text. Runs on the event loop.
extension Supervisor {
    func metricsText() -> [UInt8] {
        let m = metrics
        let name = SupervisorMetrics.name
        var workersByState: [WorkerState: Int] = [:]
        var running = 0, queued = 0
        for t in core.tenants.values {
            let labels = [("tenant", t.name.value)]
            workersByState[t.state, default: 0] += 1
            running += t.runningCount
            queued += t.queue.count
            m.setGauge(name("tenant_jobs_queued", "", "Jobs of the tenant waiting for a slot."), labels: labels, Double(t.queue.count))
            m.setGauge(name("tenant_jobs_running", "", "Jobs of the tenant running now."), labels: labels, Double(t.runningCount))
            for (rule, n) in t.refusals {
                m.syncCounter(
                    name("refusals", "total", "Submits refused since the daemon started, by the rule or quota that refused them."),
                    labels: [("tenant", t.name.value), ("rule", rule)], total: Int64(n))
            }
            m.syncCounter(
                name("worker_restarts", "total", "Times the tenant's worker was started again after it died."), labels: labels,
                total: Int64(t.lifecycle.restarts))
            // The kernel's figures while the tenant has a worker (and so a cgroup).
            guard t.lifecycle.worker != nil, let cgroups else { continue }
            if let bytes = cgroups.memoryCurrent(t.name) {
                m.setGauge(name("tenant_memory", "bytes", "memory.current of the tenant's cgroup."), labels: labels, Double(bytes))
            }
            if let pids = cgroups.pidsCurrent(t.name) {
                m.setGauge(name("tenant_pids", "", "pids.current of the tenant's cgroup."), labels: labels, Double(pids))
            }
            if let usec = cgroups.cpuUsageMicros(t.name) {
                m.syncCounter(
                    name("tenant_cpu_seconds", "total", "CPU time of the tenant's cgroup (cpu.stat usage_usec, in seconds)."), labels: labels,
                    total: usec, scale: 1e-6)
            }
        }
        for state in WorkerState.allCases {
            m.setGauge(
                name("workers", "", "Tenants by their worker's state (idle: no process)."), labels: [("state", state.rawValue)],
                Double(workersByState[state] ?? 0))
        }
        m.setGauge(name("jobs_running", "", "Jobs running now, all tenants."), labels: [], Double(running))
        m.setGauge(name("jobs_queued", "", "Jobs waiting for a slot, all tenants."), labels: [], Double(queued))
        m.setGauge(name("tenants", "", "Tenants known to the daemon."), labels: [], Double(core.tenants.count))
        m.setGauge(name("spare_workers", "", "Workers started ahead of need for new tenants."), labels: [], Double(spares.count))
        let ledger = clients.ledger
        for reason in ClientDisconnectReason.allCases {
            m.syncCounter(
                name("client_disconnects", "total", "Client connections closed by the daemon for holding too many bytes, by the budget they broke."),
                labels: [("reason", reason.rawValue)], total: Int64(ledger.disconnects[reason] ?? 0))
        }
        m.setGauge(name("clients_connected", "", "Client connections open now (control and agent sockets)."), labels: [], Double(ledger.connections))
        m.setGauge(
            name("client_queued", "bytes", "Bytes of replies and output queued for clients that their sockets have not taken yet."), labels: [],
            Double(ledger.queuedTotal))
        m.setGauge(
            name("client_inbound", "bytes", "Bytes of the request frames clients are in the middle of sending."), labels: [], Double(ledger.inboundTotal))
        syncRuntimeMetrics()
        syncEgressMetrics()
        m.setGauge(name("uptime", "seconds", "Seconds since the daemon started."), labels: [], Clock.monotonic() - startedAt)
        return m.text()
    }

    /// Samples how late the loop runs a task due now; again every second.
    func sampleLoopLag() {
        let due = Clock.monotonic() + 1
        loop.scheduleTask(in: .seconds(1)) { [self] in
            metrics.loopLag(seconds: Clock.monotonic() - due)
            guard !core.draining else { return }
            sampleLoopLag()
        }
    }
}
