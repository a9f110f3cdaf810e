import CClawpenShim
import ClawpenWire
import Glibc

/// Starts one clawpen-worker for a tenant, connected by a socketpair (its end becomes fd 3).
/// The clone and everything up to exec happen in C (cp_spawn): the supervisor is multithreaded.
enum WorkerSpawner {
    struct Spawned {
        let pid: Int32
        let socketFD: Int32
    }

    struct Failure: Error, CustomStringConvertible {
        let step: String
        let errno: Int32
        var description: String { "cannot start the worker: \(step) failed: \(FileIO.errnoString(errno))" }
    }

    static func spawn(workerPath: String, tenant: TenantName, workspace: String) throws(Failure) -> Spawned {
        var pair: [Int32] = [-1, -1]
        guard cp_socketpair(&pair) == 0 else { throw Failure(step: "socketpair", errno: errno) }
        let devNull = open("/dev/null", O_RDWR | O_CLOEXEC)
        guard devNull >= 0 else {
            let e = errno; close(pair[0]); close(pair[1]); throw Failure(step: "open /dev/null", errno: e)
        }
        defer { close(devNull) }
        let argv = CStringArray([workerPath, "--tenant", tenant.value, "--root", workspace, "--fd", "3"])
        // The worker gets a fixed, minimal environment: nothing of the daemon's leaks to tenants.
        let envp = CStringArray(["PATH=/usr/local/bin:/usr/bin:/bin", "LANG=C.UTF-8"])
        var req = cp_spawn_request()
        var step: Int32 = 0, spawnErrno: Int32 = 0
        let pid = workerPath.withCString { cPath -> pid_t in
            req.path = cPath
            req.argv = UnsafePointer(argv.pointer)
            req.envp = UnsafePointer(envp.pointer)
            req.cwd = nil
            req.fd_count = 4
            withUnsafeMutableBytes(of: &req.fd_sources) { raw in
                let fds = raw.bindMemory(to: Int32.self)
                fds[0] = devNull
                fds[1] = 2        // worker diagnostics go where the daemon's go (journald)
                fds[2] = 2
                fds[3] = pair[1]
            }
            req.new_session = 1
            req.parent_death_signal = SIGKILL
            req.clone_flags = 0
            req.cgroup_fd = -1
            req.umask_value = 0o077
            req.rlimit_count = 0
            return cp_spawn(&req, &step, &spawnErrno)
        }
        close(pair[1])
        guard pid > 0 else {
            close(pair[0])
            throw Failure(step: String(cString: cp_spawn_step_name(step)), errno: spawnErrno)
        }
        return Spawned(pid: pid, socketFD: pair[0])
    }
}
