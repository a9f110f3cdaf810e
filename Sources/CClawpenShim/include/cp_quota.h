// cp_quota.h — project quotas on the workspace filesystem (ext4 or xfs with prjquota): one
// project per tenant, so that a tenant cannot fill the filesystem its neighbours write to.
//
// Why C: Swift's Glibc module sees neither quotactl_fd (Linux 5.14, no glibc wrapper) nor
// <linux/fs.h>'s struct fsxattr and FS_IOC_FS{GET,SET}XATTR, nor the QCMD macro.
#ifndef CP_QUOTA_H
#define CP_QUOTA_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/// 1 when the filesystem holding `fd` accounts and enforces project quotas, 0 when it does not
/// (no quota support, or mounted without prjquota), -1 with errno when the question failed.
int cp_project_quota_enforced(int fd);

/// Tags the directory `fd` with project `projid` and the inherit flag (FS_XFLAG_PROJINHERIT):
/// everything created below it from now on belongs to the project.
int cp_project_set(int fd, uint32_t projid);

/// The project of the file or directory `fd` (FS_IOC_FSGETXATTR), -1 with errno.
int64_t cp_project_get(int fd);

/// Sets project `projid`'s hard limits (bytes, rounded up to 1 KiB blocks, and inodes; 0 = no
/// limit) on the filesystem holding `fd`.
int cp_project_set_limits(int fd, uint32_t projid, uint64_t bytes, uint64_t inodes);

/// Reads project `projid`'s limits and usage (bytes, inodes) on the filesystem holding `fd`.
int cp_project_read(int fd, uint32_t projid, uint64_t *bytes_limit, uint64_t *inodes_limit,
                    uint64_t *bytes_used, uint64_t *inodes_used);

#ifdef __cplusplus
}
#endif
#endif
