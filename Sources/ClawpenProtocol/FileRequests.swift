import ClawpenWire
import FoundationEssentials

/// The `file.*` requests (docs/protocol.md, "Files"), parsed for shape. The path stays the
/// client's string here: the supervisor checks it (SandboxPath) and refuses it with the rule it
/// breaks; the worker resolves it.
public enum FileCommand: Sendable, Equatable {
    /// The first frame of a put (with the first chunk, maybe the only one).
    case put(FilePut)
    /// A further chunk of the put with the same id on the same connection.
    case chunk(data: [UInt8], offset: UInt64, eof: Bool)
    case get(tenant: TenantName, path: String, chunkBytes: Int)
    case stat(tenant: TenantName, path: String)
    case list(tenant: TenantName, path: String, limit: Int)
    case remove(tenant: TenantName, path: String, recursive: Bool)
    case mkdir(tenant: TenantName, path: String, mode: UInt32, parents: Bool)

    public var typeName: String {
        switch self {
        case .put: return "file.put"
        case .chunk: return "file.chunk"
        case .get: return "file.get"
        case .stat: return "file.stat"
        case .list: return "file.list"
        case .remove: return "file.remove"
        case .mkdir: return "file.mkdir"
        }
    }

    /// The tenant the request is for (nil for a chunk: its put says).
    public var tenant: TenantName? {
        switch self {
        case .put(let p): return p.tenant
        case .chunk: return nil
        case .get(let t, _, _), .stat(let t, _), .list(let t, _, _), .remove(let t, _, _), .mkdir(let t, _, _, _): return t
        }
    }

    public static let types = ["file.put", "file.chunk", "file.get", "file.stat", "file.list", "file.remove", "file.mkdir"]

    /// Bytes per `file.data` frame of a get: the default, and the bounds a request may ask for.
    public static let defaultChunkBytes = 256 * 1024
    public static let chunkBytesRange = 4096...(4 * 1024 * 1024)
    public static let defaultListLimit = 10_000
    public static let maxListLimit = 100_000
    public static let defaultFileMode: UInt32 = 0o644
    public static let defaultDirectoryMode: UInt32 = 0o755
}

public struct FilePut: Sendable, Equatable {
    public var tenant: TenantName
    public var path: String
    public var mode: UInt32
    /// The whole size, when the client knows it (checked against file_max_bytes at once).
    public var size: UInt64?
    public var data: [UInt8]
    public var eof: Bool

    public init(tenant: TenantName, path: String, mode: UInt32 = FileCommand.defaultFileMode, size: UInt64? = nil, data: [UInt8], eof: Bool) {
        self.tenant = tenant; self.path = path; self.mode = mode; self.size = size; self.data = data; self.eof = eof
    }
}

extension RequestCodec {
    static func file(_ type: String, _ f: Fields) throws -> FileCommand {
        switch type {
        case "file.put":
            let offset = try unsigned(f, "offset") ?? 0
            guard offset == 0 else { throw ProtocolError(.invalidRequest, "file.put: the first chunk starts at offset 0, got \(offset)") }
            return .put(
                FilePut(
                    tenant: try f.tenant("tenant"), path: try f.string("path"),
                    mode: try mode(f, default: FileCommand.defaultFileMode), size: try unsigned(f, "size"),
                    data: try data(f), eof: try bool(f, "eof") ?? false))
        case "file.chunk":
            return .chunk(data: try data(f), offset: try unsigned(f, "offset") ?? 0, eof: try bool(f, "eof") ?? false)
        case "file.get":
            let chunk = try unsigned(f, "chunk_bytes").map(Int.init) ?? FileCommand.defaultChunkBytes
            guard FileCommand.chunkBytesRange.contains(chunk) else {
                throw ProtocolError(
                    .invalidRequest,
                    "file.get: \"chunk_bytes\" must be from \(FileCommand.chunkBytesRange.lowerBound) to \(FileCommand.chunkBytesRange.upperBound), got \(chunk)"
                )
            }
            return .get(tenant: try f.tenant("tenant"), path: try f.string("path"), chunkBytes: chunk)
        case "file.stat":
            return .stat(tenant: try f.tenant("tenant"), path: try f.string("path"))
        case "file.list":
            let limit = try unsigned(f, "limit").map(Int.init) ?? FileCommand.defaultListLimit
            guard (1...FileCommand.maxListLimit).contains(limit) else {
                throw ProtocolError(.invalidRequest, "file.list: \"limit\" must be from 1 to \(FileCommand.maxListLimit)")
            }
            return .list(tenant: try f.tenant("tenant"), path: try f.string("path"), limit: limit)
        case "file.remove":
            return .remove(tenant: try f.tenant("tenant"), path: try f.string("path"), recursive: try bool(f, "recursive") ?? false)
        case "file.mkdir":
            return .mkdir(
                tenant: try f.tenant("tenant"), path: try f.string("path"),
                mode: try mode(f, default: FileCommand.defaultDirectoryMode), parents: try bool(f, "parents") ?? false)
        default:
            throw ProtocolError(.invalidRequest, "unknown request type \(shown(type)) (file requests: \(FileCommand.types.joined(separator: ", ")))")
        }
    }

