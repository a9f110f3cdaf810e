import CClawpenShim
import ClawpenSystem
import ClawpenWire
import Glibc

/// SysV shared memory of the tenant's own IPC namespace, bounded by its memory limit.
///
/// A worker is cloned into a new IPC namespace (CLONE_NEWIPC), whose shm limits start at the
/// kernel's defaults (shmmax and shmall practically unlimited, shmmni 4096). Without a memory
/// controller nothing else would bound a segment that a job makes and leaves behind: it is not a
/// mapping of any process, so RLIMIT_AS does not see it. With one, the pages are charged to the
/// tenant's cgroup; these limits then only make an oversized shmget fail at once instead of the
/// job being OOM-killed later.
///
/// The worker writes them itself, while it is still root, at the start of its part of the
/// checklist: a write to /proc/sys/kernel/shm* acts on the IPC namespace of the writer, so the
/// supervisor (which may mount the worker's /proc) must not; and they go through a procfs
/// instance of the worker's own that is never attached to a path (cp_write_shm_limits), since
/// the /proc it sees may be read-only (systemd's ProtectKernelTunables, the sandbox's cover).
enum IPCLimits {
    /// The values written for a memory limit of `bytes`: (shmmax in bytes, shmall in pages, shmmni).
    static func values(forMemoryBytes bytes: UInt64, pageSize: UInt64) -> (shmmax: UInt64, shmall: UInt64, shmmni: UInt64) {
        let pages = max(1, bytes / max(pageSize, 1))
        // One segment per MiB of the limit, between 16 and the kernel's default of 4096.
        let segments = min(4096, max(16, bytes >> 20))
        return (bytes, pages, segments)
    }

    /// The checklist step (worker side).
    static func apply(_ ctx: SetupContext) throws(StepFailure) {
        let plan = ctx.plan
        guard plan.shmMaxBytes > 0 else { return }
        let v = values(forMemoryBytes: plan.shmMaxBytes, pageSize: UInt64(sysconf(Int32(_SC_PAGESIZE))))
        let names = ["shmmax", "shmall", "shmmni"], values = [v.shmmax, v.shmall, v.shmmni]
        var failed: Int32 = -1
        let rc = cp_write_shm_limits(v.shmmax, v.shmall, v.shmmni, &failed)
        guard rc == 0 else {
            let name = failed >= 0 ? "kernel." + names[Int(failed)] : "a procfs of the worker's own"
            throw StepFailure(step: "set \(name)", errno: errno, detail: failed >= 0 ? "\(values[Int(failed)])" : "fsopen/fsmount proc")
        }
    }
}

extension IPCLimits {
    /// The step as `clawpen` prints it.
    static func describe(_ plan: SandboxPlan) -> String {
        guard plan.shmMaxBytes > 0 else { return "SysV shm limits of the IPC namespace left at the kernel's defaults" }
        let v = values(forMemoryBytes: plan.shmMaxBytes, pageSize: UInt64(sysconf(Int32(_SC_PAGESIZE))))
        return "kernel.shmmax \(v.shmmax), shmall \(v.shmall) pages, shmmni \(v.shmmni) in the IPC namespace (from memory_max)"
    }
}
