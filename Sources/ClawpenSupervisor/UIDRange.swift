import Glibc

/// The tenants' uids are the host's too: a uid given to a tenant must belong to nobody else on
/// the host, now or later.
///
/// * At allocation (`tenant create`) a uid is skipped when the host's user or group database
///   knows it (getpwuid_r / getgrgid_r: the gid is the same number) or a running process holds
///   it as any of its real, effective, saved or filesystem uids or gids (/proc/<pid>/status).
/// * At start the range is registered in /etc/subuid and /etc/subgid as `clawpen:<first>:<count>`,
///   the files in which the host hands out subordinate ranges (useradd, podman, newuidmap read
///   them), so the host's own tools do not give those uids to a user namespace of someone else.
///   An entry of anyone else that overlaps the range stops the start (exit 78, EX_CONFIG), with
///   the line and what to change.
/// * A second clawpen daemon on the same host would find the entry `clawpen:...` as well: which
///   daemon it belongs to is recorded in the daemon's state directory (`uid-range`, written
///   when the entry is made). A daemon whose state directory does not hold that claim refuses
///   the range, so two daemons never hand out the same uids.
///
/// The paths are /etc/subuid and /etc/subgid; `serve --subuid-file F --subgid-file F` name others,
/// for tests only (tests must not touch the host's files).
enum UIDRange {
    static let owner = "clawpen"

    struct Entry: Equatable {
        var name: String
        var first: Int
        var count: Int
        var line: Int
        var last: Int { first + count - 1 }
        func overlaps(_ r: ClosedRange<Int>) -> Bool { count > 0 && first <= r.upperBound && last >= r.lowerBound }
    }

    /// `name:first:count` lines; comments, blank and malformed lines are skipped.
    static func parse(_ text: String) -> [Entry] {
        var out: [Entry] = []
        for (i, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = raw.trimmingSpaces
            guard !line.isEmpty, !line.hasPrefix("#") else { continue }
            let parts = line.split(separator: ":", omittingEmptySubsequences: false)
            guard parts.count == 3, let first = Int(parts[1]), let count = Int(parts[2]), first >= 0, count >= 0 else { continue }
            out.append(Entry(name: String(parts[0]), first: first, count: count, line: i + 1))
        }
        return out
    }

