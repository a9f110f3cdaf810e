/// What a worker's sandbox is made of: plain data, built by the supervisor from the tenant's
/// policy (ClawpenSandbox's `Plan.make`), sent to the worker in its first frame (`configure`),
/// applied there step by step in the order of ClawpenSandbox's `Checklist`, which also prints it.
/// It can be printed and tested without root.
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
    /// The supervisor has already built the mount tree (the checklist's mount steps) in the
    /// worker's mount namespace (Mounts.prepareFromSupervisor), while the worker was starting: the
    /// worker goes on from there.
    public var mountsPrepared = false
    /// The Landlock ABI each job's domain is made for (0: no domain per job; >= 6 adds the signal
    /// and abstract-socket scopes): jobs of one tenant cannot ptrace, read or signal each other
    /// (ClawpenWorkerCore/JobIsolation.swift).
    public var jobLandlockABI: UInt32 = 0
    /// kernel.shmmax of the worker's own IPC namespace (0: left as the kernel made it); shmall and
    /// shmmni follow from it (ClawpenWorkerCore/IPCLimits.swift).
    public var shmMaxBytes: UInt64 = 0
    /// `network = "loopback"`: the worker brings `lo` up. false (`"none"`): no interface is up.
    public var loopback = false

    public init(
        enabled: Bool, tenant: String, uid: UInt32, gid: UInt32, workspace: String, readOnlyBinds: [Bind],
        etcBinds: [Bind], passwd: String, group: String, tmpSizeBytes: UInt64, workerLimits: [Limit], jobLimits: [Limit]
    ) {
        self.enabled = enabled; self.tenant = tenant; self.uid = uid; self.gid = gid; self.workspace = workspace
        self.readOnlyBinds = readOnlyBinds; self.etcBinds = etcBinds; self.passwd = passwd; self.group = group
        self.tmpSizeBytes = tmpSizeBytes; self.workerLimits = workerLimits; self.jobLimits = jobLimits
    }

    public static func limitName(_ r: Int32) -> String {
        switch r {
        case 0: return "CPU";
        case 1: return "FSIZE";
        case 4: return "CORE";
        case 6: return "NPROC";
        case 7: return "NOFILE";
        case 9: return "AS";
        default: return "rlimit\(r)"
        }
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
        w.u32(jobLandlockABI); w.u64(shmMaxBytes); w.bool(loopback)
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
        var plan = SandboxPlan(
            enabled: enabled, tenant: tenant, uid: uid, gid: gid, workspace: ws, readOnlyBinds: lists[0],
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
        plan.loopback = try r.bool()
        return plan
    }
}
