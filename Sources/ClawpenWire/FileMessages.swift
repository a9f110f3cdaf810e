/// The file requests on the supervisor<->worker link (docs/protocol.md, "Files"): the worker does
/// the work itself, as the tenant's uid inside the sandbox. Every operation carries an `op`
/// number the supervisor chose; a transfer (get, put) is a conversation of several messages with
/// that number. The supervisor decodes what the worker sends as untrusted input: sizes are
/// bounded here, and an `op` it did not start marks the worker as misbehaving.

/// A path as the sandbox sees it, checked before anything touches the file system: absolute, no
/// NUL, no `..`, within PATH_MAX and NAME_MAX. `.` components and repeated slashes are dropped,
/// so `components` is what the resolver walks, one directory at a time.
public struct SandboxPath: Equatable, Sendable, CustomStringConvertible {
    /// The components below `/`, none empty, none `.` or `..`.
    public let components: [String]

    /// PATH_MAX (4096) counts the terminating NUL; NAME_MAX is 255 (linux/limits.h).
    public static let pathMax = 4095
    public static let nameMax = 255

    public init(components: [String]) { self.components = components }

    /// The normalized path, `/` for the root.
    public var description: String { "/" + components.joined(separator: "/") }
    /// The components relative to the root (`home/a/b`), `.` for the root itself.
    public var relative: String { components.isEmpty ? "." : components.joined(separator: "/") }
    public var parent: SandboxPath { SandboxPath(components: Array(components.dropLast())) }
    public var name: String? { components.last }

    /// The first `n` components as a path (for naming the component a refusal is about).
    public func prefix(_ n: Int) -> SandboxPath { SandboxPath(components: Array(components.prefix(n))) }

    /// Checks a requested path; a refusal says which rule it breaks.
    public static func parse(_ raw: String) -> Result<SandboxPath, FileFailure> {
        let bytes = Array(raw.utf8)
        if bytes.contains(0) {
            return .failure(FileFailure(.invalidPath, stage: "check", detail: "the path contains a NUL byte"))
        }
        guard bytes.first == UInt8(ascii: "/") else {
            return .failure(FileFailure(.invalidPath, stage: "check", detail: "the path must be absolute, as the sandbox sees it (for example /home/data.csv)"))
        }
        if bytes.count > pathMax {
            return .failure(FileFailure(.pathMax, stage: "check", detail: "the path is \(bytes.count) bytes, PATH_MAX allows \(pathMax)"))
        }
        var out: [String] = []
        for part in raw.split(separator: "/", omittingEmptySubsequences: true) {
            if part == "." { continue }
            if part == ".." {
                return .failure(
                    FileFailure(.beneathRoot, stage: "check", detail: "a '..' component is not allowed: a path may not climb out of where it points"))
            }
            if part.utf8.count > nameMax {
                return .failure(
                    FileFailure(.nameMax, stage: "check", detail: "the component '\(part.prefix(32))…' is \(part.utf8.count) bytes, NAME_MAX allows \(nameMax)")
                )
            }
            out.append(String(part))
        }
        return .success(SandboxPath(components: out))
    }

    /// The roots under which the tenant's files may be written: `/home` (persistent) and `/tmp`.
    public static let writableRoots = ["home", "tmp"]
    /// Pseudo file systems: nothing of a tenant's lives there, and what does (the worker's own
    /// /proc entries, devices) is not for a file transfer.
    public static let pseudoRoots = ["proc", "sys", "dev"]

    public var isUnderPseudoFilesystem: Bool { components.first.map(Self.pseudoRoots.contains) ?? false }
    /// Strictly below /home or /tmp (the roots themselves are never replaced or removed).
    public var isWritable: Bool { components.count >= 2 && Self.writableRoots.contains(components[0]) }
}

