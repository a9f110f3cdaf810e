import Glibc
import Logging

/// What `serve` checks about the host before it serves, after the cgroup tree is set up: the
/// controllers `--require-cgroup-limits` asks for, the tenants' uid range (UIDRange), and the
/// warnings for every limit weaker than the policy (HostEnforcement), logged once here and kept
/// in `status.supervisor.warnings`.
enum StartupChecks {
    static func run(_ config: ServeConfig, cgroup: CgroupInfo, cgroups: CgroupTree?, logger: Logger) throws(ServeError) {
        let controllers = cgroups?.controllers ?? []
        let missing = ["memory", "pids", "cpu"].filter { !controllers.contains($0) }
        if config.requireCgroupLimits && !missing.isEmpty {
            cgroups?.removeAll()
            throw .cgroupLimitsMissing(
                """
                --require-cgroup-limits: the tenant cgroups have no \(missing.joined(separator: ", ")) controller \
                (cgroup \(cgroup.mode.rawValue) at \(cgroup.path ?? "none"), available there: \
                \(cgroup.controllers.isEmpty ? "none" : cgroup.controllers.joined(separator: " "))), so memory_max, pids_max \
                and cpu_max would fall back to per-process rlimits that do not bound a tenant. Fix: run clawpen on a \
                pure cgroup v2 host (systemd.unified_cgroup_hierarchy=1) under systemd with Delegate=yes (units/clawpen.service), \
                or start it as `systemd-run --scope -p Delegate=yes -- clawpen serve ...`; or leave out \
                --require-cgroup-limits to run with the fallbacks (status then says so)
                """)
        }
        if geteuid() == 0 {
            do {
                let line = try UIDRange.register(config.uidRange, subuid: config.subuidPath, subgid: config.subgidPath, stateDir: config.stateDir)
                logger.info("\(line)")
            } catch {
                cgroups?.removeAll()
                throw error
            }
        }
        let disk = DiskQuotas(workspaceRoot: config.workspaceRoot).support
        for w in HostEnforcement.warnings(controllers: controllers, sandboxed: geteuid() == 0, disk: disk) {
            logger.warning("\(w)")
        }
    }
}
