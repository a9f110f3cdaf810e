import ArgumentParser
import ClawpenClient
import ClawpenProtocol

/// Shows a finished job the way running it locally would: its stdout on stdout, its stderr on
/// stderr, and its exit status as ours.
func present(_ job: JobView, json: Bool) -> ExitCode {
    if json {
        Output.json(job.json)
    } else {
        Output.writeStdout(job.stdout)
        Output.writeStderr(job.stderr)
        if job.stdoutTruncated { Output.writeStderr("clawpen: note: stdout was truncated at the tenant's output limit\n") }
        if job.stderrTruncated { Output.writeStderr("clawpen: note: stderr was truncated at the tenant's output limit\n") }
        if let e = job.error {
            Output.writeStderr("clawpen: \(e.code.rawValue): \(e.message)\n")
        } else if job.state == .killed || job.state == .canceled {
            Output.writeStderr("clawpen: job \(job.id) \(job.state.rawValue) by signal \(job.signal ?? 9)\n")
        }
    }
    return ExitCode(job.cliExitStatus)
}

/// How a followed job ended, for the CLI: its output was printed as it came, so only the notes,
/// the error and the exit status remain.
func finish(_ end: JobSession.End, json: Bool) -> ExitCode {
    switch end {
    case .failed(let e): return Output.fail(e)
    case .detached:
        Output.writeStderr("\r\nclawpen: detached; the job keeps running (clawpen job attach ID to come back)\r\n")
        return .success
    case .finished(let job):
        if json { Output.json(job.json); return ExitCode(job.cliExitStatus) }
        if let e = job.error {
            Output.writeStderr("clawpen: \(e.code.rawValue): \(e.message)\n")
        } else if job.state == .killed || job.state == .canceled {
            Output.writeStderr("clawpen: job \(job.id) \(job.state.rawValue) by signal \(job.signal ?? 9)\n")
        }
        return ExitCode(job.cliExitStatus)
    }
}

struct JobCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "job", abstract: "Inspect, wait for, cancel, attach to, signal and list jobs; read their logs.",
        subcommands: [Get.self, Wait.self, Cancel.self, Attach.self, Logs.self, List.self, Signal.self, JobTreeCommand.self])

    struct Get: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "get", abstract: "Show a job's state and result (at once, whatever its state).")
        @OptionGroup var connection: ConnectionOptions
        @Argument(help: "The job id.") var id: String
        @Flag(help: "Print the job as JSON.") var json = false

        func run() throws {
            let (job, _) = try withClient(connection) { (c: ClawpenConnection) throws(ClientError) in try c.job(.jobGet(jobID: id)) }
            if json { Output.json(job.json); return }
            var lines = [
                "id:         \(job.id)", "tenant:     \(job.tenant)", "state:      \(job.state.rawValue)",
                "command:    \(job.argv.joined(separator: " "))",
                "exit code:  \(job.exitCode.map(String.init) ?? "-")", "signal:     \(job.signal.map(String.init) ?? "-")",
                "attempt:    \(job.attempt)", "queued:     \(Format.ms(job.queuedMs))", "run:        \(Format.ms(job.runMs))",
                "cpu:        \(Format.ms(job.cpuMs))", "max rss:    \(job.maxRSSKiB.map { "\($0) KiB" } ?? "-")",
            ]
            if let e = job.error { lines.append("error:      \(e.code.rawValue): \(e.message)") }
            if job.state.isFinal {
                lines.append("stdout:     \(job.stdout.utf8.count) bytes\(job.stdoutTruncated ? " (truncated)" : "")")
                lines.append("stderr:     \(job.stderr.utf8.count) bytes\(job.stderrTruncated ? " (truncated)" : "")")
            }
            Output.writeStdout(lines.joined(separator: "\n") + "\n")
        }
    }

    struct Wait: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "wait",
            abstract: "Wait for a job to finish, then print its output and exit with its status (as submit does).")
        @OptionGroup var connection: ConnectionOptions
        @Argument(help: "The job id.") var id: String
        @Flag(help: "Print the job as JSON instead of its output.") var json = false

        func run() throws {
            let (job, _) = try withClient(connection) { (c: ClawpenConnection) throws(ClientError) in try c.job(.jobWait(jobID: id)) }
            throw present(job, json: json)
        }
    }

    struct Cancel: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "cancel",
            abstract: "Cancel a job: a queued one is removed, a running one is killed (its whole process group).")
        @OptionGroup var connection: ConnectionOptions
        @Argument(help: "The job id.") var id: String
        @Flag(help: "Print the job as JSON.") var json = false

        func run() throws {
            let (job, _) = try withClient(connection) { (c: ClawpenConnection) throws(ClientError) in try c.job(.jobCancel(jobID: id)) }
            if json { Output.json(job.json) } else { Output.line("\(job.id) \(job.state.rawValue)") }
        }
    }
}
