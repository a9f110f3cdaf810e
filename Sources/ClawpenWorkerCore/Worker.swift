import CClawpenShim
import ClawpenSandbox
import ClawpenSystem
import ClawpenWire
import Glibc

/// How the supervisor configured this worker (from its command line).
public struct WorkerConfig: Sendable {
    /// nil for a spare worker: it learns its tenant from the configure frame.
    public var tenant: TenantName?
    /// The tenant's workspace on the host (nil: from the configure frame).
    public var root: String?
    /// The socketpair end shared with the supervisor.
    public var socketFD: Int32

    /// Started in its own network namespace (--netns), as a sandboxed worker must be.
    public var ownNetworkNamespace: Bool

    public init(tenant: TenantName?, root: String?, socketFD: Int32, ownNetworkNamespace: Bool) {
        self.tenant = tenant; self.root = root; self.socketFD = socketFD; self.ownNetworkNamespace = ownNetworkNamespace
    }
}

/// The worker: one per tenant, single-threaded, a poll loop over the supervisor socket, a
/// SIGCHLD signalfd and the pipes of its running jobs. It holds no state that outlives a job.
public final class Worker {
    private var config: WorkerConfig
    private let socketFD: Int32
    private var inbound = FrameSplitter(maxFrameBytes: 64 * 1024 * 1024)
    var jobs: [String: RunningJob] = [:]
    /// Suspended without a tenant cgroup: the jobs are stopped (SIGSTOP) and no deadline runs.
    private var paused = false
    /// Between `handoff` and `adopt` (an upgrade of the supervisor): every frame is held here,
    /// in order, and sent once the successor has adopted the worker, so that the old supervisor
    /// reads nothing after the worker's `handoffReady` and the new one everything after.
    private var held: [[UInt8]]? = nil
    /// Jobs that ended while frames were held: their results are among the held frames, so the
    /// adoption answer lists them with the running ones (the successor must take them as in
    /// flight, or it would run them again and take the held result for the new run's).
    private var endedWhileHeld: [(startedAt: UInt64, job: AdoptedState.Job)] = []
    private var jobByPID: [Int32: String] = [:]
    private var launcher: JobLauncher
    private var sigchldFD: Int32 = -1
    private var cgroupsToRemove: [JobCgroup] = []
    let scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: 64 * 1024, alignment: 16)
    /// The tenant's files (FileOps.swift), rooted at the sandbox's `/`; nil if it could not be opened.
    private var files: FileOps?

    /// How long pipes may outlive the job's process before the report goes out anyway.
    private static let drainGraceNanos: UInt64 = 200_000_000

    public init(config: WorkerConfig) {
        self.config = config
        self.socketFD = config.socketFD
        self.launcher = JobLauncher(rootPrefix: config.root ?? "/", devNullFD: -1, jobLimits: [])
    }

    func log(_ message: String) {
        var line = "clawpen-worker[\(config.tenant?.value ?? "spare")]: \(message)\n"
        line.withUTF8 { _ = write(2, $0.baseAddress, $0.count) }
    }

    /// Sets up, reports ready (or the failed step) and serves until told to stop. Never returns.
    public func run() -> Never {
        do {
            try setUp()
        } catch {
            send(.setupFailed(step: error.step, errno: error.errno, detail: error.detail))
            log("setup failed at \(error.step): \(errnoString(error.errno)) \(error.detail)")
            exit(70)
        }
        openFileRoot()
        send(.ready(pid: getpid()))
        serve()
    }

    private func setUp() throws(StepFailure) {
        _ = cp_set_pdeathsig(SIGKILL)
        if getppid() == 1 { throw StepFailure(step: "parent check", errno: ESRCH, detail: "supervisor is gone") }
        guard cp_set_nonblocking(socketFD, 1) == 0 else {
            throw StepFailure(step: "socket", errno: errno, detail: "fd \(socketFD)")
        }
        sigchldFD = cp_sigchld_fd()
        guard sigchldFD >= 0 else { throw StepFailure(step: "signalfd", errno: errno, detail: "") }
        let devNull = open("/dev/null", O_RDWR | O_CLOEXEC)
        guard devNull >= 0 else { throw StepFailure(step: "open /dev/null", errno: errno, detail: "") }
        // The first frame says how to build the sandbox.
        guard case .configure(let plan) = try readFirstMessage() else {
            throw StepFailure(step: "configure", errno: EPROTO, detail: "the first frame was not a configure message")
        }
        if let mine = config.tenant, plan.tenant != mine.value {
            throw StepFailure(step: "configure", errno: EINVAL, detail: "plan for tenant \(plan.tenant), worker of \(mine)")
        }
        do { config.tenant = try TenantName(validating: plan.tenant) } catch {
            throw StepFailure(step: "configure", errno: EINVAL, detail: error.description)
        }
        config.root = plan.workspace
        // ps and top show whose worker this is (a spare was started without a tenant).
        _ = cp_set_name(String("cp-\(plan.tenant)".prefix(15)))
        if plan.enabled {
            // The tenant's cgroup node, opened while the host is still in view.
            var cgroupNode: Int32 = -1
            if !plan.cgroupNode.isEmpty {
                cgroupNode = open(plan.cgroupNode, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
                guard cgroupNode >= 0 else { throw StepFailure(step: "open tenant cgroup", errno: errno, detail: plan.cgroupNode) }
            }
            guard config.ownNetworkNamespace else {
                throw StepFailure(step: "network namespace", errno: EINVAL, detail: "a sandboxed worker must be started in its own network namespace")
            }
            try SandboxSetup(plan: plan).apply()
            let landlockRuleset = try JobIsolation.ruleset(abi: plan.jobLandlockABI)
            launcher = JobLauncher(rootPrefix: "", devNullFD: devNull, jobLimits: plan.jobLimits)
            launcher.jobCgroups = JobCgroups(parentFD: cgroupNode)
            launcher.landlockRulesetFD = landlockRuleset
            launcher.jobSeccompProgram = plan.jobSeccompProgram
        } else {
            // No sandbox (the supervisor is not root): job paths map under the workspace.
            launcher = JobLauncher(rootPrefix: plan.workspace, devNullFD: devNull, jobLimits: plan.jobLimits)
            guard chdir(plan.workspace) == 0 else {
                throw StepFailure(step: "chdir workspace", errno: errno, detail: plan.workspace)
            }
            for dir in ["home", "tmp"] { _ = mkdir(dir, 0o700) }
        }
    }

    /// The root file operations resolve from: `/` in the sandbox (after pivot_root), the
    /// workspace without one. Opened once, O_PATH: every path is resolved below it.
    private func openFileRoot() {
        let root = launcher.rootPrefix.isEmpty ? "/" : launcher.rootPrefix
        let fd = open(root, cp_o_path() | O_DIRECTORY | O_CLOEXEC)
        if fd < 0 { log("cannot open \(root) for file operations: \(errnoString(errno))"); return }
        files = FileOps(rootFD: fd, send: { [unowned self] in self.send($0) }, sendFrame: { [unowned self] in self.send(frame: $0) })
    }

    /// Blocks until the supervisor's first frame has arrived.
    private func readFirstMessage() throws(StepFailure) -> SupervisorToWorker {
        while true {
            do {
                if let payload = try inbound.next() {
                    do { return try SupervisorToWorker.decode(payload) } catch {
                        throw StepFailure(step: "configure", errno: EPROTO, detail: "undecodable first frame")
                    }
                }
            } catch let e as StepFailure {
                throw e
            } catch {
                throw StepFailure(step: "configure", errno: EMSGSIZE, detail: "oversized first frame")
            }
            var pfd = pollfd(fd: socketFD, events: Int16(POLLIN), revents: 0)
            _ = poll(&pfd, 1, -1)
            let n = read(socketFD, scratch.baseAddress, scratch.count)
            if n > 0 { inbound.append(UnsafeRawBufferPointer(rebasing: scratch[0..<n])); continue }
            if n < 0 && (errno == EINTR || errno == EAGAIN) { continue }
            throw StepFailure(step: "configure", errno: n == 0 ? EPIPE : errno, detail: "the supervisor went away")
        }
    }

    // MARK: - The loop

    private func serve() -> Never {
        // The supervisor sends a new worker's first jobs right behind its configure frame, so
        // they may already sit in the buffer: handle them before waiting for more.
        handleBufferedFrames()
        var fds: [pollfd] = []
        while true {
            fds.removeAll(keepingCapacity: true)
            fds.append(pollfd(fd: socketFD, events: Int16(POLLIN), revents: 0))
            fds.append(pollfd(fd: sigchldFD, events: Int16(POLLIN), revents: 0))
            for job in jobs.values {
                // A followed job whose output window is full is not read: its pipe fills and it
                // blocks in write until the supervisor's clients have taken what was sent.
                if !job.outputBlocked {
                    if job.stdoutFD >= 0 { fds.append(pollfd(fd: job.stdoutFD, events: Int16(POLLIN), revents: 0)) }
                    if job.stderrFD >= 0 { fds.append(pollfd(fd: job.stderrFD, events: Int16(POLLIN), revents: 0)) }
                }
                if job.stdinFD >= 0 && job.hasPendingInput { fds.append(pollfd(fd: job.stdinFD, events: Int16(POLLOUT), revents: 0)) }
            }
            let n = poll(&fds, nfds_t(fds.count), nextTimeoutMillis())
            if n < 0 && errno != EINTR {
                log("poll failed: \(errnoString(errno))")
                shutdown(code: 70)
            }
            if n > 0 {
                for pfd in fds where pfd.revents != 0 {
                    if pfd.fd == socketFD {
                        readSupervisor()
                    } else if pfd.fd == sigchldFD {
                        _ = cp_drain_signalfd(sigchldFD); reap()
                    } else {
                        service(fd: pfd.fd, revents: pfd.revents)
                    }
                }
            }
            enforceDeadlines()
            finishReadyJobs()
        }
    }

    private func nextTimeoutMillis() -> Int32 {
        if !cgroupsToRemove.isEmpty { return 10 }
        var next: UInt64 = .max
        for job in jobs.values {
            if job.hasExited { next = min(next, job.drainDeadline) } else if job.killReason == nil && !paused { next = min(next, job.deadline) }
        }
        if next == .max { return -1 }
        let now = Clock.monotonicNanos()
        if next <= now { return 0 }
        return Int32(clamping: (next - now + 999_999) / 1_000_000)
    }

    private func readSupervisor() {
        while true {
            let n = read(socketFD, scratch.baseAddress, scratch.count)
            if n > 0 {
                inbound.append(UnsafeRawBufferPointer(rebasing: scratch[0..<n]))
                continue
            }
            if n == 0 {
                // The supervisor is gone: nothing may outlive it.
                shutdown(code: 0)
            }
            if errno == EINTR { continue }
            if errno == EAGAIN { break }
            log("read from supervisor failed: \(errnoString(errno))")
            shutdown(code: 70)
        }
        handleBufferedFrames()
    }

    /// Handles every complete frame already read from the supervisor.
    private func handleBufferedFrames() {
        while true {
            // A chunk of a put is written from the buffer it was read into (nil: done here).
            let next: [UInt8]??
            do {
                next = try inbound.withNext { raw -> [UInt8]? in
                    if let files, files.putChunkInPlace(raw) { return nil }
                    return Array(raw)
                }
            } catch {
                log("oversized frame from supervisor"); shutdown(code: 70)
            }
            guard let next else { break }
            guard let payload = next else { continue }
            let message: SupervisorToWorker
            do { message = try SupervisorToWorker.decode(payload) } catch {
                log("undecodable frame from supervisor: \(error)"); shutdown(code: 70)
            }
            handle(message)
        }
    }

    private func handle(_ message: SupervisorToWorker) {
        switch message {
        case .run(let request): start(request)
        case .cancel(let id):
            guard var job = jobs[id], !job.hasExited, job.killReason == nil else { return }
            job.killReason = .cancel
            kill(-job.pid, SIGKILL)
            if let cg = job.cgroup { launcher.jobCgroups.kill(cg) }
            jobs[id] = job
        case .shutdown: shutdown(code: 0)
        case .sync(let token): send(.synced(token: token))
        case .configure: log("ignoring a second configure message")
        case .handoff: handOff()
        case .adopt: adopted()
        case .file(let request):
            if let files {
                files.handle(request)
            } else {
                send(.file(.failed(op: request.op, FileFailure(.io, stage: "open root", errno: EBADF, detail: "/"))))
            }
        case .pause:
            // The tenant is suspended and has no cgroup to freeze: stop every job where it stands.
            guard !paused else { return }
            paused = true
            for job in jobs.values where !job.hasExited { kill(-job.pid, SIGSTOP) }
        case .runtime(let command): handle(command)
        case .resume(let pausedMs):
            // A suspended job did not use its time: its deadline moves by the pause.
            let shift = UInt64(pausedMs) * 1_000_000
            for (id, var job) in jobs where !job.hasExited {
                job.deadline = job.deadline &+ shift
                jobs[id] = job
                if paused { kill(-job.pid, SIGCONT) }
            }
            paused = false
        }
    }

    /// The supervisor hands this worker to its successor. The parent-death signal goes (the
    /// supervisor exits, the worker stays); nobody follows a job's output across the handoff
    /// (a client attaches again: the kept output is replayed), so output is captured only.
    /// `handoffReady` is the last frame the old supervisor gets: what follows is held.
    private func handOff() {
        guard held == nil else { return }
        _ = cp_set_pdeathsig(0)
        for (id, var job) in jobs {
            job.watched = false
            job.unacknowledged = 0
            jobs[id] = job
        }
        send(.handoffReady(version: WorkerProtocol.version))
        held = []
        log("handed off (\(jobs.count) job(s) running); waiting for the next supervisor")
    }

    /// The successor took the socket: who this is and every job it owes a result for (running,
    /// or ended with the result held), then what was held.
    private func adopted() {
        let frames = held ?? []
        held = nil
        let running = jobs.values.map {
            ($0.startedAt, AdoptedState.Job(jobID: $0.id, pid: $0.pid, slot: $0.cgroup.flatMap { UInt32($0.name.dropFirst(4)) } ?? 0, options: $0.options))
        }
        let owed = (running + endedWhileHeld).sorted { $0.0 < $1.0 }.map(\.1)
        let ended = endedWhileHeld.count
        endedWhileHeld = []
        send(.adopted(AdoptedState(version: WorkerProtocol.version, pid: getpid(), tenant: config.tenant?.value ?? "", jobs: owed)))
        for frame in frames { frame.withUnsafeBytes { send(frame: $0) } }
        log("adopted by a new supervisor (\(running.count) job(s) running, \(ended) ended meanwhile, \(frames.count) frame(s) held)")
    }

    private func start(_ request: RunRequest) {
        guard !request.argv.isEmpty, jobs[request.jobID] == nil else {
            report(
                JobReport(
                    jobID: request.jobID, outcome: .spawnFailed(step: "request", errno: EINVAL),
                    stdout: [], stderr: Array("clawpen: invalid run request\n".utf8),
                    stdoutTruncated: false, stderrTruncated: false, runMicros: 0, cpuMicros: 0, maxRSSKiB: 0))
            return
        }
        let started: JobLauncher.Started
        do {
            started = try launcher.launch(request, tenant: config.tenant?.value ?? "")
        } catch {
            let (outcome, message): (JobOutcome, String)
            switch error {
            case .notFound(let command, let searched):
                outcome = .spawnFailed(step: "exec", errno: ENOENT)
                message = "clawpen: \(command): command not found (searched PATH=\(searched))\n"
            case .spawn(let step, let e):
                outcome = .spawnFailed(step: step, errno: e)
                message = "clawpen: cannot run '\(request.argv[0])': \(step) failed: \(errnoString(e))\n"
            }
            report(
                JobReport(
                    jobID: request.jobID, outcome: outcome, stdout: [], stderr: Array(message.utf8),
                    stdoutTruncated: false, stderrTruncated: false, runMicros: 0, cpuMicros: 0, maxRSSKiB: 0))
            return
        }
        let now = Clock.monotonicNanos()
        var job = RunningJob(
            id: request.jobID, pid: started.pid, startedAt: now,
            deadline: now + UInt64(request.timeoutMs) * 1_000_000,
            outputCap: Int(request.outputCapBytes), cgroup: started.cgroup,
            stdoutFD: started.stdoutFD, stderrFD: started.stderrFD, stdinFD: started.stdinFD ?? -1,
            pendingInput: started.stdinFD == nil ? [] : request.stdin)
        job.options = request.options
        job.watched = request.options.stream
        job.initialInput = job.pendingInput.count
        job.ptyMaster = request.options.tty ? started.stdoutFD : -1
        // Input without stdin_open is all there is: stdin closes once it is written.
        job.eofRequested = !request.options.stdinOpen
        jobs[request.jobID] = job
        jobByPID[started.pid] = request.jobID
        // The cgroup slot lets the supervisor tell which job a caller of the agent socket is.
        let slot = started.cgroup.flatMap { UInt32($0.name.dropFirst(4)) } ?? 0
        send(.started(jobID: request.jobID, pid: started.pid, slot: slot))
    }

    /// A readable or writable pipe of some job.
    private func service(fd: Int32, revents: Int16) {
        guard let id = jobs.first(where: { $0.value.stdoutFD == fd || $0.value.stderrFD == fd || $0.value.stdinFD == fd })?.key,
            var job = jobs[id]
        else { return }
        if fd == job.stdinFD {
            writeInput(&job)
            reportInput(&job)
        } else {
            let isOut = fd == job.stdoutFD
            var closed = false
            while true {
                let n = read(fd, scratch.baseAddress, scratch.count)
                if n > 0 {
                    took(UnsafeRawBufferPointer(rebasing: scratch[0..<n]), stdout: isOut, &job)
                    if n < scratch.count || job.outputBlocked { break }
                    continue
                }
                if n < 0 && errno == EINTR { continue }
                if n < 0 && errno == EAGAIN { break }
                closed = true
                break
            }
            if closed {
                close(fd)
                if isOut { job.stdoutFD = -1 } else { job.stderrFD = -1 }
            }
        }
        jobs[id] = job
    }

    private func reap() {
        while true {
            var status: Int32 = 0
            var usage = rusage()
            let pid = cp_wait4(-1, &status, WNOHANG, &usage)
            if pid <= 0 { return }
            guard let id = jobByPID.removeValue(forKey: pid), var job = jobs[id] else { continue }
            let now = Clock.monotonicNanos()
            job.waitStatus = status
            job.exitedAt = now
            job.drainDeadline = now + Self.drainGraceNanos
            job.cpuMicros =
                UInt64(usage.ru_utime.tv_sec) * 1_000_000 + UInt64(usage.ru_utime.tv_usec)
                + UInt64(usage.ru_stime.tv_sec) * 1_000_000 + UInt64(usage.ru_stime.tv_usec)
            job.maxRSSKiB = UInt64(max(0, usage.ru_maxrss))
            // The job is over when its first process is: take whatever it left running with it,
            // in its process group and (where it has one) in its cgroup, whatever it did to leave
            // the group.
            kill(-pid, SIGKILL)
            if let cg = job.cgroup { launcher.jobCgroups.kill(cg) }
            if job.stdinFD >= 0 { close(job.stdinFD); job.stdinFD = -1 }
            jobs[id] = job
        }
    }

    private func enforceDeadlines() {
        guard !paused else { return }
        let now = Clock.monotonicNanos()
        for (id, var job) in jobs where !job.hasExited && job.killReason == nil && now >= job.deadline {
            job.killReason = .timeout
            kill(-job.pid, SIGKILL)
            if let cg = job.cgroup { launcher.jobCgroups.kill(cg) }
            jobs[id] = job
        }
    }

    private func finishReadyJobs() {
        let now = Clock.monotonicNanos()
        for (id, job) in jobs where job.hasExited && (job.pipesClosed || now >= job.drainDeadline) {
            var job = job
            if job.stdoutFD >= 0 { drainRemaining(&job, stdout: true); close(job.stdoutFD); job.stdoutFD = -1 }
            if job.stderrFD >= 0 { drainRemaining(&job, stdout: false); close(job.stderrFD); job.stderrFD = -1 }
            jobs[id] = nil
            // No cgroup slot: it is released below and may go to a job the successor starts.
            if held != nil { endedWhileHeld.append((job.startedAt, AdoptedState.Job(jobID: job.id, pid: job.pid, slot: 0, options: job.options))) }
            report(makeReport(job))
            if let cg = job.cgroup, !launcher.jobCgroups.release(cg) { cgroupsToRemove.append(cg) }
        }
        // Job cgroups whose last processes were still dying: retried until they are empty.
        if !cgroupsToRemove.isEmpty { cgroupsToRemove.removeAll { launcher.jobCgroups.release($0) } }
    }

    /// What the pipe still holds once the job is over (at most a pipe buffer: the job is gone),
    /// captured and, for a followed job, sent whatever the window says.
    private func drainRemaining(_ job: inout RunningJob, stdout: Bool) {
        let fd = stdout ? job.stdoutFD : job.stderrFD
        while true {
            let n = read(fd, scratch.baseAddress, scratch.count)
            guard n > 0 else { return }
            took(UnsafeRawBufferPointer(rebasing: scratch[0..<n]), stdout: stdout, &job)
        }
    }

    private func makeReport(_ job: RunningJob) -> JobReport {
        let status = job.waitStatus ?? 0
        let signal: Int32? = cp_wifsignaled(status) != 0 ? cp_wtermsig(status) : nil
        let outcome: JobOutcome
        switch job.killReason {
        case .timeout: outcome = .timedOut(signal: signal ?? SIGKILL)
        case .cancel: outcome = .canceled(signal: signal)
        case nil:
            if let signal { outcome = .signaled(signal: signal) } else { outcome = .exited(code: cp_wexitstatus(status)) }
        }
        return JobReport(
            jobID: job.id, outcome: outcome, stdout: job.stdout.bytes, stderr: job.stderr.bytes,
            stdoutTruncated: job.stdout.truncated, stderrTruncated: job.stderr.truncated,
            runMicros: (job.exitedAt - job.startedAt) / 1000, cpuMicros: job.cpuMicros, maxRSSKiB: job.maxRSSKiB)
    }

    // MARK: - Sending

    private func report(_ r: JobReport) { send(.finished(r)) }

    /// Writes one frame, waiting for the socket when it is full. The supervisor (NIO) always
    /// reads, so this cannot deadlock; meanwhile jobs block on their own full pipes.
    func send(_ message: WorkerToSupervisor) {
        Framing.frame(message.encoded()).withUnsafeBytes { send(frame: $0) }
    }

    /// Writes one frame that is already laid out (header and payload), as `send` does.
    func send(frame: UnsafeRawBufferPointer) {
        if held != nil {
            held?.append(Array(frame))
            return
        }
        var offset = 0
        while offset < frame.count {
            let n = write(socketFD, frame.baseAddress.map { $0 + offset }, frame.count - offset)
            if n > 0 { offset += n; continue }
            if n < 0 && errno == EINTR { continue }
            if n < 0 && errno == EAGAIN {
                var pfd = pollfd(fd: socketFD, events: Int16(POLLOUT), revents: 0)
                _ = poll(&pfd, 1, -1)
                continue
            }
            // EPIPE/ECONNRESET: the supervisor is gone.
            shutdown(code: 0)
        }
    }

    /// Kills every job's process group, reaps them, exits.
    private func shutdown(code: Int32) -> Never {
        files?.abandonAll()
        for job in jobs.values where !job.hasExited { kill(-job.pid, SIGKILL) }
        for job in jobs.values where !job.hasExited {
            var status: Int32 = 0
            var usage = rusage()
            _ = cp_wait4(job.pid, &status, 0, &usage)
        }
        exit(code)
    }
}
