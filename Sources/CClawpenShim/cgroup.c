// The cgroup namespace. See cp_cgroup.h for why this is C.
#include "cp_cgroup.h"

#include <sched.h>

int cp_unshare_cgroup(void) { return unshare(CLONE_NEWCGROUP); }
