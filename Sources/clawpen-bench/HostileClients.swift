import CClawpenShim
import ClawpenClient
import ClawpenProtocol
import ClawpenWire
import Foundation
import Glibc

/// The figures of `--scenario hostile-clients`.
struct HostileClientsFigures: Sendable {
    var idle = 0, neverReaders = 0, flooders = 0
    var waitsPerPiler = 0
    /// The ordinary client's paced pings and sequential submits of /bin/true, before the hostile
    /// clients came and while they were there.
    var pingUnloaded: Summary?, pingLoaded: Summary?
    var submitUnloaded: Summary?, submitLoaded: Summary?
    /// The daemon's resident set (KiB): before the clients connected, the highest sample while
    /// they were there (VmRSS every 20 ms), and VmHWM at the end (the peak since it started).
    var rssBeforeKiB = 0, rssPeakSampledKiB = 0, hwmKiB = 0
    /// From `status --json` at the end.
    var clientBudget = 0, allClientsBudget = 0, peakHeldBytes = 0
    var disconnects: [String: Int] = [:]
    /// Never-readers whose connection the daemon closed, of each kind.
    var closedPilers = 0, closedSpammers = 0, closedStreamers = 0
    var pilers = 0, spammers = 0, streamers = 0
    var floodAnswers = 0, floodSeconds = 0.0
    /// Requests the daemon held back to its per-connection rate (status, ClientPacing).
    var pacedRequests = 0, requestsPerSecond = 0
    var slowJobState = ""
    /// The loaded pings' longest stalls: when each began (ms after the piled-up job was
    /// submitted) and how long it lasted.
    var pingStalls: [Stall] = []

    /// What the scenario promises (docs/reliability.md): the daemon's peak within this, and the
    /// ordinary client's p99 within twice the unloaded one.
    static let rssBoundMiB = 256
    static let ratioTarget = 2.0

    var pingRatio: Double? { ratio(pingUnloaded, pingLoaded) }
    var submitRatio: Double? { ratio(submitUnloaded, submitLoaded) }

    private func ratio(_ u: Summary?, _ l: Summary?) -> Double? {
        guard let u, let l, u.p99 > 0 else { return nil }
        return l.p99 / u.p99
    }

    func table() -> String {
        var rows: [[String]] = [["hostile-clients", "value", "target", "met"]]
        func ms(_ s: Summary?) -> String { s.map { "p50 \(fmt($0.p50, 3)) ms, p99 \(fmt($0.p99, 3)) ms (n=\($0.count))" } ?? "-" }
        func met(_ ok: Bool?) -> String { ok.map { $0 ? "yes" : "NO" } ?? "" }
        rows.append(["clients: idle / never reading / flooding", "\(idle) / \(neverReaders) / \(flooders)", "", ""])
        rows.append([
            "never-readers: wait piles / get spam / streams", "\(pilers) (\(waitsPerPiler) job.wait each) / \(spammers) / \(streamers)", "", "",
        ])
        rows.append(["ordinary ping, unloaded", ms(pingUnloaded), "", ""])
        rows.append(["ordinary ping, loaded", ms(pingLoaded), "", ""])
        rows.append([
            "  ping p99 loaded / unloaded", pingRatio.map { fmt($0, 2) } ?? "-", "<= \(fmt(Self.ratioTarget, 1))",
            met(pingRatio.map { $0 <= Self.ratioTarget }),
        ])
        rows.append(["ordinary submit /bin/true, unloaded", ms(submitUnloaded), "", ""])
        rows.append(["ordinary submit /bin/true, loaded", ms(submitLoaded), "", ""])
        rows.append([
            "  submit p99 loaded / unloaded", submitRatio.map { fmt($0, 2) } ?? "-", "<= \(fmt(Self.ratioTarget, 1))",
            met(submitRatio.map { $0 <= Self.ratioTarget }),
        ])
        rows.append(["daemon RSS before", "\(rssBeforeKiB / 1024) MiB", "", ""])
        rows.append([
            "daemon RSS peak (sampled / VmHWM)", "\(rssPeakSampledKiB / 1024) MiB / \(hwmKiB / 1024) MiB", "<= \(Self.rssBoundMiB) MiB",
            met(max(rssPeakSampledKiB, hwmKiB) <= Self.rssBoundMiB * 1024),
        ])
        rows.append(["budgets: per client / all clients", "\(clientBudget >> 20) MiB / \(allClientsBudget >> 20) MiB", "", ""])
        rows.append(["peak bytes held for clients", "\(fmt(Double(peakHeldBytes) / 1048576, 1)) MiB", "", ""])
        rows.append([
            "disconnects: client_budget / all_clients_budget",
            "\(disconnects["client_budget"] ?? 0) / \(disconnects["all_clients_budget"] ?? 0)", "", "",
        ])
        rows.append([
            "never-readers closed: piles / spam / streams", "\(closedPilers)/\(pilers) / \(closedSpammers)/\(spammers) / \(closedStreamers)/\(streamers)",
            "", "",
        ])
        rows.append(["flood answers", "\(floodAnswers) in \(fmt(floodSeconds, 1)) s", "", ""])
        rows.append([
            "requests held to the rate (per connection)", "\(pacedRequests) (\(requestsPerSecond == 0 ? "no limit" : "\(requestsPerSecond)/s"))", "", "",
        ])
        rows.append([
            "longest ping stalls (start after the pile's job, ms: length)",
            pingStalls.isEmpty
                ? "none over \(fmt(Stall.thresholdMs, 0)) ms" : pingStalls.map { "\(fmt($0.startMs, 0)): \(fmt($0.lengthMs, 1))" }.joined(separator: ", "),
            "", "",
        ])
        rows.append(["the piled-up job", slowJobState, "succeeded", met(slowJobState == "succeeded")])
        return renderTable(rows)
    }

