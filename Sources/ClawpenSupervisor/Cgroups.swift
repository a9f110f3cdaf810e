import ClawpenCore
import ClawpenPolicy
import ClawpenWire
import Glibc

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
final class CgroupTree: @unchecked Sendable {
    let root: String          // the daemon's cgroup at start
    let base: String
    let controllers: Set<String>
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
    static func setUp(_ info: CgroupInfo) -> (CgroupTree?, String?) {
        guard info.mode != .none, let own = info.path else { return (nil, "no cgroup2 mount") }
        let isHierarchyRoot = CgroupInfo.cgroup2MountPoint() == own
        let alone = !isHierarchyRoot && processes(in: own) == [getpid()]
        removeStale(in: own)
        if alone {
            for name in children(of: own) where name.hasPrefix("tenant-") || name.hasPrefix("spare-") {
                removeTree(own + "/" + name)
            }
        }
        let ownsBase = !alone
        let base = ownsBase ? "\(own)/\(prefix)\(getpid())" : own
        if ownsBase, mkdir(base, 0o755) != 0, errno != EEXIST {
            return (nil, "cannot create \(base): \(FileIO.errnoString(errno))")
        }
        let leaf = base + "/supervisor"
        guard mkdir(leaf, 0o755) == 0 || errno == EEXIST else { return (nil, "cannot create \(leaf): \(FileIO.errnoString(errno))") }
        guard write(leaf + "/cgroup.procs", "\(getpid())") else {
            return (nil, "cannot move the supervisor into \(leaf): \(FileIO.errnoString(errno))")
        }
        // The root may hand controllers down although it holds processes (the one exception to
        // the no-internal-process rule): make sure it does, for the base below it.
        if isHierarchyRoot { enable(["cpu", "memory", "pids"], in: own) }
        // Hand the controllers the base has to the tenant nodes. The base holds no process (the
        // daemon sits in its `supervisor` leaf), so this is allowed.
        let enabled = enable(["cpu", "memory", "pids"], in: base)
        return (CgroupTree(root: own, base: base, controllers: enabled, ownsBase: ownsBase), nil)
    }

    /// Enables those of `wanted` that `path` has in its subtree; returns what is enabled there.
    @discardableResult
    private static func enable(_ wanted: Set<String>, in path: String) -> Set<String> {
        func words(_ file: String) -> Set<String> {
            Set((FileIO.readSmallFile(path + "/" + file) ?? "").split(whereSeparator: { $0 == " " || $0 == "\n" }).map(String.init))
        }
        let missing = words("cgroup.controllers").intersection(wanted).subtracting(words("cgroup.subtree_control"))
        if !missing.isEmpty { _ = write(path + "/cgroup.subtree_control", missing.sorted().map { "+" + $0 }.joined(separator: " ")) }
        return words("cgroup.subtree_control").intersection(wanted)
    }

    /// The pids in a cgroup (its cgroup.procs).
    static func processes(in path: String) -> [Int32] {
        (FileIO.readSmallFile(path + "/cgroup.procs") ?? "").split(separator: "\n").compactMap { Int32($0) }
    }

