/// Messages on the supervisor<->worker socketpair. Each frame payload is one message: a tag byte
/// and its fields (BinaryCodec). The supervisor treats every `WorkerToSupervisor` as untrusted.

/// The worker protocol's version, exchanged at a handoff (`handoff`/`adopt`): a supervisor
/// adopts only workers whose version it speaks (docs/reliability.md, "Upgrade without killing
/// tenants"). Raise it with any change to a message's layout or meaning.
/// 2: the adoption answer also lists the jobs that ended while the worker was between two
/// supervisors (their results are among the frames it held); a version 1 worker left them out.
public enum WorkerProtocol {
    public static let version: UInt32 = 2
    /// The versions this build's supervisor can adopt.
    public static let adoptable: ClosedRange<UInt32> = 2...2
}

/// A worker's answer to `adopt`. `jobs`: every job it owes a result for, in the order they
/// started: those running and those that ended after `handoff` (whose `finished` frames follow
/// the answer, with whatever else it held).
public struct AdoptedState: Equatable, Sendable {
    public struct Job: Equatable, Sendable {
        public var jobID: String
        public var pid: Int32
        /// Its cgroup slot (`job-<slot>`), 0: none.
        public var slot: UInt32
        /// As it was run (streamed, stdin open, a terminal): the store does not keep them.
        public var options: RunOptions
        public init(jobID: String, pid: Int32, slot: UInt32, options: RunOptions = RunOptions()) {
            self.jobID = jobID; self.pid = pid; self.slot = slot; self.options = options
        }
    }
    /// More than a worker could ever run at once (max_concurrent_runs is far below).
    public static let maxJobs: UInt32 = 65_536
    public var version: UInt32
    public var pid: Int32
    public var tenant: String
    public var jobs: [Job]
    public init(version: UInt32, pid: Int32, tenant: String, jobs: [Job]) {
        self.version = version; self.pid = pid; self.tenant = tenant; self.jobs = jobs
    }
}

/// What a job is asked to run, as the worker receives it.
public struct RunRequest: Equatable, Sendable {
    public var jobID: String
    public var argv: [String]
    public var env: [String] // "K=V", the complete environment of the job
    public var cwd: String // as the job sees it
    public var stdin: [UInt8]
    public var timeoutMs: UInt32
    public var outputCapBytes: UInt32 // per stream
    /// Streamed, stdin open, terminal (RuntimeMessages.swift).
    public var options: RunOptions

    public init(
        jobID: String, argv: [String], env: [String], cwd: String, stdin: [UInt8],
        timeoutMs: UInt32, outputCapBytes: UInt32, options: RunOptions = RunOptions()
    ) {
        self.jobID = jobID; self.argv = argv; self.env = env; self.cwd = cwd; self.stdin = stdin
        self.timeoutMs = timeoutMs; self.outputCapBytes = outputCapBytes; self.options = options
    }
}

/// How a job ended, as the worker saw it.
public enum JobOutcome: Equatable, Sendable {
    case exited(code: Int32)
    case signaled(signal: Int32)
    case timedOut(signal: Int32)
    case canceled(signal: Int32?)
    /// The job could not be started: which step failed and errno (exec of a missing command...).
    case spawnFailed(step: String, errno: Int32)
}

public struct JobReport: Equatable, Sendable {
    public var jobID: String
    public var outcome: JobOutcome
    public var stdout: [UInt8]
    public var stderr: [UInt8]
    public var stdoutTruncated: Bool
    public var stderrTruncated: Bool
    public var runMicros: UInt64
    public var cpuMicros: UInt64
    public var maxRSSKiB: UInt64

    public init(
        jobID: String, outcome: JobOutcome, stdout: [UInt8], stderr: [UInt8],
        stdoutTruncated: Bool, stderrTruncated: Bool, runMicros: UInt64, cpuMicros: UInt64,
        maxRSSKiB: UInt64
    ) {
        self.jobID = jobID; self.outcome = outcome; self.stdout = stdout; self.stderr = stderr
        self.stdoutTruncated = stdoutTruncated; self.stderrTruncated = stderrTruncated
        self.runMicros = runMicros; self.cpuMicros = cpuMicros; self.maxRSSKiB = maxRSSKiB
    }
}

