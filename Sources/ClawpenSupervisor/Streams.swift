import ClawpenCore
import ClawpenProtocol
import ClawpenStore
import ClawpenWire
import FoundationEssentials
import NIOCore

/// The agent runtime's bookkeeping in the shell (docs/protocol.md, "Streaming, stdin,
/// terminals, attach and logs"): who follows which job, and the two windows that keep output and
/// input bounded. Output bytes go from the worker's channel straight to the followers' channels
/// here; the core never sees them (it decides the job's life, not its bytes).
///
/// Confined to the supervisor's event loop, like the rest of the shell.
struct StreamTable {
    var jobs: [String: JobStream] = [:]
    private var lastToken: UInt32 = 0

    mutating func token() -> UInt32 {
        lastToken = lastToken == UInt32.max ? 1 : lastToken + 1
        return lastToken
    }
}

/// One client request following a job: a streamed submit, an attach, or logs.
final class JobFollower {
    enum Kind { case submitter, attach, logs }
    let channel: Channel
    let requestID: JSONValue
    let kind: Kind
    /// Non-zero: the replay asked with this token is still coming; live chunks are not sent
    /// meanwhile (the replay holds them).
    var replayToken: UInt32 = 0
    /// Attached before the job started: it gets a replay from the start once it runs.
    var needsStartReplay = false
    /// `job.logs` without follow: done once the replay is.
    var endsAfterReplay = false
    /// Since when its connection has been over NIO's high-water mark (attach and logs only).
    var fullSince: Double?

    init(channel: Channel, requestID: JSONValue, kind: Kind) {
        self.channel = channel; self.requestID = requestID; self.kind = kind
    }
}

/// What the shell keeps of one job that is streamed, interactive or followed.
final class JobStream {
    let jobID: String
    let tenant: TenantName
    let options: RunOptions
    var followers: [JobFollower] = []
    /// The worker sends the job's output (the run asked for it, or `watch`).
    var watching: Bool
    /// The job runs on its worker (`started` came).
    var started = false
    /// Output bytes passed on to the followers and not yet acknowledged to the worker.
    var owed = 0
    /// Input sent to the worker and not yet written to the job's stdin.
    var inputInFlight = 0
    /// Input that came before the job started, in order.
    var pendingInput: [(data: [UInt8], eof: Bool)] = []
    var pendingInputBytes = 0
    /// `eof` was asked: no more input.
    var stdinClosed = false
    /// Client connections not read while the job's input window is full.
    var pausedReaders: [Channel] = []
    /// A check of slow followers is scheduled.
    var slowCheckArmed = false
    /// Replayed bytes since the last replay ended (bounded by the kept output).
    var replayBytes = 0
    /// A streamed submit whose accept is not committed yet: its output is held here, not sent
    /// and not acknowledged, so the job stops at its output window until it is (nobody hears of
    /// a job before its commit; GroupCommit.swift).
    var committed = true
    var heldOutput: [[UInt8]] = []

    init(jobID: String, tenant: TenantName, options: RunOptions) {
        self.jobID = jobID; self.tenant = tenant; self.options = options
        self.watching = options.stream
    }
}

extension Supervisor {
    /// Input a job may have in flight before its sender's connection stops being read.
    static let inputWindow = 256 * 1024
    /// How long an attached client may keep its connection full before it is detached.
    static let slowFollowerGraceSeconds = 2.0
    /// The worker's output window (Worker.outputWindow; the worker library is not linked here).
    static let outputWindow = 256 * 1024
    /// Output acknowledged to the worker at once (its window is 256 KiB, Worker.outputWindow).
    static let ackBatchBytes = 64 * 1024
    /// Clients that may follow one job at once: each is a copy of its output on the way out.
    static let maxFollowersPerJob = 64

    // MARK: Submit

    /// A submit that streams or talks (stdin open, terminal): its stream exists before the run
    /// is sent, so that no byte of output or input can come before it.
    func registerStream(_ job: JobRecord, _ s: SubmitRequest, _ r: Responder) {
        guard s.options.stream || s.options.isInteractive else { return }
        let stream = JobStream(jobID: job.id, tenant: job.tenant, options: s.options)
        if s.options.stream {
            stream.followers.append(JobFollower(channel: r.channel, requestID: r.id, kind: .submitter))
            stream.committed = false
        }
        streams.jobs[job.id] = stream
    }

