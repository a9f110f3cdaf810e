import CClawpenShim
import ClawpenSystem
import ClawpenWire
import Glibc

/// The mount facility. Supervisor side (`prepareFromSupervisor`): the whole mount tree, built
/// from inside the new worker's mount namespace while the worker is exec'd (it depends only on
/// the plan and the mount namespace, not on the worker's identity; /proc is mounted for the
/// worker's pid namespace with `pidns=`). Worker side: the same steps when the supervisor could
/// not do them, /proc when the kernel lacks `pidns=`, then pivot_root. The steps themselves
/// and their order are the Checklist.
public enum Mounts {
    /// Terminals a worker's devpts instance may hold at once (`max=`; see mountDev).
    public static let maxTerminals = 64

    public enum Preparation: Equatable, Sendable {
        case prepared
        /// The supervisor may not join the worker's mount namespace (setns: EPERM without
        /// CAP_SYS_CHROOT); the worker builds everything itself.
        case cannotJoin(errno: Int32)
    }

    /// Runs the checklist's mount-namespace steps from inside the mount namespace of
    /// `workerPID`, on the calling thread, which then returns to its own namespace and working
    /// directory (cp_mount_ns_leave aborts rather than leave it in a tenant's). A step that fails
    /// once inside is the worker's setup failing, and throws.
    public static func prepareFromSupervisor(_ plan: SandboxPlan, workerPID: Int32) throws(StepFailure) -> Preparation {
        let home = cp_mount_ns_enter(workerPID)
        guard home >= 0 else { return .cannotJoin(errno: errno) }
        defer { cp_mount_ns_leave(home) }
        // The thread has a filesystem context of its own now (cp_mount_ns_enter unshared it), so
        // its umask can be set for the steps without touching the supervisor's other threads.
        let umaskBefore = umask(Checklist.umask)
        defer { umask(umaskBefore) }
        let ctx = SetupContext(plan: plan, workerPID: workerPID)
        for step in Checklist.steps where step.side == .mountNamespace { try step.run?(ctx) }
        return .prepared
    }

    // MARK: Helpers

    /// Opens a mount target below `dir` without following symlinks (see cp_open_beneath).
    static func open(_ dir: Int32, _ path: String, directory: Bool, mode: mode_t = 0o755) throws(StepFailure) -> Int32 {
        let rel = String(path.drop { $0 == "/" })
        return try StepFailure.check("open mount target", path) { cp_open_beneath(dir, rel, directory ? 1 : 0, mode) }
    }

    private static func isDirectory(_ path: String) -> Bool? {
        var st = stat()
        guard stat(path, &st) == 0 else { return nil }
        return (st.st_mode & S_IFMT) == S_IFDIR
    }

    /// Binds `source` at `target` below `dir`, then makes that mount read-only, nosuid, nodev.
    /// A source missing on this host is skipped (/lib64 on arm64).
    static func bindReadOnly(_ source: String, at target: String, below dir: Int32) throws(StepFailure) {
        guard let isDir = isDirectory(source) else { return }
        let fd = try open(dir, target, directory: isDir)
        defer { close(fd) }
        try StepFailure.check("bind \(source)", target) { cp_mount_at(source, -1, fd, nil, CP_MS_BIND, nil) }
        let mounted = try open(dir, target, directory: isDir) // the new mount, not the directory under it
        defer { close(mounted) }
        try StepFailure.check("remount \(target) read-only", target) { cp_remount_bind(mounted, CP_MS_RDONLY | CP_MS_NOSUID | CP_MS_NODEV) }
    }

