// libsystemd, for the supervisor only (never the worker): socket activation (sd_listen_fds),
// readiness, status and watchdog (sd_notify), and the journal's native protocol
// (sd_journal_sendv). The variadic sd_journal_send and sd_notifyf are not callable from Swift;
// the iovec and plain-string forms are.
#ifndef CLAWPEN_CSYSTEMD_SHIM_H
#define CLAWPEN_CSYSTEMD_SHIM_H
#include <systemd/sd-daemon.h>
#include <systemd/sd-journal.h>
#include <sys/uio.h>

/// SD_LISTEN_FDS_START is a macro: not imported into Swift.
static inline int clawpen_sd_listen_fds_start(void) { return SD_LISTEN_FDS_START; }
#endif
