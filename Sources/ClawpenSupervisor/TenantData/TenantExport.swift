import ClawpenProtocol
import ClawpenStore
import ClawpenWire
import FoundationEssentials
import Glibc
import NIOCore
import NIOPosix

/// `clawpen tenant export NAME --to FILE.tar`: the tenant's data as it can take it away — a
/// POSIX tar (ustar, with pax headers for long names and large files) of `jobs.jsonl` (every job
/// record, opened with the tenant's key, one JSON object a line) and `workspace/` (the tenant's
/// directory, walked without following a single link: links are archived as links).
///
/// The file walk and the writing run on the retention thread, off the event loop; the job
/// records are read on the loop a page at a time (the store is the loop's).
extension Supervisor {
    func exportTenant(_ name: TenantName, to path: String, _ r: Responder) {
        let pool: NIOThreadPool
        if let p = tenantData.retention.pool {
            pool = p
        } else {
            pool = NIOThreadPool(numberOfThreads: 1)
            pool.start()
            tenantData.retention.pool = pool
        }
        let root = config.workspaceRoot
        let loop = self.loop
        pool.runIfActive(eventLoop: loop) { () throws -> (jobs: Int, files: Int, bytes: Int64) in
            try TenantExporter.run(
                name, root: root, to: path,
                page: { after in
                    try loop.submit { [self] in
                        try store.jobsForExport(name, after: after, limit: 200).map { (TenantExporter.line($0), $0.createdAt, $0.id) }
                    }.wait()
                })
        }.whenComplete { [self] result in
            switch result {
            case .success(let s):
                audit(
                    tenant: name, caller: r, action: "tenant.export", rule: "operator",
                    detail: "\(s.jobs) job record(s), \(s.files) workspace entries, to \(path)")
                r.reply(
                    "export",
                    [
                        ("tenant", .string(name.value)), ("path", .string(path)), ("jobs", .int(Int64(s.jobs))), ("workspace_entries", .int(Int64(s.files))),
                        ("bytes", .int(s.bytes)),
                    ])
            case .failure(let error):
                r.fail(ProtocolError(.internal, "tenant.export: \(error)"))
            }
        }
    }
}

enum TenantExporter {
    struct Failure: Error, CustomStringConvertible {
        let description: String
        init(_ step: String, _ path: String, _ e: Int32) { description = "\(step) \(path): \(errnoString(e))" }
    }

    /// One job as a JSON line: the client's view, with env and stdin, which the view leaves out.
    static func line(_ job: JobRecord) -> [UInt8] {
        guard case .object(var pairs) = job.view.json else { return [] }
        pairs.append(("env", .object(job.env.map { ($0.name, .string($0.value)) })))
        if !job.stdin.isEmpty { pairs.append(("stdin_b64", .string(Data(job.stdin).base64EncodedString()))) }
        return JSONValue.object(pairs).serialized() + [0x0A]
    }

    static func run(
        _ name: TenantName, root: String, to path: String, page: ((Double, String)?) throws -> [([UInt8], Double, String)]
    ) throws -> (jobs: Int, files: Int, bytes: Int64) {
        let out = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
        guard out >= 0 else { throw Failure("cannot create", path, errno) }
        var ok = false
        defer {
            close(out)
            if !ok { unlink(path) }
        }
        // jobs.jsonl first, into an unnamed file beside the target (its size goes in the header).
        let tmpPath = path + ".jobs-\(getpid())"
        let tmp = open(tmpPath, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
        guard tmp >= 0 else { throw Failure("cannot create", tmpPath, errno) }
        unlink(tmpPath)
        defer { close(tmp) }
        var jobs = 0
        var after: (Double, String)?
        var size: Int64 = 0
        while true {
            let rows = try page(after)
            for (bytes, _, _) in rows {
                try writeAll(tmp, bytes, tmpPath)
                size += Int64(bytes.count)
            }
            jobs += rows.count
            guard let last = rows.last, rows.count == 200 else { break }
            after = (last.1, last.2)
        }
        var tar = TarWriter(fd: out, path: path)
        let now = Int64(time(nil))
        try tar.entry(name: "jobs.jsonl", mode: 0o600, size: size, type: TarWriter.regular, mtime: now)
        _ = lseek(tmp, 0, SEEK_SET)
        try tar.copy(from: tmp, size: size)
        try tar.entry(name: "workspace/", mode: 0o700, size: 0, type: TarWriter.directory, mtime: now)
        var entries = 0
        try Workspace.walk(root: root, tenant: name) { e throws(StepFailure) in
            let arcName = "workspace/" + e.path
            let mtime = Int64(e.stat.st_mtim.tv_sec)
            let mode = Int(e.stat.st_mode & 0o7777)
            do {
                if e.isDirectory {
                    try tar.entry(name: arcName + "/", mode: mode, size: 0, type: TarWriter.directory, mtime: mtime)
                } else if e.isSymlink {
                    var buf = [CChar](repeating: 0, count: 4097)
                    let n = readlinkat(e.parentFD, e.name, &buf, 4096)
                    guard n >= 0 else { return false }
                    let target = String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
                    try tar.entry(name: arcName, mode: 0o777, size: 0, type: TarWriter.symlink, linkName: target, mtime: mtime)
                } else if e.isRegular {
                    // O_NOFOLLOW | O_NONBLOCK: a link or a FIFO swapped in after the walk's look
                    // is refused or does not block; fstat says what was opened.
                    let fd = openat(e.parentFD, e.name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC)
                    guard fd >= 0 else { return false }
                    defer { close(fd) }
                    var st = stat()
                    guard fstat(fd, &st) == 0, st.st_mode & S_IFMT == S_IFREG else { return false }
                    try tar.entry(name: arcName, mode: mode, size: Int64(st.st_size), type: TarWriter.regular, mtime: mtime)
                    try tar.copy(from: fd, size: Int64(st.st_size))
                } else {
                    return false // devices, sockets, FIFOs: not data
                }
            } catch {
                throw StepFailure(step: "export", errno: EIO, detail: "\(error)")
            }
            entries += 1
            return true
        }
        try tar.finish()
        guard fsync(out) == 0 else { throw Failure("cannot fsync", path, errno) }
        ok = true
        return (jobs, entries, tar.written)
    }

    static func writeAll(_ fd: Int32, _ bytes: [UInt8], _ path: String) throws {
        var off = 0
        while off < bytes.count {
            let n = bytes[off...].withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { throw Failure("cannot write", path, errno) }
            off += n
        }
    }
}

/// A minimal POSIX tar writer: ustar headers, a pax extended header ('x') before any entry
/// whose name or link does not fit ustar's fields or whose size does not fit 11 octal digits.
struct TarWriter {
    static let regular: UInt8 = 0x30, symlink: UInt8 = 0x32, directory: UInt8 = 0x35, pax: UInt8 = 0x78
    let fd: Int32
    let path: String
    private(set) var written: Int64 = 0

