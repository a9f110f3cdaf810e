import ClawpenProtocol
import ClawpenWire
import FuzzSupport
import NIOCore

// A client's frame as the supervisor takes it (ClientHandler.parse): a `file.chunk` in the fast
// shape becomes its worker's frame directly (PutChunkFrame, linked here from
// Sources/ClawpenSupervisor/FileFastPath.swift); anything else goes through RequestCodec.decode,
// which covers every request type (Messages*.swift, FileRequests.swift). Checked:
// - a request that decodes, encoded by the client's encoder and decoded again, is the same
//   request with the same id;
// - the fast shapes (ChunkFrame, for `file.chunk` and the client's `file.data`) accept only
//   what the general parser reads the same way, and PutChunkFrame's worker frame is what the
//   general path would have sent the worker.

/// FileFastPath.swift extends the supervisor's namespace with its read allocator; the harness
/// links that one file, not the supervisor.
enum Supervisor {}

let allocator = ByteBufferAllocator()
let agentTenant = try! TenantName(validating: "agent-tenant")

/// ClientHandler.parse.
func supervisorParse(_ bytes: [UInt8], defaultTenant: TenantName?) -> Any {
    let payload = allocator.buffer(bytes: bytes)
    if payload.readableBytes >= PutChunkFrame.minimumBytes, let chunk = PutChunkFrame(payload, allocator: allocator) {
        return chunk
    }
    return RequestCodec.decode(bytes, defaultTenant: defaultTenant)
}

func checkRoundTrip(_ bytes: [UInt8], defaultTenant: TenantName?) {
    let (id, result) = RequestCodec.decode(bytes, defaultTenant: defaultTenant)
    switch id {
    case .string, .int, .double, .null: break
    default: require(false, "an id that is not a string, a number or null was echoed")
    }
    guard case .success(let request) = result else { return }
    let encoded = RequestCodec.encode(request, id: id)
    let (id2, again) = RequestCodec.decode(encoded)
    require(id2 == id, "the id changed on a round trip")
    require(again == .success(request), "\(request.typeName): decode(encode(request)) is not the request: \(shown(encoded))")
}

/// The fast scanner may only accept what the general parser reads the same way.
func checkChunkScan(_ bytes: [UInt8], type: StaticString) {
    let scanned = bytes.withUnsafeBytes { raw in ChunkFrame.scan(raw, type: type).map { f in (f, Array(f.data(in: raw))) } }
    // The scanner finds where data_b64 lies and leaves its checking to the base64 decoder that
    // reads it (PutChunkFrame, the client's get): text that does not decode falls back to the
    // general path, which answers it. What decodes must be what the general parser reads.
    guard let (f, data) = scanned, data.withUnsafeBytes({ Base64.decode($0) }) != nil else { return }
    guard let v = try? JSONValue.parse(bytes) else {
        require(false, "ChunkFrame accepts what the JSON parser refuses: \(shown(bytes))")
        return
    }
    require(v["type"]?.stringValue == type.description, "ChunkFrame read the type wrong")
    require(identicalID(v["id"] ?? .null, f.id), "ChunkFrame read the id wrong: \(f.id) vs \(String(describing: v["id"]))")
    require(UInt64(exactly: v["offset"]?.intValue ?? 0) == f.offset, "ChunkFrame read the offset wrong: \(f.offset)")
    require((v["eof"]?.boolValue ?? false) == f.eof, "ChunkFrame read eof wrong")
    require(Array((v["data_b64"]?.stringValue ?? "").utf8) == data, "ChunkFrame's data is not the string data_b64")
}

func identicalID(_ a: JSONValue, _ b: JSONValue) -> Bool {
    switch (a, b) {
    case (.int(let x), .int(let y)): return x == y
    case (.string(let x), .string(let y)): return x == y
    case (.null, .null): return true
    default: return false
    }
}

