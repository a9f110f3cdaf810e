import ClawpenCore
import ClawpenPolicy
import ClawpenProtocol
import ClawpenSystem
import ClawpenWire
import NIOCore

/// The `file.*` requests (docs/protocol.md, "Files"): checked here (the caller's grant, the
/// tenant's availability, the path's shape, file_max_bytes), done by the tenant's worker, and
/// relayed between the client's channel and the worker's (FileRelay.swift) with bounded
/// buffering in both directions.
extension Supervisor {
    /// Chunks of one get in flight towards the client before the worker waits for an ack.
    static let getWindow: UInt32 = 4
    /// Bytes of one put sent to the worker and not yet written by it, beyond which the client's
    /// connection is no longer read (resumed below half of it).
    static let putWindowBytes = 4 * 1024 * 1024

    func handleFile(_ c: FileCommand, _ r: Responder) throws {
        if case .chunk(let data, let offset, let eof) = c {
            putChunk(count: data.count, offset: offset, eof: eof, r) { op, allocator in
                [allocator.frame(SupervisorToWorker.file(.putChunk(op: op, data: data, eof: eof)).encoded())]
            }
            return
        }
        guard let name = c.tenant else { return }
        try authorize(r, .submit(tenant: name), request: c.typeName)
        let t = try tenant(name)
        if let refusal = core.fileRefusal(t) { throw refusal }
        let op = FileOp(id: fileRelay.newOpID(), tenant: name, responder: r, request: c.typeName)
        let limit = UInt64(max(0, t.limits.fileMaxBytes))
        switch c {
        case .chunk: return
        case .stat(_, let raw):
            op.path = try checkedPath(raw, op)
            op.kind = .simple(.stat(op: op.id, path: op.path))
        case .list(_, let raw, let limit):
            op.path = try checkedPath(raw, op)
            op.kind = .simple(.list(op: op.id, path: op.path, limit: UInt32(limit)))
        case .remove(_, let raw, let recursive):
            op.path = try checkedPath(raw, op)
            op.kind = .simple(.remove(op: op.id, path: op.path, recursive: recursive))
        case .mkdir(_, let raw, let mode, let parents):
            op.path = try checkedPath(raw, op)
            op.kind = .simple(.mkdir(op: op.id, path: op.path, mode: mode, parents: parents))
        case .get(_, let raw, let chunk):
            op.path = try checkedPath(raw, op)
            op.kind = .get(
                GetState(
                    first: .get(op: op.id, path: op.path, maxBytes: limit, chunkBytes: UInt32(chunk), window: Self.getWindow),
                    chunk: chunk, maxBytes: limit))
        case .put(let p):
            try beginPut(p, op, t, limit: limit)
            return
        }
        startOrQueue(op)
    }

    /// A put's first frame: the transfer is registered under the connection and the request id
    /// (its chunks follow with that id), checked, and its first chunk queued for the worker.
    private func beginPut(_ p: FilePut, _ op: FileOp, _ t: TenantState, limit: UInt64) throws {
        let r = op.responder
        if !p.eof && r.id.isNull {
            throw ProtocolError(.invalidRequest, "file.put: a put of several chunks needs an \"id\" (its file.chunk frames carry the same one)")
        }
        let key = PutKey(channel: ObjectIdentifier(r.channel), id: r.id.text)
        if fileRelay.puts[key] != nil {
            throw ProtocolError(.invalidRequest, "file.put: a put with id \(r.id.text) is already in progress on this connection")
        }
        // From here every refusal drops the rest of the put's chunks (docs/protocol.md).
        op.path = try refusingPut(key, eof: p.eof) { () throws(ProtocolError) in try checkedPath(p.path, op) }
        if let size = p.size, size > limit { throw refusePut(key, eof: p.eof, tooLarge(op, t, size: size, exact: true)) }
        if UInt64(p.data.count) > limit { throw refusePut(key, eof: p.eof, tooLarge(op, t, size: UInt64(p.data.count), exact: false)) }
        var state = PutState(key: key, maxBytes: limit)
        state.received = UInt64(p.data.count)
        runtimeCounters.fileIn(op.tenant, bytes: p.data.count)
        state.eofSeen = p.eof
        state.pending.append(contentsOf: [
            r.channel.allocator.frame(
                SupervisorToWorker.file(.put(op: op.id, path: op.path, mode: p.mode, maxBytes: limit, data: p.data, eof: p.eof)).encoded())
        ])
        state.pendingBytes = p.data.count
        op.kind = .put(state)
        if !p.eof { fileRelay.puts[key] = .active(op.id) }
        watchClose(r.channel)
        startOrQueue(op)
        throttle(op)
    }

