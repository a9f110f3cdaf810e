import ClawpenClient
import ClawpenProtocol
import ClawpenWire
import ClawpenTestSupport
import Foundation
import XCTest

/// The file.* requests against the real daemon: cp in both directions with a binary file larger
/// than the daemon's frame limit (set small here, so that only chunking can move it), ls
/// --json, stat, rm, mkdir, the atomic put, a file operation starting the tenant's worker.
final class FileTests: XCTestCase {
    var daemon: Daemon!
    /// 1 MiB frames: a 5 MiB file cannot travel in one.
    static let frameLimit = 1024 * 1024

    override func setUpWithError() throws {
        let dir = try Daemon.tempDir()
        let pol = try Daemon.policiesWithOverrides(in: dir, ["small": "file_max_bytes = \"1M\"\n"])
        daemon = try Daemon(extraArgs: ["--max-frame-bytes", "\(Self.frameLimit)"], dir: dir, policies: pol).start()
        try daemon.createTenant("acme")
        try daemon.createTenant("small")
    }

    override func tearDown() { daemon?.cleanup() }

    func t(_ name: String) -> TenantName { TenantName.t(name) }

    /// From /dev/urandom: a byte at a time through the generator takes seconds per MiB in a debug build.
    static func randomBytes(_ n: Int) -> [UInt8] {
        guard let h = FileHandle(forReadingAtPath: "/dev/urandom") else { return [UInt8](repeating: 0x5A, count: n) }
        defer { try? h.close() }
        var out: [UInt8] = []
        while out.count < n { out += h.readData(ofLength: n - out.count) }
        return out
    }

    /// A reader for putFile that yields `bytes` once, then the end.
    static func once(_ bytes: [UInt8]) -> (Int) -> [UInt8] {
        var rest = bytes[...]
        return { max in
            let part = rest.prefix(max)
            rest = rest.dropFirst(part.count)
            return Array(part)
        }
    }

    static func sha256(file: String) throws -> String {
        let r = try runProcess(["/usr/bin/sha256sum", file])
        return String(r.split(separator: " ").first ?? "")
    }

