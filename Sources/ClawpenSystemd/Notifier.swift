import CSystemd
import Glibc

/// sd_notify for Type=notify: readiness, a status line, watchdog beats, stopping and reloading.
/// Every call is a no-op when NOTIFY_SOCKET is unset (not started by systemd), so the daemon calls
/// them unconditionally.
public struct Notifier: Sendable {
    /// Half of WatchdogSec=, in microseconds, when the service manager expects beats from this
    /// process; else nil.
    public let watchdogIntervalMicros: Int64?
    public let enabled: Bool

    public init() {
        enabled = getenv("NOTIFY_SOCKET") != nil
        var usec: UInt64 = 0
        // unset_environment 0: the value stays for sd_notify's own checks; workers get a clean environment anyway.
        if sd_watchdog_enabled(0, &usec) > 0, usec > 0 {
            watchdogIntervalMicros = Int64(usec / 2)
        } else {
            watchdogIntervalMicros = nil
        }
    }

    @discardableResult
    public func send(_ state: String) -> Bool {
        guard enabled else { return false }
        return sd_notify(0, state) > 0
    }

    /// The store is open and the socket is serving.
    public func ready(status: String) { send("READY=1\nSTATUS=\(Self.oneLine(status))\nMAINPID=\(getpid())") }
    public func status(_ line: String) { send("STATUS=\(Self.oneLine(line))") }
    /// One beat; call it only from the code path whose liveness it proves (the router's loop).
    public func watchdog(status line: String) { send("WATCHDOG=1\nSTATUS=\(Self.oneLine(line))") }
    public func stopping() { send("STOPPING=1\nSTATUS=stopping: draining jobs, stopping workers") }
    public func reloading() { send("RELOADING=1\nSTATUS=reloading policies") }
    public func reloaded(status: String) { send("READY=1\nSTATUS=\(Self.oneLine(status))") }

    static func oneLine(_ s: String) -> String {
        String(s.map { $0 == "\n" ? " " : $0 })
    }
}
