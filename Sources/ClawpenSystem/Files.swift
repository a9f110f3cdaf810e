import Glibc

/// Small file helpers, none of which follows a final symlink.
public enum Files {
    /// The bytes of a regular file of at most `limit` bytes; nil when it is missing, unreadable,
    /// not a regular file (a symlink, a FIFO that would block) or larger.
    public static func readRegularFile(_ path: String, limit: Int) -> [UInt8]? {
        let fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG, st.st_size <= limit else { return nil }
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

    /// Reads a small text file (procfs, cgroupfs: their size is 0 or 4096 whatever they hold, so
    /// this reads until EOF, up to `limit` bytes). nil when it cannot be opened.
    public static func readSmallFile(_ path: String, limit: Int = 1 << 20) -> String? {
        let fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        return String(decoding: readAll(fd, limit: limit), as: UTF8.self)
    }

    /// What `fd` yields until EOF or a read error, up to `limit` bytes.
    public static func readAll(_ fd: Int32, limit: Int) -> [UInt8] {
        var out: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 8192)
        while out.count < limit {
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { break }
            out.append(contentsOf: chunk[0..<n])
        }
        return out
    }

    /// Writes `value` to an existing file (cgroupfs, procfs knobs) in one write(2), without
    /// following a final symlink. false when it cannot be opened or the write is short.
    @discardableResult
    public static func writeExisting(_ path: String, _ value: String) -> Bool {
        let fd = open(path, O_WRONLY | O_NOFOLLOW | O_CLOEXEC)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        let bytes = Array(value.utf8)
        return bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) } == bytes.count
    }

    /// mkdir -p, with `mode` for the directories it creates. The failure names the directory.
    public static func makeDirectories(_ path: String, mode: mode_t) throws(StepFailure) {
        var current = path.hasPrefix("/") ? "" : "."
        for part in path.split(separator: "/") {
            current += "/" + part
            if mkdir(current, mode) != 0 && errno != EEXIST {
                throw StepFailure(step: "mkdir", errno: errno, detail: current)
            }
        }
        var st = stat()
        guard stat(path, &st) == 0, (st.st_mode & S_IFMT) == S_IFDIR else { throw StepFailure(step: "mkdir", errno: ENOTDIR, detail: path) }
    }
}
