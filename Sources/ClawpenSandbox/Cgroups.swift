import ClawpenSystem
import ClawpenWire
import Glibc

/// The cgroup v2 file names clawpen reads or writes, declared once.
enum CgroupFile {
    static let procs = "cgroup.procs", threads = "cgroup.threads", kill = "cgroup.kill", events = "cgroup.events"
    static let controllers = "cgroup.controllers", subtreeControl = "cgroup.subtree_control", freeze = "cgroup.freeze"
    static let memoryMax = "memory.max", memorySwapMax = "memory.swap.max", memoryCurrent = "memory.current", memoryEvents = "memory.events"
    static let pidsMax = "pids.max", pidsCurrent = "pids.current", cpuMax = "cpu.max", cpuWeight = "cpu.weight", cpuStat = "cpu.stat"
    /// What a delegated node's owner may write (systemd's delegation set); the limit files stay root's.
    static let delegated = [procs, threads, subtreeControl]
    /// A job slot below a tenant node.
    static func jobSlot(_ n: Int) -> String { "job-\(n)" }
}

/// The limits a tenant node gets (from the tenant's policy; the sandbox does not read policy files).
public struct CgroupLimits: Sendable, Equatable {
    public var memoryMaxBytes: Int64
    public var pidsMax: Int
    /// cpu.max as the file takes it ("50000 100000", or "max 100000").
    public var cpuMax: String
    /// cpu.weight in the tier's units (1-100; the file gets 100x, clamped to 1...10000).
    public var cpuWeight: Int
    public init(memoryMaxBytes: Int64, pidsMax: Int, cpuMax: String, cpuWeight: Int) {
        self.memoryMaxBytes = memoryMaxBytes; self.pidsMax = pidsMax; self.cpuMax = cpuMax; self.cpuWeight = cpuWeight
    }
}

/// The supervisor's cgroup v2 subtree: one node per tenant, the worker (and so every job) in a
/// leaf below it, limits on the tenant node so they hold for the tenant's processes together.
///
/// Layout: `<base>/supervisor` (the daemon itself: cgroup v2 lets only leaves hold processes),
/// `<base>/tenant-<name>` (the worker) and `<base>/tenant-<name>/job-<n>` (its jobs). `<base>` is
/// the daemon's own cgroup when it was delegated one (systemd `Delegate=yes`); when it runs in
/// the hierarchy's root (development machines), it is `<root>/clawpen-<pid>`, so that several
/// daemons never share tenant nodes (see setUp). Only cgroup2 is
/// touched; v1 hierarchies are never written. Teardown is `cgroup.kill`, then rmdir.
/// Used from the event loop, and by the spare-spawning thread for leafForSpare (serialized by
/// the supervisor: one refill at a time).
public final class CgroupTree: @unchecked Sendable {
    public let root: String // the daemon's cgroup at start
    public let base: String
    public let controllers: Set<String>
    private let ownsBase: Bool

    static let prefix = "clawpen-"

    private init(root: String, base: String, controllers: Set<String>, ownsBase: Bool) {
        self.root = root; self.base = base; self.controllers = controllers; self.ownsBase = ownsBase
    }

