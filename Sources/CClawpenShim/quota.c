// Project quotas on the workspace filesystem. See cp_quota.h for why this is C.
#include "cp_quota.h"

#include <errno.h>
#include <linux/dqblk_xfs.h>
#include <linux/fs.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/quota.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef __NR_quotactl_fd
#define __NR_quotactl_fd 443 // the generic number, the same on x86_64 and aarch64
#endif
#ifndef PRJQUOTA
#define PRJQUOTA 2
#endif

static long quotactl_fd(int fd, unsigned cmd, int id, void *addr) {
    return syscall(__NR_quotactl_fd, fd, cmd, id, addr);
}

int cp_project_quota_enforced(int fd) {
    struct fs_quota_stat st;
    memset(&st, 0, sizeof st);
    if (quotactl_fd(fd, QCMD(Q_XGETQSTAT, PRJQUOTA), 0, &st) != 0) {
        // No quota support on this filesystem, or project quotas not turned on.
        if (errno == ENOSYS || errno == EOPNOTSUPP || errno == ENOTTY || errno == ESRCH || errno == EINVAL || errno == ENOENT)
            return 0;
        return -1;
    }
    return (st.qs_flags & FS_QUOTA_PDQ_ACCT) && (st.qs_flags & FS_QUOTA_PDQ_ENFD) ? 1 : 0;
}

int cp_project_set(int fd, uint32_t projid) {
    struct fsxattr fa;
    if (ioctl(fd, FS_IOC_FSGETXATTR, &fa) != 0) return -1;
    fa.fsx_projid = projid;
    fa.fsx_xflags |= FS_XFLAG_PROJINHERIT;
    return ioctl(fd, FS_IOC_FSSETXATTR, &fa) == 0 ? 0 : -1;
}

int64_t cp_project_get(int fd) {
    struct fsxattr fa;
    if (ioctl(fd, FS_IOC_FSGETXATTR, &fa) != 0) return -1;
    return (int64_t)fa.fsx_projid;
}

int cp_project_set_limits(int fd, uint32_t projid, uint64_t bytes, uint64_t inodes) {
    struct dqblk d;
    memset(&d, 0, sizeof d);
    d.dqb_bhardlimit = (bytes + 1023) / 1024; // in QIF_DQBLKSIZE (1 KiB) units
    d.dqb_ihardlimit = inodes;
    d.dqb_valid = QIF_LIMITS;
    return quotactl_fd(fd, QCMD(Q_SETQUOTA, PRJQUOTA), (int)projid, &d) == 0 ? 0 : -1;
}

int cp_project_read(int fd, uint32_t projid, uint64_t *bytes_limit, uint64_t *inodes_limit,
                    uint64_t *bytes_used, uint64_t *inodes_used) {
    struct dqblk d;
    memset(&d, 0, sizeof d);
    if (quotactl_fd(fd, QCMD(Q_GETQUOTA, PRJQUOTA), (int)projid, &d) != 0) return -1;
    *bytes_limit = d.dqb_bhardlimit * 1024;
    *inodes_limit = d.dqb_ihardlimit;
    *bytes_used = d.dqb_curspace;
    *inodes_used = d.dqb_curinodes;
    return 0;
}
