import CClawpenShim
import ClawpenCore
import ClawpenPolicy
import ClawpenProtocol
import Glibc

/// `tenant.inspect`: what the tenant's running worker actually has, read from the kernel
/// (/proc/<worker>/status, its namespace links, its root, its cgroup files, the interfaces of its
/// network namespace, its disk quota), each fact beside what the policy asks for. The operator
/// never has to trust a configured value: a fact the kernel does not hold is a mismatch, and
/// `clawpen tenant inspect` exits 1 (docs/protocol.md).
///
/// Every read is of kernel-made files of a process the supervisor spawned and has not reaped
/// (its pid cannot be reused meanwhile), opened with O_NOFOLLOW; symlinks in /proc are read
/// with readlink, never followed.
extension Supervisor {
    struct InspectFact {
        let fact: String
        let actual: String?
        let expected: String
        let ok: Bool
        var note: String? = nil

        var json: JSONValue {
            var o = JSONObjectBuilder()
            o.set("fact", .string(fact))
            o.set("actual", actual)
            o.set("expected", .string(expected))
            o.set("ok", ok)
            o.set("note", note)
            return o.value
        }
    }

    func inspect(tenant rt: TenantState) -> JSONValue {
        var o = JSONObjectBuilder()
        o.set("tenant", .string(rt.name.value))
        o.set("state", .string(rt.state.rawValue))
        guard let w = rt.lifecycle.worker, workers[w.id]?.exited != true else {
            o.set("running", false)
            o.set("worker_pid", nil as Int?)
            o.set("facts", .array([]))
            o.set("mismatches", 0)
            o.set("message", .string("tenant '\(rt.name)' has no running worker (it starts with the tenant's next job): nothing to inspect"))
            return o.value
        }
        let facts = inspectFacts(rt, pid: w.pid)
        o.set("running", true)
        o.set("worker_pid", Int(w.pid))
        o.set("facts", .array(facts.map(\.json)))
        o.set("mismatches", facts.filter { !$0.ok }.count)
        return o.value
    }

