import CClawpenShim
import ClawpenClient
import ClawpenProtocol
import ClawpenWire
import Foundation
import Glibc

/// A `clawpen serve` on one state dir that is killed (SIGKILL) and started again on it, as a
/// crash and its restart by systemd would (the chaos and restart scenarios).
final class RestartableDaemon {
    let root: String
    let socketPath: String
    let logPath: String
    let setup: Setup
    var extraArgs: [String]
    private(set) var pid: pid_t = 0
    private var running = false

    init(_ setup: Setup, label: String, extraArgs: [String] = []) throws(BenchFailure) {
        var template = Array("/tmp/clawpen-bench-\(label)-XXXXXX".utf8CString)
        guard mkdtemp(&template) != nil else { throw BenchFailure("mkdtemp under /tmp: \(String(cString: strerror(errno)))") }
        root = String(decoding: template.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        chmod(root, 0o755) // the tenants' workers reach their workspaces below it
        socketPath = root + "/clawpen.sock"
        logPath = root + "/daemon.log"
        self.setup = setup
        self.extraArgs = extraArgs
    }

    /// Spawns the daemon (without waiting); returns its pid. Called from the main thread only:
    /// the daemon's parent-death signal follows the thread that spawned it.
    func spawn() throws(BenchFailure) -> pid_t {
        let logFD = open(logPath, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o644)
        let devNull = open("/dev/null", O_RDWR | O_CLOEXEC)
        guard logFD >= 0, devNull >= 0 else { throw BenchFailure("cannot open \(logPath): \(String(cString: strerror(errno)))") }
        defer { close(logFD); close(devNull) }
        let args =
            [
                setup.clawpen, "serve", "--socket", socketPath, "--state-dir", root + "/state", "--workspace-root", root + "/workspaces",
                "--policies", setup.policies, "--idle-timeout", "3600",
            ] + Daemon.uidRangeArguments(setup.clawpen, root: root) + setup.serveArgs + extraArgs
        let cmd = PreparedCommand(
            path: setup.clawpen, arguments: args, environment: ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8"])
        pid = try cmd.spawn(stdin: devNull, stdout: logFD, stderr: logFD, parentDeathSignal: SIGTERM)
        running = true
        return pid
    }

    /// Spawns the daemon and waits until it answers ping; returns the ms from spawn to pong.
    @discardableResult
    func start() throws(BenchFailure) -> Double {
        let began = Clock.nanoseconds()
        _ = try spawn()
        try waitForPing(since: began)
        return Clock.milliseconds(since: began)
    }

    func waitForPing(since began: UInt64) throws(BenchFailure) {
        while true {
            if let conn = try? ClawpenConnection(socketPath: socketPath), (try? conn.call(.ping)) != nil { return }
            var status: Int32 = 0
            if cp_wait4(pid, &status, WNOHANG, nil) == pid {
                running = false
                throw BenchFailure("clawpen serve \(PreparedCommand.exitDescription(status) ?? "exited") while starting:\n\(logTail())")
            }
            if Clock.milliseconds(since: began) > 60_000 { throw BenchFailure("clawpen serve did not answer within 60 s:\n\(logTail())") }
            Clock.sleep(seconds: 0.002)
        }
    }

    /// SIGKILL, and reap it.
    func kill9() throws(BenchFailure) {
        guard running else { return }
        kill(pid, SIGKILL)
        _ = try PreparedCommand.wait(pid)
        running = false
    }

    /// SIGTERM, then wait (SIGKILL after 60 s).
    func stop() {
        guard running else { return }
        kill(pid, SIGTERM)
        let began = Clock.nanoseconds()
        var status: Int32 = 0
        while cp_wait4(pid, &status, WNOHANG, nil) != pid {
            if Clock.milliseconds(since: began) > 60_000 {
                kill(pid, SIGKILL)
                _ = try? PreparedCommand.wait(pid)
                break
            }
            Clock.sleep(seconds: 0.01)
        }
        running = false
    }

    func remove() {
        stop()
        if setup.keepTemp { Progress.say("kept \(root)"); return }
        try? FileManager.default.removeItem(atPath: root)
    }

    func connect() throws(BenchFailure) -> ClawpenConnection {
        do { return try ClawpenConnection(socketPath: socketPath) } catch { throw BenchFailure("connect to \(socketPath): \(error)") }
    }

    func logTail(lines: Int = 30) -> String {
        guard let text = readTextFile(logPath) else { return "(no log)" }
        return text.split(separator: "\n", omittingEmptySubsequences: false).suffix(lines).joined(separator: "\n")
    }
}

/// What the clients of the chaos run were told, per idempotency key.
final class ChaosLedger: @unchecked Sendable {
    struct Entry {
        var tenant: String
        var id: String
        /// The final job's stdout as a client saw it (nil: it saw no final job).
        var seen: String?
    }
    private let lock = NSLock()
    private var _entries: [String: Entry] = [:]
    private var _conflicts: [String] = []
    private var _reconnects = 0
    private var _interactiveMs: [Double] = []
    private var _streamed = 0
    private var stopping = false

    var entries: [String: Entry] { lock.withLock { _entries } }
    var conflicts: [String] { lock.withLock { _conflicts } }
    var reconnects: Int { lock.withLock { _reconnects } }
    var interactiveMs: [Double] { lock.withLock { _interactiveMs } }
    var streamed: Int { lock.withLock { _streamed } }

    var stopped: Bool { lock.withLock { stopping } }
    func stop() { lock.withLock { stopping = true } }

    func acknowledged(_ key: String, tenant: String, id: String, seen: String? = nil) {
        lock.withLock {
            if let known = _entries[key], known.id != id { _conflicts.append("\(key): \(known.id) then \(id)") }
            var e = _entries[key] ?? Entry(tenant: tenant, id: id, seen: nil)
            if let seen { e.seen = seen }
            _entries[key] = e
        }
    }
    func lostConnection() { lock.withLock { _reconnects += 1 } }
    func interactive(_ ms: Double) { lock.withLock { _interactiveMs.append(ms) } }
    func streamFinished() { lock.withLock { _streamed += 1 } }
}

/// The chaos scenario's figures.
struct ChaosFigures {
    var cycles = 0
    var tenants = 0
    var restartMs: [Double] = []
    var keys = 0
    var lost: [String] = []
    var twoJobs: [String] = []
    var replaced: [String] = []
    var notFinal: [String] = []
    var notSucceeded: [String] = []
    var rerun = 0
    var reconnects = 0
    var streamed = 0
    var interactive: Summary?
    // dead workers
    var rounds = 0
    var killsToQuarantine: [Int] = []
    var quarantineHeld = 0
    var neighbourBaseline: Summary?
    var neighbourDuring: Summary?

    var failures: [String] {
        var out: [String] = []
        if !lost.isEmpty { out.append("\(lost.count) accepted job(s) lost: \(lost.prefix(5))") }
        if !twoJobs.isEmpty { out.append("\(twoJobs.count) key(s) named two jobs: \(twoJobs.prefix(5))") }
        if !replaced.isEmpty { out.append("\(replaced.count) key(s) completed twice: \(replaced.prefix(5))") }
        if !notFinal.isEmpty { out.append("\(notFinal.count) job(s) not final: \(notFinal.prefix(5))") }
        if rounds > 0 && quarantineHeld != rounds { out.append("the quarantine held in \(quarantineHeld) of \(rounds) rounds") }
        return out
    }

    func table() -> String {
        func ms(_ s: Summary?) -> String { s.map { "p50 \(fmt($0.p50, 2)) ms, p99 \(fmt($0.p99, 2)) ms (n=\($0.count))" } ?? "-" }
        var rows: [[String]] = [["chaos", "value", "target", "met"]]
        if cycles > 0 {
            rows.append(["kill -9 cycles of the supervisor under load", "\(cycles) (\(tenants) tenants)", "", ""])
            rows.append(["  restart: spawn to first pong", ms(restartMs.isEmpty ? nil : Summary(restartMs)), "", ""])
            rows.append(["  idempotency keys acknowledged", "\(keys)", "", ""])
            rows.append(["  accepted jobs lost", "\(lost.count)", "0", lost.isEmpty ? "yes" : "NO"])
            rows.append(["  keys naming two jobs", "\(twoJobs.count)", "0", twoJobs.isEmpty ? "yes" : "NO"])
            rows.append(["  keys completed twice (result seen, then replaced)", "\(replaced.count)", "0", replaced.isEmpty ? "yes" : "NO"])
            rows.append(["  jobs not in a final state at the end", "\(notFinal.count)", "0", notFinal.isEmpty ? "yes" : "NO"])
            rows.append(["  jobs final but not succeeded (killed, timed out...)", "\(notSucceeded.count)", "", ""])
            rows.append(["  jobs run again after a restart (attempt > 1)", "\(rerun)", "", ""])
            rows.append(["  client reconnects", "\(reconnects)", "", ""])
            rows.append(["  streamed jobs followed to their end", "\(streamed)", "", ""])
            rows.append(["  interactive round trip (input to echo)", ms(interactive), "", ""])
        }
        if rounds > 0 {
            rows.append(["kill -9 of one tenant's workers, rounds", "\(rounds)", "", ""])
            rows.append(["  worker kills until quarantined (per round)", killsToQuarantine.map { String($0) }.joined(separator: " "), "", ""])
            rows.append([
                "  quarantine held (submit refused, rule crash_loop_max)", "\(quarantineHeld)/\(rounds)", "all", quarantineHeld == rounds ? "yes" : "NO",
            ])
            rows.append(["  neighbour submit+wait /bin/true, no kills", ms(neighbourBaseline), "", ""])
            rows.append(["  neighbour submit+wait /bin/true, during the kills", ms(neighbourDuring), "", ""])
            if let b = neighbourBaseline, let d = neighbourDuring {
                rows.append(["  neighbour p50 during / without", fmt(d.p50 / b.p50, 2), "", ""])
                rows.append(["  neighbour p99 during / without", fmt(d.p99 / b.p99, 2), "", ""])
            }
        }
        return renderTable(rows)
    }
}

func renderTable(_ rows: [[String]]) -> String {
    let widths = (0..<rows[0].count).map { c in rows.map { $0[c].count }.max() ?? 0 }
    var out = ""
    for (i, r) in rows.enumerated() {
        out += r.enumerated().map { $1.padding(toLength: widths[$0], withPad: " ", startingAt: 0) }.joined(separator: "  ") + "\n"
        if i == 0 { out += widths.map { String(repeating: "-", count: $0) }.joined(separator: "  ") + "\n" }
    }
    return out
}

extension Scenarios {
    /// `chaos`: kill -9 of the supervisor under load, restarted each time on the same state dir;
    /// then kill -9 of one tenant's workers beside a neighbour whose latency is measured.
    func chaos() throws -> ChaosFigures {
        var f = ChaosFigures()
        if options.chaosCycles > 0 { try supervisorKills(&f) }
        if options.chaosWorkerRounds > 0 { try workerKills(&f) }
        return f
    }

    private func supervisorKills(_ f: inout ChaosFigures) throws {
        let d = try RestartableDaemon(setup, label: "chaos")
        defer { d.remove() }
        try d.start()
        let conn = try d.connect()
        let names = (0..<options.chaosTenants).map { "chaos-\($0)" }
        for name in names {
            let t = try benchTenant(name)
            _ = try call("create tenant \(name)") { () throws(ClientError) in try conn.tenant(.tenantCreate(name: t, tier: Scenarios.tier)) }
        }
        f.cycles = options.chaosCycles
        f.tenants = names.count
        let ledger = ChaosLedger()
        let socket = d.socketPath
        var threads: [Thread] = []
        let done = DispatchGroup()
        func client(_ body: @escaping @Sendable () -> Void) {
            done.enter()
            let t = Thread {
                body()
                done.leave()
            }
            t.start()
            threads.append(t)
        }
        for (i, name) in names.enumerated() {
            client { Self.submitter(socket: socket, tenant: name, index: i, ledger: ledger) }
        }
        for s in 0..<2 { client { Self.streamer(socket: socket, tenant: names[s % names.count], index: s, ledger: ledger) } }
        client { Self.interactive(socket: socket, tenant: names[names.count - 1], ledger: ledger) }

        Progress.say("[chaos] \(f.cycles) cycles of kill -9 of the supervisor under load (\(names.count) tenants, \(threads.count) clients)")
        for cycle in 0..<f.cycles {
            Clock.sleep(seconds: Double.random(in: 0.3...1.2))
            try d.kill9()
            f.restartMs.append(try d.start())
            if (cycle + 1) % 10 == 0 { Progress.say("[chaos] cycle \(cycle + 1): \(ledger.entries.count) keys, \(ledger.reconnects) reconnects") }
        }
        ledger.stop()
        guard done.wait(timeout: .now() + 300) == .success else { throw BenchFailure("the chaos clients did not finish within 300 s") }

        Progress.say("[chaos] checking \(ledger.entries.count) keys against the store")
        let check = try d.connect()
        let entries = ledger.entries
        f.keys = entries.count
        f.twoJobs = ledger.conflicts
        f.reconnects = ledger.reconnects
        f.streamed = ledger.streamed
        if !ledger.interactiveMs.isEmpty { f.interactive = Summary(ledger.interactiveMs) }
        for (key, e) in entries.sorted(by: { $0.key < $1.key }) {
            let job: JobView
            do { job = try check.job(.jobWait(jobID: e.id)).job } catch {
                f.lost.append("\(key) (\(e.id)): \(error)")
                continue
            }
            if !job.state.isFinal { f.notFinal.append("\(key): \(job.state.rawValue)") }
            if job.state != .succeeded { f.notSucceeded.append("\(key): \(job.state.rawValue)") }
            if job.attempt > 1 { f.rerun += 1 }
            if let seen = e.seen, seen != job.stdout { f.replaced.append("\(key): saw \(seen.prefix(40)), store has \(job.stdout.prefix(40))") }
            let again = try call("resubmit \(key)") { () throws(ClientError) in
                try check.submit(SubmitRequest(tenant: try! TenantName(validating: e.tenant), argv: ["/bin/true"], idempotencyKey: key))
            }
            if !again.existing || again.job.id != e.id { f.twoJobs.append("\(key): resubmission gave \(again.job.id), not \(e.id)") }
        }
    }

    /// A unique line per run of a job: a re-run writes another.
    static func uniqueLine(_ before: String = "") -> String { before + "echo $$-$(date +%s%N)" }

    /// One tenant's client: short and long jobs, each with its own key, alternately waited for
    /// in the submit and with `job.wait`; after a lost connection the same request again.
    static func submitter(socket: String, tenant: String, index: Int, ledger: ChaosLedger) {
        var n = 0
        guard let name = try? TenantName(validating: tenant) else { return }
        while !ledger.stopped {
            n += 1
            let key = "\(tenant)-\(n)"
            let script = n % 4 == 0 ? uniqueLine("sleep \(Double.random(in: 0.5...2)); ") : uniqueLine()
            let request = SubmitRequest(tenant: name, argv: ["/bin/sh", "-c", script], idempotencyKey: key, wait: n % 2 == 0)
            retrying(ledger) { () throws(ClientError) in
                let conn = try ClawpenConnection(socketPath: socket)
                var job = try conn.submit(request).job
                ledger.acknowledged(key, tenant: tenant, id: job.id)
                if !job.state.isFinal { job = try conn.job(.jobWait(jobID: job.id)).job }
                ledger.acknowledged(key, tenant: tenant, id: job.id, seen: job.stdout)
            }
        }
    }

    /// A streamed submit (`"stream": true`), its output followed to the final job; after a lost
    /// connection the same submit again (an idempotent resubmission replays the output).
    static func streamer(socket: String, tenant: String, index: Int, ledger: ChaosLedger) {
        var n = 0
        guard let name = try? TenantName(validating: tenant) else { return }
        while !ledger.stopped {
            n += 1
            let key = "stream-\(index)-\(n)"
            let request = SubmitRequest(
                tenant: name, argv: ["/bin/sh", "-c", uniqueLine("for i in 1 2 3 4 5; do echo line$i; sleep 0.05; done; ")], idempotencyKey: key,
                options: RunOptions(stream: true))
            retrying(ledger) { () throws(ClientError) in
                let conn = try ClawpenConnection(socketPath: socket)
                try conn.send(RequestCodec.encode(.submit(request), id: .int(1)))
                while true {
                    let frame = try conn.receive()
                    switch frame["type"]?.stringValue {
                    case "accepted":
                        if let id = frame["job"]?["id"]?.stringValue { ledger.acknowledged(key, tenant: tenant, id: id) }
                    case "job":
                        guard let job = frame["job"].flatMap(JobView.init(json:)) else { throw .badReply("job frame without a job") }
                        ledger.acknowledged(key, tenant: tenant, id: job.id, seen: job.stdout)
                        ledger.streamFinished()
                        return
                    case "error": throw .server(frame["error"].flatMap(ProtocolError.init(json:)) ?? ProtocolError(.internal, "error"))
                    default: continue
                    }
                }
            }
        }
    }

    /// An interactive session: `cat` with stdin open, five lines typed and each echo timed, then
    /// end-of-file. A session cut by a restart comes back through the same key: the job that
    /// runs again has its stdin closed (nobody attached), and its end is what the client sees.
    static func interactive(socket: String, tenant: String, ledger: ChaosLedger) {
        var n = 0
        guard let name = try? TenantName(validating: tenant) else { return }
        while !ledger.stopped {
            n += 1
            let key = "interactive-\(n)"
            let request = SubmitRequest(tenant: name, argv: ["/bin/cat"], idempotencyKey: key, options: RunOptions(stream: true, stdinOpen: true))
            retrying(ledger) { () throws(ClientError) in
                let conn = try ClawpenConnection(socketPath: socket)
                try conn.send(RequestCodec.encode(.submit(request), id: .int(1)))
                var jobID: String?
                var line = 0
                var echoed = ""
                var sent = Clock.nanoseconds()
                func type(_ text: String, eof: Bool) throws(ClientError) {
                    guard let jobID else { return }
                    let input = JSONValue.object([
                        ("type", .string("job.input")), ("id", .int(Int64(100 + line))), ("job_id", .string(jobID)),
                        ("data_b64", .string(Data(text.utf8).base64EncodedString())), ("eof", .bool(eof)),
                    ])
                    sent = Clock.nanoseconds()
                    try conn.send(input.serialized())
                }
                while true {
                    let frame = try conn.receive()
                    switch frame["type"]?.stringValue {
                    case "accepted":
                        jobID = frame["job"]?["id"]?.stringValue
                        if let jobID { ledger.acknowledged(key, tenant: tenant, id: jobID) }
                        if frame["existing"]?.boolValue != true { try type("ping 0\n", eof: false) }
                    case "output":
                        echoed += String(decoding: Data(base64Encoded: frame["data_b64"]?.stringValue ?? "") ?? Data(), as: UTF8.self)
                        if echoed.hasSuffix("ping \(line)\n") {
                            ledger.interactive(Clock.milliseconds(since: sent))
                            line += 1
                            try type(line < 5 ? "ping \(line)\n" : "", eof: line >= 5)
                        }
                    case "job":
                        guard let job = frame["job"].flatMap(JobView.init(json:)) else { throw .badReply("job frame without a job") }
                        ledger.acknowledged(key, tenant: tenant, id: job.id, seen: job.stdout)
                        return
                    case "error": throw .server(frame["error"].flatMap(ProtocolError.init(json:)) ?? ProtocolError(.internal, "error"))
                    default: continue
                    }
                }
            }
        }
    }

    /// Runs `body` until it succeeds, reconnecting after a lost daemon (up to 120 s); a refusal
    /// by the daemon is not retried.
    static func retrying(_ ledger: ChaosLedger, _ body: () throws(ClientError) -> Void) {
        let began = Clock.nanoseconds()
        while Clock.milliseconds(since: began) < 120_000 {
            do {
                try body()
                return
            } catch {
                if case .server(let e) = error, e.code != .unavailable {
                    Progress.say("[chaos] refused: \(e)")
                    return
                }
                ledger.lostConnection()
                Clock.sleep(seconds: 0.05)
            }
        }
    }

    // MARK: dead workers

    private func workerKills(_ f: inout ChaosFigures) throws {
        try Daemon.with(setup, label: "chaos-workers") { d in
            let conn = try d.connect()
            let victim = try benchTenant("victim"), neighbour = try benchTenant("neighbour")
            for t in [victim, neighbour] {
                _ = try call("create tenant \(t)") { () throws(ClientError) in try conn.tenant(.tenantCreate(name: t, tier: Scenarios.tier)) }
            }
            for i in 0..<20 { _ = try runJob(conn, tenant: "neighbour", what: "neighbour warm-up \(i)") }
            f.rounds = options.chaosWorkerRounds
            var baseline: [Double] = [], during: [Double] = []
            Progress.say("[chaos] \(f.rounds) rounds: the victim's workers killed until it is quarantined, the neighbour timed")
            for round in 0..<f.rounds {
                for i in 0..<options.chaosNeighbourJobs { baseline.append(try runJob(conn, tenant: "neighbour", what: "neighbour job \(i)")) }
                // The victim keeps a job running, so that it always has a worker to lose.
                let socket = d.socketPath
                let stop = ChaosLedger()
                let killer = Thread {
                    var lastPid: Int64 = -1
                    var tick = 0
                    while !stop.stopped {
                        guard let c = try? ClawpenConnection(socketPath: socket) else { continue }
                        if tick % 10 == 0 { _ = try? c.submit(SubmitRequest(tenant: victim, argv: ["/bin/sleep", "30"])) }
                        tick += 1
                        let t = (try? c.status(tenant: victim))?["tenants"]?.arrayValue?.first
                        if t?["state"]?.stringValue == "quarantined" { break }
                        if let pid = t?["worker_pid"]?.intValue, pid != lastPid {
                            kill(pid_t(pid), SIGKILL)
                            lastPid = pid
                            stop.lostConnection() // here: one more worker killed
                        }
                        Clock.sleep(seconds: 0.02)
                    }
                    stop.stop()
                }
                killer.start()
                let began = Clock.nanoseconds()
                while !stop.stopped && Clock.milliseconds(since: began) < 120_000 {
                    during.append(try runJob(conn, tenant: "neighbour", what: "neighbour job during the kills"))
                }
                stop.stop()
                Clock.sleep(seconds: 0.1)
                f.killsToQuarantine.append(stop.reconnects)
                do {
                    _ = try conn.submit(SubmitRequest(tenant: victim, argv: ["/bin/true"]))
                    Progress.say("[chaos] round \(round + 1): the victim's submit was accepted while quarantined")
                } catch let ClientError.server(e) {
                    if e.code == .unavailable && e.details["rule"]?.stringValue == "crash_loop_max" {
                        f.quarantineHeld += 1
                    } else {
                        Progress.say("[chaos] round \(round + 1): the victim's submit was refused otherwise: \(e)")
                    }
                }
                _ = try call("resume victim") { () throws(ClientError) in try conn.call(.tenantResume(name: victim)) }
            }
            f.neighbourBaseline = Summary(baseline)
            if !during.isEmpty { f.neighbourDuring = Summary(during) }
        }
    }
}
