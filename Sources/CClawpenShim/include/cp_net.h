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
/// "Up already" is read without the kernel's rtnl lock: when another thread or process is
/// bringing `lo` up at the same moment, this can return before `lo` has 127.0.0.1 (a bind to it
/// fails with EADDRNOTAVAIL). cp_loopback_settle waits for that.
int cp_loopback_up(void);

/// Brings up `lo` under the rtnl lock even when it looks up: returns once whoever was bringing
/// it up is done and 127.0.0.1 is on it. Slower than cp_loopback_up (it waits for the lock);
/// for the case where that one was not enough.
int cp_loopback_settle(void);

#ifdef __cplusplus
}
#endif
#endif
