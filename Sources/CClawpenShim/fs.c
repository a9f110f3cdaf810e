// Files and sockets by path or directory fd. See cp_fs.h for why this is C.
#include "cp_fs.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

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
