// clawpen_shim.h — the C that Swift cannot (or must not) do itself, one file per kernel facility
// (as nsjail: mnt.cc, net.cc, user.cc). Each header says why its part is C.
//
//   cp_spawn.h     the fork-to-exec path: async-signal-safe C only, the supervisor is multithreaded
//   cp_proc.h      pipes, signalfd, wait status, prctl: _GNU_SOURCE, macros and variadics
//   cp_fs.h        mkdirat + O_NOFOLLOW in one call, Unix-socket connect (sockaddr_un)
//   cp_mount.h     mount by fd, pivot_root, setns into a worker's mount namespace
//   cp_net.h       the clone flags, network namespaces, lo up (ifreq ioctls)
//   cp_identity.h  securebits, bounding set, capset, no_new_privs, hostname
//   cp_seccomp.h   installing a compiled BPF program
//   cp_cgroup.h    the cgroup namespace
//   cp_landlock.h  a Landlock domain per job, entered between clone and exec (no glibc wrappers)
//   cp_quota.h     project quotas: quotactl_fd, FS_IOC_FSSETXATTR, QCMD (not visible to Swift)
//   cp_inspect.h   interface flags inside a worker's network namespace (ifreq, setns and back)
//   cp_ipc.h       the IPC namespace's shm limits through a detached procfs (fsopen, no wrappers)
//   cp_pty.h       pseudo-terminals of interactive jobs, window sizes, raw mode (ioctls, termios)
//   cp_openat2.h   openat2 with RESOLVE_BENEATH|NO_SYMLINKS for the worker's file operations (no wrapper, O_PATH)
//   cp_egress.h    listeners in a tenant's netns, SCM_RIGHTS, the egress proxy's read-only root
//   cp_peer.h      the agent socket's caller: SO_PEERPIDFD and pidfd_send_signal (no glibc names)
//   cp_writeback.h writeback started per chunk (sync_file_range), replaced files closed on a thread
//   cp_splice.h    the egress proxy's zero-copy relay: splice through pipes on an epoll thread
#ifndef CLAWPEN_SHIM_H
#define CLAWPEN_SHIM_H

#include "cp_spawn.h"
#include "cp_proc.h"
#include "cp_fs.h"
#include "cp_mount.h"
#include "cp_net.h"
#include "cp_identity.h"
#include "cp_seccomp.h"
#include "cp_cgroup.h"
#include "cp_landlock.h"
#include "cp_quota.h"
#include "cp_inspect.h"
#include "cp_ipc.h"
#include "cp_pty.h"
#include "cp_openat2.h"
#include "cp_egress.h"
#include "cp_peer.h"
#include "cp_writeback.h"
#include "cp_splice.h"

#endif
