import ArgumentParser
import ClawpenClient
import ClawpenProtocol
import Glibc

/// `TENANT:PATH`, the way `docker cp` and `kubectl cp` name a file inside: the tenant's name, a
/// colon, the path as the sandbox sees it. A local path with a colon in its first component
/// needs a `./` in front.
struct RemotePath {
    let tenant: TenantName
    let path: String

    static func parse(_ raw: String) -> RemotePath? {
        guard let colon = raw.firstIndex(of: ":") else { return nil }
        let name = raw[..<colon]
        guard !name.contains("/"), let tenant = try? TenantName(validating: String(name)) else { return nil }
        let rest = String(raw[raw.index(after: colon)...])
        return RemotePath(tenant: tenant, path: rest.isEmpty ? "/home" : rest)
    }

    static func required(_ raw: String) throws(ExitCode) -> RemotePath {
        guard let r = parse(raw) else {
            throw Output.fail(.invalidRequest, "\(raw): expected TENANT:PATH, for example acme:/home/data.csv")
        }
        return r
    }

    var shown: String { "\(tenant):\(path)" }
}

private let fileExamples = """
    Paths inside are as the tenant's jobs see them: /home is the tenant's persistent, writable \
    directory, /tmp its scratch space; everything else in the sandbox is read-only. No link is \
    followed inside the tenant's files, and a path that would leave them (`..`, a symbolic link, \
    /proc) is refused with the rule that refused it.
    """

