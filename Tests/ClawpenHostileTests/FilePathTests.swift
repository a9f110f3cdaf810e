import ClawpenClient
import ClawpenProtocol
import ClawpenTestSupport
import Foundation
import XCTest

/// Every path shape a file request must refuse, as tenant `a`, with tenant `b` (and its secret)
/// and a host secret present: `..`, an absolute path to what is another tenant's on the host,
/// links planted by a job (to /etc/shadow, to b's workspace, to /proc/self/root, a linked parent
/// directory), /proc/self/root/..., a NUL, an over-long name and path, read-only mounts, a file
/// over file_max_bytes, and a job swapping a directory for a link while puts and gets run.
///
/// Safety: the sandbox is proven first (Daemon.assertSandboxed); every attack is harmless if it
/// succeeds: the link targets are files that are read, never written (b's secret, the host
/// secret, /etc/shadow), and every write goes to a name that does not exist outside the test's
/// own directories, so a broken rule shows as a failed assertion, not as a changed machine.
final class FilePathTests: XCTestCase {
    var daemon: Daemon!
    var c: ClawpenConnection!
    let secret = "TOPSECRET-\(UInt64.random(in: 1...UInt64.max))"
    var hostSecret: String { daemon.dir + "/host-secret" }
    let a = TenantName.t("a")

    override func setUpWithError() throws {
        let dir = try Daemon.tempDir()
        let pol = try Daemon.policiesWithOverrides(in: dir, ["a": "file_max_bytes = \"1M\"\n"])
        daemon = try Daemon(dir: dir, policies: pol).start()
        try daemon.createTenant("a")
        try daemon.createTenant("b")
        XCTAssertEqual(try daemon.run("b", ["sh", "-c", "echo \(secret) > /home/secret; chmod 600 /home/secret"]).state, .succeeded)
        try "\(secret)\n".write(toFile: hostSecret, atomically: true, encoding: .utf8)
        try daemon.assertSandboxed("a")
        c = try daemon.connect()
    }

    override func tearDown() { daemon?.cleanup() }

    /// A job of a's (shell).
    @discardableResult
    func job(_ script: String, timeout: Double = 10) throws -> JobView {
        let j = try daemon.run("a", ["sh", "-c", script], timeout: timeout)
        XCTAssertEqual(j.state, .succeeded, "\(script): \(j.stderr)")
        return j
    }

    /// The refusal of `body`, which must fail with `code` (and `rule`), name `path` and leak nothing.
    func assertRefused(
        _ what: String, code: ErrorCode, rule: String?, naming path: String? = nil, file: StaticString = #filePath, line: UInt = #line,
        _ body: () throws -> Void
    ) {
        do {
            try body()
            XCTFail("\(what): not refused", file: file, line: line)
        } catch let error as ClientError {
            guard case .server(let e) = error else { return XCTFail("\(what): \(error)", file: file, line: line) }
            XCTAssertEqual(e.code, code, "\(what): \(e)", file: file, line: line)
            if let rule { XCTAssertEqual(e.details["rule"], .string(rule), "\(what): \(e)", file: file, line: line) }
            if let path { XCTAssertTrue(e.message.contains(path), "\(what): the message names \(path): \(e.message)", file: file, line: line) }
            XCTAssertNotNil(e.details["stage"], "\(what): a stage", file: file, line: line)
            XCTAssertFalse(e.message.contains(secret), "LEAK: \(e.message)", file: file, line: line)
        } catch {
            XCTFail("\(what): \(error)", file: file, line: line)
        }
    }

    func get(_ path: String) throws -> [UInt8] {
        var out: [UInt8] = []
        _ = try c.getFile(tenant: a, path: path) { out += $0 }
        XCTAssertFalse(String(decoding: out, as: UTF8.self).contains(secret), "LEAK through \(path)")
        return out
    }

    func put(_ path: String, _ text: String = "x") throws {
        var sent = false
        _ = try c.putFile(tenant: a, path: path) { _ in
            defer { sent = true }
            return sent ? [] : Array(text.utf8)
        }
    }

    func assertUnharmed(file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(try? daemon.run("b", ["cat", "/home/secret"]).stdout, secret + "\n", "b's secret intact", file: file, line: line)
        XCTAssertEqual(try? String(contentsOfFile: hostSecret, encoding: .utf8), secret + "\n", file: file, line: line)
        XCTAssertNoThrow(try daemon.connect().call(.ping), file: file, line: line)
    }

    func testDotDotIsRefusedWhereverItIs() throws {
        for path in ["/home/../etc/passwd", "/home/..", "/../../etc/shadow", "/tmp/a/../../home/x"] {
            assertRefused("get \(path)", code: .policyDenied, rule: "beneath_root", naming: "'..'") { _ = try get(path) }
            assertRefused("put \(path)", code: .policyDenied, rule: "beneath_root") { try put(path) }
        }
        assertUnharmed()
    }

