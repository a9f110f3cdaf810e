// Network namespaces and loopback. See cp_net.h for why this is C.
#include "cp_net.h"

#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

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
    // lo stays down: `network = "none"` means no interface up, and a "loopback" tenant's worker
    // brings it up itself.
    fresh = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
    e = errno;
    // Back to the supervisor's namespace: this thread must not stay in a tenant's.
    if (setns(home, CLONE_NEWNET) != 0) abort();
    close(home);
    errno = e;
    return fresh;
}

/// Brings lo up; with `always`, sets the flags even when lo looks up already (see below).
static int loopback_up(int always) {
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0) return -1;
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    strncpy(ifr.ifr_name, "lo", IFNAMSIZ - 1);
    int rc = ioctl(s, SIOCGIFFLAGS, &ifr);
    if (rc == 0 && (always || !(ifr.ifr_flags & IFF_UP))) {
        ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
        rc = ioctl(s, SIOCSIFFLAGS, &ifr);
    }
    int e = errno;
    close(s);
    errno = e;
    return rc;
}

// Already up (the worker's namespace, its listener made by the supervisor): no SIOCSIFFLAGS,
// which would wait for the kernel's rtnl lock, held meanwhile by the pool making the next
// namespace.
int cp_loopback_up(void) { return loopback_up(0); }

// Unconditional: SIOCSIFFLAGS takes the rtnl lock, which whoever is bringing lo up holds until
// the kernel has given it 127.0.0.1 (the NETDEV_UP notifier). Once it returns, the address is
// there.
int cp_loopback_settle(void) { return loopback_up(1); }