struct Cp: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cp", abstract: "Copy a file into or out of a tenant's sandbox.",
        discussion: """
            One side is TENANT:PATH, the other a local file, or - for stdin (as SRC) or stdout \
            (as DST), as `docker cp` does. A DST that ends in / or is a directory gets SRC's name. \
            The file moves in chunks (no size limit but the tier's file_max_bytes); a copy in is \
            written to a temporary file and renamed into place at the end, so a failed copy never \
            replaces the old file. The mode of a local file is kept (0644 from stdin).

              clawpen cp ./data.csv acme:/home/data.csv
              clawpen cp acme:/home/out/report.pdf .
              tar c src | clawpen cp - acme:/tmp/src.tar

            \(fileExamples)

            Exit status: 0; 64 usage; 66 not found; 69 unavailable; 75 file_too_large or no space; \
            77 refused (a path rule, or no grant for the tenant); 70 internal.
            """)
    @OptionGroup var connection: ConnectionOptions
    @Argument(help: "What to copy: TENANT:PATH, a local file, or - (stdin).") var source: String
    @Argument(help: "Where to: TENANT:PATH, a local file or directory, or - (stdout).") var destination: String
    @Option(help: ArgumentHelp("Bytes per chunk.", valueName: "bytes")) var chunkBytes = 256 * 1024

    func run() throws {
        let remoteSource = source == "-" ? nil : RemotePath.parse(source)
        let remoteDestination = destination == "-" ? nil : RemotePath.parse(destination)
        switch (remoteSource, remoteDestination) {
        case (nil, let dst?): try upload(dst)
        case (let src?, nil): try download(src)
        case (.some, .some): throw Output.fail(.invalidRequest, "copying between two tenants is not supported: copy out, then in")
        case (nil, nil): throw Output.fail(.invalidRequest, "one side must be TENANT:PATH (for example acme:/home/data.csv)")
        }
    }

    private func upload(_ dst: RemotePath) throws {
        let fd: Int32 = source == "-" ? 0 : open(source, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw Output.fail(errno == ENOENT ? .notFound : .invalidRequest, "\(source): \(String(cString: strerror(errno)))") }
        defer { if fd != 0 { close(fd) } }
        var st = stat()
        var mode = FileCommand.defaultFileMode
        var size: UInt64?
        if fd != 0, fstat(fd, &st) == 0 {
            if (st.st_mode & S_IFMT) == S_IFDIR { throw Output.fail(.invalidRequest, "\(source) is a directory: clawpen cp copies one file") }
            mode = UInt32(st.st_mode & 0o777)
            if (st.st_mode & S_IFMT) == S_IFREG { size = UInt64(st.st_size) }
        }
        let name = source == "-" ? nil : source.split(separator: "/").last.map(String.init)
        let view = try withClient(connection) { (c: ClawpenConnection) throws(ClientError) -> FileView in
            var path = dst.path
            if let name, path.hasSuffix("/") || (try? c.statFile(tenant: dst.tenant, path: path))?.type == "dir" {
                path = (path.hasSuffix("/") ? path : path + "/") + name
            }
            return try c.putFile(tenant: dst.tenant, path: path, mode: mode, size: size, chunkBytes: chunkBytes) { max in
                try Self.readUpTo(fd, max)
            }
        }
        _ = view
    }

    private func download(_ src: RemotePath) throws {
        var target = destination
        var isStdout = destination == "-"
        if !isStdout {
            var st = stat()
            if destination.hasSuffix("/") || (stat(destination, &st) == 0 && (st.st_mode & S_IFMT) == S_IFDIR) {
                let name = src.path.split(separator: "/").last.map(String.init) ?? "file"
                target = (destination.hasSuffix("/") ? destination : destination + "/") + name
            }
        }
        if target == "/dev/stdout" { isStdout = true }
        // Into a temporary file beside the target, renamed over it once the whole file is here:
        // a copy that fails (no such file, too large, the daemon gone) leaves an existing file
        // as it was.
        // A device or a pipe (/dev/null, a fifo) is written as it is.
        var temporary = ""
        var existing = stat()
        let special = !isStdout && stat(target, &existing) == 0 && (existing.st_mode & S_IFMT) != S_IFREG
        let fd: Int32
        if isStdout {
            fd = 1
        } else if special {
            fd = open(target, O_WRONLY | O_CLOEXEC)
        } else {
            var template = Array((target + ".clawpen-XXXXXX").utf8CString)
            fd = template.withUnsafeMutableBufferPointer { p in p.baseAddress.map { mkstemp($0) } ?? -1 }
            temporary = String(decoding: template.dropLast().map { UInt8(bitPattern: $0) }, as: UTF8.self)
        }
        guard fd >= 0 else { throw Output.fail(.invalidRequest, "\(target): \(String(cString: strerror(errno)))") }
        let view: FileView
        do {
            view = try withClient(connection) { (c: ClawpenConnection) throws(ClientError) -> FileView in
                try c.getFile(tenant: src.tenant, path: src.path, chunkBytes: chunkBytes) { bytes in try Self.writeAll(fd, bytes) }
            }
        } catch {
            if !isStdout {
                close(fd)
                if !special { unlink(temporary) } // a failed copy out leaves no partial file behind
            }
            throw error
        }
        if special {
            close(fd)
        } else if !isStdout {
            _ = fchmod(fd, mode_t(view.mode & 0o777))
            close(fd)
            guard rename(temporary, target) == 0 else {
                let why = String(cString: strerror(errno))
                unlink(temporary)
                throw Output.fail(.invalidRequest, "\(target): cannot put the copy in place: \(why)")
            }
        }
    }

    struct LocalIOError: Error, CustomStringConvertible {
        let description: String
    }

    static func readUpTo(_ fd: Int32, _ max: Int) throws -> [UInt8] {
        var buf = [UInt8](repeating: 0, count: max)
        while true {
            let n = buf.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n < 0 { throw LocalIOError(description: String(cString: strerror(errno))) }
            buf.removeLast(max - n)
            return buf
        }
    }

    static func writeAll(_ fd: Int32, _ bytes: [UInt8]) throws {
        var off = 0
        while off < bytes.count {
            let n = bytes[off...].withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { throw LocalIOError(description: String(cString: strerror(errno))) }
            off += n
        }
    }
}

