// The peer of a Unix socket: SO_PEERPIDFD and pidfd liveness. See cp_peer.h for why this is C.
#include "cp_peer.h"

#include <errno.h>
#include <signal.h>
#include <stddef.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#ifndef SO_PEERPIDFD
#define SO_PEERPIDFD 77
#endif
#ifndef SYS_pidfd_send_signal
#define SYS_pidfd_send_signal 424
#endif

const int CP_SO_PEERPIDFD = SO_PEERPIDFD;

int cp_unix_listen(const char *path, int backlog, unsigned int mode) {
    struct sockaddr_un addr;
    memset(&addr, 0, sizeof addr);
    addr.sun_family = AF_UNIX;
    size_t n = strlen(path);
    if (n >= sizeof addr.sun_path) { errno = ENAMETOOLONG; return -1; }
    memcpy(addr.sun_path, path, n + 1);
    struct stat st;
    if (lstat(path, &st) == 0) {
        if (!S_ISSOCK(st.st_mode)) { errno = EEXIST; return -1; }
        if (unlink(path) != 0) return -1;
    }
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) return -1;
    if (bind(fd, (struct sockaddr *)&addr, sizeof addr) != 0 || chmod(path, (mode_t)mode) != 0 || listen(fd, backlog) != 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
}

int cp_peer_pidfd(int sockfd) {
    int fd = -1;
    socklen_t len = sizeof fd;
    if (getsockopt(sockfd, SOL_SOCKET, SO_PEERPIDFD, &fd, &len) != 0) return -1;
    return fd;
}

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif

int cp_pidfd_open_pid(int pid) { return (int)syscall(SYS_pidfd_open, pid, 0); }

int cp_pidfd_alive(int pidfd) {
    if (pidfd < 0) return 0;
    return syscall(SYS_pidfd_send_signal, pidfd, 0, NULL, 0) == 0 ? 1 : 0;
}

int cp_pidfd_kill(int pidfd, int sig) {
    if (pidfd < 0) { errno = EBADF; return -1; }
    return (int)syscall(SYS_pidfd_send_signal, pidfd, sig, NULL, 0);
}
