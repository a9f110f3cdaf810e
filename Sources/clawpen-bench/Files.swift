import ClawpenClient
import ClawpenProtocol
import ClawpenWire
import Foundation
import Glibc

/// The `files` scenario: file.put and file.get of a small file (p50 latency) and of a large one
/// (MB/s) through the daemon, against the same done by running `cat` in the sandbox through
/// `submit`, and against `bwrap ... cat` on the tenant's home directory.
struct FileFigures {
    var smallBytes = 4096
    var largeBytes = 0
    var chunkBytes = 0
    var put4k: Summary?
    var get4k: Summary?
    var putMBs: [Double] = []
    var getMBs: [Double] = []
    /// The same to /tmp (tmpfs: the put's fsync costs nothing), to see the transfer without the disk.
    var tmpPutMBs: [Double] = []
    var tmpGetMBs: [Double] = []
    /// This process writing the large file and fsyncing it on the disk /home is on: what a put's
    /// durability costs here at least.
    var diskFsyncMBs: [Double] = []
    var submitPut4k: Summary?
    var submitGet4k: Summary?
    let submitLargeNote =
        "not measured: a job's stdout is capped at output_max_bytes (1 MiB) and is text (bytes that are not UTF-8 become U+FFFD), and its stdin travels in one frame (16 MiB)"
    var bwrapPut4k: Summary?
    var bwrapGet4k: Summary?
    var bwrapPutMBs: [Double] = []
    var bwrapGetMBs: [Double] = []
    var bwrapNote: String?

    static let get4kTargetMs = 0.5
    static let largeTargetMBs = 300.0

    func table() -> String {
        var rows: [[String]] = [["files", "value", "target", "met"]]
        func ms(_ s: Summary?) -> String { s.map { "p50 \(fmt($0.p50, 3)) ms, p99 \(fmt($0.p99, 3)) ms (n=\($0.count))" } ?? "-" }
        func mbs(_ v: [Double]) -> String { v.isEmpty ? "-" : "median \(fmt(Summary.median(v), 1)) MB/s (n=\(v.count), min \(fmt(v.min() ?? 0, 1)))" }
        func met(_ ok: Bool?) -> String { ok.map { $0 ? "yes" : "NO" } ?? "" }
        let large = "\(largeBytes / (1 << 20)) MiB"
        rows.append(["file.put 4 KiB", ms(put4k), "", ""])
        rows.append(["file.get 4 KiB", ms(get4k), "p50 <= \(fmt(Self.get4kTargetMs, 1)) ms", met(get4k.map { $0.p50 <= Self.get4kTargetMs })])
        rows.append([
            "file.put \(large)", mbs(putMBs), ">= \(Int(Self.largeTargetMBs)) MB/s", met(putMBs.isEmpty ? nil : Summary.median(putMBs) >= Self.largeTargetMBs),
        ])
        rows.append([
            "file.get \(large)", mbs(getMBs), ">= \(Int(Self.largeTargetMBs)) MB/s", met(getMBs.isEmpty ? nil : Summary.median(getMBs) >= Self.largeTargetMBs),
        ])
        rows.append([
            "file.put \(large) to /tmp (tmpfs)", mbs(tmpPutMBs), ">= \(Int(Self.largeTargetMBs)) MB/s",
            met(tmpPutMBs.isEmpty ? nil : Summary.median(tmpPutMBs) >= Self.largeTargetMBs),
        ])
        rows.append([
            "file.get \(large) from /tmp (tmpfs)", mbs(tmpGetMBs), ">= \(Int(Self.largeTargetMBs)) MB/s",
            met(tmpGetMBs.isEmpty ? nil : Summary.median(tmpGetMBs) >= Self.largeTargetMBs),
        ])
        rows.append(["disk floor: write + fsync \(large) (this process)", mbs(diskFsyncMBs), "", ""])
        rows.append(["submit dd of= 4 KiB (put)", ms(submitPut4k), "peer", ""])
        rows.append(["submit cat 4 KiB (get)", ms(submitGet4k), "peer", ""])
        rows.append(["submit \(large)", submitLargeNote, "peer", ""])
        if let note = bwrapNote {
            rows.append(["bwrap cat", note, "peer", ""])
        } else {
            rows.append(["bwrap sh -c 'cat >' 4 KiB (put)", ms(bwrapPut4k), "peer", ""])
            rows.append(["bwrap cat 4 KiB (get)", ms(bwrapGet4k), "peer", ""])
            rows.append(["bwrap sh -c 'cat >' \(large) (put)", mbs(bwrapPutMBs), "peer", ""])
            rows.append(["bwrap cat \(large) (get)", mbs(bwrapGetMBs), "peer", ""])
        }
        if let g = get4k, let s = submitGet4k { rows.append(["4 KiB get: submit cat / file.get", fmt(s.p50 / g.p50, 1) + "x", "", ""]) }
        if let g = get4k, let b = bwrapGet4k { rows.append(["4 KiB get: bwrap cat / file.get", fmt(b.p50 / g.p50, 1) + "x", "", ""]) }
        rows.append(["chunk", "\(chunkBytes / 1024) KiB per frame (large files)", "", ""])
        var widths = [Int](repeating: 0, count: 4)
        for r in rows { for (i, c) in r.enumerated() { widths[i] = max(widths[i], c.count) } }
        return rows.map { r in
            r.enumerated().map { i, c in i == 3 ? c : c + String(repeating: " ", count: widths[i] - c.count) }.joined(separator: "  ")
                .trimmingCharacters(in: .whitespaces)
        }.joined(separator: "\n") + "\n"
    }