public enum SupervisorToWorker: Equatable, Sendable {
    /// The first frame a worker receives: how to build its sandbox before it serves.
    case configure(SandboxPlan)
    case run(RunRequest)
    case cancel(jobID: String)
    /// Stop serving: kill whatever still runs, reap it, exit 0.
    case shutdown
    /// The tenant is suspended and has no cgroup to freeze: SIGSTOP every running job's process
    /// group and stop enforcing deadlines until `resume`.
    case pause
    /// The suspension is over (it lasted `pausedMs`): SIGCONT what `pause` stopped and move every
    /// running job's deadline by `pausedMs` (a frozen job did not use its time).
    case resume(pausedMs: UInt32)
    /// Output, input, window size and signals of a running job.
    case runtime(RuntimeCommand)
    /// A file operation or a step of a transfer (FileMessages.swift).
    case file(FileRequest)
    /// Answer `synced(token)` once everything sent before it is handled: whatever the worker
    /// said about its jobs before the answer (started, finished) is then known to the
    /// supervisor (the agent socket's caller lookup, docs/subjobs.md).
    case sync(token: UInt32)
    /// The supervisor is stopping and hands this worker's socket to its successor (an upgrade,
    /// docs/reliability.md): clear the parent-death signal, answer `handoffReady` after
    /// everything sent before, then send nothing (hold reports, leave job output in its pipes)
    /// until the successor's `adopt`. EOF meanwhile: nobody took the socket; stop as ever.
    case handoff(version: UInt32)
    /// The successor takes the worker over: answer `adopted` (the running jobs), then send what
    /// was held, and serve again.
    case adopt(version: UInt32)

    public func encoded() -> [UInt8] {
        var w = BinaryWriter()
        switch self {
        case .handoff(let version):
            w.u8(8); w.u32(version)
        case .adopt(let version):
            w.u8(9); w.u32(version)
        case .sync(let token):
            w.u8(7); w.u32(token)
        case .file(let f):
            w = BinaryWriter(capacity: f.encodedCapacity)
            w.u8(40); f.encode(into: &w)
        case .run(let r):
            w.u8(1); w.string(r.jobID); w.strings(r.argv); w.strings(r.env); w.string(r.cwd)
            w.bytes(r.stdin); w.u32(r.timeoutMs); w.u32(r.outputCapBytes); r.options.encode(into: &w)
        case .cancel(let id):
            w.u8(2); w.string(id)
        case .shutdown:
            w.u8(3)
        case .configure(let plan):
            w.u8(4); plan.encode(into: &w)
        case .pause:
            w.u8(5)
        case .resume(let ms):
            w.u8(6); w.u32(ms)
        case .runtime(let command):
            command.encode(into: &w)
        }
        return w.bytes
    }

    public static func decode(_ payload: [UInt8]) throws(BinaryReader.Failure) -> SupervisorToWorker {
        var r = BinaryReader(payload)
        let msg: SupervisorToWorker
        switch try r.u8() {
        case 1:
            msg = .run(
                RunRequest(
                    jobID: try r.string(), argv: try r.strings(max: 65536), env: try r.strings(max: 65536),
                    cwd: try r.string(), stdin: try r.bytes(), timeoutMs: try r.u32(), outputCapBytes: try r.u32(),
                    options: try RunOptions.decode(&r)))
        case 2: msg = .cancel(jobID: try r.string())
        case 3: msg = .shutdown
        case 4: msg = .configure(try SandboxPlan.decode(&r))
        case 5: msg = .pause
        case 6: msg = .resume(pausedMs: try r.u32())
        case 7: msg = .sync(token: try r.u32())
        case 8: msg = .handoff(version: try r.u32())
        case 9: msg = .adopt(version: try r.u32())
        case 40: msg = .file(try FileRequest.decode(&r))
        case let tag:
            guard let command = try RuntimeCommand.decode(tag: tag, &r) else { throw .badValue }
            msg = .runtime(command)
        }
        guard r.isAtEnd else { throw .badValue }
        return msg
    }
}

public enum WorkerToSupervisor: Equatable, Sendable {
    /// Sent once, when the worker is ready to serve (after its setup).
    case ready(pid: Int32)
    /// Setup failed at `step` with `errno`; the worker exits after sending it.
    case setupFailed(step: String, errno: Int32, detail: String)
    /// `slot`: the job's cgroup, `job-<slot>` below the tenant's node (0: it has none).
    case started(jobID: String, pid: Int32, slot: UInt32 = 0)
    case finished(JobReport)
    /// The answer to `sync(token)`.
    case synced(token: UInt32)
    /// Output, replay ends and input progress of a running job.
    case runtime(RuntimeEvent)
    /// The answer to a file operation, or a step of a transfer (FileMessages.swift).
    case file(FileReply)
    /// The answer to `handoff`: the last frame before the handoff; `version` is the worker's
    /// protocol version.
    case handoffReady(version: UInt32)
    /// The answer to `adopt`: who the worker is and the jobs it still runs (or has finished and
    /// holds the report of, which follows).
    case adopted(AdoptedState)

    public static let maxJobIDBytes = 128

