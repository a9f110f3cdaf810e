import CClawpenShim
import ClawpenSystem
import Glibc
import Synchronization

/// The network facility. Supervisor side: fresh network namespaces made ahead of need
/// (`NetnsPool`). Worker side: `lo` (`Loopback`).

/// Fresh network namespaces (`lo` down) made ahead of need: creating one is the slowest part
/// of cloning a sandboxed worker (about 0.6 ms here, and its teardown holds the kernel's rtnl
/// lock), so a new tenant's first job should not wait for it. Each namespace is used by exactly
/// one worker: the pool hands out its fd once and closes its own copy. Filled by the
/// supervisor's spawn thread; taken on the event loop.
public final class NetnsPool: Sendable {
    private let fds = Mutex<[Int32]>([])
    public let target: Int

    public init(target: Int) { self.target = target }

    /// A namespace's fd (the caller closes it after the spawn), or -1 when the pool is empty:
    /// the worker then makes its own with CLONE_NEWNET.
    public func take() -> Int32 { fds.withLock { $0.popLast() } ?? -1 }

    public var count: Int { fds.withLock { $0.count } }

    /// Tops the pool up; runs on the spawn thread (it unshares its own network namespace for a
    /// moment). Returns the error of a failed creation, if any.
    public func refill() -> Int32? {
        while count < target {
            let fd = cp_netns_create()
            guard fd >= 0 else { return errno }
            fds.withLock { $0.append(fd) }
        }
        return nil
    }

    public func drain() {
        for fd in fds.withLock({
            let all = $0; $0.removeAll(); return all
        }) { close(fd) }
    }
}

/// The worker's side: `lo`, the only interface a worker's namespace has.
public enum Loopback {
    /// Brings `lo` up (nothing to do when it is up already). Only for `network = "loopback"`.
    public static func up() throws(StepFailure) {
        try StepFailure.check("bring up lo") { cp_loopback_up() }
    }
}
