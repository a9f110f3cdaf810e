// `clawpen tenant set-quota`: per-tenant overrides the daemon keeps in its state directory,
// `<state-dir>/quota/<tenant>.toml`, not in the policies directory (read-only under systemd).
// Same keys and checks as tenants/<tenant>.toml; applied on top of it. Written atomically (a
// temporary file in the same directory, fsync, rename, fsync of the directory) without following
// symlinks, so a crash leaves the old file or the new one, never half of one.

import ClawpenSystem
#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#elseif canImport(Darwin)
    import Darwin
#endif

public enum QuotaOverrides {
    /// The first lines of every file written here.
    public static let header = """
        # Written by `clawpen tenant set-quota`: limits for one tenant that the daemon applies on top
        # of tiers/<tier>.toml and tenants/<tenant>.toml (tier -> tenants/ -> quota/). Same keys and
        # checks as tenants/<tenant>.toml. Change it with `clawpen tenant set-quota`, which rewrites
        # this file (values are kept, comments are not).


        """

    /// `<directory>/<tenant>.toml`.
    public static func path(tenant: String, directory: String) -> String {
        FileSystem.join(directory, "\(tenant).toml")
    }

    /// The entries of the tenant's quota file, in file order (empty when there is none).
    public static func read(tenant: String, directory: String) throws(PolicyError) -> [(key: String, value: TOMLValue)] {
        let file = path(tenant: tenant, directory: directory)
        guard PolicyLoader.isValidTenantName(tenant) else {
            throw .invalidFileName(file: file, reason: "'\(tenant)' is not a tenant name (^[a-z0-9][a-z0-9_-]{0,62}$)")
        }
        switch FileSystem.read(file, followSymlinks: false) {
        case .missing:
            return []
        case .failed(let reason):
            throw .unreadable(file: file, reason: reason)
        case .text(let text):
            do {
                return try TOMLDocument.parse(text, file: file).root.entries.map { ($0.key, $0.value) }
            } catch {
                throw PolicyError(error)
            }
        }
    }

    /// Merges `changes` (key -> value, e.g. "memory_max": .string("512M")) into the tenant's quota
    /// file, removes the keys in `removing`, checks the result as the loader would (error messages
    /// name the file, the line it would have, and the key), and writes it atomically. With
    /// `policies`, also checks the result against the tiers and tenants/<tenant>.toml it applies
    /// to (timeouts, seccomp profile). Returns the tenant's quota override as now written.
    @discardableResult
    public static func write(
        tenant: String, changes: [String: TOMLValue], removing: Set<String> = [], directory: String,
        policies: PolicySet? = nil
    ) throws(PolicyError) -> TenantOverride {
        let file = path(tenant: tenant, directory: directory)
        var entries = try read(tenant: tenant, directory: directory).filter { !removing.contains($0.key) }
        for (key, value) in changes {
            if let i = entries.firstIndex(where: { $0.key == key }) {
                entries[i].value = value
            } else {
                entries.append((key, value))
            }
        }
        let order = ["tier"] + TierLimits.keys
        entries.sort { (order.firstIndex(of: $0.key) ?? order.count) < (order.firstIndex(of: $1.key) ?? order.count) }
        let text = render(entries)

        // Check what is about to be written, exactly as the loader will read it.
        let root: TOMLTable
        do { root = try TOMLDocument.parse(text, file: file).root } catch { throw PolicyError(error) }
        var errors: [PolicyError] = []
        let decoded = PolicyLoader.decode(root, file: file, origin: "quota/\(tenant).toml", isTenantFile: true, errors: &errors)
        if let first = errors.first { throw first }
        if let policies {
            _ = PolicyLoader.checkOverride(
                decoded, under: policies.tenantOverrides[tenant], file: file, tiers: policies.tiers, errors: &errors)
            if let first = errors.first { throw first }
            if let p = decoded.values.seccompProfile, policies.seccompProfiles[p] == nil {
                throw .invalidValue(
                    file: file, line: decoded.lines[.seccompProfile] ?? 0, key: LimitKey.seccompProfile.rawValue,
                    reason: "there is no profile \(quoted(p)) (profiles: \(policies.seccompProfiles.keys.sorted().joined(separator: ", ")))")
            }
        }
        try writeAtomically(text, name: "\(tenant).toml", directory: directory)
        return decoded.values
    }

