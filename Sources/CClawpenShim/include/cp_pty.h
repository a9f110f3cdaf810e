// cp_pty.h — pseudo-terminals for interactive jobs. C because posix_openpt/unlockpt, the
// TIOCGPTPEER, TIOCSWINSZ and TIOCSCTTY ioctls and struct winsize are macros and variadic
// ioctl calls that Swift's Glibc module does not import (it is not built with _GNU_SOURCE).
#ifndef CP_PTY_H
#define CP_PTY_H

#ifdef __cplusplus
extern "C" {
#endif

/// Opens a new terminal pair from the devpts instance at /dev/pts (through /dev/ptmx): the
/// master (non-blocking, close-on-exec) for the worker, the slave (close-on-exec; the job gets it
/// as fds 0-2 by dup2) for the job, with the window size set. The slave is opened from the
/// master (TIOCGPTPEER), not by its path, so nothing in the sandbox can swap it. 0, or -1 and
/// errno.
int cp_pty_open(int *master_fd, int *slave_fd, unsigned short rows, unsigned short cols);

/// TIOCSWINSZ on the master: the kernel sends SIGWINCH to the terminal's foreground group.
int cp_pty_resize(int master_fd, unsigned short rows, unsigned short cols);

/// The terminal's size as the job sees it (TIOCGWINSZ), for a client's own terminal too.
int cp_pty_get_size(int fd, unsigned short *rows, unsigned short *cols);

/// The terminal's end-of-file character (c_cc[VEOF], normally ctrl-D), or -1.
int cp_pty_eof_char(int fd);

/// Raw mode for a client's own terminal (cfmakeraw), keeping what to restore in `saved`
/// (a buffer of at least cp_termios_size() bytes). 0, or -1 and errno.
int cp_tty_make_raw(int fd, void *saved);
/// Puts back what cp_tty_make_raw saved (TCSADRAIN: what was written goes out first).
int cp_tty_restore(int fd, const void *saved);
unsigned long cp_termios_size(void);

#ifdef __cplusplus
}
#endif
#endif
