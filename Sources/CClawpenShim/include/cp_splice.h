// cp_splice.h — the egress proxy's zero-copy relay. A connection that the proxy carries without
// reading (a plain HTTP request once its head is sent, a CONNECT tunnel) is moved between its two
// sockets by splice(2) through a pipe per direction: the bytes stay in the kernel, where the
// event-loop relay copied each one into the proxy and out again (a 256 MiB download cost the
// proxy's loop twice the CPU of the client reading it). C because splice, F_SETPIPE_SZ and the
// epoll loop that drives them are plain syscalls with flags Swift's Glibc module hides behind
// _GNU_SOURCE, and because the relay thread must run with SIGPIPE blocked and touch nothing of
// Swift's.
//
// Ownership: the engine takes the two socket fds it is given (duplicates: the proxy's event loop
// closes its own once the relay is handed over) and closes them when the relay ends. Nothing
// else refers to them, so a number reused by the process cannot be written to by mistake.
#ifndef CP_SPLICE_H
#define CP_SPLICE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct cp_relay_engine cp_relay_engine;

/// Starts the engine's thread (all signals blocked). Returns NULL with errno if it cannot.
cp_relay_engine *cp_relay_engine_start(void);

/// An eventfd that becomes readable when relays have ended: read it (8 bytes), then take the
/// ends with cp_relay_take_done.
int cp_relay_done_fd(const cp_relay_engine *engine);

/// What a relay joins, and what it sends first.
struct cp_relay_spec {
    uint64_t id;
    /// Connected, non-blocking; the engine's from the call on, also on failure.
    int client_fd;
    /// Connected, non-blocking (the engine's likewise), or -1: the engine connects to
    /// `address` (4 or 16 bytes) and `port` itself, without waiting for it here.
    int upstream_fd;
    const uint8_t *address;
    size_t address_len;
    uint16_t port;
    /// Sent before anything relayed in their direction (a request head; a CONNECT's 200), once
    /// the upstream is connected. As much as the sockets take at once is sent from the calling
    /// thread, so that a request does not wait for the engine's thread to wake for it.
    const void *to_upstream;
    size_t to_upstream_len;
    const void *to_client;
    size_t to_client_len;
    /// When the engine's connection fails (or is not made within `connect_ms`), the client gets
    /// an HTTP response of `fail_status_lines` (the status line and headers, each ending CRLF),
    /// a Content-Length, and the body `fail_message` + ": " + the reason + "\n".
    const char *fail_status_lines;
    const char *fail_message;
    int connect_ms;
    /// No byte either way for this long closes both sides.
    int idle_ms;
};

/// Starts a relay: either side's end of input is passed on as a half-close once what came
/// before it is out; an error on either closes both. Returns 0, or -1 with errno (no fds or
/// memory to spare: the fds are closed, nothing was sent).
int cp_relay_start(cp_relay_engine *engine, const struct cp_relay_spec *spec);

enum cp_relay_stage {
    CP_RELAY_RELAYED = 0,
    /// The engine's connection to the upstream failed: the client got the failure response.
    CP_RELAY_CONNECT_FAILED = 1,
};

/// One relay's end: its id, the bytes relayed each way (the initial ones included), and why it
/// ended (reason 0: both sides finished; ETIMEDOUT: idle, or no connection in time; else the
/// errno of the first failure; stage: a cp_relay_stage).
struct cp_relay_done {
    uint64_t id;
    uint64_t up_bytes;
    uint64_t down_bytes;
    int32_t reason;
    int32_t stage;
};

/// Moves up to `max` ended relays into `out`; returns how many.
size_t cp_relay_take_done(cp_relay_engine *engine, struct cp_relay_done *out, size_t max);

/// Relays in progress.
size_t cp_relay_active(cp_relay_engine *engine);

/// The socket's SO_COOKIE (unique per socket for the life of the system), or 0.
uint64_t cp_socket_cookie(int fd);

/// SO_COOKIE's option number (not in Swift's Glibc module).
int cp_so_cookie_option(void);

#ifdef __cplusplus
}
#endif
#endif
