import CClawpenShim
import ClawpenWire
import Glibc

/// Applies a SandboxPlan inside the worker: it runs as root, PID 1 of fresh namespaces, and is
/// still single-threaded, so every step is a plain syscall. The order is the plan's checklist
/// (docs/sandbox.md says what each step defends against). A failing step stops the setup with
/// its name and errno; the worker then reports `setupFailed` and does not serve.
///
/// The first part (`prepareMounts`) depends only on the plan and the mount namespace, not on
/// the worker's pid namespace or identity: the supervisor runs it from inside the new worker's
/// mount namespace while the worker is still being exec'd, which takes it off a cold start's
/// critical path. The worker runs it itself when the plan says it has not been done.
public struct SandboxSetup {
    public let plan: SandboxPlan

    public init(plan: SandboxPlan) { self.plan = plan }

    public struct Failure: Error, CustomStringConvertible {
        public let step: String
        public let errno: Int32
        public let detail: String
        public init(step: String, errno: Int32, detail: String) { self.step = step; self.errno = errno; self.detail = detail }
        public var description: String {
            "\(step) failed: \(errnoString(errno))" + (detail.isEmpty ? "" : " (\(detail))")
        }
    }

    /// Runs `body`; a negative result (C convention) becomes a Failure naming the step.
    @discardableResult
    private func step(_ name: String, _ detail: String = "", _ body: () -> Int32) throws(Failure) -> Int32 {
        let r = body()
        if r < 0 { throw Failure(step: name, errno: errno, detail: detail) }
        return r
    }

    /// Opens a mount target below `dir` without following symlinks (see cp_open_beneath).
    private func open(_ dir: Int32, _ path: String, directory: Bool, mode: mode_t = 0o755) throws(Failure) -> Int32 {
        let rel = String(path.drop { $0 == "/" })
        return try step("open mount target", path) { cp_open_beneath(dir, rel, directory ? 1 : 0, mode) }
    }

    private func isDirectory(_ path: String) -> Bool? {
        var st = stat()
        guard stat(path, &st) == 0 else { return nil }
        return (st.st_mode & S_IFMT) == S_IFDIR
    }

    /// Binds `source` at `target` below `dir`, then makes that mount read-only, nosuid, nodev.
    /// A source missing on this host is skipped (/lib64 on arm64).
    private func bindReadOnly(_ source: String, at target: String, below dir: Int32) throws(Failure) {
        guard let isDir = isDirectory(source) else { return }
        let fd = try open(dir, target, directory: isDir)
        defer { close(fd) }
        try step("bind \(source)", target) { cp_mount_at(source, -1, fd, nil, CP_MS_BIND, nil) }
        let mounted = try open(dir, target, directory: isDir) // the new mount, not the directory under it
        defer { close(mounted) }
        try step("remount \(target) read-only", target) { cp_remount_bind(mounted, CP_MS_RDONLY | CP_MS_NOSUID | CP_MS_NODEV) }
    }