    /// Sets the tree up, or returns nil (with the reason logged by the caller) when there is no
    /// cgroup2 to use.
    ///
    /// Where the base goes:
    /// - the daemon runs in the hierarchy's root (development machines, tests): a node of its
    ///   own, `<root>/clawpen-<pid>`;
    /// - the daemon is alone in its cgroup (systemd `Delegate=yes`: the unit's cgroup is ours):
    ///   that cgroup itself, after removing the tenant nodes a previous run left (a crash, a
    ///   watchdog kill);
    /// - it shares its cgroup with other processes (started from a shell in some service's
    ///   cgroup): `<own>/clawpen-<pid>`, where no controller can be enabled (cgroup v2 lets
    ///   a cgroup with processes hand none down), so the rlimit fallbacks apply.
    /// `keeping`: workers adopted from the previous supervisor (an upgrade): their tenants'
    /// nodes, and any old tree that holds one of their pids, stay.
    public static func setUp(_ info: CgroupInfo, workerBase: String? = nil, keeping: Keep = Keep()) -> (CgroupTree?, String?) {
        guard info.mode != .none, let own = info.path else { return (nil, "no cgroup2 mount") }
        if let workerBase { return setUp(in: workerBase, own: own, keeping: keeping) }
        let isHierarchyRoot = CgroupInfo.cgroup2MountPoint() == own
        let alone = !isHierarchyRoot && processes(in: own) == [getpid()]
        removeStale(in: own, keeping: keeping)
        if alone {
            for name in children(of: own) where name.hasPrefix("tenant-") || name.hasPrefix("spare-") {
                if keeping.tenants.contains(String(name.dropFirst("tenant-".count))) && name.hasPrefix("tenant-") { continue }
                removeTree(own + "/" + name)
            }
        }
        let ownsBase = !alone
        let base = ownsBase ? "\(own)/\(prefix)\(getpid())" : own
        if ownsBase, mkdir(base, 0o755) != 0, errno != EEXIST {
            return (nil, "cannot create \(base): \(errnoString(errno))")
        }
        let leaf = base + "/supervisor"
        guard mkdir(leaf, 0o755) == 0 || errno == EEXIST else { return (nil, "cannot create \(leaf): \(errnoString(errno))") }
        guard write(leaf + "/" + CgroupFile.procs, "\(getpid())") else {
            return (nil, "cannot move the supervisor into \(leaf): \(errnoString(errno))")
        }
        // The root may hand controllers down although it holds processes (the one exception to
        // the no-internal-process rule): make sure it does, for the base below it.
        if isHierarchyRoot { enable(["cpu", "memory", "pids"], in: own) }
        // Hand the controllers the base has to the tenant nodes. The base holds no process (the
        // daemon sits in its `supervisor` leaf), so this is allowed.
        let enabled = enable(["cpu", "memory", "pids"], in: base)
        return (CgroupTree(root: own, base: base, controllers: enabled, ownsBase: ownsBase), nil)
    }

    /// `--worker-cgroup`: the tenant nodes go under `base`, a cgroup another unit was delegated
    /// (clawpen-workers.service, whose only process sits in a leaf of it), and the daemon stays
    /// where it was started. The daemon's own cgroup then hands no controller down, so systemd
    /// can start the next daemon in it while the workers live on (docs/systemd.md, "Upgrades").
    private static func setUp(in base: String, own: String, keeping: Keep) -> (CgroupTree?, String?) {
        guard let mount = CgroupInfo.cgroup2MountPoint() else { return (nil, "no cgroup2 mount for --worker-cgroup \(base)") }
        // No symlinks in cgroupfs; a path that leaves the mount ("..") or names a file is refused.
        let parts = base.split(separator: "/")
        guard base.hasPrefix(mount + "/"), !parts.contains(".."), !parts.contains("."),
            access(base + "/" + CgroupFile.controllers, F_OK) == 0
        else {
            return (nil, "--worker-cgroup \(base) is not a cgroup v2 directory under \(mount)")
        }
        let inside = processes(in: base)
        guard inside.isEmpty else {
            return (
                nil,
                "--worker-cgroup \(base) holds processes of its own (\(inside.prefix(5).map(String.init).joined(separator: " "))), so cgroup v2 lets it hand no controller to the tenant nodes: its unit's process must sit in a leaf below it (clawpen-workers.service moves itself into holder/)"
            )
        }
        guard base != own, !own.hasPrefix(base + "/") else {
            return (nil, "--worker-cgroup \(base) is the daemon's own cgroup or holds it: name another unit's delegated cgroup")
        }
        removeStale(in: base, keeping: keeping)
        for name in children(of: base) where name.hasPrefix("tenant-") || name.hasPrefix("spare-") {
            if name.hasPrefix("tenant-") && keeping.tenants.contains(String(name.dropFirst("tenant-".count))) { continue }
            removeTree(base + "/" + name)
        }
        let enabled = enable(["cpu", "memory", "pids"], in: base)
        return (CgroupTree(root: own, base: base, controllers: enabled, ownsBase: false), nil)
    }

