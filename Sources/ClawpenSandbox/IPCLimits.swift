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
/// The worker writes them while it is still root, through the /proc it has just mounted and
/// before /proc/sys is made read-only (a write to /proc/sys/kernel/shm* acts on the IPC
/// namespace of the writer; the host's /proc/sys may be read-only, as systemd's
/// ProtectKernelTunables makes it for the supervisor and everything it starts).
/// A tenant's segments go when its worker stops: the namespace dies with its last process (the
/// worker is PID 1 of the tenant's pid namespace, so its jobs die with it), and the kernel then
/// removes every segment left in it (shm_exit_ns).
enum IPCLimits {
    /// The values written for a memory limit of `bytes`: (shmmax in bytes, shmall in pages, shmmni).
    static func values(forMemoryBytes bytes: UInt64, pageSize: UInt64) -> (shmmax: UInt64, shmall: UInt64, shmmni: UInt64) {
        let pages = max(1, bytes / max(pageSize, 1))
        // One segment per MiB of the limit, between 16 and the kernel's default of 4096.
        let segments = min(4096, max(16, bytes >> 20))
        return (bytes, pages, segments)
    }

    /// `proc`: an fd of the worker's fresh /proc.
    static func apply(_ plan: SandboxPlan, proc: Int32) throws(StepFailure) {
        guard plan.shmMaxBytes > 0 else { return }
        let v = values(forMemoryBytes: plan.shmMaxBytes, pageSize: UInt64(sysconf(Int32(_SC_PAGESIZE))))
        for (name, value) in [("shmmax", v.shmmax), ("shmall", v.shmall), ("shmmni", v.shmmni)] {
            let path = "/proc/sys/kernel/" + name
            let fd = openat(proc, "sys/kernel/" + name, O_WRONLY | O_NOFOLLOW | O_CLOEXEC)
            guard fd >= 0 else { throw StepFailure(step: "set kernel.\(name)", errno: errno, detail: path) }
            let text = Array("\(value)\n".utf8)
            let n = text.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            let e = errno
            close(fd)
            guard n == text.count else { throw StepFailure(step: "set kernel.\(name)", errno: n < 0 ? e : EIO, detail: "\(value)") }
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
