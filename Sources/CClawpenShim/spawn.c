// cp_spawn: clone3 + async-signal-safe child setup + execve. See clawpen_shim.h for why.
#include "cp_spawn.h"
#include "cp_proc.h"
#include "cp_seccomp.h"
#include "cp_landlock.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/sched.h>
#include <sched.h>
#include <signal.h>
#include <stddef.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
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
    case CP_STEP_CTTY: return "controlling terminal";
    case CP_STEP_DUP_FDS: return "set up stdio";
    case CP_STEP_CLOSE_FDS: return "close inherited fds";
    case CP_STEP_CHDIR: return "chdir";
    case CP_STEP_RLIMIT: return "setrlimit";
    case CP_STEP_EXEC: return "exec";
    case CP_STEP_SECCOMP: return "seccomp";
    case CP_STEP_SETNS: return "join network namespace";
    case CP_STEP_LANDLOCK: return "landlock";
    default: return "spawn";
    }
}

/// Where the child reports the step that failed. With CLONE_VM it is written straight into the
/// parent's memory (the parent is suspended until the child execs or exits); without it, it is
/// sent over an O_CLOEXEC pipe (EOF: the exec succeeded).
struct cp_child_report {
    int32_t step;
    int32_t err;
    int pipe_fd;                 // -1 with CLONE_VM
    volatile int32_t *shared;    // 2 ints in the parent's memory, with CLONE_VM
};

// Only raw syscalls and async-signal-safe libc below: no malloc, no locks, no stdio.
static void child_fail(const struct cp_child_report *report, int step) {
    int32_t e[2] = {step, errno};
    if (report->shared != NULL) {
        report->shared[0] = e[0];
        report->shared[1] = e[1];
    } else {
        ssize_t unused = write(report->pipe_fd, e, sizeof e);
        (void)unused;
    }
    _exit(127);
}

static void child_main(const struct cp_spawn_request *req, const struct cp_child_report *report, pid_t parent) {
    if (req->netns_fd >= 0 && setns(req->netns_fd, CLONE_NEWNET) != 0) child_fail(report, CP_STEP_SETNS);
    // Signal state: handlers the parent installed make no sense here; the mask was blocked by
    // the parent around the clone and must not be inherited by the job.
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    for (int sig = 1; sig < _NSIG; sig++) {
        if (sig == SIGKILL || sig == SIGSTOP) continue;
        if (req->reset_signal_mask != 0 && (sig > 64 || !(req->reset_signal_mask & (1ULL << (sig - 1))))) continue;
        (void)sigaction(sig, &dfl, NULL); // EINVAL for the glibc-reserved ones: fine
    }
    sigset_t empty;
    sigemptyset(&empty);
    if (sigprocmask(SIG_SETMASK, &empty, NULL) != 0) child_fail(report, CP_STEP_SIGNALS);

    if (req->parent_death_signal != 0) {
        if (prctl(PR_SET_PDEATHSIG, req->parent_death_signal, 0, 0, 0) != 0)
            child_fail(report, CP_STEP_PDEATHSIG);
        // The parent may have died between clone and prctl.
        if (getppid() != parent && req->clone_flags == 0) _exit(127);
    }
    if (req->new_session && setsid() < 0) child_fail(report, CP_STEP_SETSID);

    // Move every source above the target range first, so that dup2 cannot clobber a source
    // that happens to sit at a target number.
    int moved[CP_MAX_FDS];
    for (int i = 0; i < req->fd_count; i++) {
        moved[i] = fcntl(req->fd_sources[i], F_DUPFD_CLOEXEC, CP_MAX_FDS + 3);
        if (moved[i] < 0) child_fail(report, CP_STEP_DUP_FDS);
    }
    for (int i = 0; i < req->fd_count; i++) {
        if (dup2(moved[i], i) < 0) child_fail(report, CP_STEP_DUP_FDS); // dup2 clears CLOEXEC
    }
    // Everything else closes at exec (CLOEXEC rather than close: the error pipe must survive).
    if (syscall(SYS_close_range, (unsigned)req->fd_count, ~0U, CLOSE_RANGE_CLOEXEC) != 0)
        child_fail(report, CP_STEP_CLOSE_FDS);
    if (req->controlling_tty && ioctl(0, TIOCSCTTY, 0) != 0) child_fail(report, CP_STEP_CTTY);

    if (req->cwd != NULL && chdir(req->cwd) != 0) child_fail(report, CP_STEP_CHDIR);
    for (int i = 0; i < req->rlimit_count; i++) {
        // No higher than what was inherited (raising a hard limit is not ours to do; lower is
        // only stricter).
        struct rlimit cur, rl = {(rlim_t)req->rlimits[i].soft, (rlim_t)req->rlimits[i].hard};
        if (getrlimit(req->rlimits[i].resource, &cur) == 0 && cur.rlim_max < rl.rlim_max) rl.rlim_max = cur.rlim_max;
        if (rl.rlim_cur > rl.rlim_max) rl.rlim_cur = rl.rlim_max;
        if (setrlimit(req->rlimits[i].resource, &rl) != 0) child_fail(report, CP_STEP_RLIMIT);
    }
    umask(req->umask_value);
    if (req->oom_score_adj > 0) {
        // Best effort: a job that stays at its worker's score only makes the OOM choice worse.
        int fd = open("/proc/self/oom_score_adj", O_WRONLY | O_CLOEXEC);
        if (fd >= 0) {
            char text[12];
            int n = 0, v = req->oom_score_adj > 1000 ? 1000 : req->oom_score_adj;
            char rev[12];
            int r = 0;
            while (v > 0 && r < 11) { rev[r++] = (char)('0' + v % 10); v /= 10; }
            while (r > 0) text[n++] = rev[--r];
            ssize_t unused = write(fd, text, (size_t)n);
            (void)unused;
            close(fd);
        }
    }
    if (req->landlock_ruleset_fd > 0 && cp_landlock_restrict(req->landlock_ruleset_fd) != 0)
        child_fail(report, CP_STEP_LANDLOCK);
    if (req->seccomp_len > 0 && cp_install_seccomp(req->seccomp_program, req->seccomp_len) != 0)
        child_fail(report, CP_STEP_SECCOMP);
    execve(req->path, req->argv, req->envp);
    child_fail(report, CP_STEP_EXEC);
}

