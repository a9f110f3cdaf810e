// cp_proc.h — process plumbing Swift's Glibc module cannot see or call: it is not built with
// _GNU_SOURCE (signalfd, pipe2, PR_SET_*), and the W* status macros and fcntl are macros or
// variadic.
#ifndef CP_PROC_H
#define CP_PROC_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/resource.h>

#ifdef __cplusplus
extern "C" {
#endif

/// socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC).
int cp_socketpair(int fds[2]);
/// pipe2 with O_CLOEXEC (and O_NONBLOCK on the read end when nonblocking_read).
int cp_pipe(int fds[2], int nonblocking_read);
int cp_set_nonblocking(int fd, int on);

/// Blocks SIGCHLD (and SIGPIPE is ignored) and returns a non-blocking signalfd for SIGCHLD.
int cp_sigchld_fd(void);
/// Drains a signalfd; returns the number of signals read.
int cp_drain_signalfd(int fd);

/// Blocks the `count` signals of `sigs` and returns a non-blocking signalfd for them (the CLI's
/// SIGWINCH and the signals it passes on to a job), or -1.
int cp_signal_fd(const int *sigs, int count);
/// The next signal waiting on a signalfd (its number), or 0 when none waits.
int cp_read_signal(int fd);
/// Installs, now, a handler for the `count` signals of `sigs` that writes each one's number
/// into a pipe, and returns the pipe's (blocking) read end, or -1. For the daemon's SIGTERM,
/// SIGINT and SIGHUP: nothing is lost between the call and the first read.
int cp_signal_pipe(const int *sigs, int count);
/// Blocks until a signal comes through `cp_signal_pipe`'s pipe; its number, or 0 at its end.
int cp_read_signal_pipe(int fd);

/// wait4 with the rusage split out. Returns pid, 0 (WNOHANG, none ready), or -1.
pid_t cp_wait4(pid_t pid, int *status, int options, struct rusage *usage);
int cp_wifexited(int status);
int cp_wexitstatus(int status);
int cp_wifsignaled(int status);
int cp_wtermsig(int status);

/// Raises RLIMIT_NOFILE's soft limit to its hard limit; returns the new soft limit.
long cp_raise_nofile_limit(void);

/// Sets the calling thread's name (comm, 15 bytes at most), as ps and top show it.
int cp_set_name(const char *name);

/// Sets the calling process's parent-death signal.
int cp_set_pdeathsig(int sig);

/// Starts a detached thread of `stack_bytes` running fn(arg) with every signal blocked: a
/// helper thread of a process that reads its signals through a signalfd (the worker), or whose
/// splices into a peer that has gone must be EPIPE rather than SIGPIPE (the proxy's relay),
/// must never take one. 0, or an errno.
int cp_start_quiet_thread(void *(*fn)(void *), void *arg, size_t stack_bytes);

#ifdef __cplusplus
}
#endif
#endif
