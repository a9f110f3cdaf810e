import ClawpenClient
import ClawpenProtocol
import Foundation
import Glibc

/// The figures of `--scenario hostile-frames`.
struct HostileFigures: Sendable {
    var senders = 0
    var frameBytes = 0
    /// Another client's ping round trips with no hostile frame in flight, and while they are parsed.
    var pingUnloaded: Summary?
    var pingLoaded: Summary?
    /// Each hostile frame's round trip (sending 16 MiB, the parse, the answer).
    var hostileRoundTrip: Summary?
    /// The costliest shape of request frames of `ClientHandler`'s inline budget (4 KiB per read),
    /// parsed in this process by the daemon's own decoder: what parsing on the loop can cost.
    var inlineWorstShape = ""
    var inlineWorstMicros: Double?
    /// CPU time of the daemon's event loop thread and of its parser pool per hostile frame
    /// answered, over the loaded blocks: unlike latencies, not moved by what else the machine runs.
    var loopCPUPerFrameMs: Double?
    var poolCPUPerFrameMs: Double?

    var p99Ratio: Double? {
        guard let u = pingUnloaded, let l = pingLoaded, u.p99 > 0 else { return nil }
        return l.p99 / u.p99
    }
}

/// `--scenario hostile-frames`: a frame that is expensive to parse costs its sender only.
/// `--hostile-senders` clients each send frames of the maximum size (16 MiB) back to back, each
/// a ping padded with one string of escapes (`\u00e9\n\"` and a surrogate pair), which the daemon
/// must parse to the end: the costliest frame that passes every limit. Meanwhile another client
/// pings the daemon, one ping due every millisecond, each timed from when it was due; its
/// p50/p99 in blocks with the senders paused (unloaded) and running (loaded) alternate, so that a
/// drift of the machine touches both alike.
extension Scenarios {
    func hostileFrames(into report: inout Report) throws {
        var figures = HostileFigures()
        figures.senders = options.hostileSenders
        figures.frameBytes = 16 * 1024 * 1024
        let frame = Self.escapedPing(bytes: figures.frameBytes)
        (figures.inlineWorstShape, figures.inlineWorstMicros) = Self.inlineWorstCase()

        try Daemon.with(setup, label: "hostile-frames") { d in
            let pinger = try d.connect()
            let load = HostileLoad(frame: frame)
            var threads: [Thread] = []
            for i in 0..<options.hostileSenders {
                let socket = d.socketPath
                let t = Thread { load.sender(socket: socket) }
                t.name = "hostile-\(i)"
                threads.append(t)
                t.start()
            }
            defer { load.finish() }
            let block = 500
            let perPhase = options.hostilePings
            Progress.say(
                "[hostile-frames] \(perPhase) pings unloaded and \(perPhase) while \(options.hostileSenders) client(s) send \(figures.frameBytes)-byte frames, one every \(fmt(Self.pingIntervalMs, 0)) ms, alternating in blocks of \(block)"
            )
            for _ in 0..<50 { _ = try ping(pinger, due: Clock.nanoseconds()) } // warm-up
            var unloaded: [Double] = [], loaded: [Double] = []
            var loopCPU = 0.0, poolCPU = 0.0, framesBefore = 0
            while unloaded.count < perPhase {
                let k = min(block, perPhase - unloaded.count)
                load.pause()
                unloaded += try pacedPings(pinger, count: k)
                let before = threadCPU(pid: d.pid)
                framesBefore -= load.answers.count
                load.resume()
                // Let the first frames reach the parser before timing.
                load.waitForAnswers(atLeast: min(options.hostileSenders, 1))
                loaded += try pacedPings(pinger, count: k)
                load.pause()
                framesBefore += load.answers.count
                let after = threadCPU(pid: d.pid)
                loopCPU += after.loop - before.loop
                poolCPU += after.pool - before.pool
            }
            load.pause()
            if framesBefore > 0 {
                figures.loopCPUPerFrameMs = loopCPU * 1000 / Double(framesBefore)
                figures.poolCPUPerFrameMs = poolCPU * 1000 / Double(framesBefore)
            }
            if let error = load.errors.first { throw BenchFailure("a hostile sender: \(error)") }
            guard !load.answers.isEmpty else { throw BenchFailure("no hostile frame was answered") }
            figures.pingUnloaded = Summary(unloaded)
            figures.pingLoaded = Summary(loaded)
            figures.hostileRoundTrip = Summary(load.answers)
        }
        report.hostile = figures
    }

    /// Pings are due every millisecond, and each is timed from when it was due, not from when
    /// it could be sent: a loop that stalls for 300 ms delays the ~300 pings due meanwhile, as
    /// it would delay a service's requests (timing from the send would count the stall once).
    static let pingIntervalMs = 1.0

    /// Pings one every `pingIntervalMs`, each timed from when it was due (a stall delays the
    /// ones behind it too, as it would a client's). Shared by hostile-frames and hostile-clients.
    func pacedPings(_ conn: ClawpenConnection, count: Int) throws(BenchFailure) -> [Double] {
        var out: [Double] = []
        out.reserveCapacity(count)
        let start = Clock.nanoseconds()
        for i in 0..<count {
            let due = start + UInt64(Double(i) * Self.pingIntervalMs * 1_000_000)
            let now = Clock.nanoseconds()
            if due > now { Clock.sleep(seconds: Double(due - now) / 1e9) }
            out.append(try ping(conn, due: due))
        }
        return out
    }

    func ping(_ conn: ClawpenConnection, due: UInt64) throws(BenchFailure) -> Double {
        _ = try call("ping") { () throws(ClientError) in try conn.call(.ping) }
        return Clock.milliseconds(since: due)
    }