    func json() -> JSONValue {
        func s(_ v: Summary?) -> JSONValue {
            v.map { .object([("p50_ms", .double($0.p50)), ("p99_ms", .double($0.p99)), ("n", .int(Int64($0.count)))]) } ?? .null
        }
        func m(_ v: [Double]) -> JSONValue { v.isEmpty ? .null : .double(Summary.median(v)) }
        return .object([
            (
                "files",
                .object([
                    ("large_bytes", .int(Int64(largeBytes))), ("chunk_bytes", .int(Int64(chunkBytes))),
                    ("put_4k", s(put4k)), ("get_4k", s(get4k)), ("put_large_mb_s", m(putMBs)), ("get_large_mb_s", m(getMBs)),
                    ("put_large_tmp_mb_s", m(tmpPutMBs)), ("get_large_tmp_mb_s", m(tmpGetMBs)), ("disk_fsync_mb_s", m(diskFsyncMBs)),
                    ("submit_put_4k", s(submitPut4k)), ("submit_get_4k", s(submitGet4k)),
                    ("bwrap_put_4k", s(bwrapPut4k)), ("bwrap_get_4k", s(bwrapGet4k)),
                    ("bwrap_put_large_mb_s", m(bwrapPutMBs)), ("bwrap_get_large_mb_s", m(bwrapGetMBs)),
                    ("bwrap_note", bwrapNote.map(JSONValue.string) ?? .null),
                ])
            )
        ])
    }
}

