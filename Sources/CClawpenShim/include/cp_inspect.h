// cp_inspect.h — what `clawpen tenant inspect` reads from outside a running worker that /proc
// cannot give as text: the flags of the interfaces in the worker's network namespace.
//
// Why C: SIOCGIFFLAGS takes struct ifreq (a union Swift imports poorly), and the socket must be
// made inside the worker's network namespace by a thread that joins it and comes back (setns),
// which must not be left half done.
#ifndef CP_INSPECT_H
#define CP_INSPECT_H

#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

/// A datagram socket (O_CLOEXEC) that lives in the network namespace of process `pid`: the
/// calling thread joins that namespace, makes the socket and returns to its own (it aborts if
/// it cannot return: a supervisor thread must never stay in a tenant's namespace). -1 with errno.
int cp_netns_socket(pid_t pid);

/// The IFF_* flags of interface `name`, asked through `sock` (its namespace's interface), or -1
/// with errno (ENODEV: no such interface there).
int cp_interface_flags(int sock, const char *name);

/// IFF_UP, for Swift.
extern const int CP_IFF_UP;

#ifdef __cplusplus
}
#endif
#endif
