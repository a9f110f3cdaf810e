import ClawpenProtocol
import ClawpenWire

/// File operations (file.* requests) as the core sees them: work for the tenant's worker that
/// is not a job. The bytes never pass through here (the shell relays them between the client's
/// and the worker's channels); the core only decides when a worker is needed, when the waiting
/// operations may go to it, and that a worker with a transfer under way is not idle.
extension Core {
    /// Whether file operations may be done for `t` now (the same availability rules as a
    /// submit: not while the daemon stops, the tenant is suspended or quarantined).
    public func fileRefusal(_ t: TenantState) -> ProtocolError? {
        if draining { return ProtocolError(.unavailable, "the daemon is shutting down; try again when it is back") }
        if let s = t.lifecycle.suspension {
            return ProtocolError(
                .unavailable, "tenant '\(t.name)' is suspended (by \(s.by)); an operator lifts it with: clawpen tenant resume \(t.name)",
                details: ["rule": .string("suspended"), "suspended_by": .string(s.by)])
        }
        if let q = t.lifecycle.quarantine {
            let wait = max(1, Int(((q.retryAt - clock.monotonic()) * 1000).rounded(.up)))
            return ProtocolError(
                .unavailable,
                "tenant '\(t.name)' is quarantined: \(q.reason); its worker is tried again in \(wait) ms, or an operator lifts it with: clawpen tenant resume \(t.name)",
                details: ["rule": .string("crash_loop_max"), "retry_after_ms": .int(Int64(wait))])
        }
        return nil
    }

    /// `count` file operations for `t` wait for a worker: they go at once (`startFileOps`) if
    /// one can take them, else a worker is started (as for a job) and they go when it can.
    public func fileOpsRequested(_ t: TenantState, count: Int = 1) -> [Action] {
        t.fileOpsWaiting += count
        if let id = t.idleTimerFor { out.append(.cancel(.idle(t.name, worker: id))); t.idleTimerFor = nil }
        dispatch(t)
        return take()
    }

    /// A file operation sent to the worker is over (answered, failed, aborted, or its worker gone).
    public func fileOpEnded(_ tenant: TenantName) -> [Action] {
        guard let t = tenants[tenant] else { return [] }
        t.fileOpsActive = max(0, t.fileOpsActive - 1)
        if !draining { armIdleTimerIfIdle(t) }
        return take()
    }

    /// Part of `dispatch`: waiting operations go to a worker that can take them, or one is started.
    func dispatchFileOps(_ t: TenantState) {
        guard t.fileOpsWaiting > 0 else { return }
        if let w = t.lifecycle.dispatchTarget {
            t.fileOpsActive += t.fileOpsWaiting
            t.fileOpsWaiting = 0
            out.append(.startFileOps(t.name, w))
        } else {
            out += t.lifecycle.needWorker(draining: draining)
        }
    }

    func failWaitingFileOps(_ t: TenantState, _ error: ProtocolError) {
        guard t.fileOpsWaiting > 0 else { return }
        t.fileOpsWaiting = 0
        out.append(.failFileOps(t.name, error))
    }
}

extension TenantState {
    /// File operations wait for or run on the worker: it is not idle.
    var hasFileOps: Bool { fileOpsWaiting > 0 || fileOpsActive > 0 }
}
