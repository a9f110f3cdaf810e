import ClawpenProtocol
import ClawpenStore
import ClawpenWire

/// An upgrade without killing tenants (docs/reliability.md, "Upgrade without killing tenants"):
/// the pure decisions. The stopping supervisor hands each ready worker's socket (and a pidfd of
/// it) to systemd's file descriptor store; the next one gets them back at start, asks each
/// worker who it is and what it runs, and adopts it or stops it.
public enum Handoff {
    /// The names the descriptors carry in the store (FDNAME=, at most 255 characters of
    /// printable ASCII without ':'): `worker.<pid>.<tenant>` for the socket,
    /// `pidfd.<pid>.<tenant>` for the pidfd. A tenant name is `[a-z0-9][a-z0-9_-]{0,62}`.
    public static func socketName(tenant: TenantName, pid: Int32) -> String { "worker.\(pid).\(tenant.value)" }
    public static func pidfdName(tenant: TenantName, pid: Int32) -> String { "pidfd.\(pid).\(tenant.value)" }

    /// One worker's descriptors, as systemd passed them back.
    public struct Stored: Equatable, Sendable {
        public var tenant: TenantName
        public var pid: Int32
        public var socketFD: Int32
        /// nil: the store had no pidfd for it (the successor opens one by pid, after the
        /// worker has answered from that pid).
        public var pidFD: Int32?
    }

    /// What the passed descriptors are.
    public struct Passed: Equatable, Sendable {
        /// The first descriptor that is not a worker's (clawpen.socket's listener), if any.
        public var listener: Int32?
        public var workers: [Stored] = []
        /// Descriptors to close: more listeners, a pidfd without its socket, a name that does
        /// not parse, a second socket for one pid. Each with its name, for the log and for
        /// FDSTOREREMOVE.
        public var strays: [(name: String, fd: Int32)] = []

        public static func == (a: Passed, b: Passed) -> Bool {
            a.listener == b.listener && a.workers == b.workers && a.strays.map(\.name) == b.strays.map(\.name)
                && a.strays.map(\.fd) == b.strays.map(\.fd)
        }
    }

    /// Sorts what sd_listen_fds_with_names passed: the listener, the workers' pairs, the rest.
    public static func classify(_ passed: [(name: String, fd: Int32)]) -> Passed {
        var out = Passed()
        var sockets: [Int32: (TenantName, Int32, String)] = [:] // by pid
        var pidfds: [Int32: (TenantName, Int32, String)] = [:]
        var order: [Int32] = []
        for (name, fd) in passed {
            let kind: Substring
            if name.hasPrefix("worker.") {
                kind = "worker"
            } else if name.hasPrefix("pidfd.") {
                kind = "pidfd"
            } else {
                if out.listener == nil { out.listener = fd } else { out.strays.append((name, fd)) }
                continue
            }
            let parts = name.split(separator: ".", maxSplits: 2, omittingEmptySubsequences: false)
            guard parts.count == 3, let pid = Int32(parts[1]), pid > 1, let tenant = try? TenantName(validating: String(parts[2])) else {
                out.strays.append((name, fd))
                continue
            }
            if kind == "worker" {
                if sockets[pid] != nil { out.strays.append((name, fd)); continue }
                sockets[pid] = (tenant, fd, name)
                order.append(pid)
            } else {
                if pidfds[pid] != nil { out.strays.append((name, fd)); continue }
                pidfds[pid] = (tenant, fd, name)
            }
        }
        for pid in order {
            guard let (tenant, fd, _) = sockets[pid] else { continue }
            var pidFD: Int32? = nil
            if let p = pidfds.removeValue(forKey: pid) {
                if p.0 == tenant { pidFD = p.1 } else { out.strays.append((p.2, p.1)) }
            }
            out.workers.append(Stored(tenant: tenant, pid: pid, socketFD: fd, pidFD: pidFD))
        }
        for (_, p) in pidfds.sorted(by: { $0.key < $1.key }) { out.strays.append((p.2, p.1)) }
        return out
    }

    /// What the successor does with one stored worker.
    public enum Verdict: Equatable, Sendable {
        /// Adopt it with these jobs (records from the store, in the order the worker listed).
        case adopt([JobRecord])
        /// Stop it (`shutdown`, which kills its jobs): they run again from the queue. `why` goes
        /// to the log.
        case stop(why: String)
        /// It is gone or did not answer: nothing to stop; its jobs run again from the queue.
        case lost(why: String)
    }

    /// How the worker answered `adopt`.
    public enum Answer: Equatable, Sendable {
        case answered(AdoptedState)
        /// No answer: EOF, an error, a timeout, or a frame that is not `adopted`.
        case none(String)
    }