    func json() -> JSONValue {
        func s(_ v: Summary?) -> JSONValue {
            v.map { .object([("p50_ms", .double($0.p50)), ("p99_ms", .double($0.p99)), ("max_ms", .double($0.max)), ("n", .int(Int64($0.count)))]) }
                ?? .null
        }
        return .object([
            (
                "hostile_clients",
                .object([
                    ("idle", .int(Int64(idle))), ("never_readers", .int(Int64(neverReaders))), ("flooders", .int(Int64(flooders))),
                    ("ping_unloaded", s(pingUnloaded)), ("ping_loaded", s(pingLoaded)), ("ping_p99_ratio", pingRatio.map(JSONValue.double) ?? .null),
                    ("submit_unloaded", s(submitUnloaded)), ("submit_loaded", s(submitLoaded)),
                    ("submit_p99_ratio", submitRatio.map(JSONValue.double) ?? .null),
                    ("rss_before_kib", .int(Int64(rssBeforeKiB))), ("rss_peak_sampled_kib", .int(Int64(rssPeakSampledKiB))),
                    ("vm_hwm_kib", .int(Int64(hwmKiB))), ("peak_held_bytes", .int(Int64(peakHeldBytes))),
                    ("disconnects", .object(disconnects.sorted { $0.key < $1.key }.map { ($0.key, .int(Int64($0.value))) })),
                    ("flood_answers", .int(Int64(floodAnswers))), ("paced_requests", .int(Int64(pacedRequests))),
                    ("client_requests_per_second", .int(Int64(requestsPerSecond))),
                    (
                        "ping_stalls",
                        .array(pingStalls.map { .object([("start_ms", .double($0.startMs)), ("length_ms", .double($0.lengthMs))]) })
                    ),
                ])
            )
        ])
    }
}

