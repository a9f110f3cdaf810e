// cp_ipc.h — the SysV IPC limits of the worker's own IPC namespace (kernel.shmmax, shmall,
// shmmni), written from inside it.
//
// Why C: the values go through a procfs instance of the worker's own that is never attached to
// any path (fsopen/fsconfig/fsmount, no glibc wrappers in 2.36): the /proc it can see may be
// read-only (systemd's ProtectKernelTunables; the sandbox's own /proc/sys cover), and a
// detached mount neither needs a mount point nor propagates anywhere. A write to
// /proc/sys/kernel/shm* acts on the IPC namespace of the writer, so only the worker may do it
// (the supervisor would change the host's).
#ifndef CP_IPC_H
#define CP_IPC_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/// Writes kernel.shmmax, kernel.shmall and kernel.shmmni (in that order) through a fresh,
/// detached procfs instance. 0, or -1 with errno and *failed_index set to the one that failed
/// (0, 1, 2; -1: making the procfs instance failed).
int cp_write_shm_limits(uint64_t shmmax, uint64_t shmall, uint64_t shmmni, int *failed_index);

#ifdef __cplusplus
}
#endif
#endif