    /// The streamed submit is committed: `accepted` now, the final `job` when it ends.
    func acceptedStream(_ job: JobRecord, _ r: Responder) {
        r.reply("accepted", [("job", memoryView(job).json), ("existing", .bool(false))])
        guard let stream = streams.jobs[job.id] else { return }
        stream.committed = true
        let held = stream.heldOutput
        stream.heldOutput = []
        for frame in held { send(frame, to: r.channel) }
        guard let f = stream.followers.first(where: { $0.kind == .submitter }) else { return }
        settle(stream)
        finalFrame(for: f, of: stream)
    }

    /// A streamed resubmission of an existing job: like an attach with replay.
    func streamExisting(_ view: JobView, _ r: Responder) throws {
        try follow(view, r, kind: .attach, replay: true, firstFrame: ("accepted", [("job", view.json), ("existing", .bool(true))]))
    }

    /// The commit of a streamed or interactive job failed: it was never accepted.
    func dropStream(_ id: String) { streams.jobs[id] = nil }

    // MARK: Requests

    func handleRuntime(_ request: RuntimeRequest, _ r: Responder) throws {
        if case .list(let tenant, let state, let limit) = request {
            try listJobs(tenant: tenant, state: state, limit: limit, r)
            return
        }
        guard let id = request.jobID else { return }
        // A keystroke of an interactive job must not cost a store read: a running job that has
        // a stream is known from memory.
        let live = streams.jobs[id].flatMap { core.runningJob(id, tenant: $0.tenant) }
        let view = try live?.view ?? activeOrStoredJob(id)
        let tenant = try jobTenant(view)
        try authorize(r, .submit(tenant: tenant), request: request.typeName)
        switch request {
        case .input(_, let data, let eof): try input(view, data: data, eof: eof, r)
        case .resize(_, let rows, let cols):
            let stream = try running(view, request: "job.resize")
            guard stream?.options.tty == true else {
                throw ProtocolError(.invalidRequest, "job.resize: job \(id) has no terminal (submit it with \"tty\": true)")
            }
            sendRuntime(view, .resize(jobID: id, rows: rows, cols: cols))
            r.reply("ok", [("job_id", .string(id))])
        case .signal(_, let sig):
            _ = try running(view, request: "job.signal")
            sendRuntime(view, .signal(jobID: id, signal: sig.number))
            r.reply("ok", [("job_id", .string(id))])
        case .attach(_, let replay):
            try follow(view, r, kind: .attach, replay: replay, firstFrame: ("attached", [("job", view.json)]))
        case .logs(_, let follow):
            try self.follow(view, r, kind: .logs, replay: true, firstFrame: nil, endsAfterReplay: !follow)
        case .detach(_, let attachID):
            guard let stream = streams.jobs[id],
                let i = stream.followers.firstIndex(where: { $0.channel === r.channel && $0.requestID == attachID })
            else {
                throw ProtocolError(
                    .invalidRequest,
                    "job.detach: this connection does not follow job \(id) with request id \(String(decoding: attachID.serialized(), as: UTF8.self))")
            }
            stream.followers.remove(at: i)
            followersChanged(stream)
            r.reply("ok", [("job_id", .string(id))])
        case .list: break
        }
    }

    /// The job's stream when it runs now; a refusal naming its state otherwise.
    private func running(_ view: JobView, request: String) throws(ProtocolError) -> JobStream? {
        guard view.state == .running else {
            let why = view.state == .queued ? "is still queued" : "has finished (\(view.state.rawValue))"
            throw ProtocolError(.invalidRequest, "\(request): job \(view.id) \(why); only a running job can take this")
        }
        return streams.jobs[view.id]
    }

    private func sendRuntime(_ view: JobView, _ command: RuntimeCommand) {
        guard let tenant = try? jobTenant(view) else { return }
        sendRuntime(tenant, command)
    }

    /// To the worker that runs the job now (if it runs).
    private func sendRuntime(_ tenant: TenantName, _ command: RuntimeCommand) {
        guard let w = core.tenants[tenant]?.lifecycle.worker, core.runningJob(command.jobID, tenant: tenant) != nil,
            let channel = workers[w.id]?.channel
        else { return }
        channel.writeAndFlush(channel.allocator.frame(SupervisorToWorker.runtime(command).encoded()), promise: nil)
    }

