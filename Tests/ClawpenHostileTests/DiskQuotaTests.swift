import ClawpenTestSupport
import Foundation
import XCTest

/// Disk: a tenant that fills its workspace gets the error in its own job (a project quota per
/// tenant, `disk_max` / `inodes_max`), and a neighbour on the same filesystem still writes. The
/// test makes its own filesystem: an ext4 image with project quotas (`mkfs.ext4 -O
/// quota,project`), loop-mounted with prjquota as the daemon's --workspace-root, and always
/// unmounted at the end. A kernel without quota support (this development host: no
/// CONFIG_QUOTA) cannot mount it: the test then says so and is skipped here; scripts/vm-test
/// runs it in the VM (Debian's kernel).
///
/// Safety: the gate proves the sandbox; the writes go to the test's own image (64 MiB).
final class DiskQuotaTests: XCTestCase {
    var daemon: Daemon?
    var dir = ""
    var mountPoint = ""
    var image = ""

    @discardableResult
    func sh(_ args: [String]) throws -> (Int32, String) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = args
        let out = Pipe()
        p.standardOutput = out
        p.standardError = out
        try p.run()
        let text = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        return (p.terminationStatus, text)
    }

    override func setUpWithError() throws {
        dir = try Daemon.tempDir()
        image = dir + "/ws.img"
        mountPoint = dir + "/ws"
        try FileManager.default.createDirectory(atPath: mountPoint, withIntermediateDirectories: true)
        try sh(["truncate", "-s", "64M", image])
        let (mk, mkOut) = try sh(["mkfs.ext4", "-q", "-F", "-O", "quota,project", image])
        guard mk == 0 else { throw XCTSkip("mkfs.ext4 -O quota,project failed: \(mkOut)") }
        for module in ["loop", "ext4", "quota_v2"] { _ = try? sh(["modprobe", "-q", module]) }
        let (m, mOut) = try sh(["mount", "-o", "loop,prjquota", image, mountPoint])
        guard m == 0 else {
            throw XCTSkip(
                "this kernel cannot mount ext4 with project quotas (\(mOut.trimmingCharacters(in: .whitespacesAndNewlines))); scripts/vm-test runs this test in the VM"
            )
        }
        chmod(mountPoint, 0o755)
        let policies = try Daemon.policiesWithOverrides(
            in: dir,
            [
                "a": "disk_max = \"8M\"\ninodes_max = 200\n",
                "b": "disk_max = \"8M\"\ninodes_max = 200\n",
            ])
        let d = try Daemon(extraArgs: ["--workspace-root", mountPoint], dir: dir, policies: policies)
        daemon = d
        try d.start()
        try d.createTenant("a")
        try d.createTenant("b")
        try d.assertSandboxed("a")
    }

    override func tearDown() {
        daemon?.stop()
        // Always: the loop mount goes, whatever the test did (lazily if something still holds it).
        if !mountPoint.isEmpty, (try? sh(["mountpoint", "-q", mountPoint]))?.0 == 0 {
            if (try? sh(["umount", mountPoint]))?.0 != 0 { _ = try? sh(["umount", "-l", mountPoint]) }
        }
        if !image.isEmpty, let (_, loops) = try? sh(["losetup", "-j", image]) {
            for line in loops.split(separator: "\n") { if let dev = line.split(separator: ":").first { _ = try? sh(["losetup", "-d", String(dev)]) } }
        }
        try? FileManager.default.removeItem(atPath: dir)
    }

    func testAFullQuotaFailsTheJobNotTheNeighbour() throws {
        let d = try XCTUnwrap(daemon)
        let t = try d.tenantStatus("a")
        XCTAssertEqual(t["enforcement"]?["disk"]?.stringValue, "project-quota", "\(t)")
        // a fills its quota: dd stops with the filesystem's error. ext4 reports a project quota
        // as EDQUOT ("Disk quota exceeded"); xfs turns it into ENOSPC ("No space left on device").
        let fill = try d.run("a", ["sh", "-c", "dd if=/dev/zero of=/home/fill bs=1M count=32 2>&1; echo dd=$?; ls -l /home/fill"], timeout: 60)
        XCTAssertTrue(fill.stdout.contains("dd=1"), "dd must fail: \(fill.stdout)")
        XCTAssertTrue(fill.stdout.contains("Disk quota exceeded") || fill.stdout.contains("No space left on device"), "EDQUOT or ENOSPC: \(fill.stdout)")
        let size = fill.stdout.split(separator: "\n").last.flatMap { $0.split(separator: " ").dropFirst(4).first }.flatMap { Int($0) } ?? -1
        XCTAssertLessThanOrEqual(size, 8 << 20, "the file stopped at disk_max: \(fill.stdout)")
        // Outside /home too: the whole workspace is the project.
        let root = try d.run("a", ["sh", "-c", "dd if=/dev/zero of=/home/more bs=1M count=2 2>&1; echo dd=$?"], timeout: 30)
        XCTAssertTrue(root.stdout.contains("dd=1"), root.stdout)
        // The neighbour on the same filesystem still writes.
        let b = try d.run("b", ["sh", "-c", "dd if=/dev/zero of=/home/data bs=1M count=4 2>&1; echo dd=$?"], timeout: 30)
        XCTAssertTrue(b.stdout.contains("dd=0"), "b writes: \(b.stdout)")
        // Inodes: many small files stop at inodes_max.
        // (python, not a shell loop: dash exits when a redirection of `:` fails.)
        let files = try d.run(
            "b",
            [
                "python3", "-c",
                """
                import errno
                made = 0
                try:
                    for i in range(400):
                        open(f"/home/f{i}", "w").close(); made += 1
                    print("made", made, "no error")
                except OSError as e:
                    print("made", made, errno.errorcode.get(e.errno, e.errno))
                """,
            ], timeout: 60)
        let words = files.stdout.split(whereSeparator: { $0 == " " || $0 == "\n" })
        let made = words.count >= 3 ? Int(words[1]) ?? -1 : -1
        XCTAssertGreaterThan(made, 100, files.stdout + files.stderr)
        XCTAssertLessThan(made, 200, "inodes_max 200 holds: \(files.stdout) \(files.stderr)")
        XCTAssertTrue(files.stdout.contains("EDQUOT") || files.stdout.contains("ENOSPC"), files.stdout)
        // status reads the usage back from the quota.
        let usage = try d.tenantStatus("a")["usage"]?["disk_bytes"]?.intValue ?? 0
        XCTAssertGreaterThan(usage, 7 << 20, "\(usage)")
        // A rename out of the project (to a neighbour's directory) cannot exist: the workspaces
        // are not in each other's view; within the workspace the project holds for new files.
        let inspect = try runCLI(["tenant", "inspect", "a", "--json"], socket: d.socket)
        let facts = (try JSONValue.parse(Array(inspect.stdout.utf8)))["facts"]?.arrayValue ?? []
        let disk = facts.first { $0["fact"]?.stringValue == "disk_max" }
        XCTAssertEqual(disk?["ok"]?.boolValue, true, "tenant inspect reads the quota back: \(inspect.stdout)")
    }
}
