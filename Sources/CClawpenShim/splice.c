// The egress proxy's zero-copy relay. See cp_splice.h for why this is C.
#include "cp_splice.h"
#include "cp_proc.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

// A pipe per direction, grown to 1 MiB (the kernel's default pipe-max-size) the first time it
// fills: a download moves in steps of that, not of the default 64 KiB, and a small request pays
// for neither the growing nor the pages. A pipe the kernel will not grow (the user's pipe pages
// are spent) keeps its size: slower, not wrong.
enum { PIPE_BYTES = 1 << 20 };
// One relay moves at most this much per direction before the others get their turn (the thread
// serves every tenant's relays; a fast download must not hold up a neighbour's request): one
// pipe's worth, a few hundred microseconds, which is also the longest the proxy's loop can wait
// for the engine's lock to hand over a new relay.
enum { TURN_BYTES = 1 << 20 };

// Direction d carries what side d reads to side 1 - d: 0 client -> upstream, 1 upstream -> client.
struct direction {
    int pipe_r, pipe_w;
    size_t pipe_cap;
    int grown;              // asked the kernel for PIPE_BYTES once (granted or not)
    size_t in_pipe;
    uint8_t *head;          // sent to the destination before anything relayed
    size_t head_len, head_off;
    int src_eof;            // the source ended its input
    int shut;               // ...and that end was passed on (shutdown SHUT_WR of the destination)
    uint64_t bytes;
};

struct relay {
    uint64_t id;
    int fd[2];              // 0 client, 1 upstream
    struct direction dir[2];
    int64_t last_ms;
    int idle_ms;
    int connecting;         // the engine's own connection to the upstream is not made yet
    int refused;            // ...and connect() itself failed with this errno
    int64_t connect_deadline_ms;
    char *fail_status_lines, *fail_message;
    int closed;
    int ready;              // on the ready list: its turn ran out with bytes still waiting
    struct relay *prev, *next;      // every live relay (idle scan)
    struct relay *ready_next;
    struct relay *grave_next;       // ended in this batch, freed after it
};

struct cp_relay_engine {
    int epfd;
    int donefd;
    pthread_mutex_t mu;     // the live list, the done queue, and each relay while it is pumped
    struct relay *live;
    size_t active;
    struct cp_relay_done *done;
    size_t done_count, done_cap;
    struct relay *ready;
};

static int64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

uint64_t cp_socket_cookie(int fd) {
    uint64_t cookie = 0;
    socklen_t len = sizeof cookie;
    if (getsockopt(fd, SOL_SOCKET, SO_COOKIE, &cookie, &len) != 0 || len != sizeof cookie) return 0;
    return cookie;
}

int cp_so_cookie_option(void) { return SO_COOKIE; }

static void close_pipes(struct relay *r) {
    for (int d = 0; d < 2; d++) {
        if (r->dir[d].pipe_r >= 0) close(r->dir[d].pipe_r);
        if (r->dir[d].pipe_w >= 0) close(r->dir[d].pipe_w);
        r->dir[d].pipe_r = r->dir[d].pipe_w = -1;
    }
}

static void free_relay(struct relay *r) {
    free(r->dir[0].head);
    free(r->dir[1].head);
    free(r->fail_status_lines);
    free(r->fail_message);
    free(r);
}

