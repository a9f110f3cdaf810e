// cp_fs.h — path operations that must not follow a symlink (mkdirat + O_NOFOLLOW in one call),
// and sockaddr_un, which Swift cannot fill without unsafe tuple juggling.
#ifndef CP_FS_H
#define CP_FS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

/// mkdirat + openat(O_DIRECTORY|O_NOFOLLOW) in one: never follows a symlink planted at name.
/// Returns an fd of the directory (created when missing) or -1 with errno.
int cp_mkdir_beneath(int dirfd, const char *name, mode_t mode);

/// Connects a blocking Unix stream socket to path. Returns fd or -1 with errno.
int cp_unix_connect(const char *path);

/// 1 if path is a socket (lstat, no symlink following), 0 if not, -1 with errno on failure.
int cp_is_socket(const char *path);

#ifdef __cplusplus
}
#endif
#endif