    /// Decides for one stored worker. `unfinished`: the store's unfinished jobs by id (a job is
    /// `queued` in the store until its result is recorded). A worker is adopted only when it
    /// speaks a protocol version this supervisor can adopt, is who its name says (pid and
    /// tenant), its tenant still exists, and every job it runs is one the store still waits
    /// for; anything else is stopped, never half adopted.
    public static func decide(
        _ stored: Stored, answer: Answer, tenantExists: Bool, unfinished: [String: JobRecord],
        adoptable: ClosedRange<UInt32> = WorkerProtocol.adoptable
    ) -> Verdict {
        guard case .answered(let state) = answer else {
            if case .none(let why) = answer { return .lost(why: why) }
            return .lost(why: "no answer")
        }
        guard adoptable.contains(state.version) else {
            return .stop(
                why:
                    "it speaks worker protocol \(state.version), this supervisor adopts \(adoptable.lowerBound)...\(adoptable.upperBound)")
        }
        guard state.pid == stored.pid else { return .stop(why: "it answered as pid \(state.pid), stored as pid \(stored.pid)") }
        guard state.tenant == stored.tenant.value else {
            return .stop(why: "it answered for tenant \(state.tenant.prefix(64)), stored for \(stored.tenant)")
        }
        guard tenantExists else { return .stop(why: "tenant \(stored.tenant) no longer exists") }
        var jobs: [JobRecord] = []
        var seen: Set<String> = []
        for job in state.jobs {
            guard seen.insert(job.jobID).inserted else { return .stop(why: "it listed job \(job.jobID.prefix(64)) twice") }
            guard let record = unfinished[job.jobID], record.tenant == stored.tenant else {
                return .stop(why: "it runs job \(job.jobID.prefix(64)), which the store does not have unfinished for \(stored.tenant)")
            }
            jobs.append(record)
        }
        return .adopt(jobs)
    }

    /// Of the jobs the store had unfinished, those that go back to the queue: all but the
    /// adopted workers' running ones.
    public static func requeued(_ unfinished: [JobRecord], adopted: Set<String>) -> [JobRecord] {
        unfinished.filter { !adopted.contains($0.id) }
    }
}

extension Core {
    /// The stopping supervisor hands workers over: nothing is dispatched from now on (as in a
    /// shutdown), but no worker is stopped yet. Returns the workers to hand over: ready ones of
    /// tenants that are not suspended (a frozen worker cannot answer; it stops as ever).
    public func beginHandoff() -> [WorkerRef] {
        guard !draining else { return [] }
        draining = true
        var out: [WorkerRef] = []
        for t in tenants.values.sorted(by: { $0.name.value < $1.name.value }) {
            guard t.lifecycle.suspension == nil, case .ready(let w, _) = t.lifecycle.phase, !t.hasFileOps else { continue }
            out.append(w)
        }
        return out
    }

    /// The worker said `handoffReady` and its descriptors are in the store: it is the next
    /// supervisor's now. Its jobs are forgotten here without a result (they stay unfinished in
    /// the store, for the successor), and its cgroup stays.
    public func workerHandedOff(_ w: WorkerRef) -> [Action] {
        guard let t = tenant(of: w) else { return [] }
        workerTenants[w.id] = nil
        if let id = t.idleTimerFor { out.append(.cancel(.idle(t.name, worker: id))); t.idleTimerFor = nil }
        out.append(.cancel(.stopDeadline(t.name, worker: w.id)))
        let ids = Array(t.inFlight.keys)
        t.inFlight.removeAll()
        releaseRunSlots(t, ids)
        t.cancelReasons.removeAll()
        t.cancelRequested.removeAll()
        t.lifecycle.handedOff(w)
        out.append(
            .log(LogLine(.notice, "worker handed to the next supervisor", [("tenant", t.name.value), ("worker_pid", "\(w.pid)"), ("jobs", "\(ids.count)")])))
        return take()
    }

    /// Every handoff answered (or timed out): the rest shuts down as ever (running jobs get
    /// the grace period, then every worker left is stopped).
    public func finishHandoff() -> [Action] {
        draining = true
        for t in tenants.values { failWaitingFileOps(t, ProtocolError(.unavailable, "the daemon is shutting down")) }
        let running = tenants.values.reduce(0) { $0 + $1.runningCount }
        out.append(.log(LogLine(.notice, "shutting down", [("running", "\(running)"), ("grace_ms", "\(config.shutdownGraceMs)")])))
        out.append(.arm(.shutdownGrace, afterMs: config.shutdownGraceMs))
        checkDrained()
        return take()
    }

    /// The successor adopts a worker (made with `workerSpawned`, before it is attached): its
    /// running jobs are in flight on it again, holding their run slots; none is queued again.
    public func workerAdopted(_ w: WorkerRef, jobs: [JobRecord]) {
        guard let t = tenant(of: w) else { return }
        let now = clock.wall()
        for var job in jobs {
            job.state = .running
            job.startedAt = job.startedAt ?? now
            t.inFlight[job.id] = job
            router.reacquired()
        }
    }
}
