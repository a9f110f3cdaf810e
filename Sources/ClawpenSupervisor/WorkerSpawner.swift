import CClawpenShim
import ClawpenSpawn
import ClawpenWire
import Glibc

/// Starts one clawpen-worker for a tenant, connected by a socketpair (its end becomes fd 3).
/// The clone and everything up to exec happen in C (cp_spawn): the supervisor is multithreaded.
enum WorkerSpawner {
    struct Spawned: Sendable {
        let pid: Int32
        let socketFD: Int32
        /// A spare's own cgroup node (renamed to the tenant's when it is taken).
        var cgroupNode: String? = nil
    }

    /// A failure to start names the step as "start the worker: <step>".
    static func failure(_ step: String, _ e: Int32) -> StepFailure { StepFailure(step: "start the worker: " + step, errno: e) }

    /// Clones the worker (into the sandbox's namespaces when the plan is enabled). It waits for
    /// its configure frame (`sendConfigure`) before it does anything, so the supervisor can place
    /// it in its cgroup first.
    /// `tenant` nil: a spare, cloned ahead of need (`sandboxed`: into the sandbox's namespaces).
    /// `cgroupFD`: the cgroup leaf to clone it into (CLONE_INTO_CGROUP), or -1.
    /// `netnsFD`: a fresh network namespace (NetnsPool) the worker joins instead of making one.
    static func spawn(
        workerPath: String, tenant: TenantName?, workspace: String?, sandboxed: Bool, cgroupFD: Int32 = -1,
        netnsFD: Int32 = -1
    ) throws(StepFailure) -> Spawned {
        var pair: [Int32] = [-1, -1]
        guard cp_socketpair(&pair) == 0 else { throw failure("socketpair", errno) }
        let devNull = open("/dev/null", O_RDWR | O_CLOEXEC)
        guard devNull >= 0 else {
            let e = errno; close(pair[0]); close(pair[1]); throw failure("open /dev/null", e)
        }
        defer { close(devNull) }
        // The worker gets a fixed, minimal environment: nothing of the daemon's leaks to tenants.
        var arguments = [workerPath, "--fd", "3"] + (sandboxed ? ["--netns"] : [])
        if let tenant, let workspace { arguments += ["--tenant", tenant.value, "--root", workspace] }
        let command = SpawnCommand(
            path: workerPath, arguments: arguments,
            // SWIFT_BACKTRACE: the runtime's crash backtracer cannot run in the sandbox (it execs
            // a helper), and looking for it costs a dozen stat calls per worker start.
            environment: ["PATH=/usr/local/bin:/usr/bin:/bin", "LANG=C.UTF-8", "SWIFT_BACKTRACE=enable=no"])
        // Worker diagnostics go where the daemon's go (journald); its socket becomes fd 3.
        var options = SpawnOptions(fds: [devNull, 2, 2, pair[1]])
        options.newSession = true
        options.parentDeathSignal = SIGKILL
        options.umask = 0o077
        if sandboxed {
            options.cloneFlags = netnsFD >= 0 ? cp_sandbox_clone_flags_without_net() : cp_sandbox_clone_flags()
            options.netnsFD = netnsFD
        }
        options.cgroupFD = cgroupFD
        let spawned: Result<pid_t, StepFailure>
        do { spawned = .success(try command.spawn(options)) } catch { spawned = .failure(error) }
        close(pair[1])
        switch spawned {
        case .success(let pid):
            return Spawned(pid: pid, socketFD: pair[0])
        case .failure(let spawnFailure):
            close(pair[0])
            throw failure(spawnFailure.step, spawnFailure.errno)
        }
    }

    /// The plan as the worker's first frame. The socketpair is fresh and empty: the small frame
    /// fits its buffer, so this blocking write does not block.
    static func sendConfigure(_ plan: SandboxPlan, to spawned: Spawned) throws(StepFailure) {
        let frame = Framing.frame(SupervisorToWorker.configure(plan).encoded())
        let written = frame.withUnsafeBytes { write(spawned.socketFD, $0.baseAddress, $0.count) }
        guard written == frame.count else { throw failure("send configure", written < 0 ? errno : EMSGSIZE) }
    }
}
