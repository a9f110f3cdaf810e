import CClawpenShim
import ClawpenClient
import ClawpenProtocol
import ClawpenSpawn
import ClawpenWire
import Foundation
import Glibc

/// The figures of `--scenario stream` and `--scenario interactive`: ours against a floor
/// measured in the same run, in alternating blocks.
struct RuntimeFigures: Sendable {
    var ours: Summary?
    var floor: Summary?
    var samples = 0

    var p50Over: Double? {
        guard let o = ours, let f = floor else { return nil }
        return o.p50 - f.p50
    }
}

/// `stream`: a Python job writes its CLOCK_MONOTONIC time as a line every 2 ms; the bench takes
/// the difference on arrival of each line (both read the same system-wide clock: the sandbox has
/// no time namespace). Through clawpen the line goes job pipe -> worker -> socketpair ->
/// supervisor -> client socket -> output frame (JSON, base64) decoded here; the floor is the same
/// script as a child of the bench writing into a plain pipe that the bench reads.
///
/// `interactive`: a Python REPL on a terminal, `1+1` typed and `2` read back; through clawpen a
/// `tty` job with stdin open (job.input, output frames), against the same REPL on a local pty
/// the bench opens and drives itself.
extension Scenarios {
    static let streamLinesPerBlock = 200
    static let streamScript = """
        import sys, time
        n = int(sys.argv[1])
        for i in range(n):
            sys.stdout.write('%d\\n' % time.clock_gettime_ns(time.CLOCK_MONOTONIC))
            sys.stdout.flush()
            time.sleep(0.002)
        """

    func stream(into report: inout Report) throws {
        var figures = RuntimeFigures()
        let blocks = max(1, options.runtimeSamples / Self.streamLinesPerBlock)
        let python = findInPath("python3") ?? "/usr/bin/python3"
        try Daemon.with(setup, label: "stream") { d in
            let conn = try d.connect()
            let tenant = try benchTenant("stream")
            _ = try call("create tenant stream") { () throws(ClientError) in try conn.tenant(.tenantCreate(name: tenant, tier: Scenarios.tier)) }
            Progress.say("[stream] \(blocks) blocks of \(Self.streamLinesPerBlock) lines through clawpen and through a plain pipe, alternating")
            var ours: [Double] = [], floor: [Double] = []
            _ = try streamThroughClawpen(conn, tenant: tenant, lines: 20) // warm-up: the worker, python's page cache
            _ = try streamThroughPipe(python, lines: 20)
            for _ in 0..<blocks {
                floor += try streamThroughPipe(python, lines: Self.streamLinesPerBlock)
                ours += try streamThroughClawpen(conn, tenant: tenant, lines: Self.streamLinesPerBlock)
            }
            figures.ours = Summary(ours)
            figures.floor = Summary(floor)
            figures.samples = ours.count
        }
        report.stream = figures
    }

    /// Arrival delays (ms) of a streamed job's lines.
    private func streamThroughClawpen(_ conn: ClawpenConnection, tenant: TenantName, lines: Int) throws -> [Double] {
        let id = conn.makeID()
        let submit = SubmitRequest(
            tenant: tenant, argv: ["python3", "-c", Self.streamScript, String(lines)], wait: true, options: RunOptions(stream: true))
        try call("stream submit") { () throws(ClientError) in try conn.send(RequestCodec.encode(.submit(submit), id: id)) }
        var delays: [Double] = []
        var partial: [UInt8] = []
        while true {
            let frame = try call("stream frame") { () throws(ClientError) in try conn.receive() }
            let now = Clock.nanoseconds()
            guard frame["id"] == id else { continue }
            switch frame["type"]?.stringValue {
            case "output":
                guard let out = OutputFrame(frame) else { throw BenchFailure("a malformed output frame") }
                partial += out.data
                delays += Self.lineDelays(&partial, now: now)
            case "job":
                let state = frame["job"]?["state"]?.stringValue
                guard state == "succeeded" else { throw BenchFailure("the stream job ended \(state ?? "?"): \(frame.text.prefix(300))") }
                guard delays.count == lines else { throw BenchFailure("\(delays.count) of \(lines) lines arrived") }
                return delays
            case "error": throw BenchFailure("stream submit refused: \(frame.text.prefix(300))")
            default: continue
            }
        }
    }