    private func input(_ view: JobView, data: [UInt8], eof: Bool, _ r: Responder) throws {
        let id = view.id
        if view.state.isFinal {
            throw ProtocolError(.invalidRequest, "job.input: job \(id) has finished (\(view.state.rawValue)); its stdin is closed")
        }
        guard let stream = streams.jobs[id], stream.options.stdinOpen else {
            throw ProtocolError(.invalidRequest, "job.input: job \(id) was not submitted with \"stdin_open\": true, so it takes no input")
        }
        guard !stream.stdinClosed else {
            throw ProtocolError(.invalidRequest, "job.input: the stdin of job \(id) was closed already (an earlier job.input had \"eof\": true)")
        }
        if eof { stream.stdinClosed = true }
        runtimeCounters.input(stream.tenant, bytes: data.count)
        if stream.started {
            stream.inputInFlight += data.count
            sendRuntime(view, .input(jobID: id, data: data, eof: eof))
        } else {
            stream.pendingInput.append((data, eof))
            stream.pendingInputBytes += data.count
        }
        r.reply("input", [("job_id", .string(id)), ("bytes", .int(Int64(data.count)))])
        // A client that sends faster than the job reads stops being read (its socket fills, and
        // so does its own send buffer): at most the window waits here per job.
        // The worker's own socket counts too: a worker that claims input was taken but reads
        // nothing must not make the supervisor buffer the rest.
        let workerFull = stream.started && !(workerChannel(stream)?.isWritable ?? true)
        if stream.inputInFlight + stream.pendingInputBytes > Self.inputWindow || workerFull,
            !stream.pausedReaders.contains(where: { $0 === r.channel })
        {
            stream.pausedReaders.append(r.channel)
            r.channel.setOption(ChannelOptions.autoRead, value: false).whenComplete { _ in }
        }
    }

    private func workerChannel(_ stream: JobStream) -> Channel? {
        core.tenants[stream.tenant]?.lifecycle.worker.flatMap { workers[$0.id]?.channel }
    }

    private func resumeReaders(_ stream: JobStream) {
        guard stream.inputInFlight + stream.pendingInputBytes <= Self.inputWindow, !stream.pausedReaders.isEmpty else { return }
        if stream.started && !stream.stdinClosed, let worker = workerChannel(stream), !worker.isWritable { return }
        let readers = stream.pausedReaders
        stream.pausedReaders.removeAll()
        for channel in readers where channel.isActive {
            channel.setOption(ChannelOptions.autoRead, value: true).whenComplete { _ in }
        }
    }

    // MARK: Following

    /// Adds a follower to `view`'s job: the first frame, then (replay) what is kept, then live
    /// output, then the final `job` frame; for a finished job the stored output and the job.
    private func follow(
        _ view: JobView, _ r: Responder, kind: JobFollower.Kind, replay: Bool, firstFrame: (String, [(String, JSONValue)])?,
        endsAfterReplay: Bool = false
    ) throws {
        if let s = streams.jobs[view.id], s.followers.count >= Self.maxFollowersPerJob {
            let request = kind == .logs ? "job.logs" : kind == .attach ? "job.attach" : "submit"
            throw ProtocolError(
                .quotaExceeded,
                "\(request): job \(view.id) already has \(s.followers.count) clients following its output, the most one job may have; detach one first",
                details: ["rule": .string("max_followers_per_job"), "limit": .int(Int64(Self.maxFollowersPerJob))])
        }
        if let (type, fields) = firstFrame { r.reply(type, fields) }
        let id = view.id
        if view.state.isFinal {
            if replay { sendStored(view, to: r) }
            r.job(view)
            return
        }
        if view.state == .queued && endsAfterReplay {
            r.job(view) // nothing is kept of a job that has not started
            return
        }
        let tenant = try jobTenant(view)
        let stream: JobStream
        if let s = streams.jobs[id] {
            stream = s
        } else {
            let options = core.runningJob(id, tenant: tenant)?.options ?? RunOptions()
            stream = JobStream(jobID: id, tenant: tenant, options: options)
            stream.watching = options.stream
            stream.started = view.state == .running
            streams.jobs[id] = stream
        }
        let f = JobFollower(channel: r.channel, requestID: r.id, kind: kind)
        f.endsAfterReplay = endsAfterReplay
        stream.followers.append(f)
        if stream.started {
            if replay {
                f.replayToken = streams.token()
                stream.watching = true
                sendRuntime(view, .watch(jobID: id, replayToken: f.replayToken))
            } else if !stream.watching {
                stream.watching = true
                sendRuntime(view, .watch(jobID: id, replayToken: 0))
            }
        } else if !stream.watching {
            // Not started, not streamed: when it starts, a replay from its first byte.
            f.needsStartReplay = true
        }
        if !endsAfterReplay { finalFrame(for: f, of: stream) }
    }