/// `--scenario hostile-clients`: bounded memory under slow and hostile clients
/// (docs/reliability.md). With the daemon's default budgets, an ordinary client's paced pings
/// (one due every millisecond, timed from when it was due) and sequential submits of /bin/true
/// are timed alone, then while these are connected:
/// * `--hostile-idle` idle connections (each pinged once, then silent);
/// * `--hostile-never-readers` connections that never read a byte, of three kinds: wait piles
///   (each sends `--hostile-waits` `job.wait`s of one job that sleeps 2 s and then writes 1 MB,
///   so that its end queues that many 1 MB views at once: the shape the budget exists for),
///   get spam (200 pipelined `job.get`s of a finished job with 1 MB of output) and streams (a
///   streamed submit of 20 MB of output);
/// * `--hostile-flooders` clients sending pings back to back as fast as they are answered.
/// The daemon's RSS is sampled every 20 ms throughout.
extension Scenarios {
    func hostileClients() throws -> HostileClientsFigures {
        var f = HostileClientsFigures()
        f.idle = options.hostileIdle
        f.neverReaders = options.hostileNeverReaders
        f.flooders = options.hostileFlooders
        f.waitsPerPiler = options.hostileWaits
        // 4 in 10 wait piles, 3 get spam, 3 streams; of only the kinds asked for, as many each.
        let kinds = Set(options.hostileKinds.split(separator: ",").map(String.init))
        let share: [String: Int] = ["piles": 4, "spam": 3, "streams": 3].filter { kinds.contains($0.key) }
        let parts = share.values.reduce(0, +)
        f.pilers = parts == 0 ? 0 : f.neverReaders * (share["piles"] ?? 0) / parts
        f.spammers = parts == 0 ? 0 : f.neverReaders * (share["spam"] ?? 0) / parts
        f.streamers = kinds.contains("streams") ? f.neverReaders - f.pilers - f.spammers : 0
        f.neverReaders = f.pilers + f.spammers + f.streamers
        let raised = cp_raise_nofile_limit()
        let needed = f.idle + f.neverReaders + f.flooders + 64
        if raised >= 0 && raised < needed {
            throw BenchFailure("RLIMIT_NOFILE is \(raised), the scenario needs \(needed) descriptors")
        }

        // The scenario is about buffer budgets: every one of its connections (all from this
        // uid) must be let in, whatever the defaults of the connection limits are here (they
        // follow RLIMIT_NOFILE, which differs between machines).
        var setup = self.setup
        if Daemon.serves(setup.clawpen, option: "--max-clients-per-uid") {
            // Before the user's own --serve-arg, which wins (the last of an option does).
            setup.serveArgs = ["--max-clients", "\(needed + 64)", "--max-clients-per-uid", "\(needed + 64)"] + setup.serveArgs
        }
        try Daemon.with(setup, label: "hostile-clients") { d in
            let conn = try d.connect()
            for name in ["ordinary", "hostile"] {
                let tn = try benchTenant(name)
                _ = try call("create tenant \(name)") { () throws(ClientError) in try conn.tenant(.tenantCreate(name: tn, tier: Scenarios.tier)) }
            }
            let hostile = try benchTenant("hostile")
            let megabyte = ["sh", "-c", "head -c 1000000 /dev/zero | tr '\\0' x"]
            let big = try call("the 1 MB job") { () throws(ClientError) in
                try conn.submit(SubmitRequest(tenant: hostile, argv: megabyte, wait: true)).job
            }
            guard big.state == .succeeded, big.stdout.utf8.count == 1_000_000 else {
                throw BenchFailure("the 1 MB job ended \(big.state.rawValue) with \(big.stdout.utf8.count) bytes of output")
            }
            for i in 0..<20 { _ = try runJob(conn, tenant: "ordinary", what: "warm-up job \(i + 1)") }
            let pinger = try d.connect()
            for _ in 0..<50 { _ = try ping(pinger, due: Clock.nanoseconds()) }

            let pings = options.hostilePings, submits = options.hostileSubmits
            Progress.say("[hostile-clients] unloaded: \(pings) paced pings, \(submits) submits of /bin/true")
            f.pingUnloaded = Summary(try pacedPings(pinger, count: pings))
            f.submitUnloaded = Summary(try (0..<submits).map { i throws(BenchFailure) in try runJob(conn, tenant: "ordinary", what: "unloaded submit \(i)") })
            f.rssBeforeKiB = procStatusKiB(d.pid, "VmRSS")

            let sampler = RSSSampler(pid: d.pid)
            let samplerThread = Thread { sampler.run() }
            samplerThread.start()
            defer { sampler.stop() }

            Progress.say("[hostile-clients] connecting \(f.idle) idle clients")
            var idle: [Int32] = []
            defer { for fd in idle { close(fd) } }
            for i in 0..<f.idle {
                let fd = try rawConnect(d.socketPath)
                idle.append(fd)
                try rawSend(fd, Framing.frame(JSONValue.object([("type", .string("ping")), ("id", .int(Int64(i)))]).serialized()))
            }
            for fd in idle { guard rawReadFrame(fd) != nil else { throw BenchFailure("an idle client's ping was not answered") } }

            // The job the wait piles wait for: it ends 2 s from now with 1 MB of output.
            let slowSubmitted = Clock.nanoseconds()
            let slow = try call("the slow 1 MB job") { () throws(ClientError) in
                try conn.submit(
                    SubmitRequest(tenant: hostile, argv: ["sh", "-c", "sleep 2; head -c 1000000 /dev/zero | tr '\\0' x"], timeoutSeconds: 60, wait: false)
                ).job
            }
            Progress.say(
                "[hostile-clients] \(f.pilers) wait piles (\(f.waitsPerPiler) job.wait each), \(f.spammers) job.get spammers, \(f.streamers) streams, none reading; \(f.flooders) flooders"
            )
            var pilers: [Int32] = [], spammers: [Int32] = [], streamers: [Int32] = []
            defer { for fd in pilers + spammers + streamers { close(fd) } }
            func frames(_ n: Int, _ make: (Int) -> [(String, JSONValue)]) -> [UInt8] {
                var out: [UInt8] = []
                for i in 0..<n { out += Framing.frame(JSONValue.object(make(i)).serialized()) }
                return out
            }
            let waits = frames(f.waitsPerPiler) { [("type", .string("job.wait")), ("id", .int(Int64($0))), ("job_id", .string(slow.id))] }
            let gets = frames(200) { [("type", .string("job.get")), ("id", .int(Int64($0))), ("job_id", .string(big.id))] }
            let stream = frames(1) { _ in
                [
                    ("type", .string("submit")), ("id", .int(1)), ("tenant", .string("hostile")),
                    ("argv", .array(["head", "-c", "20000000", "/dev/zero"].map(JSONValue.string))), ("stream", .bool(true)),
                    ("timeout_s", .int(120)),
                ]
            }
            for _ in 0..<f.pilers { let fd = try rawConnect(d.socketPath); pilers.append(fd); try rawSend(fd, waits) }
            for _ in 0..<f.spammers { let fd = try rawConnect(d.socketPath); spammers.append(fd); try rawSend(fd, gets) }
            for _ in 0..<f.streamers { let fd = try rawConnect(d.socketPath); streamers.append(fd); try rawSend(fd, stream) }

            let flood = Flood()
            var floodThreads: [Thread] = []
            for i in 0..<f.flooders {
                let path = d.socketPath
                let t = Thread { flood.run(socket: path) }
                t.name = "flood-\(i)"
                floodThreads.append(t)
                t.start()
            }
            let floodStart = Clock.nanoseconds()
            Progress.say("[hostile-clients] loaded: \(pings) paced pings, \(submits) submits (the piled-up job ends during the pings)")
            let loadedStart = Clock.nanoseconds()
            let loadedPings = try pacedPings(pinger, count: pings)
            f.pingLoaded = Summary(loadedPings)
            f.pingStalls = Stall.longest(
                loadedPings, intervalMs: Self.pingIntervalMs, offsetMs: Double(loadedStart - slowSubmitted) / 1e6)
            f.submitLoaded = Summary(try (0..<submits).map { i throws(BenchFailure) in try runJob(conn, tenant: "ordinary", what: "loaded submit \(i)") })
            flood.stop()
            f.floodSeconds = Clock.milliseconds(since: floodStart) / 1000
            f.floodAnswers = flood.answers
            if let error = flood.error { throw BenchFailure("a flooder: \(error)") }

            let ended = try call("job.wait of the piled-up job") { () throws(ClientError) in try conn.job(.jobWait(jobID: slow.id)).job }
            f.slowJobState = ended.state.rawValue
            f.closedPilers = pilers.filter(peerClosed).count
            f.closedSpammers = spammers.filter(peerClosed).count
            f.closedStreamers = streamers.filter(peerClosed).count
            let status = try call("status") { () throws(ClientError) in try conn.status(tenant: nil) }
            let clients = status["supervisor"]?["clients"] ?? .null
            f.clientBudget = Int(clients["client_budget_bytes"]?.intValue ?? 0)
            f.allClientsBudget = Int(clients["all_clients_budget_bytes"]?.intValue ?? 0)
            f.peakHeldBytes = Int(clients["peak_bytes"]?.intValue ?? 0)
            f.pacedRequests = Int(clients["fairness"]?["paced_requests"]?.intValue ?? 0)
            f.requestsPerSecond = Int(clients["fairness"]?["client_requests_per_second"]?.intValue ?? 0)
            for reason in ["client_budget", "all_clients_budget"] { f.disconnects[reason] = Int(clients["disconnects"]?[reason]?.intValue ?? 0) }
            sampler.stop()
            f.rssPeakSampledKiB = sampler.peakKiB
            f.hwmKiB = procStatusKiB(d.pid, "VmHWM")
        }
        return f
    }

}