    /// CPU seconds of the daemon's event loop thread (NIO names it NIO-ELT-...) and of its
    /// thread pool (TP-...), from /proc/PID/task/*/stat.
    private func threadCPU(pid: Int32) -> (loop: Double, pool: Double) {
        var loop = 0.0, pool = 0.0
        guard let dir = opendir("/proc/\(pid)/task") else { return (0, 0) }
        defer { closedir(dir) }
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            guard let tid = Int32(name), let comm = readTextFile("/proc/\(pid)/task/\(tid)/comm"),
                let cpu = cpuSeconds(pid: pid, task: tid)
            else { continue }
            if comm.hasPrefix("NIO-ELT") { loop += cpu } else if comm.hasPrefix("TP-") { pool += cpu }
        }
        return (loop, pool)
    }

    /// `{"type":"ping","id":"hostile","pad":"\u00e9\n\"\ud83d\ude00..."}`, exactly `bytes` long.
    static func escapedPing(bytes: Int) -> [UInt8] {
        let head = Array(#"{"type":"ping","id":"hostile","pad":""#.utf8), tail = Array(#""}"#.utf8)
        let unit = Array(#"\u00e9\n\"\ud83d\ude00"#.utf8)
        var out = head
        out.reserveCapacity(bytes)
        while out.count + unit.count + tail.count <= bytes { out += unit }
        out += Array(repeating: UInt8(ascii: "a"), count: bytes - out.count - tail.count)
        return out + tail
    }

    /// Request frames of `inlineBytes` in every costly shape, parsed by RequestCodec here (a
    /// release build, like the daemon): the slowest shape and its time in microseconds.
    static func inlineWorstCase(inlineBytes: Int = 4 * 1024) -> (String, Double) {
        func padded(_ open: String, _ item: String, _ close: String) -> [UInt8] {
            var out = Array(("{\"type\":\"ping\",\"id\":1,\"pad\":" + open).utf8)
            let tail = Array((close + "}").utf8), unit = Array(item.utf8)
            while out.count + unit.count + 1 + tail.count <= inlineBytes { out += unit + [UInt8(ascii: ",")] }
            if out.last == UInt8(ascii: ",") { out.removeLast() }
            return out + tail
        }
        var keys = Array("{\"type\":\"ping\",\"id\":1".utf8)
        var k = 0
        while keys.count < inlineBytes - 16 { keys += Array(",\"k\(k)\":0".utf8); k += 1 }
        keys += [UInt8(ascii: "}")]
        let nest = String(repeating: "[", count: 30) + "0" + String(repeating: "]", count: 30)
        let shapes: [(String, [UInt8])] = [
            ("many keys", keys),
            ("huge array", padded("[", "0", "]")),
            ("many numbers", padded("[", "-1.25e-7", "]")),
            ("nesting 30 deep", padded("[", nest, "]")),
            ("escapes", Array(String(decoding: escapedPing(bytes: inlineBytes), as: UTF8.self).utf8)),
            ("empty objects", padded("[", "{}", "]")),
        ]
        var worst = ("", 0.0)
        for (name, payload) in shapes {
            var best = Double.infinity
            for _ in 0..<200 {
                let t0 = Clock.nanoseconds()
                let decoded = RequestCodec.decode(payload)
                best = min(best, Clock.milliseconds(since: t0) * 1000)
                if case .failure(let e) = decoded.request { Progress.say("[hostile-frames] \(name) at \(payload.count) bytes was refused: \(e.message)") }
            }
            Progress.say("[hostile-frames] \(name): \(payload.count) bytes parsed in \(fmt(best, 1)) µs")
            if best > worst.1 { worst = (name, best) }
        }
        return worst
    }
}

/// The hostile senders: each on its own connection, a frame, its answer, the next frame, while
/// running; `pause` returns once no frame of theirs is in flight.
final class HostileLoad: @unchecked Sendable {
    private let frame: [UInt8]
    private let cond = NSCondition()
    private var running = false, stopped = false, inFlight = 0
    private(set) var answers: [Double] = []
    private(set) var errors: [String] = []

    init(frame: [UInt8]) { self.frame = frame }

    func sender(socket: String) {
        let conn: ClawpenConnection
        do { conn = try ClawpenConnection(socketPath: socket) } catch {
            cond.lock(); errors.append("\(error)"); cond.unlock()
            return
        }
        while true {
            cond.lock()
            while !running && !stopped { cond.wait() }
            if stopped { cond.unlock(); return }
            inFlight += 1
            cond.broadcast()
            cond.unlock()
            let t0 = Clock.nanoseconds()
            var failure: String?
            do {
                try conn.send(frame)
                let reply = try conn.receive()
                if reply["type"]?.stringValue != "pong" { failure = "the frame was answered \(reply.text.prefix(300))" }
            } catch {
                failure = "\(error)"
            }
            let ms = Clock.milliseconds(since: t0)
            cond.lock()
            inFlight -= 1
            if let failure { errors.append(failure); stopped = true } else { answers.append(ms) }
            cond.broadcast()
            cond.unlock()
        }
    }

    func resume() { cond.lock(); running = true; cond.broadcast(); cond.unlock() }

    func pause() {
        cond.lock()
        running = false
        while inFlight > 0 { cond.wait() }
        cond.unlock()
    }

    /// Waits until at least `count` frames are in flight (the senders have started).
    func waitForAnswers(atLeast count: Int) {
        cond.lock()
        while inFlight < count && !stopped { cond.wait() }
        cond.unlock()
    }

    func finish() { cond.lock(); stopped = true; running = false; cond.broadcast(); cond.unlock() }
}
