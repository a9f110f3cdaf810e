import ClawpenWire
import FoundationEssentials

/// The agent runtime's requests (docs/protocol.md, "Streaming, stdin, terminals, attach and
/// logs"): talking to a running job, following it, and listing jobs.
public enum RuntimeRequest: Sendable, Equatable {
    /// Bytes for a job's stdin (`stdin_open`), then optionally its end.
    case input(jobID: String, data: [UInt8], eof: Bool)
    case resize(jobID: String, rows: UInt16, cols: UInt16)
    case signal(jobID: String, signal: JobSignal)
    /// Follow a job's output (from the start of what is kept with `replay`).
    case attach(jobID: String, replay: Bool)
    /// End this connection's attach (or submit stream) with request id `attachID`.
    case detach(jobID: String, attachID: JSONValue)
    /// The kept output, then (follow) the live output until the end.
    case logs(jobID: String, follow: Bool)
    case list(tenant: TenantName?, state: JobState?, limit: Int)

    public static let types = ["job.input", "job.resize", "job.signal", "job.attach", "job.detach", "job.logs", "job.list"]

    /// Most decoded bytes one `job.input` may carry.
    public static let maxInputBytes = 1024 * 1024
    /// The largest terminal side `rows`/`cols` may give.
    public static let maxTerminalSide = 4096

    public var typeName: String {
        switch self {
        case .input: return "job.input"
        case .resize: return "job.resize"
        case .signal: return "job.signal"
        case .attach: return "job.attach"
        case .detach: return "job.detach"
        case .logs: return "job.logs"
        case .list: return "job.list"
        }
    }

    public var jobID: String? {
        switch self {
        case .input(let id, _, _), .resize(let id, _, _), .signal(let id, _), .attach(let id, _), .detach(let id, _), .logs(let id, _):
            return id
        case .list: return nil
        }
    }

    static func parse(_ f: RequestCodec.Fields) throws -> RuntimeRequest {
        switch f.type {
        case "job.input":
            let id = try f.string("job_id")
            var data: [UInt8] = []
            if let b64 = try f.optionalString("data_b64") {
                // Base64 is 4/3 of the bytes: refuse an oversized one before decoding it.
                guard b64.utf8.count <= (maxInputBytes / 3 + 1) * 4 else {
                    throw ProtocolError(.invalidRequest, "job.input: \"data_b64\" holds more than \(maxInputBytes) bytes (the limit of one request)")
                }
                guard let d = Data(base64Encoded: b64) else { throw ProtocolError(.invalidRequest, "job.input: \"data_b64\" is not valid base64") }
                data = Array(d)
            }
            return .input(jobID: id, data: data, eof: try bool(f, "eof") ?? false)
        case "job.resize":
            let id = try f.string("job_id")
            return .resize(jobID: id, rows: try side(f, "rows") ?? 24, cols: try side(f, "cols") ?? 80)
        case "job.signal":
            let id = try f.string("job_id")
            guard let raw = f.object["signal"], !raw.isNull else {
                throw ProtocolError(.invalidRequest, "job.signal: missing field \"signal\" (\(JobSignal.namesText))")
            }
            return .signal(jobID: id, signal: try JobSignal(raw))
        case "job.attach":
            return .attach(jobID: try f.string("job_id"), replay: try bool(f, "replay") ?? false)
        case "job.detach":
            guard let a = f.object["attach_id"] else {
                throw ProtocolError(.invalidRequest, "job.detach: missing field \"attach_id\" (the id of the job.attach or submit to end)")
            }
            return .detach(jobID: try f.string("job_id"), attachID: a)
        case "job.logs":
            return .logs(jobID: try f.string("job_id"), follow: try bool(f, "follow") ?? false)
        default: // job.list
            var state: JobState?
            if let raw = try f.optionalString("state") {
                guard let s = JobState(rawValue: raw) else {
                    throw ProtocolError(
                        .invalidRequest, "job.list: \(shown(raw)) is not a job state (\(JobState.allCases.map(\.rawValue).joined(separator: ", ")))")
                }
                state = s
            }
            var limit = 100
            if let v = f.object["limit"], !v.isNull {
                guard let i = v.intValue, (1...10_000).contains(i) else {
                    throw ProtocolError(.invalidRequest, "job.list: \"limit\" must be an integer from 1 to 10000")
                }
                limit = Int(i)
            }
            return .list(tenant: try f.optionalTenant("tenant"), state: state, limit: limit)
        }
    }