    init(fd: Int32, path: String) { self.fd = fd; self.path = path }

    mutating func entry(name: String, mode: Int, size: Int64, type: UInt8, linkName: String = "", mtime: Int64) throws {
        var records: [String] = []
        if name.utf8.count > 100 { records.append(paxRecord("path", name)) }
        if linkName.utf8.count > 100 { records.append(paxRecord("linkpath", linkName)) }
        if size >= 0o77777777777 { records.append(paxRecord("size", String(size))) }
        if !records.isEmpty {
            let body = Array(records.joined().utf8)
            try header(name: "PaxHeaders/" + String(name.suffix(80)), mode: 0o644, size: Int64(body.count), type: Self.pax, linkName: "", mtime: mtime)
            try emit(body)
            try pad(Int64(body.count))
        }
        try header(name: name, mode: mode, size: size, type: type, linkName: linkName, mtime: mtime)
    }

    private func paxRecord(_ key: String, _ value: String) -> String {
        let body = " \(key)=\(value)\n"
        var n = body.utf8.count + 1
        while String(n).utf8.count + body.utf8.count != n { n = String(n).utf8.count + body.utf8.count }
        return String(n) + body
    }

    private mutating func header(name: String, mode: Int, size: Int64, type: UInt8, linkName: String, mtime: Int64) throws {
        var h = [UInt8](repeating: 0, count: 512)
        func put(_ s: [UInt8], _ at: Int, _ len: Int) { for (i, b) in s.prefix(len).enumerated() { h[at + i] = b } }
        func octal(_ v: Int64, _ at: Int, _ len: Int) {
            let digits = String(max(0, min(v, 0o77777777777)), radix: 8)
            let padded = String(repeating: "0", count: max(0, len - 1 - digits.utf8.count)) + digits
            put(Array(padded.utf8), at, len - 1)
        }
        put(Array(name.utf8), 0, 100)
        octal(Int64(mode), 100, 8)
        octal(0, 108, 8)
        octal(0, 116, 8)
        octal(size, 124, 12)
        octal(mtime, 136, 12)
        for i in 148..<156 { h[i] = 0x20 }
        h[156] = type
        put(Array(linkName.utf8), 157, 100)
        put(Array("ustar\u{0}00".utf8), 257, 8)
        put(Array("root".utf8), 265, 32)
        put(Array("root".utf8), 297, 32)
        let sum = h.reduce(0) { $0 + Int64($1) }
        let cs = String(sum, radix: 8)
        put(Array((String(repeating: "0", count: max(0, 6 - cs.utf8.count)) + cs).utf8) + [0, 0x20], 148, 8)
        try emit(h)
    }

    mutating func copy(from src: Int32, size: Int64) throws {
        var left = size
        var buf = [UInt8](repeating: 0, count: 64 * 1024)
        while left > 0 {
            let want = Int(min(Int64(buf.count), left))
            let n = buf.withUnsafeMutableBytes { read(src, $0.baseAddress, want) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break } // shrank meanwhile: zeros fill the promised size
            try emit(Array(buf[0..<n]))
            left -= Int64(n)
        }
        while left > 0 {
            let z = Int(min(Int64(buf.count), left))
            try emit([UInt8](repeating: 0, count: z))
            left -= Int64(z)
        }
        try pad(size)
    }

    private mutating func pad(_ size: Int64) throws {
        let rem = Int(size % 512)
        if rem != 0 { try emit([UInt8](repeating: 0, count: 512 - rem)) }
    }

    mutating func finish() throws { try emit([UInt8](repeating: 0, count: 1024)) }

    private mutating func emit(_ bytes: [UInt8]) throws {
        try TenantExporter.writeAll(fd, bytes, path)
        written += Int64(bytes.count)
    }
}
