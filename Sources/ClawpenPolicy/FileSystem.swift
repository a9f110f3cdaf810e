// Minimal file access for the loader, without Foundation.

import ClawpenSystem

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#elseif canImport(Darwin)
    import Darwin
#endif

enum FileSystem {
    enum ReadResult: Equatable {
        case text(String)
        case missing
        case failed(String)
    }

    /// Policy files are small; anything bigger is a mistake (or an attack on the parser).
    static let maxFileSize = 1024 * 1024

    /// `followSymlinks: false`: a symlink as the last component fails (ELOOP) instead of being read.
    static func read(_ path: String, followSymlinks: Bool = true) -> ReadResult {
        // O_NONBLOCK: a FIFO planted in the policies directory must not hang the daemon.
        let fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | (followSymlinks ? 0 : O_NOFOLLOW))
        if fd < 0 {
            let e = errno
            return e == ENOENT ? .missing : .failed(errnoString(e))
        }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { return .failed(errnoString(errno)) }
        guard (st.st_mode & S_IFMT) == S_IFREG else { return .failed("not a regular file") }

        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 16 * 1024)
        while true {
            let n = chunk.withUnsafeMutableBytes { systemRead(fd, $0.baseAddress, $0.count) }
            if n < 0 {
                let e = errno
                if e == EINTR { continue }
                return .failed(errnoString(e))
            }
            if n == 0 { break }
            bytes.append(contentsOf: chunk[0..<n])
            if bytes.count > maxFileSize {
                return .failed("larger than \(maxFileSize / 1024 / 1024) MiB; policy files are small text files")
            }
        }
        let text = String(decoding: bytes, as: UTF8.self)
        guard text.utf8.elementsEqual(bytes) else { return .failed("not valid UTF-8 text") }
        return .text(text)
    }

    static func isDirectory(_ path: String) -> Bool {
        var st = stat()
        return stat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFDIR
    }

    static func exists(_ path: String) -> Bool {
        var st = stat()
        return lstat(path, &st) == 0
    }

    /// The names in a directory (without "." and ".."), sorted; nil if it cannot be listed.
    static func list(_ path: String) -> [String]? {
        guard let dir = opendir(path) else { return nil }
        defer { closedir(dir) }
        var names: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafePointer(to: &entry.pointee.d_name) {
                $0.withMemoryRebound(to: CChar.self, capacity: MemoryLayout.size(ofValue: entry.pointee.d_name)) {
                    String(cString: $0)
                }
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names.sorted()
    }

    /// `directory` + "/" + `relative`, without doubling slashes.
    static func join(_ directory: String, _ relative: String) -> String {
        if directory.isEmpty { return relative }
        return directory.hasSuffix("/") ? directory + relative : directory + "/" + relative
    }

}

/// `read(2)` (inside `FileSystem`, `read` names `FileSystem.read`).
@inline(__always)
private func systemRead(_ fd: Int32, _ buffer: UnsafeMutableRawPointer?, _ count: Int) -> Int {
    read(fd, buffer, count)
}
