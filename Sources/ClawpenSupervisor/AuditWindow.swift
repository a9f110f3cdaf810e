import ClawpenSystem
import ClawpenWire
import NIOCore

/// Audit rows that a tenant's jobs or a client can cause without end, bounded: the proxy's
/// reports (`egress.denied`, `secret.used`) and refusals (`permission.denied`,
/// `submit.refused`, `submit.denied`). A job that loops on a denied URL or a refused request
/// must not fill the state directory every tenant shares (measured before refusals went
/// through it: one job sending `status` on its agent socket wrote 114,500 audit rows, 32 MB,
/// in 10 s). Per (tenant, action, rule, subject, port) the first report of a window writes its
/// row at once; the ones after it within `seconds` are counted, and one summary row says how
/// many when the window ends. Past `keysPerTenant` distinct keys of one tenant in their
/// windows, the rest of that tenant's reports of that action share one key (subject `*`), so
/// a job that invents host names gets no more rows either. Pure: the time is the caller's.
struct AuditWindow {
    static let seconds = 10.0
    static let keysPerTenant = 32

    enum Kind: Hashable {
        /// A report of the egress proxy: the subject is the host.
        case egress
        /// A refused request: the subject is the request's type.
        case refusal
    }

    struct Key: Hashable {
        var tenant: TenantName?
        var kind: Kind
        var action: String
        var rule: String
        var subject: String
        var port: Int64 = 0
    }

    struct Row: Equatable {
        var key: Key
        /// 1 for a first row; for a summary, the reports after the first within the window.
        var count: Int
        var summary: Bool

        /// The row's detail (a refusal's first row carries the caller's own instead).
        var detail: String {
            switch key.kind {
            case .egress:
                let base = "host=\(key.subject) port=\(key.port) job=unknown"
                return summary ? base + " repeated=\(count) window_s=\(Int(AuditWindow.seconds))" : base
            case .refusal:
                return
                    "\(key.subject): \(count) more refused within \(Int(AuditWindow.seconds)) s, coalesced (one row per tenant, rule and request a window) repeated=\(count)"
            }
        }
    }

    private struct Window {
        var started: Double
        var suppressed: Int
    }

    private var open: [Key: Window] = [:]
    private var keysOf: [TenantName?: Int] = [:]

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
            let overflow = Key(tenant: key.tenant, kind: key.kind, action: key.action, rule: "*", subject: "*", port: 0)
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
            if key.subject != "*" {
                let n = keysOf[key.tenant, default: 1] - 1
                keysOf[key.tenant] = n > 0 ? n : nil
            }
            if w.suppressed > 0 { rows.append(Row(key: key, count: w.suppressed, summary: true)) }
        }
        return rows.sorted {
            ($0.key.tenant?.value ?? "", $0.key.action, $0.key.subject, $0.key.rule) < ($1.key.tenant?.value ?? "", $1.key.action, $1.key.subject, $1.key.rule)
        }
    }
}

extension Supervisor {
    /// A refused request's audit row, through the window: the first of its kind at once with
    /// `detail`, the repeats within the window as one summary row.
    func auditRefusal(tenant: TenantName?, caller: Responder?, action: String, rule: String, request: String, detail: String?, traceID: String? = nil) {
        auditCoalesced(
            AuditWindow.Key(tenant: tenant, kind: .refusal, action: action, rule: rule, subject: request), caller: caller,
            firstDetail: detail, traceID: traceID)
    }

    /// One report through the window: the rows it makes due now (a first row carries
    /// `firstDetail` when given, else the window's own), and the flush of the rest later.
    func auditCoalesced(_ key: AuditWindow.Key, caller: Responder? = nil, firstDetail: String? = nil, traceID: String? = nil) {
        for row in auditWindow.record(key, now: Clock.monotonic()) {
            let detail = row.summary ? row.detail : firstDetail ?? row.detail
            audit(tenant: key.tenant, caller: caller, action: key.action, rule: key.rule, detail: detail, traceID: traceID)
        }
        scheduleAuditWindowFlush()
    }

    func scheduleAuditWindowFlush() {
        guard !auditFlushScheduled, !auditWindow.isEmpty else { return }
        auditFlushScheduled = true
        loop.scheduleTask(in: .milliseconds(Int64(AuditWindow.seconds * 1000) + 50)) { [self] in
            auditFlushScheduled = false
            for row in auditWindow.flush(now: Clock.monotonic()) {
                audit(tenant: row.key.tenant, caller: nil, action: row.key.action, rule: row.key.rule, detail: row.detail)
            }
            scheduleAuditWindowFlush()
        }
    }
}
