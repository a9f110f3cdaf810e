import CClawpenShim
import ClawpenSpawn
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
    /// The tenant's cgroup node (an fd opened before the sandbox hid the host): each job is
    /// cloned into a `job-<id>` child of it. -1: no job cgroups.
    var jobCgroupParent: Int32 = -1
    /// Each job installs this seccomp program on top of the worker's (see SandboxPlan).
    var jobSeccompProgram: [UInt8] = []
    /// > 0: each job enters a Landlock domain of its own made from this ruleset (JobIsolation).
    var landlockRulesetFD: Int32 = 0

    struct Started {
        let pid: Int32
        let stdoutFD: Int32
        let stderrFD: Int32
        let stdinFD: Int32?   // write end, non-blocking; nil when there is no input
        let cgroup: JobCgroup?
    }

    /// Job cgroups are slots, `job-<n>`, one per running job, reused: creating and destroying a
    /// cgroup per job cost ~0.2 ms (a fifth of a warm job). A slot keeps its directory and its
    /// `cgroup.events` and `cgroup.procs` open, so that a job costs two reads of them, not
    /// opens. It comes back once its job has ended and nothing is left in it.
    private final class Slots {
        var free: [JobCgroup] = []
        var next = 0
    }
    private let slots = Slots()

    /// A free job cgroup below the tenant's node; nil when there are no job cgroups or none can
    /// be made (the job then runs in the worker's cgroup; its process group is still killed).
    func makeJobCgroup(_ jobID: String) -> JobCgroup? {
        guard jobCgroupParent >= 0 else { return nil }
        if let slot = slots.free.popLast() { return slot }
        slots.next += 1
        let name = "job-\(slots.next)"
        let made = mkdirat(jobCgroupParent, name, 0o755) == 0
        guard made || errno == EEXIST else { return nil }
        let dir = openat(jobCgroupParent, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        guard dir >= 0 else { return nil }
        if !made {
            // A slot the supervisor made ahead (job-1) is usable once it has been handed to us;
            // one caught half-made is passed over (cloning into it would fail with EACCES).
            var st = stat()
            guard fstatat(dir, "cgroup.procs", &st, 0) == 0, st.st_uid == getuid() || getuid() == 0 else {
                close(dir)
                return slots.next < 64 ? makeJobCgroup(jobID) : nil
            }
        }
        let events = openat(dir, "cgroup.events", O_RDONLY | O_CLOEXEC)
        let procs = openat(dir, "cgroup.procs", O_RDONLY | O_CLOEXEC)
        guard events >= 0, procs >= 0 else {
            close(dir); if events >= 0 { close(events) }; if procs >= 0 { close(procs) }
            return nil
        }
        return JobCgroup(name: name, dirFD: dir, eventsFD: events, procsFD: procs)
    }

    /// Kills every process of a job's cgroup, however it left the job's process group: SIGKILL
    /// to each pid in its `cgroup.procs` (this worker shares their pid namespace). Not
    /// `cgroup.kill`: on this kernel a cgroup that was once killed that way kills every process
    /// later cloned into it (CLONE_INTO_CGROUP), which would end slot reuse.
    func killJobCgroup(_ cgroup: JobCgroup) {
        guard cgroup.populated else { return }
        var text: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 4096)
        var offset: off_t = 0
        while true {
            let n = buf.withUnsafeMutableBytes { pread(cgroup.procsFD, $0.baseAddress, $0.count, offset) }
            guard n > 0 else { break }
            text.append(contentsOf: buf[0..<n])
            offset += off_t(n)
        }
        for line in text.split(separator: 0x0A) {
            if let pid = Int32(String(decoding: line, as: UTF8.self)), pid > 1 { kill(pid, SIGKILL) }
        }
    }

    /// Returns a job's slot to the pool once nothing is left in it (`cgroup.events`:
    /// populated 0); false while processes are still dying.
    func releaseJobCgroup(_ cgroup: JobCgroup) -> Bool {
        guard !cgroup.populated else {
            killJobCgroup(cgroup) // something survived (a fork racing the kill): again
            return false
        }
        slots.free.append(cgroup)
        return true
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
        let env = environment(tenant: tenant, requested: request.env)
        let path = try resolve(request.argv[0], env: env)
        var out: [Int32] = [-1, -1], err: [Int32] = [-1, -1], input: [Int32] = [-1, -1]
        guard cp_pipe(&out, 1) == 0 else { throw .spawn(step: "pipe", errno: errno) }
        guard cp_pipe(&err, 1) == 0 else {
            let e = errno; close(out[0]); close(out[1]); throw .spawn(step: "pipe", errno: e)
        }
        let hasInput = !request.stdin.isEmpty
        if hasInput {
            guard cp_pipe(&input, 0) == 0 else {
                let e = errno; [out[0], out[1], err[0], err[1]].forEach { close($0) }
                throw .spawn(step: "pipe", errno: e)
            }
            _ = cp_set_nonblocking(input[1], 1)
        }
        var options = SpawnOptions(fds: [hasInput ? input[0] : devNullFD, out[1], err[1]])
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
        let cgroup = makeJobCgroup(request.jobID)
        options.cgroupFD = cgroup?.dirFD ?? -1
        let spawned: Result<pid_t, SpawnFailure>
        do { spawned = .success(try SpawnCommand(path: path, arguments: request.argv, environment: env).spawn(options)) } catch {
            spawned = .failure(error)
        }
        close(out[1]); close(err[1])
        if hasInput { close(input[0]) }
        let pid: pid_t
        switch spawned {
        case .success(let p): pid = p
        case .failure(let failure):
            close(out[0]); close(err[0])
            if hasInput { close(input[1]) }
            if let cgroup { _ = releaseJobCgroup(cgroup) }
            throw .spawn(step: failure.step, errno: failure.errno)
        }
        return Started(pid: pid, stdoutFD: out[0], stderrFD: err[0], stdinFD: hasInput ? input[1] : nil, cgroup: cgroup)
    }
}

/// One job cgroup slot, `job-<n>` below the tenant's node, with its files kept open.
final class JobCgroup {
    let name: String
    let dirFD: Int32
    let eventsFD: Int32
    let procsFD: Int32

    init(name: String, dirFD: Int32, eventsFD: Int32, procsFD: Int32) {
        self.name = name; self.dirFD = dirFD; self.eventsFD = eventsFD; self.procsFD = procsFD
    }

    /// Whether any process is in it (`cgroup.events`, re-read from offset 0). An unreadable
    /// file counts as populated, so that the slot is not reused blind.
    var populated: Bool {
        var buf = [UInt8](repeating: 0, count: 128)
        let n = buf.withUnsafeMutableBytes { pread(eventsFD, $0.baseAddress, $0.count, 0) }
        guard n > 0 else { return true }
        return !String(decoding: buf[0..<n], as: UTF8.self).contains("populated 0")
    }
}
