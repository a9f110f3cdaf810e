import CClawpenShim
import ClawpenCore
import ClawpenPolicy
import ClawpenWire
import Glibc
import NIOCore
import NIOPosix

/// Starting, reaping and cleaning up after workers; spare workers and network namespaces made
/// ahead of need. The core decides when (`spawnWorker`, `releaseCgroup`); this does it.
extension Supervisor {
    /// Starts a worker for `name` (the core's `spawnWorker`) and answers the core: spawned, or
    /// the start failed (and whatever it left is cleaned up).
    func startWorker(_ name: TenantName) {
        guard let t = core.tenants[name] else { return }
        metrics.workerStarted(name)
        var plan = Plan.make(
            tenant: name, uid: t.record.uid, workspace: workspacePath(name), limits: SandboxLimits(t.limits),
            enabled: sandboxEnabled, controllers: cgroups?.controllers ?? [],
            extras: PlanExtras(
                seccompProfile: t.limits.seccompProfile, seccompProgram: seccompPrograms[t.limits.seccompProfile] ?? [],
                jobSeccompProgram: jobSeccompGuard, cgroupNode: cgroups?.tenantPath(name) ?? "",
                jobLandlockABI: UInt32(HostEnforcement.landlockABI)))
        addEgressTrust(&plan, name)
        prepareAgentSocket(name)
        addAgentMounts(&plan, name)
        do { try diskQuotas.apply(tenant: name, projectID: t.record.uid, limits: t.limits) } catch {
            perform(
                core.workerStartFailed(
                    name, WorkerFailure(.start, stage: "disk quota: \(error.step)", errno: error.errno, errnoText: errnoString(error.errno), detail: error.path)
                ))
            return
        }
        let spawned: WorkerSpawner.Spawned
        let t0 = Clock.monotonic()
        var tCgroup = t0
        var fromSpare = false
        do {
            if let spare = takeSpare() {
                spawned = spare
                fromSpare = true
                if let node = spare.cgroupNode {
                    try cgroups?.adopt(spare: spare.pid, spareNode: node, tenant: name, owner: plan.enabled ? Int(plan.uid) : nil)
                }
            } else {
                let leaf = try cgroups?.leafForTenant(name, owner: plan.enabled ? Int(plan.uid) : nil) ?? -1
                defer { if leaf >= 0 { close(leaf) } }
                tCgroup = Clock.monotonic()
                let netns = sandboxEnabled ? netnsPool.take() : -1
                defer { if netns >= 0 { close(netns) } }
                spawned = try WorkerSpawner.spawn(
                    workerPath: workerPath, tenant: name, workspace: workspacePath(name),
                    sandboxed: sandboxEnabled, cgroupFD: leaf, netnsFD: netns)
            }
        } catch let e as StepFailure {
            perform(core.workerStartFailed(name, WorkerFailure(.start, e)))
            return
        } catch let e as CgroupError {
            perform(core.workerStartFailed(name, e.workerFailure))
            return
        } catch {
            perform(core.workerStartFailed(name, WorkerFailure(.start, stage: "spawn", detail: "\(error)")))
            return
        }
        let tSpawned = Clock.monotonic()
        var tPrepared = tSpawned
        if plan.enabled && !fromSpare && workerMountsFallback == nil {
            // While the new worker is being exec'd (the better part of a millisecond), the
            // supervisor builds its mount tree; the worker goes on from there.
            do {
                plan.mountsPrepared = try prepareMounts(plan, inNamespaceOf: spawned.pid)
                tPrepared = Clock.monotonic()
            } catch {
                discardStartingWorker(spawned, name, waitForExitMs: 0) { _ in WorkerFailure(.start, error) }
                return
            }
        }
        var enforced: Set<String> = []
        do {
            enforced = cgroups?.applyLimits(name, t.limits) ?? []
            try WorkerSpawner.sendConfigure(plan, to: spawned)
            // While the worker builds its sandbox (over a millisecond), its first job slot.
            if plan.enabled { cgroups?.prepareFirstJobSlot(name, owner: Int(plan.uid)) }
            // The pool's next network namespace, now rather than at the clone: making one takes
            // a core for most of a millisecond, which the mounts above and the worker's exec
            // needed more.
            refillNetns()
        } catch {
            // A worker that died at once (its exec failed, it crashed) fails here: say how it ended.
            // Its socket closes before it becomes a zombie, so a broken pipe can win the race
            // with its exit: give a dying worker up to 100 ms to be reaped before killing it.
            discardStartingWorker(spawned, name, waitForExitMs: 100) { exit in
                exit.map { WorkerFailure(.exited, stage: "exit", detail: "\($0) before its setup") }
                    ?? WorkerFailure(.start, error)
            }
            return
        }
        let ref = core.workerSpawned(name, pid: spawned.pid)
        attachEgress(name, workerPID: spawned.pid, workerID: ref.id)
        let w = WorkerHandle(ref: ref, tenant: name, startedAt: t0)
        w.startPhases = (cgroup: tCgroup - t0, spawn: tSpawned - tCgroup, mounts: tPrepared - tSpawned)
        w.cgroupEnforced = enforced
        w.socketFD = spawned.socketFD
        workers[ref.id] = w
        logger.info("worker started", metadata: ["tenant": "\(name)", "worker_pid": "\(spawned.pid)"])
        attachWorkerChannel(spawned.socketFD, w, outputCap: t.limits.outputMaxBytes) { [self] in
            perform(core.workerAttached(ref))
        } failed: { [self] error in
            kill(w.pid, SIGKILL)
            perform(core.workerSetupFailed(ref, WorkerFailure(.start, stage: "attach to the worker socket", detail: "\(error)")))
        }
    }

