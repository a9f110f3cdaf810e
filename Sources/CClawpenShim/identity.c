// The worker's identity. See cp_identity.h for why this is C.
#include "cp_identity.h"

#include <errno.h>
#include <grp.h>
#include <linux/capability.h>
#include <linux/securebits.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

const int CP_RLIMIT_NPROC = RLIMIT_NPROC;

int cp_sethostname(const char *name) { return sethostname(name, strlen(name)); }

const char *cp_identity_step_name(int step) {
    switch (step) {
    case CP_ID_SECUREBITS: return "lock securebits";
    case CP_ID_BOUNDING: return "drop bounding set";
    case CP_ID_SETGROUPS: return "setgroups";
    case CP_ID_SETRESGID: return "setresgid";
    case CP_ID_SETRESUID: return "setresuid";
    case CP_ID_CAPSET: return "clear capabilities";
    case CP_ID_AMBIENT: return "clear ambient capabilities";
    case CP_ID_NO_NEW_PRIVS: return "no_new_privs";
    case CP_ID_VERIFY: return "verify identity";
    default: return "identity";
    }
}

#define FAIL(s) do { *failed_step = (s); return -1; } while (0)

int cp_drop_identity(uid_t uid, gid_t gid, int *failed_step) {
    *failed_step = 0;
    if (uid == 0 || gid == 0) { errno = EINVAL; FAIL(CP_ID_VERIFY); }
    // Lock root semantics off: exec of a setuid-root binary grants no capabilities, and nothing
    // can undo these bits. (NO_SETUID_FIXUP stays off, so the uid change below clears caps.)
    unsigned long bits = SECBIT_NOROOT | SECBIT_NOROOT_LOCKED | SECBIT_NO_SETUID_FIXUP_LOCKED |
                         SECBIT_KEEP_CAPS_LOCKED | SECBIT_NO_CAP_AMBIENT_RAISE | SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED;
    if (prctl(PR_SET_SECUREBITS, bits, 0, 0, 0) != 0) FAIL(CP_ID_SECUREBITS);
    for (int cap = 0; cap <= 63; cap++) {
        if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0) {
            if (errno == EINVAL) break; // past the last capability this kernel knows
            FAIL(CP_ID_BOUNDING);
        }
    }
    if (setgroups(0, NULL) != 0) FAIL(CP_ID_SETGROUPS);
    if (setresgid(gid, gid, gid) != 0) FAIL(CP_ID_SETRESGID);
    if (setresuid(uid, uid, uid) != 0) FAIL(CP_ID_SETRESUID);
    struct __user_cap_header_struct hdr = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct data[2];
    memset(data, 0, sizeof data);
    if (syscall(SYS_capset, &hdr, data) != 0) FAIL(CP_ID_CAPSET);
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0) FAIL(CP_ID_AMBIENT);
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) FAIL(CP_ID_NO_NEW_PRIVS);
    // Verify: root must be out of reach.
    if (setuid(0) == 0 || setgid(0) == 0 || getuid() != uid || geteuid() != uid || getgid() != gid) {
        errno = EPERM;
        FAIL(CP_ID_VERIFY);
    }
    memset(data, 0, sizeof data);
    if (syscall(SYS_capget, &hdr, data) != 0) FAIL(CP_ID_VERIFY);
    if (data[0].effective | data[0].permitted | data[0].inheritable | data[1].effective | data[1].permitted | data[1].inheritable) {
        errno = EPERM;
        FAIL(CP_ID_VERIFY);
    }
    return 0;
}