    func testAnAbsoluteHostPathIsOnlyEverInsideTheSandbox() throws {
        // The host paths of b's secret and of the daemon's own files do not exist inside a's
        // root: they are looked up there, not on the host.
        let bHome = daemon.workspaceRoot + "/b/home/secret"
        for path in [bHome, hostSecret, daemon.stateDir + "/clawpen.db"] {
            assertRefused("get \(path)", code: .notFound, rule: nil, naming: path) { _ = try get(path) }
        }
        assertUnharmed()
    }

    func testLinksPlantedByAJobAreNeverFollowed() throws {
        try job(
            """
            ln -s /etc/shadow /home/shadow
            ln -s \(daemon.workspaceRoot)/b/home/secret /home/other
            ln -s \(hostSecret) /home/host
            ln -s /proc/self/root /home/root
            ln -s ../../proc/1/root/etc /home/rel
            mkdir -p /home/real && ln -s /home/real /home/dirlink
            ln -s /tmp /home/tmplink
            """)
        for (path, component) in [
            ("/home/shadow", "/home/shadow"), ("/home/other", "/home/other"), ("/home/host", "/home/host"),
            ("/home/root/etc/passwd", "/home/root"), ("/home/rel/passwd", "/home/rel"), ("/home/dirlink/x", "/home/dirlink"),
        ] {
            assertRefused("get \(path)", code: .policyDenied, rule: "no_symlinks", naming: component) { _ = try get(path) }
        }
        // Writes through a linked parent directory and list or stat below a link: refused too.
        for path in ["/home/dirlink/new", "/home/tmplink/new", "/home/root/tmp/new", "/home/other/new"] {
            assertRefused("put \(path)", code: .policyDenied, rule: "no_symlinks") { try put(path) }
            assertRefused("mkdir \(path)", code: .policyDenied, rule: "no_symlinks") {
                _ = try c.makeDirectory(tenant: a, path: path, parents: true)
            }
        }
        assertRefused("list through a link", code: .policyDenied, rule: "no_symlinks") { _ = try c.listFiles(tenant: a, path: "/home/root/etc") }
        // Listing the link itself shows the link, not what it points to.
        XCTAssertEqual(try c.listFiles(tenant: a, path: "/home/dirlink").entries.map(\.type), ["symlink"])
        assertRefused("rm below a link", code: .policyDenied, rule: "no_symlinks") { _ = try c.removeFile(tenant: a, path: "/home/dirlink/x") }
        let left = try job("ls -A /home/real /tmp; echo end").stdout
        XCTAssertEqual(left, "/home/real:\n\n/tmp:\nend\n", "nothing was written through a link")
        // The link itself is the tenant's: stat shows it, rm removes it (not its target).
        XCTAssertEqual(try c.statFile(tenant: a, path: "/home/shadow").type, "symlink")
        XCTAssertEqual(try c.removeFile(tenant: a, path: "/home/dirlink"), 1)
        XCTAssertEqual(try job("test -d /home/real && echo kept").stdout, "kept\n")
        // A put onto a link's name replaces the link with a file; the target is untouched.
        try put("/home/host", "replaced")
        XCTAssertEqual(try c.statFile(tenant: a, path: "/home/host").type, "file")
        assertUnharmed()
    }

    func testProcAndOtherPseudoFilesystemsAreRefused() throws {
        for path in ["/proc/self/root/etc/passwd", "/proc/1/environ", "/proc/self/mem", "/sys/kernel/notes", "/dev/shm/x"] {
            assertRefused("get \(path)", code: .policyDenied, rule: "pseudo_filesystem", naming: path) { _ = try get(path) }
        }
        assertRefused("put /dev/shm/x", code: .policyDenied, rule: "pseudo_filesystem") { try put("/dev/shm/x") }
        assertUnharmed()
    }

    func testNulOverlongNamesAndPathsAreRefusedWithTheirRule() throws {
        assertRefused("NUL", code: .invalidRequest, rule: nil, naming: "NUL") { _ = try get("/home/a\u{0}b") }
        let longName = "/home/" + String(repeating: "n", count: 256)
        assertRefused("name", code: .policyDenied, rule: "name_max", naming: "NAME_MAX") { try put(longName) }
        let longPath = "/home" + String(repeating: "/d", count: 2100)
        assertRefused("path", code: .policyDenied, rule: "path_max", naming: "PATH_MAX") { _ = try get(longPath) }
        assertRefused("relative", code: .invalidRequest, rule: nil, naming: "absolute") { _ = try get("home/x") }
        // 255 bytes is allowed.
        try put("/home/" + String(repeating: "n", count: 255))
    }

