// cp_seccomp.h — installing a seccomp program: SYS_seccomp and struct sock_fprog are C only. The
// program is compiled by the supervisor (libseccomp never enters the static worker).
#ifndef CP_SECCOMP_H
#define CP_SECCOMP_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

/// Installs a compiled seccomp program (an array of struct sock_filter, `len` bytes) for this
/// process and every child it will have. Needs no_new_privs (or CAP_SYS_ADMIN).
int cp_install_seccomp(const void *program, size_t len);

/// memfd_create(name, MFD_CLOEXEC).
int cp_memfd(const char *name);

/// CLONE_NEW* flags together, for seccomp rules on clone's flags argument.
uint64_t cp_namespace_clone_flags(void);

#ifdef __cplusplus
}
#endif
#endif