    /// The file's text: the header, then `key = value` lines (arrays one element per line).
    public static func render(_ entries: [(key: String, value: TOMLValue)]) -> String {
        var out = header
        for (key, value) in entries {
            out += "\(renderKey(key)) = \(render(value, indent: ""))\n"
        }
        return out
    }

    /// A command-line argument as the TOML value of `key`: a list key takes comma-separated
    /// entries ("/usr/bin/*,/home/**"); "512M" stays a string, "0.5" is a number, "true" a
    /// boolean. The value's own checks happen in `write`.
    public static func value(forKey key: String, argument: String) -> TOMLValue {
        if let k = LimitKey(rawValue: key), k.isList {
            return .array(
                argument.split(separator: ",", omittingEmptySubsequences: true).map {
                    .string(String($0.drop { $0 == " " }.reversed().drop { $0 == " " }.reversed()))
                })
        }
        if let i = Int64(argument) { return .integer(i) }
        if argument == "true" || argument == "false" { return .bool(argument == "true") }
        if let first = argument.first, first.isNumber || first == "." || first == "-",
            let d = Double(argument), d.isFinite
        {
            return .float(d)
        }
        return .string(argument)
    }

    private static func render(_ value: TOMLValue, indent: String) -> String {
        switch value {
        case .string(let s): return quoted(s)
        case .integer(let i): return "\(i)"
        case .float(let d):
            if d.isNaN { return "nan" }
            if d.isInfinite { return d < 0 ? "-inf" : "inf" }
            return "\(d)"
        case .bool(let b): return b ? "true" : "false"
        case .array(let items):
            if items.isEmpty { return "[]" }
            return "[\n" + items.map { indent + "    " + render($0, indent: indent + "    ") + ",\n" }.joined() + indent + "]"
        case .table:
            // Not a valid value for any key: rendered so that the check names the key and line.
            return "{}"
        }
    }

    // MARK: - Atomic write

    private static func writeAtomically(_ text: String, name: String, directory: String) throws(PolicyError) {
        let target = FileSystem.join(directory, name)
        func failure(_ what: String, _ code: Int32) -> PolicyError {
            .unwritable(file: target, reason: "\(what): \(errnoString(code))")
        }
        if mkdir(directory, 0o755) != 0 && errno != EEXIST { throw failure("mkdir \(directory)", errno) }
        // O_NOFOLLOW: a symlink planted as the quota directory is refused, not followed.
        let dirfd = open(directory, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        guard dirfd >= 0 else { throw failure("open \(directory)", errno) }
        defer { close(dirfd) }

        // A leading '.': the loader ignores a temporary file left by a crash.
        let temp = ".\(name).tmp-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        let fd = openat(dirfd, temp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw failure("create \(temp)", errno) }
        var ok = false
        defer {
            if !ok { unlinkat(dirfd, temp, 0) }
        }
        let bytes = Array(text.utf8)
        var offset = 0
        while offset < bytes.count {
            let n = bytes.withUnsafeBytes { buf in
                buf.baseAddress.map { systemWrite(fd, $0 + offset, buf.count - offset) } ?? 0
            }
            if n < 0 {
                let e = errno
                if e == EINTR { continue }
                close(fd)
                throw failure("write", e)
            }
            offset += n
        }
        if fsync(fd) != 0 {
            let e = errno
            close(fd)
            throw failure("fsync", e)
        }
        if close(fd) != 0 { throw failure("close", errno) }
        // rename replaces a symlink at the target name; it never writes through it.
        if renameat(dirfd, temp, dirfd, name) != 0 { throw failure("rename", errno) }
        ok = true
        _ = fsync(dirfd)
    }
}

/// `write(2)` (inside `QuotaOverrides`, `write` names `QuotaOverrides.write`).
@inline(__always)
private func systemWrite(_ fd: Int32, _ buffer: UnsafeRawPointer, _ count: Int) -> Int {
    write(fd, buffer, count)
}