/// Why a file operation failed, as the worker reports it: a kind the supervisor maps to the
/// wire's code and rule, the step that failed, the errno (0 for a refusal by rule), and a
/// detail that names the part of the path it is about.
public struct FileFailure: Error, Equatable, Sendable, CustomStringConvertible {
    public enum Kind: UInt8, Sendable, CaseIterable {
        case invalidPath = 1, beneathRoot, nameMax, pathMax, symlink, readOnlyMount, writableRoots, pseudoFilesystem,
            unixPermissions, notFound, tooLarge, noSpace, notDirectory, isDirectory, notRegular, notEmpty, exists,
            io, invalidRequest
    }

    public let kind: Kind
    public let stage: String
    public let errno: Int32
    public let detail: String

    public init(_ kind: Kind, stage: String, errno: Int32 = 0, detail: String = "") {
        self.kind = kind; self.stage = stage; self.errno = errno; self.detail = detail
    }

    public var description: String { "\(kind) at \(stage) (errno \(errno)): \(detail)" }

    func encode(into w: inout BinaryWriter) {
        w.u8(kind.rawValue); w.string(stage); w.i32(errno); w.string(detail)
    }

    static func decode(_ r: inout BinaryReader) throws(BinaryReader.Failure) -> FileFailure {
        guard let kind = Kind(rawValue: try r.u8()) else { throw .badValue }
        let stage = try r.string(), e = try r.i32(), detail = try r.string()
        guard stage.utf8.count <= 64, detail.utf8.count <= 8192 else { throw .tooMany }
        return FileFailure(kind, stage: stage, errno: e, detail: detail)
    }
}

/// One file, directory or link, as `stat` and `list` report it.
public struct FileInfo: Equatable, Sendable {
    public enum Kind: UInt8, Sendable { case file = 1, dir, symlink, other }
    public var name: String
    public var kind: Kind
    public var size: UInt64
    /// Permission bits (07777 masked).
    public var mode: UInt32
    public var uid: UInt32
    public var gid: UInt32
    /// Modification time, nanoseconds since the epoch.
    public var mtimeNanos: Int64
    /// A link's target as text (never followed); empty otherwise.
    public var target: String

    public init(name: String, kind: Kind, size: UInt64, mode: UInt32, uid: UInt32, gid: UInt32, mtimeNanos: Int64, target: String = "") {
        self.name = name; self.kind = kind; self.size = size; self.mode = mode; self.uid = uid; self.gid = gid
        self.mtimeNanos = mtimeNanos; self.target = target
    }

    func encode(into w: inout BinaryWriter) {
        w.string(name); w.u8(kind.rawValue); w.u64(size); w.u32(mode); w.u32(uid); w.u32(gid); w.i64(mtimeNanos); w.string(target)
    }

    static func decode(_ r: inout BinaryReader) throws(BinaryReader.Failure) -> FileInfo {
        let name = try r.string()
        guard let kind = Kind(rawValue: try r.u8()) else { throw .badValue }
        let info = FileInfo(
            name: name, kind: kind, size: try r.u64(), mode: try r.u32(), uid: try r.u32(), gid: try r.u32(),
            mtimeNanos: try r.i64(), target: try r.string())
        guard info.name.utf8.count <= SandboxPath.nameMax, info.target.utf8.count <= SandboxPath.pathMax + 1 else { throw .tooMany }
        return info
    }
}

/// Supervisor -> worker.
public enum FileRequest: Equatable, Sendable {
    case stat(op: UInt32, path: SandboxPath)
    /// At most `limit` entries (and at most `FileReply.maxListingBytes` of them).
    case list(op: UInt32, path: SandboxPath, limit: UInt32)
    case remove(op: UInt32, path: SandboxPath, recursive: Bool)
    case mkdir(op: UInt32, path: SandboxPath, mode: UInt32, parents: Bool)
    /// Send the file in chunks of `chunkBytes`, at most `window` of them ahead of `getAck`s.
    case get(op: UInt32, path: SandboxPath, maxBytes: UInt64, chunkBytes: UInt32, window: UInt32)
    /// One chunk of a get reached the client: the worker may send one more.
    case getAck(op: UInt32)
    /// Open a temporary file beside `path`, write the first chunk; `eof`: also put it in place.
    case put(op: UInt32, path: SandboxPath, mode: UInt32, maxBytes: UInt64, data: [UInt8], eof: Bool)
    case putChunk(op: UInt32, data: [UInt8], eof: Bool)
    /// Drop the transfer (the client went away, or the supervisor refused it): a put's
    /// temporary file is removed. An op the worker does not know is ignored.
    case abort(op: UInt32)

