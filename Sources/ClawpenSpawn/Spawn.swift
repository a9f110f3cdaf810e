import CClawpenShim
import ClawpenSystem
import Glibc

/// How the child is set up between clone and exec (all of it done by cp_spawn's C child).
public struct SpawnOptions: Sendable {
    /// fds[i] becomes descriptor i of the child; every other descriptor is closed at exec.
    public var fds: [Int32]
    public var cwd: String?
    /// setsid(): own session and process group, so the whole group can be killed at once.
    public var newSession = false
    /// PR_SET_PDEATHSIG in the child (0: none).
    public var parentDeathSignal: Int32 = 0
    /// CLONE_NEW* flags.
    public var cloneFlags: UInt64 = 0
    /// A cgroup v2 directory fd to start the child in (CLONE_INTO_CGROUP); -1 for none.
    public var cgroupFD: Int32 = -1
    public var umask: mode_t = 0o022
    public var rlimits: [(resource: Int32, soft: UInt64, hard: UInt64)] = []
    /// A seccomp program the child installs on top of its inherited filter, just before exec.
    public var seccompProgram: [UInt8] = []
    /// >= 0: a network namespace the child joins before anything else (instead of CLONE_NEWNET).
    public var netnsFD: Int32 = -1
    /// > 0: the child's /proc/self/oom_score_adj before exec (see cp_spawn_request).
    public var oomScoreAdj: Int32 = 0
    /// nil: the child resets every signal's disposition. Else only these (see
    /// cp_spawn_request.reset_signal_mask): for callers with no handlers installed.
    public var resetOnlySignals: [Int32]? = nil
    /// > 0: a Landlock ruleset fd; the child enters a domain of its own made from it before
    /// exec (cp_spawn_request.landlock_ruleset_fd). 0: none.
    public var landlockRulesetFD: Int32 = 0
    /// fd 0 is a terminal the child takes as its controlling terminal (needs `newSession`).
    public var controllingTTY = false

    public init(fds: [Int32]) { self.fds = fds }
}

/// A command whose C strings are built once, before any clone (the child may not allocate), and
/// that can be spawned any number of times.
public final class SpawnCommand {
    public let path: String
    private let argv: CStringArray
    private let envp: CStringArray

    public init(path: String, arguments: [String], environment: [String]) {
        self.path = path
        argv = CStringArray(arguments)
        envp = CStringArray(environment)
    }

    /// Starts the command; returns its pid once it has exec'd. A failure names the step (in the
    /// parent: "clone"; in the child: "chdir", "exec", ...) and its errno.
    public func spawn(_ options: SpawnOptions) throws(StepFailure) -> pid_t {
        guard options.fds.count <= Int(CP_MAX_FDS), options.rlimits.count <= Int(CP_MAX_RLIMITS) else {
            throw StepFailure(step: "spawn", errno: EINVAL)
        }
        var req = cp_spawn_request()
        req.fd_count = Int32(options.fds.count)
        withUnsafeMutableBytes(of: &req.fd_sources) { raw in
            let fds = raw.bindMemory(to: Int32.self)
            for (i, fd) in options.fds.enumerated() { fds[i] = fd }
        }
        req.new_session = options.newSession ? 1 : 0
        req.parent_death_signal = options.parentDeathSignal
        req.oom_score_adj = options.oomScoreAdj
        req.reset_signal_mask = (options.resetOnlySignals ?? []).reduce(UInt64(0)) { mask, sig in
            (1...64).contains(sig) ? mask | (UInt64(1) << UInt64(sig - 1)) : mask
        }
        req.clone_flags = options.cloneFlags
        req.cgroup_fd = options.cgroupFD
        req.netns_fd = options.netnsFD
        req.landlock_ruleset_fd = options.landlockRulesetFD
        req.controlling_tty = options.controllingTTY ? 1 : 0
        req.umask_value = options.umask
        req.rlimit_count = Int32(options.rlimits.count)
        withUnsafeMutableBytes(of: &req.rlimits) { raw in
            let limits = raw.bindMemory(to: cp_rlimit.self)
            for (i, r) in options.rlimits.enumerated() { limits[i] = cp_rlimit(resource: r.resource, soft: r.soft, hard: r.hard) }
        }
        req.argv = UnsafePointer(argv.pointer)
        req.envp = UnsafePointer(envp.pointer)
        var step: Int32 = 0, err: Int32 = 0
        let pid: pid_t = options.seccompProgram.withUnsafeBytes { program in
            req.seccomp_program = program.baseAddress
            req.seccomp_len = program.count
            return path.withCString { cPath in
                req.path = cPath
                guard let cwd = options.cwd else {
                    req.cwd = nil
                    return cp_spawn(&req, &step, &err)
                }
                return cwd.withCString { cCwd in
                    req.cwd = cCwd
                    return cp_spawn(&req, &step, &err)
                }
            }
        }
        guard pid > 0 else { throw StepFailure(step: String(cString: cp_spawn_step_name(step)), errno: err) }
        return pid
    }
}
