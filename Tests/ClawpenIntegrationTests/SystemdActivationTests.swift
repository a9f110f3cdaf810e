import ClawpenTestSupport
import Foundation
import XCTest

/// The daemon as systemd starts it, without systemd as PID 1: `systemd-socket-activate` passes
/// the listening socket (LISTEN_FDS), and a datagram socket of the test's own stands in for
/// NOTIFY_SOCKET. (The VM test, scripts/vm-test, does the same under a real systemd.)
final class SystemdActivationTests: XCTestCase {
    func testSocketActivatedDaemonNotifiesReadyAndLeavesTheSocketToSystemd() throws {
        guard
            let activate = ["/usr/bin/systemd-socket-activate", "/bin/systemd-socket-activate"]
                .first(where: { FileManager.default.isExecutableFile(atPath: $0) })
        else {
            throw XCTSkip("systemd-socket-activate is not installed (Debian package systemd; scripts/install-deps)")
        }
        let d = try Daemon()
        defer { try? FileManager.default.removeItem(atPath: d.dir) }
        let notifyPath = d.dir + "/notify.sock"
        let notify = try DatagramReceiver(path: notifyPath)

        let p = Process()
        p.executableURL = URL(fileURLWithPath: activate)
        p.arguments = ["-l", d.socket, "-E", "NOTIFY_SOCKET=" + notifyPath, Daemon.clawpen] + d.serveArguments
        FileManager.default.createFile(atPath: d.logPath, contents: nil)
        let log = try FileHandle(forWritingTo: URL(fileURLWithPath: d.logPath))
        p.standardOutput = log
        p.standardError = log
        try p.run()
        defer { if p.isRunning { kill(p.processIdentifier, SIGKILL); p.waitUntilExit() } }

        // The first connection starts the daemon (it waits in the socket's backlog meanwhile).
        XCTAssertTrue(d.eventually(20) { (try? d.connect().call(.ping)) != nil }, d.log)
        let ready = notify.receive(until: "READY=1", timeout: 10)
        XCTAssertTrue(ready.contains("READY=1"), "READY=1 after the socket serves: \(ready)")
        XCTAssertTrue(ready.contains("STATUS=tenants 0, workers 0, running 0, queued 0"), ready)
        XCTAssertTrue(d.log.contains("socket_activated=true"), d.log)

        try d.createTenant("a")
        XCTAssertEqual(try d.run("a", ["echo", "hi"]).stdout, "hi\n")

        kill(p.processIdentifier, SIGTERM)
        let stopping = notify.receive(until: "STOPPING=1", timeout: 20)
        XCTAssertTrue(stopping.contains("STOPPING=1"), stopping)
        p.waitUntilExit()
        XCTAssertEqual(p.terminationStatus, 0, d.log)
        var st = stat()
        XCTAssertEqual(lstat(d.socket, &st), 0, "the socket systemd bound is systemd's: not unlinked")
    }
}

/// A bound AF_UNIX datagram socket that collects what sd_notify sends.
final class DatagramReceiver {
    let fd: Int32
    let path: String

    init(path: String) throws {
        self.path = path
        fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0)
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            for (i, b) in path.utf8.enumerated() where i < raw.count - 1 { raw[i] = b }
        }
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard fd >= 0, rc == 0 else { throw NSError(domain: "bind", code: Int(errno)) }
        var tv = timeval(tv_sec: 0, tv_usec: 200_000)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    deinit { close(fd); unlink(path) }

    /// Everything received until a message contains `marker`, or `timeout` passes.
    func receive(until marker: String, timeout: TimeInterval) -> String {
        var all = ""
        let deadline = Date().addingTimeInterval(timeout)
        var buf = [UInt8](repeating: 0, count: 4096)
        while Date() < deadline {
            let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n > 0 {
                let msg = String(decoding: buf[0..<n], as: UTF8.self)
                all += msg + "\n"
                if msg.contains(marker) { break }
            }
        }
        return all
    }
}