    public var op: UInt32 {
        switch self {
        case .stat(let op, _), .list(let op, _, _), .remove(let op, _, _), .mkdir(let op, _, _, _), .get(let op, _, _, _, _),
            .getAck(let op), .put(let op, _, _, _, _, _), .putChunk(let op, _, _), .abort(let op):
            return op
        }
    }

    /// The largest chunk either side moves in one message.
    public static let maxChunkBytes = 4 * 1024 * 1024

    func encode(into w: inout BinaryWriter) {
        func path(_ p: SandboxPath) { w.strings(p.components) }
        switch self {
        case .stat(let op, let p): w.u8(1); w.u32(op); path(p)
        case .list(let op, let p, let limit): w.u8(2); w.u32(op); path(p); w.u32(limit)
        case .remove(let op, let p, let r): w.u8(3); w.u32(op); path(p); w.bool(r)
        case .mkdir(let op, let p, let mode, let parents): w.u8(4); w.u32(op); path(p); w.u32(mode); w.bool(parents)
        case .get(let op, let p, let max, let chunk, let window): w.u8(5); w.u32(op); path(p); w.u64(max); w.u32(chunk); w.u32(window)
        case .getAck(let op): w.u8(6); w.u32(op)
        case .put(let op, let p, let mode, let max, let data, let eof): w.u8(7); w.u32(op); path(p); w.u32(mode); w.u64(max); w.bytes(data); w.bool(eof)
        case .putChunk(let op, let data, let eof): w.u8(8); w.u32(op); w.bytes(data); w.bool(eof)
        case .abort(let op): w.u8(9); w.u32(op)
        }
    }

    static func decode(_ r: inout BinaryReader) throws(BinaryReader.Failure) -> FileRequest {
        func path() throws(BinaryReader.Failure) -> SandboxPath {
            // Re-checked as a path would be: the worker trusts its supervisor, but not blindly.
            let parts = try r.strings(max: SandboxPath.pathMax / 2 + 1)
            guard case .success(let p) = SandboxPath.parse("/" + parts.joined(separator: "/")), p.components == parts else { throw .badValue }
            return p
        }
        switch try r.u8() {
        case 1: return .stat(op: try r.u32(), path: try path())
        case 2: return .list(op: try r.u32(), path: try path(), limit: try r.u32())
        case 3: return .remove(op: try r.u32(), path: try path(), recursive: try r.bool())
        case 4: return .mkdir(op: try r.u32(), path: try path(), mode: try r.u32(), parents: try r.bool())
        case 5: return .get(op: try r.u32(), path: try path(), maxBytes: try r.u64(), chunkBytes: try r.u32(), window: try r.u32())
        case 6: return .getAck(op: try r.u32())
        case 7:
            return .put(op: try r.u32(), path: try path(), mode: try r.u32(), maxBytes: try r.u64(), data: try r.bytes(), eof: try r.bool())
        case 8: return .putChunk(op: try r.u32(), data: try r.bytes(), eof: try r.bool())
        case 9: return .abort(op: try r.u32())
        default: throw .badValue
        }
    }
}

