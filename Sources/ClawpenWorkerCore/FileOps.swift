import CClawpenShim
import ClawpenSystem
import ClawpenWire
import Glibc

/// Resolves a sandbox path below the root without ever following a link, and reports why it
/// cannot when it cannot (which component is a link, which is missing).
///
/// Every directory is reached from `rootFD` (the sandbox's `/`, or the workspace without a
/// sandbox) by `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)`: the
/// kernel refuses `..` above the root, every symlink and every /proc magic link while it
/// resolves, atomically, so a job swapping a directory for a link in a loop cannot win a race.
/// When that fails (or the kernel has no openat2), the same path is walked one component at a
/// time with `O_NOFOLLOW` on directory fds, which is as safe and says which component failed.
/// The last component is then always used relative to its parent's fd with `AT_SYMLINK_NOFOLLOW`
/// or `O_NOFOLLOW`: nothing in the tenant's tree is ever followed.
struct PathResolver {
    let rootFD: Int32
    private(set) var useOpenat2 = true

    init(rootFD: Int32) { self.rootFD = rootFD }

    /// An fd of the directory at `p` (O_PATH, or O_RDONLY for reading its entries).
    mutating func directory(_ p: SandboxPath, forReading: Bool = false) throws(FileFailure) -> Int32 {
        let flags = (forReading ? O_RDONLY : cp_o_path()) | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC
        if p.components.isEmpty {
            let fd = openat(rootFD, ".", flags)
            guard fd >= 0 else { throw FileFailure(FileOps.kind(errno), stage: "resolve", errno: errno, detail: "/") }
            return fd
        }
        if useOpenat2 {
            let fd = cp_openat2(rootFD, p.relative, flags, 0, cp_resolve_strict())
            if fd >= 0 { return fd }
            if errno == ENOSYS { useOpenat2 = false }
            // Any other failure: the walk below says precisely which component is at fault.
        }
        return try walk(p, flags: flags)
    }

    /// One component at a time, O_NOFOLLOW on each, from the root.
    private func walk(_ p: SandboxPath, flags: Int32) throws(FileFailure) -> Int32 {
        var current = openat(rootFD, ".", cp_o_path() | O_DIRECTORY | O_CLOEXEC)
        guard current >= 0 else { throw FileFailure(.io, stage: "resolve", errno: errno, detail: "/") }
        for (i, name) in p.components.enumerated() {
            let last = i == p.components.count - 1
            let next = openat(current, name, (last ? flags : cp_o_path() | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC))
            let e = errno
            if next < 0 {
                let here = p.prefix(i + 1).description
                var st = stat()
                let statted = fstatat(current, name, &st, AT_SYMLINK_NOFOLLOW) == 0
                close(current)
                if statted && (st.st_mode & S_IFMT) == S_IFLNK {
                    throw FileFailure(.symlink, stage: "resolve", errno: ELOOP, detail: here)
                }
                if statted && (st.st_mode & S_IFMT) != S_IFDIR {
                    throw FileFailure(.notDirectory, stage: "resolve", errno: ENOTDIR, detail: here)
                }
                throw FileFailure(FileOps.kind(e), stage: "resolve", errno: e, detail: here)
            }
            close(current)
            current = next
        }
        return current
    }
}

/// The worker's file operations (docs/protocol.md, "Files"): done by the worker itself, as the
/// tenant's uid, inside the sandbox, with no process started. Transfers are conversations:
/// a get sends at most `window` chunks ahead of the supervisor's acks (so a client that does not
/// read stalls only its own transfer), a put acks each chunk once it is written. Single-threaded
/// like the rest of the worker: a chunk is one pread or pwrite.
final class FileOps {
    private var resolver: PathResolver
    private let send: (WorkerToSupervisor) -> Void
    private let sendFrame: (UnsafeRawBufferPointer) -> Void
    /// A get's frames are built here, the file read straight into place: reused from chunk to
    /// chunk (a frame is written whole before the next is read), grown to the largest chunk asked.
    private var frameBuffer = UnsafeMutableRawBufferPointer(start: nil, count: 0)
    private var gets: [UInt32: GetTransfer] = [:]
    private var puts: [UInt32: PutTransfer] = [:]
    private var tempCounter: UInt32 = 0