    static func runProcess(_ argv: [String], stdin: Data? = nil) throws -> String {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: argv[0])
        p.arguments = Array(argv.dropFirst())
        let out = Pipe()
        p.standardOutput = out
        let inp = Pipe()
        if stdin != nil { p.standardInput = inp }
        try p.run()
        if let stdin {
            inp.fileHandleForWriting.write(stdin)
            try inp.fileHandleForWriting.close()
        }
        let data = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return String(decoding: data, as: UTF8.self)
    }

    func testCopyInAndOutABinaryFileLargerThanTheFrameLimitKeepsItsHash() throws {
        let size = 5 * 1024 * 1024 + 12345
        let local = daemon.dir + "/blob.bin"
        try Data(Self.randomBytes(size)).write(to: URL(fileURLWithPath: local))
        chmod(local, 0o640)
        let hash = try Self.sha256(file: local)

        let put = try runCLI(["cp", local, "acme:/home/blob.bin"], socket: daemon.socket)
        XCTAssertEqual(put.status, 0, put.stderr)
        // The tenant sees exactly those bytes, owned by its uid, with the local file's mode.
        let inside = try daemon.run("acme", ["sh", "-c", "sha256sum /home/blob.bin; stat -c '%u %a %s' /home/blob.bin; id -u"])
        let lines = inside.stdout.split(separator: "\n").map(String.init)
        XCTAssertEqual(lines.first?.split(separator: " ").first.map(String.init), hash, inside.stdout + inside.stderr)
        XCTAssertEqual(lines.count, 3, inside.stdout)
        if lines.count == 3 { XCTAssertEqual(lines[1], "\(lines[2]) 640 \(size)") }

        let back = daemon.dir + "/back.bin"
        let get = try runCLI(["cp", "acme:/home/blob.bin", back], socket: daemon.socket)
        XCTAssertEqual(get.status, 0, get.stderr)
        XCTAssertEqual(try Self.sha256(file: back), hash)

        // Into a directory: the file keeps its name; - is stdout.
        let dirCopy = try runCLI(["cp", "acme:/home/blob.bin", daemon.dir + "/"], socket: daemon.socket)
        XCTAssertEqual(dirCopy.status, 0, dirCopy.stderr)
        XCTAssertEqual(try Self.sha256(file: daemon.dir + "/blob.bin"), hash)
    }

    func testACopyOutThatFailsLeavesTheLocalFileAsItWas() throws {
        let local = daemon.dir + "/report.txt"
        try Data("precious\n".utf8).write(to: URL(fileURLWithPath: local))
        let missing = try runCLI(["cp", "acme:/home/typo.txt", local], socket: daemon.socket)
        XCTAssertEqual(missing.status, 66, missing.stderr)
        XCTAssertEqual(try String(contentsOfFile: local, encoding: .utf8), "precious\n", "the existing file is untouched")
        let left = try FileManager.default.contentsOfDirectory(atPath: daemon.dir).filter { $0.contains(".clawpen-") }
        XCTAssertEqual(left, [], "no temporary file left behind")
        // A device is written as it is (no temporary file beside /dev/null).
        _ = try daemon.run("acme", ["sh", "-c", "echo hi > /home/hi.txt"])
        let toNull = try runCLI(["cp", "acme:/home/hi.txt", "/dev/null"], socket: daemon.socket)
        XCTAssertEqual(toNull.status, 0, toNull.stderr)
        var st = stat()
        XCTAssertEqual(stat("/dev/null", &st), 0)
        XCTAssertEqual(st.st_mode & S_IFMT, S_IFCHR, "/dev/null is still the device")
    }

    func testCopyFromStdinAndToStdoutThroughTheClient() throws {
        let bytes = Self.randomBytes(3 * 1024 * 1024 + 7)
        let c = try daemon.connect()
        var offset = 0
        // Chunks of 100 KiB: 31 frames for one file.
        let view = try c.putFile(tenant: t("acme"), path: "/tmp/in.bin", mode: 0o600, chunkBytes: 100 * 1024) { max in
            let n = min(max, bytes.count - offset)
            defer { offset += n }
            return Array(bytes[offset..<(offset + n)])
        }
        XCTAssertEqual(view.size, UInt64(bytes.count))
        XCTAssertEqual(view.mode, 0o600)
        XCTAssertEqual(view.path, "/tmp/in.bin")
        var got: [UInt8] = []
        var chunks = 0
        let info = try c.getFile(tenant: t("acme"), path: "/tmp/in.bin", chunkBytes: 64 * 1024) {
            got += $0; chunks += 1
        }
        XCTAssertEqual(got, bytes)
        XCTAssertEqual(info.size, UInt64(bytes.count))
        XCTAssertEqual(chunks, bytes.count / (64 * 1024) + 1)

        // The CLI's - on both sides.
        let text = "line one\nline two\n"
        let p = Process()
        p.executableURL = URL(fileURLWithPath: Daemon.clawpen)
        p.arguments = ["cp", "-", "acme:/home/from-stdin.txt"]
        p.environment = ["CLAWPEN_SOCKET": daemon.socket]
        let inp = Pipe()
        p.standardInput = inp
        try p.run()
        inp.fileHandleForWriting.write(Data(text.utf8))
        try inp.fileHandleForWriting.close()
        p.waitUntilExit()
        XCTAssertEqual(p.terminationStatus, 0)
        let out = try runCLI(["cp", "acme:/home/from-stdin.txt", "-"], socket: daemon.socket)
        XCTAssertEqual(out.status, 0, out.stderr)
        XCTAssertEqual(out.stdout, text)
    }

    func testLsJsonStatMkdirAndRm() throws {
        let mk = try runCLI(["mkdir", "-p", "acme:/home/out/2026/12"], socket: daemon.socket)
        XCTAssertEqual(mk.status, 0, mk.stderr)
        let again = try runCLI(["mkdir", "-p", "acme:/home/out/2026"], socket: daemon.socket)
        XCTAssertEqual(again.status, 0, "mkdir -p of an existing directory is fine: \(again.stderr)")
        let exists = try runCLI(["mkdir", "acme:/home/out"], socket: daemon.socket)
        XCTAssertEqual(exists.status, 64, exists.stderr)
        XCTAssertTrue(exists.stderr.contains("already exists"), exists.stderr)
        let missingParent = try runCLI(["mkdir", "acme:/home/nope/x"], socket: daemon.socket)
        XCTAssertEqual(missingParent.status, 66, missingParent.stderr)
        XCTAssertTrue(missingParent.stderr.contains("not_found") && missingParent.stderr.contains("/home/nope"), missingParent.stderr)

        let c = try daemon.connect()
        _ = try c.putFile(tenant: t("acme"), path: "/home/out/a.txt") { _ in [] } // empty file
        _ = try c.putFile(tenant: t("acme"), path: "/home/out/b.txt", size: 5, read: Self.once(Array("hello".utf8)))
        let link = try daemon.run("acme", ["ln", "-s", "/etc/passwd", "/home/out/link"])
        XCTAssertEqual(link.state, .succeeded, link.stderr)

        let ls = try runCLI(["ls", "acme:/home/out", "--json"], socket: daemon.socket)
        XCTAssertEqual(ls.status, 0, ls.stderr)
        let listing = try JSONValue.parse(Array(ls.stdout.utf8))
        let entries = listing["entries"]?.arrayValue ?? []
        XCTAssertEqual(entries.compactMap { $0["name"]?.stringValue }, ["2026", "a.txt", "b.txt", "link"])
        XCTAssertEqual(entries.compactMap { $0["type"]?.stringValue }, ["dir", "file", "file", "symlink"])
        XCTAssertEqual(entries[2]["size"]?.intValue, 5)
        XCTAssertEqual(entries[2]["path"]?.stringValue, "/home/out/b.txt")
        XCTAssertEqual(entries[3]["target"]?.stringValue, "/etc/passwd", "a link's target is shown, not followed")
        XCTAssertEqual(entries[0]["mode"]?.intValue, 0o755)
        XCTAssertEqual(listing["truncated"]?.boolValue, false)

        let human = try runCLI(["ls", "acme:/home/out"], socket: daemon.socket)
        XCTAssertTrue(human.stdout.contains("link -> /etc/passwd"), human.stdout)
        XCTAssertTrue(human.stdout.contains("drwxr-xr-x"), human.stdout)

        let stat = try c.statFile(tenant: t("acme"), path: "/home/out/b.txt")
        XCTAssertEqual(stat.type, "file")
        XCTAssertEqual(stat.size, 5)
        XCTAssertEqual(stat.mode, 0o644)
        let linkStat = try c.statFile(tenant: t("acme"), path: "/home/out/link")
        XCTAssertEqual(linkStat.type, "symlink", "stat does not follow the last component either")
        let one = try c.listFiles(tenant: t("acme"), path: "/home/out/b.txt")
        XCTAssertEqual(one.entries.map(\.path), ["/home/out/b.txt"], "ls of a file lists the file")
        let limited = try c.listFiles(tenant: t("acme"), path: "/home/out", limit: 2)
        XCTAssertEqual(limited.entries.count, 2)
        XCTAssertTrue(limited.truncated)

        let notEmpty = try runCLI(["rm", "acme:/home/out"], socket: daemon.socket)
        XCTAssertEqual(notEmpty.status, 64, notEmpty.stderr)
        XCTAssertTrue(notEmpty.stderr.contains("not empty"), notEmpty.stderr)
        // rm of the link removes the link, not /etc/passwd.
        XCTAssertEqual(try c.removeFile(tenant: t("acme"), path: "/home/out/link"), 1)
        XCTAssertEqual(try daemon.run("acme", ["test", "-f", "/etc/passwd"]).exitCode, 0)
        let rm = try runCLI(["rm", "-r", "--json", "acme:/home/out"], socket: daemon.socket)
        XCTAssertEqual(rm.status, 0, rm.stderr)
        XCTAssertEqual(try JSONValue.parse(Array(rm.stdout.utf8))["removed"]?.intValue, 5, rm.stdout) // 2026, 12, a, b, out
        let gone = try runCLI(["ls", "acme:/home/out"], socket: daemon.socket)
        XCTAssertEqual(gone.status, 66, gone.stderr)
        XCTAssertTrue(gone.stderr.contains("not_found"), gone.stderr)
        let root = try runCLI(["rm", "-r", "acme:/home"], socket: daemon.socket)
        XCTAssertEqual(root.status, 77, "/home itself is never removed: \(root.stderr)")
        XCTAssertTrue(root.stderr.contains("writable_roots"), root.stderr)
    }

    func testAPutThatFailsHalfWayLeavesTheOldFileAndNoTemporaryFile() throws {
        let c = try daemon.connect()
        _ = try c.putFile(tenant: t("small"), path: "/home/keep.txt", read: Self.once(Array("old".utf8)))
        // 2 MiB into a tenant whose file_max_bytes is 1M: refused once the chunks pass it.
        let big = Self.randomBytes(2 * 1024 * 1024)
        var offset = 0
        XCTAssertThrowsError(
            try c.putFile(tenant: t("small"), path: "/home/keep.txt", chunkBytes: 256 * 1024) { max in
                let n = min(max, big.count - offset)
                defer { offset += n }
                return Array(big[offset..<(offset + n)])
            }
        ) { error in
            guard case .server(let e) = error as? ClientError else { return XCTFail("\(error)") }
            XCTAssertEqual(e.code, .fileTooLarge)
            XCTAssertEqual(e.details["rule"], .string("file_max_bytes"))
            XCTAssertEqual(e.details["limit"], .int(1024 * 1024))
            XCTAssertTrue(e.message.contains("/home/keep.txt"), e.message)
        }
        // The same connection still works, and the old file is whole.
        var got: [UInt8] = []
        _ = try c.getFile(tenant: t("small"), path: "/home/keep.txt") { got += $0 }
        XCTAssertEqual(got, Array("old".utf8))
        let ls = try daemon.run("small", ["ls", "-a", "/home"])
        XCTAssertFalse(ls.stdout.contains(".clawpen-put"), "no temporary file is left behind: \(ls.stdout)")
        // Announced too large: refused at once.
        XCTAssertThrowsError(try c.putFile(tenant: t("small"), path: "/home/x", size: 5 << 20, read: Self.once([0]))) { error in
            XCTAssertEqual((error as? ClientError)?.code, .fileTooLarge)
        }
    }

    /// A put hands its file to the worker's one thread to be flushed every 8 MiB, and the file a
    /// put replaces (or a remove removes) to be closed there (cp_writeback.h): the files are
    /// byte for byte right, the worker has exactly that one thread more, and it still runs jobs,
    /// sees them end and times them out (its signalfd is not disturbed by the thread).
    func testFlushingAndFreeingOnTheWorkersThreadKeepsFilesAndJobsRight() throws {
        let c = try daemon.connect()
        let large = Self.randomBytes((8 << 20) + (256 << 10) + 7) // crosses one flush
        let small = Self.randomBytes(1 << 20)
        for bytes in [large, small] { // the second replaces the first
            _ = try c.putFile(tenant: t("acme"), path: "/home/data.bin", size: UInt64(bytes.count), read: Self.once(bytes))
            var got: [UInt8] = []
            _ = try c.getFile(tenant: t("acme"), path: "/home/data.bin") { got += $0 }
            XCTAssertEqual(got.count, bytes.count)
            XCTAssertTrue(got == bytes, "the file is what was put")
        }
        guard let pid = try daemon.tenantStatus("acme")["worker_pid"]?.intValue else { return XCTFail("no worker") }
        let tasks = try FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task")
        XCTAssertEqual(tasks.count, 2, "the worker and its one file thread: \(tasks)")

        XCTAssertEqual(try c.removeFile(tenant: t("acme"), path: "/home/data.bin"), 1)
        XCTAssertThrowsError(try c.statFile(tenant: t("acme"), path: "/home/data.bin")) { error in
            XCTAssertEqual((error as? ClientError)?.code, .notFound)
        }
        let ls = try daemon.run("acme", ["ls", "-a", "/home"])
        XCTAssertEqual(ls.state, .succeeded, ls.stderr)
        XCTAssertFalse(ls.stdout.contains(".clawpen-put"), "no temporary file is left behind: \(ls.stdout)")
        let slow = try daemon.run("acme", ["sleep", "30"], timeout: 1)
        XCTAssertEqual(slow.state, .timedOut, "the worker still times out and reaps its jobs")
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task").count, 2, "still one thread more, not one per put")
    }

    func testAFileOperationStartsTheTenantsWorkerAndKeepsItFromIdling() throws {
        try daemon.createTenant("fresh")
        XCTAssertNil(try daemon.tenantStatus("fresh")["worker_pid"]?.intValue, "no worker before the first request")
        let c = try daemon.connect()
        let listing = try c.listFiles(tenant: t("fresh"), path: "/home")
        XCTAssertEqual(listing.entries.count, 0)
        XCTAssertNotNil(try daemon.tenantStatus("fresh")["worker_pid"]?.intValue, "the file request started a worker")
        let unknown = try runCLI(["ls", "nosuch:/home"], socket: daemon.socket)
        XCTAssertEqual(unknown.status, 64, unknown.stderr)
        XCTAssertTrue(unknown.stderr.contains("unknown_tenant"), unknown.stderr)
    }

    /// The daemon reads large `file.chunk` frames in a fast path (ChunkFrame): chunks in the fast
    /// shape, in other key orders, with an escape inside the base64 or a key the fast path does
    /// not know (both the general parser's) make one file, byte for byte; a chunk whose base64
    /// is broken is refused as it always was.
    func testChunksInEveryShapeMakeTheSameFile() throws {
        let c = try daemon.connect()
        let parts = (0..<5).map { _ in Self.randomBytes(3 * 1024 + 7 * 3) }
        func b64(_ b: [UInt8]) -> String { String(decoding: Base64.encode(b), as: UTF8.self) }
        var offset = 0
        var frames = [#"{"type":"file.put","id":"p1","tenant":"acme","path":"/home/shapes.bin","data_b64":"\#(b64(parts[0]))","eof":false}"#]
        offset += parts[0].count
        frames.append(#"{"type":"file.chunk","id":"p1","offset":\#(offset),"eof":false,"data_b64":"\#(b64(parts[1]))"}"#)
        offset += parts[1].count
        frames.append(#" {"data_b64" : "\#(b64(parts[2]))", "eof":false ,"offset":\#(offset), "type":"file.chunk","id":"p1"}"#)
        offset += parts[2].count
        let escaped = b64(parts[3]).replacingOccurrences(of: "/", with: #"\/"#)
        XCTAssertTrue(escaped.contains(#"\/"#), "the random part has a slash to escape")
        frames.append(#"{"type":"file.chunk","id":"p1","offset":\#(offset),"eof":false,"data_b64":"\#(escaped)"}"#)
        offset += parts[3].count
        frames.append(#"{"type":"file.chunk","id":"p1","offset":\#(offset),"eof":true,"data_b64":"\#(b64(parts[4]))","note":"a key of a later version"}"#)
        for f in frames { try c.send(Array(f.utf8)) }
        let reply = try c.receive()
        XCTAssertEqual(reply["type"]?.stringValue, "file", reply.text)
        var back: [UInt8] = []
        _ = try c.getFile(tenant: t("acme"), path: "/home/shapes.bin", chunkBytes: 4096) { back += $0 }
        XCTAssertEqual(back, parts.flatMap { $0 })

        // Broken base64 in the fast shape: the general parser's refusal, and the put is dropped.
        try c.send(Array(#"{"type":"file.put","id":"p2","tenant":"acme","path":"/home/broken.bin","data_b64":"\#(b64(parts[0]))","eof":false}"#.utf8))
        let broken = String(b64(parts[1]).dropLast(4)) + "A*A="
        try c.send(Array(#"{"type":"file.chunk","id":"p2","offset":\#(parts[0].count),"eof":true,"data_b64":"\#(broken)"}"#.utf8))
        let refused = try c.receive()
        XCTAssertEqual(refused["error"]?["code"]?.stringValue, "invalid_request", refused.text)
        XCTAssertTrue(refused["error"]?["message"]?.stringValue?.contains("not valid base64") ?? false, refused.text)
    }

    func testRequestShapesAreChecked() throws {
        let c = try daemon.connect()
        for (request, expect) in [
            (#"{"type":"file.get","id":1,"tenant":"acme","path":"home/x"}"#, "absolute"),
            (#"{"type":"file.put","id":2,"tenant":"acme","path":"/home/x","mode":2541,"eof":true}"#, "mode"),
            (#"{"type":"file.chunk","id":3,"data_b64":"","offset":0,"eof":true}"#, "no put with id 3"),
            (#"{"type":"file.put","id":null,"tenant":"acme","path":"/home/x","eof":false}"#, "needs an \"id\""),
            (#"{"type":"file.get","id":4,"tenant":"acme","path":"/home/x","chunk_bytes":10}"#, "chunk_bytes"),
        ] {
            try c.send(Array(request.utf8))
            let reply = try c.receive()
            XCTAssertEqual(reply["type"]?.stringValue, "error", request)
            XCTAssertEqual(reply["error"]?["code"]?.stringValue, "invalid_request", request)
            XCTAssertTrue(reply["error"]?["message"]?.stringValue?.contains(expect) ?? false, "\(request): \(reply.text)")
        }
        // A chunk out of order refuses the put; the rest of its chunks are dropped silently.
        try c.send(Array(#"{"type":"file.put","id":9,"tenant":"acme","path":"/home/o","data_b64":"aGk=","eof":false}"#.utf8))
        try c.send(Array(#"{"type":"file.chunk","id":9,"data_b64":"aGk=","offset":7,"eof":false}"#.utf8))
        try c.send(Array(#"{"type":"file.chunk","id":9,"data_b64":"aGk=","offset":4,"eof":true}"#.utf8))
        let refused = try c.receive()
        XCTAssertEqual(refused["error"]?["code"]?.stringValue, "invalid_request", refused.text)
        XCTAssertTrue(refused["error"]?["message"]?.stringValue?.contains("offset 7") ?? false, refused.text)
        XCTAssertNoThrow(try c.call(.ping), "the connection goes on; no reply for the dropped chunks came first")
        XCTAssertThrowsError(try c.statFile(tenant: t("acme"), path: "/home/o")) { XCTAssertEqual(($0 as? ClientError)?.code, .notFound) }
    }
}

/// File access needs a grant for the tenant, as submit does: a caller granted one tenant reads
/// and writes that tenant's files and no other's.
final class FileAccessTests: XCTestCase {
    var daemon: Daemon!

    override func setUpWithError() throws {
        guard geteuid() == 0 else { throw XCTSkip("needs root to create test users") }
        try CallerPermissionTests.ensureUser(CallerPermissionTests.user, groups: [])
        try CallerPermissionTests.ensureUser(CallerPermissionTests.stranger, groups: [])
        let dir = try Daemon.tempDir()
        chmod(dir, 0o755)
        let pol = try Daemon.policiesWithOverrides(in: dir, [:])
        try """
        [operators]
        users = ["root"]
        groups = []

        [tenants.alpha]
        users = ["\(CallerPermissionTests.user)"]
        groups = []
        """.write(toFile: pol + "/access.toml", atomically: true, encoding: .utf8)
        daemon = try Daemon(dir: dir, policies: pol).start()
        chmod(daemon.socket, 0o666)
        try daemon.createTenant("alpha")
        try daemon.createTenant("beta")
        XCTAssertEqual(try daemon.run("beta", ["sh", "-c", "echo beta-secret > /home/secret"]).state, .succeeded)
        chmod(dir, 0o755)
        try "local\n".write(toFile: dir + "/local.txt", atomically: true, encoding: .utf8)
        chmod(dir + "/local.txt", 0o644)
    }

    override func tearDown() { daemon?.cleanup() }

    func cliAs(_ user: String, _ args: [String]) throws -> (Int32, String) {
        try CallerPermissionTests.run(
            ["/usr/bin/setpriv", "--reuid", user, "--regid", user, "--init-groups", "--", Daemon.clawpen] + args,
            socket: daemon.socket)
    }

    func testFileAccessWithoutAGrantForTheTenantIsPermissionDenied() throws {
        let user = CallerPermissionTests.user, stranger = CallerPermissionTests.stranger
        let mine = try cliAs(user, ["cp", daemon.dir + "/local.txt", "alpha:/home/local.txt"])
        XCTAssertEqual(mine.0, 0, mine.1)
        for args in [
            ["cp", "beta:/home/secret", "-"], ["cp", daemon.dir + "/local.txt", "beta:/home/x"], ["ls", "beta:/home"],
            ["rm", "beta:/home/secret"], ["mkdir", "beta:/home/d"],
        ] {
            let r = try cliAs(user, args)
            XCTAssertEqual(r.0, 77, "\(args): \(r.1)")
            XCTAssertTrue(r.1.contains("permission_denied") && r.1.contains("beta"), r.1)
            XCTAssertFalse(r.1.contains("beta-secret"), "LEAK: \(r.1)")
        }
        let s = try cliAs(stranger, ["ls", "alpha:/home"])
        XCTAssertEqual(s.0, 77, s.1)
        XCTAssertEqual(try daemon.run("beta", ["cat", "/home/secret"]).stdout, "beta-secret\n", "beta's file is untouched")
        // Each refusal is audited with the caller's uid and the rule.
        let audit = try runCLI(["audit", "--json"], socket: daemon.socket)
        XCTAssertTrue(audit.stdout.contains("file.get") && audit.stdout.contains("permission.denied"), audit.stdout)
    }
}
