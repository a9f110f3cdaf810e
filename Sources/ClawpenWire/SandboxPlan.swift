/// What a worker's sandbox is made of: plain data, built by the supervisor from the tenant's
/// policy, sent to the worker in its first frame (`configure`), applied there step by step in the
/// order `steps` lists (docs/sandbox.md explains each). It can be printed and tested without root.
public struct SandboxPlan: Equatable, Sendable {
    public struct Bind: Equatable, Sendable {
        /// Host path (symlinks already resolved by the supervisor: /bin -> /usr/bin).
        public var source: String
        /// Path inside the sandbox.
        public var target: String
        public init(source: String, target: String) { self.source = source; self.target = target }
    }

    public struct Limit: Equatable, Sendable {
        public var resource: Int32
        public var soft: UInt64
        public var hard: UInt64
        public init(resource: Int32, soft: UInt64, hard: UInt64) { self.resource = resource; self.soft = soft; self.hard = hard }
    }

    /// false: no sandbox (the supervisor is not root); the worker maps job paths under the
    /// workspace instead and `status` says so.
    public var enabled: Bool
    public var tenant: String
    public var uid: UInt32
    public var gid: UInt32
    /// The tenant's workspace on the host: `/` inside.
    public var workspace: String
    /// Read-only, nosuid, nodev bind mounts of host paths.
    public var readOnlyBinds: [Bind]
    /// Read-only binds inside /etc (a fresh tmpfs): /etc/ssl, /etc/alternatives, ld.so.cache.
    public var etcBinds: [Bind]
    /// Symlinks in the new root where the host has them into a bound tree (merged /usr:
    /// /bin -> usr/bin): `target` is the link's path, `source` its content.
    public var symlinks: [Bind] = []
    public var passwd: String
    public var group: String
    public var tmpSizeBytes: UInt64
    /// Limits of the worker and everything it starts (RLIMIT_NOFILE, FSIZE, CORE, NPROC).
    public var workerLimits: [Limit]
    /// Limits set on each job only (RLIMIT_AS: the memory fallback without a memory controller).
    public var jobLimits: [Limit]
    /// The seccomp profile's name and its BPF program (compiled by the supervisor with
    /// libseccomp); installed last. Empty: no filter.
    public var seccompProfile: String = ""
    public var seccompProgram: [UInt8] = []
    /// Installed by each job on top of the worker's program (refuses clone3, which the worker
    /// needs and its own program therefore allows).
    public var jobSeccompProgram: [UInt8] = []
    /// The tenant's cgroup node on the host (the worker's cgroup, delegated to the tenant's
    /// uid): the worker runs each job in a `job-<n>` child of it. Empty: no cgroups.
    public var cgroupNode: String = ""
    /// The supervisor has already built the mount tree (all but /proc) in the
    /// worker's mount namespace (SandboxSetup.prepareMounts), while the worker was starting: the
    /// worker goes on from there.
    public var mountsPrepared = false
    /// The Landlock ABI each job's domain is made for (0: no domain per job; >= 6 adds the signal
    /// and abstract-socket scopes): jobs of one tenant cannot ptrace, read or signal each other
    /// (ClawpenWorkerCore/JobIsolation.swift).
    public var jobLandlockABI: UInt32 = 0
    /// kernel.shmmax of the worker's own IPC namespace (0: left as the kernel made it); shmall and
    /// shmmni follow from it (ClawpenWorkerCore/IPCLimits.swift).
    public var shmMaxBytes: UInt64 = 0

    public init(enabled: Bool, tenant: String, uid: UInt32, gid: UInt32, workspace: String, readOnlyBinds: [Bind],
                etcBinds: [Bind], passwd: String, group: String, tmpSizeBytes: UInt64, workerLimits: [Limit], jobLimits: [Limit]) {
        self.enabled = enabled; self.tenant = tenant; self.uid = uid; self.gid = gid; self.workspace = workspace
        self.readOnlyBinds = readOnlyBinds; self.etcBinds = etcBinds; self.passwd = passwd; self.group = group
        self.tmpSizeBytes = tmpSizeBytes; self.workerLimits = workerLimits; self.jobLimits = jobLimits
    }