    struct GetTransfer {
        let fd: Int32
        let info: FileInfo
        let chunk: Int
        let maxBytes: UInt64
        var offset: UInt64 = 0
        var credits: Int
    }

    struct PutTransfer {
        let parentFD: Int32
        let fd: Int32
        let tempName: String
        let name: String
        let path: SandboxPath
        let mode: UInt32
        let maxBytes: UInt64
        var written: UInt64 = 0
        /// `written` when the file was last handed to the releaser thread to be flushed.
        var flushedAt: UInt64 = 0
    }

    /// Bytes of a put written between two flushes to the device on the releaser thread
    /// (cp_writeback.h): the fsync that ends the put then flushes at most about this much.
    static let flushEveryBytes: UInt64 = 8 << 20

    init(rootFD: Int32, send: @escaping (WorkerToSupervisor) -> Void, sendFrame: @escaping (UnsafeRawBufferPointer) -> Void) {
        self.resolver = PathResolver(rootFD: rootFD)
        self.send = send
        self.sendFrame = sendFrame
    }

    deinit { frameBuffer.deallocate() }

    /// A `putChunk` message (tags 40 and 8, op, length, data, eof), written from the frame it
    /// came in; false when `payload` is anything else (it is then decoded as usual).
    func putChunkInPlace(_ payload: UnsafeRawBufferPointer) -> Bool {
        let n = payload.count
        guard n >= 11, payload[0] == 40, payload[1] == 8 else { return false }
        func u32(_ at: Int) -> UInt32 {
            (UInt32(payload[at]) << 24) | (UInt32(payload[at + 1]) << 16) | (UInt32(payload[at + 2]) << 8) | UInt32(payload[at + 3])
        }
        let op = u32(2), length = Int(u32(6))
        guard 10 + length + 1 == n, payload[n - 1] <= 1 else { return false }
        do { try putChunk(op, data: UnsafeRawBufferPointer(rebasing: payload[10..<(10 + length)]), eof: payload[n - 1] == 1) } catch {
            abort(op)
            reply(.failed(op: op, error))
        }
        return true
    }

    func handle(_ request: FileRequest) {
        let op = request.op
        do {
            switch request {
            case .stat(_, let p): reply(.info(op: op, try stat(p)))
            case .list(_, let p, let limit): try list(op, p, limit: Int(limit))
            case .remove(_, let p, let recursive): reply(.removed(op: op, count: try remove(p, recursive: recursive)))
            case .mkdir(_, let p, let mode, let parents): reply(.info(op: op, try mkdir(p, mode: mode, parents: parents)))
            case .get(_, let p, let maxBytes, let chunk, let window): try get(op, p, maxBytes: maxBytes, chunk: Int(chunk), window: Int(window))
            case .getAck: try pump(op, credit: 1)
            case .put(_, let p, let mode, let maxBytes, let data, let eof): try put(op, p, mode: mode, maxBytes: maxBytes, data: data, eof: eof)
            case .putChunk(_, let data, let eof): try putChunk(op, data: data, eof: eof)
            case .abort: abort(op)
            }
        } catch {
            abort(op)
            reply(.failed(op: op, error))
        }
    }

    /// Removes what unfinished puts left (the worker is stopping).
    func abandonAll() {
        for op in Array(puts.keys) + Array(gets.keys) { abort(op) }
    }

    private func reply(_ r: FileReply) { send(.file(r)) }

    // MARK: stat, list

    private func stat(_ p: SandboxPath) throws(FileFailure) -> FileInfo {
        try refusePseudo(p)
        guard let name = p.name else {
            let fd = try resolver.directory(p)
            defer { close(fd) }
            return try Self.info(fd, "", name: "/", stage: "stat", path: p)
        }
        let parent = try resolver.directory(p.parent)
        defer { close(parent) }
        return try Self.info(parent, name, name: name, stage: "stat", path: p)
    }