    /// Names of the subdirectories (child cgroups) of `path`.
    static func children(of path: String) -> [String] {
        guard let dir = opendir(path) else { return [] }
        defer { closedir(dir) }
        var names: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if entry.pointee.d_type == UInt8(DT_DIR), name != ".", name != ".." { names.append(name) }
        }
        return names
    }

    /// Trees of daemons that are gone (killed without a chance to clean up).
    private static func removeStale(in own: String) {
        for name in children(of: own) {
            guard name.hasPrefix(prefix), let pid = Int32(name.dropFirst(prefix.count)), pid != getpid(), kill(pid, 0) != 0, errno == ESRCH else { continue }
            removeTree(own + "/" + name)
        }
    }

    /// cgroup.kill, then rmdir depth-first (a populated cgroup cannot be removed: retried briefly).
    static func removeTree(_ path: String) {
        _ = write(path + "/cgroup.kill", "1")
        for child in children(of: path) { removeTree(path + "/" + child) }
        for _ in 0..<200 {
            if rmdir(path) == 0 || errno == ENOENT { return }
            usleep(5_000)
        }
    }

    func tenantPath(_ tenant: TenantName) -> String { "\(base)/tenant-\(tenant.value)" }

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
            for file in ["cgroup.procs", "cgroup.threads", "cgroup.subtree_control"] {
                guard fchownat(dir, file, uid_t(owner), gid_t(owner), AT_SYMLINK_NOFOLLOW) == 0 else { throw .create(node + "/" + file, errno) }
            }
        }
        return node
    }

    /// The cgroup a fresh worker of `tenant` is cloned into (close the fd after the clone).
    func leafForTenant(_ tenant: TenantName, owner: Int?) throws(CgroupError) -> Int32 {
        let node = try makeTenantNode(tenant, owner: owner)
        let fd = open(node, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { throw .create(node, errno) }
        return fd
    }

    /// The tenant's first job slot, `job-1`, made by the supervisor while the new worker builds
    /// its sandbox, delegated to the tenant's uid like the node. The worker reuses it for its
    /// first job instead of creating it while that job waits. Best effort: the worker makes it
    /// when it is missing, and passes it over if it is not yet its own (JobLauncher).
    func prepareFirstJobSlot(_ tenant: TenantName, owner: Int?) {
        let slot = tenantPath(tenant) + "/job-1"
        guard mkdir(slot, 0o755) == 0 else { return }
        if let owner {
            let dir = open(slot, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
            guard dir >= 0 else { return }
            defer { close(dir) }
            _ = fchown(dir, uid_t(owner), gid_t(owner))
            for file in ["cgroup.procs", "cgroup.threads", "cgroup.subtree_control"] {
                _ = fchownat(dir, file, uid_t(owner), gid_t(owner), AT_SYMLINK_NOFOLLOW)
            }
        }
    }

    private var spareCounter = 0

    /// A node for a spare worker: (its path, the leaf fd to clone into).
    func leafForSpare() throws(CgroupError) -> (node: String, fd: Int32) {
        spareCounter += 1
        let node = "\(base)/spare-\(spareCounter)"
        return (node, try makeLeaf(node))
    }

    /// A spare joins the tenant: moved into its node (cgroup v2 forbids renaming a node, so this
    /// is a migration and waits for an RCU grace period), its own node removed.
    func adopt(spare pid: Int32, spareNode: String, tenant: TenantName, owner: Int?) throws(CgroupError) {
        let node = try makeTenantNode(tenant, owner: owner)
        guard Self.write(node + "/cgroup.procs", "\(pid)") else { throw .move(node, errno) }
        _ = rmdir(spareNode + "/worker")
        _ = rmdir(spareNode)
    }

    /// Writes the tenant's limits where the controllers exist; returns which are now enforced.
    func applyLimits(_ tenant: TenantName, _ limits: TierLimits) -> Set<String> {
        let node = tenantPath(tenant)
        var enforced: Set<String> = []
        if controllers.contains("memory") {
            if Self.write(node + "/memory.max", "\(limits.memoryMaxBytes)") { enforced.insert("memory") }
            _ = Self.write(node + "/memory.swap.max", "0")
        }
        if controllers.contains("pids"), Self.write(node + "/pids.max", "\(limits.pidsMax)") { enforced.insert("pids") }
        if controllers.contains("cpu") {
            if Self.write(node + "/cpu.max", limits.cpuMaxCgroupString) { enforced.insert("cpu") }
            _ = Self.write(node + "/cpu.weight", "\(min(10_000, max(1, limits.cpuWeight * 100)))")
        }
        return enforced
    }

    /// Removes a spare's node (the spare is dead).
    func removeSpare(_ node: String) { Self.removeTree(node) }

    /// One attempt to kill whatever is left of the tenant and remove its node, without waiting
    /// (the supervisor retries on its loop). true when the node is gone.
    func tryRemove(tenant: TenantName) -> Bool {
        let node = tenantPath(tenant)
        _ = Self.write(node + "/cgroup.kill", "1")
        for child in Self.children(of: node) where rmdir(node + "/" + child) != 0 && errno != ENOENT { return false }
        return rmdir(node) == 0 || errno == ENOENT
    }

    /// At shutdown: every tenant node, then (if the daemon made it) the base.
    func removeAll() {
        for name in Self.children(of: base) where name.hasPrefix("tenant-") || name.hasPrefix("spare-") {
            Self.removeTree(base + "/" + name)
        }
        guard ownsBase else { return }
        _ = Self.write(root + "/cgroup.procs", "\(getpid())") // leave the leaf so it can go
        _ = rmdir(base + "/supervisor")
        _ = rmdir(base)
    }

    // MARK: Readings (nil when the file is not there: never a made-up 0)

    func cpuUsageMicros(_ tenant: TenantName) -> Int64? {
        guard let stat = FileIO.readSmallFile(tenantPath(tenant) + "/cpu.stat") else { return nil }
        for line in stat.split(separator: "\n") where line.hasPrefix("usage_usec ") {
            return Int64(line.dropFirst("usage_usec ".count))
        }
        return nil
    }

    /// Freezes (or thaws) every process of the tenant (cgroup.freeze: a core file of every
    /// non-root cgroup v2 node, with or without controllers). false: it could not be written.
    func setFrozen(_ tenant: TenantName, _ frozen: Bool) -> Bool {
        Self.write(tenantPath(tenant) + "/cgroup.freeze", frozen ? "1" : "0")
    }

    func memoryCurrent(_ tenant: TenantName) -> Int64? { readNumber(tenantPath(tenant) + "/memory.current") }
    func pidsCurrent(_ tenant: TenantName) -> Int64? { readNumber(tenantPath(tenant) + "/pids.current") }

    /// memory.events' oom_kill count of the tenant node.
    func oomKills(_ tenant: TenantName) -> Int64? {
        guard let events = FileIO.readSmallFile(tenantPath(tenant) + "/memory.events") else { return nil }
        for line in events.split(separator: "\n") where line.hasPrefix("oom_kill ") { return Int64(line.dropFirst("oom_kill ".count)) }
        return nil
    }

    /// What the tenant's cgroup files hold now, and which limits equal the policy's (`enforced`).
    struct InForce {
        var memoryMax: Int64?
        var pidsMax: Int64?
        var cpuMax: String?
        var enforced: Set<String>
    }

    func limitsInForce(_ tenant: TenantName, _ limits: TierLimits) -> InForce {
        let node = tenantPath(tenant)
        let memory = readNumber(node + "/memory.max")
        let pids = readNumber(node + "/pids.max")
        let cpu = FileIO.readSmallFile(node + "/cpu.max")?.trimmingCharacters(in: " \n")
        var enforced: Set<String> = []
        if controllers.contains("memory"), memory == Int64(limits.memoryMaxBytes) { enforced.insert("memory") }
        if controllers.contains("pids"), pids == Int64(limits.pidsMax) { enforced.insert("pids") }
        if controllers.contains("cpu"), let cpu, cpu == limits.cpuMaxCgroupString { enforced.insert("cpu") }
        return InForce(memoryMax: memory, pidsMax: pids, cpuMax: cpu, enforced: enforced)
    }

    private func readNumber(_ path: String) -> Int64? {
        FileIO.readSmallFile(path).flatMap { Int64($0.trimmingCharacters(in: " \n")) }
    }

    @discardableResult
    static func write(_ path: String, _ value: String) -> Bool {
        let fd = open(path, O_WRONLY | O_NOFOLLOW | O_CLOEXEC)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        let bytes = Array(value.utf8)
        return bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) } == bytes.count
    }
}

enum CgroupError: Error, CustomStringConvertible {
    case create(String, Int32)
    case move(String, Int32)

    /// As a failed worker start: the stage, errno and path kept apart.
    var workerFailure: WorkerFailure {
        switch self {
        case .create(let p, let e): WorkerFailure(.start, stage: "create cgroup", errno: e, errnoText: FileIO.errnoString(e), detail: p)
        case .move(let p, let e): WorkerFailure(.start, stage: "move into cgroup", errno: e, errnoText: FileIO.errnoString(e), detail: p)
        }
    }
    var description: String {
        switch self {
        case .create(let p, let e): return "cannot create cgroup \(p): \(FileIO.errnoString(e))"
        case .move(let p, let e): return "cannot move the worker into \(p): \(FileIO.errnoString(e))"
        }
    }
}

extension String {
    func trimmingCharacters(in set: String) -> String {
        var s = Substring(self)
        while let f = s.first, set.contains(f) { s = s.dropFirst() }
        while let l = s.last, set.contains(l) { s = s.dropLast() }
        return String(s)
    }
}