/// A stretch of time in which paced pings went unanswered (each ping timed from when it was
/// due: a stall of L ms makes the pings due in it late by up to L).
struct Stall: Sendable {
    var startMs: Double
    var lengthMs: Double

    static let thresholdMs = 5.0

    /// The three longest stalls over `thresholdMs` in pings due `intervalMs` apart, with their
    /// start shifted by `offsetMs`.
    static func longest(_ latencies: [Double], intervalMs: Double, offsetMs: Double) -> [Stall] {
        var merged: [Stall] = []
        for (i, l) in latencies.enumerated() where l > thresholdMs {
            let due = Double(i) * intervalMs
            if var last = merged.last, due <= last.startMs + last.lengthMs {
                last.lengthMs = max(last.lengthMs, due + l - last.startMs)
                merged[merged.count - 1] = last
            } else {
                merged.append(Stall(startMs: due, lengthMs: l))
            }
        }
        return merged.sorted { $0.lengthMs > $1.lengthMs }.prefix(3).map { Stall(startMs: $0.startMs + offsetMs, lengthMs: $0.lengthMs) }
    }
}

/// A line of /proc/PID/status in KiB (VmRSS, VmHWM); 0 if unreadable.
func procStatusKiB(_ pid: Int32, _ field: String) -> Int {
    guard let text = readTextFile("/proc/\(pid)/status") else { return 0 }
    let line = text.split(separator: "\n").first { $0.hasPrefix(field + ":") } ?? ""
    return Int(line.split(separator: " ").dropFirst().first ?? "") ?? 0
}