    private func list(_ op: UInt32, _ p: SandboxPath, limit: Int) throws(FileFailure) {
        let me = try stat(p)
        guard me.kind == .dir else {
            reply(.listing(op: op, entries: [me], truncated: false, itself: true))
            return
        }
        let fd = try resolver.directory(p, forReading: true)
        guard let dir = fdopendir(fd) else {
            let e = errno
            close(fd)
            throw FileFailure(Self.kind(e), stage: "opendir", errno: e, detail: p.description)
        }
        defer { closedir(dir) }
        let dfd = dirfd(dir)
        var names: [String] = []
        while let ent = readdir(dir) {
            let name = Self.entryName(ent)
            if name == "." || name == ".." || name.isEmpty { continue }
            names.append(name)
        }
        names.sort()
        var entries: [FileInfo] = []
        var bytes = 0
        var truncated = false
        for name in names {
            if entries.count >= limit || bytes >= FileReply.maxListingBytes - 2 * SandboxPath.pathMax {
                truncated = true
                break
            }
            // An entry that went away between readdir and fstatat is simply not listed.
            guard let info = try? Self.info(dfd, name, name: name, stage: "stat", path: p) else { continue }
            bytes += 64 + info.name.utf8.count + info.target.utf8.count
            entries.append(info)
        }
        reply(.listing(op: op, entries: entries, truncated: truncated, itself: false))
    }

    // MARK: remove, mkdir

    private func remove(_ p: SandboxPath, recursive: Bool) throws(FileFailure) -> UInt64 {
        let (parent, name) = try writableParent(p, stage: "remove")
        defer { close(parent) }
        // As a put's replaced file: the last reference goes on the releaser thread, so that
        // freeing a large file's blocks does not hold this loop (the reply does not wait for it).
        let held = cp_open_path(parent, name)
        if unlinkat(parent, name, 0) == 0 {
            if held >= 0 { _ = cp_close_later(held) }
            return 1
        }
        var e = errno
        if held >= 0 { close(held) }
        if e == EISDIR {
            if recursive { return try removeTree(parent, name, path: p) }
            if unlinkat(parent, name, AT_REMOVEDIR) == 0 { return 1 }
            e = errno
        }
        throw FileFailure(Self.kind(e), stage: "remove", errno: e, detail: p.description)
    }

