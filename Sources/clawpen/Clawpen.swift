import ArgumentParser
import Glibc
import ClawpenProtocol

@main
/// Every command names itself (`commandName:`): without it ArgumentParser derives the name with
/// `String(describing:)`, whose protocol-conformance scan of the whole static binary cost the
/// client ~1 ms of its start per command (measured with perf; BENCHMARKS.md).
struct Clawpen: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "clawpen",
        abstract: "A process-per-tenant supervisor for multi-tenant agent platforms.",
        discussion: """
            `clawpen serve` runs the supervisor: one sandboxed worker process per tenant, jobs routed to \
            them over Unix sockets. The other commands talk to a running supervisor over its socket \
            (--socket, else $CLAWPEN_SOCKET, else /run/clawpen/clawpen.sock).

            Exit status of `submit` and `job wait`: the job's own exit code; 128+N when a signal N \
            ended it; 124 on timeout; 64 usage or invalid request; 69 daemon unavailable; 75 quota \
            exceeded; 77 denied; 70 internal error.
            """,
        version: ClawpenVersion.string,
        subcommands: [
            Serve.self, TenantCommand.self, Submit.self, JobCommand.self, Status.self, PolicyCommand.self, AuditCommand.self, MetricsCommand.self, Version.self,
            Ping.self, Cp.self, Ls.self, Rm.self, Mkdir.self, SecretCommand.self, KeyCommand.self,
        ])

    /// `clawpen serve ...` goes to the daemon binary before any parsing here, so that its own
    /// `--help` and its errors are the ones shown.
    static func main() {
        let args = CommandLine.arguments
        if args.count > 1, args[1] == "serve" { DaemonBinary.exec(Array(args.dropFirst(2))) }
        // CLAWPEN_NO_FAST_SUBMIT=1: ArgumentParser parses every submit (to compare, or to rule
        // the fast parser out).
        if args.count > 1, args[1] == "submit", getenv("CLAWPEN_NO_FAST_SUBMIT") == nil { FastSubmit.run(Array(args.dropFirst(2))) }
        // ArgumentParser's main, but a command's exit status (`job wait`'s, a refusal's whose
        // message is printed) goes straight out: exit(withError:) builds the help generator by
        // reflection even for an ExitCode (~1 ms).
        do {
            var command = try parseAsRoot(nil)
            try command.run()
        } catch let code as ExitCode {
            Glibc.exit(code.rawValue)
        } catch {
            Self.exit(withError: error)
        }
    }
}

/// `--socket` for every client command.
struct ConnectionOptions: ParsableArguments {
    @Option(
        name: .long, help: ArgumentHelp("The supervisor's socket.", discussion: "Default: $CLAWPEN_SOCKET, else /run/clawpen/clawpen.sock.", valueName: "path"))
    var socket: String?
}
