// The peer of a Unix socket: SO_PEERPIDFD and pidfd liveness. See cp_peer.h for why this is C.
#include "cp_peer.h"

#include <errno.h>
#include <signal.h>
#include <stddef.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef SO_PEERPIDFD
#define SO_PEERPIDFD 77
#endif
#ifndef SYS_pidfd_send_signal
#define SYS_pidfd_send_signal 424
#endif

const int CP_SO_PEERPIDFD = SO_PEERPIDFD;

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