    /// clawpen-workers.service's process: it moves itself into `<own>/holder`, leaving its
    /// unit's cgroup free to hand controllers down. nil: done; else why not.
    public static func holdDelegated(_ info: CgroupInfo) -> String? {
        guard info.mode != .none, let own = info.path else { return "no cgroup2 mount" }
        guard CgroupInfo.cgroup2MountPoint() != own else { return "this process runs in the cgroup2 root, not in a delegated unit (Delegate=yes)" }
        let leaf = own + "/holder"
        guard mkdir(leaf, 0o755) == 0 || errno == EEXIST else { return "cannot create \(leaf): \(errnoString(errno))" }
        guard write(leaf + "/" + CgroupFile.procs, "\(getpid())") else { return "cannot move into \(leaf): \(errnoString(errno))" }
        return nil
    }

    /// Enables those of `wanted` that `path` has in its subtree; returns what is enabled there.
    @discardableResult
    private static func enable(_ wanted: Set<String>, in path: String) -> Set<String> {
        func words(_ file: String) -> Set<String> {
            Set((Files.readSmallFile(path + "/" + file) ?? "").split(whereSeparator: { $0 == " " || $0 == "\n" }).map(String.init))
        }
        let missing = words(CgroupFile.controllers).intersection(wanted).subtracting(words(CgroupFile.subtreeControl))
        if !missing.isEmpty { _ = write(path + "/" + CgroupFile.subtreeControl, missing.sorted().map { "+" + $0 }.joined(separator: " ")) }
        return words(CgroupFile.subtreeControl).intersection(wanted)
    }

    /// The pids in a cgroup (its cgroup.procs).
    public static func processes(in path: String) -> [Int32] {
        (Files.readSmallFile(path + "/" + CgroupFile.procs) ?? "").split(separator: "\n").compactMap { Int32($0) }
    }

