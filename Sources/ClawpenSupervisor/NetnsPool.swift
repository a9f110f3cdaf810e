import CClawpenShim
import Glibc
import NIOConcurrencyHelpers

/// Fresh network namespaces (with `lo` up) made ahead of need: creating one is the slowest part
/// of cloning a sandboxed worker (about 0.6 ms here, and its teardown holds the kernel's rtnl
/// lock), so a new tenant's first job should not wait for it. Each namespace is used by exactly
/// one worker: the pool hands out its fd once and closes its own copy. Filled by the
/// supervisor's spawn thread; taken on the event loop.
final class NetnsPool: Sendable {
    private let fds = NIOLockedValueBox<[Int32]>([])
    let target: Int

    init(target: Int) { self.target = target }

    /// A namespace's fd (the caller closes it after the spawn), or -1 when the pool is empty:
    /// the worker then makes its own with CLONE_NEWNET.
    func take() -> Int32 { fds.withLockedValue { $0.popLast() } ?? -1 }

    var count: Int { fds.withLockedValue { $0.count } }

    /// Tops the pool up; runs on the spawn thread (it unshares its own network namespace for a
    /// moment). Returns the error of a failed creation, if any.
    func refill() -> Int32? {
        while count < target {
            let fd = cp_netns_create()
            guard fd >= 0 else { return errno }
            fds.withLockedValue { $0.append(fd) }
        }
        return nil
    }

    func drain() {
        for fd in fds.withLockedValue({ let all = $0; $0.removeAll(); return all }) { close(fd) }
    }
}