    private static func unsigned(_ f: Fields, _ key: String) throws -> UInt64? {
        guard let v = f.object[key], !v.isNull else { return nil }
        guard let i = v.intValue, i >= 0 else { throw ProtocolError(.invalidRequest, "\(f.type): \"\(key)\" must be a non-negative integer") }
        return UInt64(i)
    }

    private static func bool(_ f: Fields, _ key: String) throws -> Bool? {
        guard let v = f.object[key], !v.isNull else { return nil }
        guard let b = v.boolValue else { throw ProtocolError(.invalidRequest, "\(f.type): \"\(key)\" must be true or false") }
        return b
    }

    private static func mode(_ f: Fields, default d: UInt32) throws -> UInt32 {
        guard let m = try unsigned(f, "mode") else { return d }
        guard m <= 0o777 else {
            throw ProtocolError(
                .invalidRequest, "\(f.type): \"mode\" must be permission bits from 0 to 511 (0777): no setuid, setgid or sticky bit, got \(m)")
        }
        return UInt32(m)
    }

    private static func data(_ f: Fields) throws -> [UInt8] {
        guard let b64 = try f.optionalString("data_b64"), !b64.isEmpty else { return [] }
        guard let data = Base64.decode(b64) else { throw ProtocolError(.invalidRequest, "\(f.type): \"data_b64\" is not valid base64") }
        return data
    }

    static func encodeFile(_ c: FileCommand, into o: inout JSONObjectBuilder) {
        switch c {
        case .put(let p):
            o.set("tenant", .string(p.tenant.value))
            o.set("path", .string(p.path))
            o.set("mode", Int(p.mode))
            if let size = p.size { o.set("size", Int64(clamping: size)) }
            o.set("offset", 0)
            o.set("eof", p.eof)
            if !p.data.isEmpty { o.set("data_b64", .string(String(decoding: Base64.encode(p.data), as: UTF8.self))) }
        case .chunk(let data, let offset, let eof):
            o.set("offset", Int64(clamping: offset))
            o.set("eof", eof)
            if !data.isEmpty { o.set("data_b64", .string(String(decoding: Base64.encode(data), as: UTF8.self))) }
        case .get(let t, let path, let chunk):
            o.set("tenant", .string(t.value)); o.set("path", .string(path)); o.set("chunk_bytes", chunk)
        case .stat(let t, let path):
            o.set("tenant", .string(t.value)); o.set("path", .string(path))
        case .list(let t, let path, let limit):
            o.set("tenant", .string(t.value)); o.set("path", .string(path)); o.set("limit", limit)
        case .remove(let t, let path, let recursive):
            o.set("tenant", .string(t.value)); o.set("path", .string(path)); o.set("recursive", recursive)
        case .mkdir(let t, let path, let mode, let parents):
            o.set("tenant", .string(t.value)); o.set("path", .string(path)); o.set("mode", Int(mode)); o.set("parents", parents)
        }
    }
}

/// A STAT object (docs/protocol.md), from what the worker reported.
public struct FileView: Sendable, Equatable {
    public var path: String
    public var name: String
    public var type: String
    public var size: UInt64
    public var mode: UInt32
    public var uid: UInt32
    public var gid: UInt32
    public var mtime: Double
    public var target: String?

    public init(path: String, info: FileInfo) {
        self.path = path; self.name = info.name
        switch info.kind {
        case .file: type = "file"
        case .dir: type = "dir"
        case .symlink: type = "symlink"
        case .other: type = "other"
        }
        size = info.size; mode = info.mode; uid = info.uid; gid = info.gid
        mtime = Double(info.mtimeNanos) / 1e9
        target = info.kind == .symlink ? info.target : nil
    }

    public var json: JSONValue {
        var o = JSONObjectBuilder()
        o.set("path", .string(path))
        o.set("name", .string(name))
        o.set("type", .string(type))
        o.set("size", Int64(clamping: size))
        o.set("mode", Int(mode))
        o.set("uid", Int(uid))
        o.set("gid", Int(gid))
        o.set("mtime", mtime)
        o.set("target", target)
        return o.value
    }

    public init?(json v: JSONValue) {
        guard let path = v["path"]?.stringValue, let name = v["name"]?.stringValue, let type = v["type"]?.stringValue,
            let size = v["size"]?.intValue, let mode = v["mode"]?.intValue
        else { return nil }
        self.path = path; self.name = name; self.type = type; self.size = UInt64(max(0, size)); self.mode = UInt32(clamping: mode)
        uid = UInt32(clamping: v["uid"]?.intValue ?? 0); gid = UInt32(clamping: v["gid"]?.intValue ?? 0)
        mtime = v["mtime"]?.doubleValue ?? 0
        target = v["target"]?.stringValue
    }
}