    /// `name` (one component below `dir`) becomes a symlink to `content`. What stands there is
    /// replaced only if it is a symlink or an empty directory (an old mount point); a tenant's
    /// file or non-empty directory stops the setup instead of being removed.
    static func placeSymlink(_ path: String, pointingAt content: String, below dir: Int32) throws(StepFailure) {
        let name = String(path.drop { $0 == "/" })
        var st = stat()
        if fstatat(dir, name, &st, AT_SYMLINK_NOFOLLOW) == 0 {
            switch st.st_mode & S_IFMT {
            case S_IFLNK:
                var buf = [CChar](repeating: 0, count: 4096)
                let n = readlinkat(dir, name, &buf, buf.count - 1)
                if n > 0, String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self) == content { return }
                try StepFailure.check("replace symlink \(path)") { unlinkat(dir, name, 0) }
            case S_IFDIR:
                try StepFailure.check("remove old mount point \(path) (it must be empty)", path) { unlinkat(dir, name, AT_REMOVEDIR) }
            default:
                throw StepFailure(step: "place symlink \(path)", errno: EEXIST, detail: "a file of the tenant's is in the way")
            }
        }
        try StepFailure.check("symlink \(path)", content) { symlinkat(content, dir, name) }
    }

    static func writeFile(_ dir: Int32, _ name: String, _ bytes: [UInt8], path: String) throws(StepFailure) {
        try StepFailure.check("write \(path)") { bytes.withUnsafeBytes { cp_write_file(dir, name, $0.baseAddress, $0.count, 0o644) } }
    }

    // MARK: Steps (in the Checklist's order)

    static func makePrivate(_ ctx: SetupContext) throws(StepFailure) {
        try StepFailure.check("make mounts private") { cp_mounts_private() }
    }

    /// The tenant's data on the host: `<workspace-root>/<tenant>` (root's, 0700) and its `home`
    /// (the tenant's, 0700), opened without following a link. A workspace of the old layout
    /// (the tenant's own, with the mount points in it) is migrated first (Workspace.migrate).
    static func openWorkspace(_ ctx: SetupContext) throws(StepFailure) {
        let plan = ctx.plan
        let ws = try ctx.workspace()
        var st = stat()
        try StepFailure.check("stat workspace", plan.workspace) { fstat(ws, &st) }
        if st.st_uid != 0 || st.st_gid != 0 || st.st_mode & 0o7777 != 0o700 {
            try Workspace.migrate(workspaceFD: ws, path: plan.workspace, uid: plan.uid, gid: plan.gid)
        }
        ctx.homeFD = try Workspace.openHome(workspaceFD: ws, path: plan.workspace, uid: plan.uid, gid: plan.gid)
    }

    /// The directories of the new root: mount points only (the binds' targets are made by
    /// bindReadOnly, the links by placeLinks).
    static let skeleton = ["dev", "etc", "home", "proc", "tmp"]

    /// `/` is a fresh tmpfs mounted over the workspace directory in this namespace: root's,
    /// holding only mount points, links and /etc, read-only once they are made (rootReadOnly).
    /// The tenant's home is bound into it read-write, nosuid, nodev.
    static func mountNewRoot(_ ctx: SetupContext) throws(StepFailure) {
        let ws = try ctx.workspace()
        try StepFailure.check("mount tmpfs at /", ctx.plan.workspace) {
            cp_mount_at("tmpfs", -1, ws, "tmpfs", CP_MS_NOSUID | CP_MS_NODEV | CP_MS_NOEXEC, "mode=0755,size=4m,nr_inodes=1024")
        }
        let root = try ctx.root()
        for name in skeleton { try StepFailure.check("mkdir /\(name)") { mkdirat(root, name, 0o755) } }
        let target = try open(root, "/home", directory: true)
        defer { close(target) }
        try StepFailure.check("bind /home", ctx.plan.workspace + "/home") { cp_mount_at(nil, ctx.homeFD, target, nil, CP_MS_BIND, nil) }
        let home = try open(root, "/home", directory: true) // the new mount
        defer { close(home) }
        try StepFailure.check("remount /home nosuid, nodev") { cp_remount_bind(home, CP_MS_NOSUID | CP_MS_NODEV) }
    }

    static func bindHostPaths(_ ctx: SetupContext) throws(StepFailure) {
        let root = try ctx.root()
        for bind in ctx.plan.readOnlyBinds { try bindReadOnly(bind.source, at: bind.target, below: root) }
    }

    static func placeLinks(_ ctx: SetupContext) throws(StepFailure) {
        let root = try ctx.root()
        for link in ctx.plan.symlinks { try placeSymlink(link.target, pointingAt: link.source, below: root) }
    }

    /// The only device nodes a tenant sees: (name, major, minor).
    static let devices: [(String, UInt32, UInt32)] = [
        ("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8), ("urandom", 1, 9), ("tty", 5, 0),
    ]
    static let deviceLinks = [("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")]

    /// A minimal /dev: no disks, no kmsg, no mem.
    static func mountDev(_ ctx: SetupContext) throws(StepFailure) {
        let root = try ctx.root()
        let devTarget = try open(root, "/dev", directory: true)
        try StepFailure.check("mount /dev") { cp_mount_at("tmpfs", -1, devTarget, "tmpfs", CP_MS_NOSUID | CP_MS_NOEXEC, "mode=0755,size=64k") }
        close(devTarget)
        let dev = try open(root, "/dev", directory: true)
        defer { close(dev) }
        for (name, major, minor) in devices {
            try StepFailure.check("mknod /dev/\(name)") { cp_mknod_char(dev, name, 0o666, major, minor) }
        }
        for (name, target) in deviceLinks {
            try StepFailure.check("symlink /dev/\(name)") { symlinkat(target, dev, name) }
        }
        // The tenant's own terminals (interactive jobs): a new devpts instance, so that it sees
        // none of the host's terminals. nodev like every writable mount: /dev/ptmx (a node on
        // the /dev tmpfs) opens the instance at its sibling "pts", and the worker opens a job's
        // end from the master (TIOCGPTPEER), not by a path, so nothing needs a device on it.
        // Best effort: where the host forbids it (a service's device policy without ptmx and
        // char-pts, as clawpen.service had before it allowed them; a kernel without devpts) the
        // worker still serves its other jobs, and a terminal job fails with the step and errno
        // of "open a terminal (/dev/ptmx)". `max=`: every devpts instance but the host's draws
        // on one pool (kernel.pty.max less kernel.pty.reserve, 3,072 by default); without a cap,
        // one tenant's job opening /dev/ptmx in a loop would leave no terminal for any other.
        let pts = try open(dev, "pts", directory: true, mode: 0o755)
        if cp_mount_at("devpts", -1, pts, "devpts", CP_MS_NOSUID | CP_MS_NODEV | CP_MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620,max=\(Self.maxTerminals)")
            == 0
        {
            _ = cp_mknod_char(dev, "ptmx", 0o666, 5, 2)
        }
        close(pts)
        let shm = try open(dev, "shm", directory: true, mode: 0o1777)
        try StepFailure.check("mount /dev/shm") {
            cp_mount_at("tmpfs", -1, shm, "tmpfs", CP_MS_NOSUID | CP_MS_NODEV | CP_MS_NOEXEC, "mode=1777,size=\(ctx.plan.tmpSizeBytes)")
        }
        close(shm)
        try StepFailure.check("remount /dev read-only") { cp_remount_bind(dev, CP_MS_RDONLY | CP_MS_NOSUID | CP_MS_NOEXEC) }
    }

    static func mountTmp(_ ctx: SetupContext) throws(StepFailure) {
        let tmp = try open(try ctx.root(), "/tmp", directory: true)
        defer { close(tmp) }
        try StepFailure.check("mount /tmp") { cp_mount_at("tmpfs", -1, tmp, "tmpfs", CP_MS_NOSUID | CP_MS_NODEV, "mode=1777,size=\(ctx.plan.tmpSizeBytes)") }
    }

    /// The generated files of /etc: (name, content).
    static func etcFiles(_ plan: SandboxPlan) -> [(String, String)] {
        [
            ("passwd", plan.passwd), ("group", plan.group), ("hostname", plan.tenant + "\n"),
            ("hosts", "127.0.0.1\tlocalhost \(plan.tenant)\n::1\tlocalhost\n"),
        ]
    }

    /// /etc is synthetic: generated passwd and group, a few read-only binds, nothing else. It is
    /// a directory of the new root, read-only with it.
    static func makeEtc(_ ctx: SetupContext) throws(StepFailure) {
        let plan = ctx.plan
        let etc = try open(try ctx.root(), "/etc", directory: true)
        defer { close(etc) }
        for (name, content) in etcFiles(plan) { try writeFile(etc, name, Array(content.utf8), path: "/etc/\(name)") }
        for bind in plan.etcBinds {
            guard bind.target.hasPrefix("/etc/") else { continue }
            let name = String(bind.target.dropFirst(5))
            // A small file (ld.so.cache) is copied rather than bound: a write to the new root
            // costs less than a bind and its remount.
            if !name.contains("/"), let bytes = Files.readRegularFile(bind.source, limit: 256 * 1024) {
                try writeFile(etc, name, bytes, path: "/etc/\(name)")
                continue
            }
            try bindReadOnly(bind.source, at: name, below: etc)
        }
    }

    /// What container runtimes mask in /proc (runc's and Docker's defaults, plus the host-wide
    /// counters and symbol tables a tenant has no use for). Files are covered by /dev/null,
    /// directories by an empty read-only directory; a name this kernel does not have is skipped.
    public static let procMaskedFiles = [
        "kcore", "keys", "key-users", "kallsyms", "config.gz", "interrupts", "softirqs",
        "timer_list", "timer_stats", "sched_debug", "latency_stats",
    ]
    public static let procMaskedDirectories = ["acpi", "asound", "scsi"]
    /// Bound read-only over themselves: the kernel's knobs and triggers. (Docker also covers
    /// /proc/bus, /proc/fs and /proc/irq, for containers that run as root; nothing there is
    /// writable without root, a tenant never is, and each cover costs two mount calls on the
    /// cold start's path.)
    public static let procReadOnly = ["sys", "sysrq-trigger"]

    /// /proc of the worker's pid namespace (hidepid=invisible), with the masks above. The
    /// supervisor mounts it from outside that pid namespace with `pidns=` (Linux 6.18); where the
    /// kernel does not know the option it leaves /proc to the worker, whose own pid namespace it
    /// is. A /proc already mounted (by the supervisor) is left as it is.
    static func mountProc(_ ctx: SetupContext) throws(StepFailure) {
        let root = try ctx.root()
        let target = try open(root, "/proc", directory: true)
        defer { close(target) }
        if cp_is_procfs(target) == 1 { return }
        var options = "hidepid=invisible"
        if let pid = ctx.workerPID { options += ",pidns=/proc/\(pid)/ns/pid" }
        if cp_mount_at("proc", -1, target, "proc", CP_MS_NOSUID | CP_MS_NODEV | CP_MS_NOEXEC, options) != 0 {
            if errno == EINVAL && ctx.workerPID != nil { return } // no pidns= here: the worker mounts it
            throw StepFailure(step: "mount /proc", errno: errno, detail: options)
        }
        let proc = try open(root, "/proc", directory: true) // the new mount
        defer { close(proc) }
        let dev = try open(root, "/dev", directory: true)
        let null = cp_open_path(dev, "null")
        close(dev)
        guard null >= 0 else { throw StepFailure(step: "open /dev/null", errno: errno) }
        defer { close(null) }
        for name in procMaskedFiles {
            // A file only root may read (timer_list here) needs no cover: a tenant never is root.
            var st = stat()
            guard fstatat(proc, name, &st, AT_SYMLINK_NOFOLLOW) == 0, st.st_mode & 0o004 != 0 else { continue }
            let fd = cp_open_path(proc, name)
            guard fd >= 0 else { continue }
            defer { close(fd) }
            try StepFailure.check("mask /proc/\(name)") { cp_mount_at(nil, null, fd, nil, CP_MS_BIND, nil) }
        }
        // The directory /proc is mounted on (`target`, opened before the mount) is an empty,
        // root-owned directory of the new root: bound read-only, it covers a directory at the
        // cost of a bind rather than of a tmpfs of its own.
        for name in procMaskedDirectories {
            let fd = openat(proc, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
            guard fd >= 0 else { continue }
            try StepFailure.check("mask /proc/\(name)") { cp_mount_at(nil, target, fd, nil, CP_MS_BIND, nil) }
            close(fd)
            let mounted = openat(proc, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
            guard mounted >= 0 else { throw StepFailure(step: "mask /proc/\(name)", errno: errno) }
            defer { close(mounted) }
            try StepFailure.check("mask /proc/\(name)") { cp_remount_bind(mounted, CP_MS_RDONLY | CP_MS_NOSUID | CP_MS_NODEV | CP_MS_NOEXEC) }
        }
        for name in procReadOnly {
            let fd = cp_open_path(proc, name)
            guard fd >= 0 else { continue }
            try StepFailure.check("protect /proc/\(name)") { cp_mount_at(nil, fd, fd, nil, CP_MS_BIND, nil) }
            close(fd)
            let mounted = cp_open_path(proc, name)
            guard mounted >= 0 else { throw StepFailure(step: "protect /proc/\(name)", errno: errno) }
            defer { close(mounted) }
            try StepFailure.check("protect /proc/\(name)") { cp_remount_bind(mounted, CP_MS_RDONLY | CP_MS_NOSUID | CP_MS_NODEV | CP_MS_NOEXEC) }
        }
    }

    /// Once everything in it is made: nothing under / but /home, /tmp and /dev/shm is writable.
    static func rootReadOnly(_ ctx: SetupContext) throws(StepFailure) {
        let root = try ctx.root()
        try StepFailure.check("remount / read-only") { cp_remount_bind(root, CP_MS_RDONLY | CP_MS_NOSUID | CP_MS_NODEV | CP_MS_NOEXEC) }
    }

    static func pivotRoot(_ ctx: SetupContext) throws(StepFailure) {
        let root = try ctx.root()
        try StepFailure.check("pivot_root", ctx.plan.workspace) { cp_pivot_root(root) }
    }
}
