// cp_writeback.h — a put that is durable without a long wait at its end: writeback of each chunk
// started as it is written (sync_file_range needs _GNU_SOURCE), the file flushed to the device
// every few MiB on a thread of its own while the rest arrives (a virtual disk's flush costs about
// 1.3 ms per MiB written since the last one, here), and the last reference to a replaced file
// dropped on that thread (on a filesystem mounted with `discard`, freeing a 64 MiB file's blocks
// takes ~40 ms). The worker's loop waits for none of it. The thread is C because the worker
// forks its jobs: it takes no lock (only read, fdatasync and close), and runs with every signal
// blocked so that the worker's signalfd still sees them all.
#ifndef CP_WRITEBACK_H
#define CP_WRITEBACK_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/// Starts writeback of [offset, offset + length) of fd without waiting for it
/// (sync_file_range with SYNC_FILE_RANGE_WRITE), so that the fsync at the end of a put has little
/// left to write. 0, or -1 with errno (a filter that refuses the call: the fsync does it all).
int cp_writeback_start(int fd, int64_t offset, int64_t length);

/// Flushes fd's data to the device (fdatasync) on the releaser thread, through a duplicate of
/// fd: the caller keeps writing and closes fd when it likes. Returns 1 if handed over, 0 if not
/// (no thread, a full queue, no fd to spare): the caller's final fsync does it all then.
int cp_sync_later(int fd);

/// Closes fd on the releaser thread, started on first use. When the thread cannot be started or
/// its queue is full, fd is closed here, at once. Returns 1 if handed over, 0 if closed here.
int cp_close_later(int fd);

#ifdef __cplusplus
}
#endif
#endif
