import ArgumentParser
import ClawpenClient
import ClawpenProtocol
import Glibc

/// `clawpen audit`: refusals and admin actions, who asked and which rule decided (operators).
struct AuditCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "audit",
        abstract: "Show the audit log: every refusal and admin action (operators only).",
        discussion: """
            Each line: time (UTC), tenant, caller uid, action, rule, detail. Actions include \
            submit.refused (a quota), submit.denied (a tool or environment rule), \
            permission.denied (a caller without the right), tenant.create, tenant.set_quota and \
            policy.reload.

            --since takes seconds since the epoch, an ISO 8601 UTC time (2026-11-21T07:00:00Z) or a \
            duration back from now (90s, 15m, 2h, 7d).
            """)

    @OptionGroup var connection: ConnectionOptions
    @Option(help: "Only this tenant's events.") var tenant: String?
    @Option(help: "Only events at or after this time.") var since: String?
    @Option(help: "At most this many events (the newest).") var limit: Int = 100
    @Flag(help: "Print a JSON array of events.") var json = false

    func validate() throws {
        guard (1...100_000).contains(limit) else { throw ValidationError("--limit must be 1...100000") }
        if let since, TimeArgument.parse(since) == nil {
            throw ValidationError("--since '\(since)' is not a time: use seconds since the epoch, 2026-11-21T07:00:00Z, or 90s/15m/2h/7d")
        }
    }

    func run() throws {
        let tenantName = try TenantArgument.parse(tenant)
        let from = since.flatMap(TimeArgument.parse)
        let reply = try withClient(connection, json: json) { (c: ClawpenConnection) throws(ClientError) in
            try c.call(.audit(tenant: tenantName, since: from, limit: limit))
        }
        let events = reply["events"]?.arrayValue ?? []
        if json { Output.json(.array(events)); return }
        var rows = [["TIME (UTC)", "TENANT", "UID", "ACTION", "RULE", "DETAIL"]]
        for e in events {
            rows.append([
                TimeArgument.format(e["at"]?.doubleValue ?? 0), e["tenant"]?.stringValue ?? "-",
                e["caller_uid"]?.intValue.map { String($0) } ?? "-", e["action"]?.stringValue ?? "",
                e["rule"]?.stringValue ?? "-", e["detail"]?.stringValue ?? "",
            ])
        }
        Output.writeStdout(Format.table(rows))
    }
}

/// Times on the command line: epoch seconds, ISO 8601 UTC, or a duration back from now.
enum TimeArgument {
    static func parse(_ s: String) -> Double? {
        if let d = Double(s), d.isFinite { return d }
        if let last = s.last, let n = Double(s.dropLast()), n >= 0 {
            let unit: Double? =
                switch last {
                case "s": 1;
                case "m": 60;
                case "h": 3600;
                case "d": 86_400;
                default: nil
                }
            if let unit { return now() - n * unit }
        }
        // YYYY-MM-DDTHH:MM:SSZ
        let b = Array(s.utf8)
        guard b.count == 20, b[4] == UInt8(ascii: "-"), b[7] == UInt8(ascii: "-"), b[10] == UInt8(ascii: "T"),
            b[13] == UInt8(ascii: ":"), b[16] == UInt8(ascii: ":"), b[19] == UInt8(ascii: "Z")
        else { return nil }
        func num(_ r: Range<Int>) -> Int32? { Int32(String(decoding: b[r], as: UTF8.self)) }
        guard let y = num(0..<4), let mo = num(5..<7), let d = num(8..<10), let h = num(11..<13), let mi = num(14..<16),
            let sec = num(17..<19)
        else { return nil }
        var t = tm()
        t.tm_year = y - 1900; t.tm_mon = mo - 1; t.tm_mday = d; t.tm_hour = h; t.tm_min = mi; t.tm_sec = sec
        let epoch = timegm(&t)
        return epoch < 0 ? nil : Double(epoch)
    }

    static func now() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }

    static func format(_ epoch: Double) -> String {
        var t = time_t(epoch)
        var out = tm()
        gmtime_r(&t, &out)
        func two(_ v: Int32) -> String { v < 10 ? "0\(v)" : "\(v)" }
        return "\(out.tm_year + 1900)-\(two(out.tm_mon + 1))-\(two(out.tm_mday)) \(two(out.tm_hour)):\(two(out.tm_min)):\(two(out.tm_sec))"
    }
}
