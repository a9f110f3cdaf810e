import ArgumentParser
import CClawpenShim
import ClawpenWire
import ClawpenClient
import ClawpenProtocol
import Glibc

struct Submit: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "submit",
        abstract: "Run a command as a tenant's job.",
        discussion: """
            Behaves like running the command locally: the job's stdout on stdout, its stderr on \
            stderr, and its exit status as clawpen's (128+N when signal N ended it, 124 on timeout). \
            The job is accepted (committed to the supervisor's store) before it runs; if this command \
            is interrupted, the job still runs: see `clawpen job get ID`. Output is printed as the job \
            writes it, each stream to its own descriptor.

            -i keeps the job's stdin open and sends clawpen's stdin to it as it is read (its end closes \
            the job's stdin); -t runs the job on a terminal of its own, sized as ours and following it; \
            -it together behave like `docker run -it`: our terminal in raw mode (restored however \
            clawpen ends), ctrl-p ctrl-q detaches (the job keeps running: `clawpen job attach ID`), \
            and SIGINT, SIGTERM, SIGHUP, SIGQUIT are passed on to the job. Such jobs may run up to \
            the tier's interactive_timeout_max_s (their default timeout). With --detach, -i and -t give \
            the job an open stdin and a terminal for a later `clawpen job attach ID`.

            Examples: clawpen submit --tenant acme --env AGENT_MODE=fast -- python3 -c 'print(1)'
                      clawpen submit -it --tenant acme -- python3
            """)

    @OptionGroup var connection: ConnectionOptions
    @Option(help: "The tenant to run as (inside a job: its own, which is also the default there).") var tenant: String?
    @Option(help: "Kill the job after this many seconds (default: the tier's timeout_default_s, 30; with -i or -t its interactive_timeout_max_s).")
    var timeout: Double?
    @Option(name: .customLong("env"), help: ArgumentHelp("Set an environment variable of the job (repeatable).", valueName: "K=V"))
    var env: [String] = []
    @Option(help: "Working directory as the job sees it (default /home).") var cwd: String?
    @Option(name: .customLong("stdin-file"), help: "Send this file as the job's stdin.") var stdinFile: String?
    @Flag(name: .customShort("i"), help: "Keep the job's stdin open and send clawpen's stdin to it as it is read.") var interactiveStdin = false
    @Flag(name: [.customShort("t"), .customLong("tty")], help: "Run the job on a terminal (sized as ours); with -i, our terminal in raw mode.")
    var tty = false
    @Option(name: .customLong("idempotency-key"), help: "Return the earlier job with this key instead of running again.")
    var idempotencyKey: String?
    @Option(
        help: ArgumentHelp(
            "A W3C traceparent the job joins (default: $TRACEPARENT, else a new trace).",
            discussion:
                "The job's JOB has its trace_id, its environment TRACEPARENT (the same trace, the job's own span id); journal entries and audit rows carry the trace id.",
            valueName: "00-TRACEID-PARENTID-FLAGS")) var traceparent: String?
    @Flag(help: "Do not wait: print the job id once it is accepted.") var detach = false
    @Flag(help: "Print the job as JSON (with --detach: as accepted).") var json = false
    // Only what follows `--` is the command: anything before it that is not one of the options
    // above is a usage error (with a suggestion), never the start of a command. A misspelt
    // `--timout 5` must not become a job that runs `--timout`.
    @Argument(parsing: .postTerminator, help: ArgumentHelp("The command and its arguments, after --.", valueName: "cmd"))
    var command: [String] = []

    func validate() throws { try arguments.validate() }

    /// What was asked, as plain values (FastSubmit makes the same without ArgumentParser).
    var arguments: SubmitArguments {
        SubmitArguments(
            socket: connection.socket, tenant: tenant, timeout: timeout, env: env, cwd: cwd, stdinFile: stdinFile,
            interactiveStdin: interactiveStdin, tty: tty, idempotencyKey: idempotencyKey, traceparent: traceparent,
            detach: detach, json: json, command: command)
    }

    func run() throws { try arguments.run() }
}

/// `clawpen submit`'s request, however its command line was parsed: by ArgumentParser
/// (`Submit`) or by FastSubmit's parser of the common shapes.
struct SubmitArguments {
    var socket: String?
    /// Nil: inside a job, its own tenant (TenantArgument.resolve).
    var tenant: String?
    var timeout: Double?
    var env: [String] = []
    var cwd: String?
    var stdinFile: String?
    var interactiveStdin = false
    var tty = false
    var idempotencyKey: String?
    var traceparent: String?
    var detach = false
    var json = false
    var command: [String] = []

