// cp_cgroup.h — the cgroup namespace: CLONE_NEWCGROUP needs _GNU_SOURCE, which Swift's Glibc
// module lacks.
#ifndef CP_CGROUP_H
#define CP_CGROUP_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

/// A new cgroup namespace rooted at the caller's current cgroup (its tenant's worker leaf).
int cp_unshare_cgroup(void);

#ifdef __cplusplus
}
#endif
#endif
