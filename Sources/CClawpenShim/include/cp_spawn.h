// cp_spawn.h — the fork-to-exec path. Between fork and exec only async-signal-safe calls are
// allowed: the supervisor is multithreaded (NIO), so another thread may hold the malloc lock at the
// moment of the fork, and Swift there (retain/release, allocation) could deadlock. cp_spawn does
// the clone and every child step in C with raw syscalls, and reports the failing step and errno
// over an O_CLOEXEC pipe.
#ifndef CP_SPAWN_H
#define CP_SPAWN_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/resource.h>

#ifdef __cplusplus
extern "C" {
#endif

/// Steps of cp_spawn's child, reported with errno when one fails.
enum cp_spawn_step {
    CP_STEP_NONE = 0,
    CP_STEP_CLONE = 1,
    CP_STEP_SIGNALS = 2,
    CP_STEP_PDEATHSIG = 3,
    CP_STEP_SETSID = 4,
    CP_STEP_DUP_FDS = 5,
    CP_STEP_CLOSE_FDS = 6,
    CP_STEP_CHDIR = 7,
    CP_STEP_RLIMIT = 8,
    CP_STEP_EXEC = 9,
    CP_STEP_SECCOMP = 10,
    CP_STEP_SETNS = 11,
    CP_STEP_LANDLOCK = 12,
    CP_STEP_CTTY = 13,
};

/// Human-readable name of a step ("exec", "chdir", ...), for error messages.
const char *cp_spawn_step_name(int step);

#define CP_MAX_RLIMITS 8
#define CP_MAX_FDS 8

struct cp_rlimit {
    int resource;
    uint64_t soft;
    uint64_t hard;
};

/// Everything the child needs, prepared by the parent before the clone.
struct cp_spawn_request {
    const char *path;          ///< absolute path of the executable
    char *const *argv;         ///< NULL-terminated
    char *const *envp;         ///< NULL-terminated
    const char *cwd;           ///< NULL: inherit

    /// fd_sources[i] becomes fd i in the child (i < fd_count); -1 opens /dev/null... no: -1 is not
    /// allowed, the caller opens /dev/null itself. All other descriptors are closed at exec.
    int fd_sources[CP_MAX_FDS];
    int fd_count;

    int new_session;           ///< setsid(): own session and process group (job kill by -pgid)
    int parent_death_signal;   ///< 0: none; else PR_SET_PDEATHSIG
    uint64_t clone_flags;      ///< namespace flags (CLONE_NEW*); 0 for none
    int cgroup_fd;             ///< -1: none; else CLONE_INTO_CGROUP target directory fd
    mode_t umask_value;

    struct cp_rlimit rlimits[CP_MAX_RLIMITS];
    int rlimit_count;

    /// A seccomp program (struct sock_filter array) the child installs just before exec, on top
    /// of whatever filter it inherits; NULL/0 for none. Needs no_new_privs.
    const void *seccomp_program;
    size_t seccomp_len;

    /// >= 0: a network namespace (fd of /proc/.../ns/net) the child joins first, instead of
    /// CLONE_NEWNET making one during the clone (cp_netns_create makes them ahead of need).
    int netns_fd;
    /// > 0: written to /proc/self/oom_score_adj before exec (raising it needs no privilege). A
    /// job sets 1000 so that, when its tenant's cgroup runs out of memory, the kernel kills the
    /// job rather than the tenant's worker. 0: left as inherited.
    int oom_score_adj;

    /// 0: every signal's disposition is reset to the default in the child (posix_spawn's
    /// way). Else only the signals in this mask (bit n-1 for signal n): for a caller that has
    /// installed no handlers, only what it ignores needs resetting (ignored signals survive
    /// exec; handlers do not), which saves the job ~60 system calls.
    uint64_t reset_signal_mask;

    /// > 0: a Landlock ruleset (cp_landlock_job_ruleset) the child enters a domain of its own
    /// from, just before exec (cp_landlock_restrict). 0: none (a zeroed request has none).
    int landlock_ruleset_fd;

    /// Non-zero (with new_session): fd 0 is a terminal that becomes the child's controlling
    /// terminal (TIOCSCTTY), as a shell's job on a terminal has it (job control, ctrl-C).
    int controlling_tty;
};

/// Spawns the child: clone(CLONE_VM|CLONE_VFORK) like posix_spawn (no copy of the caller's
/// address space), or raw clone3 with CLONE_INTO_CGROUP when cgroup_fd >= 0. Returns its pid
/// (> 0) once it has exec'd, or -1 with *failed_step and *failed_errno set to the step that failed
/// (in the parent for CP_STEP_CLONE, in the child otherwise; the child has then already exited and
/// been reaped).
pid_t cp_spawn(const struct cp_spawn_request *req, int *failed_step, int *failed_errno);

#ifdef __cplusplus
}
#endif
#endif