/// Worker -> supervisor (untrusted).
public enum FileReply: Equatable, Sendable {
    /// stat, mkdir, and the end of a put: the file as it is now.
    case info(op: UInt32, FileInfo)
    /// `itself`: the path is not a directory, and the one entry is the path's own (as `ls FILE`).
    case listing(op: UInt32, entries: [FileInfo], truncated: Bool, itself: Bool)
    case removed(op: UInt32, count: UInt64)
    /// One chunk of a get, in order; the last (`eof`) carries the file's info as it was opened.
    case data(op: UInt32, offset: UInt64, bytes: [UInt8], eof: Bool, info: FileInfo?)
    /// A chunk of a put is written: the supervisor may send more.
    case putAck(op: UInt32, bytes: UInt32)
    case failed(op: UInt32, FileFailure)

    public var op: UInt32 {
        switch self {
        case .info(let op, _), .listing(let op, _, _, _), .removed(let op, _), .data(let op, _, _, _, _), .putAck(let op, _), .failed(let op, _):
            return op
        }
    }

    /// A listing stops before its encoding passes this (and says it is truncated).
    public static let maxListingBytes = 1024 * 1024

    func encode(into w: inout BinaryWriter) {
        switch self {
        case .info(let op, let i): w.u8(1); w.u32(op); i.encode(into: &w)
        case .listing(let op, let entries, let truncated, let itself):
            w.u8(2); w.u32(op); w.bool(truncated); w.bool(itself); w.u32(UInt32(entries.count))
            for e in entries { e.encode(into: &w) }
        case .removed(let op, let n): w.u8(3); w.u32(op); w.u64(n)
        case .data(let op, let offset, let bytes, let eof, let info):
            w.u8(4); w.u32(op); w.u64(offset); w.bytes(bytes); w.bool(eof)
            if let info { w.u8(1); info.encode(into: &w) } else { w.u8(0) }
        case .putAck(let op, let n): w.u8(5); w.u32(op); w.u32(n)
        case .failed(let op, let f): w.u8(6); w.u32(op); f.encode(into: &w)
        }
    }

    /// The size of a data message's encoding before its bytes: the worker sizes its buffer with it.
    public static let dataHeaderBytes = 1 + 1 + 4 + 8 + 4

    static func decode(_ r: inout BinaryReader) throws(BinaryReader.Failure) -> FileReply {
        switch try r.u8() {
        case 1: return .info(op: try r.u32(), try FileInfo.decode(&r))
        case 2:
            let op = try r.u32(), truncated = try r.bool(), itself = try r.bool(), n = Int(try r.u32())
            // Each entry takes at least 37 bytes: a count the payload cannot hold is refused first.
            guard n <= maxListingBytes / 37 else { throw .tooMany }
            var entries: [FileInfo] = []
            for _ in 0..<n { entries.append(try FileInfo.decode(&r)) }
            guard !itself || entries.count == 1 else { throw .badValue }
            return .listing(op: op, entries: entries, truncated: truncated, itself: itself)
        case 3: return .removed(op: try r.u32(), count: try r.u64())
        case 4:
            let op = try r.u32(), offset = try r.u64(), bytes = try r.bytes(), eof = try r.bool()
            guard bytes.count <= FileRequest.maxChunkBytes else { throw .tooMany }
            let info: FileInfo? = try r.bool() ? try FileInfo.decode(&r) : nil
            return .data(op: op, offset: offset, bytes: bytes, eof: eof, info: info)
        case 5: return .putAck(op: try r.u32(), bytes: try r.u32())
        case 6: return .failed(op: try r.u32(), try FileFailure.decode(&r))
        default: throw .badValue
        }
    }
}

extension FileRequest {
    /// Bytes to reserve for the encoding: a chunk is copied once, not grown into.
    var encodedCapacity: Int {
        switch self {
        case .put(_, _, _, _, let data, _), .putChunk(_, let data, _): return data.count + 64 + SandboxPath.pathMax
        default: return 64 + SandboxPath.pathMax
        }
    }
}

extension FileReply {
    var encodedCapacity: Int {
        switch self {
        case .data(_, _, let bytes, _, _): return bytes.count + 64 + 2 * SandboxPath.pathMax
        case .listing(_, let entries, _, _): return entries.count * 64 + 64
        default: return 128 + 2 * SandboxPath.pathMax
        }
    }
}
