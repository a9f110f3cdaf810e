import ClawpenPolicy
import Logging

/// What the service manager hears from the supervisor: the STATUS= line, the watchdog beat, and
/// a policy reload. Kept apart from Supervisor.swift; everything here runs on the supervisor's
/// event loop, like the rest of it.
extension Supervisor {
    /// One line for `systemctl status` (STATUS=): tenants, live workers, running and queued jobs.
    func statusLine() -> String {
        loop.preconditionInEventLoop()
        var workers = 0, running = 0, queued = 0
        for t in core.tenants.values {
            if t.lifecycle.worker != nil { workers += 1 }
            running += t.runningCount
            queued += t.queue.count
        }
        let mode = cgroups == nil ? "no tenant cgroups" : "cgroup \(cgroup.mode.rawValue)"
        return "\(core.draining ? "draining; " : "")tenants \(core.tenants.count), workers \(workers), running \(running), queued \(queued) (\(mode))"
    }

    /// The watchdog's question, asked on the loop that routes every request and every worker
    /// message: it can only be answered while that loop turns. A loop stuck in a handler, a
    /// store call that hangs, or a stopped process (SIGSTOP) answers nothing, and systemd's
    /// WatchdogSec= then restarts the service. Returns the status line to send with the beat.
    func watchdogTick() -> String {
        statusLine()
    }
}