    /// The checks ArgumentParser runs as `Submit.validate()`.
    func validate() throws(ValidationError) {
        if stdinFile != nil && interactiveStdin { throw ValidationError("give --stdin-file or -i, not both") }
        for e in env where !e.contains("=") || e.hasPrefix("=") {
            throw ValidationError("--env takes K=V, got '\(e)'")
        }
        if let t = traceparent, TraceContext(parsing: t) == nil {
            throw ValidationError("--traceparent '\(t)' is not a W3C traceparent (00-<32 hex>-<16 hex>-<2 hex>, lower case)")
        }
    }

    /// --traceparent, else the caller's own TRACEPARENT (a job that submits continues its trace).
    var trace: TraceContext? {
        if let t = traceparent { return TraceContext(parsing: t) }
        return getenv("TRACEPARENT").flatMap { TraceContext(parsing: String(cString: $0)) }
    }

    func run() throws {
        // Checked here, not in validate(): ArgumentParser validates before it refuses words left
        // over before `--`, and "unexpected argument 'echo'" says more than "no command".
        guard !command.isEmpty else { Submit.exit(withError: ValidationError("no command given: clawpen submit --tenant NAME -- CMD [ARG...]")) }
        let cmd = command
        var stdin: [UInt8] = []
        if let stdinFile {
            guard let bytes = readAll(path: stdinFile) else {
                throw Output.fail(.invalidRequest, "cannot read --stdin-file \(stdinFile): \(String(cString: strerror(errno)))")
            }
            stdin = bytes
        }
        let vars = env.map { e -> SubmitRequest.EnvVar in
            let parts = e.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            return .init(name: String(parts[0]), value: parts.count > 1 ? String(parts[1]) : "")
        }
        if !detach {
            throw try stream(argv: cmd, env: vars, initialStdin: stdinFile != nil ? stdin : [])
        }
        let request = SubmitRequest(
            tenant: try TenantArgument.resolve(tenant, socket: socket), argv: cmd, env: vars, cwd: cwd, stdin: stdin,
            timeoutSeconds: timeout, idempotencyKey: idempotencyKey, wait: !detach,
            // Detached (docker run -dit): stdin stays open and the terminal waits for `job attach`.
            options: RunOptions(stdinOpen: interactiveStdin, tty: tty), trace: trace)
        let (job, _) = try withClient(socket: socket, json: json) { (c: ClawpenConnection) throws(ClientError) in try c.submit(request) }
        if detach {
            if json { Output.json(job.json) } else { Output.line(job.id) }
            return
        }
        throw present(job, json: json)
    }

    /// The job followed as it runs: output as written, our stdin (with -i), our terminal (-t).
    private func stream(argv: [String], env: [SubmitRequest.EnvVar], initialStdin: [UInt8]) throws -> ExitCode {
        var options = RunOptions(stream: true, stdinOpen: interactiveStdin, tty: tty)
        if tty {
            var rows: UInt16 = 0, cols: UInt16 = 0
            if cp_pty_get_size(0, &rows, &cols) == 0, rows > 0, cols > 0 { options.rows = rows; options.cols = cols }
        }
        var vars = env
        if tty, !vars.contains(where: { $0.name == "TERM" }), let term = getenv("TERM").map({ String(cString: $0) }), !term.isEmpty {
            vars.append(.init(name: "TERM", value: term))
        }
        let request = SubmitRequest(
            tenant: try TenantArgument.resolve(tenant, socket: socket), argv: argv, env: vars, cwd: cwd, stdin: initialStdin,
            timeoutSeconds: timeout, idempotencyKey: idempotencyKey, wait: true, options: options, trace: trace)
        let end = try withClient(socket: socket, json: json) { (c: ClawpenConnection) throws(ClientError) -> JobSession.End in
            let interactive = interactiveStdin || tty
            let session = JobSession(
                connection: c, streamID: c.makeID(), forwardInput: interactiveStdin, terminal: tty,
                detachKeys: tty && interactiveStdin && isatty(0) == 1, proxySignals: interactive)
            session.printOutput = !json
            session.completeFromStart = true
            session.queue(.submit(request), id: session.streamID)
            let end = session.run()
            if case .failed(let e) = end { throw e }
            return end
        }
        return finish(end, json: json)
    }

    private func readAll(path: String) -> [UInt8]? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        return readAll(fd: fd)
    }

    private func readAll(fd: Int32) -> [UInt8] {
        var out: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { break }
            out.append(contentsOf: chunk[0..<n])
        }
        return out
    }
}
