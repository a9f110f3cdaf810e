import CClawpenShim
import ClawpenClient
import ClawpenProtocol
import ClawpenWire
import Foundation
import Glibc

/// The restart scenario's figures: a daemon killed with 10,000 jobs queued, started again on a
/// copy of that state dir, `rounds` times.
struct RestartFigures {
    var jobs = 0
    var tenants = 0
    /// Spawn to the first connect() the socket accepts, to the first pong, to the first job
    /// running (its own clock reading, written from inside the sandbox), per round (ms).
    var acceptMs: [Double] = []
    var pingMs: [Double] = []
    var firstJobMs: [Double] = []
    /// The daemon's own account of its start-up (its log line "re-queued ...").
    var recoveredLines: [String] = []
    /// The last round: every job run to its end.
    var drainSeconds: Double?
    var succeeded = 0
    var failedOrLost = 0
    static let target = 1000.0

    func table() -> String {
        func med(_ v: [Double]) -> String {
            v.isEmpty ? "-" : "median \(fmt(Summary.median(v), 1)) ms, max \(fmt(v.max()!, 1)) ms (rounds: \(v.map { fmt($0, 0) }.joined(separator: " ")))"
        }
        var rows: [[String]] = [["restart", "value", "target", "met"]]
        rows.append(["jobs queued at the kill", "\(jobs) over \(tenants) tenants", "", ""])
        rows.append(["spawn to the socket accepting", med(acceptMs), "", ""])
        rows.append(["spawn to the first pong", med(pingMs), "", ""])
        let worst = max(acceptMs.max() ?? .infinity, firstJobMs.max() ?? .infinity)
        rows.append([
            "spawn to the first job running (ready)", med(firstJobMs), "<= \(fmt(Self.target, 0)) ms",
            firstJobMs.isEmpty ? "" : worst <= Self.target ? "yes" : "NO",
        ])
        if let s = drainSeconds {
            rows.append(["then all of them run (last round)", "\(succeeded) succeeded in \(fmt(s, 1)) s (\(fmt(Double(succeeded) / s, 0)) jobs/s)", "", ""])
            rows.append(["  jobs failed or lost", "\(failedOrLost)", "0", failedOrLost == 0 ? "yes" : "NO"])
        }
        var out = renderTable(rows)
        for l in recoveredLines.prefix(1) { out += "daemon: \(l)\n" }
        return out
    }
}

