import CClawpenShim
import ClawpenSandbox
import ClawpenSpawn
import ClawpenSystem
import ClawpenWire
import Glibc

/// Resolves and starts one job process: the worker-side half of the spawn path. The child side
/// is C (cp_spawn); everything here happens before the clone.
struct JobLauncher {
    /// Host path that `/` of the job maps to. Empty once the worker runs in its own root
    /// (sandboxed); the workspace path while it shares the host's root.
    let rootPrefix: String
    let devNullFD: Int32
    /// Limits of each job on top of the worker's (RLIMIT_AS as the memory fallback).
    let jobLimits: [SandboxPlan.Limit]
    /// The slots below the tenant's cgroup node that jobs are cloned into (none: parent -1).
    var jobCgroups = JobCgroups(parentFD: -1)
    /// Each job installs this seccomp program on top of the worker's (see SandboxPlan).
    var jobSeccompProgram: [UInt8] = []
    /// > 0: each job enters a Landlock domain of its own made from this ruleset (JobIsolation).
    var landlockRulesetFD: Int32 = 0

    struct Started {
        let pid: Int32
        let stdoutFD: Int32
        let stderrFD: Int32
        let stdinFD: Int32? // write end, non-blocking; nil when there is no input
        let cgroup: JobCgroup?
    }

    enum Failure: Error {
        case notFound(command: String, searched: String)
        case spawn(step: String, errno: Int32)
    }

    /// Host path for a path as the job sees it. `..` components are dropped so that the mapping
    /// cannot climb out of the prefix.
    func hostPath(_ jobPath: String) -> String {
        var parts: [Substring] = []
        for part in jobPath.split(separator: "/") where part != "." && !part.isEmpty {
            if part == ".." { _ = parts.popLast() } else { parts.append(part) }
        }
        return rootPrefix + "/" + parts.joined(separator: "/")
    }

    /// The job's environment: a fixed base (nothing of the daemon's or the worker's own), then
    /// what the request sets, which wins over the base.
    func environment(tenant: String, requested: [String]) -> [String] {
        var env = [
            "PATH=/usr/local/bin:/usr/bin:/bin",
            "HOME=" + hostPath("/home"),
            "TMPDIR=" + hostPath("/tmp"),
            "USER=" + tenant,
            "LOGNAME=" + tenant,
            "LANG=C.UTF-8",
        ]
        for kv in requested {
            let name = kv.prefix { $0 != "=" }
            env.removeAll { $0.hasPrefix(name + "=") }
            env.append(kv)
        }
        return env
    }

