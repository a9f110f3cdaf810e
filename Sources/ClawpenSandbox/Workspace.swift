import CClawpenShim
import ClawpenSystem
import ClawpenWire
import Glibc

/// Creates `<root>/<tenant>` (mode 0700) and `home/` in it without following symlinks: a
/// symlink planted where the workspace or `home` should be makes the call fail (ELOOP) instead
/// of creating or chowning anything elsewhere.
public enum Workspace {
    static func failure(_ path: String, _ e: Int32) -> StepFailure {
        let hint = e == ELOOP || e == ENOTDIR ? "; a symlink or file is in the way, refusing to follow it" : ""
        return StepFailure(step: "create workspace", errno: e, detail: path + hint)
    }

    /// `owner`: the tenant's uid (and gid), given when workers are sandboxed.
    public static func create(root: String, tenant: TenantName, owner: Int?) throws(StepFailure) {
        let rootFD = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard rootFD >= 0 else { throw failure(root, errno) }
        defer { close(rootFD) }
        let dirFD = cp_mkdir_beneath(rootFD, tenant.value, 0o700)
        guard dirFD >= 0 else { throw failure("\(root)/\(tenant)", errno) }
        defer { close(dirFD) }
        let homeFD = cp_mkdir_beneath(dirFD, "home", 0o700)
        guard homeFD >= 0 else { throw failure("\(root)/\(tenant)/home", errno) }
        defer { close(homeFD) }
        if let owner {
            // fchown on the fds opened O_NOFOLLOW: never a planted link's target.
            for (fd, path) in [(dirFD, "\(root)/\(tenant)"), (homeFD, "\(root)/\(tenant)/home")] {
                guard fchown(fd, uid_t(owner), gid_t(owner)) == 0, fchmod(fd, 0o700) == 0 else { throw failure(path, errno) }
            }
            // The sandbox's mount points and merged-/usr links, ahead of the first worker
            // (single names below the fresh workspace's fd: nothing is followed). Best effort:
            // the worker makes whatever is missing.
            let skeleton = Plan.skeleton()
            for name in skeleton.directories { _ = mkdirat(dirFD, name, 0o755) }
            for link in skeleton.symlinks { _ = symlinkat(link.content, dirFD, link.name) }
        }
    }
}