extension Scenarios {
    func restart() throws -> RestartFigures {
        var f = RestartFigures()
        let perTenant = 1000 // enterprise's max_queued
        let tenantCount = max(1, (options.restartJobs + perTenant - 1) / perTenant)
        f.tenants = tenantCount
        // One slot, held by a long job: everything else stays queued until the kill.
        let d = try RestartableDaemon(setup, label: "restart", extraArgs: ["--max-running", "1", "--reserved-slots", "0"])
        defer { d.remove() }
        try d.start()
        let conn = try d.connect()
        let names = (0..<tenantCount).map { "r-\($0)" }
        var workspaces: [String] = []
        for name in ["hold"] + names {
            let t = try benchTenant(name)
            let view = try call("create tenant \(name)") { () throws(ClientError) in try conn.tenant(.tenantCreate(name: t, tier: Scenarios.tier)) }
            if name != "hold" { workspaces.append(view.workspace + "/home") } // the sandbox's /home
        }
        let hold = try benchTenant("hold")
        _ = try call("the job that holds the slot") { () throws(ClientError) in
            try conn.submit(SubmitRequest(tenant: hold, argv: ["/bin/sleep", "300"], timeoutSeconds: 300))
        }
        Progress.say("[restart] queueing \(options.restartJobs) jobs over \(tenantCount) tenants behind one held slot")
        var queued = 0
        for (i, name) in names.enumerated() {
            let t = try benchTenant(name)
            let count = min(perTenant, options.restartJobs - i * perTenant)
            // A tenant's first job says when it ran (its own clock, from inside the sandbox):
            // the router starts each tenant's oldest job first.
            var requests = [SubmitRequest(tenant: t, argv: ["/bin/sh", "-c", "date +%s%N >> /home/started"])]
            requests += (1..<count).map { _ in SubmitRequest(tenant: t, argv: ["/bin/true"]) }
            queued += try pipelined(conn, requests, what: "queue jobs for \(name)")
        }
        f.jobs = queued
        try d.kill9()
        // Each round starts from the same state: a copy of the dir the killed daemon left.
        let state = d.root + "/state", snapshot = d.root + "/state.killed"
        try copyTree(state, snapshot)
        d.extraArgs = []
        for round in 0..<options.restartRounds {
            try? FileManager.default.removeItem(atPath: state)
            try copyTree(snapshot, state)
            for w in workspaces { unlink(w + "/started") }
            var now = timespec()
            clock_gettime(CLOCK_REALTIME, &now)
            let wallStart = Double(now.tv_sec) * 1e9 + Double(now.tv_nsec)
            let began = Clock.nanoseconds()
            _ = try d.spawn()
            var accepted: Double?
            while accepted == nil {
                let fd = cp_unix_connect(d.socketPath)
                if fd >= 0 { close(fd); accepted = Clock.milliseconds(since: began) } else { Clock.sleep(seconds: 0.0005) }
                if Clock.milliseconds(since: began) > 60_000 { throw BenchFailure("the restarted daemon's socket did not accept within 60 s:\n\(d.logTail())") }
            }
            try d.waitForPing(since: began)
            f.pingMs.append(Clock.milliseconds(since: began))
            f.acceptMs.append(accepted!)
            var first: Double?
            while first == nil && Clock.milliseconds(since: began) < 60_000 {
                for w in workspaces {
                    guard let text = readTextFile(w + "/started"), let ns = Double(text.split(separator: "\n").first ?? "") else { continue }
                    first = min(first ?? .infinity, (ns - wallStart) / 1e6)
                }
                if first == nil { Clock.sleep(seconds: 0.001) }
            }
            guard let first else { throw BenchFailure("no job ran within 60 s of the restart:\n\(d.logTail())") }
            f.firstJobMs.append(first)
            Progress.say("[restart] round \(round + 1): accepting after \(fmt(accepted!, 1)) ms, first job running after \(fmt(first, 1)) ms")
            if round == options.restartRounds - 1 {
                let c = try d.connect()
                while true {
                    let tenants = try call("status") { () throws(ClientError) in try c.status() }["tenants"]?.arrayValue ?? []
                    var ok = 0, bad = 0, left = 0
                    for t in tenants where t["tenant"]?.stringValue?.hasPrefix("r-") == true {
                        let j = t["jobs"]
                        ok += Int(j?["succeeded"]?.intValue ?? 0)
                        bad += Int((j?["failed"]?.intValue ?? 0) + (j?["canceled"]?.intValue ?? 0) + (j?["rejected"]?.intValue ?? 0))
                        left += Int((j?["queued"]?.intValue ?? 0) + (j?["running"]?.intValue ?? 0))
                    }
                    if left == 0 || Clock.milliseconds(since: began) > 900_000 {
                        f.drainSeconds = Clock.milliseconds(since: began) / 1000
                        f.succeeded = ok
                        f.failedOrLost = queued - ok
                        _ = bad
                        break
                    }
                    Clock.sleep(seconds: 0.1)
                }
            }
            try d.kill9()
            if let log = readTextFile(d.logPath), let line = log.split(separator: "\n").last(where: { $0.contains("re-queued") }) {
                f.recoveredLines.append(String(line))
            }
        }
        return f
    }

    /// Submits without waiting, 100 requests in flight at a time on one connection; returns how
    /// many were accepted (a refusal fails the run).
    func pipelined(_ conn: ClawpenConnection, _ requests: [SubmitRequest], what: String) throws(BenchFailure) -> Int {
        var accepted = 0
        var i = 0
        while i < requests.count {
            let window = requests[i..<min(i + 100, requests.count)]
            try call(what) { () throws(ClientError) in
                for (k, r) in window.enumerated() { try conn.send(RequestCodec.encode(.submit(r), id: .int(Int64(i + k)))) }
                for _ in window {
                    let reply = try conn.receive()
                    guard reply["type"]?.stringValue == "job" else { throw .badReply(String(decoding: reply.serialized().prefix(300), as: UTF8.self)) }
                    accepted += 1
                }
            }
            i += window.count
        }
        return accepted
    }

    func copyTree(_ from: String, _ to: String) throws(BenchFailure) {
        let cp = PreparedCommand(path: "/bin/cp", arguments: ["/bin/cp", "-a", from, to], environment: ["PATH=/usr/bin:/bin"])
        let devNull = open("/dev/null", O_RDWR | O_CLOEXEC)
        defer { close(devNull) }
        if let bad = try PreparedCommand.wait(try cp.spawn(stdin: devNull, stdout: devNull, stderr: 2)) {
            throw BenchFailure("cp -a \(from) \(to) \(bad)")
        }
    }
}