    private func refusingPut<T>(_ key: PutKey, eof: Bool, _ body: () throws(ProtocolError) -> T) throws(ProtocolError) -> T {
        do { return try body() } catch { throw refusePut(key, eof: eof, error) }
    }

    /// A put refused before it reached the worker: the rest of its chunks are dropped.
    private func refusePut(_ key: PutKey, eof: Bool, _ e: ProtocolError) -> ProtocolError {
        if !eof { fileRelay.puts[key] = .discarding }
        return e
    }

    /// A `file.chunk` in the fast shape, already decoded into its worker frame (FileFastPath.swift).
    func handlePutChunk(_ chunk: PutChunkFrame, _ r: Responder) {
        putChunk(count: chunk.count, offset: chunk.offset, eof: chunk.eof, r) { op, allocator in chunk.frame(op: op, allocator: allocator) }
    }

    /// A `file.chunk` frame: the next part of the put with the same id on this connection, of
    /// `count` bytes; `frame` makes the message for the worker (in one buffer or more) once the
    /// operation is known.
    private func putChunk(count: Int, offset: UInt64, eof: Bool, _ r: Responder, frame: (UInt32, ByteBufferAllocator) -> [ByteBuffer]) {
        let key = PutKey(channel: ObjectIdentifier(r.channel), id: r.id.text)
        switch fileRelay.puts[key] {
        case nil:
            r.fail(ProtocolError(.invalidRequest, "file.chunk: no put with id \(r.id.text) is in progress on this connection (send file.put first)"))
            return
        case .discarding?:
            // The put was refused: its remaining chunks are dropped without a reply.
            if eof { fileRelay.puts[key] = nil }
            return
        case .active(let id)?:
            guard let op = fileRelay.ops[id], case .put(var state) = op.kind else {
                fileRelay.puts[key] = eof ? nil : .discarding
                return
            }
            if eof { fileRelay.puts[key] = nil }
            state.eofSeen = eof
            var refusal: ProtocolError?
            if offset != state.received {
                refusal = ProtocolError(
                    .invalidRequest, "file.chunk: offset \(offset) does not follow the \(state.received) bytes sent so far (chunks go in order)",
                    details: ["path": .string(op.path.description)])
            } else if state.received + UInt64(count) > state.maxBytes, let t = core.tenants[op.tenant] {
                refusal = tooLarge(op, t, size: state.received + UInt64(count), exact: false)
            }
            if let refusal {
                if !eof { fileRelay.puts[key] = .discarding }
                op.kind = .put(state)
                failOp(op, refusal)
                return
            }
            state.received += UInt64(count)
            runtimeCounters.fileIn(op.tenant, bytes: count)
            op.kind = .put(state)
            sendOrHold(op, frame(op.id, r.channel.allocator), bytes: count)
            throttle(op)
        }
    }

    /// The path as the sandbox sees it, checked before anything is sent to the worker.
    private func checkedPath(_ raw: String, _ op: FileOp) throws(ProtocolError) -> SandboxPath {
        switch SandboxPath.parse(raw) {
        case .success(let p):
            if p.isUnderPseudoFilesystem {
                throw fileError(FileFailure(.pseudoFilesystem, stage: "check", detail: p.description), op, shownPath: raw)
            }
            return p
        case .failure(let f): throw fileError(f, op, shownPath: raw)
        }
    }

    func tooLarge(_ op: FileOp, _ t: TenantState, size: UInt64, exact: Bool) -> ProtocolError {
        let limit = t.limits.fileMaxBytes
        return ProtocolError(
            .fileTooLarge,
            "\(op.request) \(op.path): the file is \(exact ? "" : "at least ")\(size) bytes, over the tenant's file_max_bytes of \(limit) (tier \(t.record.tier); rule file_max_bytes)",
            details: [
                "rule": .string("file_max_bytes"), "limit": .int(limit), exact ? "size" : "at_least": .int(Int64(clamping: size)),
                "path": .string(op.path.description), "stage": .string("check"), "errno": .null,
            ])
    }

