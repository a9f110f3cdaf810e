// Installing a seccomp program. See cp_seccomp.h for why this is C.
#include "cp_seccomp.h"

#include <errno.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

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