/// The daemon's VmRSS every 20 ms, its highest kept.
final class RSSSampler: @unchecked Sendable {
    private let pid: Int32
    private let lock = NSLock()
    private var stopped = false
    private var peak = 0

    init(pid: Int32) { self.pid = pid }

    var peakKiB: Int { lock.withLock { peak } }

    func run() {
        while !lock.withLock({ stopped }) {
            let kib = procStatusKiB(pid, "VmRSS")
            lock.withLock { peak = max(peak, kib) }
            Clock.sleep(seconds: 0.02)
        }
    }

    func stop() { lock.withLock { stopped = true } }
}

/// Clients that send pings back to back, each as soon as the last was answered.
final class Flood: @unchecked Sendable {
    private let lock = NSLock()
    private var stopped = false
    private var count = 0
    private var firstError: String?

    var answers: Int { lock.withLock { count } }
    var error: String? { lock.withLock { firstError } }

    func run(socket: String) {
        let conn: ClawpenConnection
        do { conn = try ClawpenConnection(socketPath: socket) } catch {
            lock.withLock { firstError = firstError ?? "\(error)" }
            return
        }
        var local = 0
        while !lock.withLock({ stopped }) {
            do { _ = try conn.call(.ping) } catch {
                lock.withLock { firstError = firstError ?? "\(error)" }
                break
            }
            local += 1
            if local % 256 == 0 { lock.withLock { count += 256 } }
        }
        lock.withLock { count += local % 256 }
    }

    func stop() { lock.withLock { stopped = true } }
}

func rawConnect(_ path: String) throws(BenchFailure) -> Int32 {
    let fd = cp_unix_connect(path)
    guard fd >= 0 else { throw BenchFailure("connect to \(path): \(String(cString: strerror(errno)))") }
    var tv = timeval(tv_sec: 10, tv_usec: 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    return fd
}

func rawSend(_ fd: Int32, _ bytes: [UInt8]) throws(BenchFailure) {
    var off = 0
    while off < bytes.count {
        let n = bytes[off...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        if n < 0 && errno == EINTR { continue }
        guard n > 0 else { throw BenchFailure("send: \(String(cString: strerror(errno)))") }
        off += n
    }
}

func rawReadFrame(_ fd: Int32) -> [UInt8]? {
    func exactly(_ n: Int) -> [UInt8]? {
        var out = [UInt8](repeating: 0, count: n)
        var got = 0
        while got < n {
            let r = out.withUnsafeMutableBytes { recv(fd, $0.baseAddress! + got, n - got, 0) }
            if r < 0 && errno == EINTR { continue }
            if r <= 0 { return nil }
            got += r
        }
        return out
    }
    guard let h = exactly(4) else { return nil }
    return exactly(Int(h[0]) << 24 | Int(h[1]) << 16 | Int(h[2]) << 8 | Int(h[3]))
}

/// The daemon closed the connection (POLLHUP: both directions shut), whatever it left unread.
func peerClosed(_ fd: Int32) -> Bool {
    var p = pollfd(fd: fd, events: 0x2000 /* POLLRDHUP */, revents: 0)
    guard poll(&p, 1, 0) >= 0 else { return false }
    return p.revents & Int16(POLLHUP) != 0
}
