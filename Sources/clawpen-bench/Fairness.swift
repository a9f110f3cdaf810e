import ClawpenClient
import ClawpenProtocol
import ClawpenWire
import Dispatch
import Foundation
import Glibc

/// The noisy-neighbour figures of one dispatcher (fair or fifo).
struct FairnessFigures: Sendable {
    var mode: String
    var maxRunning = 0
    var quietBaseline: Summary?
    var quietFlood: Summary?
    /// Mean share of the running slots held by the flooding tenant during the flood.
    var floodShare: Double?
    var floodBacklog = 0

    var p99Ratio: Double? {
        guard let b = quietBaseline, let f = quietFlood, b.p99 > 0 else { return nil }
        return f.p99 / b.p99
    }
}

/// `--scenario fairness`: one tenant floods (a backlog of `floodFactor` times what the host runs
/// at once, kept topped up) while quiet tenants each submit one job at a time, with the fair
/// dispatcher and with FIFO, each in its own daemon.
extension Scenarios {
    static let fairnessRatioTarget = 2.0

    func fairness(into report: inout Report) throws {
        for mode in ["fair", "fifo"] {
            report.fairness.append(try fairnessRun(mode: mode))
        }
    }

    private func fairnessRun(mode: String) throws -> FairnessFigures {
        // The flooding tenant may run and queue as much as it likes: only the router stands
        // between it and the others (its own max_concurrent_runs would hide the dispatcher).
        let policies = try copyPolicies(
            addingTenant: "flood",
            """
            tier = "enterprise"
            max_concurrent_runs = 4096
            max_queued = 10000000
            jobs_per_minute = 100000000
            """)
        defer { try? FileManager.default.removeItem(atPath: policies.dir) }
        let s = Setup(clawpen: setup.clawpen, policies: policies.path, keepTemp: setup.keepTemp, serveArgs: setup.serveArgs + ["--dispatch", mode])
        var figures = FairnessFigures(mode: mode)
        try Daemon.with(s, label: "fairness-\(mode)") { d in
            let conn = try d.connect()
            let quiet = (0..<options.fairnessQuietTenants).map { "quiet-\($0)" }
            let floodName = try benchTenant("flood")
            _ = try call("create tenant flood") { () throws(ClientError) in try conn.tenant(.tenantCreate(name: floodName, tier: "enterprise")) }
            for name in quiet {
                let tn = try benchTenant(name)
                _ = try call("create tenant \(name)") { () throws(ClientError) in try conn.tenant(.tenantCreate(name: tn, tier: "free")) }
                for i in 0..<3 { _ = try runJob(conn, tenant: name, what: "warm-up job \(i + 1) for \(name)") }
            }
            _ = try runJob(conn, tenant: "flood", what: "warm-up job for flood")
            let status = try call("status") { () throws(ClientError) in try conn.status(tenant: nil) }
            figures.maxRunning = Int(status["supervisor"]?["router"]?["max_running"]?.intValue ?? 0)
            figures.floodBacklog = figures.maxRunning * options.fairnessFloodFactor

            Progress.say(
                "[fairness \(mode)] quiet baseline: \(quiet.count) tenants x \(options.fairnessQuietJobs) jobs, one at a time, \(fmt(options.fairnessQuietGapMs, 0)) ms apart"
            )
            figures.quietBaseline = Summary(try quietRound(d, tenants: quiet))

            Progress.say(
                "[fairness \(mode)] flood: tenant 'flood' keeps \(figures.floodBacklog) jobs of `sleep \(fmt(options.fairnessFloodJobMs / 1000, 3))` queued (\(options.fairnessFloodFactor)x max_running \(figures.maxRunning))"
            )
            let flood = Flooder(socket: d.socketPath, backlog: figures.floodBacklog, jobSeconds: options.fairnessFloodJobMs / 1000)
            let floodThread = Thread { flood.run() }
            floodThread.start()
            guard flood.waitUntilFull(timeoutSeconds: 60) else {
                flood.stop()
                throw BenchFailure("fairness: the flood backlog did not fill: \(flood.error ?? "timeout")")
            }
            let sampler = ShareSampler(socket: d.socketPath)
            let samplerThread = Thread { sampler.run() }
            samplerThread.start()
            Progress.say("[fairness \(mode)] quiet tenants under the flood")
            let underFlood = try quietRound(d, tenants: quiet)
            sampler.stop()
            flood.stop()
            if let e = flood.error { throw BenchFailure("fairness: flooder: \(e)") }
            figures.quietFlood = Summary(underFlood)
            figures.floodShare = sampler.share
        }
        return figures
    }

