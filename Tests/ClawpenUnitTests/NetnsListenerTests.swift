import CClawpenShim
import ClawpenSystem
import Foundation
import Glibc
import Synchronization
import XCTest

/// The egress listener is made by the supervisor in a worker's network namespace while the
/// worker brings `lo` up in it: the two race. SIOCGIFFLAGS reads IFF_UP without the rtnl lock,
/// so one side can see `lo` up a moment before the kernel has given it 127.0.0.1, and its bind
/// failed with EADDRNOTAVAIL: the tenant's worker had no proxy (curl: "Failed to connect to
/// 127.0.0.1 port 3128") now and then in full test runs.
final class NetnsListenerTests: XCTestCase {
    func testAListenerMadeWhileTheNamespacesLoopbackComesUpAlwaysBinds() throws {
        try XCTSkipUnless(geteuid() == 0, "making network namespaces needs root")
        var failures: [String] = []
        for round in 0..<300 {
            let ns = cp_netns_create()
            XCTAssertGreaterThanOrEqual(ns, 0, "cp_netns_create: \(errnoString(errno))")
            guard ns >= 0 else { return }
            // The "worker": another thread bringing lo up (and listening, to see it usable), at
            // the same moment as this one.
            let start = DispatchSemaphore(value: 0)
            let done = DispatchSemaphore(value: 0)
            let other = Mutex<(fd: Int32, errno: Int32)>((-1, 0))
            Thread.detachNewThread {
                start.wait()
                let fd = cp_netns_listen_tcp(ns, 3129)
                let e = errno
                other.withLock { $0 = (fd, e) }
                done.signal()
            }
            start.signal()
            let fd = cp_netns_listen_tcp(ns, 3128)
            let e = errno
            done.wait()
            let (otherFD, otherErrno) = other.withLock { $0 }
            if fd < 0 { failures.append("round \(round): 3128: \(errnoString(e))") }
            if otherFD < 0 { failures.append("round \(round): 3129: \(errnoString(otherErrno))") }
            if fd >= 0 { close(fd) }
            if otherFD >= 0 { close(otherFD) }
            close(ns)
        }
        XCTAssertEqual(failures, [], "\(failures.count) binds failed")
    }
}