    /// The checklist, in the order the worker applies it.
    public var steps: [String] {
        guard enabled else { return ["no sandbox: jobs run with the supervisor's identity, paths mapped under \(workspace)"] }
        var s = [
            "namespaces: mount, pid, ipc, uts, net (at clone); lo brought up at once, before the plan arrives; cgroup (unshared once in the tenant's cgroup)",
            "while the worker is exec'd, the supervisor builds its mounts, all but /proc, from inside its mount namespace (the worker does it itself when it was started ahead of need):",
            "make every mount private (nothing propagates to the host)",
            "bind \(workspace) onto itself (the new root)",
        ]
        s += readOnlyBinds.map { "bind \($0.source) -> \($0.target) read-only, nosuid, nodev" }
        s += symlinks.map { "symlink \($0.target) -> \($0.source) (as on the host)" }
        s += [
            "mount tmpfs at /dev: null, zero, full, random, urandom, tty, fd links; tmpfs /dev/shm; /dev read-only",
            "mount tmpfs at /tmp (\(tmpSizeBytes) bytes, mode 1777, nosuid, nodev)",
            "mount tmpfs at /etc: generated passwd, group, hostname, hosts" + etcBinds.map { ", \($0.target)" }.joined() + "; /etc read-only",
            "then the worker:",
            "mount proc at /proc (this pid namespace only, hidepid=invisible); /proc/sys and /proc/sysrq-trigger read-only",
            "pivot_root to the workspace; detach the old root",
            "remount / nosuid, nodev",
            "hostname \(tenant)",
            "chown /, /home to \(uid):\(gid), mode 0700",
            "rlimits: " + workerLimits.map { "\(Self.limitName($0.resource))=\($0.hard)" }.joined(separator: " "),
            "identity: lock securebits, drop bounding set, setgroups(0), setresgid(\(gid)), setresuid(\(uid)), clear capabilities, no_new_privs",
            seccompProgram.isEmpty ? "no seccomp filter" : "seccomp: profile \(seccompProfile) (\(seccompProgram.count / 8) BPF instructions), for the worker and every job; each job adds a guard that refuses clone3",
            shmMaxBytes == 0 ? "SysV shared memory: kernel defaults" : "SysV shared memory of the IPC namespace: shmmax \(shmMaxBytes) bytes, shmall and shmmni from it",
            jobLandlockABI == 0 ? "no Landlock domain per job (jobs of the tenant can reach each other)" : "each job in a Landlock domain of its own (ABI \(jobLandlockABI)): no ptrace, /proc/<pid>/mem or environ, pidfd_getfd of a sibling job" + (jobLandlockABI >= 6 ? ", no signals or abstract-socket connections to it" : ""),
            cgroupNode.isEmpty ? "no job cgroups" : "each running job in a cgroup of its own, \(cgroupNode)/job-<n> (CLONE_INTO_CGROUP), killed with cgroup.kill when it ends and reused once empty",
        ]
        return s
    }

    public static func limitName(_ r: Int32) -> String {
        switch r { case 0: return "CPU"; case 1: return "FSIZE"; case 4: return "CORE"; case 6: return "NPROC"; case 7: return "NOFILE"; case 9: return "AS"; default: return "rlimit\(r)" }
    }

    func encode(into w: inout BinaryWriter) {
        w.bool(enabled); w.string(tenant); w.u32(uid); w.u32(gid); w.string(workspace)
        for list in [readOnlyBinds, etcBinds] {
            w.u32(UInt32(list.count))
            for b in list { w.string(b.source); w.string(b.target) }
        }
        w.string(passwd); w.string(group); w.u64(tmpSizeBytes)
        for list in [workerLimits, jobLimits] {
            w.u32(UInt32(list.count))
            for l in list { w.i32(l.resource); w.u64(l.soft); w.u64(l.hard) }
        }
        w.string(seccompProfile); w.bytes(seccompProgram)
        w.u32(UInt32(symlinks.count))
        for l in symlinks { w.string(l.source); w.string(l.target) }
        w.bytes(jobSeccompProgram); w.string(cgroupNode); w.bool(mountsPrepared)
        w.u32(jobLandlockABI); w.u64(shmMaxBytes)
    }

    static func decode(_ r: inout BinaryReader) throws(BinaryReader.Failure) -> SandboxPlan {
        let enabled = try r.bool(), tenant = try r.string(), uid = try r.u32(), gid = try r.u32(), ws = try r.string()
        var lists: [[Bind]] = []
        for _ in 0..<2 {
            let n = Int(try r.u32())
            guard n <= 256 else { throw .tooMany }
            var binds: [Bind] = []
            for _ in 0..<n { binds.append(Bind(source: try r.string(), target: try r.string())) }
            lists.append(binds)
        }
        let passwd = try r.string(), group = try r.string(), tmp = try r.u64()
        var limits: [[Limit]] = []
        for _ in 0..<2 {
            let n = Int(try r.u32())
            guard n <= 16 else { throw .tooMany }
            var l: [Limit] = []
            for _ in 0..<n { l.append(Limit(resource: try r.i32(), soft: try r.u64(), hard: try r.u64())) }
            limits.append(l)
        }
        var plan = SandboxPlan(enabled: enabled, tenant: tenant, uid: uid, gid: gid, workspace: ws, readOnlyBinds: lists[0],
                               etcBinds: lists[1], passwd: passwd, group: group, tmpSizeBytes: tmp,
                               workerLimits: limits[0], jobLimits: limits[1])
        plan.seccompProfile = try r.string()
        plan.seccompProgram = try r.bytes()
        let links = Int(try r.u32())
        guard links <= 64 else { throw .tooMany }
        for _ in 0..<links { plan.symlinks.append(Bind(source: try r.string(), target: try r.string())) }
        plan.jobSeccompProgram = try r.bytes()
        plan.cgroupNode = try r.string()
        plan.mountsPrepared = try r.bool()
        plan.jobLandlockABI = try r.u32()
        plan.shmMaxBytes = try r.u64()
        return plan
    }
}
