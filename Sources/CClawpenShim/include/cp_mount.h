// cp_mount.h — the sandbox's mounts: mount by fd (through /proc/self/fd/N), pivot_root and
// setns are not in Swift's Glibc module, and mount targets must be opened one component at a time
// with O_NOFOLLOW so that a symlink a tenant planted is never followed. Each returns 0, or -1 with
// errno set; the Swift caller names the step.
#ifndef CP_MOUNT_H
#define CP_MOUNT_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

/// mount(2) flag values (Swift cannot see <sys/mount.h>'s enum under these names).
extern const unsigned long CP_MS_RDONLY, CP_MS_NOSUID, CP_MS_NODEV, CP_MS_NOEXEC, CP_MS_BIND, CP_MS_REC;

/// mount --make-rprivate /: nothing the worker mounts propagates back to the host.
int cp_mounts_private(void);

/// Opens `relpath` below `dirfd` one component at a time with O_NOFOLLOW, creating missing
/// directories (mode) on the way, and the last component as a directory (want_dir) or an empty
/// regular file. A symlink anywhere fails with ELOOP, a file where a directory is needed with
/// ENOTDIR: a tenant cannot redirect a mount with a planted link. Returns an O_RDONLY fd (dirs)
/// or O_PATH fd (files).
int cp_open_beneath(int dirfd, const char *relpath, int want_dir, mode_t mode);

/// mount(2) with the target given as an fd (through /proc/self/fd/N), and optionally the source.
/// source_fd < 0: `source` is used as given (a host path, or a filesystem name).
int cp_mount_at(const char *source, int source_fd, int target_fd, const char *fstype,
                unsigned long flags, const char *data);

/// Remounts the mount whose root `fd` is with `flags` | MS_REMOUNT | MS_BIND.
int cp_remount_bind(int fd, unsigned long flags);

/// Makes `newroot_fd` the root: pivot_root(".", ".") then lazily detaches the old root, so no
/// path to the host's filesystem remains.
int cp_pivot_root(int newroot_fd);

/// Creates a character device node `name` below `dirfd`.
int cp_mknod_char(int dirfd, const char *name, mode_t mode, unsigned major, unsigned minor);

/// Writes a whole file below `dirfd` (O_CREAT | O_EXCL | O_NOFOLLOW).
int cp_write_file(int dirfd, const char *name, const void *data, size_t len, mode_t mode);

/// openat(dirfd, name, O_PATH | O_NOFOLLOW | O_CLOEXEC): a handle to mount on or over, which
/// opens nothing (a device node, a procfs file) and never follows a link. O_PATH needs _GNU_SOURCE.
int cp_open_path(int dirfd, const char *name);

/// 1 if `fd` is on a procfs mount, 0 if not, -1 with errno (statfs is not in Swift's Glibc module).
int cp_is_procfs(int fd);

/// Moves the calling thread into the mount namespace of process `pid` (first giving the thread
/// filesystem attributes of its own, which setns requires in a multithreaded process). Returns
/// an O_CLOEXEC fd of the thread's own mount namespace for cp_mount_ns_leave, or -1 with errno
/// (the thread is then where it was).
int cp_mount_ns_enter(pid_t pid);

/// Back to the mount namespace `home` (from cp_mount_ns_enter), and closes it. Aborts if that
/// fails: a supervisor thread must never stay in a tenant's namespace.
void cp_mount_ns_leave(int home);

#ifdef __cplusplus
}
#endif
#endif