    /// When the job ends: its final JOB to `f`, if `f` still follows it.
    private func finalFrame(for f: JobFollower, of stream: JobStream) {
        addWaiter(stream.jobID) { [self] result in
            guard stream.followers.contains(where: { $0 === f }) else { return }
            switch result {
            case .success(let view): send(Reply.make("job", id: f.requestID, [("job", view.json), ("existing", .bool(false))]), to: f.channel)
            case .failure(let error): send(Reply.error(error, id: f.requestID), to: f.channel)
            }
            stream.followers.removeAll { $0 === f }
            if stream.followers.isEmpty && streams.jobs[stream.jobID] === stream { streams.jobs[stream.jobID] = nil }
        }
    }

    /// A finished job's stored output as `output` frames (stdout's, then stderr's).
    private func sendStored(_ view: JobView, to r: Responder) {
        for (name, bytes) in [("stdout", view.stdoutBytes), ("stderr", view.stderrBytes)] {
            var offset = 0
            while offset < bytes.count {
                let end = min(bytes.count, offset + OutputChunk.maxBytes)
                send(
                    Self.outputFrame(
                        requestID: r.id, jobID: view.id, stream: name, seq: nil, offset: UInt64(offset), data: bytes[offset..<end]),
                    to: r.channel)
                offset = end
            }
        }
    }

    /// One `output` frame, written directly (it is mostly base64; see Base64): the same
    /// object as `Reply.make("output", ...)` would serialize.
    static func outputFrame(requestID: JSONValue, jobID: String, stream: String, seq: UInt64?, offset: UInt64, data: ArraySlice<UInt8>) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(Base64.encodedCount(data.count) + 160)
        out += #"{"type":"output","id":"#.utf8
        out += requestID.serialized()
        out += #","job_id":"#.utf8
        out += JSONValue.string(jobID).serialized()
        out += #","stream":""#.utf8
        out += stream.utf8
        out += #"","seq":"#.utf8
        if let seq { out += String(seq).utf8 } else { out += "null".utf8 }
        out += #","offset":"#.utf8
        out += String(offset).utf8
        if seq == nil { out += #","replay":true"#.utf8 }
        out += #","data_b64":""#.utf8
        Base64.encode(data, appendingTo: &out)
        out += #""}"#.utf8
        return out
    }

    private func send(_ payload: [UInt8], to channel: Channel) {
        guard channel.isActive else { return }
        channel.writeAndFlush(channel.allocator.frame(payload), promise: nil)
    }

    /// Followers came or went: a job nobody follows is not streamed any more (it is still
    /// captured), and what it owed is forgiven.
    private func followersChanged(_ stream: JobStream) {
        if stream.followers.isEmpty {
            if stream.watching && stream.started { sendRuntime(stream.tenant, .unwatch(jobID: stream.jobID)) }
            stream.watching = false
            stream.owed = 0
            if !stream.options.isInteractive || stream.stdinClosed { streams.jobs[stream.jobID] = nil }
            return
        }
        settle(stream)
    }

    // MARK: Worker events

    /// The job is on its worker: pending input goes, and followers that came while it was
    /// queued get it from its first byte.
    func streamJobStarted(_ id: String, _ w: WorkerHandle) {
        guard let channel = w.channel else { return }
        func send(_ c: RuntimeCommand) { channel.write(channel.allocator.frame(SupervisorToWorker.runtime(c).encoded()), promise: nil) }
        guard let stream = streams.jobs[id], stream.tenant == w.tenant else {
            // Streamed, but its client left before it started: nobody would acknowledge its
            // output, and its window would close for good.
            if core.runningJob(id, tenant: w.tenant)?.options.stream == true { send(.unwatch(jobID: id)); channel.flush() }
            return
        }
        stream.started = true
        if stream.options.stream && !stream.watching { send(.unwatch(jobID: id)) }
        for f in stream.followers where f.needsStartReplay {
            f.needsStartReplay = false
            f.replayToken = streams.token()
            stream.watching = true
            send(.watch(jobID: id, replayToken: f.replayToken))
        }
        for (data, eof) in stream.pendingInput {
            stream.inputInFlight += data.count
            send(.input(jobID: id, data: data, eof: eof))
        }
        stream.pendingInput.removeAll()
        stream.pendingInputBytes = 0
        channel.flush()
    }