/// What the fast path sends the worker is what the general path would have.
func checkPutChunkFrame(_ bytes: [UInt8]) {
    guard bytes.count >= PutChunkFrame.minimumBytes, let chunk = PutChunkFrame(allocator.buffer(bytes: bytes), allocator: allocator) else { return }
    let (id, general) = RequestCodec.decode(bytes)
    guard case .success(.file(.chunk(let data, let offset, let eof))) = general else {
        require(false, "PutChunkFrame took a frame the general path answers \(general): \(shown(bytes))")
        return
    }
    require(id == chunk.id && offset == chunk.offset && eof == chunk.eof && data.count == chunk.count, "PutChunkFrame read the head wrong")
    var frame = allocator.buffer(capacity: 0)
    for var part in chunk.frame(op: 77, allocator: allocator) { frame.writeBuffer(&part) }
    let length = frame.readInteger(as: UInt32.self)
    require(length.map(Int.init) == frame.readableBytes, "PutChunkFrame's frame length is not its payload's")
    let worker = try? SupervisorToWorker.decode(frame.readBytes(length: frame.readableBytes) ?? [])
    require(worker == .file(.putChunk(op: 77, data: data, eof: eof)), "the worker would read PutChunkFrame's frame differently")
}

func chunkRequest(id: JSONValue, data: [UInt8], offset: UInt64, eof: Bool, pad: Int = 0) -> [UInt8] {
    RequestCodec.encode(.file(.chunk(data: data, offset: offset, eof: eof)), id: id) + Array(repeating: UInt8(ascii: " "), count: pad)
}

let harness = Harness(
    name: "request",
    seeds: {
        let acme = try! TenantName(validating: "acme")
        let requests: [Request] = [
            .submit(
                SubmitRequest(
                    tenant: acme, argv: ["python3", "-c", "print('hi')"], env: [.init(name: "LANG", value: "C.UTF-8")], cwd: "/work",
                    stdin: Array("input".utf8), timeoutSeconds: 30, idempotencyKey: "k-1")),
            .ping, .jobGet(jobID: "j-1"), .jobWait(jobID: "j-2"), .jobCancel(jobID: "j-3"), .jobTree(jobID: "j-4"),
            .tenantCreate(name: acme, tier: "pro"), .tenantList, .tenantShow(name: acme), .status(tenant: acme),
            .audit(tenant: nil, since: 1.5e9, limit: 10), .policyReload,
            .tenantSetQuota(name: acme, changes: [QuotaChange(key: "max_concurrent_runs", value: .int(4))]),
            .tenantSuspend(name: acme), .tenantResume(name: acme), .tenantInspect(name: acme), .metrics,
            .secretPut(tenant: acme, name: "API_KEY", value: Array("v".utf8)), .secretList(tenant: acme),
            .secretRemove(tenant: acme, name: "API_KEY"), .egressExplain(tenant: acme, url: "https://example.com/"),
            .file(.stat(tenant: acme, path: "/a")), .file(.list(tenant: acme, path: "/", limit: 10)),
            .file(.get(tenant: acme, path: "/a", chunkBytes: 65536)), .file(.remove(tenant: acme, path: "/a", recursive: true)),
            .file(.mkdir(tenant: acme, path: "/d", mode: 0o755, parents: true)),
            .file(.put(FilePut(tenant: acme, path: "/f", mode: 0o644, size: 3, data: [1, 2, 3], eof: true))),
        ]
        var seeds = requests.enumerated().map { RequestCodec.encode($1, id: .int(Int64($0 + 1))) }
        seeds.append(chunkRequest(id: .int(9), data: Array(0..<255), offset: 4096, eof: false))
        seeds.append(chunkRequest(id: .string("c"), data: Array(repeating: 7, count: 300), offset: 0, eof: true, pad: 2))
        seeds.append(Array(#"{"type":"file.data","id":3,"offset":0,"eof":false,"data_b64":"AAEC"}"#.utf8))
        return seeds
    },
    decode: { bytes in blackHole(supervisorParse(bytes, defaultTenant: nil)) },
    check: { bytes in
        checkRoundTrip(bytes, defaultTenant: nil)
        checkRoundTrip(bytes, defaultTenant: agentTenant)
        checkChunkScan(bytes, type: "file.chunk")
        checkChunkScan(bytes, type: "file.data")
        checkPutChunkFrame(bytes)
    })

// libFuzzer's entry points (it supplies main).
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzTestOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt { harness.testOneInput(data, size) }

@_cdecl("LLVMFuzzerInitialize")
public func fuzzInitialize(_ argc: UnsafeMutableRawPointer?, _ argv: UnsafeMutableRawPointer?) -> CInt {
    harness.initialize()
    return 0
}