    /// Puts a worker's socket on the loop, framed and read by its WorkerChannelHandler (a
    /// worker just started, or one adopted from the previous supervisor). On failure the socket
    /// is closed, `failed` ends the worker, and its channel counts as closed.
    func attachWorkerChannel(
        _ fd: Int32, _ w: WorkerHandle, outputCap: Int, attached: @escaping () -> Void, failed: @escaping (any Error) -> Void
    ) {
        ClientBootstrap(group: loop)
            .channelOption(ChannelOptions.recvAllocator, value: Self.bulkReads)
            .channelInitializer { [self] channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(WorkerChannelHandler(supervisor: self, worker: w, outputCap: outputCap))
                }
            }
            .withConnectedSocket(fd)
            .whenComplete { [self] result in
                switch result {
                case .success(let channel):
                    if w.exited { channel.close(promise: nil); return }
                    w.channel = channel
                    attached()
                case .failure(let error):
                    close(fd)
                    failed(error)
                    workerChannelClosed(w)
                }
            }
    }

    func workspacePath(_ name: TenantName) -> String { config.workspaceRoot + "/" + name.value }

    /// A worker that will not serve, before the core knows it: reaped (after up to
    /// `waitForExitMs` for it to end by itself, else killed), its socket closed, its cgroup
    /// removed, and the start reported failed with `failure`, which learns how the worker ended
    /// if it ended by itself.
    private func discardStartingWorker(
        _ spawned: WorkerSpawner.Spawned, _ name: TenantName, waitForExitMs: Int,
        failure: (_ exitedBySelf: String?) -> WorkerFailure
    ) {
        var status: Int32 = 0
        var usage = rusage()
        var gone = false
        for attempt in 0...(waitForExitMs / 2) {
            if cp_wait4(spawned.pid, &status, WNOHANG, &usage) == spawned.pid { gone = true; break }
            if attempt < waitForExitMs / 2 { usleep(2_000) }
        }
        if !gone {
            kill(spawned.pid, SIGKILL)
            _ = cp_wait4(spawned.pid, &status, 0, &usage)
        }
        close(spawned.socketFD)
        cgroups.map { _ = $0.tryRemove(tenant: name) }
        perform(core.workerStartFailed(name, failure(gone ? Self.describe(waitStatus: status) : nil)))
    }

    /// Builds a new worker's mount tree (Mounts.prepareFromSupervisor) from
    /// inside its mount namespace, on this thread, which then returns to its own. false: the
    /// namespace could not be joined, and the worker builds everything itself (slower, as safe);
    /// a step that fails once inside is the worker's setup failing, and throws.
    private func prepareMounts(_ plan: SandboxPlan, inNamespaceOf pid: Int32) throws(StepFailure) -> Bool {
        let preparation = try Mounts.prepareFromSupervisor(plan, workerPID: pid)
        guard preparation == .prepared else {
            if case .cannotJoin(let e) = preparation, e == EPERM {
                workerMountsFallback =
                    "the supervisor may not join a worker's mount namespace (\(errnoString(e)); setns needs CAP_SYS_CHROOT and CAP_SYS_ADMIN), so each worker builds all its mounts itself"
                logger.warning(
                    "cannot join a worker's mount namespace; workers build all their mounts themselves (a slower cold start)",
                    metadata: ["errno": "\(errnoString(e))"])
            }
            return false
        }
        return true
    }

    /// Where a cold start's time went: the tenant cgroup, the clone to exec, the mounts the
    /// supervisor made meanwhile, then the rest of the worker's start and sandbox setup up to its
    /// ready frame.
    func logReady(_ w: WorkerHandle) {
        guard logger.logLevel <= .debug else { return }
        func ms(_ d: Double) -> String { "\((d * 10_000).rounded() / 10)" }
        let total = Clock.monotonic() - w.startedAt
        logger.debug(
            "worker ready",
            metadata: [
                "tenant": "\(w.tenant)", "worker_pid": "\(w.pid)", "setup_ms": "\(ms(total))",
                "cgroup_ms": "\(ms(w.startPhases.cgroup))", "clone_exec_ms": "\(ms(w.startPhases.spawn))",
                "mounts_ms": "\(ms(w.startPhases.mounts))",
                "worker_ms": "\(ms(total - w.startPhases.cgroup - w.startPhases.spawn - w.startPhases.mounts))",
            ])
    }

    // MARK: Reaping

    func reap(_ w: WorkerHandle, attempt: Int) {
        if w.adopted { return reapAdopted(w, attempt: attempt) }
        var status: Int32 = 0
        var usage = rusage()
        let r = cp_wait4(w.pid, &status, WNOHANG, &usage)
        if r == 0 {
            // Socket closed but the process lingers: give it 2 s, then SIGKILL.
            if attempt == 200 { kill(w.pid, SIGKILL) }
            loop.scheduleTask(in: .milliseconds(10)) { [self] in reap(w, attempt: attempt + 1) }
            return
        }
        workers[w.ref.id] = nil
        egressWorkerGone(w)
        freezeMethods[w.tenant] = nil
        let how =
            r < 0
            ? WorkerFailure(.exited, stage: "wait4", errno: errno, errnoText: errnoString(errno), detail: "could not be reaped")
            : WorkerFailure(.exited, stage: "exit", detail: Self.describe(waitStatus: status))
        perform(core.workerExited(w.ref, how: how))
    }

    /// How a process ended, in the words status and the logs use.
    static func describe(waitStatus status: Int32) -> String {
        cp_wifsignaled(status) != 0 ? "was killed by signal \(cp_wtermsig(status))" : "exited with status \(cp_wexitstatus(status))"
    }

    /// Kills what is left in the tenant's cgroup and removes it, then tells the core (a new
    /// worker for the tenant waits until it is gone: a late removal must not kill the next one).
    func removeCgroup(_ name: TenantName, attempt: Int = 0) {
        guard let cgroups else {
            perform(core.cgroupReleased(name))
            return
        }
        if cgroups.tryRemove(tenant: name) || attempt >= 300 {
            if attempt >= 300 { logger.error("tenant cgroup still populated after 3 s; leaving it", metadata: ["tenant": "\(name)"]) }
            perform(core.cgroupReleased(name))
            return
        }
        loop.scheduleTask(in: .milliseconds(10)) { [self] in removeCgroup(name, attempt: attempt + 1) }
    }

    // MARK: Spare workers

    var prespawnTarget: Int { config.prespawnWorkers ?? (cgroups == nil ? 2 : 0) }

    /// Spare workers (cloned ahead of need, namespaces made, runtime started) wait for a tenant's
    /// configure frame: a new tenant's first job skips the clone and exec (--prespawn).
    func refillSpares() {
        guard !core.draining, !refilling, spares.count < prespawnTarget else { return }
        refilling = true
        let path = workerPath, sandboxed = sandboxEnabled, cgroups = cgroups
        spawnThread.runIfActive(eventLoop: loop) { () throws -> WorkerSpawner.Spawned in
            // Cloned straight into a cgroup node of its own (no migration later).
            let leaf = try cgroups?.leafForSpare()
            defer { if let leaf { close(leaf.fd) } }
            var spare = try WorkerSpawner.spawn(workerPath: path, tenant: nil, workspace: nil, sandboxed: sandboxed, cgroupFD: leaf?.fd ?? -1)
            spare.cgroupNode = leaf?.node
            return spare
        }.whenComplete { [self] result in
            refilling = false
            switch result {
            case .success(let spare):
                spares.append(spare)
                if core.draining { killSpares() } else { refillSpares() }
            case .failure(let error):
                logger.error("cannot start a spare worker", metadata: ["error": "\(error)"])
            }
        }
    }

    /// Network namespaces made ahead of need by the spawn thread (NetnsPool).
    func refillNetns() {
        guard sandboxEnabled, !core.draining, !netnsRefilling, netnsPool.count < netnsPool.target else { return }
        netnsRefilling = true
        let pool = netnsPool
        spawnThread.runIfActive(eventLoop: loop) { pool.refill() }.whenComplete { [self] result in
            netnsRefilling = false
            if case .success(let e?) = result {
                logger.warning("cannot make network namespaces ahead of need; workers make their own", metadata: ["errno": "\(e)"])
            }
        }
    }

    /// Stops the spawning thread (at exit, after the spares are gone).
    func stopSpawnThread() {
        try? spawnThread.syncShutdownGracefully()
        netnsPool.drain()
    }

    /// A live spare, if there is one; the pool refills after this tick.
    private func takeSpare() -> WorkerSpawner.Spawned? {
        while let spare = spares.popLast() {
            var status: Int32 = 0
            var usage = rusage()
            if cp_wait4(spare.pid, &status, WNOHANG, &usage) == 0 {
                refillSpares()
                return spare
            }
            close(spare.socketFD) // it died while waiting
            if let node = spare.cgroupNode { cgroups?.removeSpare(node) }
        }
        return nil
    }

    func killSpares() {
        for spare in spares {
            kill(spare.pid, SIGKILL)
            var status: Int32 = 0
            var usage = rusage()
            _ = cp_wait4(spare.pid, &status, 0, &usage)
            close(spare.socketFD)
            if let node = spare.cgroupNode { cgroups?.removeSpare(node) }
        }
        spares.removeAll()
    }
}