    /// Every quiet tenant runs its jobs one at a time on its own thread; returns all latencies (ms).
    private func quietRound(_ d: Daemon, tenants: [String]) throws -> [Double] {
        let shared = SharedRun()
        let socket = d.socketPath
        let gap = options.fairnessQuietGapMs
        let count = options.fairnessQuietJobs
        for (i, tenant) in tenants.enumerated() {
            let t = Thread { shared.submitter(index: i, socket: socket, tenant: tenant, count: count, gapMs: gap) }
            t.start()
        }
        for _ in tenants { shared.ready.wait() }
        for _ in tenants { shared.go.signal() }
        for _ in tenants { shared.done.wait() }
        let (errors, latencies) = shared.results()
        if !errors.isEmpty { throw BenchFailure("fairness: \(errors.count) quiet submitter(s) failed; first: \(errors[0])") }
        return latencies
    }

    private func copyPolicies(addingTenant name: String, _ toml: String) throws -> (dir: String, path: String) {
        var template = Array("/tmp/clawpen-bench-policies-XXXXXX".utf8CString)
        guard mkdtemp(&template) != nil else { throw BenchFailure("mkdtemp: \(String(cString: strerror(errno)))") }
        let dir = String(decoding: template.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        let path = dir + "/policies"
        try FileManager.default.copyItem(atPath: setup.policies, toPath: path)
        try FileManager.default.createDirectory(atPath: path + "/tenants", withIntermediateDirectories: true)
        try (toml + "\n").write(toFile: path + "/tenants/\(name).toml", atomically: true, encoding: .utf8)
        return (dir, path)
    }
}

/// Keeps the flooding tenant's queue at `backlog` detached jobs.
final class Flooder: @unchecked Sendable {
    let socket: String
    let backlog: Int
    let jobSeconds: Double
    private let lock = NSLock()
    private var stopped = false
    private var full = false
    private(set) var error: String?

    init(socket: String, backlog: Int, jobSeconds: Double) {
        self.socket = socket; self.backlog = backlog; self.jobSeconds = jobSeconds
    }

    func run() {
        do {
            let conn = try ClawpenConnection(socketPath: socket)
            let argv = ["sleep", String(jobSeconds)]
            while !isStopped {
                let st = try conn.status(tenant: try TenantName(validating: "flood"))
                let queued = Int(st["tenants"]?.arrayValue?.first?["jobs"]?["queued"]?.intValue ?? 0)
                if queued >= backlog { setFull(); Clock.sleep(seconds: 0.01); continue }
                for _ in 0..<(backlog - queued) {
                    _ = try conn.submit(SubmitRequest(tenant: try TenantName(validating: "flood"), argv: argv, wait: false))
                }
            }
        } catch {
            lock.lock(); self.error = "\(error)"; full = true; lock.unlock()
        }
    }

    private var isStopped: Bool { lock.lock(); defer { lock.unlock() }; return stopped }
    private func setFull() { lock.lock(); full = true; lock.unlock() }
    func stop() { lock.lock(); stopped = true; lock.unlock() }

    func waitUntilFull(timeoutSeconds: Double) -> Bool {
        let start = Clock.nanoseconds()
        while Clock.milliseconds(since: start) < timeoutSeconds * 1000 {
            lock.lock(); let f = full; lock.unlock()
            if f { return error == nil }
            Clock.sleep(seconds: 0.01)
        }
        return false
    }
}

/// Samples, every 20 ms, the flooding tenant's running jobs and all running jobs.
final class ShareSampler: @unchecked Sendable {
    let socket: String
    private let lock = NSLock()
    private var stopped = false
    private var flood = 0, total = 0

    init(socket: String) { self.socket = socket }

    func run() {
        guard let conn = try? ClawpenConnection(socketPath: socket) else { return }
        while true {
            lock.lock(); let s = stopped; lock.unlock()
            if s { return }
            if let st = try? conn.status(tenant: nil) {
                let all = Int(st["supervisor"]?["router"]?["running"]?.intValue ?? 0)
                let f = st["tenants"]?.arrayValue?.first { $0["tenant"]?.stringValue == "flood" }?["jobs"]?["running"]?.intValue ?? 0
                lock.lock(); flood += Int(f); total += all; lock.unlock()
            }
            Clock.sleep(seconds: 0.02)
        }
    }

    func stop() { lock.lock(); stopped = true; lock.unlock() }
    var share: Double? { lock.lock(); defer { lock.unlock() }; return total > 0 ? Double(flood) / Double(total) : nil }
}
