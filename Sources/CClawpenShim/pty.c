// pty.c — see cp_pty.h for why this is C.
#define _GNU_SOURCE
#include "cp_pty.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <unistd.h>

#ifndef TIOCGPTPEER
#define TIOCGPTPEER _IO('T', 0x41)
#endif

int cp_pty_open(int *master_fd, int *slave_fd, unsigned short rows, unsigned short cols) {
    int m = open("/dev/ptmx", O_RDWR | O_NOCTTY | O_CLOEXEC | O_NONBLOCK);
    if (m < 0) return -1;
    if (unlockpt(m) != 0) { int e = errno; close(m); errno = e; return -1; }
    int s = ioctl(m, TIOCGPTPEER, O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (s < 0) { int e = errno; close(m); errno = e; return -1; }
    struct winsize ws = {.ws_row = rows, .ws_col = cols};
    if (ioctl(m, TIOCSWINSZ, &ws) != 0) { int e = errno; close(m); close(s); errno = e; return -1; }
    *master_fd = m;
    *slave_fd = s;
    return 0;
}

int cp_pty_resize(int master_fd, unsigned short rows, unsigned short cols) {
    struct winsize ws = {.ws_row = rows, .ws_col = cols};
    return ioctl(master_fd, TIOCSWINSZ, &ws);
}

int cp_pty_get_size(int fd, unsigned short *rows, unsigned short *cols) {
    struct winsize ws;
    if (ioctl(fd, TIOCGWINSZ, &ws) != 0) return -1;
    *rows = ws.ws_row;
    *cols = ws.ws_col;
    return 0;
}

int cp_pty_eof_char(int fd) {
    struct termios t;
    if (tcgetattr(fd, &t) != 0) return -1;
    return (unsigned char)t.c_cc[VEOF];
}

unsigned long cp_termios_size(void) { return sizeof(struct termios); }

int cp_tty_make_raw(int fd, void *saved) {
    struct termios t;
    if (tcgetattr(fd, &t) != 0) return -1;
    *(struct termios *)saved = t;
    cfmakeraw(&t);
    return tcsetattr(fd, TCSADRAIN, &t);
}

int cp_tty_restore(int fd, const void *saved) { return tcsetattr(fd, TCSADRAIN, (const struct termios *)saved); }