    /// A worker's (or the supervisor's own) FileFailure as the client reads it: a code, the rule,
    /// and a message that names the path and the reason.
    func fileError(_ f: FileFailure, _ op: FileOp, shownPath: String? = nil) -> ProtocolError {
        let path = shownPath.map { String($0.prefix(256)) } ?? op.path.description
        let d = f.detail
        let fromCheck = f.stage == "check" && f.errno == 0
        let code: ErrorCode
        var rule: String?
        let reason: String
        switch f.kind {
        case .invalidPath: code = .invalidRequest; reason = d
        case .beneathRoot:
            code = .policyDenied; rule = "beneath_root"
            reason = fromCheck ? d : "\(d) resolves outside the tenant's root"
        case .nameMax:
            code = .policyDenied; rule = "name_max"
            reason = fromCheck ? d : "a component of \(d) is longer than NAME_MAX (255 bytes)"
        case .pathMax: code = .policyDenied; rule = "path_max"; reason = d
        case .symlink:
            code = .policyDenied; rule = "no_symlinks"
            reason = "\(d) is a symbolic link (or a /proc magic link), and no link is followed inside the tenant's files"
        case .readOnlyMount:
            code = .policyDenied; rule = "read_only_mount"
            reason = "\(d) is on a read-only mount; the tenant's writable files are under /home and /tmp"
        case .writableRoots:
            code = .policyDenied; rule = "writable_roots"
            reason = "writes go below /home and /tmp only, never to those directories themselves (\(d))"
        case .pseudoFilesystem:
            code = .policyDenied; rule = "pseudo_filesystem"
            reason = "\(d) is under /proc, /sys or /dev, which hold no files of the tenant"
        case .unixPermissions:
            code = .policyDenied; rule = "unix_permissions"
            reason = "the tenant's uid may not \(f.stage) \(d): \(errnoString(f.errno))"
        case .notFound: code = .notFound; reason = "\(d) does not exist"
        case .tooLarge:
            // The worker counted past the limit (the file grew during a get, or a put's chunks).
            if let t = core.tenants[op.tenant] {
                let size = UInt64(d.split(separator: " ").last.flatMap { UInt64($0) } ?? 0)
                return tooLarge(op, t, size: size, exact: !d.hasPrefix("at least"))
            }
            code = .fileTooLarge; rule = "file_max_bytes"; reason = "over file_max_bytes"
        case .noSpace:
            return ProtocolError(
                .quotaExceeded,
                "\(op.request) \(path): no space left writing \(d): \(errnoString(f.errno)) (the tenant's disk_max, or tmp_size for /tmp)",
                details: [
                    "quota": .string("disk_max"), "rule": .string("disk_max"), "retry_after_ms": .null, "path": .string(path),
                    "stage": .string(f.stage), "errno": .int(Int64(f.errno)),
                ])
        case .notDirectory: code = .invalidRequest; reason = "\(d) is not a directory"
        case .isDirectory: code = .invalidRequest; reason = "\(d) is a directory"
        case .notRegular: code = .invalidRequest; reason = "\(d) is not a regular file (a fifo, a socket or a device)"
        case .notEmpty:
            code = .invalidRequest
            reason = "\(d) is a directory that is not empty (remove it with \"recursive\": true, clawpen rm -r)"
        case .exists: code = .invalidRequest; reason = "\(d) already exists"
        case .invalidRequest: code = .invalidRequest; reason = d
        case .io: code = .internal; reason = "\(f.stage) of \(d) failed: \(errnoString(f.errno))"
        }
        var details: [String: JSONValue] = [
            "path": .string(path), "stage": .string(f.stage), "errno": f.errno == 0 ? .null : .int(Int64(f.errno)),
        ]
        if let rule { details["rule"] = .string(rule) }
        let refused = code == .policyDenied ? "refused: " : ""
        let named = rule.map { " (rule \($0))" } ?? ""
        return ProtocolError(code, "\(op.request) \(path): \(refused)\(reason)\(named)", details: details)
    }
}