extension Scenarios {
    func files() throws -> FileFigures {
        var f = FileFigures()
        f.largeBytes = options.fileLargeMiB << 20
        f.chunkBytes = options.fileChunkKiB * 1024
        let smallRuns = options.fileSmallRuns, largeRuns = options.fileLargeRuns
        // The bench tenant's /tmp must hold the large file: a copy of the policies with a
        // tenant override (tmp_size), removed afterwards.
        var template = Array("/tmp/clawpen-bench-policies-XXXXXX".utf8CString)
        guard mkdtemp(&template) != nil else { throw BenchFailure("mkdtemp: \(String(cString: strerror(errno)))") }
        let polRoot = String(decoding: template.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        defer { try? FileManager.default.removeItem(atPath: polRoot) }
        try FileManager.default.copyItem(atPath: setup.policies, toPath: polRoot + "/policies")
        try "tmp_size = \"\(2 * options.fileLargeMiB + 16)M\"\n".write(toFile: polRoot + "/policies/tenants/files.toml", atomically: true, encoding: .utf8)
        let setup = Setup(clawpen: setup.clawpen, policies: polRoot + "/policies", keepTemp: setup.keepTemp, serveArgs: setup.serveArgs)
        try Daemon.with(setup, label: "files") { d in
            let conn = try d.connect()
            let name = try benchTenant("files")
            _ = try call("create tenant files") { () throws(ClientError) in try conn.tenant(.tenantCreate(name: name, tier: Scenarios.tier)) }
            // Text, so that the submit peer (whose output is text) moves the same bytes.
            let small = (0..<f.smallBytes).map { UInt8(ascii: "a") &+ UInt8($0 % 26) }
            var g = SystemRandomNumberGenerator()
            var large = [UInt8](repeating: 0, count: f.largeBytes)
            for i in stride(from: 0, to: large.count, by: 8) {
                var r = g.next()
                withUnsafeBytes(of: &r) { raw in for j in 0..<min(8, large.count - i) { large[i + j] = raw[j] } }
            }
            func reader(_ bytes: [UInt8]) -> (Int) -> [UInt8] {
                var offset = 0
                return { max in
                    let n = min(max, bytes.count - offset)
                    defer { offset += n }
                    return n == bytes.count ? bytes : Array(bytes[offset..<(offset + n)])
                }
            }
            Progress.say("[files] \(smallRuns) puts and gets of 4 KiB, alternating with submit's cat; \(largeRuns) of \(options.fileLargeMiB) MiB")
            // Warm-up: the worker starts, the page cache fills.
            for _ in 0..<20 {
                _ = try call("warm-up put") { () throws(ClientError) in
                    try conn.putFile(tenant: name, path: "/home/small.txt", size: UInt64(small.count), read: reader(small))
                }
            }
            var put: [Double] = [], get: [Double] = [], sput: [Double] = [], sget: [Double] = []
            let block = 50
            while put.count < smallRuns {
                let k = min(block, smallRuns - put.count)
                for _ in 0..<k {
                    let t0 = Clock.nanoseconds()
                    _ = try call("put 4 KiB") { () throws(ClientError) in
                        try conn.putFile(tenant: name, path: "/home/small.txt", size: UInt64(small.count), read: reader(small))
                    }
                    put.append(Clock.milliseconds(since: t0))
                }
                for _ in 0..<k {
                    var got = 0
                    let t0 = Clock.nanoseconds()
                    _ = try call("get 4 KiB") { () throws(ClientError) in try conn.getFile(tenant: name, path: "/home/small.txt") { got += $0.count } }
                    get.append(Clock.milliseconds(since: t0))
                    guard got == small.count else { throw BenchFailure("get 4 KiB returned \(got) bytes") }
                }
                for _ in 0..<k {
                    let t0 = Clock.nanoseconds()
                    let reply = try call("submit dd 4 KiB") { () throws(ClientError) in
                        try conn.submit(SubmitRequest(tenant: name, argv: ["/usr/bin/dd", "of=/home/peer.txt", "status=none"], stdin: small, wait: true))
                    }
                    sput.append(Clock.milliseconds(since: t0))
                    try Self.check(reply.job, "submit dd of=/home/peer.txt")
                }
                for _ in 0..<k {
                    let t0 = Clock.nanoseconds()
                    let reply = try call("submit cat 4 KiB") { () throws(ClientError) in
                        try conn.submit(SubmitRequest(tenant: name, argv: ["/bin/cat", "/home/small.txt"], wait: true))
                    }
                    sget.append(Clock.milliseconds(since: t0))
                    try Self.check(reply.job, "submit cat /home/small.txt")
                    guard reply.job.stdout.utf8.count == small.count else { throw BenchFailure("submit cat returned \(reply.job.stdout.utf8.count) bytes") }
                }
            }
            f.put4k = Summary(put); f.get4k = Summary(get); f.submitPut4k = Summary(sput); f.submitGet4k = Summary(sget)

            let mb = Double(f.largeBytes) / 1e6
            for i in 0..<largeRuns {
                let t0 = Clock.nanoseconds()
                _ = try call("put large") { () throws(ClientError) in
                    try conn.putFile(tenant: name, path: "/home/large.bin", size: UInt64(large.count), chunkBytes: f.chunkBytes, read: reader(large))
                }
                f.putMBs.append(mb / (Clock.milliseconds(since: t0) / 1000))
                var got = [UInt8]()
                if i == 0 { got.reserveCapacity(large.count) }
                var count = 0
                let t1 = Clock.nanoseconds()
                _ = try call("get large") { () throws(ClientError) in
                    try conn.getFile(tenant: name, path: "/home/large.bin", chunkBytes: f.chunkBytes) { chunk in
                        count += chunk.count
                        if i == 0 { got += chunk }
                    }
                }
                f.getMBs.append(mb / (Clock.milliseconds(since: t1) / 1000))
                guard count == large.count, i > 0 || got == large else { throw BenchFailure("get large returned other bytes (\(count))") }
                let t2 = Clock.nanoseconds()
                _ = try call("put large to /tmp") { () throws(ClientError) in
                    try conn.putFile(tenant: name, path: "/tmp/large.bin", size: UInt64(large.count), chunkBytes: f.chunkBytes, read: reader(large))
                }
                f.tmpPutMBs.append(mb / (Clock.milliseconds(since: t2) / 1000))
                var tmpCount = 0
                let t3 = Clock.nanoseconds()
                _ = try call("get large from /tmp") { () throws(ClientError) in
                    try conn.getFile(tenant: name, path: "/tmp/large.bin", chunkBytes: f.chunkBytes) { tmpCount += $0.count }
                }
                f.tmpGetMBs.append(mb / (Clock.milliseconds(since: t3) / 1000))
                guard tmpCount == large.count else { throw BenchFailure("get large from /tmp returned \(tmpCount) bytes") }
                // The disk's own price of durability, on the same file system as /home.
                let path = d.root + "/fsync-floor.bin"
                let t4 = Clock.nanoseconds()
                let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
                guard fd >= 0 else { throw BenchFailure("open \(path): \(String(cString: strerror(errno)))") }
                var off = 0
                while off < large.count {
                    let n = large[off...].withUnsafeBytes { write(fd, $0.baseAddress, min($0.count, f.chunkBytes)) }
                    guard n > 0 else { break }
                    off += n
                }
                fsync(fd)
                close(fd)
                f.diskFsyncMBs.append(mb / (Clock.milliseconds(since: t4) / 1000))
                unlink(path)
            }

            // bwrap on a home directory of its own on the same disk, holding the same files (as root:
            // no uid change, no seccomp; bwrap's user namespace could not write the tenant's 0700 home).
            guard let bwrap = findInPath("bwrap") else {
                f.bwrapNote = "bwrap not on PATH (Debian package bubblewrap, scripts/install-deps installs it): not measured"
                return
            }
            let home = d.root + "/bwrap-home"
            mkdir(home, 0o755)
            guard (try? Data(small).write(to: URL(fileURLWithPath: home + "/small.txt"))) != nil,
                (try? Data(large).write(to: URL(fileURLWithPath: home + "/large.bin"))) != nil
            else {
                f.bwrapNote = "could not write the peer's files under \(home): not measured"
                return
            }
            let base = [
                bwrap, "--ro-bind", "/usr", "/usr", "--ro-bind", "/lib", "/lib", "--ro-bind", "/lib64", "/lib64", "--ro-bind", "/bin", "/bin",
                "--bind", home, "/home", "--proc", "/proc", "--dev", "/dev", "--unshare-all",
            ]
            let env = ["PATH=/usr/bin:/bin"]
            let catGet = PreparedCommand(path: bwrap, arguments: base + ["/bin/cat", "/home/small.txt"], environment: env)
            let catPut = PreparedCommand(path: bwrap, arguments: base + ["/bin/sh", "-c", "exec cat > /home/bwrap.txt"], environment: env)
            let largeGet = PreparedCommand(path: bwrap, arguments: base + ["/bin/cat", "/home/large.bin"], environment: env)
            let largePut = PreparedCommand(path: bwrap, arguments: base + ["/bin/sh", "-c", "exec cat > /home/bwrap.bin"], environment: env)
            do {
                var bput: [Double] = [], bget: [Double] = []
                for i in 0..<min(smallRuns, 200) + 10 {
                    let t0 = Clock.nanoseconds()
                    try Self.pipeInto(catPut, small)
                    let a = Clock.milliseconds(since: t0)
                    let t1 = Clock.nanoseconds()
                    let n = try Self.pipeOut(catGet)
                    let b = Clock.milliseconds(since: t1)
                    guard n == small.count else { throw BenchFailure("bwrap cat returned \(n) bytes") }
                    if i >= 10 { bput.append(a); bget.append(b) }
                }
                f.bwrapPut4k = Summary(bput); f.bwrapGet4k = Summary(bget)
                for _ in 0..<largeRuns {
                    let t0 = Clock.nanoseconds()
                    try Self.pipeInto(largePut, large)
                    f.bwrapPutMBs.append(mb / (Clock.milliseconds(since: t0) / 1000))
                    let t1 = Clock.nanoseconds()
                    let n = try Self.pipeOut(largeGet)
                    f.bwrapGetMBs.append(mb / (Clock.milliseconds(since: t1) / 1000))
                    guard n == large.count else { throw BenchFailure("bwrap cat returned \(n) bytes") }
                }
            } catch {
                f.bwrapNote = "bwrap failed here: \(error)"
                Progress.say("[files] warning: \(f.bwrapNote ?? "")")
            }
        }
        return f
    }

    /// Where a peer's stderr goes, for the note when it fails.
    static let errorLog = "/tmp/clawpen-bench-files-peer.stderr"

    /// Runs `cmd` with `bytes` on its stdin (stdout and stderr to /dev/null) to its end.
    static func pipeInto(_ cmd: PreparedCommand, _ bytes: [UInt8]) throws {
        var fds: [Int32] = [0, 0]
        guard pipe(&fds) == 0 else { throw BenchFailure("pipe: \(String(cString: strerror(errno)))") }
        let devNull = open("/dev/null", O_RDWR | O_CLOEXEC)
        let errFD = open(errorLog, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        defer { close(devNull); if errFD >= 0 { close(errFD) } }
        let pid = try cmd.spawn(stdin: fds[0], stdout: devNull, stderr: errFD >= 0 ? errFD : devNull)
        close(fds[0])
        var off = 0
        while off < bytes.count {
            let n = bytes[off...].withUnsafeBytes { write(fds[1], $0.baseAddress, min($0.count, 1 << 20)) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { break }
            off += n
        }
        close(fds[1])
        if let bad = try PreparedCommand.wait(pid) { throw BenchFailure("\(cmd.path) \(bad): \(readTextFile(errorLog)?.prefix(300) ?? "")") }
        guard off == bytes.count else { throw BenchFailure("\(cmd.path) took \(off) of \(bytes.count) bytes") }
    }

    /// Runs `cmd`, reads its stdout to the end; returns the byte count.
    static func pipeOut(_ cmd: PreparedCommand) throws -> Int {
        var fds: [Int32] = [0, 0]
        guard pipe(&fds) == 0 else { throw BenchFailure("pipe: \(String(cString: strerror(errno)))") }
        let devNull = open("/dev/null", O_RDWR | O_CLOEXEC)
        let errFD = open(errorLog, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        defer { close(devNull); if errFD >= 0 { close(errFD) } }
        let pid = try cmd.spawn(stdin: devNull, stdout: fds[1], stderr: errFD >= 0 ? errFD : devNull)
        close(fds[1])
        var total = 0
        var buf = [UInt8](repeating: 0, count: 1 << 20)
        while true {
            let n = buf.withUnsafeMutableBytes { read(fds[0], $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            total += n
        }
        close(fds[0])
        if let bad = try PreparedCommand.wait(pid) { throw BenchFailure("\(cmd.path) \(bad): \(readTextFile(errorLog)?.prefix(300) ?? "")") }
        return total
    }
}