    /// Arrival delays (ms) of the same script's lines through a plain pipe.
    private func streamThroughPipe(_ python: String, lines: Int) throws -> [Double] {
        var fds: [Int32] = [-1, -1]
        guard cp_pipe(&fds, 0) == 0 else { throw BenchFailure("pipe: \(String(cString: strerror(errno)))") }
        let devNull = open("/dev/null", O_RDWR | O_CLOEXEC)
        defer { close(devNull) }
        let cmd = PreparedCommand(path: python, arguments: ["python3", "-c", Self.streamScript, String(lines)], environment: ["PATH=/usr/bin:/bin"])
        let pid = try cmd.spawn(stdin: devNull, stdout: fds[1], stderr: devNull, parentDeathSignal: SIGKILL)
        close(fds[1])
        defer { close(fds[0]) }
        var delays: [Double] = []
        var partial: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = buf.withUnsafeMutableBytes { read(fds[0], $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            let now = Clock.nanoseconds()
            partial += buf[0..<n]
            delays += Self.lineDelays(&partial, now: now)
        }
        if let bad = try PreparedCommand.wait(pid) { throw BenchFailure("the floor's python \(bad)") }
        guard delays.count == lines else { throw BenchFailure("\(delays.count) of \(lines) lines came through the pipe") }
        return delays
    }

    /// Takes the complete lines off `partial`: each holds the writer's monotonic nanoseconds.
    static func lineDelays(_ partial: inout [UInt8], now: UInt64) -> [Double] {
        var out: [Double] = []
        while let nl = partial.firstIndex(of: 10) {
            let line = String(decoding: partial[..<nl], as: UTF8.self)
            partial.removeSubrange(...nl)
            if let sent = UInt64(line.trimmingCharacters(in: .whitespaces)), now >= sent { out.append(Double(now - sent) / 1e6) }
        }
        return out
    }

    // MARK: - interactive

    static let replPerBlock = 50

    func interactive(into report: inout Report) throws {
        var figures = RuntimeFigures()
        let blocks = max(1, options.runtimeSamples / Self.replPerBlock)
        let python = findInPath("python3") ?? "/usr/bin/python3"
        try Daemon.with(setup, label: "interactive") { d in
            let conn = try d.connect()
            let tenant = try benchTenant("repl")
            _ = try call("create tenant repl") { () throws(ClientError) in try conn.tenant(.tenantCreate(name: tenant, tier: Scenarios.tier)) }
            Progress.say("[interactive] \(blocks) blocks of \(Self.replPerBlock) `1+1` round trips through a clawpen tty job and a local pty, alternating")
            let remote = try RemoteREPL(conn, tenant: tenant, scenarios: self)
            let local = try LocalREPL(python: python)
            defer { local.stop() }
            for _ in 0..<10 {
                _ = try remote.roundTrip()
                _ = try local.roundTrip()
            }
            var ours: [Double] = [], floor: [Double] = []
            for _ in 0..<blocks {
                for _ in 0..<Self.replPerBlock { floor.append(try local.roundTrip()) }
                for _ in 0..<Self.replPerBlock { ours.append(try remote.roundTrip()) }
            }
            try remote.stop()
            figures.ours = Summary(ours)
            figures.floor = Summary(floor)
            figures.samples = ours.count
        }
        report.interactive = figures
    }
}

/// What `1+1` looks like coming back from a REPL on a terminal: the echo, then the answer.
private let replAnswer = Array("1+1\r\n2\r\n".utf8)
private let replPrompt = Array(">>> ".utf8)

private func contains(_ hay: [UInt8], _ needle: [UInt8]) -> Bool {
    guard hay.count >= needle.count else { return false }
    for i in 0...(hay.count - needle.count) where hay[i] == needle[0] && Array(hay[i..<(i + needle.count)]) == needle { return true }
    return false
}

/// A Python REPL in a clawpen `tty` job.
private final class RemoteREPL {
    let conn: ClawpenConnection
    let id: JSONValue
    var jobID = ""
    var buffer: [UInt8] = []
    let scenarios: Scenarios

