// cp_openat2.h — path resolution that cannot leave a directory or follow a link, for the
// worker's file operations. Why C: glibc 2.36 has no openat2 wrapper and Swift's Glibc module
// (built without _GNU_SOURCE) sees neither struct open_how, the RESOLVE_* flags nor O_PATH.
#ifndef CP_OPENAT2_H
#define CP_OPENAT2_H

#include <stdint.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

/// openat2(dirfd, path, {flags, mode, resolve}) by raw syscall. Returns an fd or -1 with errno
/// (ENOSYS: the kernel has no openat2, before 5.6; the caller walks components instead).
int cp_openat2(int dirfd, const char *path, int flags, mode_t mode, uint64_t resolve);

/// RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS: never above dirfd, never
/// through any link (magic /proc links included).
uint64_t cp_resolve_strict(void);

/// O_PATH (an fd that names a file without opening it for I/O), invisible to Swift.
int cp_o_path(void);

/// 1 when the file system under fd is mounted read-only (fstatvfs ST_RDONLY), 0 if not, -1 with errno.
int cp_fd_read_only(int fd);

#ifdef __cplusplus
}
#endif
#endif