    static func bool(_ f: RequestCodec.Fields, _ key: String) throws -> Bool? {
        guard let v = f.object[key], !v.isNull else { return nil }
        guard let b = v.boolValue else { throw ProtocolError(.invalidRequest, "\(f.type): \"\(key)\" must be true or false") }
        return b
    }

    static func side(_ f: RequestCodec.Fields, _ key: String) throws -> UInt16? {
        guard let v = f.object[key], !v.isNull else { return nil }
        guard let i = v.intValue, (1...Int64(maxTerminalSide)).contains(i) else {
            throw ProtocolError(.invalidRequest, "\(f.type): \"\(key)\" must be an integer from 1 to \(maxTerminalSide)")
        }
        return UInt16(i)
    }

    /// A submit's `stream`, `stdin_open`, `tty`, `rows`, `cols`.
    static func submitOptions(_ f: RequestCodec.Fields) throws -> RunOptions {
        var o = RunOptions()
        o.stream = try bool(f, "stream") ?? false
        o.stdinOpen = try bool(f, "stdin_open") ?? false
        o.tty = try bool(f, "tty") ?? false
        let rows = try side(f, "rows"), cols = try side(f, "cols")
        if !o.tty && (rows != nil || cols != nil) {
            throw ProtocolError(.invalidRequest, "\(f.type): \"rows\" and \"cols\" are the size of a terminal: they need \"tty\": true")
        }
        o.rows = rows ?? 24
        o.cols = cols ?? 80
        return o
    }

    static func encodeOptions(_ o: RunOptions, into b: inout JSONObjectBuilder) {
        if o.stream { b.set("stream", true) }
        if o.stdinOpen { b.set("stdin_open", true) }
        if o.tty { b.set("tty", true); b.set("rows", Int(o.rows)); b.set("cols", Int(o.cols)) }
    }

    func encode(into o: inout JSONObjectBuilder) {
        if let id = jobID { o.set("job_id", .string(id)) }
        switch self {
        case .input(_, let data, let eof):
            o.set("data_b64", .string(Data(data).base64EncodedString())); o.set("eof", eof)
        case .resize(_, let rows, let cols): o.set("rows", Int(rows)); o.set("cols", Int(cols))
        case .signal(_, let s): o.set("signal", .string(s.name))
        case .attach(_, let replay): o.set("replay", replay)
        case .detach(_, let a): o.set("attach_id", a)
        case .logs(_, let follow): o.set("follow", follow)
        case .list(let tenant, let state, let limit):
            if let tenant { o.set("tenant", .string(tenant.value)) }
            if let state { o.set("state", .string(state.rawValue)) }
            o.set("limit", limit)
        }
    }
}

/// A signal `job.signal` may send: by name (`TERM`, `SIGTERM`, `term`) or number. Only the
/// ones a job could be expected to handle; real-time and unused numbers are refused.
public struct JobSignal: Sendable, Equatable {
    public let number: Int32
    public let name: String

    /// Linux numbers (x86-64 and arm64 agree on these).
    public static let table: [(String, Int32)] = [
        ("HUP", 1), ("INT", 2), ("QUIT", 3), ("KILL", 9), ("USR1", 10), ("USR2", 12), ("PIPE", 13), ("ALRM", 14),
        ("TERM", 15), ("CONT", 18), ("STOP", 19), ("TSTP", 20), ("TTIN", 21), ("TTOU", 22), ("WINCH", 28),
    ]
    static var namesText: String { "one of " + table.map(\.0).joined(separator: ", ") + ", or its number" }

    public init(number: Int32, name: String) { self.number = number; self.name = name }

    public init(parsing text: String) throws(ProtocolError) {
        var t = text.uppercased()
        if t.hasPrefix("SIG") { t.removeFirst(3) }
        if let hit = Self.table.first(where: { $0.0 == t }) { self.init(number: hit.1, name: hit.0); return }
        if let n = Int32(t), let hit = Self.table.first(where: { $0.1 == n }) { self.init(number: n, name: hit.0); return }
        throw ProtocolError(
            .invalidRequest, "job.signal: \(shown(text)) is not a signal a job may be sent (\(Self.namesText))",
            details: ["rule": .string("signal names")])
    }

    init(_ raw: JSONValue) throws(ProtocolError) {
        if let s = raw.stringValue { try self.init(parsing: s); return }
        if let i = raw.intValue, let n = Int32(exactly: i) { try self.init(parsing: String(n)); return }
        throw ProtocolError(.invalidRequest, "job.signal: \"signal\" must be a name or a number (\(Self.namesText))")
    }
}
