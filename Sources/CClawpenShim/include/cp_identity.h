// cp_identity.h — dropping to the tenant's uid for good: capset, securebits, PR_CAPBSET_DROP and
// the ambient set have no Swift-visible declarations, and the order of these calls is the point.
#ifndef CP_IDENTITY_H
#define CP_IDENTITY_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

/// RLIMIT_NPROC, which Swift's Glibc module does not export.
extern const int CP_RLIMIT_NPROC;

int cp_sethostname(const char *name);

/// Steps of cp_drop_identity, reported through *failed_step.
enum cp_identity_step {
    CP_ID_SECUREBITS = 1,
    CP_ID_BOUNDING = 2,
    CP_ID_SETGROUPS = 3,
    CP_ID_SETRESGID = 4,
    CP_ID_SETRESUID = 5,
    CP_ID_CAPSET = 6,
    CP_ID_AMBIENT = 7,
    CP_ID_NO_NEW_PRIVS = 8,
    CP_ID_VERIFY = 9,
};
const char *cp_identity_step_name(int step);

/// Becomes uid/gid for good: locks securebits (no root semantics, no setuid fixup games, no
/// ambient raise), drops every capability from the bounding set, clears supplementary groups,
/// setresgid/setresuid, clears effective/permitted/inheritable and ambient capabilities, sets
/// no_new_privs, then verifies that root cannot be regained.
int cp_drop_identity(uid_t uid, gid_t gid, int *failed_step);

#ifdef __cplusplus
}
#endif
#endif
