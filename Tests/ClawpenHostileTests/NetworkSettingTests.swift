import ClawpenTestSupport
import Foundation
import XCTest

/// Class: honest network settings. `network = "none"` (every shipped tier) means no interface is
/// up at all; `"loopback"` means lo alone, up.
final class NetworkSettingTests: XCTestCase {
    var daemon: Daemon!
    override func tearDown() { daemon?.cleanup() }

    /// Prints lo's flags, every interface, and whether 127.0.0.1 can be bound and reached.
    static let probe = """
        import fcntl, socket, struct
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        flags = struct.unpack("16sH", fcntl.ioctl(s.fileno(), 0x8913, struct.pack("16sH", b"lo", 0)))[1]
        print("lo", "UP" if flags & 1 else "DOWN")
        print("interfaces", " ".join(n for _, n in socket.if_nameindex()))
        up = [n for _, n in socket.if_nameindex() if struct.unpack("16sH", fcntl.ioctl(s.fileno(), 0x8913, struct.pack("16sH", n.encode(), 0)))[1] & 1]
        print("up", " ".join(up) or "none")
        try:
            l = socket.socket(); l.bind(("127.0.0.1", 0)); l.listen(1)
            c = socket.create_connection(l.getsockname(), timeout=2); a, _ = l.accept(); c.sendall(b"ping"); print("loopback", a.recv(4).decode())
        except OSError as e:
            print("loopback refused", e.errno)
        """

    func testNetworkNoneHasNoInterfaceUp() throws {
        try XCTSkipUnless(geteuid() == 0, "the sandbox needs root")
        daemon = try Daemon().start()
        try daemon.createTenant("a")
        try daemon.assertSandboxed("a")
        for attempt in 0..<2 { // two workers, the second in a namespace the pool made meanwhile
            let job = try daemon.run("a", ["python3", "-c", Self.probe])
            XCTAssertEqual(job.state, .succeeded, job.stderr)
            XCTAssertTrue(job.stdout.contains("lo DOWN\n"), "attempt \(attempt): \(job.stdout)")
            XCTAssertTrue(job.stdout.contains("interfaces lo\n"), job.stdout)
            XCTAssertTrue(job.stdout.contains("up none\n"), job.stdout)
            XCTAssertTrue(job.stdout.contains("loopback refused"), job.stdout)
            try daemon.restartWorker("a")
        }
        let ip = ["/usr/sbin/ip", "/usr/bin/ip", "/sbin/ip"].first { FileManager.default.isExecutableFile(atPath: $0) }
        // `ip link` too, where the tier's commands_allow lets it run.
        if let ip, let link = try? daemon.run("a", [ip, "-o", "link"]), link.state == .succeeded {
            XCTAssertFalse(link.stdout.contains(",UP") || link.stdout.contains("<UP"), link.stdout)
        }
    }

    func testNetworkLoopbackBringsUpLoAlone() throws {
        try XCTSkipUnless(geteuid() == 0, "the sandbox needs root")
        let dir = try Daemon.tempDir()
        let policies = try Daemon.policiesWithOverrides(in: dir, ["a": "network = \"loopback\"\n"])
        daemon = try Daemon(dir: dir, policies: policies).start()
        try daemon.createTenant("a")
        try daemon.createTenant("b")
        try daemon.assertSandboxed("a")
        let job = try daemon.run("a", ["python3", "-c", Self.probe])
        XCTAssertEqual(job.state, .succeeded, job.stderr)
        XCTAssertTrue(job.stdout.contains("lo UP\n"), job.stdout)
        XCTAssertTrue(job.stdout.contains("up lo\n"), job.stdout)
        XCTAssertTrue(job.stdout.contains("loopback ping"), job.stdout)
        // b keeps the tier's "none".
        XCTAssertTrue(try daemon.run("b", ["python3", "-c", Self.probe]).stdout.contains("lo DOWN\n"))
    }
}
