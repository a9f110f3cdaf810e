// The worker's sandbox syscalls. See clawpen_sandbox.h for why each exists.
#include "clawpen_sandbox.h"

#include <errno.h>
#include <sched.h>
#include <stdlib.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <linux/securebits.h>
#include <net/if.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <unistd.h>
#include <grp.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/mman.h>
#include <sys/resource.h>

#include <sched.h>

uint64_t cp_sandbox_clone_flags(void) {
    // No CLONE_NEWCGROUP here: the supervisor moves the worker into its tenant's cgroup first,
    // then the worker unshares its cgroup namespace (cp_unshare_cgroup), rooted at that leaf.
    return CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS | CLONE_NEWNET;
}

uint64_t cp_sandbox_clone_flags_without_net(void) { return cp_sandbox_clone_flags() & ~(uint64_t)CLONE_NEWNET; }

int cp_netns_create(void) {
    int home = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
    if (home < 0) return -1;
    int fresh = -1, e = 0;
    if (unshare(CLONE_NEWNET) != 0) {
        e = errno;
        close(home);
        errno = e;
        return -1;
    }
    if (cp_loopback_up() == 0) fresh = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
    e = errno;
    // Back to the supervisor's namespace: this thread must not stay in a tenant's.
    if (setns(home, CLONE_NEWNET) != 0) abort();
    close(home);
    errno = e;
    return fresh;
}

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

int cp_unshare_cgroup(void) { return unshare(CLONE_NEWCGROUP); }

const unsigned long CP_MS_RDONLY = MS_RDONLY, CP_MS_NOSUID = MS_NOSUID, CP_MS_NODEV = MS_NODEV,
                    CP_MS_NOEXEC = MS_NOEXEC, CP_MS_BIND = MS_BIND, CP_MS_REC = MS_REC;

const int CP_RLIMIT_NPROC = RLIMIT_NPROC;

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

int cp_loopback_up(void) {
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0) return -1;
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    strncpy(ifr.ifr_name, "lo", IFNAMSIZ - 1);
    int rc = ioctl(s, SIOCGIFFLAGS, &ifr);
    // Already up (a namespace from the supervisor's pool): no SIOCSIFFLAGS, which would wait for
    // the kernel's rtnl lock, held meanwhile by the pool making the next namespace.
    if (rc == 0 && !(ifr.ifr_flags & IFF_UP)) {
        ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
        rc = ioctl(s, SIOCSIFFLAGS, &ifr);
    }
    int e = errno;
    close(s);
    errno = e;
    return rc;
}

int cp_sethostname(const char *name) { return sethostname(name, strlen(name)); }

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

const char *cp_identity_step_name(int step) {
    switch (step) {
    case CP_ID_SECUREBITS: return "lock securebits";
    case CP_ID_BOUNDING: return "drop bounding set";
    case CP_ID_SETGROUPS: return "setgroups";
    case CP_ID_SETRESGID: return "setresgid";
    case CP_ID_SETRESUID: return "setresuid";
    case CP_ID_CAPSET: return "clear capabilities";
    case CP_ID_AMBIENT: return "clear ambient capabilities";
    case CP_ID_NO_NEW_PRIVS: return "no_new_privs";
    case CP_ID_VERIFY: return "verify identity";
    default: return "identity";
    }
}

#define FAIL(s) do { *failed_step = (s); return -1; } while (0)

int cp_drop_identity(uid_t uid, gid_t gid, int *failed_step) {
    *failed_step = 0;
    if (uid == 0 || gid == 0) { errno = EINVAL; FAIL(CP_ID_VERIFY); }
    // Lock root semantics off: exec of a setuid-root binary grants no capabilities, and nothing
    // can undo these bits. (NO_SETUID_FIXUP stays off, so the uid change below clears caps.)
    unsigned long bits = SECBIT_NOROOT | SECBIT_NOROOT_LOCKED | SECBIT_NO_SETUID_FIXUP_LOCKED |
                         SECBIT_KEEP_CAPS_LOCKED | SECBIT_NO_CAP_AMBIENT_RAISE | SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED;
    if (prctl(PR_SET_SECUREBITS, bits, 0, 0, 0) != 0) FAIL(CP_ID_SECUREBITS);
    for (int cap = 0; cap <= 63; cap++) {
        if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0) {
            if (errno == EINVAL) break; // past the last capability this kernel knows
            FAIL(CP_ID_BOUNDING);
        }
    }
    if (setgroups(0, NULL) != 0) FAIL(CP_ID_SETGROUPS);
    if (setresgid(gid, gid, gid) != 0) FAIL(CP_ID_SETRESGID);
    if (setresuid(uid, uid, uid) != 0) FAIL(CP_ID_SETRESUID);
    struct __user_cap_header_struct hdr = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct data[2];
    memset(data, 0, sizeof data);
    if (syscall(SYS_capset, &hdr, data) != 0) FAIL(CP_ID_CAPSET);
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0) FAIL(CP_ID_AMBIENT);
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) FAIL(CP_ID_NO_NEW_PRIVS);
    // Verify: root must be out of reach.
    if (setuid(0) == 0 || setgid(0) == 0 || getuid() != uid || geteuid() != uid || getgid() != gid) {
        errno = EPERM;
        FAIL(CP_ID_VERIFY);
    }
    memset(data, 0, sizeof data);
    if (syscall(SYS_capget, &hdr, data) != 0) FAIL(CP_ID_VERIFY);
    if (data[0].effective | data[0].permitted | data[0].inheritable | data[1].effective | data[1].permitted | data[1].inheritable) {
        errno = EPERM;
        FAIL(CP_ID_VERIFY);
    }
    return 0;
}

int cp_install_seccomp(const void *program, size_t len) {
    if (len == 0 || len % sizeof(struct sock_filter) != 0 || len / sizeof(struct sock_filter) > 0xFFFF) {
        errno = EINVAL;
        return -1;
    }
    struct sock_fprog prog = {(unsigned short)(len / sizeof(struct sock_filter)), (struct sock_filter *)program};
    return (int)syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog);
}

int cp_memfd(const char *name) { return memfd_create(name, MFD_CLOEXEC); }

uint64_t cp_namespace_clone_flags(void) {
    return CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS | CLONE_NEWNET | CLONE_NEWCGROUP |
           CLONE_NEWUSER | CLONE_NEWTIME;
}