    /// Registers `range` in `subuid` and `subgid`, or explains why it cannot be this daemon's.
    /// Returns a line for the log.
    static func register(_ range: ClosedRange<Int>, subuid: String, subgid: String, stateDir: String) throws(ServeError) -> String {
        let claimPath = stateDir + "/uid-range"
        let mine = "\(range.lowerBound):\(range.count)"
        let claimed = Files.readSmallFile(claimPath)?.trimmingSpaces == mine
        var added: [String] = []
        for path in [subuid, subgid] {
            let fd = open(path, O_RDWR | O_CREAT | O_APPEND | O_CLOEXEC | O_NOFOLLOW, 0o644)
            guard fd >= 0 else {
                throw .uidRange("cannot open \(path) to register the tenants' uid range \(range.lowerBound)-\(range.upperBound): \(errnoString(errno))")
            }
            defer { close(fd) }
            // Two daemons starting together: one reads and appends at a time.
            guard flock(fd, LOCK_EX) == 0 else { throw .uidRange("cannot lock \(path): \(errnoString(errno))") }
            let entries = parse(Files.readSmallFile(path) ?? "")
            var ours = false
            for e in entries where e.overlaps(range) {
                if e.name == owner && e.first == range.lowerBound && e.count == range.count && claimed {
                    ours = true
                    continue
                }
                let whose =
                    e.name == owner
                    ? "another clawpen daemon registered it (this daemon's state directory \(stateDir) holds no claim to it in uid-range)"
                    : "it belongs to '\(e.name)'"
                throw .uidRange(
                    """
                    the tenants' uid range \(range.lowerBound)-\(range.upperBound) overlaps \(path) line \(e.line) \
                    (\(e.name):\(e.first):\(e.count), uids \(e.first)-\(e.last)): \(whose). Choose a range nobody holds \
                    (uid_min and uid_max in the [serve] table of --config), or, if that entry is stale (no other \
                    clawpen daemon uses it), remove the line from \(subuid) and \(subgid)
                    """)
            }
            if !ours {
                let line = Array("\(owner):\(range.lowerBound):\(range.count)\n".utf8)
                // A file that does not end in a newline gets one first.
                var st = stat()
                var prefix: [UInt8] = []
                if fstat(fd, &st) == 0, st.st_size > 0 {
                    var last: UInt8 = 0
                    if pread(fd, &last, 1, off_t(st.st_size - 1)) == 1, last != 0x0A { prefix = [0x0A] }
                }
                let bytes = prefix + line
                guard bytes.withUnsafeBytes({ write(fd, $0.baseAddress, $0.count) }) == bytes.count, fsync(fd) == 0 else {
                    throw .uidRange("cannot append the tenants' uid range to \(path): \(errnoString(errno))")
                }
                added.append(path)
            }
        }
        if !claimed {
            let fd = open(claimPath, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0o600)
            guard fd >= 0 else { throw .uidRange("cannot write \(claimPath): \(errnoString(errno))") }
            let bytes = Array((mine + "\n").utf8)
            let n = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            let ok = n == bytes.count && fsync(fd) == 0
            close(fd)
            guard ok else { throw .uidRange("cannot write \(claimPath): \(errnoString(errno))") }
        }
        return added.isEmpty
            ? "uid range \(range.lowerBound)-\(range.upperBound) registered in \(subuid) and \(subgid) (by this daemon)"
            : "uid range \(range.lowerBound)-\(range.upperBound) now registered in \(added.joined(separator: " and ")) as \(owner):\(mine)"
    }

    /// A test for uids free on the host, with the running processes' ids read once.
    static func unusedOnHost() -> (Int) -> Bool {
        let held = idsOfRunningProcesses()
        return { id in !held.contains(id) && !inUserDatabase(id) }
    }

    /// Whether the user or group database knows `id` (as a uid or a gid).
    static func inUserDatabase(_ id: Int) -> Bool {
        var buf = [CChar](repeating: 0, count: 16_384)
        var pw = passwd(), pwResult: UnsafeMutablePointer<passwd>?
        if getpwuid_r(uid_t(id), &pw, &buf, buf.count, &pwResult) == 0, pwResult != nil { return true }
        var gr = group(), grResult: UnsafeMutablePointer<group>?
        if getgrgid_r(gid_t(id), &gr, &buf, buf.count, &grResult) == 0, grResult != nil { return true }
        return false
    }

    /// Every uid and gid (real, effective, saved, filesystem) of every process in /proc.
    static func idsOfRunningProcesses() -> Set<Int> {
        var ids: Set<Int> = []
        guard let dir = opendir("/proc") else { return ids }
        defer { closedir(dir) }
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            guard let first = name.utf8.first, first >= 0x30, first <= 0x39,
                let status = Files.readSmallFile("/proc/\(name)/status", limit: 16_384)
            else { continue }
            for line in status.split(separator: "\n") where line.hasPrefix("Uid:") || line.hasPrefix("Gid:") {
                for field in line.dropFirst(4).split(whereSeparator: { $0 == " " || $0 == "\t" }) {
                    if let v = Int(field) { ids.insert(v) }
                }
            }
        }
        return ids
    }
}

extension Substring {
    /// Without leading and trailing blanks and line ends.
    var trimmingSpaces: String {
        let blank: (Character) -> Bool = { $0 == " " || $0 == "\t" || $0 == "\r" || $0 == "\n" }
        return String(drop(while: blank).reversed().drop(while: blank).reversed())
    }
}
extension String {
    var trimmingSpaces: String { self[...].trimmingSpaces }
}
