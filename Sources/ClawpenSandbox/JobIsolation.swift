import CClawpenShim
import ClawpenSystem
import ClawpenWire
import Glibc

/// Jobs of one tenant cannot read or steal from each other: every job enters a Landlock domain
/// of its own just before exec (cp_spawn's child, cp_landlock_restrict). Landlock lets a process
/// ptrace only processes of its own domain or of domains nested below it, and the kernel asks
/// the same question (ptrace_may_access) for /proc/<pid>/mem, environ, maps, fd, for
/// pidfd_getfd and process_vm_readv. Two jobs have sibling domains, so neither reaches the
/// other; a job's own children share its domain (a shell still waits on and signals its
/// pipeline); the worker has no domain and still manages every job. From ABI 6 the domain is
/// also scoped: no signal to a process outside it (LANDLOCK_SCOPE_SIGNAL) and no connection to
/// an abstract Unix socket bound outside it (LANDLOCK_SCOPE_ABSTRACT_UNIX_SOCKET).
///
/// The alternatives weighed: non-dumpable jobs (PR_SET_DUMPABLE 0 is reset by every execve of
/// a readable binary, so it cannot hold for a job's programs); a pid namespace per job (hides
/// siblings, but costs a clone of a namespace per job and makes every job a PID 1 that must
/// reap). Landlock costs two system calls per job and needs no privilege (no_new_privs is set).
public enum JobIsolation {
    /// The ruleset every job's domain is made from (an fd kept by the worker), or 0 for none.
    public static func ruleset(abi: UInt32) throws(StepFailure) -> Int32 {
        guard abi > 0 else { return 0 }
        let scopes: UInt64 = abi >= 6 ? (CP_LANDLOCK_SCOPE_SIGNAL | CP_LANDLOCK_SCOPE_ABSTRACT_UNIX_SOCKET) : 0
        let fd = cp_landlock_job_ruleset(scopes)
        guard fd >= 0 else { throw StepFailure(step: "landlock ruleset for jobs", errno: errno, detail: "ABI \(abi)") }
        guard fd > 0 else { close(fd); throw StepFailure(step: "landlock ruleset for jobs", errno: EBADF, detail: "fd 0") }
        return fd
    }
}
