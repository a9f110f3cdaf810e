// cp_net.h — network namespaces and loopback: the CLONE_* flags, unshare/setns and the ifreq
// ioctls are invisible to Swift's Glibc module (no _GNU_SOURCE) or need C structs.
#ifndef CP_NET_H
#define CP_NET_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

/// The namespaces a worker is cloned into: mount, pid, ipc, uts, net.
uint64_t cp_sandbox_clone_flags(void);

/// The sandbox's clone flags without CLONE_NEWNET (the child joins a pooled namespace instead).
uint64_t cp_sandbox_clone_flags_without_net(void);

/// A fresh network namespace, made by the calling thread (which unshares into it and returns to
/// its own), as an O_CLOEXEC fd; -1 with errno on failure. Its `lo` is down: `network =
/// "loopback"` brings it up in the worker (cp_loopback_up). Creating a network namespace is the
/// slowest part of a sandboxed clone; the supervisor makes them ahead of need.
int cp_netns_create(void);

/// Brings up `lo` in the current network namespace (nothing to do when it is up already).
int cp_loopback_up(void);

#ifdef __cplusplus
}
#endif
#endif