    private func inspectFacts(_ rt: TenantState, pid: Int32) -> [InspectFact] {
        var facts: [InspectFact] = []
        let limits = rt.limits
        let uid = "\(rt.record.uid)"
        let status = Files.readSmallFile("/proc/\(pid)/status") ?? ""
        func field(_ name: String) -> String? {
            status.split(separator: "\n").first { $0.hasPrefix(name + ":") }
                .map { String($0.dropFirst(name.count + 1)).split(whereSeparator: { $0 == " " || $0 == "\t" }).joined(separator: " ") }
        }
        guard sandboxEnabled else {
            return [InspectFact(fact: "sandbox", actual: "off", expected: "on", ok: false, note: "the supervisor is not root: workers run unsandboxed")]
        }
        // Identity: all four of real, effective, saved, filesystem ids.
        let ids = { (v: String?) in v.map { Set($0.split(separator: " ").map(String.init)) } }
        facts.append(InspectFact(fact: "uid", actual: field("Uid"), expected: uid, ok: ids(field("Uid")) == [uid]))
        facts.append(InspectFact(fact: "gid", actual: field("Gid"), expected: uid, ok: ids(field("Gid")) == [uid]))
        let groups = field("Groups") ?? ""
        facts.append(InspectFact(fact: "supplementary groups", actual: groups.isEmpty ? "none" : groups, expected: "none", ok: groups.isEmpty))
        for cap in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
            let v = field(cap)
            facts.append(
                InspectFact(
                    fact: "capabilities \(cap.dropFirst(3).lowercased())", actual: v, expected: "0000000000000000",
                    ok: v.map { UInt64($0, radix: 16) == 0 } ?? false))
        }
        facts.append(InspectFact(fact: "no_new_privs", actual: field("NoNewPrivs"), expected: "1", ok: field("NoNewPrivs") == "1"))
        let wantsFilter = !(seccompPrograms[limits.seccompProfile] ?? []).isEmpty
        facts.append(
            InspectFact(
                fact: "seccomp mode", actual: field("Seccomp"), expected: wantsFilter ? "2 (filter)" : "0",
                ok: field("Seccomp") == (wantsFilter ? "2" : "0"), note: "profile \(limits.seccompProfile)"))
        // The worker inherits the supervisor's own filters (systemd installs some for the unit) and adds one.
        let own =
            Int(
                Files.readSmallFile("/proc/self/status")?.split(separator: "\n").first { $0.hasPrefix("Seccomp_filters:") }?
                    .split(separator: "\t").last.map(String.init) ?? "0") ?? 0
        let wantFilters = "\(own + (wantsFilter ? 1 : 0))"
        facts.append(
            InspectFact(
                fact: "seccomp filters", actual: field("Seccomp_filters"), expected: wantFilters,
                ok: field("Seccomp_filters") == wantFilters, note: own > 0 ? "\(own) inherited from the supervisor" : nil))
        // Namespaces: each of the worker's differs from the supervisor's own.
        let otherNetns = Set(
            core.tenants.values.compactMap { t -> String? in
                guard t.name != rt.name, let p = t.lifecycle.worker?.pid else { return nil }
                return Self.readLink("/proc/\(p)/ns/net")
            })
        for ns in ["mnt", "pid", "net", "ipc", "uts", "cgroup"] {
            let theirs = Self.readLink("/proc/\(pid)/ns/\(ns)"), mine = Self.readLink("/proc/self/ns/\(ns)")
            var ok = theirs != nil && theirs != mine
            var expected = "not the supervisor's (\(mine ?? "?"))"
            if ns == "net" {
                expected += " nor another worker's"
                if let theirs, otherNetns.contains(theirs) { ok = false }
            }
            facts.append(
                InspectFact(
                    fact: "namespace \(ns)", actual: theirs, expected: expected, ok: ok,
                    note: theirs == nil ? Self.unreadable : nil))
        }
        // The worker's root and home, by identity: after pivot_root the root's path reads "/" from
        // outside. The root must be a read-only root of its own (the skeleton: not the host's /,
        // not the workspace), and its /home the workspace's home (lstat through the kernel's
        // /proc/<pid>/root: the skeleton is root's and read-only, and the last component is not
        // followed; the home on the host is opened without following a link).
        let workspace = workspacePath(rt.name)
        var rootStat = stat(), hostRoot = stat(), rootFS = statvfs()
        let rootKnown = stat("/proc/\(pid)/root", &rootStat) == 0 && statvfs("/proc/\(pid)/root", &rootFS) == 0
        _ = stat("/", &hostRoot)
        let readOnly = rootKnown && (rootFS.f_flag & UInt(ST_RDONLY)) != 0
        let ownRoot = rootKnown && !(rootStat.st_dev == hostRoot.st_dev && rootStat.st_ino == hostRoot.st_ino)
        facts.append(
            InspectFact(
                fact: "root", actual: rootKnown ? "\(ownRoot ? "its own" : "THE HOST'S"), \(readOnly ? "read-only" : "WRITABLE")" : nil,
                expected: "its own, read-only", ok: ownRoot && readOnly, note: rootKnown ? nil : Self.unreadable))
        var homeStat = stat(), wsHome = stat()
        let homeKnown = lstat("/proc/\(pid)/root/home", &homeStat) == 0
        let homeFD = open(workspace + "/home", O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        let wsKnown = homeFD >= 0 && fstat(homeFD, &wsHome) == 0
        if homeFD >= 0 { close(homeFD) }
        let sameHome = homeKnown && wsKnown && homeStat.st_dev == wsHome.st_dev && homeStat.st_ino == wsHome.st_ino
        facts.append(
            InspectFact(
                fact: "home",
                actual: homeKnown ? (sameHome ? workspace + "/home" : "another directory (device \(homeStat.st_dev), inode \(homeStat.st_ino))") : nil,
                expected: workspace + "/home", ok: sameHome, note: homeKnown ? nil : Self.unreadable))
        // The cgroup, and the limits read back from the tenant node's files.
        let cgroupLine = Files.readSmallFile("/proc/\(pid)/cgroup")?.split(separator: "\n").first { $0.hasPrefix("0::") }.map { String($0.dropFirst(3)) }
        let mount = CgroupInfo.cgroup2MountPoint() ?? ""
        let actualCgroup = cgroupLine.map { mount + $0 }
        if let cgroups {
            let node = cgroups.tenantPath(rt.name)
            facts.append(InspectFact(fact: "cgroup", actual: actualCgroup, expected: node, ok: actualCgroup == node))
            func read(_ file: String) -> String? {
                Files.readSmallFile(node + "/" + file).map { $0.trimmingSpaces.split(separator: "\n").first.map(String.init) ?? "" }
            }
            let noController = "the file does not exist: no controller, the fallback holds (see status warnings)"
            let mem = read("memory.max")
            facts.append(
                InspectFact(
                    fact: "memory.max", actual: mem, expected: "\(limits.memoryMaxBytes)", ok: mem == "\(limits.memoryMaxBytes)",
                    note: mem == nil ? noController : nil))
            let swap = read("memory.swap.max")
            facts.append(InspectFact(fact: "memory.swap.max", actual: swap, expected: "0", ok: swap == "0", note: swap == nil ? noController : nil))
            let pids = read("pids.max")
            facts.append(
                InspectFact(
                    fact: "pids.max", actual: pids, expected: "\(limits.pidsMax)", ok: pids == "\(limits.pidsMax)",
                    note: pids == nil ? noController : nil))
            let cpu = read("cpu.max")
            facts.append(
                InspectFact(
                    fact: "cpu.max", actual: cpu, expected: limits.cpuMaxCgroupString, ok: cpu == limits.cpuMaxCgroupString,
                    note: cpu == nil ? noController : nil))
        } else {
            facts.append(
                InspectFact(fact: "cgroup", actual: actualCgroup, expected: "a tenant cgroup", ok: false, note: "no cgroup2 hierarchy: no tenant cgroups"))
        }
        // Network: the interfaces of the worker's namespace and which are up.
        let interfaces = Self.interfaces(pid)
        let up = interfaces.filter(\.up).map(\.name).sorted()
        let wantUp: [String] = limits.network == "loopback" || limits.network == "egress" ? ["lo"] : []
        facts.append(
            InspectFact(
                fact: "network interfaces up", actual: up.isEmpty ? "none" : up.joined(separator: " "),
                expected: wantUp.isEmpty ? "none" : wantUp.joined(separator: " "), ok: up == wantUp,
                note: "network = \"\(limits.network)\"; present: \(interfaces.map(\.name).sorted().joined(separator: " "))"))
        // Jobs of the tenant kept apart: the worker holds the Landlock ruleset its jobs' domains come from.
        let holdsRuleset = Self.fdLinks(pid).contains { $0.contains("landlock-ruleset") }
        let wantsRuleset = HostEnforcement.landlockABI > 0
        facts.append(
            InspectFact(
                fact: "job isolation", actual: holdsRuleset ? "landlock ruleset held (ABI \(HostEnforcement.landlockABI))" : "none",
                expected: wantsRuleset ? "landlock ruleset held" : "landlock (the kernel has none)", ok: holdsRuleset && wantsRuleset))
        // Disk: the workspace's project and its limits as the filesystem holds them.
        if let q = diskQuotas.read(tenant: rt.name, projectID: rt.record.uid) {
            facts.append(InspectFact(fact: "disk project", actual: q.project.map { "\($0)" }, expected: uid, ok: q.project.map { "\($0)" } == uid))
            let wantBytes = (UInt64(limits.diskMaxBytes) + 1023) / 1024 * 1024
            facts.append(
                InspectFact(
                    fact: "disk_max", actual: "\(q.bytesLimit)", expected: "\(wantBytes)", ok: q.bytesLimit == wantBytes,
                    note: "used \(q.bytesUsed) bytes"))
            facts.append(
                InspectFact(
                    fact: "inodes_max", actual: "\(q.inodesLimit)", expected: "\(limits.inodesMax)", ok: q.inodesLimit == UInt64(limits.inodesMax),
                    note: "used \(q.inodesUsed)"))
        } else {
            let why: String
            if case .none(let reason) = diskQuotas.support { why = reason } else { why = "the quota could not be read" }
            facts.append(InspectFact(fact: "disk_max", actual: "none", expected: "\(limits.diskMaxBytes)", ok: false, note: why))
        }
        return facts
    }

