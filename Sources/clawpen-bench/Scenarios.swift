import ClawpenClient
import ClawpenProtocol
import ClawpenWire
import Dispatch
import Foundation
import Glibc

/// The four measurements. Each starts its own daemon in its own temporary directories.
struct Scenarios {
    let options: Bench
    let setup: Setup

    static let job = ["/bin/true"]
    /// The tier of the warm, throughput, cold and density tenants: enterprise, whose
    /// jobs_per_minute (60,000) lets one tenant submit as fast as the benchmark does; free's 600
    /// per minute would refuse the warm run after 600 jobs (which is the quota working).
    static let tier = "enterprise"

    // MARK: - warm: sequential jobs on a worker that is up, against the fork/exec floor

    func warm(into report: inout Report) throws {
        let n = options.warmJobs
        try Daemon.with(setup, label: "warm") { d in
            let conn = try d.connect()
            let warmName = try benchTenant("warm")
            _ = try call("create tenant warm") { () throws(ClientError) in try conn.tenant(.tenantCreate(name: warmName, tier: Scenarios.tier)) }
            Progress.say("[warm] \(options.warmupJobs) warm-up jobs, then \(n) timed jobs and \(n) floor runs, alternating in blocks")

            let devNull = open("/dev/null", O_RDWR | O_CLOEXEC)
            guard devNull >= 0 else { throw BenchFailure("open /dev/null: \(String(cString: strerror(errno)))") }
            defer { close(devNull) }
            let floorCmd = PreparedCommand(path: Self.job[0], arguments: Self.job, environment: ["PATH=/usr/local/bin:/usr/bin:/bin"])

            for i in 0..<options.warmupJobs {
                _ = try runJob(conn, tenant: "warm", what: "warm-up job \(i + 1)")
                _ = try floorRun(floorCmd, devNull: devNull, what: "floor warm-up run \(i + 1)")
            }
            // Alternate blocks so that a drift of the machine (another process, frequency)
            // affects both series alike.
            var warm: [Double] = [], floor: [Double] = []
            warm.reserveCapacity(n)
            floor.reserveCapacity(n)
            let block = 100
            while warm.count < n {
                let k = min(block, n - warm.count)
                for _ in 0..<k { floor.append(try floorRun(floorCmd, devNull: devNull, what: "floor run \(floor.count + 1)")) }
                for _ in 0..<k { warm.append(try runJob(conn, tenant: "warm", what: "warm job \(warm.count + 1)")) }
            }
            report.floor = Summary(floor)
            report.warm = Summary(warm)

            report.bwrapRan = true
            if let bwrap = findInPath("bwrap") {
                report.bwrapPath = bwrap
                Progress.say("[warm] bubblewrap: \(options.bwrapRuns) runs of \(bwrap) ... /bin/true")
                let args = [
                    bwrap, "--ro-bind", "/usr", "/usr", "--ro-bind", "/lib", "/lib", "--ro-bind", "/lib64", "/lib64",
                    "--ro-bind", "/bin", "/bin", "--proc", "/proc", "--dev", "/dev", "--unshare-all", "/bin/true",
                ]
                let cmd = PreparedCommand(path: bwrap, arguments: args, environment: ["PATH=/usr/local/bin:/usr/bin:/bin"])
                let errPath = d.root + "/bwrap.stderr"
                let errFD = open(errPath, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
                defer { if errFD >= 0 { close(errFD) } }
                var samples: [Double] = []
                do {
                    for i in 0..<(options.bwrapRuns + 10) {
                        let ms = try floorRun(cmd, devNull: devNull, stderr: errFD >= 0 ? errFD : devNull, what: "bwrap run \(i + 1)")
                        if i >= 10 { samples.append(ms) } // the first ten warm the page cache
                    }
                    report.bwrap = Summary(samples)
                } catch {
                    // A peer that cannot run here is not a failure of clawpen: report it as absent.
                    let msg = readTextFile(errPath).map { String($0.prefix(300)) } ?? ""
                    report.bwrapNote = "bwrap failed: \(error) \(msg)".trimmingCharacters(in: .whitespacesAndNewlines)
                    Progress.say("[warm] warning: \(report.bwrapNote!)")
                }
            } else {
                report.bwrapNote = "bwrap not on PATH (Debian package bubblewrap)"
            }
        }
    }

    // MARK: - throughput: concurrent submitters over several tenants

    func throughput(into report: inout Report) throws {
        let threads = options.throughputThreads, tenants = options.throughputTenants, total = options.throughputJobs
        try Daemon.with(setup, label: "throughput") { d in
            let conn = try d.connect()
            let names = (0..<tenants).map { "tp-\($0)" }
            for name in names {
                let tn = try benchTenant(name)
                _ = try call("create tenant \(name)") { () throws(ClientError) in try conn.tenant(.tenantCreate(name: tn, tier: Scenarios.tier)) }
                for i in 0..<5 { _ = try runJob(conn, tenant: name, what: "warm-up job \(i + 1) for \(name)") }
            }
            // The machine's own ceiling: as many processes as submitters, each a shell running
            // /bin/true in a loop (separate processes, like the workers; no daemon involved).
            Progress.say("[throughput] floor: \(total) runs of /bin/true from \(threads) concurrent shell loops")
            let devNull = open("/dev/null", O_RDWR | O_CLOEXEC)
            guard devNull >= 0 else { throw BenchFailure("open /dev/null: \(String(cString: strerror(errno)))") }
            defer { close(devNull) }
            let loops = (0..<threads).map { t in
                let count = total / threads + (t < total % threads ? 1 : 0)
                let script = "i=0; while [ $i -lt \(count) ]; do /bin/true || exit 1; i=$((i+1)); done"
                return PreparedCommand(path: "/bin/sh", arguments: ["/bin/sh", "-c", script], environment: ["PATH=/usr/bin:/bin"])
            }
            let floorStart = Clock.nanoseconds()
            let pids = try loops.map { cmd throws(BenchFailure) in try cmd.spawn(stdin: devNull, stdout: devNull, stderr: devNull) }
            for pid in pids {
                if let bad = try PreparedCommand.wait(pid) { throw BenchFailure("throughput floor: a /bin/sh loop \(bad)") }
            }
            report.throughputFloorJobsPerS = Double(total) / (Clock.milliseconds(since: floorStart) / 1000)

            Progress.say("[throughput] \(total) jobs, \(threads) threads (one connection each), \(tenants) tenants")

            let shared = SharedRun()
            let socket = d.socketPath
            for t in 0..<threads {
                let count = total / threads + (t < total % threads ? 1 : 0)
                let tenant = names[t % tenants]
                let thread = Thread {
                    shared.submitter(index: t, socket: socket, tenant: tenant, count: count)
                }
                thread.name = "submitter-\(t)"
                thread.start()
            }
            for _ in 0..<threads { shared.ready.wait() }
            let benchCPU0 = cpuSeconds(pid: getpid()), daemonCPU0 = cpuSeconds(pid: d.pid)
            let start = Clock.nanoseconds()
            for _ in 0..<threads { shared.go.signal() }
            for _ in 0..<threads { shared.done.wait() }
            let ms = Clock.milliseconds(since: start)
            if let a = benchCPU0, let b = cpuSeconds(pid: getpid()) { report.throughputBenchCPU = (b - a) / (ms / 1000) }
            if let a = daemonCPU0, let b = cpuSeconds(pid: d.pid) { report.throughputDaemonCPU = (b - a) / (ms / 1000) }

            let (errors, latencies) = shared.results()
            if !errors.isEmpty {
                throw BenchFailure("throughput: \(errors.count) submitter(s) failed; first: \(errors[0])")
            }
            guard latencies.count == total else {
                throw BenchFailure("throughput: \(latencies.count) jobs finished, expected \(total)")
            }
            report.throughputJobsPerS = Double(total) / (ms / 1000)
            report.throughputJobs = total
            report.throughputThreads = threads
            report.throughputTenants = tenants
            report.throughputSeconds = ms / 1000
            report.throughputLatency = Summary(latencies)
        }
    }

    // MARK: - cold: the first job of a new tenant (worker start included)

    func cold(into report: inout Report) throws {
        let n = options.coldTenants
        try Daemon.with(setup, label: "cold") { d in
            let conn = try d.connect()
            let names = (0..<n).map { String(format: "cold-%04d", $0) }
            Progress.say("[cold] creating \(n) tenants (untimed), then timing each one's first job")
            for name in names {
                let tn = try benchTenant(name)
                _ = try call("create tenant \(name)") { () throws(ClientError) in try conn.tenant(.tenantCreate(name: tn, tier: Scenarios.tier)) }
            }
            let up = try workerPIDs(conn).count
            if up > 0 {
                Progress.say("[cold] warning: \(up) worker(s) were already up before the first job; their start is not timed")
            }
            report.coldPrestartedWorkers = up
            var samples: [Double] = []
            for name in names {
                if options.coldGapMs > 0 { usleep(useconds_t(options.coldGapMs * 1000)) }
                samples.append(try runJob(conn, tenant: name, what: "first job for \(name)"))
            }
            report.cold = Summary(samples)
            report.coldGapMs = options.coldGapMs
        }
    }

    // MARK: - density: private memory of idle workers and of a supervisor with many tenants

    func density(into report: inout Report) throws {
        let idle = options.idleTenants, total = options.densityTenants
        try Daemon.with(setup, label: "density") { d in
            let conn = try d.connect()
            sync()
            report.supervisorBaselineMiB = Double(try ProcessMemory.read(pid: d.pid).privateKiB) / 1024

            func addTenants(_ range: Range<Int>) throws {
                let started = Clock.nanoseconds()
                for i in range {
                    let name = String(format: "d-%04d", i)
                    let tn = try benchTenant(name)
                    _ = try call("create tenant \(name)") { () throws(ClientError) in try conn.tenant(.tenantCreate(name: tn, tier: Scenarios.tier)) }
                    _ = try runJob(conn, tenant: name, what: "job for \(name)")
                    if (i + 1) % 100 == 0 {
                        Progress.say("[density] \(i + 1) tenants, \(Int(Clock.milliseconds(since: started) / 1000)) s")
                    }
                }
            }

            Progress.say("[density] \(idle) tenants with one job each, then their idle workers' memory")
            try addTenants(0..<idle)
            sync() // dirty page cache of a freshly written binary counts as private (measured here)
            Clock.sleep(seconds: 1)
            let idlePIDs = try workerPIDs(conn)
            guard idlePIDs.count == idle else {
                throw BenchFailure("density: \(idlePIDs.count) of \(idle) workers are up after one job each")
            }
            var kib: [Double] = [], rss: [Double] = []
            for (_, pid) in idlePIDs {
                let m = try ProcessMemory.read(pid: pid)
                kib.append(Double(m.privateKiB))
                rss.append(Double(m.rssKiB))
            }
            report.idleWorkerKiB = Summary.median(kib)
            report.idleWorkerRssKiB = Summary.median(rss)
            report.idleWorkersMeasured = kib.count

            Progress.say("[density] growing to \(total) tenants, one job each (workers stay up)")
            try addTenants(idle..<total)
            sync()
            Clock.sleep(seconds: 1)
            let pids = try workerPIDs(conn)
            report.densityTenants = total
            report.densityWorkersUp = pids.count
            if pids.count != total {
                Progress.say("[density] warning: \(pids.count) of \(total) workers are up")
            }
            let sup = try ProcessMemory.read(pid: d.pid)
            report.supervisorMiB = Double(sup.privateKiB) / 1024
            report.supervisorRssMiB = Double(sup.rssKiB) / 1024
            var all: [Double] = []
            for (_, pid) in pids {
                if let m = try? ProcessMemory.read(pid: pid) { all.append(Double(m.privateKiB)) }
            }
            if !all.isEmpty {
                report.workerKiBAtDensity = Summary.median(all)
                report.workersTotalPrivateMiB = all.reduce(0, +) / 1024
            }
        }
    }

    // MARK: - helpers

    /// Submits /bin/true with wait and returns the round trip in ms; anything but `succeeded` fails.
    func runJob(_ conn: ClawpenConnection, tenant rawTenant: String, what: String) throws(BenchFailure) -> Double {
        let tenant = try benchTenant(rawTenant)
        let start = Clock.nanoseconds()
        let reply = try call(what) { () throws(ClientError) in
            try conn.submit(SubmitRequest(tenant: tenant, argv: Self.job, wait: true))
        }
        let ms = Clock.milliseconds(since: start)
        try Self.check(reply.job, what)
        return ms
    }

    static func check(_ job: JobView, _ what: String) throws(BenchFailure) {
        guard job.state == .succeeded else { throw BenchFailure("\(what): \(describe(job))") }
    }

    static func describe(_ job: JobView) -> String {
        var s = "job \(job.id) of tenant \(job.tenant) ended \(job.state.rawValue)"
        if let c = job.exitCode { s += ", exit \(c)" }
        if let sig = job.signal { s += ", signal \(sig)" }
        if let e = job.error { s += ", error \(e.code.rawValue): \(e.message)" }
        if !job.stderr.isEmpty { s += ", stderr: \(job.stderr.prefix(300))" }
        return s
    }

    func call<T>(_ what: String, _ body: () throws(ClientError) -> T) throws(BenchFailure) -> T {
        do { return try body() } catch { throw BenchFailure("\(what): \(error)") }
    }

    /// One fork/exec + wait of a prepared command, in ms; a non-zero exit fails.
    func floorRun(_ cmd: PreparedCommand, devNull: Int32, stderr: Int32? = nil, what: String) throws(BenchFailure) -> Double {
        let start = Clock.nanoseconds()
        let pid = try cmd.spawn(stdin: devNull, stdout: devNull, stderr: stderr ?? devNull)
        let bad = try PreparedCommand.wait(pid)
        let ms = Clock.milliseconds(since: start)
        if let bad { throw BenchFailure("\(what): \(cmd.path) \(bad)") }
        return ms
    }

    /// Tenants whose worker is up, with the worker's pid (from `status`).
    func workerPIDs(_ conn: ClawpenConnection) throws(BenchFailure) -> [(String, Int32)] {
        let status = try call("status") { () throws(ClientError) in try conn.status() }
        guard let tenants = status["tenants"]?.arrayValue else { throw BenchFailure("status without a tenants array") }
        return tenants.compactMap { t in
            guard let name = t["tenant"]?.stringValue, let pid = t["worker_pid"]?.intValue else { return nil }
            return (name, Int32(pid))
        }
    }

    func findInPath(_ name: String) -> String? {
        let path = getenv("PATH").map { String(cString: $0) } ?? "/usr/local/bin:/usr/bin:/bin"
        for dir in path.split(separator: ":") where dir.hasPrefix("/") {
            let candidate = "\(dir)/\(name)"
            if access(candidate, X_OK) == 0 { return candidate }
        }
        return nil
    }
}

/// State shared by the throughput submitter threads.
final class SharedRun: @unchecked Sendable {
    let ready = DispatchSemaphore(value: 0)
    let go = DispatchSemaphore(value: 0)
    let done = DispatchSemaphore(value: 0)
    private let lock = NSLock()
    private var errors: [String] = []
    private var latencies: [Double] = []
    private var failed = false

