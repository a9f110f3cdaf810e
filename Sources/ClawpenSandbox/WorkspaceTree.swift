import ClawpenSystem
import ClawpenWire
import Glibc

/// The supervisor's walks over a tenant's workspace (offboarding's inventory and removal, export).
/// The tenant wrote everything in it, so nothing is followed: every directory is opened with
/// openat(O_NOFOLLOW | O_DIRECTORY) relative to its parent's fd, every entry is looked at with
/// fstatat(AT_SYMLINK_NOFOLLOW), a symlink is an entry of its own (removed with unlinkat, which
/// removes the link and never its target; exported as a link), and a directory swapped for a
/// link between the look and the open fails the open with ELOOP/ENOTDIR instead of leading out.
extension Workspace {
    /// One entry met by `walk`: its path below the tenant's directory ("home/a.txt"), its
    /// stat, and its parent's fd with its name (for openat/readlinkat).
    public struct Entry {
        public let path: String
        public let stat: stat
        public let parentFD: Int32
        public let name: String
        public var isDirectory: Bool { stat.st_mode & S_IFMT == S_IFDIR }
        public var isRegular: Bool { stat.st_mode & S_IFMT == S_IFREG }
        public var isSymlink: Bool { stat.st_mode & S_IFMT == S_IFLNK }
    }

    /// Directories deeper than this are not entered (each level holds an fd).
    public static let maxWalkDepth = 512

    /// Opens `<root>/<tenant>` without following a link at either step.
    public static func openTenantDirectory(root: String, tenant: TenantName) throws(StepFailure) -> Int32 {
        let rootFD = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard rootFD >= 0 else { throw failure("open workspace root", root, errno) }
        defer { close(rootFD) }
        let fd = openat(rootFD, tenant.value, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        guard fd >= 0 else { throw failure("open workspace", "\(root)/\(tenant)", errno) }
        return fd
    }

    /// Visits every entry below `<root>/<tenant>`, parents before their children. `visit`
    /// returns false to skip a directory's contents.
    public static func walk(root: String, tenant: TenantName, visit: (Entry) throws(StepFailure) -> Bool) throws(StepFailure) {
        let fd = try openTenantDirectory(root: root, tenant: tenant)
        defer { close(fd) }
        try walk(fd, prefix: "", depth: 0, path: "\(root)/\(tenant)", visit: visit)
    }

    static func entryNames(_ fd: Int32, path: String) throws(StepFailure) -> [String] {
        let listFD = openat(fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard listFD >= 0 else { throw failure("list workspace", path, errno) }
        guard let dir = fdopendir(listFD) else { let e = errno; close(listFD); throw failure("list workspace", path, e) }
        defer { closedir(dir) }
        var names: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if name != ".", name != ".." { names.append(name) }
        }
        return names.sorted()
    }

    private static func walk(
        _ fd: Int32, prefix: String, depth: Int, path: String, visit: (Entry) throws(StepFailure) -> Bool
    ) throws(StepFailure) {
        for name in try entryNames(fd, path: path) {
            var st = stat()
            guard fstatat(fd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 else { continue } // gone meanwhile
            let e = Entry(path: prefix + name, stat: st, parentFD: fd, name: name)
            guard try visit(e), e.isDirectory, depth < maxWalkDepth else { continue }
            let child = openat(fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
            guard child >= 0 else { throw failure("open workspace directory", path + "/" + name, errno) }
            defer { close(child) }
            try walk(child, prefix: e.path + "/", depth: depth + 1, path: path + "/" + name, visit: visit)
        }
    }

    /// Files (regular files and links), directories and bytes below `<root>/<tenant>`.
    public static func measure(root: String, tenant: TenantName) throws(StepFailure) -> (files: Int, directories: Int, bytes: Int64) {
        var files = 0, dirs = 0
        var bytes: Int64 = 0
        try walk(root: root, tenant: tenant) { e throws(StepFailure) in
            if e.isDirectory { dirs += 1 } else { files += 1; bytes += Int64(e.stat.st_size) }
            return true
        }
        return (files, dirs, bytes)
    }

    /// Removes `<root>/<tenant>` and everything in it, never following a link (see above).
    /// A tenant that no longer exists on disk is not an error (the step is idempotent).
    public static func remove(root: String, tenant: TenantName) throws(StepFailure) {
        let rootFD = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard rootFD >= 0 else { throw failure("remove workspace", root, errno) }
        defer { close(rootFD) }
        var st = stat()
        guard fstatat(rootFD, tenant.value, &st, AT_SYMLINK_NOFOLLOW) == 0 else {
            if errno == ENOENT { return }
            throw failure("remove workspace", "\(root)/\(tenant)", errno)
        }
        guard st.st_mode & S_IFMT == S_IFDIR else {
            // Not a directory (a link planted in its place): the entry itself goes.
            guard unlinkat(rootFD, tenant.value, 0) == 0 else { throw failure("remove workspace", "\(root)/\(tenant)", errno) }
            return
        }
        let fd = openat(rootFD, tenant.value, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        guard fd >= 0 else { throw failure("remove workspace", "\(root)/\(tenant)", errno) }
        do {
            try removeContents(fd, depth: 0, path: "\(root)/\(tenant)")
        } catch {
            close(fd)
            throw error
        }
        close(fd)
        guard unlinkat(rootFD, tenant.value, AT_REMOVEDIR) == 0 else { throw failure("remove workspace", "\(root)/\(tenant)", errno) }
    }

    private static func removeContents(_ fd: Int32, depth: Int, path: String) throws(StepFailure) {
        guard depth < maxWalkDepth else { throw StepFailure(step: "remove workspace", errno: ELOOP, detail: "\(path): deeper than \(maxWalkDepth) levels") }
        for name in try entryNames(fd, path: path) {
            var st = stat()
            guard fstatat(fd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 else { continue }
            if st.st_mode & S_IFMT == S_IFDIR {
                let child = openat(fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
                guard child >= 0 else { throw failure("remove workspace", path + "/" + name, errno) }
                // A directory the tenant made unwritable to itself: the supervisor is root, but
                // an immutable flag or a read-only bind would stop it; say which entry.
                do {
                    try removeContents(child, depth: depth + 1, path: path + "/" + name)
                } catch {
                    close(child)
                    throw error
                }
                close(child)
                guard unlinkat(fd, name, AT_REMOVEDIR) == 0 else { throw failure("remove workspace", path + "/" + name, errno) }
            } else {
                guard unlinkat(fd, name, 0) == 0 || errno == ENOENT else { throw failure("remove workspace", path + "/" + name, errno) }
            }
        }
    }
}
