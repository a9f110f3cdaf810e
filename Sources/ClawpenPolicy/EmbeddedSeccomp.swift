/// The shipped seccomp profiles, compiled in: used when the policies directory does not exist
/// (embedded defaults), and kept identical to policies/seccomp/*.toml by a unit test
/// (SeccompProfileTests). Regenerate this file when a profile changes.
enum EmbeddedSeccomp {
    static let files: [(name: String, text: String)] = [
        (
            "default",
            """
            # seccomp profile "default": what ordinary tools, shells, Python, compilers and network
            # clients need. An allowlist: any syscall not named here fails with EPERM. Loaded by the worker as
            # the last step of its sandbox setup; it holds for the worker and every process a job starts.
            # Syscall names are the kernel's; a name this architecture lacks (open on aarch64) is skipped.
            description = "ordinary tools, shells, interpreters, compilers, network clients"

            # clone with a CLONE_NEW* flag fails with EPERM; clone3 (whose flags a filter cannot read) fails
            # with ENOSYS, so libc falls back to clone; unshare and setns are not allowed: no new namespaces,
            # no user namespace (the usual first step of kernel exploits).
            restrict_namespaces = true

            # socket(2) and socketpair(2) only for these address families (an argument rule on the domain, as
            # Docker's default profile has for AF_VSOCK); any other family fails with EPERM. "netlink-route"
            # is socket(AF_NETLINK, *, NETLINK_ROUTE) only: `ip addr`, getifaddrs(3) (Node's
            # os.networkInterfaces(), Python's socket.if_nameindex()) read the job's own interfaces through
            # it, and without CAP_NET_ADMIN nothing can be changed. Refused: AF_VSOCK (not confined by network
            # namespaces: on a VM host it reaches the hypervisor), AF_ALG, AF_PACKET, AF_KEY, the other
            # netlink protocols (uevents, audit, netfilter, xfrm) and every other family.
            socket_families = ["unix", "inet", "inet6", "netlink-route"]

            # The calls only an attack makes: the process is killed (SIGSYS) rather than told EPERM.
            kill = [
                "bpf", "delete_module", "finit_module", "init_module", "kexec_file_load", "kexec_load",
                "ptrace",
            ]

            allow = [
                "accept", "accept4", "access", "alarm", "arch_prctl", "bind", "brk", "cachestat", "capget",
                "capset", "chdir", "chmod", "chown", "clock_getres", "clock_gettime", "clock_nanosleep", "clone",
                "close", "close_range", "connect", "copy_file_range", "creat", "dup", "dup2", "dup3",
                "epoll_create", "epoll_create1", "epoll_ctl", "epoll_pwait", "epoll_pwait2", "epoll_wait",
                "eventfd", "eventfd2", "execve", "execveat", "exit", "exit_group", "faccessat", "faccessat2",
                "fadvise64", "fallocate", "fchdir", "fchmod", "fchmodat", "fchmodat2", "fchown", "fchownat",
                "fcntl", "fdatasync", "fgetxattr", "flistxattr", "flock", "fork", "fremovexattr", "fsetxattr",
                "fstat", "fstatfs", "fsync", "ftruncate", "futex", "futex_waitv", "futimesat",
                "get_robust_list", "getcpu", "getcwd", "getdents", "getdents64", "getegid", "geteuid",
                "getgid", "getgroups", "getitimer", "getpeername", "getpgid", "getpgrp", "getpid", "getppid",
                "getpriority", "getrandom", "getresgid", "getresuid", "getrlimit", "getrusage", "getsid",
                "getsockname", "getsockopt", "gettid", "gettimeofday", "getuid", "getxattr",
                "inotify_add_watch", "inotify_init", "inotify_init1", "inotify_rm_watch", "io_cancel",
                "io_destroy", "io_getevents", "io_pgetevents", "io_setup", "io_submit", "ioctl", "ioprio_get",
                "kill", "landlock_add_rule", "landlock_create_ruleset", "landlock_restrict_self", "lchown",
                "lgetxattr", "link", "linkat", "listen", "listxattr", "llistxattr", "lremovexattr", "lseek",
                "lsetxattr", "lstat", "madvise", "membarrier", "memfd_create", "mincore", "mkdir", "mkdirat",
                "mknod", "mknodat", "mlock", "mlock2", "mlockall", "mmap", "mprotect", "mq_getsetattr",
                "mq_notify", "mq_open", "mq_timedreceive", "mq_timedsend", "mq_unlink", "mremap", "msgctl",
                "msgget", "msgrcv", "msgsnd", "msync", "munlock", "munlockall", "munmap", "nanosleep",
                "newfstatat", "open", "openat", "openat2", "pause", "pidfd_getfd", "pidfd_open",
                "pidfd_send_signal", "pipe", "pipe2", "poll", "ppoll", "prctl", "pread64", "preadv", "preadv2",
                "prlimit64", "pselect6", "pwrite64", "pwritev", "pwritev2", "read", "readahead", "readlink",
                "readlinkat", "readv", "recvfrom", "recvmmsg", "recvmsg", "rename", "renameat", "renameat2",
                "restart_syscall", "rmdir", "rseq", "rt_sigaction", "rt_sigpending", "rt_sigprocmask",
                "rt_sigqueueinfo", "rt_sigreturn", "rt_sigsuspend", "rt_sigtimedwait", "rt_tgsigqueueinfo",
                "sched_get_priority_max", "sched_get_priority_min", "sched_getaffinity", "sched_getattr",
                "sched_getparam", "sched_getscheduler", "sched_rr_get_interval", "sched_setaffinity",
                "sched_setattr", "sched_setparam", "sched_setscheduler", "sched_yield", "seccomp", "select",
                "semctl", "semget", "semop", "semtimedop", "sendfile", "sendmmsg", "sendmsg", "sendto",
                "set_robust_list", "set_tid_address", "setfsgid", "setfsuid", "setgid", "setgroups",
                "setitimer", "setpgid", "setpriority", "setregid", "setresgid", "setresuid", "setreuid",
                "setrlimit", "setsid", "setsockopt", "setuid", "shmat", "shmctl", "shmdt", "shmget",
                "shutdown", "sigaltstack", "signalfd", "signalfd4", "socket", "socketpair", "splice", "stat",
                "statfs", "statx", "symlink", "symlinkat", "sync", "sync_file_range", "syncfs", "sysinfo",
                "tee", "tgkill", "time", "timer_create", "timer_delete", "timer_getoverrun", "timer_gettime",
                "timer_settime", "timerfd_create", "timerfd_gettime", "timerfd_settime", "times", "tkill",
                "truncate", "umask", "uname", "unlink", "unlinkat", "utime", "utimensat", "utimes", "vfork",
                "vmsplice", "wait4", "waitid", "write", "writev",
            ]

            """
        ),
        (
            "strict",
            """
            # seccomp profile "strict": for tenants that run computation only. No sockets (beyond the
            # socketpair the worker needs), no SysV or POSIX IPC, no extended attributes, no scheduling or
            # memory-locking knobs, no identity changes, no hard links or device nodes. An allowlist: any
            # syscall not named here fails with EPERM.
            description = "computation only: no network, no IPC, no identity or scheduling changes"

            restrict_namespaces = true

            # socket(2) is not allowed at all; socketpair(2) only for AF_UNIX.
            socket_families = ["unix"]

            kill = [
                "bpf", "delete_module", "finit_module", "init_module", "kexec_file_load", "kexec_load",
                "ptrace",
            ]

            allow = [
                "access", "alarm", "arch_prctl", "brk", "cachestat", "capget", "chdir", "chmod", "chown",
                "clock_getres", "clock_gettime", "clock_nanosleep", "clone", "close", "close_range",
                "copy_file_range", "creat", "dup", "dup2", "dup3", "epoll_create", "epoll_create1",
                "epoll_ctl", "epoll_pwait", "epoll_pwait2", "epoll_wait", "eventfd", "eventfd2", "execve",
                "execveat", "exit", "exit_group", "faccessat", "faccessat2", "fadvise64", "fallocate",
                "fchdir", "fchmod", "fchmodat", "fchmodat2", "fchown", "fchownat", "fcntl", "fdatasync",
                "flock", "fork", "fstat", "fstatfs", "fsync", "ftruncate", "futex", "futex_waitv", "futimesat",
                "get_robust_list", "getcpu", "getcwd", "getdents", "getdents64", "getegid", "geteuid",
                "getgid", "getgroups", "getitimer", "getpgid", "getpgrp", "getpid", "getppid", "getpriority",
                "getrandom", "getresgid", "getresuid", "getrlimit", "getrusage", "getsid", "gettid",
                "gettimeofday", "getuid", "ioctl", "ioprio_get", "kill", "lchown", "lseek", "lstat", "madvise",
                "membarrier", "memfd_create", "mincore", "mkdir", "mkdirat", "mmap", "mprotect", "mremap",
                "msync", "munmap", "nanosleep", "newfstatat", "open", "openat", "openat2", "pause",
                "pidfd_open", "pidfd_send_signal", "pipe", "pipe2", "poll", "ppoll", "prctl", "pread64",
                "preadv", "preadv2", "prlimit64", "pselect6", "pwrite64", "pwritev", "pwritev2", "read",
                "readahead", "readlink", "readlinkat", "readv", "rename", "renameat", "renameat2",
                "restart_syscall", "rmdir", "rseq", "rt_sigaction", "rt_sigpending", "rt_sigprocmask",
                "rt_sigqueueinfo", "rt_sigreturn", "rt_sigsuspend", "rt_sigtimedwait", "rt_tgsigqueueinfo",
                "sched_get_priority_max", "sched_get_priority_min", "sched_getaffinity", "sched_getattr",
                "sched_getparam", "sched_getscheduler", "sched_rr_get_interval", "sched_yield", "seccomp",
                "select", "sendfile", "set_robust_list", "set_tid_address", "setitimer", "setpgid",
                "setrlimit", "setsid", "sigaltstack", "signalfd", "signalfd4", "socketpair", "splice", "stat",
                "statfs", "statx", "symlink", "symlinkat", "sync", "sync_file_range", "syncfs", "sysinfo",
                "tee", "tgkill", "time", "timer_create", "timer_delete", "timer_getoverrun", "timer_gettime",
                "timer_settime", "timerfd_create", "timerfd_gettime", "timerfd_settime", "times", "tkill",
                "truncate", "umask", "uname", "unlink", "unlinkat", "utime", "utimensat", "utimes", "vfork",
                "vmsplice", "wait4", "waitid", "write", "writev",
            ]

            """
        ),
    ]
}
