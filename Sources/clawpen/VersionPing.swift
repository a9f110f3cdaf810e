import ArgumentParser
import ClawpenClient
import ClawpenProtocol
import Glibc

/// The version of this client, and of the daemon when one answers.
struct Version: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "version",
        abstract: "Print clawpen's version (and the daemon's, when it answers).",
        discussion: "The client's version always; the daemon's when --socket (or the default socket) answers, else 'not reachable'. Exit 0 either way.")

    @OptionGroup var connection: ConnectionOptions
    @Flag(help: "Print {\"client\": ..., \"daemon\": ... or null} as JSON.") var json = false

    func run() throws {
        let daemon: String? = {
            guard let conn = try? ClawpenConnection(socketPath: SocketPath.resolve(connection.socket)),
                let pong = try? conn.call(.ping)
            else { return nil }
            return pong["version"]?.stringValue
        }()
        if json {
            Output.json(.object([("client", .string(ClawpenVersion.string)), ("daemon", daemon.map { .string($0) } ?? .null)]))
        } else {
            Output.writeStdout("clawpen \(ClawpenVersion.string)\ndaemon \(daemon ?? "not reachable")\n")
        }
    }
}

/// Whether the daemon answers: exit 0 when it does, 69 (EX_UNAVAILABLE) when not.
struct Ping: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ping",
        abstract: "Ask the daemon whether it answers.",
        discussion: "Exit 0 when it answers (its pid, version and round trip printed), 69 when it cannot be reached. For health checks and scripts.")

    @OptionGroup var connection: ConnectionOptions
    @Flag(help: "Print the daemon's answer as JSON, with round_trip_ms.") var json = false

    func run() throws {
        let start = Self.monotonicMs()
        let pong = try withClient(connection, json: json) { (c: ClawpenConnection) throws(ClientError) in try c.call(.ping) }
        let ms = Self.monotonicMs() - start
        if json {
            var fields: [(String, JSONValue)] = []
            if case .object(let o) = pong { fields = o.filter { $0.0 != "id" } }
            fields.append(("round_trip_ms", .double((ms * 1000).rounded() / 1000)))
            Output.json(.object(fields))
        } else {
            // On a job's agent socket the answer names the caller as the daemon knows it.
            let who =
                pong["principal"]?.stringValue == "agent"
                ? "agent socket: job \(pong["job_id"]?.stringValue ?? "?") of tenant \(pong["tenant"]?.stringValue ?? "?")"
                : "pid \(pong["pid"]?.intValue.map(String.init) ?? "?")"
            Output.writeStdout("pong from clawpen \(pong["version"]?.stringValue ?? "?") (\(who)) in \(Format.ms(ms))\n")
        }
    }

    static func monotonicMs() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Double(ts.tv_sec) * 1000 + Double(ts.tv_nsec) / 1_000_000
    }
}

/// The daemon's Prometheus metrics over the control socket: the text `GET /metrics` serves.
struct MetricsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "metrics",
        abstract: "Print the daemon's metrics (Prometheus text format), as GET /metrics serves them.",
        discussion:
            "Operators only. The same series `serve --metrics-listen HOST:PORT` serves over HTTP, for a host that exposes no port: every name starts clawpen_, per-tenant series carry tenant=\"NAME\"."
    )

    @OptionGroup var connection: ConnectionOptions

    func run() throws {
        let reply = try withClient(connection) { (c: ClawpenConnection) throws(ClientError) in try c.call(.metrics) }
        Output.writeStdout(reply["text"]?.stringValue ?? "")
    }
}