    /// The job is over: nothing more goes to its stdin.
    func streamJobFinished(_ id: String) {
        guard let stream = streams.jobs[id] else { return }
        stream.inputInFlight = 0
        stream.pendingInputBytes = 0
        stream.stdinClosed = true
        resumeReaders(stream)
        if stream.followers.isEmpty { streams.jobs[id] = nil }
    }

    /// Output, a replay's end, input progress. The worker is untrusted: an event for a job it
    /// does not run is misbehaviour.
    func runtimeEvent(_ event: RuntimeEvent, _ w: WorkerHandle) {
        let id = event.jobID
        guard core.runningJob(id, tenant: w.tenant) != nil else {
            workerMisbehaved(w, "sent output or input progress for job \(id.prefix(80)), which it does not run")
            return
        }
        guard let stream = streams.jobs[id] else { return } // nobody follows it any more
        switch event {
        case .output(let c):
            // The worker keeps to its window; one that does not would have the supervisor
            // buffer for slow clients without bound. (Twice the window: an unwatch and a new
            // watch may cross chunks in flight.) A replay is at most the kept output.
            if c.replayToken == 0 && stream.watching && stream.owed + c.data.count > 2 * Self.outputWindow + OutputChunk.maxBytes {
                workerMisbehaved(w, "sent more output of job \(id.prefix(80)) than its window allows")
                return
            }
            if c.replayToken != 0 {
                stream.replayBytes += c.data.count
                let cap = core.runningJob(id, tenant: w.tenant)?.outputCap ?? 0
                if stream.replayBytes > 2 * cap + OutputChunk.maxBytes {
                    workerMisbehaved(w, "replayed more output of job \(id.prefix(80)) than it may keep")
                    return
                }
            }
            for f in stream.followers {
                if c.replayToken != 0 {
                    guard f.replayToken == c.replayToken else { continue }
                } else if f.replayToken != 0 || f.needsStartReplay {
                    continue
                }
                let frame = Self.outputFrame(
                    requestID: f.requestID, jobID: id, stream: c.stream.name, seq: c.seq, offset: c.offset, data: c.data[...])
                if !stream.committed && f.kind == .submitter {
                    stream.heldOutput.append(frame)
                    continue
                }
                send(frame, to: f.channel)
            }
            if c.replayToken == 0 { runtimeCounters.output(stream.tenant, bytes: c.data.count) }
            if c.replayToken == 0 && stream.watching {
                stream.owed += c.data.count
                settle(stream)
            }
        case .replayed(_, let token):
            // Only the end of a replay somebody asked for resets the budget: a worker that sent
            // `replayed` for any token could otherwise replay without end.
            guard let f = stream.followers.first(where: { $0.replayToken == token }) else { return }
            stream.replayBytes = 0
            f.replayToken = 0
            if f.endsAfterReplay {
                stream.followers.removeAll { $0 === f }
                if let view = try? activeOrStoredJob(id) {
                    send(Reply.make("job", id: f.requestID, [("job", view.json), ("existing", .bool(false))]), to: f.channel)
                }
                followersChanged(stream)
            }
        case .inputTaken(_, let bytes):
            stream.inputInFlight = max(0, stream.inputInFlight - Int(bytes))
            resumeReaders(stream)
        }
    }

    // MARK: Flow control

    /// Acknowledges the job's output to its worker once every follower's connection has taken
    /// it. A submitter that does not read holds the job (its own job, a pipe with a slow reader);
    /// an attached client that stays full is detached after a grace period.
    private func settle(_ stream: JobStream) {
        // Acknowledged in batches of a quarter of the worker's window: a job that writes a line
        // now and then never comes near the window, and each ack is a write and a wake-up of the
        // worker, on the path of the next line.
        guard stream.owed >= Self.ackBatchBytes, stream.committed else { return }
        var blocked = false
        let now = Clock.monotonic()
        for f in stream.followers where f.channel.isActive && !f.channel.isWritable {
            blocked = true
            if f.kind != .submitter && f.fullSince == nil { f.fullSince = now }
        }
        if blocked {
            armSlowCheck(stream)
            return
        }
        let bytes = UInt32(clamping: stream.owed)
        stream.owed = 0
        sendRuntime(stream.tenant, .ack(jobID: stream.jobID, bytes: bytes))
    }

    private func armSlowCheck(_ stream: JobStream) {
        guard !stream.slowCheckArmed, stream.followers.contains(where: { $0.fullSince != nil }) else { return }
        stream.slowCheckArmed = true
        _ = loop.scheduleTask(in: .milliseconds(Int64(Self.slowFollowerGraceSeconds * 1000))) { [self] in
            stream.slowCheckArmed = false
            dropSlowFollowers(stream)
        }
    }