    /// `name` (one component below `dir`) becomes a symlink to `content`. What stands there is
    /// replaced only if it is a symlink or an empty directory (an old mount point); a tenant's
    /// file or non-empty directory stops the setup instead of being removed.
    private func placeSymlink(_ path: String, pointingAt content: String, below dir: Int32) throws(Failure) {
        let name = String(path.drop { $0 == "/" })
        var st = stat()
        if fstatat(dir, name, &st, AT_SYMLINK_NOFOLLOW) == 0 {
            switch st.st_mode & S_IFMT {
            case S_IFLNK:
                var buf = [CChar](repeating: 0, count: 4096)
                let n = readlinkat(dir, name, &buf, buf.count - 1)
                if n > 0, String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self) == content { return }
                try step("replace symlink \(path)") { unlinkat(dir, name, 0) }
            case S_IFDIR:
                try step("remove old mount point \(path) (it must be empty)", path) { unlinkat(dir, name, AT_REMOVEDIR) }
            default:
                throw Failure(step: "place symlink \(path)", errno: EEXIST, detail: "a file of the tenant's is in the way")
            }
        }
        try step("symlink \(path)", content) { symlinkat(content, dir, name) }
    }

    /// The bytes of a regular host file of at most 256 KiB (nil: anything else, or unreadable).
    static func smallRegularFile(_ path: String) -> [UInt8]? {
        let fd = Glibc.open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG, st.st_size <= 256 * 1024 else { return nil }
        var bytes = [UInt8](repeating: 0, count: Int(st.st_size))
        var off = 0
        while off < bytes.count {
            let n = bytes[off...].withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { return nil }
            off += n
        }
        return bytes
    }

    /// The mount tree below the workspace, all but /proc: private propagation, the workspace
    /// bound onto itself (pivot_root needs a mount), the read-only host binds and the
    /// merged-/usr links, a minimal /dev, /tmp, and a read-only /etc (generated files, binds).
    public func prepareMounts() throws(Failure) {
        try step("make mounts private") { cp_mounts_private() }

        // The workspace becomes a mount of its own (pivot_root needs one).
        let workspace = Glibc.open(plan.workspace, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        guard workspace >= 0 else { throw Failure(step: "open workspace", errno: errno, detail: plan.workspace) }
        try step("bind workspace", plan.workspace) { cp_mount_at(nil, workspace, workspace, nil, CP_MS_BIND, nil) }
        close(workspace)
        let root = try openRoot()
        defer { close(root) }

        for bind in plan.readOnlyBinds { try bindReadOnly(bind.source, at: bind.target, below: root) }
        for link in plan.symlinks { try placeSymlink(link.target, pointingAt: link.source, below: root) }

        // A minimal /dev: no disks, no kmsg, no mem.
        let devTarget = try open(root, "/dev", directory: true)
        try step("mount /dev") { cp_mount_at("tmpfs", -1, devTarget, "tmpfs", CP_MS_NOSUID | CP_MS_NOEXEC, "mode=0755,size=64k") }
        close(devTarget)
        let dev = try open(root, "/dev", directory: true)
        for (name, major, minor) in [("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8), ("urandom", 1, 9), ("tty", 5, 0)] as [(String, UInt32, UInt32)] {
            try step("mknod /dev/\(name)") { cp_mknod_char(dev, name, 0o666, major, minor) }
        }
        for (name, target) in [("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")] {
            try step("symlink /dev/\(name)") { symlinkat(target, dev, name) }
        }
        let shm = try open(dev, "shm", directory: true, mode: 0o1777)
        try step("mount /dev/shm") { cp_mount_at("tmpfs", -1, shm, "tmpfs", CP_MS_NOSUID | CP_MS_NODEV | CP_MS_NOEXEC, "mode=1777,size=\(plan.tmpSizeBytes)") }
        close(shm)
        try step("remount /dev read-only") { cp_remount_bind(dev, CP_MS_RDONLY | CP_MS_NOSUID | CP_MS_NOEXEC) }
        close(dev)

        let tmp = try open(root, "/tmp", directory: true)
        try step("mount /tmp") { cp_mount_at("tmpfs", -1, tmp, "tmpfs", CP_MS_NOSUID | CP_MS_NODEV, "mode=1777,size=\(plan.tmpSizeBytes)") }
        close(tmp)

        // /etc is synthetic: generated passwd and group, a few read-only binds, nothing else.
        let etcTarget = try open(root, "/etc", directory: true)
        try step("mount /etc") { cp_mount_at("tmpfs", -1, etcTarget, "tmpfs", CP_MS_NOSUID | CP_MS_NODEV | CP_MS_NOEXEC, "mode=0755,size=1m") }
        close(etcTarget)
        let etc = try open(root, "/etc", directory: true)
        defer { close(etc) }
        let files = [("passwd", plan.passwd), ("group", plan.group), ("hostname", plan.tenant + "\n"),
                     ("hosts", "127.0.0.1\tlocalhost \(plan.tenant)\n::1\tlocalhost\n")]
        for (name, content) in files {
            let bytes = Array(content.utf8)
            try step("write /etc/\(name)") { bytes.withUnsafeBytes { cp_write_file(etc, name, $0.baseAddress, $0.count, 0o644) } }
        }
        for bind in plan.etcBinds {
            guard bind.target.hasPrefix("/etc/") else { continue }
            let name = String(bind.target.dropFirst(5))
            // A small file (ld.so.cache) is copied rather than bound: a write to this tmpfs,
            // read-only later like the rest of /etc, costs less than a bind and its remount.
            if !name.contains("/"), let bytes = Self.smallRegularFile(bind.source) {
                try step("write /etc/\(name)") { bytes.withUnsafeBytes { cp_write_file(etc, name, $0.baseAddress, $0.count, 0o644) } }
                continue
            }
            try bindReadOnly(bind.source, at: name, below: etc)
        }
        try step("remount /etc read-only") { cp_remount_bind(etc, CP_MS_RDONLY | CP_MS_NOSUID | CP_MS_NODEV | CP_MS_NOEXEC) }
    }

    /// The workspace's own mount (bound by prepareMounts), opened without following a symlink.
    private func openRoot() throws(Failure) -> Int32 {
        let root = Glibc.open(plan.workspace, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        guard root >= 0 else { throw Failure(step: "open new root", errno: errno, detail: plan.workspace) }
        return root
    }

    func apply() throws(Failure) {
        // The supervisor has placed us in the tenant's cgroup: make it the root of our view.
        try step("unshare cgroup namespace") { cp_unshare_cgroup() }
        if !plan.mountsPrepared { try prepareMounts() }
        let root = try openRoot()
        defer { close(root) }

        // /proc of this pid namespace only (so it is ours to mount); the knobs that reach the
        // host kernel read-only.
        let proc = try open(root, "/proc", directory: true)
        try step("mount /proc") { cp_mount_at("proc", -1, proc, "proc", CP_MS_NOSUID | CP_MS_NODEV | CP_MS_NOEXEC, "hidepid=invisible") }
        close(proc)
        let procDir = try open(root, "/proc", directory: true)
        try IPCLimits.apply(plan, proc: procDir) // through this fresh /proc, before /proc/sys is covered
        // (/proc/irq and /proc/bus need no cover: nothing there is writable without root.)
        for entry in ["sys", "sysrq-trigger"] {
            var st = stat()
            guard fstatat(procDir, entry, &st, AT_SYMLINK_NOFOLLOW) == 0 else { continue }
            let isDir = (st.st_mode & S_IFMT) == S_IFDIR
            let fd = try open(procDir, entry, directory: isDir)
            try step("protect /proc/\(entry)") { cp_mount_at(nil, fd, fd, nil, CP_MS_BIND, nil) }
            close(fd)
            let mounted = try open(procDir, entry, directory: isDir)
            try step("protect /proc/\(entry)") { cp_remount_bind(mounted, CP_MS_RDONLY | CP_MS_NOSUID | CP_MS_NODEV | CP_MS_NOEXEC) }
            close(mounted)
        }
        close(procDir)

        try step("pivot_root", plan.workspace) { cp_pivot_root(root) }
        let newRoot = Glibc.open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard newRoot >= 0 else { throw Failure(step: "open /", errno: errno, detail: "") }
        defer { close(newRoot) }
        try step("remount / nosuid, nodev") { cp_remount_bind(newRoot, CP_MS_NOSUID | CP_MS_NODEV) }

        try step("sethostname") { cp_sethostname(plan.tenant) }
        // lo was brought up before the plan arrived (Worker.prepareNetwork): it needs the kernel's
        // rtnl lock, which network-namespace teardown holds for long stretches.

        // The workspace belongs to the tenant's uid (fchown on fds opened O_NOFOLLOW).
        try step("chown /") { fchown(newRoot, plan.uid, plan.gid) }
        try step("chmod /") { fchmod(newRoot, 0o700) }
        let home = try open(newRoot, "/home", directory: true, mode: 0o700)
        try step("chown /home") { fchown(home, plan.uid, plan.gid) }
        try step("chmod /home") { fchmod(home, 0o700) }
        close(home)

        for l in plan.workerLimits {
            var rl = rlimit(rlim_cur: rlim_t(l.soft), rlim_max: rlim_t(l.hard))
            try step("setrlimit \(SandboxPlan.limitName(l.resource))") { setrlimit(__rlimit_resource_t(UInt32(l.resource)), &rl) }
        }

        var failed: Int32 = 0
        if cp_drop_identity(plan.uid, plan.gid, &failed) != 0 {
            throw Failure(step: String(cString: cp_identity_step_name(failed)), errno: errno, detail: "uid \(plan.uid)")
        }
        try step("chdir /home") { chdir("/home") }
        // Last: from here on the filter holds for the worker and every job it starts.
        if !plan.seccompProgram.isEmpty {
            try step("seccomp", plan.seccompProfile) { plan.seccompProgram.withUnsafeBytes { cp_install_seccomp($0.baseAddress, $0.count) } }
        }
    }
}