struct Ls: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ls", abstract: "List a directory in a tenant's sandbox (or show one file).",
        discussion: """
            Prints mode, owner uid, size, modification time and name, one entry a line, sorted by \
            name; a symbolic link shows its target (never followed). --json prints \
            {"path", "entries": [STAT...], "truncated"} as the file.list reply has it (docs/protocol.md).

              clawpen ls acme:/home
              clawpen ls acme:/home/out --json

            \(fileExamples)
            """)
    @OptionGroup var connection: ConnectionOptions
    @Argument(help: "TENANT:PATH (TENANT: alone lists /home).") var target: String
    @Flag(help: "Print the listing as JSON.") var json = false
    @Option(help: "List at most this many entries.") var limit = FileCommand.defaultListLimit

    func run() throws {
        let r = try RemotePath.required(target)
        let (entries, truncated) = try withClient(connection, json: json) { (c: ClawpenConnection) throws(ClientError) in
            try c.listFiles(tenant: r.tenant, path: r.path, limit: limit)
        }
        if json {
            Output.json(.object([("path", .string(r.path)), ("entries", .array(entries.map(\.json))), ("truncated", .bool(truncated))]))
            return
        }
        let rows = entries.map { e in
            [
                Self.modeString(e), "\(e.uid)", "\(e.size)", Self.time(e.mtime),
                e.name + (e.target.map { " -> \($0)" } ?? ""),
            ]
        }
        Output.writeStdout(Format.table(rows))
        if truncated { Output.writeStderr("clawpen: note: the listing stops at \(limit) entries (--limit)\n") }
    }

    static func modeString(_ e: FileView) -> String {
        let kind: Character = e.type == "dir" ? "d" : e.type == "symlink" ? "l" : e.type == "file" ? "-" : "?"
        var s = String(kind)
        let bits = Array("rwxrwxrwx")
        for i in 0..<9 { s.append((e.mode >> UInt32(8 - i)) & 1 == 1 ? bits[i] : "-") }
        return s
    }

    static func time(_ t: Double) -> String {
        var seconds = time_t(t)
        var tm = tm()
        gmtime_r(&seconds, &tm)
        func two(_ v: Int32) -> String { v < 10 ? "0\(v)" : "\(v)" }
        return "\(tm.tm_year + 1900)-\(two(tm.tm_mon + 1))-\(two(tm.tm_mday)) \(two(tm.tm_hour)):\(two(tm.tm_min))"
    }
}

struct Rm: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rm", abstract: "Remove a file, a link or a directory in a tenant's sandbox.",
        discussion: """
            Removes a file, a symbolic link (not what it points to) or an empty directory; with -r \
            a directory and everything in it (links inside are removed, never followed). /home and \
            /tmp themselves cannot be removed.

              clawpen rm acme:/home/old.csv
              clawpen rm -r acme:/home/build

            \(fileExamples)
            """)
    @OptionGroup var connection: ConnectionOptions
    @Argument(help: "TENANT:PATH") var target: String
    @Flag(name: [.short, .customLong("recursive")], help: "Remove a directory and everything in it.") var recursive = false
    @Flag(help: "Print {\"path\", \"removed\"} as JSON.") var json = false

    func run() throws {
        let r = try RemotePath.required(target)
        let n = try withClient(connection, json: json) { (c: ClawpenConnection) throws(ClientError) in
            try c.removeFile(tenant: r.tenant, path: r.path, recursive: recursive)
        }
        if json { Output.json(.object([("path", .string(r.path)), ("removed", .int(Int64(n)))])) }
    }
}

struct Mkdir: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "mkdir", abstract: "Make a directory in a tenant's sandbox.",
        discussion: """
            Under /home or /tmp. With -p missing parents are made and an existing directory is \
            not an error.

              clawpen mkdir -p acme:/home/out/2026

            \(fileExamples)
            """)
    @OptionGroup var connection: ConnectionOptions
    @Argument(help: "TENANT:PATH") var target: String
    @Flag(name: [.short, .customLong("parents")], help: "Make missing parents; an existing directory is fine.") var parents = false
    @Option(help: ArgumentHelp("Permission bits, octal.", valueName: "mode")) var mode = "755"
    @Flag(help: "Print the directory's STAT as JSON.") var json = false

    func run() throws {
        let r = try RemotePath.required(target)
        guard let bits = UInt32(mode, radix: 8), bits <= 0o777 else {
            throw Output.fail(.invalidRequest, "--mode \(mode): expected octal permission bits, e.g. 755")
        }
        let view = try withClient(connection, json: json) { (c: ClawpenConnection) throws(ClientError) in
            try c.makeDirectory(tenant: r.tenant, path: r.path, mode: bits, parents: parents)
        }
        if json { Output.json(view.json) }
    }
}
