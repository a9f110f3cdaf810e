import CClawpenShim
import ClawpenSystem
import ClawpenWire
import Glibc

/// The host side of the tenants' data. `<workspace-root>` (root's, 0700: no other host user
/// can traverse it) holds `<tenant>` (root's, 0700), which holds `home` (the tenant's uid,
/// 0700): the tenant's only writable, persistent place, `/home` in its sandbox. Everything here
/// goes through directory fds with O_NOFOLLOW: a symlink planted where a directory should be
/// fails with ELOOP instead of being followed.
public enum Workspace {
    static func failure(_ step: String, _ path: String, _ e: Int32) -> StepFailure {
        let hint = e == ELOOP || e == ENOTDIR ? "; a symlink or file is in the way, refusing to follow it" : ""
        return StepFailure(step: step, errno: e, detail: path + hint)
    }

    /// The workspace root as the sandbox needs it: root's and closed to other host users (0700).
    /// 0700 rather than 0711: nothing but root ever walks through it (a worker reaches its home
    /// through a mount made while it is still root), so no one else needs even the search bit.
    /// Returns what it was before when that differed ("mode 0755, owner 0:0"), nil when it was so.
    @discardableResult
    public static func secureRoot(_ path: String) throws(StepFailure) -> String? {
        let fd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        guard fd >= 0 else { throw failure("open workspace root", path, errno) }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw failure("open workspace root", path, errno) }
        let mode = st.st_mode & 0o7777
        guard st.st_uid != 0 || st.st_gid != 0 || mode != 0o700 else { return nil }
        guard fchown(fd, 0, 0) == 0, fchmod(fd, 0o700) == 0 else { throw failure("close workspace root", path, errno) }
        return "mode 0\(String(mode, radix: 8)), owner \(st.st_uid):\(st.st_gid)"
    }

    /// Creates `<root>/<tenant>` and `home/` in it. `owner`: the tenant's uid (and gid), given
    /// when workers are sandboxed: then the tenant directory is root's and only `home` is the
    /// tenant's. Without a sandbox both belong to the daemon's user.
    public static func create(root: String, tenant: TenantName, owner: Int?) throws(StepFailure) {
        let rootFD = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard rootFD >= 0 else { throw failure("create workspace", root, errno) }
        defer { close(rootFD) }
        let dirFD = cp_mkdir_beneath(rootFD, tenant.value, 0o700)
        guard dirFD >= 0 else { throw failure("create workspace", "\(root)/\(tenant)", errno) }
        defer { close(dirFD) }
        if let owner {
            guard fchown(dirFD, 0, 0) == 0, fchmod(dirFD, 0o700) == 0 else { throw failure("create workspace", "\(root)/\(tenant)", errno) }
            close(try openHome(workspaceFD: dirFD, path: "\(root)/\(tenant)", uid: UInt32(owner), gid: UInt32(owner)))
        } else {
            let homeFD = cp_mkdir_beneath(dirFD, "home", 0o700)
            guard homeFD >= 0 else { throw failure("create workspace", "\(root)/\(tenant)/home", errno) }
            close(homeFD)
        }
    }

    /// `home` below the workspace fd, made if missing, the tenant's with mode 0700 (fchown and
    /// fchmod on the fd opened O_NOFOLLOW: never a planted link's target). Returns its fd.
    static func openHome(workspaceFD ws: Int32, path: String, uid: UInt32, gid: UInt32) throws(StepFailure) -> Int32 {
        let home = cp_mkdir_beneath(ws, "home", 0o700)
        guard home >= 0 else { throw failure("open /home", path + "/home", errno) }
        var st = stat()
        guard fstat(home, &st) == 0 else { let e = errno; close(home); throw failure("open /home", path + "/home", e) }
        if st.st_uid != uid || st.st_gid != gid {
            guard fchown(home, uid, gid) == 0 else { let e = errno; close(home); throw failure("chown /home", path + "/home", e) }
        }
        if st.st_mode & 0o7777 != 0o700 {
            guard fchmod(home, 0o700) == 0 else { let e = errno; close(home); throw failure("chmod /home", path + "/home", e) }
        }
        return home
    }

    /// The names an old-layout workspace held for the sandbox (mount points and merged-/usr
    /// links), removed by the migration when they are empty directories or links.
    static let oldSkeleton: Set<String> = ["usr", "lib", "lib32", "lib64", "libx32", "bin", "sbin", "proc", "dev", "tmp", "etc"]

    /// Where a migration puts what the tenant had written at the top of its old root.
    public static let oldRootName = "old-root"

    /// Migrates a workspace of the old layout, in which the tenant owned `<tenant>` (its `/`) and
    /// could re-point anything in it. First the directory is taken from the tenant (root's,
    /// 0700; the tenant's old worker and jobs are gone, so nothing of the tenant's runs). Then
    /// the old mount points and links go (empty directories and symlinks of `oldSkeleton`,
    /// never followed: unlinkat removes a link itself), and every other entry the tenant made
    /// is moved into `home/old-root/` (renameat moves the entry, not what a link points to),
    /// where the tenant finds it as `/home/old-root`. Nothing is moved out of the tenant's reach
    /// into a root-owned place, and nothing root-owned becomes the tenant's. An entry that
    /// cannot be moved stays, out of everyone's reach but root's.
    static func migrate(workspaceFD ws: Int32, path: String, uid: UInt32, gid: UInt32) throws(StepFailure) {
        guard fchown(ws, 0, 0) == 0, fchmod(ws, 0o700) == 0 else { throw failure("migrate workspace", path, errno) }
        let home = try openHome(workspaceFD: ws, path: path, uid: uid, gid: gid)
        defer { close(home) }
        let listFD = openat(ws, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard listFD >= 0, let dir = fdopendir(listFD) else { throw failure("migrate workspace", path, errno) }
        var names: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if name != ".", name != "..", name != "home" { names.append(name) }
        }
        closedir(dir)
        var oldRoot: Int32 = -1
        defer { if oldRoot >= 0 { close(oldRoot) } }
        for name in names {
            var st = stat()
            guard fstatat(ws, name, &st, AT_SYMLINK_NOFOLLOW) == 0 else { continue }
            let kind = st.st_mode & S_IFMT
            if oldSkeleton.contains(name) {
                if kind == S_IFLNK, unlinkat(ws, name, 0) == 0 { continue }
                if kind == S_IFDIR, unlinkat(ws, name, AT_REMOVEDIR) == 0 { continue }
            }
            if oldRoot < 0 {
                _ = mkdirat(home, oldRootName, 0o700)
                oldRoot = openat(home, oldRootName, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
                // A link the tenant put there: nothing is moved (fchown through the fd only).
                guard oldRoot >= 0 else { return }
                var own = stat()
                if fstat(oldRoot, &own) == 0, own.st_uid == 0 { _ = fchown(oldRoot, uid, gid) }
            }
            _ = renameat(ws, name, oldRoot, name)
        }
    }
}
