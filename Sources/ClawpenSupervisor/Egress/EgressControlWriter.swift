import CClawpenShim
import ClawpenProtocol
import ClawpenSystem
import Glibc
import NIOPosix
import Synchronization

/// The supervisor's end of the proxy's control socket. The daemon's event loop never blocks on
/// the proxy: frames (and the listener fds they carry, duplicated) are queued to a thread of
/// their own that writes them whole to the blocking socket, in order. A proxy that stops
/// reading is stuck, not a reason for every tenant to wait: when more than `maxPendingBytes`
/// are queued, or one write has been blocked for `maxBlockedSeconds`, `enqueue` says so and
/// the supervisor kills it (it is then started again like one that died).
final class EgressControlWriter: Sendable {
    /// Two of the largest frames (a trust store) and then some: a reload of many tenants fits.
    static let maxPendingBytes = 3 * EgressControl.maxFrameBytes
    static let maxBlockedSeconds = 10.0

    enum Outcome: Equatable {
        case queued
        /// The proxy has not read for too long: kill it.
        case stuck(String)
        /// The writer is closed (the proxy is gone).
        case closed
    }

    /// Its own duplicate of the control socket: the supervisor may close its fd at any time
    /// without a write here going to a reused descriptor number.
    private let fd: Int32
    private let thread = NIOThreadPool(numberOfThreads: 1)
    private let pending = Atomic<Int>(0)
    /// Monotonic nanoseconds when the write in progress began; 0 when none is.
    private let writingSince = Atomic<UInt64>(0)
    private let failed = Atomic<Bool>(false)
    private let finished = Atomic<Bool>(false)

    init?(controlFD: Int32) {
        let d = fcntl(controlFD, F_DUPFD_CLOEXEC, 0)
        guard d >= 0 else { return nil }
        fd = d
        thread.start()
    }

    /// Queues one frame, with `passFD` (duplicated here; the caller keeps its own) sent in the
    /// same message as the frame's first bytes.
    func enqueue(_ bytes: [UInt8], passFD: Int32 = -1) -> Outcome {
        guard !finished.load(ordering: .acquiring), !failed.load(ordering: .relaxed) else { return .closed }
        let since = writingSince.load(ordering: .relaxed)
        if since != 0 {
            let blocked = Double(ClawpenSystem.Clock.monotonicNanos() &- since) / 1e9
            if blocked > Self.maxBlockedSeconds { return .stuck("a control write has waited \(Int(blocked)) s for the proxy to read") }
        }
        let queued = pending.add(bytes.count, ordering: .relaxed).newValue
        if queued > Self.maxPendingBytes {
            pending.subtract(bytes.count, ordering: .relaxed)
            return .stuck("\(queued) bytes of control frames wait for the proxy to read (at most \(Self.maxPendingBytes))")
        }
        let extra = passFD >= 0 ? fcntl(passFD, F_DUPFD_CLOEXEC, 0) : -1
        if passFD >= 0 && extra < 0 {
            pending.subtract(bytes.count, ordering: .relaxed)
            return .closed
        }
        thread.submit { [self] state in
            defer {
                pending.subtract(bytes.count, ordering: .relaxed)
                if extra >= 0 { close(extra) }
            }
            guard case .active = state, !failed.load(ordering: .relaxed) else { return }
            writingSince.store(ClawpenSystem.Clock.monotonicNanos() | 1, ordering: .relaxed)
            let ok: Bool
            if extra >= 0 {
                ok = bytes.withUnsafeBytes { cp_send_with_fd(fd, $0.baseAddress, $0.count, extra) } == 0
            } else {
                ok = Sockets.sendAll(fd, bytes)
            }
            writingSince.store(0, ordering: .relaxed)
            // A frame half written leaves the stream unreadable: nothing more goes after it.
            if !ok { failed.store(true, ordering: .relaxed) }
        }
        return .queued
    }

    /// The proxy is gone: what is queued is dropped, the thread ends, the socket is closed.
    func finish() {
        guard !finished.exchange(true, ordering: .acquiringAndReleasing) else { return }
        failed.store(true, ordering: .relaxed)
        let fd = self.fd
        thread.shutdownGracefully { _ in close(fd) }
    }
}
