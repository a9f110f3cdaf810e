// Mounts of the sandbox. See cp_mount.h for why this is C.
#include "cp_mount.h"

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/magic.h>
#include <sys/mount.h>
#include <sys/vfs.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <unistd.h>

// The thread's working directory, kept across a visit to another mount namespace (setns
// moves it to that namespace's root, and back to this one's root, not to where it was).
static __thread int mount_ns_home_cwd = -1;

int cp_mount_ns_enter(pid_t pid) {
    // Once per thread: root and cwd of its own (a no-op when they are already unshared).
    if (unshare(CLONE_FS) != 0) return -1;
    int home = open("/proc/thread-self/ns/mnt", O_RDONLY | O_CLOEXEC);
    if (home < 0) return -1;
    int cwd = open(".", O_PATH | O_DIRECTORY | O_CLOEXEC);
    char path[48];
    snprintf(path, sizeof path, "/proc/%d/ns/mnt", (int)pid);
    int target = open(path, O_RDONLY | O_CLOEXEC);
    if (target < 0 || setns(target, CLONE_NEWNS) != 0) {
        int e = errno;
        if (target >= 0) close(target);
        if (cwd >= 0) close(cwd);
        close(home);
        errno = e;
        return -1;
    }
    close(target);
    mount_ns_home_cwd = cwd;
    return home;
}

void cp_mount_ns_leave(int home) {
    if (setns(home, CLONE_NEWNS) != 0) abort();
    close(home);
    if (mount_ns_home_cwd >= 0) {
        if (fchdir(mount_ns_home_cwd) != 0) abort();
        close(mount_ns_home_cwd);
        mount_ns_home_cwd = -1;
    }
}

const unsigned long CP_MS_RDONLY = MS_RDONLY, CP_MS_NOSUID = MS_NOSUID, CP_MS_NODEV = MS_NODEV,
                    CP_MS_NOEXEC = MS_NOEXEC, CP_MS_BIND = MS_BIND, CP_MS_REC = MS_REC;

int cp_mounts_private(void) { return mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL); }

int cp_open_beneath(int dirfd, const char *relpath, int want_dir, mode_t mode) {
    char buf[4096];
    if (strlen(relpath) >= sizeof buf) { errno = ENAMETOOLONG; return -1; }
    strcpy(buf, relpath);
    int cur = fcntl(dirfd, F_DUPFD_CLOEXEC, 3);
    if (cur < 0) return -1;
    char *save = NULL;
    char *part = strtok_r(buf, "/", &save);
    while (part != NULL) {
        char *next = strtok_r(NULL, "/", &save);
        if (strcmp(part, "..") == 0 || strcmp(part, ".") == 0) { close(cur); errno = EINVAL; return -1; }
        int fd;
        if (next != NULL || want_dir) {
            if (mkdirat(cur, part, mode) != 0 && errno != EEXIST) { int e = errno; close(cur); errno = e; return -1; }
            fd = openat(cur, part, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        } else {
            fd = openat(cur, part, O_RDONLY | O_CREAT | O_NOFOLLOW | O_CLOEXEC, mode);
            if (fd >= 0) {
                struct stat st;
                if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) { close(fd); close(cur); errno = EINVAL; return -1; }
            }
        }
        int e = errno;
        close(cur);
        if (fd < 0) { errno = e; return -1; }
        cur = fd;
        part = next;
    }
    return cur;
}

static void fd_path(int fd, char *out, size_t n) { snprintf(out, n, "/proc/self/fd/%d", fd); }

int cp_mount_at(const char *source, int source_fd, int target_fd, const char *fstype,
                unsigned long flags, const char *data) {
    char target[64], src[64];
    fd_path(target_fd, target, sizeof target);
    if (source_fd >= 0) { fd_path(source_fd, src, sizeof src); source = src; }
    return mount(source, target, fstype, flags, data);
}

int cp_remount_bind(int fd, unsigned long flags) {
    char target[64];
    fd_path(fd, target, sizeof target);
    return mount(NULL, target, NULL, flags | MS_REMOUNT | MS_BIND, NULL);
}

int cp_pivot_root(int newroot_fd) {
    if (fchdir(newroot_fd) != 0) return -1;
    if (syscall(SYS_pivot_root, ".", ".") != 0) return -1;
    // The old root is now mounted on top of the new one at "/": detach it.
    if (umount2(".", MNT_DETACH) != 0) return -1;
    return chdir("/");
}

int cp_mknod_char(int dirfd, const char *name, mode_t mode, unsigned major, unsigned minor) {
    if (mknodat(dirfd, name, S_IFCHR | mode, makedev(major, minor)) != 0) return -1;
    return fchmodat(dirfd, name, mode, 0); // mknod applies the umask
}

int cp_write_file(int dirfd, const char *name, const void *data, size_t len, mode_t mode) {
    int fd = openat(dirfd, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode);
    if (fd < 0) return -1;
    const char *p = data;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) { int e = errno; close(fd); errno = e; return -1; }
        p += n;
        len -= (size_t)n;
    }
    if (fchmod(fd, mode) != 0) { int e = errno; close(fd); errno = e; return -1; }
    return close(fd);
}

int cp_open_path(int dirfd, const char *name) { return openat(dirfd, name, O_PATH | O_NOFOLLOW | O_CLOEXEC); }

int cp_is_procfs(int fd) {
    struct statfs fs;
    if (fstatfs(fd, &fs) != 0) return -1;
    return fs.f_type == PROC_SUPER_MAGIC ? 1 : 0;
}
