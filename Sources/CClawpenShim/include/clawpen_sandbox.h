// clawpen_sandbox.h — the worker's sandbox steps that need syscalls Swift's Glibc cannot see
// (pivot_root, capset, securebits, mount by fd) or that must not follow a symlink a tenant
// planted in its workspace. Each returns 0, or -1 with errno set; the Swift caller names the step.
#ifndef CLAWPEN_SANDBOX_H
#define CLAWPEN_SANDBOX_H

#include <stdint.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

/// The namespaces a worker is cloned into: mount, pid, ipc, uts, net.
uint64_t cp_sandbox_clone_flags(void);

/// A new cgroup namespace rooted at the caller's current cgroup (its tenant's worker leaf).
int cp_unshare_cgroup(void);

/// mount(2) flag values (Swift cannot see <sys/mount.h>'s enum under these names).
extern const unsigned long CP_MS_RDONLY, CP_MS_NOSUID, CP_MS_NODEV, CP_MS_NOEXEC, CP_MS_BIND, CP_MS_REC;

/// RLIMIT_NPROC, which Swift's Glibc module does not export.
extern const int CP_RLIMIT_NPROC;

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

/// Brings up `lo` in the current network namespace.
int cp_loopback_up(void);

int cp_sethostname(const char *name);

/// Creates a character device node `name` below `dirfd`.
int cp_mknod_char(int dirfd, const char *name, mode_t mode, unsigned major, unsigned minor);

/// Writes a whole file below `dirfd` (O_CREAT | O_EXCL | O_NOFOLLOW).
int cp_write_file(int dirfd, const char *name, const void *data, size_t len, mode_t mode);

/// Installs a compiled seccomp program (an array of struct sock_filter, `len` bytes) for this
/// process and every child it will have. Needs no_new_privs (or CAP_SYS_ADMIN).
int cp_install_seccomp(const void *program, size_t len);

/// memfd_create(name, MFD_CLOEXEC).
int cp_memfd(const char *name);

/// CLONE_NEW* flags together, for seccomp rules on clone's flags argument.
uint64_t cp_namespace_clone_flags(void);

/// Steps of cp_drop_identity, reported through *failed_step.
enum cp_identity_step {
    CP_ID_SECUREBITS = 1,
    CP_ID_BOUNDING = 2,
    CP_ID_SETGROUPS = 3,
    CP_ID_SETRESGID = 4,
    CP_ID_SETRESUID = 5,
    CP_ID_CAPSET = 6,
    CP_ID_AMBIENT = 7,
    CP_ID_NO_NEW_PRIVS = 8,
    CP_ID_VERIFY = 9,
};
const char *cp_identity_step_name(int step);

/// Becomes uid/gid for good: locks securebits (no root semantics, no setuid fixup games, no
/// ambient raise), drops every capability from the bounding set, clears supplementary groups,
/// setresgid/setresuid, clears effective/permitted/inheritable and ambient capabilities, sets
/// no_new_privs, then verifies that root cannot be regained.
int cp_drop_identity(uid_t uid, gid_t gid, int *failed_step);

/// A fresh network namespace with `lo` up, made by the calling thread (which unshares into it
/// and returns to its own), as an O_CLOEXEC fd; -1 with errno on failure. Creating a network
/// namespace is the slowest part of a sandboxed clone; the supervisor makes them ahead of need.
int cp_netns_create(void);

/// Moves the calling thread into the mount namespace of process `pid` (first giving the thread
/// filesystem attributes of its own, which setns requires in a multithreaded process). Returns
/// an O_CLOEXEC fd of the thread's own mount namespace for cp_mount_ns_leave, or -1 with errno
/// (the thread is then where it was).
int cp_mount_ns_enter(pid_t pid);

/// Back to the mount namespace `home` (from cp_mount_ns_enter), and closes it. Aborts if that
/// fails: a supervisor thread must never stay in a tenant's namespace.
void cp_mount_ns_leave(int home);

/// The sandbox's clone flags without CLONE_NEWNET (the child joins a pooled namespace instead).
uint64_t cp_sandbox_clone_flags_without_net(void);

#ifdef __cplusplus
}
#endif
#endif
