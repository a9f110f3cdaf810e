import CClawpenShim
import ClawpenSystem
import ClawpenWire
import Glibc

/// One step of a worker's sandbox setup: what it is, what it defends against, who runs it, and
/// the code that does it. `Checklist.steps` is the one list of them, in execution order: the
/// worker walks it (`SandboxSetup.apply`), the supervisor walks its mount-namespace part
/// (`Mounts.prepareFromSupervisor`), and the printed plan (`Checklist.lines`) and
/// docs/sandbox.md come from it, so the three cannot drift apart.
public struct Step: Sendable {
    public enum Side: String, Sendable {
        /// Done by the clone itself (flags, cgroup), before the worker runs.
        case clone = "clone"
        /// Depends only on the plan and the worker's mount namespace: run by the supervisor from
        /// inside that namespace while the worker is exec'd, or by the worker when the supervisor
        /// could not (`plan.mountsPrepared` says which).
        case mountNamespace = "supervisor"
        /// Run by the worker, root and single-threaded, PID 1 of its namespaces.
        case worker = "worker"
        /// Done for each job when it is spawned (cp_spawn), on top of the worker's sandbox.
        case job = "job"
    }

    public let name: String
    public let defendsAgainst: String
    public let side: Side
    /// What the step does for this plan, as `clawpen` prints it.
    public let describe: @Sendable (SandboxPlan) -> String
    /// nil: the step is not run by the checklist walker (clone flags, per-job spawn options).
    let run: (@Sendable (SetupContext) throws(StepFailure) -> Void)?
    /// A mount-namespace step the worker runs again after the supervisor's part: it finishes
    /// what the supervisor could not do from outside (and does nothing when it was done).
    let finishedInWorker: Bool

    init(
        _ name: String, _ side: Side, defends: String, describe: @escaping @Sendable (SandboxPlan) -> String,
        run: (@Sendable (SetupContext) throws(StepFailure) -> Void)?, finishedInWorker: Bool = false
    ) {
        self.name = name; self.side = side; self.defendsAgainst = defends; self.describe = describe; self.run = run
        self.finishedInWorker = finishedInWorker
    }
}

/// What the steps of one setup share: the plan and the fds opened on the way (closed at the end).
final class SetupContext {
    let plan: SandboxPlan
    /// Set when the supervisor runs the steps from outside the worker (its pid, as the host sees it).
    let workerPID: Int32?
    private var rootFD: Int32 = -1
    private var newRootFD: Int32 = -1
    private var workspaceFD: Int32 = -1
    /// The tenant's home directory on the host (opened O_NOFOLLOW by openWorkspace).
    var homeFD: Int32 = -1

    init(plan: SandboxPlan, workerPID: Int32? = nil) { self.plan = plan; self.workerPID = workerPID }
    deinit {
        for fd in [rootFD, newRootFD, workspaceFD, homeFD] where fd >= 0 { close(fd) }
    }

