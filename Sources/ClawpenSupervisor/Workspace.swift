import CClawpenShim
import ClawpenWire
import Glibc

/// Creates `<root>/<tenant>` (mode 0700) and `home/` in it without following symlinks: a
/// symlink planted where the workspace or `home` should be makes the call fail (ELOOP) instead
/// of creating or chowning anything elsewhere.
enum Workspace {
    struct Failure: Error, CustomStringConvertible {
        let path: String
        let errno: Int32
        var description: String {
            let hint = errno == ELOOP || errno == ENOTDIR ? " (a symlink or file is in the way; refusing to follow it)" : ""
            return "cannot create workspace \(path): \(FileIO.errnoString(errno))\(hint)"
        }
    }

    /// `owner`: the tenant's uid (and gid), given when workers are sandboxed.
    static func create(root: String, tenant: TenantName, owner: Int?) throws(Failure) {
        let rootFD = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard rootFD >= 0 else { throw Failure(path: root, errno: errno) }
        defer { close(rootFD) }
        let dirFD = cp_mkdir_beneath(rootFD, tenant.value, 0o700)
        guard dirFD >= 0 else { throw Failure(path: "\(root)/\(tenant)", errno: errno) }
        defer { close(dirFD) }
        let homeFD = cp_mkdir_beneath(dirFD, "home", 0o700)
        guard homeFD >= 0 else { throw Failure(path: "\(root)/\(tenant)/home", errno: errno) }
        defer { close(homeFD) }
        if let owner {
            // fchown on the fds opened O_NOFOLLOW: never a planted link's target.
            for (fd, path) in [(dirFD, "\(root)/\(tenant)"), (homeFD, "\(root)/\(tenant)/home")] {
                guard fchown(fd, uid_t(owner), gid_t(owner)) == 0, fchmod(fd, 0o700) == 0 else { throw Failure(path: path, errno: errno) }
            }
            // The sandbox's mount points and merged-/usr links, ahead of the first worker
            // (single names below the fresh workspace's fd: nothing is followed). Best effort:
            // the worker makes whatever is missing.
            let skeleton = SandboxPlanner.skeleton()
            for name in skeleton.directories { _ = mkdirat(dirFD, name, 0o755) }
            for link in skeleton.symlinks { _ = symlinkat(link.content, dirFD, link.name) }
        }
    }
}
