import ClawpenTestSupport
import Foundation
import XCTest

/// Class: side channels through shared inodes. /usr and /etc's binds are the host's inodes, in
/// every tenant's sandbox at once: an inotify watch there for reads and opens would show a
/// tenant what other tenants and the host run. Such watches are refused; watches for changes
/// keep working, on the tenant's own files too.
final class SharedInodeTests: XCTestCase {
    var daemon: Daemon!
    override func setUpWithError() throws {
        try XCTSkipUnless(geteuid() == 0, "the sandbox needs root")
        daemon = try Daemon().start()
        try daemon.createTenant("a")
        try daemon.createTenant("b")
        try daemon.assertSandboxed("a")
    }
    override func tearDown() { daemon?.cleanup() }

    func testAWatcherOnUsrBinSeesNothingOfOtherTenantsOrTheHostButItsOwnFiles() throws {
        // a's watcher: read watches refused; the widest allowed watch on /usr/bin, /etc/ssl and
        // its own /home/w; it writes a file in /home/w itself, then reports every event.
        let watcher = try daemon.detach(
            "a",
            [
                "python3", "-c",
                """
                import ctypes, os, select, struct, time
                libc = ctypes.CDLL(None, use_errno=True)
                fd = libc.inotify_init1(os.O_NONBLOCK)
                IN_ACCESS, IN_OPEN, IN_CLOSE_NOWRITE = 0x1, 0x20, 0x10
                for name, mask in [("access", IN_ACCESS), ("open", IN_OPEN), ("close_nowrite", IN_CLOSE_NOWRITE), ("all", 0xfff)]:
                    wd = libc.inotify_add_watch(fd, b"/usr/bin", mask)
                    print("watch", name, "refused" if wd < 0 else "ALLOWED", ctypes.get_errno() if wd < 0 else "")
                changes = 0xfff & ~(IN_ACCESS | IN_OPEN | IN_CLOSE_NOWRITE)
                os.makedirs("/home/w", exist_ok=True)
                wds = {libc.inotify_add_watch(fd, p.encode(), changes): p for p in ["/usr/bin", "/etc/ssl", "/home/w"]}
                print("watching", sorted(wds.values()), min(wds))
                open("/home/ready", "w").close()
                deadline = time.time() + 4
                wrote = False
                while time.time() < deadline:
                    if not wrote and time.time() > deadline - 2:
                        with open("/home/w/f", "w") as f: f.write("x")
                        wrote = True
                    if select.select([fd], [], [], 0.1)[0]:
                        buf = os.read(fd, 65536); off = 0
                        while off < len(buf):
                            wd, mask, _, n = struct.unpack_from("iIII", buf, off)
                            name = buf[off + 16: off + 16 + n].rstrip(b"\\0").decode()
                            print("event", wds.get(wd, wd), hex(mask), name); off += 16 + n
                """,
            ], timeout: 30)
        XCTAssertTrue(daemon.eventually(15) { FileManager.default.fileExists(atPath: daemon.workspaceRoot + "/a/home/ready") }, "the watcher started")
        // Meanwhile b and the host run and read programs under /usr/bin and /etc/ssl.
        XCTAssertEqual(
            try daemon.run("b", ["sh", "-c", "/usr/bin/true; /usr/bin/ls /usr/bin >/dev/null; cat /etc/ssl/openssl.cnf >/dev/null; python3 -c 1"]).state,
            .succeeded)
        for argv in [["/usr/bin/true"], ["/usr/bin/ls", "/usr/bin"], ["/usr/bin/cat", "/etc/ssl/openssl.cnf"]] {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: argv[0])
            p.arguments = Array(argv.dropFirst())
            p.standardOutput = FileHandle.nullDevice
            try p.run()
            p.waitUntilExit()
        }
        let job = try daemon.connect().job(.jobWait(jobID: watcher.id)).job
        XCTAssertEqual(job.state, .succeeded, job.stderr)
        let lines = job.stdout.split(separator: "\n").map(String.init)
        for name in ["access", "open", "close_nowrite", "all"] {
            XCTAssertTrue(lines.contains("watch \(name) refused 1"), "a watch for \(name) events must fail with EPERM: \(job.stdout)")
        }
        XCTAssertTrue(job.stdout.contains("watching ['/etc/ssl', '/home/w', '/usr/bin']"), job.stdout)
        let events = lines.filter { $0.hasPrefix("event ") }
        XCTAssertFalse(events.contains { $0.hasPrefix("event /usr/bin") || $0.hasPrefix("event /etc/ssl") }, "a saw activity on shared inodes: \(events)")
        XCTAssertTrue(events.contains { $0.hasPrefix("event /home/w 0x100 f") }, "IN_CREATE on its own file: \(events)")
        XCTAssertTrue(events.contains { $0.hasPrefix("event /home/w 0x8 f") }, "IN_CLOSE_WRITE on its own file: \(events)")
    }
}
