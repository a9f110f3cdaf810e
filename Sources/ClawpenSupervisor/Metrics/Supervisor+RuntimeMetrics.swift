import ClawpenCore
import ClawpenWire
import Prometheus

/// The agent runtime's and the egress proxy's series (docs/operations.md, "Metrics"): counted
/// where the bytes pass (RuntimeCounters) or reported by the proxy (EgressCounters), brought into
/// the registry when the metrics are asked for. Runs on the event loop.
extension Supervisor {
    func syncRuntimeMetrics() {
        let m = metrics
        let name = SupervisorMetrics.name
        for (tenant, c) in runtimeCounters.tenants {
            let labels = [("tenant", tenant.value)]
            m.syncCounter(
                name("stream_output", "bytes_total", "Live output of streamed, interactive or followed jobs passed on to their clients (once per chunk)."),
                labels: labels, total: c.outputBytes)
            m.syncCounter(name("stream_input", "bytes_total", "job.input bytes sent on to jobs' stdin."), labels: labels, total: c.inputBytes)
            m.syncCounter(
                name("stream_slow_detached", "total", "Attached clients detached because they stopped reading a job's output."),
                labels: labels, total: c.slowFollowersDetached)
            let fileBytes = name("file", "bytes_total", "File content moved by file.put (direction=in) and file.get (direction=out).")
            m.syncCounter(fileBytes, labels: [("tenant", tenant.value), ("direction", "in")], total: c.fileBytesIn)
            m.syncCounter(fileBytes, labels: [("tenant", tenant.value), ("direction", "out")], total: c.fileBytesOut)
            for (key, n) in c.fileOps {
                m.syncCounter(
                    name("file_ops", "total", "File operations that ended, by operation and result (ok, or the error code)."),
                    labels: [("tenant", tenant.value), ("op", key.op), ("result", key.result)], total: n)
            }
        }
        // Who follows what now: gauges, from the shell's tables.
        var followers: [TenantName: Int] = [:]
        var interactive: [TenantName: Int] = [:]
        for s in streams.jobs.values {
            followers[s.tenant, default: 0] += s.followers.count
            if s.started && s.options.isInteractive { interactive[s.tenant, default: 0] += 1 }
        }
        var fileOps: [TenantName: Int] = [:]
        for op in fileRelay.ops.values { fileOps[op.tenant, default: 0] += 1 }
        for t in core.tenants.keys {
            let labels = [("tenant", t.value)]
            m.setGauge(
                name("stream_clients", "", "Client requests following a job's output now (streamed submits, attaches, logs --follow)."),
                labels: labels, Double(followers[t] ?? 0))
            m.setGauge(name("interactive_jobs", "", "Running jobs with stdin open or a terminal."), labels: labels, Double(interactive[t] ?? 0))
            m.setGauge(name("file_ops_in_progress", "", "File operations under way or waiting for the worker."), labels: labels, Double(fileOps[t] ?? 0))
        }
    }

    func syncEgressMetrics() {
        let m = metrics
        let name = SupervisorMetrics.name
        m.setGauge(name("egress_proxy_up", "", "1 while the egress proxy process runs, else 0 (status says why)."), labels: [], egress.proxy != nil ? 1 : 0)
        for (tenant, c) in egress.counters {
            let requests = name("egress_requests", "total", "Requests through the tenant's egress proxy, by decision (allowed, denied).")
            m.syncCounter(requests, labels: [("tenant", tenant.value), ("decision", "allowed")], total: c.requestsAllowed)
            m.syncCounter(requests, labels: [("tenant", tenant.value), ("decision", "denied")], total: c.requestsDenied)
            let bytes = name("egress", "bytes_total", "Bytes through the egress proxy: direction=up (to the upstream), down (to the job).")
            m.syncCounter(bytes, labels: [("tenant", tenant.value), ("direction", "up")], total: c.bytesUp)
            m.syncCounter(bytes, labels: [("tenant", tenant.value), ("direction", "down")], total: c.bytesDown)
            m.syncCounter(
                name("egress_secret_uses", "total", "Placeholders the proxy replaced with a secret's value (secret.used in the audit)."),
                labels: [("tenant", tenant.value)], total: c.secretsUsed)
        }
    }
}
