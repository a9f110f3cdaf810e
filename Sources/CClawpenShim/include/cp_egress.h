// cp_egress.h — the egress proxy's kernel plumbing. C because: setns into a tenant's network
// namespace must happen on one thread and return before anything else runs on it; SCM_RIGHTS
// needs the CMSG_* macros, which Swift cannot see; and the proxy's own confinement (mount
// namespace pivot onto a read-only skeleton) uses mount flags and pivot_root that Glibc's
// module hides without _GNU_SOURCE.
#ifndef CP_EGRESS_H
#define CP_EGRESS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

/// A TCP listener on 127.0.0.1:`port` inside the network namespace `netns_fd` (whose `lo` it
/// brings up), made by the calling thread, which then returns to its own namespace (and aborts
/// the process if it cannot: a supervisor thread must never stay in a tenant's namespace).
/// Returns the listening fd (O_CLOEXEC, non-blocking) or -1 with errno.
int cp_netns_listen_tcp(int netns_fd, uint16_t port);

/// Sends `len` bytes with `fd` attached (SCM_RIGHTS); -1 with errno.
int cp_send_with_fd(int sock, const void *buf, size_t len, int fd);

/// Receives up to `len` bytes and at most one attached fd (*fd_out = -1 when none; any extra
/// fds are closed); returns the byte count, 0 at end of stream, -1 with errno.
ssize_t cp_recv_with_fd(int sock, void *buf, size_t len, int *fd_out);

/// Steps of cp_confine_root, reported through *failed_step.
enum cp_confine_step {
    CP_CONFINE_PRIVATE = 1,
    CP_CONFINE_TMPFS = 2,
    CP_CONFINE_BIND = 3,
    CP_CONFINE_REMOUNT = 4,
    CP_CONFINE_PIVOT = 5,
    CP_CONFINE_DETACH = 6,
    CP_CONFINE_READONLY_ROOT = 7,
};
const char *cp_confine_step_name(int step);

/// In a fresh mount namespace: makes every mount private, builds a tmpfs skeleton holding only
/// read-only, nosuid, nodev bind mounts of `paths` (absolute; a directory or a file each; missing
/// ones skipped), pivots into it, detaches the old root and makes the skeleton read-only.
/// On failure returns -1 with errno and the step in *failed_step, *failed_path the path.
int cp_confine_root(const char *const *paths, size_t count, int *failed_step, const char **failed_path);

#ifdef __cplusplus
}
#endif
#endif
