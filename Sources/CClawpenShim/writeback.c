// Writeback started early and deferred closes. See cp_writeback.h for why this is C.
#include "cp_writeback.h"
#include "cp_proc.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

int cp_writeback_start(int fd, int64_t offset, int64_t length) {
    return sync_file_range(fd, (off64_t)offset, (off64_t)length, SYNC_FILE_RANGE_WRITE);
}

// The releaser: a pipe of commands (an fd and what to do with it), done one by one by a thread
// that touches nothing else. Each command is 8 bytes, under PIPE_BUF: written and read whole.
// Write end non-blocking: a full queue (8,192 commands) means doing it here, or not at all.
enum { RELEASE_CLOSE = 1, RELEASE_SYNC = 2 };
struct release_command {
    int32_t kind;
    int32_t fd;
};
static int release_pipe[2] = {-1, -1};
static pthread_once_t release_once = PTHREAD_ONCE_INIT;
static int release_ready = 0;

static void *releaser(void *arg) {
    (void)arg;
    for (;;) {
        struct release_command c;
        ssize_t n = read(release_pipe[0], &c, sizeof c);
        if (n == (ssize_t)sizeof c) {
            if (c.kind == RELEASE_SYNC) (void)fdatasync(c.fd);
            close(c.fd);
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (n <= 0) {
            return NULL;
        }
    }
}

static void release_start(void) {
    if (pipe2(release_pipe, O_CLOEXEC) != 0) return;
    int flags = fcntl(release_pipe[1], F_GETFL);
    if (flags < 0 || fcntl(release_pipe[1], F_SETFL, flags | O_NONBLOCK) != 0) goto fail;
    // All signals blocked: it must never take a signal meant for the worker's signalfd.
    int rc = cp_start_quiet_thread(releaser, NULL, 64 * 1024);
    if (rc != 0) goto fail;
    release_ready = 1;
    return;
fail:
    close(release_pipe[0]);
    close(release_pipe[1]);
    release_pipe[0] = release_pipe[1] = -1;
}

static int release_send(int32_t kind, int fd) {
    pthread_once(&release_once, release_start);
    if (!release_ready) return 0;
    struct release_command c = {kind, fd};
    ssize_t n;
    do { n = write(release_pipe[1], &c, sizeof c); } while (n < 0 && errno == EINTR);
    return n == (ssize_t)sizeof c;
}

int cp_close_later(int fd) {
    if (release_send(RELEASE_CLOSE, fd)) return 1;
    close(fd);
    return 0;
}

int cp_sync_later(int fd) {
    int copy = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (copy < 0) return 0;
    if (release_send(RELEASE_SYNC, copy)) return 1;
    close(copy);
    return 0;
}
