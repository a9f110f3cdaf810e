import CClawpenShim
import ClawpenPolicy
import ClawpenWire
import Glibc

/// `disk_max` and `inodes_max`: one project quota per tenant on the workspace filesystem
/// (ext4 or xfs mounted with prjquota), so that a tenant that fills its workspace gets the error
/// in its own job and its neighbours on the same filesystem keep writing.
///
/// The project id is the tenant's uid (unique per tenant, allocated once, never reused while the
/// tenant lives). The workspace directory `<workspace-root>/<tenant>` and its `home` are tagged
/// with it and the inherit flag (FS_IOC_FSSETXATTR + FS_XFLAG_PROJINHERIT), so everything
/// created below them belongs to the project, and a rename across the boundary fails (EXDEV)
/// instead of escaping the quota. The limits are set with quotactl_fd(Q_SETQUOTA, PRJQUOTA)
/// before the tenant's worker starts, and again after a policy reload. Files that existed before
/// the tag keep their old project (none: project 0): a workspace made by an older clawpen is
/// only counted for what is written from then on.
final class DiskQuotas {
    enum Support: Equatable {
        case projectQuota
        case none(String)
    }

    let workspaceRoot: String
    let support: Support
    /// What was last set per tenant (limits in bytes and inodes), so a worker start costs no
    /// quotactl when nothing changed.
    private var applied: [String: (bytes: Int64, inodes: Int)] = [:]

    init(workspaceRoot: String) {
        self.workspaceRoot = workspaceRoot
        let fd = open(workspaceRoot, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if fd < 0 {
            support = .none("the workspace root \(workspaceRoot) cannot be opened (\(errnoString(errno)))")
            return
        }
        defer { close(fd) }
        switch cp_project_quota_enforced(fd) {
        case 1: support = .projectQuota
        case 0:
            support = .none(
                "the filesystem of \(workspaceRoot) has no project quotas enforced (ext4 needs `mkfs.ext4 -O quota,project` or `tune2fs -O project,quota` and the mount option prjquota; xfs needs prjquota)"
            )
        default: support = .none("asking the filesystem of \(workspaceRoot) for project quotas failed (\(errnoString(errno)))")
        }
    }

    /// `enforcement.disk`: "project-quota" or "none".
    var enforcement: String { support == .projectQuota ? "project-quota" : "none" }

    struct Failure: Error, CustomStringConvertible {
        let step: String
        let errno: Int32
        let path: String
        var description: String { "disk quota: \(step) \(path): \(errnoString(errno))" }
    }

    /// Tags the tenant's workspace with its project and sets the limits (when they changed).
    /// No-op without project quotas.
    func apply(tenant: TenantName, projectID: Int, limits: TierLimits) throws(Failure) {
        guard support == .projectQuota else { return }
        if let last = applied[tenant.value], last.bytes == limits.diskMaxBytes, last.inodes == limits.inodesMax { return }
        let root = open(workspaceRoot, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard root >= 0 else { throw Failure(step: "open", errno: errno, path: workspaceRoot) }
        defer { close(root) }
        // Never through a link the tenant planted: the workspace and its home by O_NOFOLLOW below
        // the root-owned workspace root.
        let ws = openat(root, tenant.value, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        guard ws >= 0 else { throw Failure(step: "open", errno: errno, path: workspaceRoot + "/" + tenant.value) }
        defer { close(ws) }
        guard cp_project_set(ws, UInt32(projectID)) == 0 else {
            throw Failure(step: "set project \(projectID) on", errno: errno, path: workspaceRoot + "/" + tenant.value)
        }
        let home = openat(ws, "home", O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        if home >= 0 {
            defer { close(home) }
            guard cp_project_set(home, UInt32(projectID)) == 0 else {
                throw Failure(step: "set project \(projectID) on", errno: errno, path: workspaceRoot + "/" + tenant.value + "/home")
            }
        }
        guard cp_project_set_limits(ws, UInt32(projectID), UInt64(limits.diskMaxBytes), UInt64(limits.inodesMax)) == 0 else {
            throw Failure(step: "set limits of project \(projectID) for", errno: errno, path: workspaceRoot)
        }
        applied[tenant.value] = (limits.diskMaxBytes, limits.inodesMax)
    }

    struct Reading {
        var project: Int64?
        var bytesLimit: UInt64
        var inodesLimit: UInt64
        var bytesUsed: UInt64
        var inodesUsed: UInt64
    }

    /// The tenant's project quota as the filesystem holds it (nil without project quotas, or
    /// when it cannot be read), with the project its workspace is tagged with.
    func read(tenant: TenantName, projectID: Int) -> Reading? {
        guard support == .projectQuota else { return nil }
        let root = open(workspaceRoot, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard root >= 0 else { return nil }
        defer { close(root) }
        var r = Reading(project: nil, bytesLimit: 0, inodesLimit: 0, bytesUsed: 0, inodesUsed: 0)
        let ws = openat(root, tenant.value, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        if ws >= 0 {
            let p = cp_project_get(ws)
            r.project = p >= 0 ? p : nil
            close(ws)
        }
        guard cp_project_read(root, UInt32(projectID), &r.bytesLimit, &r.inodesLimit, &r.bytesUsed, &r.inodesUsed) == 0 else { return nil }
        return r
    }
}