    func submitter(index: Int, socket: String, tenant: String, count: Int, gapMs: Double = 0) {
        var samples: [Double] = []
        samples.reserveCapacity(count)
        var conn: ClawpenConnection?
        do { conn = try ClawpenConnection(socketPath: socket) } catch { fail("submitter \(index): connect: \(error)") }
        ready.signal()
        go.wait()
        if let conn {
            for k in 0..<count {
                if isFailed { break }
                if gapMs > 0 { Clock.sleep(seconds: gapMs / 1000) }
                let start = Clock.nanoseconds()
                do {
                    let reply = try conn.submit(SubmitRequest(tenant: try TenantName(validating: tenant), argv: Scenarios.job, wait: true))
                    let ms = Clock.milliseconds(since: start)
                    guard reply.job.state == .succeeded else {
                        fail("submitter \(index), job \(k + 1): \(Scenarios.describe(reply.job))")
                        break
                    }
                    samples.append(ms)
                } catch {
                    fail("submitter \(index), job \(k + 1) for \(tenant): \(error)")
                    break
                }
            }
        }
        lock.lock()
        latencies.append(contentsOf: samples)
        lock.unlock()
        done.signal()
    }

    private var isFailed: Bool {
        lock.lock()
        defer { lock.unlock() }
        return failed
    }

    private func fail(_ message: String) {
        lock.lock()
        errors.append(message)
        failed = true
        lock.unlock()
    }

    func results() -> (errors: [String], latencies: [Double]) {
        lock.lock()
        defer { lock.unlock() }
        return (errors, latencies)
    }
}

/// The bench's own tenant names ("warm", "tp-3", "cold-0001") through the one validator.
func benchTenant(_ raw: String) throws(BenchFailure) -> TenantName {
    do { return try TenantName(validating: raw) } catch { throw BenchFailure("bench tenant name '\(raw)': \(error)") }
}