    private func dropSlowFollowers(_ stream: JobStream) {
        let now = Clock.monotonic()
        var dropped: [JobFollower] = []
        for f in stream.followers where f.kind != .submitter {
            if f.channel.isWritable || !f.channel.isActive { f.fullSince = nil; continue }
            if let since = f.fullSince, now - since >= Self.slowFollowerGraceSeconds - 0.01 { dropped.append(f) }
        }
        for f in dropped {
            logger.notice(
                "detached a client that stopped reading a job's output",
                metadata: ["job_id": "\(stream.jobID)", "tenant": "\(stream.tenant)", "after_s": "\(Self.slowFollowerGraceSeconds)"])
            stream.followers.removeAll { $0 === f }
            // What is already queued for it cannot be taken back: the connection goes.
            f.channel.close(promise: nil)
        }
        if !dropped.isEmpty {
            runtimeCounters.slowFollowersDetached(stream.tenant, count: dropped.count)
            followersChanged(stream)
        } else {
            settle(stream)
        }
        armSlowCheck(stream)
    }

    /// A worker's socket drained (WorkerChannelHandler): its jobs' senders may be read again.
    func workerWritable(_ w: WorkerHandle) {
        for stream in streams.jobs.values where stream.tenant == w.tenant && !stream.pausedReaders.isEmpty { resumeReaders(stream) }
    }

    /// A client connection's writability changed (ClientHandler).
    func clientWritabilityChanged(_ channel: Channel) {
        guard channel.isWritable else { return }
        for stream in streams.jobs.values where stream.followers.contains(where: { $0.channel === channel }) {
            for f in stream.followers where f.channel === channel { f.fullSince = nil }
            settle(stream)
        }
    }

    /// A client connection closed: it follows nothing any more; its jobs keep running.
    func clientClosed(_ channel: Channel) {
        // Its waits go with it (JobWaiters.swift): nobody is left to hear them.
        waiters.drop(owner: ObjectIdentifier(channel))
        agentConnectionGone(ObjectIdentifier(channel))
        for stream in Array(streams.jobs.values) {
            stream.pausedReaders.removeAll { $0 === channel }
            guard stream.followers.contains(where: { $0.channel === channel }) else { continue }
            stream.followers.removeAll { $0.channel === channel }
            followersChanged(stream)
        }
    }

    // MARK: List

    private func listJobs(tenant: TenantName?, state: JobState?, limit: Int, _ r: Responder) throws {
        var tenants: [TenantName]? = nil
        if let tenant {
            try authorize(r, .submit(tenant: tenant), request: "job.list", tenant: tenant)
            tenants = [tenant]
        } else if !isOperator(r) {
            // Not an operator: the tenants it has a grant for, asked quietly (not a refusal).
            guard let cred = r.caller else {
                try authorize(r, .operator(command: "job list"), request: "job.list")
                return
            }
            let caller = callers.caller(cred)
            tenants = core.tenants.keys.sorted().filter { policies.access.decide(caller, .submit(tenant: $0)).allowed }
        }
        // `running` lives in memory; the store has such jobs as queued.
        var running: [String: JobRecord] = [:]
        for (name, t) in core.tenants where tenants?.contains(name) ?? true {
            for (id, job) in t.inFlight { running[id] = job }
        }
        var views: [JobView]
        switch state {
        case .running?:
            views = running.values.sorted { ($0.createdAt, $0.id) > ($1.createdAt, $1.id) }.prefix(limit).map(\.view)
        case .queued?:
            views = try store.jobs(tenants: tenants, states: [.queued], limit: limit, excluding: Set(running.keys)).map(\.view)
        default:
            views = try store.jobs(tenants: tenants, states: state.map { [$0] }, limit: limit).map { running[$0.id]?.view ?? $0.view }
        }
        let listed = views.map { v -> JSONValue in
            guard case .object(let pairs) = v.json else { return v.json }
            return .object(pairs.filter { !["stdout", "stderr", "stdout_b64", "stderr_b64"].contains($0.0) })
        }
        r.reply("jobs", [("jobs", .array(listed))])
    }

    private func isOperator(_ r: Responder) -> Bool {
        guard let cred = r.caller else { return false }
        return policies.access.decide(callers.caller(cred), .operator(command: "job list")).allowed
    }
}
