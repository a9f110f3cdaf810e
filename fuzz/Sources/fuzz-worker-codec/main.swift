import ClawpenProtocol
import ClawpenWire
import FuzzSupport
import NIOCore

// The supervisor<->worker binary codec (BinaryCodec.swift, WorkerMessages, RuntimeMessages,
// FileMessages) in both directions: the supervisor decodes what a possibly compromised worker
// sends (WorkerToSupervisor), the worker what the supervisor sends (SupervisorToWorker). The
// encoding has one form per message (fixed-width integers, exact lengths, 0 or 1 for a bool), so
// a message that decodes encodes back to the very bytes it came from. The supervisor's fast path
// for a chunk of a get (GetDataFrame, linked here from Sources/ClawpenSupervisor/FileFastPath.swift)
// must read a frame as the general decoder does.
//
// Input: byte 0 even: a frame to the worker; odd: a frame from it. The rest is the payload.

/// FileFastPath.swift extends the supervisor's namespace with its read allocator; the harness
/// links that one file, not the supervisor.
enum Supervisor {}

/// The supervisor caps each stream of a report at the job's output cap; 1 MiB is the default.
let outputCap = 1 << 20
let allocator = ByteBufferAllocator()

func decode(_ bytes: [UInt8]) -> Any? {
    guard let first = bytes.first else { return nil }
    let payload = Array(bytes.dropFirst())
    if first & 1 == 0 { return try? SupervisorToWorker.decode(payload) }
    if let fast = GetDataFrame(allocator.buffer(bytes: payload)) { return fast }
    return try? WorkerToSupervisor.decode(payload, outputCap: outputCap)
}

let harness = Harness(
    name: "worker-codec",
    seeds: {
        let run = RunRequest(
            jobID: "j-0001", argv: ["python3", "-c", "print(1)"], env: ["PATH=/usr/bin:/bin", "HOME=/home/acme", "LANG=C.UTF-8"],
            cwd: "/home/acme", stdin: Array("some input\n".utf8), timeoutMs: 30_000, outputCapBytes: 1 << 20,
            options: RunOptions(stream: true, stdinOpen: true, tty: true, rows: 40, cols: 120))
        let path = SandboxPath(components: ["home", "acme", "data.csv"])
        let toWorker: [SupervisorToWorker] = [
            .run(run), .cancel(jobID: "j-1"), .shutdown, .pause, .resume(pausedMs: 1500), .sync(token: 9),
            .runtime(.input(jobID: "j-1", data: [1, 2, 3], eof: true)), .runtime(.resize(jobID: "j-1", rows: 50, cols: 132)),
            .runtime(.signal(jobID: "j-1", signal: 15)), .runtime(.watch(jobID: "j-1", replayToken: 3)),
            .file(.stat(op: 1, path: path)), .file(.list(op: 2, path: path, limit: 100)),
            .file(.get(op: 3, path: path, maxBytes: 1 << 30, chunkBytes: 65536, window: 4)),
            .file(.put(op: 4, path: path, mode: 0o644, maxBytes: 1 << 20, data: [0, 1, 2], eof: false)),
            .file(.putChunk(op: 4, data: [3, 4], eof: true)), .file(.abort(op: 4)),
        ]
        let info = FileInfo(name: "data.csv", kind: .file, size: 3, mode: 0o644, uid: 1000, gid: 1000, mtimeNanos: 1_700_000_000_000_000_000)
        let report = JobReport(
            jobID: "j-0001", outcome: .exited(code: 0), stdout: Array("hello\n".utf8), stderr: [], stdoutTruncated: false,
            stderrTruncated: false, runMicros: 12_345, cpuMicros: 6_789, maxRSSKiB: 4096)
        let fromWorker: [WorkerToSupervisor] = [
            .ready(pid: 42), .setupFailed(step: "mount /proc", errno: 1, detail: "operation not permitted"),
            .started(jobID: "j-1", pid: 43, slot: 2), .finished(report), .synced(token: 9),
            .finished(
                JobReport(
                    jobID: "j-2", outcome: .canceled(signal: 9), stdout: [], stderr: [0xFF], stdoutTruncated: true, stderrTruncated: false,
                    runMicros: 1, cpuMicros: 2, maxRSSKiB: 3)),
            .runtime(.replayed(jobID: "j-1", replayToken: 3)), .runtime(.inputTaken(jobID: "j-1", bytes: 3)),
            .file(.info(op: 1, info)), .file(.listing(op: 2, entries: [info, info], truncated: false, itself: false)),
            .file(.data(op: 3, offset: 0, bytes: Array(0..<100), eof: false, info: nil)),
            .file(.data(op: 3, offset: 100, bytes: [1], eof: true, info: info)), .file(.removed(op: 5, count: 2)),
            .file(.putAck(op: 4, bytes: 3)),
        ]
        // The first seed is the typical frame: a job to run.
        return toWorker.map { [0] + $0.encoded() } + fromWorker.map { [1] + $0.encoded() }
    },
    decode: { bytes in blackHole(decode(bytes)) },
    check: { bytes in
        guard let first = bytes.first else { return }
        let payload = Array(bytes.dropFirst())
        if first & 1 == 0 {
            guard let m = try? SupervisorToWorker.decode(payload) else { return }
            require(m.encoded() == payload, "SupervisorToWorker: decoded and encoded again, the bytes differ: \(shown(payload))")
        } else {
            let general = try? WorkerToSupervisor.decode(payload, outputCap: outputCap)
            if let fast = GetDataFrame(allocator.buffer(bytes: payload)) {
                let data = fast.data.getBytes(at: fast.data.readerIndex, length: fast.data.readableBytes) ?? []
                require(
                    general == .file(.data(op: fast.op, offset: fast.offset, bytes: data, eof: false, info: nil)),
                    "GetDataFrame reads a frame the general decoder reads as \(String(describing: general))")
            }
            guard let m = general else { return }
            require(m.encoded() == payload, "WorkerToSupervisor: decoded and encoded again, the bytes differ: \(shown(payload))")
        }
    })

// libFuzzer's entry points (it supplies main).
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzTestOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt { harness.testOneInput(data, size) }

@_cdecl("LLVMFuzzerInitialize")
public func fuzzInitialize(_ argc: UnsafeMutableRawPointer?, _ argv: UnsafeMutableRawPointer?) -> CInt {
    harness.initialize()
    return 0
}
