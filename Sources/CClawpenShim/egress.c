// The egress proxy's kernel plumbing. See cp_egress.h for why this is C.
#include "cp_egress.h"
#include "cp_net.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

int cp_netns_listen_tcp(int netns_fd, uint16_t port) {
    int home = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
    if (home < 0) return -1;
    if (setns(netns_fd, CLONE_NEWNET) != 0) { int e = errno; close(home); errno = e; return -1; }
    int sock = -1, e = 0;
    if (cp_loopback_up() != 0) { e = errno; goto back; }
    sock = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (sock < 0) { e = errno; goto back; }
    int one = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int bound = bind(sock, (struct sockaddr *)&a, sizeof a);
    // The worker brings lo up at the same moment (its sandbox's first step): this side can see
    // IFF_UP a moment before the kernel has given lo its address. Wait for it, once.
    if (bound != 0 && errno == EADDRNOTAVAIL && cp_loopback_settle() == 0) bound = bind(sock, (struct sockaddr *)&a, sizeof a);
    if (bound != 0 || listen(sock, 1024) != 0) {
        e = errno; close(sock); sock = -1;
    }
back:
    if (setns(home, CLONE_NEWNET) != 0) abort();
    close(home);
    errno = e;
    return sock;
}

int cp_send_with_fd(int sock, const void *buf, size_t len, int fd) {
    struct iovec iov = {.iov_base = (void *)buf, .iov_len = len};
    union { char buf[CMSG_SPACE(sizeof(int))]; struct cmsghdr align; } u;
    memset(&u, 0, sizeof u);
    struct msghdr m;
    memset(&m, 0, sizeof m);
    m.msg_iov = &iov;
    m.msg_iovlen = 1;
    if (fd >= 0) {
        m.msg_control = u.buf;
        m.msg_controllen = sizeof u.buf;
        struct cmsghdr *c = CMSG_FIRSTHDR(&m);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(c), &fd, sizeof(int));
    }
    // The fd goes with the first bytes; a short write (a full socket buffer, a signal) sends
    // the rest without it. Returning after a partial write would leave half a frame on the
    // stream, and the reader would take the next bytes for a length.
    size_t off = 0;
    while (off < len) {
        ssize_t n = sendmsg(sock, &m, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return -1;
        off += (size_t)n;
        iov.iov_base = (char *)buf + off;
        iov.iov_len = len - off;
        m.msg_control = NULL;
        m.msg_controllen = 0;
    }
    return 0;
}

ssize_t cp_recv_with_fd(int sock, void *buf, size_t len, int *fd_out) {
    *fd_out = -1;
    struct iovec iov = {.iov_base = buf, .iov_len = len};
    union { char buf[CMSG_SPACE(sizeof(int) * 4)]; struct cmsghdr align; } u;
    struct msghdr m;
    memset(&m, 0, sizeof m);
    m.msg_iov = &iov;
    m.msg_iovlen = 1;
    m.msg_control = u.buf;
    m.msg_controllen = sizeof u.buf;
    ssize_t n;
    do { n = recvmsg(sock, &m, MSG_CMSG_CLOEXEC); } while (n < 0 && errno == EINTR);
    if (n < 0) return -1;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
        size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t i = 0; i < count; i++) {
            int fd;
            memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
            if (*fd_out < 0) *fd_out = fd; else close(fd);
        }
    }
    return n;
}

const char *cp_confine_step_name(int step) {
    switch (step) {
    case CP_CONFINE_PRIVATE: return "make mounts private";
    case CP_CONFINE_TMPFS: return "mount the skeleton tmpfs";
    case CP_CONFINE_BIND: return "bind mount";
    case CP_CONFINE_REMOUNT: return "remount read-only";
    case CP_CONFINE_PIVOT: return "pivot_root";
    case CP_CONFINE_DETACH: return "detach the old root";
    case CP_CONFINE_READONLY_ROOT: return "make the skeleton read-only";
    default: return "confine";
    }
}

/// mkdir -p of `path` (absolute) below `root`, the last part a file when `file`.
static int make_target(const char *root, const char *path, int file) {
    char buf[4096];
    size_t rl = strlen(root), pl = strlen(path);
    if (rl + pl + 1 >= sizeof buf) { errno = ENAMETOOLONG; return -1; }
    memcpy(buf, root, rl);
    memcpy(buf + rl, path, pl + 1);
    for (char *p = buf + rl + 1; *p; p++) {
        if (*p != '/') continue;
        *p = 0;
        if (mkdir(buf, 0755) != 0 && errno != EEXIST) return -1;
        *p = '/';
    }
    if (file) {
        int fd = open(buf, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
        if (fd < 0) return -1;
        close(fd);
    } else if (mkdir(buf, 0755) != 0 && errno != EEXIST) {
        return -1;
    }
    return 0;
}

int cp_confine_root(const char *const *paths, size_t count, int *failed_step, const char **failed_path) {
    static const char root[] = "/tmp";
    *failed_path = root;
    // The skeleton's directories must be searchable by the uid the proxy becomes.
    umask(022);
    if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0) { *failed_step = CP_CONFINE_PRIVATE; return -1; }
    // In this namespace only: the host's /tmp is untouched.
    if (mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=1m,mode=0755") != 0) {
        *failed_step = CP_CONFINE_TMPFS; return -1;
    }
    char target[4096];
    for (size_t i = 0; i < count; i++) {
        const char *p = paths[i];
        struct stat st;
        if (p[0] != '/' || stat(p, &st) != 0) continue;
        *failed_path = p;
        int isdir = S_ISDIR(st.st_mode);
        if (make_target(root, p, !isdir) != 0) { *failed_step = CP_CONFINE_BIND; return -1; }
        snprintf(target, sizeof target, "%s%s", root, p);
        if (mount(p, target, NULL, MS_BIND | MS_REC, NULL) != 0) { *failed_step = CP_CONFINE_BIND; return -1; }
        if (mount(NULL, target, NULL, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, NULL) != 0) {
            *failed_step = CP_CONFINE_REMOUNT; return -1;
        }
    }
    *failed_path = root;
    if (chdir(root) != 0 || syscall(SYS_pivot_root, ".", ".") != 0) { *failed_step = CP_CONFINE_PIVOT; return -1; }
    if (umount2(".", MNT_DETACH) != 0 || chdir("/") != 0) { *failed_step = CP_CONFINE_DETACH; return -1; }
    if (mount(NULL, "/", NULL, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) != 0) {
        *failed_step = CP_CONFINE_READONLY_ROOT; return -1;
    }
    return 0;
}