    init(_ conn: ClawpenConnection, tenant: TenantName, scenarios: Scenarios) throws {
        self.conn = conn; self.scenarios = scenarios
        id = conn.makeID()
        let submit = SubmitRequest(
            tenant: tenant, argv: ["python3", "-q"], wait: true, options: RunOptions(stream: true, stdinOpen: true, tty: true))
        try scenarios.call("interactive submit") { () throws(ClientError) in try conn.send(RequestCodec.encode(.submit(submit), id: id)) }
        while jobID.isEmpty {
            let f = try scenarios.call("accepted") { () throws(ClientError) in try conn.receive() }
            if f["type"]?.stringValue == "error" { throw BenchFailure("interactive submit refused: \(f.text.prefix(300))") }
            if f["type"]?.stringValue == "accepted" { jobID = f["job"]?["id"]?.stringValue ?? "" }
        }
        try readUntil(replPrompt)
    }

    private func readUntil(_ needle: [UInt8]) throws {
        while !contains(buffer, needle) {
            let f = try scenarios.call("repl frame") { () throws(ClientError) in try conn.receive() }
            if f["type"]?.stringValue == "output", let out = OutputFrame(f) { buffer += out.data }
            if f["type"]?.stringValue == "job" { throw BenchFailure("the REPL ended: \(f.text.prefix(300))") }
        }
    }

    func roundTrip() throws -> Double {
        buffer.removeAll(keepingCapacity: true)
        let input = RequestCodec.encode(.runtime(.input(jobID: jobID, data: Array("1+1\n".utf8), eof: false)), id: conn.makeID())
        let start = Clock.nanoseconds()
        try scenarios.call("job.input") { () throws(ClientError) in try conn.send(input) }
        try readUntil(replAnswer)
        let ms = Clock.milliseconds(since: start)
        try readUntil(replPrompt)
        return ms
    }

    func stop() throws {
        let bye = RequestCodec.encode(.runtime(.input(jobID: jobID, data: [], eof: true)), id: conn.makeID())
        try scenarios.call("job.input eof") { () throws(ClientError) in try conn.send(bye) }
        while true {
            let f = try scenarios.call("repl end") { () throws(ClientError) in try conn.receive() }
            if f["type"]?.stringValue == "job" && f["id"] == id { return }
        }
    }
}

/// The same REPL on a pty of the bench's own: the floor.
private final class LocalREPL {
    let master: Int32
    let pid: pid_t
    var buffer: [UInt8] = []

    init(python: String) throws {
        var m: Int32 = -1, s: Int32 = -1
        guard cp_pty_open(&m, &s, 24, 80) == 0 else { throw BenchFailure("a local pty: \(String(cString: strerror(errno)))") }
        _ = cp_set_nonblocking(m, 0)
        var options = SpawnOptions(fds: [s, s, s])
        options.newSession = true
        options.controllingTTY = true
        options.parentDeathSignal = SIGKILL
        let cmd = SpawnCommand(path: python, arguments: ["python3", "-q"], environment: ["PATH=/usr/bin:/bin", "TERM=xterm-256color", "LANG=C.UTF-8"])
        do { pid = try cmd.spawn(options) } catch { throw BenchFailure("the local REPL: \(error)") }
        close(s)
        master = m
        try readUntil(replPrompt)
    }

    private func readUntil(_ needle: [UInt8]) throws {
        var chunk = [UInt8](repeating: 0, count: 4096)
        while !contains(buffer, needle) {
            let n = chunk.withUnsafeMutableBytes { read(master, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { throw BenchFailure("the local REPL ended") }
            buffer += chunk[0..<n]
        }
    }

    func roundTrip() throws -> Double {
        buffer.removeAll(keepingCapacity: true)
        let line = Array("1+1\n".utf8)
        let start = Clock.nanoseconds()
        _ = line.withUnsafeBytes { write(master, $0.baseAddress, $0.count) }
        try readUntil(replAnswer)
        let ms = Clock.milliseconds(since: start)
        try readUntil(replPrompt)
        return ms
    }

    func stop() {
        kill(pid, SIGKILL)
        _ = try? PreparedCommand.wait(pid)
        close(master)
    }
}
