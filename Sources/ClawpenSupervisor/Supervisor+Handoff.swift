import CClawpenShim
import ClawpenCore
import ClawpenStore
import ClawpenSystemd
import ClawpenWire
import Glibc
import Logging
import NIOCore
import NIOPosix

/// Where a handoff stands (the stopping supervisor's side).
struct HandoffProgress {
    /// Workers asked to hand themselves over that have not answered.
    var pending: Set<UInt64> = []
    var timer: Scheduled<Void>?
    /// Tenants whose workers went to the store: their cgroups stay at exit.
    var handedOff: Set<TenantName> = []
    var finished = false
}

/// An upgrade without killing tenants (docs/reliability.md): on SIGTERM, with systemd's file
/// descriptor store, every ready worker is asked to stop at a frame boundary (`handoff`; it
/// answers `handoffReady` after everything it sent before, and holds what follows), its socket
/// and a pidfd go to the store, and it is forgotten here; the next supervisor takes them back
/// at start (`adoptHandedOff`), asks each worker what it runs (`adopt`), and adopts it or
/// stops it. The decisions are `Handoff`'s (ClawpenCore).
extension Supervisor {
    /// How long workers get to answer `handoff` before the rest of the shutdown goes on.
    static let handoffAnswerMs: Int64 = 3000

    /// SIGTERM with a file descriptor store: hand the workers over, then stop what is left as
    /// a shutdown does, then `completion`.
    func beginHandoff(_ completion: @escaping () -> Void) {
        loop.preconditionInEventLoop()
        guard !core.draining else { return }
        shutdownCompletion = completion
        let refs = core.beginHandoff()
        killSpares()
        let frame = SupervisorToWorker.handoff(version: WorkerProtocol.version).encoded()
        for ref in refs {
            guard let h = workers[ref.id], let channel = h.channel, h.socketFD >= 0, !h.exited else { continue }
            h.handoffAsked = true
            handoff.pending.insert(ref.id)
            channel.writeAndFlush(channel.allocator.frame(frame), promise: nil)
        }
        logger.notice("handing workers to the next supervisor", metadata: ["workers": "\(handoff.pending.count)"])
        guard !handoff.pending.isEmpty else { return finishHandoff() }
        handoff.timer = loop.scheduleTask(in: .milliseconds(Self.handoffAnswerMs)) { [self] in
            if !handoff.pending.isEmpty {
                logger.warning(
                    "workers did not answer the handoff in time; they stop as in a shutdown (their jobs run again at the next start)",
                    metadata: ["workers": "\(handoff.pending.count)"])
            }
            handoff.pending.removeAll()
            finishHandoff()
        }
    }

    /// The worker's `handoffReady`: nothing more comes from it to this supervisor. Its socket
    /// and pidfd go to the store; if they cannot, it stays and stops with the rest.
    func handoffReady(_ w: WorkerHandle) {
        guard w.handoffAsked, handoff.pending.remove(w.ref.id) != nil else {
            return workerMisbehaved(w, "said it was ready for a handoff it was not asked for")
        }
        w.handoffAsked = false
        let pidFD = w.pidFD >= 0 ? w.pidFD : cp_pidfd_open_pid(w.pid)
        let stored = FDStore.store(w.socketFD, name: Handoff.socketName(tenant: w.tenant, pid: w.pid))
        if stored && pidFD >= 0 { FDStore.store(pidFD, name: Handoff.pidfdName(tenant: w.tenant, pid: w.pid)) }
        if pidFD >= 0 && pidFD != w.pidFD { close(pidFD) } // the store keeps its own copy
        if stored {
            w.exited = true // its channel closes here; the worker goes on
            fileWorkerGone(w)
            agentWorkerGone(w)
            egressWorkerGone(w)
            workers[w.ref.id] = nil
            handoff.handedOff.insert(w.tenant)
            perform(core.workerHandedOff(w.ref))
            w.channel?.close(promise: nil)
        } else {
            logger.error(
                "cannot put the worker's socket in the file descriptor store; it stops as in a shutdown",
                metadata: ["tenant": "\(w.tenant)", "worker_pid": "\(w.pid)"])
        }
        if handoff.pending.isEmpty { finishHandoff() }
    }

    private func finishHandoff() {
        guard !handoff.finished else { return }
        handoff.finished = true
        handoff.timer?.cancel()
        handoff.timer = nil
        perform(core.finishHandoff())
    }

    // MARK: - The next supervisor

