import ArgumentParser
import Glibc

/// Which part of the benchmark to run.
enum Scenario: String, ExpressibleByArgument, CaseIterable, Sendable {
    case all, warm, throughput, cold, density, fairness
    case hostileFrames = "hostile-frames"
    case hostileClients = "hostile-clients"
    case stream, interactive
    case egress
    case files
    case subjobs
    case chaos, restart
}

/// Something went wrong: the benchmark stops, says what happened and exits 1. A benchmark that
/// measured failed jobs would report numbers about errors, so every job result is checked.
struct BenchFailure: Error, CustomStringConvertible {
    let description: String
    init(_ message: String) { description = message }
}

@main
struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "clawpen-bench",
        abstract: "Measure clawpen against its targets with a real supervisor.",
        discussion: """
            Each scenario starts its own `clawpen serve` (temporary socket, state and workspace \
            directories under /tmp, --idle-timeout 3600), runs /bin/true jobs (tenants of tier \
            enterprise, whose rate quota does not stop a benchmark) through the client \
            library, stops the daemon with SIGTERM and removes the directories. Every job must end \
            `succeeded`; anything else stops the run with exit status 1 and the daemon's log tail.

            warm: p50/p99 of sequential submits (wait) of /bin/true to one tenant whose worker \
            is up, against the floor (the same /bin/true fork/exec'd directly by this process, as \
            many times, alternating in blocks), and bubblewrap's time for a sandboxed /bin/true when \
            `bwrap` is on PATH.

            throughput: jobs/s with concurrent submitters (one thread and one connection each, one \
            job at a time) spread over several tenants.

            cold: time from the first submit for a new tenant (created beforehand, untimed) to its \
            result, worker start included.

            density: private memory (Private_Clean + Private_Dirty of /proc/PID/smaps_rollup, after \
            sync) of idle workers (median), and of the supervisor with many tenants that each ran one \
            job, workers still up.

            fairness (not part of `all`): the noisy neighbour. Tenant 'flood' keeps a backlog of \
            --fairness-flood-factor times the router's max_running of `sleep` jobs queued while \
            --fairness-quiet-tenants tenants each run /bin/true one job at a time; the quiet \
            tenants' p50/p99 without and with the flood, the flood's share of the running slots, \
            once with the fair dispatcher and once with `serve --dispatch fifo`. Target: quiet \
            p99 under flood within 2x the quiet p99 without it (fair).

            hostile-frames (not part of `all`): --hostile-senders clients send request frames of \
            the maximum size (16 MiB: a ping padded with one string of escapes, parsed to the end) \
            back to back while another client pings (one ping due every millisecond, timed from when \
            it was due); its p50/p99 with the senders paused and running, in alternating blocks. Also the slowest shape of a 4 KiB frame (what the daemon \
            parses on its event loop per connection and read) parsed in this process.

            hostile-clients (not part of `all`): with the daemon's default client budgets, an \
            ordinary client's paced pings and submits alone, then beside --hostile-idle idle \
            connections, --hostile-never-readers that never read (job.wait piles on a job that ends \
            with 1 MB of output, job.get spam, streamed submits) and --hostile-flooders pinging back \
            to back: its p50/p99 both ways, the daemon's RSS peak, and the disconnects by budget. \
            Targets: RSS <= 256 MiB; p99 loaded within 2x unloaded.

            files (not part of `all`): file.put and file.get of a 4 KiB file (p50 latency, \
            alternating in blocks with the same done by `submit` of dd of= and cat in the sandbox) \
            and of a --file-large-mib file (MB/s), and both through `bwrap ... cat` on the tenant's \
            home directory. Targets: 4 KiB get p50 <= 0.5 ms; the large file >= 300 MB/s each way.

            Targets: warm p50 within 2x the floor; >= 1,500 jobs/s; idle worker <= 1,024 KiB \
            private; supervisor <= 100 MiB private with 1,000 tenants. Missing a target does not \
            change the exit status; a failed job or a misbehaving daemon does.
            """)

    @Option(
        help:
            "Run one scenario: all (warm, throughput, cold, density), warm, throughput, cold, density, fairness, hostile-frames, hostile-clients, egress, files, subjobs (a job's submit of /bin/true that waits, from inside the sandbox against from outside), stream (a line's latency from the job's write to the client, against a plain pipe), interactive (a Python REPL's `1+1` round trip on a tty job, against a local pty), chaos (kill -9 of the supervisor under load, restarted on the same state dir, then of one tenant's workers beside a timed neighbour; docs/reliability.md) or restart (10,000 queued jobs left by a killed daemon: the restarted one's time to a socket that accepts and a first job running)."
    )
    var scenario: Scenario = .all

    @Flag(help: "Also print the figures as one JSON object on the last line of standard output.")
    var json = false

    @Option(
        help: ArgumentHelp("The clawpen executable to start (default: the one next to clawpen-bench; clawpen-worker must be next to it).", valueName: "path"))
    var clawpen: String?

    @Option(
        help: ArgumentHelp(
            "Policies directory passed to `clawpen serve --policies` (default: the repository's policies/, found above the executable, else ./policies).",
            valueName: "dir"))
    var policies: String?

    @Option(
        name: .customLong("serve-arg"), parsing: .unconditionalSingleValue,
        help: ArgumentHelp("Extra argument for `clawpen serve` (repeatable), e.g. --serve-arg=--fsync-accepts --serve-arg=false.", valueName: "arg"))
    var serveArgs: [String] = []

    @Option(name: .customLong("warm-jobs"), help: "Timed sequential jobs in the warm scenario; the floor runs as many fork/execs.")
    var warmJobs = 2000

    @Option(name: .customLong("warmup-jobs"), help: "Untimed jobs (and floor spawns) before the warm measurement.")
    var warmupJobs = 200

    @Option(name: .customLong("bwrap-runs"), help: "Timed bubblewrap runs in the warm scenario (skipped when bwrap is not on PATH).")
    var bwrapRuns = 200

    @Option(name: .customLong("throughput-jobs"), help: "Jobs in total in the throughput scenario.")
    var throughputJobs = 8000

    @Option(
        name: .customLong("throughput-threads"), help: "Concurrent submitter threads, each with its own connection, submitting and waiting one job at a time.")
    var throughputThreads = 16

    @Option(name: .customLong("throughput-tenants"), help: "Tenants the throughput submitters are spread over (thread i uses tenant i mod N).")
    var throughputTenants = 8

    @Option(name: .customLong("cold-gap-ms"), help: "Pause between new tenants' first jobs in the cold scenario (tenants arriving one at a time; 0: a burst).")
    var coldGapMs = 25.0

    @Option(name: .customLong("cold-tenants"), help: "New tenants whose first job is timed in the cold scenario.")
    var coldTenants = 100

    @Option(name: .customLong("idle-tenants"), help: "Tenants whose idle workers are measured for the per-worker figure (median).")
    var idleTenants = 10

    @Option(name: .customLong("density-tenants"), help: "Tenants (each runs one job; workers stay up) when the supervisor's memory is measured.")
    var densityTenants = 1000

    @Option(name: .customLong("fairness-quiet-tenants"), help: "Quiet tenants in the fairness scenario.")
    var fairnessQuietTenants = 8

    @Option(name: .customLong("fairness-quiet-jobs"), help: "Jobs each quiet tenant runs, per phase (without and with the flood).")
    var fairnessQuietJobs = 25

    @Option(name: .customLong("fairness-quiet-gap-ms"), help: "Pause before each quiet job (quiet tenants are not busy ones).")
    var fairnessQuietGapMs = 50.0

    @Option(name: .customLong("fairness-flood-factor"), help: "The flood's backlog, in multiples of the router's max_running.")
    var fairnessFloodFactor = 20

    @Option(name: .customLong("fairness-flood-job-ms"), help: "Length of each flood job (`sleep`), in ms.")
    var fairnessFloodJobMs = 100.0

    @Option(name: .customLong("runtime-samples"), help: "Timed lines (stream) or round trips (interactive), each for clawpen and for its floor.")
    var runtimeSamples: Int = 2000
    @Option(name: .customLong("subjob-rounds"), help: "Rounds of the subjobs scenario (each: a block inside, a block outside).")
    var subjobRounds: Int = 10
    @Option(name: .customLong("subjob-jobs"), help: "Timed submits per block in the subjobs scenario.")
    var subjobJobs: Int = 100
    @Option(name: .customLong("hostile-senders"), help: "Clients sending 16 MiB frames back to back in the hostile-frames scenario.")
    var hostileSenders = 2

    @Option(
        name: .customLong("hostile-pings"),
        help: "Timed pings of the other client, per phase (unloaded and loaded), in the hostile-frames and hostile-clients scenarios.")
    var hostilePings = 2000

    @Option(name: .customLong("hostile-idle"), help: "Idle connections in the hostile-clients scenario.")
    var hostileIdle = 1000
    @Option(
        name: .customLong("hostile-never-readers"),
        help: "Connections that never read, in the hostile-clients scenario (4 in 10 pile up job.waits, 3 spam job.get, 3 stream).")
    var hostileNeverReaders = 100
    @Option(
        name: .customLong("hostile-kinds"),
        help: "Which kinds of never-readers the hostile-clients scenario makes, comma-separated: piles, spam, streams (default all three).")
    var hostileKinds = "piles,spam,streams"
    @Option(name: .customLong("hostile-flooders"), help: "Clients sending pings back to back in the hostile-clients scenario.")
    var hostileFlooders = 10
    @Option(name: .customLong("hostile-waits"), help: "job.waits each wait pile sends in the hostile-clients scenario (each a 1 MB view when the job ends).")
    var hostileWaits = 100
    @Option(name: .customLong("hostile-submits"), help: "Timed submits of /bin/true per phase in the hostile-clients scenario.")
    var hostileSubmits = 300

    @Option(
        name: .customLong("egress-requests"),
        help: "HTTP and as many HTTPS requests, each on a new connection, direct and through the proxy, in the egress scenario.")
    var egressRequests = 400

    @Option(name: .customLong("egress-download-bytes"), help: "The download measured direct and through the proxy in the egress scenario (default 256 MiB).")
    var egressDownloadBytes = 256 * 1024 * 1024

    @Option(name: .customLong("file-small-runs"), help: "Timed puts and gets of 4 KiB in the files scenario (each peer as many).")
    var fileSmallRuns = 1000

    @Option(name: .customLong("file-large-runs"), help: "Timed puts and gets of the large file in the files scenario.")
    var fileLargeRuns = 5

    @Option(name: .customLong("file-large-mib"), help: "Size of the large file in the files scenario, MiB.")
    var fileLargeMiB = 64

    @Option(name: .customLong("file-chunk-kib"), help: "Bytes per frame of the large file's put and get, KiB.")
    var fileChunkKiB = 1024

    @Option(name: .customLong("chaos-cycles"), help: "kill -9 cycles of the supervisor in the chaos scenario (0: none).")
    var chaosCycles = 100
    @Option(name: .customLong("chaos-tenants"), help: "Tenants under load (one submitting client each) in the chaos scenario.")
    var chaosTenants = 8
    @Option(name: .customLong("chaos-worker-rounds"), help: "Rounds of worker kills until the quarantine in the chaos scenario (0: none).")
    var chaosWorkerRounds = 5
    @Option(name: .customLong("chaos-neighbour-jobs"), help: "Timed neighbour jobs per round without kills in the chaos scenario.")
    var chaosNeighbourJobs = 300
    @Option(name: .customLong("restart-jobs"), help: "Jobs left queued by the killed daemon in the restart scenario.")
    var restartJobs = 10_000
    @Option(name: .customLong("restart-rounds"), help: "Restarts timed in the restart scenario (each on the same 10,000 queued jobs).")
    var restartRounds = 5

    @Flag(name: .customLong("keep-temp"), help: "Keep the temporary directories (daemon log, store) instead of removing them.")
    var keepTemp = false

    func validate() throws {
        guard warmJobs >= 1, warmupJobs >= 0, bwrapRuns >= 1, throughputJobs >= 1, throughputThreads >= 1,
            throughputTenants >= 1, coldTenants >= 1, idleTenants >= 1, hostileSenders >= 1, hostilePings >= 1, hostileIdle >= 0, hostileNeverReaders >= 0,
            Set(hostileKinds.split(separator: ",").map(String.init)).isSubset(of: ["piles", "spam", "streams"]),
            hostileFlooders >= 0,
            hostileWaits >= 1, hostileSubmits >= 1, runtimeSamples >= 1,
            subjobRounds >= 1, subjobJobs >= 1
        else {
            throw ValidationError("counts must be positive")
        }
        guard densityTenants >= idleTenants else {
            throw ValidationError("--density-tenants must be at least --idle-tenants (\(idleTenants))")
        }
    }

    func run() throws {
        var setup: Setup
        do { setup = try Setup.resolve(clawpen: clawpen, policies: policies, keepTemp: keepTemp) } catch {
            Progress.say("clawpen-bench: \(error)")
            throw ExitCode(1)
        }
        setup.serveArgs = serveArgs
        var report = Report(machine: MachineInfo.current())
        report.sandboxed = geteuid() == 0
        let scenarios = Scenarios(options: self, setup: setup)
        do {
            if scenario == .all || scenario == .warm { try scenarios.warm(into: &report) }
            if scenario == .all || scenario == .throughput { try scenarios.throughput(into: &report) }
            if scenario == .all || scenario == .cold { try scenarios.cold(into: &report) }
            if scenario == .all || scenario == .density { try scenarios.density(into: &report) }
            if scenario == .fairness { try scenarios.fairness(into: &report) }
            if scenario == .hostileFrames { try scenarios.hostileFrames(into: &report) }
            if scenario == .stream { try scenarios.stream(into: &report) }
            if scenario == .interactive { try scenarios.interactive(into: &report) }
            if scenario == .egress { try scenarios.egress(into: &report) }
            if scenario == .subjobs {
                let figures = try scenarios.subjobs()
                print(figures.table(), terminator: "")
                if json { print(figures.json().text) }
                fflush(nil)
                return
            }
            if scenario == .chaos {
                let figures = try scenarios.chaos()
                print(figures.table(), terminator: "")
                fflush(nil)
                if !figures.failures.isEmpty {
                    Progress.say("\nclawpen-bench: chaos: FAILED: " + figures.failures.joined(separator: "; "))
                    throw ExitCode(1)
                }
                return
            }
            if scenario == .restart {
                let figures = try scenarios.restart()
                print(figures.table(), terminator: "")
                fflush(nil)
                return
            }
            if scenario == .hostileClients {
                let figures = try scenarios.hostileClients()
                print(figures.table(), terminator: "")
                if json { print(figures.json().text) }
                fflush(nil)
                return
            }
            if scenario == .files {
                let figures = try scenarios.files()
                print(figures.table(), terminator: "")
                if json { print(figures.json().text) }
                fflush(nil)
                return
            }
        } catch {
            Progress.say("\nclawpen-bench: FAILED: \(error)")
            if report.hasFigures {
                Progress.say("\nFigures measured before the failure:\n" + report.table())
            }
            throw ExitCode(1)
        }
        print(report.table(), terminator: "")
        if json { print(report.json().text) }
        fflush(nil)
    }
}