    /// Names of the subdirectories (child cgroups) of `path`.
    public static func children(of path: String) -> [String] {
        guard let dir = opendir(path) else { return [] }
        defer { closedir(dir) }
        var names: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if entry.pointee.d_type == UInt8(DT_DIR), name != ".", name != ".." { names.append(name) }
        }
        return names
    }

    /// What an adopting start keeps: tenant names (of `tenant-<name>` nodes) and worker pids.
    public struct Keep: Sendable {
        public var tenants: Set<String> = []
        public var pids: Set<Int32> = []
        public init(tenants: Set<String> = [], pids: Set<Int32> = []) { self.tenants = tenants; self.pids = pids }
    }

    /// Trees of daemons that are gone (killed without a chance to clean up), but for one that
    /// holds a worker being adopted.
    private static func removeStale(in own: String, keeping: Keep) {
        for name in children(of: own) {
            guard name.hasPrefix(prefix), let pid = Int32(name.dropFirst(prefix.count)), pid != getpid(), kill(pid, 0) != 0, errno == ESRCH else { continue }
            let tree = own + "/" + name
            if !keeping.pids.isEmpty,
                children(of: tree).contains(where: { !Set(processes(in: tree + "/" + $0)).isDisjoint(with: keeping.pids) })
            {
                continue
            }
            removeTree(own + "/" + name)
        }
    }

    /// cgroup.kill, then rmdir depth-first (a populated cgroup cannot be removed: retried briefly).
    public static func removeTree(_ path: String) {
        _ = write(path + "/" + CgroupFile.kill, "1")
        for child in children(of: path) { removeTree(path + "/" + child) }
        for _ in 0..<200 {
            if rmdir(path) == 0 || errno == ENOENT { return }
            usleep(5_000)
        }
    }

    public func tenantPath(_ tenant: TenantName) -> String { "\(base)/tenant-\(tenant.value)" }

    /// Moving a process (a write to cgroup.procs) waits for an RCU grace period: 10-20 ms on an
    /// idle machine. So a fresh worker is cloned straight into its leaf (CLONE_INTO_CGROUP takes
    /// the lock as a reader); only a spare, cloned before its tenant was known, is migrated.

    /// Creates `<base>/<node>/worker` (a spare's) and returns an fd of the leaf to clone into.
    private func makeLeaf(_ node: String) throws(CgroupError) -> Int32 {
        guard mkdir(node, 0o755) == 0 || errno == EEXIST else { throw .create(node, errno) }
        let leaf = node + "/worker"
        guard mkdir(leaf, 0o755) == 0 || errno == EEXIST else { throw .create(leaf, errno) }
        let fd = open(leaf, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { throw .create(leaf, errno) }
        return fd
    }

    /// The tenant's node, which holds its worker and a `job-<id>` child per job. Delegated to the
    /// tenant's uid (`owner`) the way systemd delegates: the directory, `cgroup.procs`,
    /// `cgroup.threads` and `cgroup.subtree_control` change owner, so the (unprivileged) worker
    /// can make job cgroups and clone into them; the limit files (`memory.max`, `pids.max`,
    /// `cpu.max`) stay root's, so nothing below can raise them.
    private func makeTenantNode(_ tenant: TenantName, owner: Int?) throws(CgroupError) -> String {
        let node = tenantPath(tenant)
        guard mkdir(node, 0o755) == 0 || errno == EEXIST else { throw .create(node, errno) }
        if let owner {
            // Through the node's fd: one path walk, not four.
            let dir = open(node, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
            guard dir >= 0 else { throw .create(node, errno) }
            defer { close(dir) }
            guard fchown(dir, uid_t(owner), gid_t(owner)) == 0 else { throw .create(node, errno) }
            for file in CgroupFile.delegated {
                guard fchownat(dir, file, uid_t(owner), gid_t(owner), AT_SYMLINK_NOFOLLOW) == 0 else { throw .create(node + "/" + file, errno) }
            }
        }
        return node
    }

    /// The cgroup a fresh worker of `tenant` is cloned into (close the fd after the clone).
    public func leafForTenant(_ tenant: TenantName, owner: Int?) throws(CgroupError) -> Int32 {
        let node = try makeTenantNode(tenant, owner: owner)
        let fd = open(node, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { throw .create(node, errno) }
        return fd
    }

    /// The tenant's first job slot, `job-1`, made by the supervisor while the new worker builds
    /// its sandbox, delegated to the tenant's uid like the node. The worker reuses it for its
    /// first job instead of creating it while that job waits. Best effort: the worker makes it
    /// when it is missing, and passes it over if it is not yet its own (JobLauncher).
    public func prepareFirstJobSlot(_ tenant: TenantName, owner: Int?) {
        let slot = tenantPath(tenant) + "/" + CgroupFile.jobSlot(1)
        guard mkdir(slot, 0o755) == 0 else { return }
        if let owner {
            let dir = open(slot, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
            guard dir >= 0 else { return }
            defer { close(dir) }
            _ = fchown(dir, uid_t(owner), gid_t(owner))
            for file in CgroupFile.delegated {
                _ = fchownat(dir, file, uid_t(owner), gid_t(owner), AT_SYMLINK_NOFOLLOW)
            }
        }
    }

    private var spareCounter = 0

    /// A node for a spare worker: (its path, the leaf fd to clone into).
    public func leafForSpare() throws(CgroupError) -> (node: String, fd: Int32) {
        spareCounter += 1
        let node = "\(base)/spare-\(spareCounter)"
        return (node, try makeLeaf(node))
    }

    /// A spare joins the tenant: moved into its node (cgroup v2 forbids renaming a node, so this
    /// is a migration and waits for an RCU grace period), its own node removed.
    public func adopt(spare pid: Int32, spareNode: String, tenant: TenantName, owner: Int?) throws(CgroupError) {
        let node = try makeTenantNode(tenant, owner: owner)
        guard Self.write(node + "/" + CgroupFile.procs, "\(pid)") else { throw .move(node, errno) }
        _ = rmdir(spareNode + "/worker")
        _ = rmdir(spareNode)
    }

    /// Writes the tenant's limits where the controllers exist; returns which are now enforced.
    public func applyLimits(_ tenant: TenantName, _ limits: CgroupLimits) -> Set<String> {
        let node = tenantPath(tenant)
        var enforced: Set<String> = []
        if controllers.contains("memory") {
            if Self.write(node + "/" + CgroupFile.memoryMax, "\(limits.memoryMaxBytes)") { enforced.insert("memory") }
            _ = Self.write(node + "/" + CgroupFile.memorySwapMax, "0")
        }
        if controllers.contains("pids"), Self.write(node + "/" + CgroupFile.pidsMax, "\(limits.pidsMax)") { enforced.insert("pids") }
        if controllers.contains("cpu") {
            if Self.write(node + "/" + CgroupFile.cpuMax, limits.cpuMax) { enforced.insert("cpu") }
            _ = Self.write(node + "/" + CgroupFile.cpuWeight, "\(min(10_000, max(1, limits.cpuWeight * 100)))")
        }
        return enforced
    }

    /// Removes a spare's node (the spare is dead).
    public func removeSpare(_ node: String) { Self.removeTree(node) }

    /// One attempt to kill whatever is left of the tenant and remove its node, without waiting
    /// (the supervisor retries on its loop). true when the node is gone.
    public func tryRemove(tenant: TenantName) -> Bool {
        let node = tenantPath(tenant)
        _ = Self.write(node + "/" + CgroupFile.kill, "1")
        for child in Self.children(of: node) where rmdir(node + "/" + child) != 0 && errno != ENOENT { return false }
        return rmdir(node) == 0 || errno == ENOENT
    }

    /// At shutdown: every tenant node, then (if the daemon made it) the base.
    /// `keeping`: tenants whose workers were handed to the next supervisor (their nodes stay,
    /// and so does the base).
    public func removeAll(keeping: Set<String> = []) {
        for name in Self.children(of: base) where name.hasPrefix("tenant-") || name.hasPrefix("spare-") {
            if name.hasPrefix("tenant-") && keeping.contains(String(name.dropFirst("tenant-".count))) { continue }
            Self.removeTree(base + "/" + name)
        }
        guard ownsBase else { return }
        _ = Self.write(root + "/" + CgroupFile.procs, "\(getpid())") // leave the leaf so it can go
        _ = rmdir(base + "/supervisor")
        _ = rmdir(base)
    }

    // MARK: Readings (nil when the file is not there: never a made-up 0)

    public func cpuUsageMicros(_ tenant: TenantName) -> Int64? {
        guard let stat = Files.readSmallFile(tenantPath(tenant) + "/" + CgroupFile.cpuStat) else { return nil }
        for line in stat.split(separator: "\n") where line.hasPrefix("usage_usec ") {
            return Int64(line.dropFirst("usage_usec ".count))
        }
        return nil
    }

    /// Freezes (or thaws) every process of the tenant (cgroup.freeze: a core file of every
    /// non-root cgroup v2 node, with or without controllers). false: it could not be written.
    public func setFrozen(_ tenant: TenantName, _ frozen: Bool) -> Bool {
        Self.write(tenantPath(tenant) + "/" + CgroupFile.freeze, frozen ? "1" : "0")
    }

    public func memoryCurrent(_ tenant: TenantName) -> Int64? { readNumber(tenantPath(tenant) + "/" + CgroupFile.memoryCurrent) }
    public func pidsCurrent(_ tenant: TenantName) -> Int64? { readNumber(tenantPath(tenant) + "/" + CgroupFile.pidsCurrent) }

    /// memory.events' oom_kill count of the tenant node.
    public func oomKills(_ tenant: TenantName) -> Int64? {
        guard let events = Files.readSmallFile(tenantPath(tenant) + "/" + CgroupFile.memoryEvents) else { return nil }
        for line in events.split(separator: "\n") where line.hasPrefix("oom_kill ") { return Int64(line.dropFirst("oom_kill ".count)) }
        return nil
    }

    /// What the tenant's cgroup files hold now, and which limits equal the policy's (`enforced`).
    public struct InForce: Sendable {
        public var memoryMax: Int64?
        public var pidsMax: Int64?
        public var cpuMax: String?
        public var enforced: Set<String>
    }

    public func limitsInForce(_ tenant: TenantName, _ limits: CgroupLimits) -> InForce {
        let node = tenantPath(tenant)
        let memory = readNumber(node + "/" + CgroupFile.memoryMax)
        let pids = readNumber(node + "/" + CgroupFile.pidsMax)
        let cpu = Files.readSmallFile(node + "/" + CgroupFile.cpuMax)?.trimmingCharacters(in: " \n")
        var enforced: Set<String> = []
        if controllers.contains("memory"), memory == limits.memoryMaxBytes { enforced.insert("memory") }
        if controllers.contains("pids"), pids == Int64(limits.pidsMax) { enforced.insert("pids") }
        if controllers.contains("cpu"), let cpu, cpu == limits.cpuMax { enforced.insert("cpu") }
        return InForce(memoryMax: memory, pidsMax: pids, cpuMax: cpu, enforced: enforced)
    }

    private func readNumber(_ path: String) -> Int64? {
        Files.readSmallFile(path).flatMap { Int64($0.trimmingCharacters(in: " \n")) }
    }

    @discardableResult
    static func write(_ path: String, _ value: String) -> Bool { Files.writeExisting(path, value) }
}

public enum CgroupError: Error, CustomStringConvertible {
    case create(String, Int32)
    case move(String, Int32)
    public var description: String {
        switch self {
        case .create(let p, let e): return "cannot create cgroup \(p): \(errnoString(e))"
        case .move(let p, let e): return "cannot move the worker into \(p): \(errnoString(e))"
        }
    }
}

extension String {
    public func trimmingCharacters(in set: String) -> String {
        var s = Substring(self)
        while let f = s.first, set.contains(f) { s = s.dropFirst() }
        while let l = s.last, set.contains(l) { s = s.dropLast() }
        return String(s)
    }
}

// MARK: - The probe (what the supervisor found at start-up)

/// What the supervisor found of cgroup v2 at start-up, reported by `status` as
/// `supervisor.cgroup`. Nothing is written here: this only reads /proc/self/cgroup,
/// /proc/self/mountinfo and the cgroup's `cgroup.controllers`.
public struct CgroupInfo: Sendable {
    public enum Mode: String, Sendable { case v2, v2NoControllers = "v2-no-controllers", none }
    public var mode: Mode
    public var path: String?
    public var controllers: [String]

    public static func probe() -> CgroupInfo {
        guard let mount = cgroup2MountPoint(),
            let own = Files.readSmallFile("/proc/self/cgroup")?
                .split(separator: "\n").first(where: { $0.hasPrefix("0::") }).map({ String($0.dropFirst(3)) })
        else { return CgroupInfo(mode: .none, path: nil, controllers: []) }
        let path = own == "/" ? mount : mount + own
        let controllers = (Files.readSmallFile(path + "/" + CgroupFile.controllers) ?? "")
            .split(whereSeparator: { $0 == " " || $0 == "\n" }).map(String.init)
        let needed: Set<String> = ["memory", "pids", "cpu"]
        let mode: Mode = needed.isSubset(of: Set(controllers)) ? .v2 : .v2NoControllers
        return CgroupInfo(mode: mode, path: path, controllers: controllers)
    }

    /// The cgroup2 mount point from mountinfo (field 5 is the mount point; the fstype follows " - ").
    public static func cgroup2MountPoint() -> String? {
        guard let info = Files.readSmallFile("/proc/self/mountinfo") else { return nil }
        for line in info.split(separator: "\n") {
            let halves = line.split(separator: " - ", maxSplits: 1)
            guard halves.count == 2, halves[1].hasPrefix("cgroup2 ") else { continue }
            let fields = halves[0].split(separator: " ")
            if fields.count >= 5 { return String(fields[4]) }
        }
        return nil
    }
}

// MARK: - The worker's side: one cgroup per running job

/// One job cgroup slot, `job-<n>` below the tenant's node, with its files kept open.
public final class JobCgroup {
    public let name: String
    public let dirFD: Int32
    let eventsFD: Int32
    let procsFD: Int32

    init(name: String, dirFD: Int32, eventsFD: Int32, procsFD: Int32) {
        self.name = name; self.dirFD = dirFD; self.eventsFD = eventsFD; self.procsFD = procsFD
    }

    /// Whether any process is in it (`cgroup.events`, re-read from offset 0). An unreadable
    /// file counts as populated, so that the slot is not reused blind.
    public var populated: Bool {
        var buf = [UInt8](repeating: 0, count: 128)
        let n = buf.withUnsafeMutableBytes { pread(eventsFD, $0.baseAddress, $0.count, 0) }
        guard n > 0 else { return true }
        return !String(decoding: buf[0..<n], as: UTF8.self).contains("populated 0")
    }
}

/// Job cgroups are slots, `job-<n>`, one per running job, reused: creating and destroying a
/// cgroup per job cost ~0.2 ms (a fifth of a warm job). A slot keeps its directory and its
/// `cgroup.events` and `cgroup.procs` open, so that a job costs two reads of them, not
/// opens. It comes back once its job has ended and nothing is left in it.
public final class JobCgroups {
    /// The tenant's cgroup node (an fd opened before the sandbox hid the host). -1: no job cgroups.
    public let parentFD: Int32
    private var free: [JobCgroup] = []
    private var next = 0

    public init(parentFD: Int32) { self.parentFD = parentFD }

    /// A free job cgroup below the tenant's node; nil when there are no job cgroups or none can
    /// be made (the job then runs in the worker's cgroup; its process group is still killed).
    public func make() -> JobCgroup? {
        guard parentFD >= 0 else { return nil }
        if let slot = free.popLast() { return slot }
        next += 1
        let name = CgroupFile.jobSlot(next)
        let made = mkdirat(parentFD, name, 0o755) == 0
        guard made || errno == EEXIST else { return nil }
        let dir = openat(parentFD, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        guard dir >= 0 else { return nil }
        if !made {
            // A slot the supervisor made ahead (job-1) is usable once it has been handed to us;
            // one caught half-made is passed over (cloning into it would fail with EACCES).
            var st = stat()
            guard fstatat(dir, CgroupFile.procs, &st, 0) == 0, st.st_uid == getuid() || getuid() == 0 else {
                close(dir)
                return next < 64 ? make() : nil
            }
        }
        let events = openat(dir, CgroupFile.events, O_RDONLY | O_CLOEXEC)
        let procs = openat(dir, CgroupFile.procs, O_RDONLY | O_CLOEXEC)
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
    public func kill(_ cgroup: JobCgroup) {
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
            if let pid = Int32(String(decoding: line, as: UTF8.self)), pid > 1 { Glibc.kill(pid, SIGKILL) }
        }
    }

    /// Returns a job's slot to the pool once nothing is left in it (`cgroup.events`:
    /// populated 0); false while processes are still dying.
    public func release(_ cgroup: JobCgroup) -> Bool {
        guard !cgroup.populated else {
            kill(cgroup) // something survived (a fork racing the kill): again
            return false
        }
        free.append(cgroup)
        return true
    }
}
