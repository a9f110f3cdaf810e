import ClawpenSystem
import ClawpenWire
import NIOCore

/// The audit rows of the proxy's reports (`egress.denied`, `secret.used`), bounded: a job that
/// loops on a denied URL must not fill the state directory every tenant shares. Per (tenant,
/// action, rule, host, port) the first report of a window writes its row at once; the ones
/// after it within `seconds` are counted, and one summary row says how many when the window
/// ends. Past `keysPerTenant` distinct keys of one tenant in their windows, the rest of that
/// tenant's reports of that action share one key (host `*`), so a job that invents host names
/// gets no more rows either. Every report is counted in the tenant's counters whatever this
/// writes. Pure: the time is the caller's.
struct EgressAuditWindow {
    static let seconds = 10.0
    static let keysPerTenant = 32

    struct Key: Hashable {
        var tenant: TenantName
        var action: String
        var rule: String
        var host: String
        var port: Int64
    }

    struct Row: Equatable {
        var key: Key
        /// 1 for a first row; for a summary, the reports after the first within the window.
        var count: Int
        var summary: Bool

        var detail: String {
            let base = "host=\(key.host) port=\(key.port) job=unknown"
            return summary ? base + " repeated=\(count) window_s=\(Int(EgressAuditWindow.seconds))" : base
        }
    }

    private struct Window {
        var started: Double
        var suppressed: Int
    }

    private var open: [Key: Window] = [:]
    private var keysOf: [TenantName: Int] = [:]

    var isEmpty: Bool { open.isEmpty }

    /// A report at `now`: the rows to write at once (the summary of this key's window that
    /// just ended, if it counted any, then the first row of the new one).
    mutating func record(_ key: Key, now: Double) -> [Row] {
        if var w = open[key] {
            if now - w.started < Self.seconds {
                w.suppressed += 1
                open[key] = w
                return []
            }
            open[key] = Window(started: now, suppressed: 0)
            return (w.suppressed > 0 ? [Row(key: key, count: w.suppressed, summary: true)] : []) + [Row(key: key, count: 1, summary: false)]
        }
        if keysOf[key.tenant, default: 0] >= Self.keysPerTenant {
            let overflow = Key(tenant: key.tenant, action: key.action, rule: "*", host: "*", port: 0)
            var w = open[overflow] ?? Window(started: now, suppressed: 0)
            w.suppressed += 1
            open[overflow] = w
            return []
        }
        keysOf[key.tenant, default: 0] += 1
        open[key] = Window(started: now, suppressed: 0)
        return [Row(key: key, count: 1, summary: false)]
    }

    /// The windows that ended by `now`: a summary row for each that counted more than its first.
    mutating func flush(now: Double) -> [Row] {
        var rows: [Row] = []
        for (key, w) in open where now - w.started >= Self.seconds {
            open[key] = nil
            if key.host != "*" {
                let n = keysOf[key.tenant, default: 1] - 1
                keysOf[key.tenant] = n > 0 ? n : nil
            }
            if w.suppressed > 0 { rows.append(Row(key: key, count: w.suppressed, summary: true)) }
        }
        return rows.sorted { ($0.key.tenant.value, $0.key.action, $0.key.host, $0.key.rule) < ($1.key.tenant.value, $1.key.action, $1.key.host, $1.key.rule) }
    }
}

extension Supervisor {
    /// One `egress.denied` or `secret.used` report, through the window.
    func egressAudit(_ tenant: TenantName, action: String, rule: String, host: String, port: Int64) {
        let key = EgressAuditWindow.Key(tenant: tenant, action: action, rule: rule, host: host, port: port)
        for row in egress.auditWindow.record(key, now: Clock.monotonic()) {
            audit(tenant: tenant, caller: nil, action: action, rule: rule, detail: row.detail)
        }
        scheduleEgressAuditFlush()
    }

    private func scheduleEgressAuditFlush() {
        guard !egress.auditFlushScheduled, !egress.auditWindow.isEmpty else { return }
        egress.auditFlushScheduled = true
        loop.scheduleTask(in: .milliseconds(Int64(EgressAuditWindow.seconds * 1000) + 50)) { [self] in
            egress.auditFlushScheduled = false
            for row in egress.auditWindow.flush(now: Clock.monotonic()) {
                audit(tenant: row.key.tenant, caller: nil, action: row.key.action, rule: row.key.rule, detail: row.detail)
            }
            scheduleEgressAuditFlush()
        }
    }
}
