// The daemon: `clawpen serve` executes this binary (found next to `clawpen`) with its arguments.
// It is a binary of its own so that the client, `clawpen`, can be a static executable that starts
// in about a millisecond and runs on a host without the Swift toolchain: the daemon links NIO,
// SQLite, libsystemd and libseccomp, which a static link cannot take (Debian ships no static
// libsystemd). docs/architecture.md, "Two binaries".
ServeCommand.main()