    /// `argv[0]` without a slash is looked up in the job's PATH, as a shell would.
    func resolve(_ command: String, env: [String]) throws(Failure) -> String {
        if command.contains("/") { return command }
        let path = env.last(where: { $0.hasPrefix("PATH=") }).map { String($0.dropFirst(5)) } ?? "/usr/bin:/bin"
        for dir in path.split(separator: ":") where dir.hasPrefix("/") {
            let candidate = "\(dir)/\(command)"
            var st = stat()
            if stat(candidate, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG, access(candidate, X_OK) == 0 {
                return candidate
            }
        }
        throw .notFound(command: command, searched: path)
    }

    func launch(_ request: RunRequest, tenant: String) throws(Failure) -> Started {
        var env = environment(tenant: tenant, requested: request.env)
        if request.options.tty && !env.contains(where: { $0.hasPrefix("TERM=") }) { env.append("TERM=xterm-256color") }
        let path = try resolve(request.argv[0], env: env)
        if request.options.tty { return try launchOnTerminal(request, path: path, env: env) }
        var out: [Int32] = [-1, -1], err: [Int32] = [-1, -1], input: [Int32] = [-1, -1]
        guard cp_pipe(&out, 1) == 0 else { throw .spawn(step: "pipe", errno: errno) }
        guard cp_pipe(&err, 1) == 0 else {
            let e = errno; close(out[0]); close(out[1]); throw .spawn(step: "pipe", errno: e)
        }
        let hasInput = !request.stdin.isEmpty || request.options.stdinOpen
        if hasInput {
            guard cp_pipe(&input, 0) == 0 else {
                let e = errno; [out[0], out[1], err[0], err[1]].forEach { close($0) }
                throw .spawn(step: "pipe", errno: e)
            }
            _ = cp_set_nonblocking(input[1], 1)
        }
        let cgroup = jobCgroups.make()
        let spawned = spawn(path, request, env: env, fds: [hasInput ? input[0] : devNullFD, out[1], err[1]], cgroup: cgroup, tty: false)
        close(out[1]); close(err[1])
        if hasInput { close(input[0]) }
        let pid: pid_t
        switch spawned {
        case .success(let p): pid = p
        case .failure(let failure):
            close(out[0]); close(err[0])
            if hasInput { close(input[1]) }
            if let cgroup { _ = jobCgroups.release(cgroup) }
            throw .spawn(step: failure.step, errno: failure.errno)
        }
        return Started(pid: pid, stdoutFD: out[0], stderrFD: err[0], stdinFD: hasInput ? input[1] : nil, cgroup: cgroup)
    }

    /// A job on a pseudo-terminal made here, inside the sandbox: the slave is its stdin, stdout
    /// and stderr and its controlling terminal; the worker keeps the master (one stream, stdout)
    /// and a second descriptor of it for input, so that reads and writes are polled apart.
    private func launchOnTerminal(_ request: RunRequest, path: String, env: [String]) throws(Failure) -> Started {
        var master: Int32 = -1, slave: Int32 = -1
        guard cp_pty_open(&master, &slave, request.options.rows, request.options.cols) == 0 else {
            throw .spawn(step: "open a terminal (/dev/ptmx)", errno: errno)
        }
        var input: Int32? = nil
        if request.options.stdinOpen || !request.stdin.isEmpty {
            let d = fcntl(master, F_DUPFD_CLOEXEC, 3)
            guard d >= 0 else { let e = errno; close(master); close(slave); throw .spawn(step: "dup terminal", errno: e) }
            input = d
        }
        let cgroup = jobCgroups.make()
        let spawned = spawn(path, request, env: env, fds: [slave, slave, slave], cgroup: cgroup, tty: true)
        close(slave)
        switch spawned {
        case .success(let pid):
            return Started(pid: pid, stdoutFD: master, stderrFD: -1, stdinFD: input, cgroup: cgroup)
        case .failure(let failure):
            close(master)
            if let input { close(input) }
            if let cgroup { _ = jobCgroups.release(cgroup) }
            throw .spawn(step: failure.step, errno: failure.errno)
        }
    }

    private func spawn(_ path: String, _ request: RunRequest, env: [String], fds: [Int32], cgroup: JobCgroup?, tty: Bool) -> Result<pid_t, StepFailure> {
        var options = SpawnOptions(fds: fds)
        options.controllingTTY = tty
        options.cwd = hostPath(request.cwd)
        // Own session and process group: a timeout or cancel kills the whole group.
        options.newSession = true
        options.parentDeathSignal = SIGKILL
        // Second line of defence, whatever the sandbox adds: no core dumps.
        options.rlimits = [(Int32(RLIMIT_CORE.rawValue), 0, 0)] + jobLimits.map { ($0.resource, $0.soft, $0.hard) }
        options.seccompProgram = jobSeccompProgram
        options.landlockRulesetFD = landlockRulesetFD
        // The OOM killer of the tenant's cgroup picks the job, not the worker that serves it.
        options.oomScoreAdj = 1000
        // The worker installs no signal handlers (SIGCHLD comes through a signalfd) and ignores
        // only SIGPIPE: that is all the job must not inherit.
        options.resetOnlySignals = [SIGPIPE]
        options.cgroupFD = cgroup?.dirFD ?? -1
        do { return .success(try SpawnCommand(path: path, arguments: request.argv, environment: env).spawn(options)) } catch {
            return .failure(error)
        }
    }
}
