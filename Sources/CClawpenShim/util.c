// Small syscall wrappers Swift's Glibc module cannot see or cannot call (variadic, macros).
#include "clawpen_shim.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/prctl.h>
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

int cp_mkdir_beneath(int dirfd, const char *name, mode_t mode) {
    if (name[0] == '\0' || strchr(name, '/') != NULL || strcmp(name, ".") == 0 ||
        strcmp(name, "..") == 0) {
        errno = EINVAL;
        return -1;
    }
    if (mkdirat(dirfd, name, mode) != 0 && errno != EEXIST) return -1;
    // O_NOFOLLOW: a symlink planted at name fails with ELOOP instead of being followed.
    return openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
}

int cp_unix_connect(const char *path) {
    struct sockaddr_un addr;
    memset(&addr, 0, sizeof addr);
    addr.sun_family = AF_UNIX;
    if (strlen(path) >= sizeof addr.sun_path) {
        errno = ENAMETOOLONG;
        return -1;
    }
    strcpy(addr.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    for (int attempt = 0;; attempt++) {
        if (connect(fd, (struct sockaddr *)&addr, sizeof addr) == 0) return fd;
        // EAGAIN: the listen backlog is full (a burst of clients); back off briefly.
        if (errno == EINTR) continue;
        if (errno == EAGAIN && attempt < 200) {
            usleep(5000);
            continue;
        }
        int saved = errno;
        close(fd);
        errno = saved;
        return -1;
    }
}

int cp_is_socket(const char *path) {
    struct stat st;
    if (lstat(path, &st) != 0) return -1;
    return S_ISSOCK(st.st_mode) ? 1 : 0;
}
