// cp_peer.h — the agent sockets: a tenant's listener, bound before its worker starts, and who is
// on the other end of a connection, as the kernel says (SO_PEERPIDFD, pidfd_send_signal). C
// because glibc 2.36 names neither (no SO_PEERPIDFD constant, no pidfd_send_signal wrapper),
// syscall(2) is variadic, which Swift cannot call, and sockaddr_un is easier filled here.
#ifndef CP_PEER_H
#define CP_PEER_H

#ifdef __cplusplus
extern "C" {
#endif

/// A listening Unix socket bound at `path` (an old socket file there is unlinked first; anything
/// else there fails with EEXIST), then chmod `mode`: O_CLOEXEC, non-blocking. Returns the fd or
/// -1 with errno. Synchronous, so that the socket exists before the first job could look for it.
int cp_unix_listen(const char *path, int backlog, unsigned int mode);

/// A pidfd of the process that connected to `sockfd` (SO_PEERPIDFD, Linux 6.5), or -1 with
/// errno. The caller closes it.
int cp_peer_pidfd(int sockfd);

/// SO_PEERPIDFD's option number (77 on every architecture Linux has), for callers that read
/// socket options through their own wrapper.
extern const int CP_SO_PEERPIDFD;

/// pidfd_open(pid): where SO_PEERPIDFD is missing (Linux < 6.5). -1 with errno.
int cp_pidfd_open_pid(int pid);

/// 1 while the process of `pidfd` has not exited (pidfd_send_signal with signal 0), else 0.
/// A pid read before this check belonged to that process: a pidfd pins its process, so the pid
/// cannot have been reused while the pidfd says it is alive.
int cp_pidfd_alive(int pidfd);

/// pidfd_send_signal(pidfd, sig): a signal to exactly that process, never to a later one that
/// reused its pid (an adopted worker, which is not the supervisor's child). -1 with errno.
int cp_pidfd_kill(int pidfd, int sig);

#ifdef __cplusplus
}
#endif
#endif
