import ArgumentParser
import ClawpenClient
import ClawpenProtocol
import Glibc

/// How the CLI talks to people and scripts: data on stdout, failures as
/// `clawpen: <code>: <message>` on stderr with the contract's exit status.
enum Output {
    static func writeStdout(_ s: String) { write(fd: 1, s) }
    static func writeStderr(_ s: String) { write(fd: 2, s) }

    static func write(fd: Int32, _ s: String) {
        var s = s
        s.withUTF8 { buf in
            var off = 0
            while off < buf.count {
                let n = Glibc.write(fd, buf.baseAddress! + off, buf.count - off)
                if n < 0 && errno == EINTR { continue }
                if n <= 0 { return }
                off += n
            }
        }
    }

    static func line(_ s: String) { writeStdout(s + "\n") }

    static func json(_ v: JSONValue) { writeStdout(v.text + "\n") }

    /// Prints the failure and exits with its status.
    static func fail(_ code: ErrorCode, _ message: String) -> ExitCode {
        writeStderr("clawpen: \(code.rawValue): \(message)\n")
        return ExitCode(code.exitCode)
    }

    static func fail(_ e: ClientError) -> ExitCode { fail(e.code, e.message) }
}

/// Runs a client call and turns a ClientError into the contract's message and exit status.
/// With `json`, a refusal is also printed on stdout as `{"error": {...}}` (code, message, and a
/// quota's quota/limit/current/retry_after_ms or a rule), for scripts.
func withClient<T>(_ options: ConnectionOptions, json: Bool = false, _ body: (ClawpenConnection) throws(ClientError) -> T) throws -> T {
    try withClient(socket: options.socket, json: json, body)
}

/// The same, for a `--socket` value parsed without ArgumentParser (FastSubmit).
func withClient<T>(socket: String?, json: Bool = false, _ body: (ClawpenConnection) throws(ClientError) -> T) throws -> T {
    do {
        let conn = try ClawpenConnection(socketPath: SocketPath.resolve(socket))
        return try body(conn)
    } catch {
        if json {
            let object: JSONValue
            if case .server(let e) = error { object = e.json } else { object = ProtocolError(error.code, error.message).json }
            Output.json(.object([("error", object)]))
        }
        throw Output.fail(error)
    }
}

enum Format {
    static func duration(_ seconds: Double?) -> String {
        guard let s = seconds else { return "-" }
        if s < 60 { return "\(Int(s))s" }
        if s < 3600 { return "\(Int(s / 60))m\(Int(s) % 60)s" }
        if s < 86400 { return "\(Int(s / 3600))h\(Int(s / 60) % 60)m" }
        return "\(Int(s / 86400))d\(Int(s / 3600) % 24)h"
    }

    static func bytes(_ n: Int64?) -> String {
        guard let n else { return "-" }
        let units = ["B", "K", "M", "G", "T"]
        var v = Double(n), i = 0
        while v >= 1024 && i < units.count - 1 { v /= 1024; i += 1 }
        return i == 0 ? "\(n)B" : "\(Int((v * 10).rounded()) / 10).\(Int((v * 10).rounded()) % 10)\(units[i])"
    }

    static func ms(_ v: Double?) -> String {
        guard let v else { return "-" }
        return "\((v * 100).rounded() / 100) ms"
    }

    /// CPU time for a table cell: "14.4ms", "2.31s".
    static func cpu(usec: Int64) -> String {
        usec < 1_000_000 ? "\((Double(usec) / 100).rounded() / 10)ms" : "\((Double(usec) / 10_000).rounded() / 100)s"
    }

    /// Left-aligned columns.
    static func table(_ rows: [[String]]) -> String {
        guard let first = rows.first else { return "" }
        var widths = [Int](repeating: 0, count: first.count)
        for r in rows { for (i, c) in r.enumerated() where i < widths.count { widths[i] = max(widths[i], c.count) } }
        return rows.map { r in
            r.enumerated().map { i, c in i == r.count - 1 ? c : c + String(repeating: " ", count: widths[i] - c.count) }
                .joined(separator: "  ")
        }.joined(separator: "\n") + "\n"
    }
}

/// A tenant name on the command line goes through the one validator before anything is sent:
/// a bad one is a usage error (exit 64) that names the rule.
enum TenantArgument {
    static func parse(_ raw: String) throws(ExitCode) -> TenantName {
        do { return try TenantName(validating: raw) } catch { throw Output.fail(.invalidTenant, error.description) }
    }

    static func parse(_ raw: String?) throws(ExitCode) -> TenantName? {
        guard let raw else { return nil }
        return try parse(raw)
    }

    /// `--tenant`, or inside a job (CLAWPEN_JOB_ID is set) the job's own tenant, which its agent
    /// socket says (`ping`); outside a job the option is required.
    static func resolve(_ raw: String?, _ connection: ConnectionOptions) throws -> TenantName {
        try resolve(raw, socket: connection.socket)
    }

    static func resolve(_ raw: String?, socket: String?) throws -> TenantName {
        if let raw { return try parse(raw) }
        guard getenv("CLAWPEN_JOB_ID") != nil else {
            throw Output.fail(.invalidRequest, "--tenant NAME is required (only a job, inside its sandbox, may leave it out)")
        }
        let reply = try withClient(socket: socket) { (c: ClawpenConnection) throws(ClientError) in try c.call(.ping) }
        guard let name = reply["tenant"]?.stringValue else {
            throw Output.fail(.invalidRequest, "--tenant NAME is required: the socket at \(SocketPath.resolve(socket)) is not a job's agent socket")
        }
        return try parse(name)
    }
}
