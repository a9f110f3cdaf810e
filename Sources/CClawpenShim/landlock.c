// A Landlock domain per job. See cp_landlock.h for why this is C.
#include "cp_landlock.h"

#include <errno.h>
#include <stddef.h>
#include <sys/syscall.h>
#include <unistd.h>

// The generic syscall numbers (the same on x86_64 and aarch64); glibc 2.36's headers may lack them.
#ifndef __NR_landlock_create_ruleset
#define __NR_landlock_create_ruleset 444
#endif
#ifndef __NR_landlock_restrict_self
#define __NR_landlock_restrict_self 446
#endif

#define CP_LANDLOCK_CREATE_RULESET_VERSION (1U << 0)
#define CP_LANDLOCK_ACCESS_FS_MAKE_BLOCK (1ULL << 11)

// struct landlock_ruleset_attr as of ABI 6. An older kernel accepts the larger struct as long as
// the fields it does not know are zero (copy_struct_from_user).
struct cp_landlock_ruleset_attr {
    uint64_t handled_access_fs;
    uint64_t handled_access_net;
    uint64_t scoped;
};

int cp_landlock_abi(void) {
    long v = syscall(__NR_landlock_create_ruleset, NULL, 0, CP_LANDLOCK_CREATE_RULESET_VERSION);
    return v < 0 ? -1 : (int)v;
}

int cp_landlock_job_ruleset(uint64_t scopes) {
    struct cp_landlock_ruleset_attr attr = {CP_LANDLOCK_ACCESS_FS_MAKE_BLOCK, 0, scopes};
    long fd = syscall(__NR_landlock_create_ruleset, &attr, sizeof attr, 0);
    return fd < 0 ? -1 : (int)fd;
}

int cp_landlock_restrict(int ruleset_fd) {
    return syscall(__NR_landlock_restrict_self, ruleset_fd, 0) == 0 ? 0 : -1;
}
