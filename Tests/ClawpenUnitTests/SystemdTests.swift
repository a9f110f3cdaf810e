@testable import ClawpenSystemd
import Glibc
import Logging
import XCTest

/// The systemd glue without systemd: field names, socket activation absent, and sd_notify
/// datagrams caught on a socket of the test's own (sd_notify only needs NOTIFY_SOCKET, as systemd-notify does).
final class SystemdTests: XCTestCase {
    func testMetadataKeysBecomeJournalFields() {
        XCTAssertEqual(JournalLogHandler.fieldName("tenant"), "TENANT")
        XCTAssertEqual(JournalLogHandler.fieldName("job_id"), "JOB_ID")
        XCTAssertEqual(JournalLogHandler.fieldName("worker_pid"), "WORKER_PID")
        XCTAssertEqual(JournalLogHandler.fieldName("setup-ms"), "SETUP_MS")
        XCTAssertNil(JournalLogHandler.fieldName("_private"), "journald's own trusted fields start with _")
        XCTAssertNil(JournalLogHandler.fieldName("9lives"))
        XCTAssertNil(JournalLogHandler.fieldName("message"), "metadata never overrides MESSAGE=")
        XCTAssertNil(JournalLogHandler.fieldName(String(repeating: "k", count: 65)))
    }

    func testNotActivatedWithoutListenFDs() throws {
        unsetenv("LISTEN_FDS"); unsetenv("LISTEN_PID")
        XCTAssertNil(try ListenFDs.takeUnixListener())
    }

    func testStderrIsNotTheJournalWithoutJournalStream() {
        unsetenv("JOURNAL_STREAM")
        XCTAssertFalse(LogSink.stderrIsJournal())
        setenv("JOURNAL_STREAM", "1:2", 1)
        defer { unsetenv("JOURNAL_STREAM") }
        XCTAssertFalse(LogSink.stderrIsJournal(), "a JOURNAL_STREAM that names another file")
    }

    func testNotifyMessagesReachTheNotifySocket() throws {
        let path = "/tmp/clawpen-notify-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0)
        XCTAssertGreaterThanOrEqual(fd, 0)
        defer { close(fd); unlink(path) }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            for (i, b) in path.utf8.enumerated() { raw[i] = b }
        }
        let bound = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        XCTAssertEqual(bound, 0)
        var tv = timeval(tv_sec: 2, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        func receive() -> String {
            var buf = [UInt8](repeating: 0, count: 4096)
            let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            return n > 0 ? String(decoding: buf[0..<n], as: UTF8.self) : ""
        }

        setenv("NOTIFY_SOCKET", path, 1)
        setenv("WATCHDOG_USEC", "10000000", 1)
        setenv("WATCHDOG_PID", "\(getpid())", 1)
        defer { unsetenv("NOTIFY_SOCKET"); unsetenv("WATCHDOG_USEC"); unsetenv("WATCHDOG_PID") }
        let n = Notifier()
        XCTAssertTrue(n.enabled)
        XCTAssertEqual(n.watchdogIntervalMicros, 5_000_000, "beats at half of WatchdogSec")
        n.ready(status: "tenants 1,\nworkers 0")
        let ready = receive()
        XCTAssertTrue(ready.contains("READY=1"), ready)
        XCTAssertTrue(ready.contains("STATUS=tenants 1, workers 0"), "one line: \(ready)")
        n.watchdog(status: "x")
        XCTAssertTrue(receive().hasPrefix("WATCHDOG=1\n"))
        n.stopping()
        XCTAssertTrue(receive().hasPrefix("STOPPING=1"))
        n.reloading()
        XCTAssertTrue(receive().hasPrefix("RELOADING=1"))
    }
}