/// Where the binaries and policies are.
struct Setup: Sendable {
    let clawpen: String
    let policies: String
    let keepTemp: Bool
    var serveArgs: [String] = []

    init(clawpen: String, policies: String, keepTemp: Bool, serveArgs: [String] = []) {
        self.clawpen = clawpen; self.policies = policies; self.keepTemp = keepTemp; self.serveArgs = serveArgs
    }

    static func resolve(clawpen: String?, policies: String?, keepTemp: Bool) throws(BenchFailure) -> Setup {
        let exeDir = dirname(of: selfExecutable())
        let bin = absolute(clawpen ?? exeDir + "/clawpen")
        guard access(bin, X_OK) == 0 else {
            throw BenchFailure("\(bin) is not an executable (build it, or give --clawpen PATH)")
        }
        let worker = dirname(of: bin) + "/clawpen-worker"
        guard access(worker, X_OK) == 0 else {
            throw BenchFailure("\(worker) is missing: `clawpen serve` looks for clawpen-worker next to clawpen")
        }
        var dir: String
        if let policies {
            dir = absolute(policies)
        } else {
            dir = absolute("policies")
            var d = exeDir
            while d != "/" && !d.isEmpty {
                if isDirectory(d + "/policies/tiers") { dir = d + "/policies"; break }
                d = dirname(of: d)
            }
        }
        guard isDirectory(dir) else { throw BenchFailure("policies directory \(dir) does not exist (give --policies DIR)") }
        return Setup(clawpen: bin, policies: dir, keepTemp: keepTemp)
    }

    static func selfExecutable() -> String {
        var buf = [CChar](repeating: 0, count: 4096)
        let n = readlink("/proc/self/exe", &buf, buf.count - 1)
        guard n > 0 else { return CommandLine.arguments[0] }
        return String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    static func dirname(of path: String) -> String {
        guard let i = path.lastIndex(of: "/") else { return "." }
        return i == path.startIndex ? "/" : String(path[..<i])
    }

    static func absolute(_ p: String) -> String {
        if p.hasPrefix("/") { return p }
        var buf = [CChar](repeating: 0, count: 4096)
        guard getcwd(&buf, buf.count) != nil else { return p }
        return String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self) + "/" + p
    }

    static func isDirectory(_ p: String) -> Bool {
        var st = stat()
        return stat(p, &st) == 0 && (st.st_mode & S_IFMT) == S_IFDIR
    }
}

/// Progress and errors go to standard error, so that standard output holds only the figures.
enum Progress {
    static func say(_ s: String) {
        let bytes = Array((s + "\n").utf8)
        var off = 0
        while off < bytes.count {
            let n = bytes[off...].withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { return }
            off += n
        }
    }
}
