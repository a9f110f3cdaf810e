import CClawpenShim
import Glibc

/// What this host's kernel enforces besides the cgroup controllers, probed once, and the
/// warnings that `serve`'s log and `status.supervisor.warnings` give for every limit that is
/// weaker than the policy says. An operator must never read a limit in `status` that is not in
/// force.
enum HostEnforcement {
    /// The kernel's Landlock ABI (0: none), which the jobs' domains are made for (JobIsolation).
    static let landlockABI: Int = {
        let v = cp_landlock_abi()
        return v < 0 ? 0 : Int(v)
    }()

    /// `enforcement.job_isolation`: how jobs of one tenant are kept from each other.
    static func jobIsolation(sandboxed: Bool) -> String {
        guard sandboxed else { return "none" }
        switch landlockABI {
        case 0: return "none"
        case 1..<6: return "landlock-no-signal-scope"
        default: return "landlock"
        }
    }

    /// The warnings for this host: each names what is weaker than the policy and how to fix it.
    static func warnings(controllers: Set<String>, sandboxed: Bool, disk: DiskQuotas.Support) -> [String] {
        guard sandboxed else { return ["the supervisor is not root: jobs run unsandboxed, and no limit but the router's holds"] }
        var out: [String] = []
        if !controllers.contains("memory") {
            out.append(
                "memory: no memory controller for the tenant cgroups, so memory_max is only RLIMIT_AS on each job process (per-process-rlimit): several processes each get the whole limit, a memfd that is never mapped and SysV shm are not counted. It is not a memory limit for the tenant; run with cgroup v2 controllers delegated (systemd Delegate=yes; `serve --require-cgroup-limits` refuses to start without them)"
            )
        }
        if !controllers.contains("pids") {
            out.append("pids: no pids controller, so pids_max is RLIMIT_NPROC on the tenant's uid (it counts the uid's processes and threads, all of them)")
        }
        if !controllers.contains("cpu") {
            out.append("cpu: no cpu controller, so nothing limits cpu_max (the router's cpu_seconds_per_hour budget still holds)")
        }
        switch landlockABI {
        case 0:
            out.append(
                "job_isolation: this kernel has no Landlock (not built in, or not in the boot's lsm= list), so jobs of one tenant can read each other's /proc/<pid>/environ and memory and signal each other"
            )
        case 1..<6:
            out.append(
                "job_isolation: Landlock ABI \(landlockABI) (below 6) has no signal scope: jobs of one tenant cannot ptrace or read each other, but can still signal each other"
            )
        default: break
        }
        if case .none(let why) = disk { out.append("disk: \(why), so disk_max and inodes_max are not enforced (disk=none)") }
        return out
    }
}
