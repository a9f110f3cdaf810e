// Reading a running worker's network interfaces from outside. See cp_inspect.h for why this is C.
#include "cp_inspect.h"

#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

const int CP_IFF_UP = IFF_UP;

int cp_netns_socket(pid_t pid) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/ns/net", (int)pid);
    int target = open(path, O_RDONLY | O_CLOEXEC);
    if (target < 0) return -1;
    int home = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
    if (home < 0) { int e = errno; close(target); errno = e; return -1; }
    if (setns(target, CLONE_NEWNET) != 0) {
        int e = errno; close(target); close(home); errno = e; return -1;
    }
    int sock = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    int e = errno;
    if (setns(home, CLONE_NEWNET) != 0) abort();
    close(target);
    close(home);
    errno = e;
    return sock;
}

int cp_interface_flags(int sock, const char *name) {
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    if (strlen(name) >= sizeof ifr.ifr_name) { errno = ENAMETOOLONG; return -1; }
    strcpy(ifr.ifr_name, name);
    if (ioctl(sock, SIOCGIFFLAGS, &ifr) != 0) return -1;
    return (int)(unsigned short)ifr.ifr_flags;
}