    public func encoded() -> [UInt8] {
        var w = BinaryWriter()
        switch self {
        case .ready(let pid):
            w.u8(1); w.i32(pid)
        case .setupFailed(let step, let errno, let detail):
            w.u8(2); w.string(step); w.i32(errno); w.string(detail)
        case .started(let id, let pid, let slot):
            w.u8(3); w.string(id); w.i32(pid); w.u32(slot)
        case .synced(let token):
            w.u8(5); w.u32(token)
        case .handoffReady(let version):
            w.u8(6); w.u32(version)
        case .adopted(let state):
            w.u8(7); w.u32(state.version); w.i32(state.pid); w.string(state.tenant); w.u32(UInt32(state.jobs.count))
            for job in state.jobs { w.string(job.jobID); w.i32(job.pid); w.u32(job.slot); job.options.encode(into: &w) }
        case .file(let f):
            w = BinaryWriter(capacity: f.encodedCapacity)
            w.u8(40); f.encode(into: &w)
        case .finished(let rep):
            w = BinaryWriter(capacity: rep.stdout.count + rep.stderr.count + 96)
            w.u8(4); w.string(rep.jobID)
            switch rep.outcome {
            case .exited(let c): w.u8(1); w.i32(c)
            case .signaled(let s): w.u8(2); w.i32(s)
            case .timedOut(let s): w.u8(3); w.i32(s)
            case .canceled(let s): w.u8(4); w.optionalI32(s)
            case .spawnFailed(let step, let e): w.u8(5); w.string(step); w.i32(e)
            }
            w.bytes(rep.stdout); w.bytes(rep.stderr)
            w.bool(rep.stdoutTruncated); w.bool(rep.stderrTruncated)
            w.u64(rep.runMicros); w.u64(rep.cpuMicros); w.u64(rep.maxRSSKiB)
        case .runtime(let event):
            if case .output(let c) = event { w = BinaryWriter(capacity: c.data.count + 64) }
            event.encode(into: &w)
        }
        return w.bytes
    }

    /// Decodes an untrusted worker message. `outputCap` bounds each stream: a worker that sends
    /// more than it was allowed to capture is misbehaving.
    public static func decode(_ payload: [UInt8], outputCap: Int) throws(BinaryReader.Failure) -> WorkerToSupervisor {
        var r = BinaryReader(payload)
        let msg: WorkerToSupervisor
        switch try r.u8() {
        case 1: msg = .ready(pid: try r.i32())
        case 2: msg = .setupFailed(step: try r.string(), errno: try r.i32(), detail: try r.string())
        case 3: msg = .started(jobID: try r.string(), pid: try r.i32(), slot: try r.u32())
        case 5: msg = .synced(token: try r.u32())
        case 6: msg = .handoffReady(version: try r.u32())
        case 7:
            let version = try r.u32(), pid = try r.i32(), tenant = try r.string()
            let count = try r.u32()
            guard count <= AdoptedState.maxJobs else { throw .tooMany }
            var jobs: [AdoptedState.Job] = []
            for _ in 0..<count {
                let id = try r.string()
                guard id.utf8.count <= maxJobIDBytes else { throw .badValue }
                jobs.append(AdoptedState.Job(jobID: id, pid: try r.i32(), slot: try r.u32(), options: try RunOptions.decode(&r)))
            }
            guard tenant.utf8.count <= 64 else { throw .badValue }
            msg = .adopted(AdoptedState(version: version, pid: pid, tenant: tenant, jobs: jobs))
        case 4:
            let id = try r.string()
            let outcome: JobOutcome
            switch try r.u8() {
            case 1: outcome = .exited(code: try r.i32())
            case 2: outcome = .signaled(signal: try r.i32())
            case 3: outcome = .timedOut(signal: try r.i32())
            case 4: outcome = .canceled(signal: try r.optionalI32())
            case 5: outcome = .spawnFailed(step: try r.string(), errno: try r.i32())
            default: throw .badValue
            }
            let out = try r.bytes(), err = try r.bytes()
            guard out.count <= outputCap, err.count <= outputCap else { throw .tooMany }
            msg = .finished(
                JobReport(
                    jobID: id, outcome: outcome, stdout: out, stderr: err,
                    stdoutTruncated: try r.bool(), stderrTruncated: try r.bool(),
                    runMicros: try r.u64(), cpuMicros: try r.u64(), maxRSSKiB: try r.u64()))
        case 40: msg = .file(try FileReply.decode(&r))
        case let tag:
            guard let event = try RuntimeEvent.decode(tag: tag, &r) else { throw .badValue }
            msg = .runtime(event)
        }
        guard r.isAtEnd else { throw .badValue }
        switch msg {
        case .started(let id, _, _) where id.utf8.count > maxJobIDBytes: throw .badValue
        case .finished(let rep) where rep.jobID.utf8.count > maxJobIDBytes: throw .badValue
        case .runtime(let event) where event.jobID.utf8.count > maxJobIDBytes: throw .badValue
        case .setupFailed(let step, _, let detail) where step.utf8.count > 256 || detail.utf8.count > 4096: throw .badValue
        default: break
        }
        return msg
    }
}
