import CClawpenShim
import ClawpenWire
import Glibc

/// What of a tenant's policy the sandbox needs (the supervisor fills it from the tier and the
/// tenant's overrides; the sandbox reads no policy files).
public struct SandboxLimits: Sendable, Equatable {
    public var pidsMax: Int
    public var memoryMaxBytes: Int64
    public var tmpSizeBytes: Int64
    /// "none" or "loopback".
    public var network: String
    public init(pidsMax: Int, memoryMaxBytes: Int64, tmpSizeBytes: Int64, network: String) {
        self.pidsMax = pidsMax; self.memoryMaxBytes = memoryMaxBytes; self.tmpSizeBytes = tmpSizeBytes; self.network = network
    }
}

/// The seccomp programs and cgroup node a plan carries (compiled and made by the supervisor).
public struct PlanExtras: Sendable {
    public var seccompProfile: String
    public var seccompProgram: [UInt8]
    public var jobSeccompProgram: [UInt8]
    public var cgroupNode: String
    /// The kernel's Landlock ABI (0: none): each job gets a domain of its own (SandboxPlan.jobLandlockABI).
    public var jobLandlockABI: UInt32
    public init(
        seccompProfile: String = "", seccompProgram: [UInt8] = [], jobSeccompProgram: [UInt8] = [], cgroupNode: String = "",
        jobLandlockABI: UInt32 = 0
    ) {
        self.seccompProfile = seccompProfile; self.seccompProgram = seccompProgram
        self.jobSeccompProgram = jobSeccompProgram; self.cgroupNode = cgroupNode; self.jobLandlockABI = jobLandlockABI
    }
}

/// Builds a tenant's SandboxPlan from its limits and what this host has: the only place a plan
/// is filled. Pure apart from resolving the host paths' symlinks (merged /usr: /bin -> /usr/bin).
public enum Plan {
    /// Host paths bound read-only at the same place (docs/sandbox.md lists them).
    static let readOnlyPaths = ["/usr", "/lib", "/lib64", "/bin", "/sbin"]
    /// Host paths bound read-only into the synthetic /etc. ld.so.cache spares every dynamic
    /// executable a search of the library directories.
    static let etcPaths = ["/etc/ssl", "/etc/alternatives", "/etc/ld.so.cache"]

    /// Per-worker file size limit (RLIMIT_FSIZE): a single runaway file cannot fill the disk
    /// the workspace lives on.
    static let maxFileBytes: UInt64 = 4 << 30
    static let maxOpenFiles: UInt64 = 4096

    /// What the host's layout gives every plan (the binds and the merged-/usr links), resolved
    /// once: the host's /usr does not move while the daemon runs, and a new tenant's first job
    /// should not wait for a dozen realpath and readlink calls.
    private static let hostLayout: (rootBinds: [SandboxPlan.Bind], links: [SandboxPlan.Bind], etcBinds: [SandboxPlan.Bind]) = {
        var rootBinds: [SandboxPlan.Bind] = [], links: [SandboxPlan.Bind] = []
        for path in readOnlyPaths {
            guard let resolved = resolve(path) else { continue }
            if let content = linkContent(path), readOnlyPaths.contains(where: { $0 != path && (resolved == $0 || resolved.hasPrefix($0 + "/")) }) {
                links.append(.init(source: content, target: path))
            } else {
                rootBinds.append(.init(source: resolved, target: path))
            }
        }
        let etc = etcPaths.compactMap { p in resolve(p).map { SandboxPlan.Bind(source: $0, target: p) } }
        return (rootBinds, links, etc)
    }()

    /// `controllers`: the cgroup controllers enabled for the tenant nodes.
    /// `extras` are only used when `enabled` (no sandbox: no filter, no job cgroups).
    public static func make(
        tenant: TenantName, uid: Int, workspace: String, limits: SandboxLimits,
        enabled: Bool, controllers: Set<String>, extras: PlanExtras = PlanExtras()
    ) -> SandboxPlan {
        let u = UInt32(uid)
        // Fallbacks while the kernel gives us no memory or pids controller (docs/sandbox.md): the
        // tenant's process count by RLIMIT_NPROC on its uid, each job's memory by RLIMIT_AS.
        let hasPids = controllers.contains("pids"), hasMemory = controllers.contains("memory")
        var workerLimits = [
            SandboxPlan.Limit(resource: Int32(RLIMIT_NOFILE.rawValue), soft: 1024, hard: maxOpenFiles),
            SandboxPlan.Limit(resource: Int32(RLIMIT_FSIZE.rawValue), soft: maxFileBytes, hard: maxFileBytes),
            SandboxPlan.Limit(resource: Int32(RLIMIT_CORE.rawValue), soft: 0, hard: 0),
        ]
        if !hasPids {
            workerLimits.append(.init(resource: CP_RLIMIT_NPROC, soft: UInt64(limits.pidsMax), hard: UInt64(limits.pidsMax)))
        }
        let jobLimits: [SandboxPlan.Limit] =
            hasMemory ? [] : [.init(resource: Int32(RLIMIT_AS.rawValue), soft: UInt64(limits.memoryMaxBytes), hard: UInt64(limits.memoryMaxBytes))]
        // Merged /usr: a host path that is a symlink into another bound tree becomes the same
        // symlink in the sandbox (no mount needed); anything else is bound.
        let (rootBinds, links, etcBinds) = hostLayout
        let name = tenant.value
        var plan = SandboxPlan(
            enabled: enabled, tenant: name, uid: u, gid: u, workspace: workspace,
            readOnlyBinds: rootBinds, etcBinds: etcBinds,
            passwd:
                "root:x:0:0:root:/root:/usr/sbin/nologin\n\(name):x:\(u):\(u):clawpen tenant \(name):/home:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
            group: "root:x:0:\n\(name):x:\(u):\nnogroup:x:65534:\n",
            tmpSizeBytes: UInt64(limits.tmpSizeBytes), workerLimits: workerLimits, jobLimits: enabled ? jobLimits : [])
        plan.symlinks = links
        plan.loopback = enabled && (limits.network == "loopback" || limits.network == "egress")
        if enabled {
            plan.seccompProfile = extras.seccompProfile
            plan.seccompProgram = extras.seccompProgram
            plan.jobSeccompProgram = extras.jobSeccompProgram
            plan.cgroupNode = extras.cgroupNode
            // A Landlock domain per job (JobIsolation in the worker) where the kernel has one, and
            // the IPC namespace's SysV shm bounded by the tenant's memory (IPCLimits).
            plan.jobLandlockABI = extras.jobLandlockABI
            plan.shmMaxBytes = UInt64(max(0, limits.memoryMaxBytes))
        }
        return plan
    }

    /// The content of a symlink at `path` (nil when it is not one).
    public static func linkContent(_ path: String) -> String? {
        var buf = [CChar](repeating: 0, count: 4096)
        let n = readlink(path, &buf, buf.count - 1)
        guard n > 0 else { return nil }
        return String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// The host path with its symlinks resolved, nil when it does not exist here.
    public static func resolve(_ path: String) -> String? {
        guard let p = realpath(path, nil) else { return nil }
        defer { free(p) }
        return String(cString: p)
    }
}