    func testReadOnlyMountsAreRefusedForEveryWrite() throws {
        // (/lib is a link to usr/lib on a merged-/usr host: a write through it is refused as a link.)
        for path in ["/usr/clawpen-probe", "/etc/clawpen-probe", "/usr/bin/clawpen-probe", "/clawpen-probe", "/usr/lib/clawpen-probe"] {
            assertRefused("put \(path)", code: .policyDenied, rule: "read_only_mount") { try put(path) }
            assertRefused("mkdir \(path)", code: .policyDenied, rule: "read_only_mount") { _ = try c.makeDirectory(tenant: a, path: path) }
            XCTAssertFalse(FileManager.default.fileExists(atPath: path), "\(path) on the host")
        }
        assertRefused("rm /usr/bin/sh", code: .policyDenied, rule: "read_only_mount") { _ = try c.removeFile(tenant: a, path: "/usr/bin/sh") }
        assertRefused("rm -r /etc", code: .policyDenied, rule: "read_only_mount") { _ = try c.removeFile(tenant: a, path: "/etc", recursive: true) }
        XCTAssertTrue(FileManager.default.fileExists(atPath: "/usr/bin/sh"))
        // Reading them is fine: they are the sandbox's view.
        XCTAssertTrue(String(decoding: try get("/etc/passwd"), as: UTF8.self).contains("clawpen tenant a"))
        XCTAssertFalse(String(decoding: try get("/etc/passwd"), as: UTF8.self).contains("root:x:0:0:root:/root:/bin/bash"), "not the host's")
        assertRefused("put /home", code: .policyDenied, rule: "writable_roots") { try put("/home") }
        assertRefused("rm /tmp", code: .policyDenied, rule: "writable_roots") { _ = try c.removeFile(tenant: a, path: "/tmp", recursive: true) }
        assertUnharmed()
    }

    func testAFileOverFileMaxBytesIsRefusedBothWays() throws {
        // a's file_max_bytes is 1M. A job makes a larger file; get refuses it before sending any.
        try job("head -c 1048577 /dev/zero > /home/big")
        assertRefused("get", code: .fileTooLarge, rule: "file_max_bytes", naming: "file_max_bytes") { _ = try get("/home/big") }
        let exact = try job("head -c 1048576 /dev/zero > /home/exact; echo ok").stdout
        XCTAssertEqual(exact, "ok\n")
        XCTAssertEqual(try get("/home/exact").count, 1 << 20, "exactly the limit is allowed")
        var sent = 0
        assertRefused("put", code: .fileTooLarge, rule: "file_max_bytes") {
            _ = try c.putFile(tenant: a, path: "/home/up") { max in
                guard sent < 3 << 20 else { return [] }
                sent += max
                return [UInt8](repeating: 7, count: max)
            }
        }
        assertRefused("announced", code: .fileTooLarge, rule: "file_max_bytes") {
            var sent = false
            _ = try c.putFile(tenant: a, path: "/home/up", size: 2 << 20) { _ in
                defer { sent = true }
                return sent ? [] : [1]
            }
        }
        XCTAssertEqual(try job("ls -A /home | grep -c -e up -e clawpen-put; true").stdout, "0\n", "nothing left behind")
    }

    func testAJobSwappingADirectoryForALinkNeverMakesAFileOperationEscape() throws {
        // /tmp/bait holds what must never be read through /home/r, and nothing may be written
        // into /tmp through it.
        try job("echo bait-\(secret) > /tmp/bait; mkdir /home/r; echo real > /home/r/bait")
        let swapper = try daemon.detach(
            "a",
            [
                "sh", "-c",
                "end=$(( $(date +%s) + 6 )); while [ $(date +%s) -lt $end ]; do rm -rf /home/r; ln -s /tmp /home/r; rm -f /home/r; mkdir /home/r; echo real > /home/r/bait; done",
            ], timeout: 20)
        var outcomes: [String: Int] = [:]
        let deadline = Date().addingTimeInterval(4)
        var i = 0
        while Date() < deadline {
            i += 1
            do {
                let got = try get("/home/r/bait")
                // Only what is below the real directory (empty if caught between its creation and the write).
                XCTAssertTrue(["real\n", ""].contains(String(decoding: got, as: UTF8.self)), "read: \(got.count) bytes")
                outcomes["get ok", default: 0] += 1
            } catch let e as ClientError {
                outcomes["get \(e.code.rawValue) \((e.serverError?.details["rule"]?.stringValue) ?? "")", default: 0] += 1
            }
            do {
                try put("/home/r/put-\(i)")
                outcomes["put ok", default: 0] += 1
            } catch let e as ClientError {
                outcomes["put \(e.code.rawValue) \((e.serverError?.details["rule"]?.stringValue) ?? "")", default: 0] += 1
            }
        }
        _ = try daemon.connect().job(.jobWait(jobID: swapper.id))
        let tmp = try job("ls -A /tmp").stdout
        XCTAssertEqual(tmp, "bait\n", "nothing was written into /tmp through the link: \(outcomes)")
        // Every refusal was one of the rules (a link, or the directory missing at that instant).
        for key in outcomes.keys where !key.hasSuffix(" ok") {
            XCTAssertTrue(key.hasSuffix("no_symlinks") || key.contains("not_found") || key.contains("invalid_request"), "\(key) in \(outcomes)")
        }
        XCTAssertGreaterThan(outcomes.values.reduce(0, +), 20, "the race ran: \(outcomes)")
        assertUnharmed()
    }
}

extension ClientError {
    var serverError: ProtocolError? {
        if case .server(let e) = self { return e }
        return nil
    }
}
