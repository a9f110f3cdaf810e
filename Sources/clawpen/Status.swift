import ArgumentParser
import ClawpenClient
import ClawpenProtocol
import Glibc

struct Status: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status",
        abstract: "Show the supervisor and every tenant's worker at a glance.",
        discussion: "Numbers that cannot be read are shown as - (null in --json), never as 0.")

    @OptionGroup var connection: ConnectionOptions
    @Option(help: "Only this tenant.") var tenant: String?
    @Flag(help: "Print the status object as JSON.") var json = false
    @Flag(
        help: ArgumentHelp(
            "Show it again every second until interrupted.",
            discussion:
                "On a terminal the screen is redrawn; otherwise (a pipe, a file) nothing but the text is written, and with --json one JSON object per line."
        )) var watch = false

    func run() throws {
        let tenantName = try TenantArgument.parse(tenant)
        // Escapes only for a person at a terminal: a pipe or a log file gets plain text or JSON lines.
        let redraw = watch && !json && isatty(1) == 1
        repeat {
            let status = try withClient(connection) { (c: ClawpenConnection) throws(ClientError) in try c.status(tenant: tenantName) }
            if redraw { Output.writeStdout("\u{1B}[H\u{1B}[2J") }
            if json { Output.json(status) } else { Output.writeStdout(Self.render(status)) }
            if watch { sleep(1) }
        } while watch
    }

    /// The supervisor's clients in one line: what the control and agent sockets hold against
    /// their limits, and what was refused or cut (only when something was).
    static func clientsLine(_ c: JSONValue) -> String {
        func n(_ v: JSONValue?) -> Int64 { v?.intValue ?? 0 }
        let control = c["control_connections"] ?? .null, agent = c["agent_connections"] ?? .null
        var out = "clients: control \(n(control["held"]))/\(n(control["limit"])) connections"
        if control["listener_paused"]?.boolValue == true { out += " (AT ITS LIMIT: not accepting)" }
        let refusedUID = n(control["refused_per_uid"]), refusedAll = n(control["refused_all"])
        if refusedUID + refusedAll > 0 {
            out += ", \(refusedUID + refusedAll) refused"
            if let top = control["top_uids"]?.arrayValue?.first, n(top["held"]) >= n(control["per_uid_limit"]) {
                out += " (uid \(n(top["uid"])) holds its \(n(control["per_uid_limit"])))"
            }
        }
        out += "; agent sockets \(n(agent["held"]))/\(n(agent["all_limit"]))"
        if n(agent["paused_tenants"]) > 0 { out += " (\(n(agent["paused_tenants"])) tenant(s) at their limit)" }
        if case .object(let byReason)? = c["disconnects"] {
            let cut = byReason.reduce(Int64(0)) { $0 + ($1.1.intValue ?? 0) }
            if cut > 0 { out += "; \(cut) disconnected over buffer budgets" }
        }
        return out
    }

    /// The egress proxy in one line, and each egress tenant that has no way out while it runs
    /// (its worker's listener could not be made). Nil when no tenant shown is `egress` and the
    /// proxy runs (or was never meant to).
    static func egressLine(_ e: JSONValue, tenants: [JSONValue]) -> String? {
        let egressTenants = tenants.filter { if case .object = $0["egress"] ?? .null { return true } else { return false } }
        let state = e["state"]?.stringValue ?? "-"
        guard !egressTenants.isEmpty || state == "restarting" else { return nil }
        var out = "egress: "
        if state == "running" {
            out += "proxy running (pid \(e["pid"]?.intValue.map(String.init) ?? "-"), up \(Format.duration(e["uptime_s"]?.doubleValue))"
            out += ", \(e["restarts"]?.intValue ?? 0) restart(s)), \(egressTenants.count) egress tenant(s)"
        } else {
            out += "proxy \(state.uppercased()): \(e["unavailable"]?.stringValue ?? "?")"
            out += "; \(egressTenants.count) egress tenant(s) have no way out"
        }
        guard state == "running" else { return out }
        for t in egressTenants {
            guard let why = t["egress"]?["unavailable"]?.stringValue else { continue }
            out += "\n  \(t["tenant"]?.stringValue ?? "?"): NO EGRESS: \(why)"
        }
        return out
    }

    static func render(_ s: JSONValue) -> String {
        let sup = s["supervisor"] ?? .null
        let cg = sup["cgroup"] ?? .null
        var out = "clawpen \(sup["version"]?.stringValue ?? "?")  pid \(sup["pid"]?.intValue.map(String.init) ?? "-")"
        out += "  up \(Format.duration(sup["uptime_s"]?.doubleValue))"
        out += "  cgroup \(cg["mode"]?.stringValue ?? "-")"
        if let p = cg["path"]?.stringValue { out += " (\(p))" }
        out += "  policies: \(sup["policies"]?.stringValue ?? "-")"
        if sup["draining"]?.boolValue == true { out += "  DRAINING" }
        if let sandbox = sup["sandbox"]?.stringValue { out += "\nsandbox: \(sandbox)" }
        if let mounts = sup["worker_mounts"]?.stringValue, mounts.hasPrefix("fallback: ") {
            out += "\nworker mounts: FALLBACK: " + mounts.dropFirst("fallback: ".count)
        }
        if let r = sup["router"], case .object = r {
            out += "\nrouter: \(r["dispatch"]?.stringValue ?? "?") dispatch, running \(r["running"]?.intValue ?? 0)/\(r["max_running"]?.intValue ?? 0)"
            out += " (\(r["reserved_slots"]?.intValue ?? 0) kept for tenants with nothing running), queued \(r["queued"]?.intValue ?? 0)"
        }
        if let c = sup["clients"], case .object = c { out += "\n" + Self.clientsLine(c) }
        if let line = Self.egressLine(sup["egress"] ?? .null, tenants: s["tenants"]?.arrayValue ?? []) { out += "\n" + line }
        out += "\n\n"
        var rows = [
            ["TENANT", "TIER", "STATE", "PID", "UPTIME", "RESTARTS", "QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "REFUSED", "MEMORY", "CPU", "ENFORCED"]
        ]
        for t in s["tenants"]?.arrayValue ?? [] {
            let jobs = t["jobs"] ?? .null, usage = t["usage"] ?? .null, limits = t["limits"] ?? .null
            let enf = t["enforcement"] ?? .null
            let mem = Format.bytes(usage["memory_current"]?.intValue) + "/" + Format.bytes(limits["memory_max"]?.intValue)
            let cpu = usage["cpu_usec"]?.intValue.map { Format.cpu(usec: $0) } ?? "-"
            let enforced = ["memory", "pids", "cpu"].map { "\($0)=\(enf[$0]?.stringValue ?? "-")" }.joined(separator: ",")
            func n(_ v: JSONValue?) -> String { v?.intValue.map(String.init) ?? "-" }
            var refused = "0"
            if case .object(let byRule)? = t["refused"] {
                let total = byRule.reduce(Int64(0)) { $0 + ($1.1.intValue ?? 0) }
                if let top = byRule.max(by: { ($0.1.intValue ?? 0) < ($1.1.intValue ?? 0) }), total > 0 { refused = "\(total) (\(top.0))" }
            }
            rows.append([
                t["tenant"]?.stringValue ?? "?", t["tier"]?.stringValue ?? "-", t["state"]?.stringValue ?? "-",
                n(t["worker_pid"]), Format.duration(t["uptime_s"]?.doubleValue), n(t["restarts"]),
                n(jobs["queued"]), n(jobs["running"]), n(jobs["succeeded"]), n(jobs["failed"]), refused, mem, cpu, enforced,
            ])
        }
        out += Format.table(rows)
        let troubled = (s["tenants"]?.arrayValue ?? []).compactMap { t -> String? in
            guard let e = t["last_error"]?.stringValue else { return nil }
            return "  \(t["tenant"]?.stringValue ?? "?"): \(e)"
        }
        if !troubled.isEmpty { out += "\nlast errors:\n" + troubled.joined(separator: "\n") + "\n" }
        // Who is held back, why, and what lifts it.
        let held = (s["tenants"]?.arrayValue ?? []).compactMap { t -> String? in
            let name = t["tenant"]?.stringValue ?? "?"
            if let q = t["quarantine"], case .object = q {
                let retry = q["retry_in_s"]?.doubleValue.map { Format.duration($0) } ?? "?"
                return "  \(name): QUARANTINED, retries in \(retry): \(q["reason"]?.stringValue ?? "?") (lift: clawpen tenant resume \(name))"
            }
            if let p = t["suspension"], case .object = p {
                return
                    "  \(name): SUSPENDED by \(p["by"]?.stringValue ?? "?"), jobs frozen by \(p["frozen_by"]?.stringValue ?? "nothing (no worker)") (lift: clawpen tenant resume \(name))"
            }
            return nil
        }
        if !held.isEmpty { out += "\nheld back:\n" + held.joined(separator: "\n") + "\n" }
        // Job trees with sub-jobs: how many live, the deepest, their CPU.
        let trees = (s["tenants"]?.arrayValue ?? []).compactMap { t -> String? in
            guard let tr = t["trees"], let live = tr["live"]?.intValue, live > 0 else { return nil }
            let cpu = tr["cpu_seconds"]?.doubleValue ?? 0
            return
                "  \(t["tenant"]?.stringValue ?? "?"): \(live) tree(s), \(tr["live_jobs"]?.intValue ?? 0) live job(s), deepest \(tr["deepest"]?.intValue ?? 0), cpu \(cpu) s"
        }
        if !trees.isEmpty { out += "\njob trees:\n" + trees.joined(separator: "\n") + "\n" }
        // Every limit weaker here than the policy says (no controller, no Landlock, no quota).
        let warnings = (sup["warnings"]?.arrayValue ?? []).compactMap(\.stringValue)
        if !warnings.isEmpty { out += "\nwarnings:\n" + warnings.map { "  " + $0 }.joined(separator: "\n") + "\n" }
        return out
    }
}