struct cp_vfork_arg {
    const struct cp_spawn_request *req;
    struct cp_child_report report;
    pid_t parent;
};

static int vfork_child(void *p) {
    struct cp_vfork_arg *a = p;
    child_main(a->req, &a->report, a->parent);
    return 127; // not reached
}

#define CP_CHILD_STACK_SIZE (64 * 1024)

// clone3 that starts the child on its own stack in `fn(arg)`, as glibc's internal __clone3 does
// (glibc 2.36 exports no clone3 wrapper). The child cannot return from a syscall() call: with
// CLONE_VM it would unwind frames on the parent's stack. So the syscall and the jump to `fn`
// are a few lines of assembly. Returns the child's pid, or -errno.
#if defined(__x86_64__)
#define CP_HAVE_CLONE3_FN 1
__asm__(
    ".text\n"
    ".globl cp_clone3_fn\n"
    ".type cp_clone3_fn,@function\n"
    "cp_clone3_fn:\n"
    "    mov %rcx, %r8\n"        /* arg: r8 survives the syscall */
    "    mov $435, %eax\n"       /* __NR_clone3; rdi = args, rsi = size */
    "    syscall\n"
    "    test %rax, %rax\n"
    "    jz 1f\n"
    "    ret\n"                  /* parent: pid, or -errno */
    "1:\n"
    "    xor %ebp, %ebp\n"       /* child: outermost frame, on its own stack */
    "    and $-16, %rsp\n"
    "    mov %r8, %rdi\n"
    "    call *%rdx\n"           /* fn(arg): rdx survives the syscall */
    "    mov %rax, %rdi\n"
    "    mov $60, %eax\n"        /* __NR_exit */
    "    syscall\n"
    "    hlt\n"
    ".size cp_clone3_fn, .-cp_clone3_fn\n");
#elif defined(__aarch64__)
#define CP_HAVE_CLONE3_FN 1
__asm__(
    ".text\n"
    ".globl cp_clone3_fn\n"
    ".type cp_clone3_fn,%function\n"
    "cp_clone3_fn:\n"
    "    mov x8, #435\n"         /* __NR_clone3; x0 = args, x1 = size */
    "    svc #0\n"
    "    cbz x0, 1f\n"
    "    ret\n"
    "1:\n"
    "    mov x29, #0\n"
    "    mov x0, x3\n"           /* arg */
    "    blr x2\n"               /* fn */
    "    mov x8, #93\n"          /* __NR_exit */
    "    svc #0\n"
    ".size cp_clone3_fn, .-cp_clone3_fn\n");
#endif
#ifdef CP_HAVE_CLONE3_FN
long cp_clone3_fn(struct clone_args *args, size_t size, int (*fn)(void *), void *arg);
#endif

