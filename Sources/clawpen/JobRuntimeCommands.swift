import ArgumentParser
import ClawpenClient
import ClawpenProtocol
import Glibc

/// `clawpen job attach|logs|list|signal` (docs/protocol.md, "Streaming, stdin, terminals,
/// attach and logs").
extension JobCommand {
    struct Attach: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "attach",
            abstract: "Follow a running job's output and send it input, as `docker attach`.",
            discussion: """
                The job's output from now on (--replay: from the start of what is kept) on stdout and \
                stderr; with a job submitted with stdin open, our stdin is its input; on a terminal \
                job our terminal goes into raw mode and its size is followed. ctrl-p ctrl-q detaches \
                (the job keeps running), so does closing clawpen. Exits with the job's status when \
                it ends.
                """)
        @OptionGroup var connection: ConnectionOptions
        @Argument(help: "The job id.") var id: String
        @Flag(help: "Start with what is kept of the job's output.") var replay = false
        @Flag(name: .customLong("no-stdin"), help: "Do not send our stdin to the job.") var noStdin = false

        func run() throws {
            let end = try withClient(connection) { (c: ClawpenConnection) throws(ClientError) -> JobSession.End in
                // The job says whether it takes input and has a terminal.
                let view = try c.job(.jobGet(jobID: id)).job
                let input = view.stdinOpen && !noStdin
                let session = JobSession(
                    connection: c, streamID: c.makeID(), forwardInput: input, terminal: view.tty,
                    detachKeys: isatty(0) == 1, proxySignals: false)
                session.queue(.runtime(.attach(jobID: id, replay: replay)), id: session.streamID)
                let end = session.run()
                if case .failed(let e) = end { throw e }
                return end
            }
            throw finish(end, json: false)
        }
    }

    struct Logs: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "logs",
            abstract: "Print a job's kept output (at most output_max_bytes per stream); --follow: and what it writes until it ends.")
        @OptionGroup var connection: ConnectionOptions
        @Argument(help: "The job id.") var id: String
        @Flag(name: [.customShort("f"), .customLong("follow")], help: "Keep printing the output until the job ends.") var follow = false

        func run() throws {
            let end = try withClient(connection) { (c: ClawpenConnection) throws(ClientError) -> JobSession.End in
                let session = JobSession(
                    connection: c, streamID: c.makeID(), forwardInput: false, terminal: false, detachKeys: false, proxySignals: false)
                session.queue(.runtime(.logs(jobID: id, follow: follow)), id: session.streamID)
                let end = session.run()
                if case .failed(let e) = end { throw e }
                return end
            }
            if case .failed(let e) = end { throw Output.fail(e) }
        }
    }

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "list", abstract: "List jobs, newest first (of the tenants you may use).")
        @OptionGroup var connection: ConnectionOptions
        @Option(help: "Only this tenant's jobs.") var tenant: String?
        @Option(help: "Only jobs in this state (queued, running, succeeded, failed, timed_out, oom_killed, killed, canceled, rejected).")
        var state: String?
        @Option(help: "At most this many (1-10000).") var limit: Int = 100
        @Flag(help: "Print the jobs as a JSON array.") var json = false

        func validate() throws {
            if let state, JobState(rawValue: state) == nil {
                throw ValidationError("--state: '\(state)' is not a job state (\(JobState.allCases.map(\.rawValue).joined(separator: ", ")))")
            }
            guard (1...10_000).contains(limit) else { throw ValidationError("--limit must be from 1 to 10000") }
        }

        func run() throws {
            let name = try tenant.map { try TenantArgument.parse($0) }
            let reply = try withClient(connection, json: json) { (c: ClawpenConnection) throws(ClientError) in
                try c.call(.runtime(.list(tenant: name, state: state.flatMap(JobState.init(rawValue:)), limit: limit)))
            }
            let jobs = reply["jobs"]?.arrayValue ?? []
            if json { Output.json(.array(jobs)); return }
            var lines = ["ID                             TENANT           STATE        EXIT  COMMAND"]
            for v in jobs {
                guard let j = JobView(json: v) else { continue }
                func pad(_ s: String, _ n: Int) -> String { s.count >= n ? s + " " : s + String(repeating: " ", count: n - s.count) }
                lines.append(
                    pad(j.id, 31) + pad(j.tenant, 17) + pad(j.state.rawValue, 13) + pad(j.exitCode.map(String.init) ?? "-", 6)
                        + String(j.argv.joined(separator: " ").prefix(60)))
            }
            Output.writeStdout(lines.joined(separator: "\n") + "\n")
        }
    }

    struct Signal: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "signal",
            abstract: "Send a signal to a running job's process group (TERM, INT, KILL, HUP, QUIT, USR1, USR2, ...).")
        @OptionGroup var connection: ConnectionOptions
        @Argument(help: "The job id.") var id: String
        @Argument(help: "The signal: a name (TERM, SIGTERM) or a number.") var signal: String

        func run() throws {
            let sig: JobSignal
            do { sig = try JobSignal(parsing: signal) } catch { throw Output.fail(error.code, error.message) }
            _ = try withClient(connection) { (c: ClawpenConnection) throws(ClientError) in try c.call(.runtime(.signal(jobID: id, signal: sig))) }
        }
    }
}
