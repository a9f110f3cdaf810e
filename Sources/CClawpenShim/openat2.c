// openat2 for the worker's file operations. See cp_openat2.h for why this is C.
#include "cp_openat2.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <string.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef SYS_openat2
#define SYS_openat2 437
#endif

int cp_openat2(int dirfd, const char *path, int flags, mode_t mode, uint64_t resolve) {
    struct open_how how;
    memset(&how, 0, sizeof how);
    how.flags = (uint64_t)(unsigned)flags;
    how.mode = (flags & (O_CREAT | O_TMPFILE)) ? mode : 0;
    how.resolve = resolve;
    long r;
    do {
        r = syscall(SYS_openat2, dirfd, path, &how, sizeof how);
    } while (r < 0 && errno == EINTR);
    return (int)r;
}

uint64_t cp_resolve_strict(void) { return RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS; }

int cp_o_path(void) { return O_PATH; }

int cp_fd_read_only(int fd) {
    struct statvfs sv;
    if (fstatvfs(fd, &sv) != 0) return -1;
    return (sv.f_flag & ST_RDONLY) ? 1 : 0;
}
