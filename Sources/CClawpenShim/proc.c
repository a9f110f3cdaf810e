// Process plumbing: pipes, signals, wait status. See cp_proc.h for why this is C.
#include "cp_proc.h"

#include <errno.h>
#include <string.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

int cp_socketpair(int fds[2]) { return socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds); }

int cp_pipe(int fds[2], int nonblocking_read) {
    if (pipe2(fds, O_CLOEXEC) != 0) return -1;
    if (nonblocking_read && cp_set_nonblocking(fds[0], 1) != 0) return -1;
    return 0;
}

int cp_set_nonblocking(int fd, int on) {
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0) return -1;
    fl = on ? (fl | O_NONBLOCK) : (fl & ~O_NONBLOCK);
    return fcntl(fd, F_SETFL, fl);
}

int cp_sigchld_fd(void) {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGCHLD);
    if (sigprocmask(SIG_BLOCK, &set, NULL) != 0) return -1;
    signal(SIGPIPE, SIG_IGN);
    return signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
}

int cp_drain_signalfd(int fd) {
    struct signalfd_siginfo info[16];
    int count = 0;
    for (;;) {
        ssize_t n = read(fd, info, sizeof info);
        if (n <= 0) break;
        count += (int)(n / (ssize_t)sizeof info[0]);
    }
    return count;
}

int cp_signal_fd(const int *sigs, int count) {
    sigset_t set;
    sigemptyset(&set);
    for (int i = 0; i < count; i++) sigaddset(&set, sigs[i]);
    if (sigprocmask(SIG_BLOCK, &set, NULL) != 0) return -1;
    return signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
}

// The daemon's stop and reload signals: a handler installed here, synchronously, writes the
// signal's number into a pipe. (A dispatch signal source is armed asynchronously: a SIGTERM
// sent the moment the socket answered could come before it was, and was lost.)
static int signal_pipe_write = -1;

static void signal_to_pipe(int sig) {
    int saved = errno;
    unsigned char b = (unsigned char)sig;
    (void)!write(signal_pipe_write, &b, 1); // non-blocking: a full pipe already holds a stop
    errno = saved;
}

int cp_signal_pipe(const int *sigs, int count) {
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0) return -1;
    if (cp_set_nonblocking(fds[1], 1) != 0) {
        close(fds[0]);
        close(fds[1]);
        return -1;
    }
    signal_pipe_write = fds[1];
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = signal_to_pipe;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    for (int i = 0; i < count; i++) {
        if (sigaction(sigs[i], &sa, NULL) != 0) return -1;
    }
    return fds[0];
}

int cp_read_signal_pipe(int fd) {
    unsigned char b;
    for (;;) {
        ssize_t n = read(fd, &b, 1);
        if (n == 1) return b;
        if (n < 0 && errno == EINTR) continue;
        return 0;
    }
}

int cp_read_signal(int fd) {
    struct signalfd_siginfo info;
    ssize_t n = read(fd, &info, sizeof info);
    return n == (ssize_t)sizeof info ? (int)info.ssi_signo : 0;
}

pid_t cp_wait4(pid_t pid, int *status, int options, struct rusage *usage) {
    pid_t r;
    do {
        r = wait4(pid, status, options, usage);
    } while (r < 0 && errno == EINTR);
    return r;
}
int cp_wifexited(int status) { return WIFEXITED(status); }
int cp_wexitstatus(int status) { return WEXITSTATUS(status); }
int cp_wifsignaled(int status) { return WIFSIGNALED(status); }
int cp_wtermsig(int status) { return WTERMSIG(status); }

long cp_raise_nofile_limit(void) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return -1;
    if (rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) != 0) return -1;
    }
    return (long)rl.rlim_cur;
}

int cp_set_name(const char *name) { return prctl(PR_SET_NAME, name, 0, 0, 0); }

int cp_set_pdeathsig(int sig) { return prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0); }

int cp_start_quiet_thread(void *(*fn)(void *), void *arg, size_t stack_bytes) {
    pthread_attr_t attr;
    int rc = pthread_attr_init(&attr);
    if (rc != 0) return rc;
    pthread_attr_setstacksize(&attr, stack_bytes);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    // The thread inherits the creator's mask: block everything for the moment of its creation.
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pthread_t thread;
    rc = pthread_create(&thread, &attr, fn, arg);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    pthread_attr_destroy(&attr);
    return rc;
}
