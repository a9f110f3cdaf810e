// cp_landlock.h — a Landlock domain per job, so that the jobs of one tenant cannot read or
// steal from each other (docs/sandbox.md, "Jobs of one tenant").
//
// Why C: the domain is entered in cp_spawn's child, between clone and exec, where only raw
// syscalls are allowed; and glibc 2.36 has neither Landlock wrappers nor the ABI 6 `scoped`
// field in its headers.
#ifndef CP_LANDLOCK_H
#define CP_LANDLOCK_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/// The kernel's Landlock ABI version (1 = Linux 5.13, 6 = 6.12 adds scopes, 7 = 6.15), or -1
/// with errno (ENOSYS: not built in; EOPNOTSUPP: built in but not enabled at boot).
int cp_landlock_abi(void);

/// Scope flags (LANDLOCK_SCOPE_*, ABI >= 6).
#define CP_LANDLOCK_SCOPE_ABSTRACT_UNIX_SOCKET (1ULL << 0)
#define CP_LANDLOCK_SCOPE_SIGNAL (1ULL << 1)

/// The ruleset every job's domain is made from, as an O_CLOEXEC fd, or -1 with errno. It
/// handles one filesystem right nobody in a sandbox can use anyway (making block devices: no
/// CAP_MKNOD, nodev) so that it is a valid ruleset on every ABI, and, where `scopes` is non-zero
/// (ABI >= 6), those scopes. Whatever the rights, a process in a Landlock domain may ptrace (and
/// so read /proc/<pid>/mem and environ, pidfd_getfd, process_vm_readv) only processes in its own
/// domain or in domains nested below it: two jobs with sibling domains cannot reach each other,
/// and the worker (no domain) can still reach every job.
int cp_landlock_job_ruleset(uint64_t scopes);

/// landlock_restrict_self(ruleset_fd, 0): a new domain for the calling process and everything
/// it starts. Each call makes a new domain, so every job gets its own from one ruleset. Needs
/// no_new_privs. Async-signal-safe (one raw syscall): for cp_spawn's child.
int cp_landlock_restrict(int ruleset_fd);

#ifdef __cplusplus
}
#endif
#endif
