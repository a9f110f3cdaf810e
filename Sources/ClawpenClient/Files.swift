import ClawpenProtocol
import ClawpenWire
import FoundationEssentials

/// The `file.*` requests (docs/protocol.md, "Files") on a blocking connection: chunked puts and
/// gets that never hold more than one chunk of the file in memory.
extension ClawpenConnection {
    /// Bytes of the file in each `file.put`/`file.chunk` frame.
    public static let defaultPutChunkBytes = 256 * 1024
    private static let dataKey = Array(#","data_b64":""#.utf8)
    private static let dataEnd = Array(#""}"#.utf8)

    /// Writes a file into the tenant's sandbox. `read(n)` returns up to n bytes of the file
    /// (none at the end). The daemon applies
    /// back-pressure by not reading the socket; the reply comes after the last chunk.
    public func putFile(
        tenant: TenantName, path: String, mode: UInt32 = FileCommand.defaultFileMode, size: UInt64? = nil,
        chunkBytes: Int = defaultPutChunkBytes, read: (Int) throws -> [UInt8]
    ) throws(ClientError) -> FileView {
        let id = nextID
        nextID += 1
        let chunkSize = max(1, chunkBytes)
        var next = try fill(chunkSize, read)
        var offset: UInt64 = 0
        var first = true
        var scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: 0, alignment: 16)
        defer { scratch.deallocate() }
        // One chunk ahead, so that the frame with the last bytes says eof (no empty last frame).
        while true {
            let chunk = next
            var eof = chunk.count < chunkSize
            if !eof {
                next = try fill(chunkSize, read)
                eof = next.isEmpty
            } else {
                next = []
            }
            // The request without its data, then `data_b64` written straight into the frame: a
            // chunk is encoded once, never escaped byte by byte as a JSON string.
            let command: FileCommand =
                first
                ? .put(FilePut(tenant: tenant, path: path, mode: mode, size: size, data: [], eof: eof))
                : .chunk(data: [], offset: offset, eof: eof)
            // The frame is built whole in one buffer kept for the whole put: its header, the
            // head, the chunk encoded into place. A new array per chunk cost a fresh mapping of
            // a third of a megabyte each time (page faults and zeroing were a tenth of the
            // client's time in a 64 MiB put, profiled).
            let head = RequestCodec.encode(.file(command), id: .int(id))
            let inline = !chunk.isEmpty && head.last == UInt8(ascii: "}")
            let needed = Framing.headerSize + head.count + (inline ? Self.dataKey.count + Base64.encodedCount(chunk.count) + 2 : 0)
            if needed > scratch.count {
                scratch.deallocate()
                scratch = .allocate(byteCount: needed, alignment: 16)
            }
            var at = Framing.headerSize
            func put(_ bytes: some Collection<UInt8>) {
                let n = UnsafeMutableRawBufferPointer(rebasing: scratch[at...]).initializeMemory(as: UInt8.self, from: bytes).initialized.count
                at += n
            }
            if inline {
                put(head.dropLast())
                put(Self.dataKey)
                chunk.withUnsafeBytes { raw in
                    if let base = scratch.baseAddress { Base64.encode(raw, to: (base + at).assumingMemoryBound(to: UInt8.self)) }
                }
                at += Base64.encodedCount(chunk.count)
                put(Self.dataEnd)
            } else {
                put(head)
            }
            let length = UInt32(at - Framing.headerSize)
            for i in 0..<4 { scratch[i] = UInt8(truncatingIfNeeded: length >> (24 - 8 * i)) }
            do { try writeAll(UnsafeRawBufferPointer(rebasing: scratch[..<at])) } catch {
                // The daemon may have refused and closed: its answer says why.
                if let reply = try? awaitReply(id) { return try fileView(reply) }
                throw error
            }
            first = false
            offset += UInt64(chunk.count)
            if eof { break }
        }
        return try fileView(try awaitReply(id))
    }

    /// Up to `size` bytes from `read` (fewer only at the end of the file).
    private func fill(_ size: Int, _ read: (Int) throws -> [UInt8]) throws(ClientError) -> [UInt8] {
        var filled: [UInt8] = []
        while filled.count < size {
            let part: [UInt8]
            do { part = try read(size - filled.count) } catch { throw .unavailable("reading the local file failed: \(error)") }
            if part.isEmpty { break }
            if filled.isEmpty && part.count == size { return part }
            filled.append(contentsOf: part.prefix(size - filled.count))
        }
        return filled
    }

    /// Reads a file out of the tenant's sandbox, handing each chunk to `write` as it arrives.
    public func getFile(
        tenant: TenantName, path: String, chunkBytes: Int = FileCommand.defaultChunkBytes, write: ([UInt8]) throws -> Void
    ) throws(ClientError) -> FileView {
        let id = nextID
        nextID += 1
        try send(RequestCodec.encode(.file(.get(tenant: tenant, path: path, chunkBytes: chunkBytes)), id: .int(id)))
        var expected: Int64 = 0
        while true {
            // Every chunk but the last comes in the fast shape (ChunkFrame): decoded in place.
            let payload = try receivePayload()
            let fast: [UInt8]?? = payload.withUnsafeBytes { raw -> [UInt8]?? in
                guard let f = ChunkFrame.scan(raw, type: "file.data"), f.id == .int(id), !f.eof, f.offset == UInt64(max(0, expected)) else {
                    return nil
                }
                return .some(Base64.decode(f.data(in: raw)))
            }
            if let fast {
                guard let bytes = fast else { throw .badReply("file.data with invalid base64") }
                expected += Int64(bytes.count)
                do { try write(bytes) } catch { throw .unavailable("writing the local file failed: \(error)") }
                continue
            }
            let reply: JSONValue
            do { reply = try JSONValue.parse(payload) } catch { throw .badReply("the daemon sent a frame that is not JSON (\(error))") }
            if let rid = reply["id"], rid != .int(id), !rid.isNull { continue }
            if reply["type"]?.stringValue == "error" {
                throw .server(reply["error"].flatMap(ProtocolError.init(json:)) ?? ProtocolError(.internal, "error reply without details"))
            }
            guard reply["type"]?.stringValue == "file.data", let offset = reply["offset"]?.intValue, offset == expected else {
                throw .badReply("expected file.data at offset \(expected), got \(reply.text.prefix(120))")
            }
            var bytes: [UInt8] = []
            if let b64 = reply["data_b64"]?.stringValue, !b64.isEmpty {
                guard let data = Base64.decode(b64) else { throw .badReply("file.data with invalid base64") }
                bytes = data
            }
            expected += Int64(bytes.count)
            do { try write(bytes) } catch { throw .unavailable("writing the local file failed: \(error)") }
            if reply["eof"]?.boolValue == true { return try fileView(reply) }
        }
    }

    public func statFile(tenant: TenantName, path: String) throws(ClientError) -> FileView {
        try fileView(try call(.file(.stat(tenant: tenant, path: path))))
    }

    /// A directory's entries (or the file itself), and whether the listing was cut at `limit`.
    public func listFiles(tenant: TenantName, path: String, limit: Int = FileCommand.defaultListLimit) throws(ClientError) -> (
        entries: [FileView], truncated: Bool
    ) {
        let reply = try call(.file(.list(tenant: tenant, path: path, limit: limit)))
        return ((reply["entries"]?.arrayValue ?? []).compactMap(FileView.init(json:)), reply["truncated"]?.boolValue ?? false)
    }

    /// Removes a file, a link or an empty directory (everything below it with `recursive`);
    /// returns how many entries went.
    public func removeFile(tenant: TenantName, path: String, recursive: Bool = false) throws(ClientError) -> Int {
        Int(try call(.file(.remove(tenant: tenant, path: path, recursive: recursive)))["removed"]?.intValue ?? 0)
    }

    public func makeDirectory(tenant: TenantName, path: String, mode: UInt32 = FileCommand.defaultDirectoryMode, parents: Bool = false)
        throws(ClientError) -> FileView
    {
        try fileView(try call(.file(.mkdir(tenant: tenant, path: path, mode: mode, parents: parents))))
    }

    /// The next frame answering `id`; an error frame throws.
    private func awaitReply(_ id: Int64) throws(ClientError) -> JSONValue {
        while true {
            let reply = try receive()
            if let rid = reply["id"], rid != .int(id), !rid.isNull { continue }
            if reply["type"]?.stringValue == "error" {
                throw .server(reply["error"].flatMap(ProtocolError.init(json:)) ?? ProtocolError(.internal, "error reply without details"))
            }
            return reply
        }
    }

    private func fileView(_ reply: JSONValue) throws(ClientError) -> FileView {
        guard let v = reply["file"], let view = FileView(json: v) else { throw .badReply("reply without a file: \(reply.text.prefix(120))") }
        return view
    }
}