pid_t cp_spawn(const struct cp_spawn_request *req, int *failed_step, int *failed_errno) {
    *failed_step = CP_STEP_NONE;
    *failed_errno = 0;
    if (req->fd_count < 0 || req->fd_count > CP_MAX_FDS || req->rlimit_count < 0 ||
        req->rlimit_count > CP_MAX_RLIMITS) {
        *failed_step = CP_STEP_CLONE;
        *failed_errno = EINVAL;
        return -1;
    }
    // Block every signal so that no handler of the parent runs in the child before it has reset
    // them; restored in the parent right after the clone.
    sigset_t all, old;
    sigfillset(&all);
    pid_t parent = getpid();

#ifdef CP_HAVE_CLONE3_FN
    const int share_memory = 1;
#else
    const int share_memory = req->cgroup_fd < 0; // CLONE_INTO_CGROUP needs the fork path below
#endif
    if (share_memory) {
        // The common path, as glibc's posix_spawn: CLONE_VM | CLONE_VFORK on a small stack of its
        // own. Nothing of the parent's address space is copied (a fork of even a small Swift
        // process copies its page tables and then takes copy-on-write faults: that was a third
        // of the worker's CPU per job). The parent is suspended until the child execs or exits,
        // so the child may write its failure report into the parent's memory. Into a cgroup
        // (CLONE_INTO_CGROUP exists only for clone3) through cp_clone3_fn.
        void *stack = mmap(NULL, CP_CHILD_STACK_SIZE, PROT_READ | PROT_WRITE,
                           MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
        if (stack == MAP_FAILED) {
            *failed_step = CP_STEP_CLONE;
            *failed_errno = errno;
            return -1;
        }
        volatile int32_t shared[2] = {0, 0};
        struct cp_vfork_arg arg = {req, {0, 0, -1, shared}, parent};
        pthread_sigmask(SIG_SETMASK, &all, &old);
        pid_t pid;
        int clone_errno = 0;
#ifdef CP_HAVE_CLONE3_FN
        if (req->cgroup_fd >= 0) {
            struct clone_args args;
            memset(&args, 0, sizeof args);
            args.flags = CLONE_VM | CLONE_VFORK | CLONE_INTO_CGROUP | req->clone_flags;
            args.exit_signal = SIGCHLD;
            args.stack = (uint64_t)(uintptr_t)stack;
            args.stack_size = CP_CHILD_STACK_SIZE;
            args.cgroup = (uint64_t)req->cgroup_fd;
            long rc = cp_clone3_fn(&args, sizeof args, vfork_child, &arg);
            if (rc < 0) { pid = -1; clone_errno = (int)-rc; } else { pid = (pid_t)rc; }
        } else
#endif
        {
            int flags = CLONE_VM | CLONE_VFORK | SIGCHLD | (int)req->clone_flags;
            pid = clone(vfork_child, (char *)stack + CP_CHILD_STACK_SIZE, flags, &arg);
            clone_errno = errno;
        }
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        munmap(stack, CP_CHILD_STACK_SIZE);
        if (pid < 0) {
            *failed_step = CP_STEP_CLONE;
            *failed_errno = clone_errno;
            return -1;
        }
        if (shared[0] != 0) {
            int status;
            while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
            *failed_step = shared[0];
            *failed_errno = shared[1];
            return -1;
        }
        return pid;
    }

    // Into a cgroup on an architecture without cp_clone3_fn: raw clone3 without CLONE_VM (fork
    // semantics, no atfork handlers run; the child gets a copy of this stack and reports over a
    // pipe). It copies the caller's page tables.
    int errpipe[2];
    if (pipe2(errpipe, O_CLOEXEC) != 0) {
        *failed_step = CP_STEP_CLONE;
        *failed_errno = errno;
        return -1;
    }
    pthread_sigmask(SIG_SETMASK, &all, &old);
    struct clone_args args;
    memset(&args, 0, sizeof args);
    args.flags = req->clone_flags | CLONE_INTO_CGROUP;
    args.exit_signal = SIGCHLD;
    args.cgroup = (uint64_t)req->cgroup_fd;
    long rc = syscall(SYS_clone3, &args, sizeof args);
    if (rc == 0) {
        close(errpipe[0]);
        struct cp_child_report report = {0, 0, errpipe[1], NULL};
        child_main(req, &report, parent);
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
    int32_t e[2];
    ssize_t n;
    do {
        n = read(errpipe[0], e, sizeof e);
    } while (n < 0 && errno == EINTR);
    close(errpipe[0]);
    if (n == (ssize_t)sizeof e) {
        int status;
        while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
        *failed_step = e[0];
        *failed_errno = e[1];
        return -1;
    }
    return pid;
}
