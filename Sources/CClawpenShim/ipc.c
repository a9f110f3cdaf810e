// The SysV IPC limits of the worker's IPC namespace. See cp_ipc.h for why this is C.
#include "cp_ipc.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

// The generic numbers (the same on x86_64 and aarch64); glibc 2.36 has no wrappers.
#ifndef __NR_fsopen
#define __NR_fsopen 430
#endif
#ifndef __NR_fsconfig
#define __NR_fsconfig 431
#endif
#ifndef __NR_fsmount
#define __NR_fsmount 432
#endif
#define CP_FSOPEN_CLOEXEC 0x1
#define CP_FSCONFIG_CMD_CREATE 6
#define CP_FSMOUNT_CLOEXEC 0x1
#define CP_MOUNT_ATTR_NOSUID 0x2
#define CP_MOUNT_ATTR_NODEV 0x4
#define CP_MOUNT_ATTR_NOEXEC 0x8

int cp_write_shm_limits(uint64_t shmmax, uint64_t shmall, uint64_t shmmni, int *failed_index) {
    static const char *const names[3] = {"shmmax", "shmall", "shmmni"};
    const uint64_t values[3] = {shmmax, shmall, shmmni};
    const int count = 3;
    *failed_index = -1;
    int fs = (int)syscall(__NR_fsopen, "proc", CP_FSOPEN_CLOEXEC);
    if (fs < 0) return -1;
    if (syscall(__NR_fsconfig, fs, CP_FSCONFIG_CMD_CREATE, NULL, NULL, 0) != 0) {
        int e = errno; close(fs); errno = e; return -1;
    }
    int mnt = (int)syscall(__NR_fsmount, fs, CP_FSMOUNT_CLOEXEC, CP_MOUNT_ATTR_NOSUID | CP_MOUNT_ATTR_NODEV | CP_MOUNT_ATTR_NOEXEC);
    int e = errno;
    close(fs);
    if (mnt < 0) { errno = e; return -1; }
    int rc = 0;
    for (int i = 0; i < count && rc == 0; i++) {
        char path[128];
        snprintf(path, sizeof path, "sys/kernel/%s", names[i]);
        int fd = openat(mnt, path, O_WRONLY | O_NOFOLLOW | O_CLOEXEC);
        char text[32];
        int len = snprintf(text, sizeof text, "%llu\n", (unsigned long long)values[i]);
        if (fd < 0 || write(fd, text, (size_t)len) != (ssize_t)len) { *failed_index = i; rc = -1; e = errno; }
        if (fd >= 0) close(fd);
    }
    close(mnt); // the detached mount goes with its last fd
    if (rc != 0) errno = e;
    return rc;
}