    /// At start, before recovery: decides for every worker the store passed back, adopts those
    /// it may (their running jobs stay running) and stops the rest. Returns the unfinished jobs
    /// that go back to the queue.
    func adoptHandedOff(_ answers: [(Handoff.Stored, Handoff.Answer)], unfinished: [JobRecord]) throws(StoreError) -> [JobRecord] {
        guard !answers.isEmpty else { return unfinished }
        let byID = Dictionary(unfinished.map { ($0.id, $0) }, uniquingKeysWith: { a, _ in a })
        var adoptedIDs: Set<String> = []
        for (stored, answer) in answers {
            FDStore.remove(name: Handoff.socketName(tenant: stored.tenant, pid: stored.pid))
            FDStore.remove(name: Handoff.pidfdName(tenant: stored.tenant, pid: stored.pid))
            let verdict = Handoff.decide(stored, answer: answer, tenantExists: core.tenants[stored.tenant] != nil, unfinished: byID)
            switch verdict {
            case .adopt(var jobs):
                guard case .answered(let state) = answer else { continue }
                // The restart did not run them again: the recovery's attempt count is undone.
                // Their run options (terminal, open stdin, streaming) live in the worker only.
                let options = Dictionary(state.jobs.map { ($0.jobID, $0.options) }, uniquingKeysWith: { a, _ in a })
                for i in jobs.indices {
                    jobs[i].attempt = max(0, jobs[i].attempt - 1)
                    if let o = options[jobs[i].id] { jobs[i].options = o }
                }
                adoptWorker(stored, state, jobs)
                for job in jobs { adoptedIDs.insert(job.id) }
            case .stop(let why):
                logger.warning(
                    "stopping a worker of the previous supervisor (its jobs run again)",
                    metadata: ["tenant": "\(stored.tenant)", "worker_pid": "\(stored.pid)", "reason": "\(why)"])
                WorkerAdoption.sendShutdown(stored.socketFD)
                close(stored.socketFD)
                if let p = stored.pidFD { close(p) }
            case .lost(let why):
                logger.warning(
                    "a worker of the previous supervisor did not come back (its jobs run again)",
                    metadata: ["tenant": "\(stored.tenant)", "worker_pid": "\(stored.pid)", "reason": "\(why)"])
                close(stored.socketFD)
                if let p = stored.pidFD { close(p) }
            }
        }
        try store.undoRecoveryAttempt(Array(adoptedIDs))
        if !adoptedIDs.isEmpty || !answers.isEmpty {
            logger.notice(
                "adopted the previous supervisor's workers",
                metadata: ["workers": "\(workers.count)", "offered": "\(answers.count)", "running_jobs": "\(adoptedIDs.count)"])
        }
        return Handoff.requeued(unfinished, adopted: adoptedIDs)
    }

    private func adoptWorker(_ stored: Handoff.Stored, _ state: AdoptedState, _ jobs: [JobRecord]) {
        guard let t = core.tenants[stored.tenant] else { return }
        let name = stored.tenant
        let ref = core.workerSpawned(name, pid: stored.pid)
        core.workerAdopted(ref, jobs: jobs)
        let w = WorkerHandle(ref: ref, tenant: name, startedAt: Clock.monotonic())
        w.adopted = true
        w.socketFD = stored.socketFD
        w.pidFD = stored.pidFD ?? cp_pidfd_open_pid(stored.pid)
        // The tenant's node is the one the previous supervisor made (the unit's cgroup is the
        // same): its limits as this supervisor's policies say.
        w.cgroupEnforced = cgroups?.applyLimits(name, t.limits) ?? []
        workers[ref.id] = w
        // The agent socket and the egress listener went with the previous supervisor: again.
        prepareAgentSocket(name)
        for job in state.jobs { agentJobStarted(job.jobID, slot: job.slot, w) }
        // Nobody follows a job across the handoff (the worker stopped sending its output): a
        // client that attaches again gets a replay, then the rest.
        for job in jobs where job.options.stream {
            let stream = JobStream(jobID: job.id, tenant: name, options: job.options)
            stream.watching = false
            stream.started = true
            streams.jobs[job.id] = stream
        }
        logger.info("worker adopted", metadata: ["tenant": "\(name)", "worker_pid": "\(stored.pid)", "jobs": "\(jobs.count)"])
        attachWorkerChannel(stored.socketFD, w, outputCap: t.limits.outputMaxBytes) { [self] in
            perform(core.workerAttached(ref))
            perform(core.workerReady(ref))
        } failed: { [self] error in
            _ = cp_pidfd_kill(w.pidFD, SIGKILL)
            logger.error("cannot attach to an adopted worker's socket", metadata: ["tenant": "\(name)", "error": "\(error)"])
        }
    }

    /// The egress proxy starts after the recovery: the adopted workers' listeners (in their
    /// network namespaces) are made once it runs.
    func attachEgressToAdopted() {
        for w in workers.values where w.adopted && !w.exited { attachEgress(w.tenant, workerPID: w.pid, workerID: w.ref.id) }
    }

    /// An adopted worker's socket closed: it is not this process's child (wait4 cannot reap
    /// it; its new parent does), so its pidfd says when it is gone.
    func reapAdopted(_ w: WorkerHandle, attempt: Int) {
        var pfd = pollfd(fd: w.pidFD, events: Int16(POLLIN), revents: 0)
        let gone = w.pidFD < 0 || poll(&pfd, 1, 0) != 0
        if !gone {
            if attempt == 200 { _ = cp_pidfd_kill(w.pidFD, SIGKILL) }
            loop.scheduleTask(in: .milliseconds(10)) { [self] in reapAdopted(w, attempt: attempt + 1) }
            return
        }
        if w.pidFD >= 0 { close(w.pidFD); w.pidFD = -1 }
        workers[w.ref.id] = nil
        egressWorkerGone(w)
        freezeMethods[w.tenant] = nil
        let how = WorkerFailure(.exited, stage: "exit", detail: "exited (adopted at an upgrade: its exit status went to its new parent)")
        perform(core.workerExited(w.ref, how: how))
    }
}

