// cp_spawn: clone3 + async-signal-safe child setup + execve. See clawpen_shim.h for why.
#include "clawpen_shim.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/sched.h>
#include <sched.h>
#include <signal.h>
#include <stddef.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif
#ifndef CLONE_INTO_CGROUP
#define CLONE_INTO_CGROUP 0x200000000ULL
#endif

const char *cp_spawn_step_name(int step) {
    switch (step) {
    case CP_STEP_CLONE: return "clone";
    case CP_STEP_SIGNALS: return "reset signals";
    case CP_STEP_PDEATHSIG: return "parent-death signal";
    case CP_STEP_SETSID: return "setsid";
    case CP_STEP_DUP_FDS: return "set up stdio";
    case CP_STEP_CLOSE_FDS: return "close inherited fds";
    case CP_STEP_CHDIR: return "chdir";
    case CP_STEP_RLIMIT: return "setrlimit";
    case CP_STEP_EXEC: return "exec";
    default: return "spawn";
    }
}

struct cp_child_error {
    int32_t step;
    int32_t err;
};

// Only raw syscalls and async-signal-safe libc below: no malloc, no locks, no stdio.
static void child_fail(int errfd, int step) {
    struct cp_child_error e = {step, errno};
    ssize_t unused = write(errfd, &e, sizeof e);
    (void)unused;
    _exit(127);
}

static void child_main(const struct cp_spawn_request *req, int errfd, pid_t parent) {
    // Signal state: handlers the parent installed make no sense here; the mask was blocked by
    // the parent around the clone and must not be inherited by the job.
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    for (int sig = 1; sig < _NSIG; sig++) {
        if (sig == SIGKILL || sig == SIGSTOP) continue;
        (void)sigaction(sig, &dfl, NULL); // EINVAL for the glibc-reserved ones: fine
    }
    sigset_t empty;
    sigemptyset(&empty);
    if (sigprocmask(SIG_SETMASK, &empty, NULL) != 0) child_fail(errfd, CP_STEP_SIGNALS);

    if (req->parent_death_signal != 0) {
        if (prctl(PR_SET_PDEATHSIG, req->parent_death_signal, 0, 0, 0) != 0)
            child_fail(errfd, CP_STEP_PDEATHSIG);
        // The parent may have died between clone and prctl.
        if (getppid() != parent && req->clone_flags == 0) _exit(127);
    }
    if (req->new_session && setsid() < 0) child_fail(errfd, CP_STEP_SETSID);

    // Move every source above the target range first, so that dup2 cannot clobber a source
    // that happens to sit at a target number.
    int moved[CP_MAX_FDS];
    for (int i = 0; i < req->fd_count; i++) {
        moved[i] = fcntl(req->fd_sources[i], F_DUPFD_CLOEXEC, CP_MAX_FDS + 3);
        if (moved[i] < 0) child_fail(errfd, CP_STEP_DUP_FDS);
    }
    for (int i = 0; i < req->fd_count; i++) {
        if (dup2(moved[i], i) < 0) child_fail(errfd, CP_STEP_DUP_FDS); // dup2 clears CLOEXEC
    }
    // Everything else closes at exec (CLOEXEC rather than close: the error pipe must survive).
    if (syscall(SYS_close_range, (unsigned)req->fd_count, ~0U, CLOSE_RANGE_CLOEXEC) != 0)
        child_fail(errfd, CP_STEP_CLOSE_FDS);

    if (req->cwd != NULL && chdir(req->cwd) != 0) child_fail(errfd, CP_STEP_CHDIR);
    for (int i = 0; i < req->rlimit_count; i++) {
        struct rlimit rl = {(rlim_t)req->rlimits[i].soft, (rlim_t)req->rlimits[i].hard};
        if (setrlimit(req->rlimits[i].resource, &rl) != 0) child_fail(errfd, CP_STEP_RLIMIT);
    }
    umask(req->umask_value);
    execve(req->path, req->argv, req->envp);
    child_fail(errfd, CP_STEP_EXEC);
}

pid_t cp_spawn(const struct cp_spawn_request *req, int *failed_step, int *failed_errno) {
    *failed_step = CP_STEP_NONE;
    *failed_errno = 0;
    if (req->fd_count < 0 || req->fd_count > CP_MAX_FDS || req->rlimit_count < 0 ||
        req->rlimit_count > CP_MAX_RLIMITS) {
        *failed_step = CP_STEP_CLONE;
        *failed_errno = EINVAL;
        return -1;
    }
    int errpipe[2];
    if (pipe2(errpipe, O_CLOEXEC) != 0) {
        *failed_step = CP_STEP_CLONE;
        *failed_errno = errno;
        return -1;
    }
    // Block every signal so that no handler of the parent runs in the child before it has reset
    // them; restored in the parent right after the clone.
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);

    pid_t parent = getpid();
    struct clone_args args;
    memset(&args, 0, sizeof args);
    args.flags = req->clone_flags;
    args.exit_signal = SIGCHLD;
    if (req->cgroup_fd >= 0) {
        args.flags |= CLONE_INTO_CGROUP;
        args.cgroup = (uint64_t)req->cgroup_fd;
    }
    // Raw clone3, not fork(): no atfork handlers run (they may lock), and namespace and cgroup
    // flags come for free. Without CLONE_VM the child gets a copy of this stack.
    long rc = syscall(SYS_clone3, &args, sizeof args);
    if (rc == 0) {
        close(errpipe[0]);
        child_main(req, errpipe[1], parent);
        _exit(127); // not reached
    }
    int clone_errno = errno;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    close(errpipe[1]);
    if (rc < 0) {
        close(errpipe[0]);
        *failed_step = CP_STEP_CLONE;
        *failed_errno = clone_errno;
        return -1;
    }
    pid_t pid = (pid_t)rc;
    struct cp_child_error e;
    ssize_t n;
    do {
        n = read(errpipe[0], &e, sizeof e);
    } while (n < 0 && errno == EINTR);
    close(errpipe[0]);
    if (n == (ssize_t)sizeof e) {
        int status;
        while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
        *failed_step = e.step;
        *failed_errno = e.err;
        return -1;
    }
    return pid; // EOF: the exec succeeded and closed the pipe
}