// Sends what it can of a head now; 0, or an errno that ends the relay.
static int send_head(struct relay *r, int d) {
    struct direction *x = &r->dir[d];
    int dst = r->fd[1 - d];
    while (x->head_off < x->head_len) {
        ssize_t n = send(dst, x->head + x->head_off, x->head_len - x->head_off, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n > 0) {
            x->head_off += (size_t)n;
            x->bytes += (uint64_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return 0;
        return n < 0 ? errno : EPIPE;
    }
    return 0;
}

// Moves what direction d can move now. Returns 0 when it must wait for the kernel (or is
// finished), -1 when its turn ran out with more to do, or an errno that ends the relay.
static int pump(struct relay *r, int d) {
    struct direction *x = &r->dir[d];
    int src = r->fd[d], dst = r->fd[1 - d];
    size_t moved = 0;
    for (;;) {
        if (x->head_off < x->head_len) {
            int e = send_head(r, d);
            if (e) return e;
            if (x->head_off < x->head_len) return 0;
        }
        if (x->in_pipe > 0) {
            ssize_t n = splice(x->pipe_r, NULL, dst, NULL, x->in_pipe, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
            if (n > 0) {
                x->in_pipe -= (size_t)n;
                continue;
            }
            if (n < 0 && errno == EINTR) continue;
            if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return 0;
            return n < 0 ? errno : EPIPE;
        }
        if (x->src_eof) {
            if (!x->shut) {
                x->shut = 1;
                // The peer may have gone already (ENOTCONN): the relay ends on the other side's
                // error or end then.
                (void)shutdown(dst, SHUT_WR);
            }
            return 0;
        }
        if (moved >= TURN_BYTES) return -1;
        // The pipe is empty here: EAGAIN can only mean the socket has nothing to read.
        ssize_t n = splice(src, NULL, x->pipe_w, NULL, x->pipe_cap, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
        if (n > 0) {
            x->in_pipe = (size_t)n;
            x->bytes += (uint64_t)n;
            moved += (size_t)n;
            r->last_ms = now_ms();
            if ((size_t)n == x->pipe_cap && !x->grown) {
                x->grown = 1;
                int cap = fcntl(x->pipe_w, F_SETPIPE_SZ, PIPE_BYTES);
                if (cap > 0) x->pipe_cap = (size_t)cap;
            }
            continue;
        }
        if (n == 0) {
            x->src_eof = 1;
            continue;
        }
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
        return errno;
    }
}

static void signal_done(struct cp_relay_engine *e) {
    uint64_t one = 1;
    ssize_t n;
    do { n = write(e->donefd, &one, sizeof one); } while (n < 0 && errno == EINTR);
}

// Ends a relay (called with mu held): out of epoll and the live list, fds closed, its end
// queued. Freed by the caller once no event of the current batch can name it.
static void finish_stage(struct cp_relay_engine *e, struct relay *r, int reason, int stage);
static void finish(struct cp_relay_engine *e, struct relay *r, int reason) { finish_stage(e, r, reason, CP_RELAY_RELAYED); }

// The connection to the upstream failed: the client hears why (best effort: the response is a
// few hundred bytes on a socket that has sent nothing yet), then both close.
static void connect_failed(struct cp_relay_engine *e, struct relay *r, int reason) {
    char body[1024], out[2048];
    int b = snprintf(body, sizeof body, "%s: %s\n", r->fail_message ? r->fail_message : "cannot reach the upstream", strerror(reason));
    if (b < 0) b = 0;
    if ((size_t)b >= sizeof body) b = (int)sizeof body - 1;
    int n = snprintf(out, sizeof out, "%sContent-Length: %d\r\nConnection: close\r\n\r\n%.*s",
                     r->fail_status_lines ? r->fail_status_lines : "HTTP/1.1 502 Bad Gateway\r\n", b, b, body);
    if (n > 0) (void)send(r->fd[0], out, (size_t)n < sizeof out ? (size_t)n : sizeof out - 1, MSG_NOSIGNAL | MSG_DONTWAIT);
    finish_stage(e, r, reason, CP_RELAY_CONNECT_FAILED);
}

// -1 once the engine's connection is made, 0 while it is under way, or an errno (SO_ERROR is
// consumed by reading it: the caller keeps what it got).
static int connect_state(struct relay *r) {
    if (r->refused) return r->refused;
    int err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(r->fd[1], SOL_SOCKET, SO_ERROR, &err, &len) != 0) return errno;
    if (err) return err;
    struct sockaddr_storage peer;
    socklen_t plen = sizeof peer;
    if (getpeername(r->fd[1], (struct sockaddr *)&peer, &plen) == 0) return -1;
    return errno == ENOTCONN ? 0 : errno;
}

static void finish_stage(struct cp_relay_engine *e, struct relay *r, int reason, int stage) {
    if (r->closed) return;
    r->closed = 1;
    for (int s = 0; s < 2; s++) {
        (void)epoll_ctl(e->epfd, EPOLL_CTL_DEL, r->fd[s], NULL);
        close(r->fd[s]);
    }
    close_pipes(r);
    if (r->prev) r->prev->next = r->next; else e->live = r->next;
    if (r->next) r->next->prev = r->prev;
    e->active--;
    if (e->done_count == e->done_cap) {
        size_t cap = e->done_cap ? e->done_cap * 2 : 64;
        struct cp_relay_done *grown = realloc(e->done, cap * sizeof *grown);
        if (grown) { e->done = grown; e->done_cap = cap; }
    }
    // Without room the end is not reported (its counts and its connection slot are lost to the
    // proxy's books): only when malloc fails, which the proxy does not survive anyway.
    if (e->done_count < e->done_cap) {
        e->done[e->done_count++] = (struct cp_relay_done){
            .id = r->id, .up_bytes = r->dir[0].bytes, .down_bytes = r->dir[1].bytes, .reason = reason, .stage = stage};
    }
    signal_done(e);
}

// Pumps both directions of r (mu held); returns 1 if its turn ran out with more to do.
static int run_relay(struct cp_relay_engine *e, struct relay *r) {
    if (r->closed) return 0;
    if (r->connecting) {
        int c = connect_state(r);
        if (c == 0) return 0;
        if (c > 0) {
            connect_failed(e, r, c);
            return 0;
        }
        r->connecting = 0;
        r->last_ms = now_ms();
    }
    int again = 0;
    for (int d = 0; d < 2; d++) {
        int rc = pump(r, d);
        if (rc > 0) {
            finish(e, r, rc);
            return 0;
        }
        if (rc < 0) again = 1;
    }
    if (r->dir[0].shut && r->dir[1].shut) {
        finish(e, r, 0);
        return 0;
    }
    return again;
}

static void *engine_main(void *arg) {
    struct cp_relay_engine *e = arg;
    struct epoll_event events[64];
    int64_t last_scan = now_ms();
    for (;;) {
        int n = epoll_wait(e->epfd, events, 64, e->ready ? 0 : 500);
        if (n < 0 && errno != EINTR) return NULL;
        struct relay *grave = NULL;
        struct relay *ready = NULL;
        pthread_mutex_lock(&e->mu);
        // Relays whose turn ran out last time go first, then those with news.
        struct relay *again = e->ready;
        e->ready = NULL;
        pthread_mutex_unlock(&e->mu);
        while (again) {
            struct relay *r = again;
            again = r->ready_next;
            pthread_mutex_lock(&e->mu);
            r->ready = 0;
            if (run_relay(e, r)) { r->ready = 1; r->ready_next = ready; ready = r; }
            if (r->closed) { r->grave_next = grave; grave = r; }
            pthread_mutex_unlock(&e->mu);
        }
        for (int i = 0; i < n; i++) {
            struct relay *r = events[i].data.ptr;
            pthread_mutex_lock(&e->mu);
            if (!r->ready && !r->closed) {
                if (run_relay(e, r)) { r->ready = 1; r->ready_next = ready; ready = r; }
                // Not closed before this run: not in the grave yet.
                if (r->closed) { r->grave_next = grave; grave = r; }
            }
            pthread_mutex_unlock(&e->mu);
        }
        int64_t now = now_ms();
        pthread_mutex_lock(&e->mu);
        if (now - last_scan >= 500) {
            last_scan = now;
            struct relay *r = e->live;
            while (r) {
                struct relay *next = r->next;
                if (r->connecting && now >= r->connect_deadline_ms) {
                    connect_failed(e, r, ETIMEDOUT);
                    r->grave_next = grave;
                    grave = r;
                } else if (!r->connecting && now - r->last_ms >= r->idle_ms && !r->ready) {
                    finish(e, r, ETIMEDOUT);
                    r->grave_next = grave;
                    grave = r;
                }
                r = next;
            }
        }
        // A relay on the ready list that ended since is freed below, not run again.
        struct relay **link = &ready;
        while (*link) {
            if ((*link)->closed) *link = (*link)->ready_next; else link = &(*link)->ready_next;
        }
        e->ready = ready;
        pthread_mutex_unlock(&e->mu);
        // Nothing of this batch can name them any more: both fds left epoll when they ended.
        while (grave) {
            struct relay *next = grave->grave_next;
            free_relay(grave);
            grave = next;
        }
    }
}

cp_relay_engine *cp_relay_engine_start(void) {
    struct cp_relay_engine *e = calloc(1, sizeof *e);
    if (!e) return NULL;
    e->epfd = epoll_create1(EPOLL_CLOEXEC);
    e->donefd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (e->epfd < 0 || e->donefd < 0) goto fail;
    pthread_mutex_init(&e->mu, NULL);
    // A splice into a socket whose peer has gone raises SIGPIPE in this thread: blocked, it is
    // an EPIPE. Every other signal is the process's business, not this thread's.
    int rc = cp_start_quiet_thread(engine_main, e, 256 * 1024);
    if (rc != 0) { errno = rc; goto fail; }
    return e;
fail:;
    int saved = errno;
    if (e->epfd >= 0) close(e->epfd);
    if (e->donefd >= 0) close(e->donefd);
    free(e);
    errno = saved;
    return NULL;
}

int cp_relay_done_fd(const cp_relay_engine *engine) { return engine->donefd; }

static int copy_head(struct direction *x, const void *bytes, size_t len) {
    if (len == 0) return 0;
    x->head = malloc(len);
    if (!x->head) return -1;
    memcpy(x->head, bytes, len);
    x->head_len = len;
    return 0;
}

// A non-blocking connect to the spec's address, TCP_NODELAY (a request head and small answers
// must not wait for a delayed ACK). Returns the fd, or -1 with errno.
static int connect_upstream(const struct cp_relay_spec *spec, int *refused) {
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    socklen_t len;
    if (spec->address_len == 4) {
        struct sockaddr_in *in = (struct sockaddr_in *)&ss;
        in->sin_family = AF_INET;
        in->sin_port = htons(spec->port);
        memcpy(&in->sin_addr, spec->address, 4);
        len = sizeof *in;
    } else if (spec->address_len == 16) {
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons(spec->port);
        memcpy(&in6->sin6_addr, spec->address, 16);
        len = sizeof *in6;
    } else {
        errno = EAFNOSUPPORT;
        return -1;
    }
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    int one = 1;
    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    // Refused at once (no route, no port to spare): the error is not left in SO_ERROR, so it is
    // kept for the engine to report (the unconnected socket polls as hung up: it runs at once).
    if (connect(fd, (struct sockaddr *)&ss, len) != 0 && errno != EINPROGRESS) *refused = errno;
    return fd;
}

int cp_relay_start(cp_relay_engine *e, const struct cp_relay_spec *spec) {
    int client_fd = spec->client_fd, upstream_fd = spec->upstream_fd;
    struct relay *r = calloc(1, sizeof *r);
    int saved = ENOMEM;
    if (!r) goto fail_fds;
    r->id = spec->id;
    r->fd[0] = client_fd;
    r->fd[1] = -1;
    r->dir[0].pipe_r = r->dir[0].pipe_w = r->dir[1].pipe_r = r->dir[1].pipe_w = -1;
    r->idle_ms = spec->idle_ms > 0 ? spec->idle_ms : 1;
    r->last_ms = now_ms();
    for (int d = 0; d < 2; d++) {
        int p[2];
        if (pipe2(p, O_CLOEXEC | O_NONBLOCK) != 0) { saved = errno; goto fail_relay; }
        r->dir[d].pipe_r = p[0];
        r->dir[d].pipe_w = p[1];
        int cap = fcntl(p[1], F_GETPIPE_SZ);
        r->dir[d].pipe_cap = cap > 0 ? (size_t)cap : 65536;
    }
    // The heads go to the destination of direction 0 (the upstream) and of direction 1 (the client).
    if (copy_head(&r->dir[0], spec->to_upstream, spec->to_upstream_len) != 0 ||
        copy_head(&r->dir[1], spec->to_client, spec->to_client_len) != 0 ||
        (spec->fail_status_lines && !(r->fail_status_lines = strdup(spec->fail_status_lines))) ||
        (spec->fail_message && !(r->fail_message = strdup(spec->fail_message)))) {
        saved = ENOMEM;
        goto fail_relay;
    }
    if (upstream_fd < 0) {
        upstream_fd = connect_upstream(spec, &r->refused);
        if (upstream_fd < 0) { saved = errno; goto fail_relay; }
        r->connecting = 1;
        r->connect_deadline_ms = r->last_ms + (spec->connect_ms > 0 ? spec->connect_ms : 1);
    }
    r->fd[1] = upstream_fd;
    // Over loopback the connection is usually made within connect() itself: then the heads go
    // now, without a wake-up of the engine in between. Failures are the engine's to report.
    if (r->connecting) {
        int c = connect_state(r);
        if (c < 0) r->connecting = 0;
        else if (c > 0) r->refused = c;
    }
    if (!r->connecting) {
        for (int d = 0; d < 2; d++) {
            int rc = send_head(r, d);
            if (rc) { saved = rc; goto fail_relay; }
        }
    }
    pthread_mutex_lock(&e->mu);
    r->next = e->live;
    if (e->live) e->live->prev = r;
    e->live = r;
    e->active++;
    // Edge-triggered: the engine moves until the kernel says EAGAIN, then waits for the next
    // change; registered with mu held, so it cannot run r before both fds are in.
    for (int s = 0; s < 2; s++) {
        struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET, .data.ptr = r};
        if (epoll_ctl(e->epfd, EPOLL_CTL_ADD, r->fd[s], &ev) != 0) {
            saved = errno;
            if (s == 1) (void)epoll_ctl(e->epfd, EPOLL_CTL_DEL, r->fd[0], NULL);
            if (r->prev) r->prev->next = r->next; else e->live = r->next;
            if (r->next) r->next->prev = r->prev;
            e->active--;
            pthread_mutex_unlock(&e->mu);
            goto fail_relay;
        }
    }
    pthread_mutex_unlock(&e->mu);
    return 0;
fail_relay:
    close_pipes(r);
    free_relay(r);
fail_fds:
    close(client_fd);
    if (upstream_fd >= 0) close(upstream_fd);
    errno = saved;
    return -1;
}

size_t cp_relay_take_done(cp_relay_engine *e, struct cp_relay_done *out, size_t max) {
    pthread_mutex_lock(&e->mu);
    size_t n = e->done_count < max ? e->done_count : max;
    memcpy(out, e->done, n * sizeof *out);
    memmove(e->done, e->done + n, (e->done_count - n) * sizeof *out);
    e->done_count -= n;
    pthread_mutex_unlock(&e->mu);
    return n;
}

size_t cp_relay_active(cp_relay_engine *e) {
    pthread_mutex_lock(&e->mu);
    size_t n = e->active;
    pthread_mutex_unlock(&e->mu);
    return n;
}