/// The next supervisor's first words with a worker it got back from the store: blocking, at
/// start, before the event loop serves anything. It reads exactly one frame, so that whatever
/// the worker sends after its answer (the reports it held) stays in the socket for the loop.
enum WorkerAdoption {
    /// Asks every stored worker `adopt` and reads its answer, all within `timeoutMs` together.
    static func ask(_ stored: [Handoff.Stored], timeoutMs: Int = 2000) -> [(Handoff.Stored, Handoff.Answer)] {
        let deadline = Clock.monotonic() + Double(timeoutMs) / 1000
        let frame = Framing.frame(SupervisorToWorker.adopt(version: WorkerProtocol.version).encoded())
        return stored.map { s in
            if let p = s.pidFD, cp_pidfd_alive(p) == 0 { return (s, .none("the process had exited")) }
            guard writeAll(s.socketFD, frame, deadline: deadline) else { return (s, .none("cannot write to its socket: \(errnoString(errno))")) }
            var answer = readAnswer(s.socketFD, deadline: deadline)
            // A sandboxed worker knows itself by its pid in its own pid namespace (1): the
            // answer counts as the stored pid's when that is the stored process's innermost pid.
            if case .answered(var state) = answer, state.pid != s.pid, let inner = innermostPID(s.pid), inner == state.pid {
                state.pid = s.pid
                answer = .answered(state)
            }
            return (s, answer)
        }
    }

    /// The last `NSpid:` entry of the process: its pid in its own (innermost) pid namespace.
    static func innermostPID(_ pid: Int32) -> Int32? {
        guard let status = Files.readSmallFile("/proc/\(pid)/status"),
            let line = status.split(separator: "\n").first(where: { $0.hasPrefix("NSpid:") })
        else { return nil }
        return line.split(whereSeparator: { $0 == " " || $0 == "\t" }).last.flatMap { Int32($0) }
    }

    /// `shutdown` to a worker that is not adopted (its jobs die with it; they run again).
    static func sendShutdown(_ fd: Int32) {
        _ = writeAll(fd, Framing.frame(SupervisorToWorker.shutdown.encoded()), deadline: Clock.monotonic() + 0.5)
    }

    private static func wait(_ fd: Int32, _ events: Int32, deadline: Double) -> Bool {
        while true {
            let left = Int32(max(0, (deadline - Clock.monotonic()) * 1000))
            var pfd = pollfd(fd: fd, events: Int16(events), revents: 0)
            let n = poll(&pfd, 1, left)
            if n > 0 { return true }
            if n == 0 { errno = ETIMEDOUT; return false }
            if errno != EINTR { return false }
        }
    }

    private static func writeAll(_ fd: Int32, _ bytes: [UInt8], deadline: Double) -> Bool {
        var offset = 0
        while offset < bytes.count {
            let n = bytes[offset...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL) | Int32(MSG_DONTWAIT)) }
            if n > 0 { offset += n; continue }
            if n < 0 && errno == EINTR { continue }
            if n < 0 && errno == EAGAIN { guard wait(fd, POLLOUT, deadline: deadline) else { return false }; continue }
            return false
        }
        return true
    }

    /// Exactly `count` bytes, or nil (EOF, an error, the deadline).
    private static func readExactly(_ fd: Int32, _ count: Int, deadline: Double) -> [UInt8]? {
        var out = [UInt8](repeating: 0, count: count)
        var got = 0
        while got < count {
            let n = out[got...].withUnsafeMutableBytes { Glibc.recv(fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
            if n > 0 { got += n; continue }
            if n == 0 { errno = EPIPE; return nil }
            if errno == EINTR { continue }
            if errno == EAGAIN { guard wait(fd, POLLIN, deadline: deadline) else { return nil }; continue }
            return nil
        }
        return out
    }

    private static func readAnswer(_ fd: Int32, deadline: Double) -> Handoff.Answer {
        guard let header = readExactly(fd, Framing.headerSize, deadline: deadline) else {
            return .none(errno == EPIPE ? "its socket closed (it had exited)" : "no answer: \(errnoString(errno))")
        }
        let length = Framing.readLength(header)
        // An answer lists the running jobs: far below 1 MiB.
        guard length <= 1 << 20 else { return .none("an answer of \(length) bytes") }
        guard let payload = readExactly(fd, length, deadline: deadline) else { return .none("a partial answer: \(errnoString(errno))") }
        guard case .adopted(let state)? = try? WorkerToSupervisor.decode(payload, outputCap: 0) else {
            return .none("its answer was not an adoption answer (an older worker?)")
        }
        return .answered(state)
    }
}