    /// Why a ptrace-guarded /proc entry of the worker could not be read.
    static var unreadable: String {
        "unreadable (\(errnoString(EACCES)) or \(errnoString(EPERM))): the kernel guards it with a ptrace access check; the supervisor needs CAP_SYS_PTRACE (units/clawpen.service grants it)"
    }

    static func readLink(_ path: String) -> String? {
        var buf = [CChar](repeating: 0, count: 4096)
        let n = readlink(path, &buf, buf.count - 1)
        guard n >= 0 else { return nil }
        return String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// Where the process's open fds point (readlink of /proc/<pid>/fd/*).
    static func fdLinks(_ pid: Int32) -> [String] {
        guard let dir = opendir("/proc/\(pid)/fd") else { return [] }
        defer { closedir(dir) }
        var out: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            guard Int(name) != nil, let link = readLink("/proc/\(pid)/fd/\(name)") else { continue }
            out.append(link)
        }
        return out
    }

    /// The interfaces of process `pid`'s network namespace (/proc/<pid>/net/dev) and whether each is
    /// up (SIOCGIFFLAGS through a socket made in that namespace).
    static func interfaces(_ pid: Int32) -> [(name: String, up: Bool)] {
        let names = (Files.readSmallFile("/proc/\(pid)/net/dev") ?? "").split(separator: "\n").dropFirst(2).compactMap { line -> String? in
            guard let colon = line.firstIndex(of: ":") else { return nil }
            return line[..<colon].trimmingSpaces
        }
        let sock = cp_netns_socket(pid)
        defer { if sock >= 0 { close(sock) } }
        return names.map { name in
            let flags = sock >= 0 ? cp_interface_flags(sock, name) : -1
            return (name, flags >= 0 && (flags & CP_IFF_UP) != 0)
        }
    }
}