    /// Removes `name` below `dirFD` and everything in it. Each directory is opened O_NOFOLLOW
    /// from its parent's fd: a link swapped in for a directory is removed, never entered.
    private func removeTree(_ dirFD: Int32, _ name: String, path: SandboxPath, depth: Int = 0) throws(FileFailure) -> UInt64 {
        guard depth < SandboxPath.pathMax / 2 else { throw FileFailure(.io, stage: "remove", errno: ELOOP, detail: path.description) }
        let fd = openat(dirFD, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        if fd < 0 {
            let e = errno
            // Not a directory (any more): a file or a link; unlink it as it is.
            if (e == ELOOP || e == ENOTDIR) && unlinkat(dirFD, name, 0) == 0 { return 1 }
            throw FileFailure(Self.kind(e), stage: "remove", errno: e, detail: path.description)
        }
        guard let dir = fdopendir(fd) else {
            let e = errno
            close(fd)
            throw FileFailure(Self.kind(e), stage: "remove", errno: e, detail: path.description)
        }
        var names: [String] = []
        while let ent = readdir(dir) {
            let n = Self.entryName(ent)
            if n != "." && n != ".." && !n.isEmpty { names.append(n) }
        }
        var count: UInt64 = 0
        let dfd = dirfd(dir)
        do throws(FileFailure) {
            for n in names {
                if unlinkat(dfd, n, 0) == 0 { count += 1; continue }
                let e = errno
                if e == ENOENT { continue }
                guard e == EISDIR else {
                    throw FileFailure(Self.kind(e), stage: "remove", errno: e, detail: path.description + "/" + n)
                }
                count += try removeTree(dfd, n, path: SandboxPath(components: path.components + [n]), depth: depth + 1)
            }
        } catch {
            closedir(dir)
            throw error
        }
        closedir(dir)
        guard unlinkat(dirFD, name, AT_REMOVEDIR) == 0 else {
            throw FileFailure(Self.kind(errno), stage: "remove", errno: errno, detail: path.description)
        }
        return count + 1
    }

    private func mkdir(_ p: SandboxPath, mode: UInt32, parents: Bool) throws(FileFailure) -> FileInfo {
        try refusePseudo(p)
        guard let name = p.name else { throw FileFailure(.exists, stage: "mkdir", errno: EEXIST, detail: "/") }
        if !parents {
            let (parent, _) = try writableParent(p, stage: "mkdir")
            defer { close(parent) }
            guard mkdirat(parent, name, 0o700) == 0 else {
                throw FileFailure(Self.kind(errno), stage: "mkdir", errno: errno, detail: p.description)
            }
            try chmodDirectory(parent, name, mode: mode, path: p)
            return try Self.info(parent, name, name: name, stage: "stat", path: p)
        }
        // -p: every missing component below the writable root is made, each from its parent's
        // fd with O_NOFOLLOW; an existing directory is fine, anything else there is not.
        var current = try resolver.directory(SandboxPath(components: []))
        defer { close(current) }
        for (i, component) in p.components.enumerated() {
            let here = p.prefix(i + 1)
            var made = false
            if here.isWritable {
                if cp_fd_read_only(current) == 1 { throw FileFailure(.readOnlyMount, stage: "mkdir", errno: EROFS, detail: here.description) }
                if mkdirat(current, component, 0o700) == 0 {
                    made = true
                } else if errno != EEXIST {
                    throw FileFailure(Self.kind(errno), stage: "mkdir", errno: errno, detail: here.description)
                }
            }
            if made { try chmodDirectory(current, component, mode: mode, path: here) }
            let next = openat(current, component, cp_o_path() | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
            if next < 0 {
                let e = errno
                var st = Glibc.stat()
                if fstatat(current, component, &st, AT_SYMLINK_NOFOLLOW) == 0 {
                    if (st.st_mode & S_IFMT) == S_IFLNK { throw FileFailure(.symlink, stage: "mkdir", errno: ELOOP, detail: here.description) }
                    throw FileFailure(.exists, stage: "mkdir", errno: EEXIST, detail: here.description)
                }
                if !here.isWritable && e == ENOENT { throw FileFailure(.writableRoots, stage: "mkdir", detail: here.description) }
                throw FileFailure(Self.kind(e), stage: "mkdir", errno: e, detail: here.description)
            }
            close(current)
            current = next
        }
        return try Self.info(current, "", name: name, stage: "stat", path: p)
    }

    /// A directory just made gets the asked mode (mkdirat applied the worker's umask).
    private func chmodDirectory(_ parent: Int32, _ name: String, mode: UInt32, path: SandboxPath) throws(FileFailure) {
        let fd = openat(parent, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        guard fd >= 0 else { throw FileFailure(Self.kind(errno), stage: "mkdir", errno: errno, detail: path.description) }
        defer { close(fd) }
        guard fchmod(fd, mode_t(mode & 0o777)) == 0 else {
            throw FileFailure(Self.kind(errno), stage: "chmod", errno: errno, detail: path.description)
        }
    }

    // MARK: get

    private func get(_ op: UInt32, _ p: SandboxPath, maxBytes: UInt64, chunk: Int, window: Int) throws(FileFailure) {
        try refusePseudo(p)
        guard gets[op] == nil, puts[op] == nil else {
            throw FileFailure(.invalidRequest, stage: "get", detail: "a transfer with this number is in progress")
        }
        guard let name = p.name else { throw FileFailure(.isDirectory, stage: "open", errno: EISDIR, detail: "/") }
        let parent = try resolver.directory(p.parent)
        defer { close(parent) }
        let before = try Self.info(parent, name, name: name, stage: "stat", path: p)
        try Self.requireRegular(before, p)
        if before.size > maxBytes { throw FileFailure(.tooLarge, stage: "stat", detail: "\(before.size)") }
        // O_NONBLOCK: a FIFO swapped in after the stat must not block the worker; the fstat
        // below refuses anything but the regular file that was looked at.
        let fd = openat(parent, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC)
        guard fd >= 0 else { throw FileFailure(Self.kind(errno), stage: "open", errno: errno, detail: p.description) }
        let info: FileInfo
        do {
            info = try Self.info(fd, "", name: name, stage: "fstat", path: p)
            try Self.requireRegular(info, p)
        } catch {
            close(fd)
            throw error
        }
        gets[op] = GetTransfer(fd: fd, info: info, chunk: max(1, min(chunk, FileRequest.maxChunkBytes)), maxBytes: maxBytes, credits: 0)
        try pump(op, credit: max(1, window))
    }

    /// Sends chunks while the transfer has credit; the last one carries the file's info. Each
    /// chunk is read straight into its frame (FileReply.data: header, op, offset, length, the
    /// bytes, eof, no info), written whole, and the buffer reused for the next.
    private func pump(_ op: UInt32, credit: Int) throws(FileFailure) {
        guard var t = gets[op] else { return } // finished or aborted: a late ack
        t.credits += credit
        let head = Framing.headerSize + FileReply.dataHeaderBytes
        let size = head + t.chunk + 2
        if frameBuffer.count < size {
            frameBuffer.deallocate()
            frameBuffer = .allocate(byteCount: size, alignment: 16)
        }
        guard let frame = frameBuffer.baseAddress else { return }
        while t.credits > 0 {
            var n = 0
            while n < t.chunk {
                let r = pread(t.fd, frame + head + n, t.chunk - n, off_t(t.offset) + off_t(n))
                if r > 0 { n += r; continue }
                if r == 0 { break }
                if errno == EINTR { continue }
                throw FileFailure(Self.kind(errno), stage: "read", errno: errno, detail: "\(t.info.name) at offset \(t.offset + UInt64(n))")
            }
            var eof = n < t.chunk
            if !eof {
                // A file whose size is a multiple of the chunk ends here too if nothing follows.
                var probe: UInt8 = 0
                eof = pread(t.fd, &probe, 1, off_t(t.offset) + off_t(n)) == 0
            }
            if t.offset + UInt64(n) > t.maxBytes {
                throw FileFailure(.tooLarge, stage: "read", detail: "at least \(t.offset + UInt64(n))")
            }
            let offset = t.offset
            t.offset += UInt64(n)
            t.credits -= 1
            if eof {
                close(t.fd)
                gets[op] = nil
                var info = t.info
                info.size = t.offset
                let bytes = Array(UnsafeRawBufferPointer(start: frame + head, count: n))
                reply(.data(op: op, offset: offset, bytes: bytes, eof: true, info: info))
                return
            }
            gets[op] = t
            var w = RawFrameWriter(frame)
            w.u32(UInt32(FileReply.dataHeaderBytes + n + 2))
            w.u8(40); w.u8(4); w.u32(op); w.u64(offset); w.u32(UInt32(n))
            frame.storeBytes(of: UInt8(0), toByteOffset: head + n, as: UInt8.self) // not eof
            frame.storeBytes(of: UInt8(0), toByteOffset: head + n + 1, as: UInt8.self) // no info
            sendFrame(UnsafeRawBufferPointer(start: frame, count: head + n + 2))
        }
        gets[op] = t
    }

    /// Big-endian integers at the start of a frame being built in place.
    private struct RawFrameWriter {
        let p: UnsafeMutableRawPointer
        var i = 0
        init(_ p: UnsafeMutableRawPointer) { self.p = p }
        mutating func u8(_ v: UInt8) { p.storeBytes(of: v, toByteOffset: i, as: UInt8.self); i += 1 }
        mutating func u32(_ v: UInt32) { p.storeBytes(of: v.bigEndian, toByteOffset: i, as: UInt32.self); i += 4 }
        mutating func u64(_ v: UInt64) { p.storeBytes(of: v.bigEndian, toByteOffset: i, as: UInt64.self); i += 8 }
    }

    // MARK: put

    private func put(_ op: UInt32, _ p: SandboxPath, mode: UInt32, maxBytes: UInt64, data: [UInt8], eof: Bool) throws(FileFailure) {
        guard gets[op] == nil, puts[op] == nil else { throw FileFailure(.invalidRequest, stage: "put", detail: "a transfer with this number is in progress") }
        let (parent, name) = try writableParent(p, stage: "put")
        var st = Glibc.stat()
        if fstatat(parent, name, &st, AT_SYMLINK_NOFOLLOW) == 0 && (st.st_mode & S_IFMT) == S_IFDIR {
            close(parent)
            throw FileFailure(.isDirectory, stage: "put", errno: EISDIR, detail: p.description)
        }
        // The content goes to a new file beside the target, renamed over it at the end: a put
        // that fails half-way never replaces the old file. O_EXCL | O_NOFOLLOW: never an
        // existing file or a link a job planted under the name.
        var fd: Int32 = -1
        var temp = ""
        for _ in 0..<16 {
            tempCounter &+= 1
            temp = ".clawpen-put-\(getpid())-\(op)-\(tempCounter)-\(UInt32(truncatingIfNeeded: Clock.monotonicNanos()))"
            fd = openat(parent, temp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode_t(0o600))
            if fd >= 0 || errno != EEXIST { break }
        }
        guard fd >= 0 else {
            let e = errno
            close(parent)
            throw FileFailure(Self.kind(e), stage: "create", errno: e, detail: p.description)
        }
        puts[op] = PutTransfer(parentFD: parent, fd: fd, tempName: temp, name: name, path: p, mode: mode & 0o777, maxBytes: maxBytes)
        try putChunk(op, data: data, eof: eof)
    }

    private func putChunk(_ op: UInt32, data: [UInt8], eof: Bool) throws(FileFailure) {
        let failure: FileFailure? = data.withUnsafeBytes { raw -> FileFailure? in
            do throws(FileFailure) {
                try putChunk(op, data: raw, eof: eof)
                return nil
            } catch {
                return error
            }
        }
        if let failure { throw failure }
    }

    private func putChunk(_ op: UInt32, data: UnsafeRawBufferPointer, eof: Bool) throws(FileFailure) {
        guard var t = puts[op] else { return } // aborted: the supervisor learns it from the failure
        if t.written + UInt64(data.count) > t.maxBytes {
            throw FileFailure(.tooLarge, stage: "write", detail: "at least \(t.written + UInt64(data.count))")
        }
        var n = 0
        while n < data.count {
            guard let base = data.baseAddress else { break }
            let r = pwrite(t.fd, base + n, data.count - n, off_t(t.written) + off_t(n))
            if r > 0 { n += r; continue }
            if r < 0 && errno == EINTR { continue }
            throw FileFailure(Self.kind(errno), stage: "write", errno: errno, detail: t.path.description)
        }
        t.written += UInt64(n)
        puts[op] = t
        guard eof else {
            // The disk starts on this chunk now, and every few MiB the file is flushed to the
            // device on the releaser thread, while the next chunks arrive: the fsync at the end
            // then waits for the last few MiB only, not for the whole file (75-85 ms of a 64 MiB
            // put's 240 on this machine's virtual disk). Refused by a filter, unsupported or no
            // thread: the fsync does it all, as before.
            if n > 0 { _ = cp_writeback_start(t.fd, Int64(t.written) - Int64(n), Int64(n)) }
            if t.written - t.flushedAt >= Self.flushEveryBytes, cp_sync_later(t.fd) == 1 {
                t.flushedAt = t.written
                puts[op] = t
            }
            reply(.putAck(op: op, bytes: UInt32(truncatingIfNeeded: data.count)))
            return
        }
        guard fchmod(t.fd, mode_t(t.mode)) == 0 else { throw FileFailure(Self.kind(errno), stage: "chmod", errno: errno, detail: t.path.description) }
        guard fsync(t.fd) == 0 else { throw FileFailure(Self.kind(errno), stage: "fsync", errno: errno, detail: t.path.description) }
        // The file this put replaces, held (O_PATH, never following a link) across the rename:
        // its blocks are then freed when this reference goes, on the releaser thread, instead of
        // inside renameat on this loop (tens of ms for a large file on a `discard` mount).
        let replaced = cp_open_path(t.parentFD, t.name)
        guard renameat(t.parentFD, t.tempName, t.parentFD, t.name) == 0 else {
            let e = errno
            if replaced >= 0 { close(replaced) }
            throw FileFailure(Self.kind(e), stage: "rename", errno: e, detail: t.path.description)
        }
        if replaced >= 0 { _ = cp_close_later(replaced) }
        let info = try Self.info(t.fd, "", name: t.name, stage: "fstat", path: t.path)
        close(t.fd)
        close(t.parentFD)
        puts[op] = nil
        reply(.info(op: op, info))
    }

    private func abort(_ op: UInt32) {
        if let t = puts.removeValue(forKey: op) {
            close(t.fd)
            _ = unlinkat(t.parentFD, t.tempName, 0)
            close(t.parentFD)
        }
        if let t = gets.removeValue(forKey: op) { close(t.fd) }
    }

    // MARK: Rules

    private func refusePseudo(_ p: SandboxPath) throws(FileFailure) {
        if p.isUnderPseudoFilesystem { throw FileFailure(.pseudoFilesystem, stage: "check", detail: p.description) }
    }

    /// The parent directory of a path to be written, and the name in it: never on a read-only
    /// mount, never outside /home and /tmp, never /home or /tmp themselves.
    private func writableParent(_ p: SandboxPath, stage: String) throws(FileFailure) -> (Int32, String) {
        try refusePseudo(p)
        guard let name = p.name else { throw FileFailure(.writableRoots, stage: "check", detail: "/") }
        if p.components.count == 1 && SandboxPath.writableRoots.contains(name) {
            throw FileFailure(.writableRoots, stage: "check", detail: p.description)
        }
        let parent = try resolver.directory(p.parent)
        if cp_fd_read_only(parent) == 1 {
            close(parent)
            throw FileFailure(.readOnlyMount, stage: "check", errno: EROFS, detail: p.parent.description)
        }
        guard p.isWritable else {
            close(parent)
            throw FileFailure(.writableRoots, stage: "check", detail: p.description)
        }
        return (parent, name)
    }

    static func requireRegular(_ info: FileInfo, _ p: SandboxPath) throws(FileFailure) {
        switch info.kind {
        case .file: return
        case .dir: throw FileFailure(.isDirectory, stage: "open", errno: EISDIR, detail: p.description)
        case .symlink: throw FileFailure(.symlink, stage: "open", errno: ELOOP, detail: p.description)
        case .other: throw FileFailure(.notRegular, stage: "open", detail: p.description)
        }
    }

    /// fstatat(dirFD, name, AT_SYMLINK_NOFOLLOW), or fstat(dirFD) for an empty name.
    static func info(_ dirFD: Int32, _ name: String, name shown: String, stage: String, path: SandboxPath) throws(FileFailure) -> FileInfo {
        var st = Glibc.stat()
        let r = name.isEmpty ? fstat(dirFD, &st) : fstatat(dirFD, name, &st, AT_SYMLINK_NOFOLLOW)
        guard r == 0 else { throw FileFailure(kind(errno), stage: stage, errno: errno, detail: path.description) }
        let kind: FileInfo.Kind
        switch st.st_mode & S_IFMT {
        case S_IFREG: kind = .file
        case S_IFDIR: kind = .dir
        case S_IFLNK: kind = .symlink
        default: kind = .other
        }
        var target = ""
        if kind == .symlink && !name.isEmpty {
            var buf = [UInt8](repeating: 0, count: SandboxPath.pathMax + 1)
            let n = buf.withUnsafeMutableBytes { raw -> Int in
                guard let base = raw.baseAddress else { return -1 }
                return readlinkat(dirFD, name, base.assumingMemoryBound(to: CChar.self), raw.count)
            }
            if n > 0 { target = String(decoding: buf[0..<min(n, SandboxPath.pathMax)], as: UTF8.self) }
        }
        return FileInfo(
            name: String(shown.utf8.prefix(SandboxPath.nameMax)) ?? "", kind: kind, size: UInt64(max(0, st.st_size)),
            mode: UInt32(st.st_mode & 0o7777), uid: st.st_uid, gid: st.st_gid,
            mtimeNanos: Int64(st.st_mtim.tv_sec) * 1_000_000_000 + Int64(st.st_mtim.tv_nsec), target: target)
    }

    static func entryName(_ ent: UnsafeMutablePointer<dirent>) -> String {
        withUnsafeBytes(of: ent.pointee.d_name) { raw in
            let bytes = raw.prefix { $0 != 0 }
            return String(decoding: bytes, as: UTF8.self)
        }
    }

    static func kind(_ e: Int32) -> FileFailure.Kind {
        switch e {
        case ENOENT: return .notFound
        case ELOOP: return .symlink
        case EXDEV: return .beneathRoot
        case EROFS: return .readOnlyMount
        case EACCES, EPERM: return .unixPermissions
        case ENOSPC, EDQUOT: return .noSpace
        case ENOTDIR: return .notDirectory
        case EISDIR: return .isDirectory
        case ENOTEMPTY: return .notEmpty
        case EEXIST: return .exists
        case ENAMETOOLONG: return .nameMax
        case EFBIG: return .tooLarge
        default: return .io
        }
    }
}
