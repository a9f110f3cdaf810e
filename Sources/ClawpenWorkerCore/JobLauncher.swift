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

    struct Started {
        let pid: Int32
        let stdoutFD: Int32
        let stderrFD: Int32
        let stdinFD: Int32?   // write end, non-blocking; nil when there is no input
        let cgroupName: String?
    }

    /// Job cgroups are slots, `job-<n>`, one per running job, reused: creating and destroying a
    /// cgroup per job cost ~0.2 ms (a fifth of a warm job). A slot comes back once the job has
    /// ended and `cgroup.kill` has emptied it.
    private final class Slots {
        var free: [String] = []
        var next = 0
    }
    private let slots = Slots()

    /// A free job cgroup below the tenant's node; nil when there are no job cgroups or none can
    /// be made (the job then runs in the worker's cgroup; its process group is still killed).
    func makeJobCgroup(_ jobID: String) -> (name: String, fd: Int32)? {
        guard jobCgroupParent >= 0 else { return nil }
        while let name = slots.free.popLast() {
            let fd = openat(jobCgroupParent, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
            if fd >= 0 { return (name, fd) }
        }
        slots.next += 1
        let name = "job-\(slots.next)"
        guard mkdirat(jobCgroupParent, name, 0o755) == 0 || errno == EEXIST else { return nil }
        let fd = openat(jobCgroupParent, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        return fd >= 0 ? (name, fd) : nil
    }

    /// Kills every process of a job's cgroup, however it left the job's process group: SIGKILL
    /// to each pid in its `cgroup.procs` (this worker shares their pid namespace). Not
    /// `cgroup.kill`: on this kernel a cgroup that was once killed that way kills every process
    /// later cloned into it (CLONE_INTO_CGROUP), which would end slot reuse.
    func killJobCgroup(_ name: String) {
        let fd = openat(jobCgroupParent, name + "/cgroup.procs", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return }
        var text: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            guard n > 0 else { break }
            text.append(contentsOf: buf[0..<n])
        }
        close(fd)
        for line in text.split(separator: 0x0A) {
            if let pid = Int32(String(decoding: line, as: UTF8.self)), pid > 1 { kill(pid, SIGKILL) }
        }
    }

    /// Returns a job's slot to the pool once nothing is left in it (`cgroup.events`:
    /// populated 0); false while processes are still dying.
    func releaseJobCgroup(_ name: String) -> Bool {
        let fd = openat(jobCgroupParent, name + "/cgroup.events", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return true } // gone: nothing to release
        var buf = [UInt8](repeating: 0, count: 256)
        let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        close(fd)
        guard n > 0, String(decoding: buf[0..<n], as: UTF8.self).contains("populated 0") else {
            killJobCgroup(name) // something survived (a fork racing the kill): again
            return false
        }
        slots.free.append(name)
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
        // The OOM killer of the tenant's cgroup picks the job, not the worker that serves it.
        options.oomScoreAdj = 1000
        let cgroup = makeJobCgroup(request.jobID)
        options.cgroupFD = cgroup?.fd ?? -1
        defer { if let cgroup { close(cgroup.fd) } }
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
            if let cgroup { _ = releaseJobCgroup(cgroup.name) }
            throw .spawn(step: failure.step, errno: failure.errno)
        }
        return Started(pid: pid, stdoutFD: out[0], stderrFD: err[0], stdinFD: hasInput ? input[1] : nil, cgroupName: cgroup?.name)
    }
}