    /// The workspace directory on the host, `<workspace-root>/<tenant>`, before anything is
    /// mounted over it; never through a symlink.
    func workspace() throws(StepFailure) -> Int32 {
        if workspaceFD >= 0 { return workspaceFD }
        workspaceFD = Glibc.open(plan.workspace, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        guard workspaceFD >= 0 else { throw StepFailure(step: "open workspace", errno: errno, detail: plan.workspace) }
        return workspaceFD
    }

    /// The new root (the tmpfs mounted over the workspace directory) as seen from the host side,
    /// before pivot_root, opened without following a symlink.
    func root() throws(StepFailure) -> Int32 {
        if rootFD >= 0 { return rootFD }
        rootFD = Glibc.open(plan.workspace, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        guard rootFD >= 0 else { throw StepFailure(step: "open new root", errno: errno, detail: plan.workspace) }
        return rootFD
    }

    /// `/` after pivot_root.
    func newRoot() throws(StepFailure) -> Int32 {
        if newRootFD >= 0 { return newRootFD }
        newRootFD = Glibc.open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard newRootFD >= 0 else { throw StepFailure(step: "open /", errno: errno) }
        return newRootFD
    }
}

public enum Checklist {
    /// The umask the steps run with (the modes they give are the ones they name); the worker
    /// itself runs with 077.
    static let umask: mode_t = 0o022

    /// The sandbox setup, in execution order.
    public static let steps: [Step] = [
        Step(
            "namespaces", .clone,
            defends:
                "seeing or signalling other processes (own pid namespace; the worker is PID 1, a job cannot kill it), SysV IPC with other tenants, the host's network; every process of the tenant counted in its cgroup from the first instruction",
            describe: { _ in
                "clone into new mount, pid, ipc, uts namespaces and the tenant's cgroup (CLONE_INTO_CGROUP); join a fresh network namespace made ahead of need (else CLONE_NEWNET)"
            },
            run: nil),
        Step(
            "loopback", .worker,
            defends:
                "network = \"none\" means no interface up at all (the namespace's lo stays down); \"loopback\" gives jobs 127.0.0.1 inside their own namespace, never the host's. First of the worker's steps: it takes the kernel's rtnl lock",
            describe: { $0.loopback ? "lo up (network = \"loopback\")" : "no interface up (network = \"none\": lo stays down)" },
            run: { ctx throws(StepFailure) in if ctx.plan.loopback { try Loopback.up() } }),
        Step(
            "cgroup namespace", .worker,
            defends: "/proc/self/cgroup shows 0::/job-<n>: the host's cgroup layout stays hidden",
            describe: { _ in "unshare the cgroup namespace, rooted at the tenant's node (opened first: jobs are cloned below it)" },
            run: { _ throws(StepFailure) in try StepFailure.check("unshare cgroup namespace") { cp_unshare_cgroup() } }),
        Step(
            "SysV IPC limits", .worker,
            defends:
                "SysV shared memory that no RLIMIT_AS sees (a segment is nobody's mapping) beyond the tenant's memory limit; a segment left behind goes with the worker's IPC namespace",
            describe: { IPCLimits.describe($0) },
            run: IPCLimits.apply),
        Step(
            "private mounts", .mountNamespace,
            defends: "nothing the worker mounts propagates back to the host",
            describe: { _ in "make every mount private" },
            run: Mounts.makePrivate),
        Step(
            "workspace", .mountNamespace,
            defends:
                "host users reaching tenants' files (the workspace directory is root's, 0700); a link the tenant left where its home should be (opened O_NOFOLLOW, the setup stops with ELOOP); an old-layout workspace is migrated by fd, never through a link",
            describe: {
                "\($0.workspace): root's, 0700; \($0.workspace)/home: \($0.uid):\($0.gid), 0700 (migrated first if it is the tenant's own, as the old layout made it)"
            },
            run: Mounts.openWorkspace),
        Step(
            "new root", .mountNamespace,
            defends:
                "a tenant re-pointing loader paths (/lib64) or mount points for later jobs: / is a fresh root-owned tmpfs with only mount points, links and /etc; the tenant's writable data is /home alone, nosuid, nodev, so setuid and device files it makes there are inert",
            describe: {
                "tmpfs at / over \($0.workspace) (root's, nosuid, nodev, noexec): " + Mounts.skeleton.map { "/" + $0 }.joined(separator: " ")
                    + "; bind \($0.workspace)/home at /home read-write, nosuid, nodev"
            },
            run: Mounts.mountNewRoot),
        Step(
            "host binds", .mountNamespace,
            defends: "changing the system's programs and libraries; setuid binaries (nosuid); device nodes (nodev)",
            describe: { $0.readOnlyBinds.map { "bind \($0.source) -> \($0.target) read-only, nosuid, nodev" }.joined(separator: "; ") },
            run: Mounts.bindHostPaths),
        Step(
            "merged /usr links", .mountNamespace,
            defends: "(no mount needed; the same links as the host's)",
            describe: { p in
                p.symlinks.isEmpty ? "no merged-/usr links on this host" : p.symlinks.map { "symlink \($0.target) -> \($0.source)" }.joined(separator: "; ")
            },
            run: Mounts.placeLinks),
        Step(
            "/dev", .mountNamespace,
            defends: "raw disks, kmsg, mem: nothing but the harmless devices exist",
            describe: { _ in
                "tmpfs at /dev: " + Mounts.devices.map(\.0).joined(separator: ", ")
                    + ", fd links; devpts /dev/pts (a new instance, nodev); tmpfs /dev/shm; /dev read-only"
            },
            run: Mounts.mountDev),
        Step(
            "/tmp", .mountNamespace,
            defends: "filling the host's disk through /tmp",
            describe: { "tmpfs at /tmp (\($0.tmpSizeBytes) bytes, mode 1777, nosuid, nodev)" },
            run: Mounts.mountTmp),
        Step(
            "/etc", .mountNamespace,
            defends: "reading the host's /etc (shadow, configuration, secrets); the tenant's uid has a name (tools that look it up work)",
            describe: { p in
                "/etc in the new root: generated " + Mounts.etcFiles(p).map(\.0).joined(separator: ", ") + p.etcBinds.map { ", \($0.target)" }.joined()
                    + " (small files copied, directories bound read-only)"
            },
            run: Mounts.makeEtc),
        Step(
            "/proc", .mountNamespace,
            defends:
                "seeing host or other tenants' processes (own pid namespace, hidepid=invisible); what container runtimes mask: kernel memory and symbols, keys, host-wide interrupt and timer counters, the kernel's config; kernel knobs and triggers (read-only)",
            describe: { _ in
                "proc at /proc of the worker's pid namespace (hidepid=invisible, nosuid, nodev, noexec; by the supervisor with pidns=, else by the worker); /dev/null over "
                    + Mounts.procMaskedFiles.map { "/proc/" + $0 }.joined(separator: " ") + "; an empty read-only directory over "
                    + Mounts.procMaskedDirectories.map { "/proc/" + $0 }.joined(separator: " ") + "; read-only "
                    + Mounts.procReadOnly.map { "/proc/" + $0 }.joined(separator: " ") + " (each where this kernel has it and a tenant could read it)"
            },
            run: Mounts.mountProc, finishedInWorker: true),
        Step(
            "root read-only", .mountNamespace,
            defends: "rewriting the skeleton: / (with /etc) read-only, nosuid, nodev, noexec; only /home, /tmp and /dev/shm are writable",
            describe: { _ in "remount / read-only, nosuid, nodev, noexec" },
            run: Mounts.rootReadOnly),
        Step(
            "pivot_root", .worker,
            defends: "no path leads to the host's filesystem any more: not .., not /proc/*/root",
            describe: { _ in "pivot_root into the new root; the old root detached" },
            run: Mounts.pivotRoot),
        Step(
            "hostname", .worker,
            defends: "(its own UTS namespace; tools that print the hostname name the tenant)",
            describe: { "hostname \($0.tenant)" },
            run: Identity.hostname),
        Step(
            "rlimits", .worker,
            defends: "fd exhaustion, one runaway file filling the disk, core dumps of secrets, fork bombs (NPROC without a pids controller)",
            describe: { "rlimits: " + $0.workerLimits.map { "\(SandboxPlan.limitName($0.resource))=\($0.hard)" }.joined(separator: " ") },
            run: Identity.rlimits),
        Step(
            "identity", .worker,
            defends: "root, and every way back to it (setuid binaries, file capabilities, ambient capabilities)",
            describe: {
                "lock securebits, drop the bounding set, setgroups(0), setresgid(\($0.gid)), setresuid(\($0.uid)), clear capabilities, no_new_privs; verify"
            },
            run: Identity.drop),
        Step(
            "cwd", .worker,
            defends: "",
            describe: { _ in "chdir /home" },
            run: Identity.enterHome),
        Step(
            "seccomp", .worker,
            defends: "the kernel's attack surface; installed last, so the filter need not allow the setup's own syscalls",
            describe: { p in
                p.seccompProgram.isEmpty
                    ? "no seccomp filter"
                    : "seccomp: profile \(p.seccompProfile) (\(p.seccompProgram.count / 8) BPF instructions), for the worker and every job"
            },
            run: Seccomp.install),
        Step(
            "job cgroup", .job,
            defends: "processes a job leaves behind (setsid, double fork) are killed with it",
            describe: { p in
                p.cgroupNode.isEmpty
                    ? "no job cgroups"
                    : "each running job in a cgroup of its own, \(p.cgroupNode)/job-<n> (CLONE_INTO_CGROUP); what is left in it when the job ends is killed (SIGKILL to each pid in cgroup.procs), and the slot reused once empty"
            },
            run: nil),
        Step(
            "job limits", .job,
            defends: "core dumps; the job, not the worker, is what the OOM killer picks",
            describe: { p in
                "own session and process group, RLIMIT_CORE 0" + p.jobLimits.map { ", RLIMIT_\(SandboxPlan.limitName($0.resource)) \($0.hard)" }.joined()
                    + ", oom_score_adj 1000"
            },
            run: nil),
        Step(
            "job landlock domain", .job,
            defends:
                "jobs of one tenant reading or stealing from each other: ptrace, /proc/<pid>/environ and mem, pidfd_getfd, process_vm_readv of a sibling job; from ABI 6 signals and abstract-socket connections to it (JobIsolation)",
            describe: { p in
                p.jobLandlockABI == 0
                    ? "no Landlock domain per job (the kernel has no Landlock): jobs of the tenant can reach each other"
                    : "each job in a Landlock domain of its own (ABI \(p.jobLandlockABI)"
                        + (p.jobLandlockABI >= 6
                            ? ", scoped: signals, abstract Unix sockets)" : ", no scopes below ABI 6: signals between jobs are not refused)")
            },
            run: nil),
        Step(
            "job seccomp guard", .job,
            defends:
                "clone3, which the worker needs for CLONE_INTO_CGROUP and a filter cannot inspect; inotify watches for reads and opens (IN_ACCESS, IN_OPEN, IN_CLOSE_NOWRITE), which on the shared host inodes of /usr and /etc would show a tenant what other tenants and the host run",
            describe: { p in
                p.jobSeccompProgram.isEmpty
                    ? "no job guard"
                    : "a second, stacked seccomp filter: clone3 fails with ENOSYS; inotify_add_watch with IN_ACCESS, IN_OPEN or IN_CLOSE_NOWRITE fails with EPERM (change events still work)"
            },
            run: nil),
    ]

    /// The checklist for one plan, as `clawpen` prints it: "[side] name: what it does".
    public static func lines(for plan: SandboxPlan) -> [String] {
        guard plan.enabled else { return ["no sandbox: jobs run with the supervisor's identity, paths mapped under \(plan.workspace)"] }
        return steps.map { step in
            let side = step.side == .mountNamespace && !plan.mountsPrepared ? "supervisor or worker" : step.side.rawValue
            return "[\(side)] \(step.name): \(step.describe(plan))"
        }
    }
}

/// Applies a SandboxPlan inside the worker: it runs as root, PID 1 of fresh namespaces, and is
/// still single-threaded, so every step is a plain syscall. A failing step stops the setup with
/// its name and errno; the worker then reports `setupFailed` and does not serve.
public struct SandboxSetup {
    public let plan: SandboxPlan
    public init(plan: SandboxPlan) { self.plan = plan }

    public func apply() throws(StepFailure) {
        let umaskBefore = umask(Checklist.umask)
        defer { umask(umaskBefore) }
        let ctx = SetupContext(plan: plan)
        for step in Checklist.steps {
            guard let run = step.run else { continue }
            switch step.side {
            case .mountNamespace where plan.mountsPrepared && !step.finishedInWorker: continue // the supervisor has made these
            case .mountNamespace, .worker: try run(ctx)
            case .clone, .job: continue
            }
        }
    }
}
