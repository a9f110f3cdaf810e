import ClawpenCore
import ClawpenProtocol
import ClawpenWire
import Glibc

/// How a suspended tenant's processes were stopped.
enum FreezeMethod: String {
    /// The tenant's cgroup was frozen: every process of the tenant, however it was started.
    case cgroupFreeze = "cgroup.freeze"
    /// No tenant cgroup: the worker sent SIGSTOP to each running job's process group. A process
    /// that left its job's process group (setsid) keeps running.
    case stopSignals = "SIGSTOP to each job's process group"
}

/// `clawpen tenant suspend|resume` and the freezing they ask for.
extension Supervisor {
    func suspend(_ t: TenantState, _ r: Responder) throws {
        if t.lifecycle.suspension == nil {
            let by = callerDescription(r)
            try store.setSuspension(tenant: t.name, by: by, at: Clock.now())
            perform(core.suspend(t.name, by: by))
            audit(
                tenant: t.name, caller: r, action: "tenant.suspend", rule: "operator",
                detail: "running jobs stopped by \(freezeMethods[t.name]?.rawValue ?? "nothing (no worker running)")")
            logger.notice("tenant suspended", metadata: ["tenant": "\(t.name)", "by": "\(by)"])
        }
        r.reply("tenant", [("tenant", view(t).json), ("state", .string(t.state.rawValue)), ("suspension", suspensionJSON(t))])
    }

    func resume(_ t: TenantState, _ r: Responder) throws {
        var lifted: [String] = []
        if let s = t.lifecycle.suspension { lifted.append("suspension by \(s.by)") }
        if let q = t.lifecycle.quarantine { lifted.append("quarantine (\(q.reason))") }
        try store.clearSuspension(tenant: t.name)
        perform(core.resume(t.name))
        if !lifted.isEmpty {
            audit(tenant: t.name, caller: r, action: "tenant.resume", rule: "operator", detail: "lifted " + lifted.joined(separator: " and "))
            logger.notice("tenant resumed", metadata: ["tenant": "\(t.name)", "lifted": "\(lifted.joined(separator: "; "))"])
        }
        r.reply(
            "tenant",
            [
                ("tenant", view(t).json), ("state", .string(t.state.rawValue)),
                ("lifted", .array(lifted.map(JSONValue.string))),
            ])
    }

    func suspensionJSON(_ t: TenantState) -> JSONValue {
        guard let s = t.lifecycle.suspension else { return .null }
        var o = JSONObjectBuilder()
        o.set("by", .string(s.by))
        o.set("since", s.since)
        o.set("frozen_by", freezeMethods[t.name].map { .string($0.rawValue) } ?? .null)
        return o.value
    }

    /// Stops the tenant's processes where they stand: its cgroup frozen, else its jobs'
    /// process groups stopped by the worker.
    func freeze(_ tenant: TenantName, _ w: WorkerRef) {
        if let cgroups, cgroups.setFrozen(tenant, true) {
            freezeMethods[tenant] = .cgroupFreeze
            return
        }
        freezeMethods[tenant] = .stopSignals
        guard let channel = workers[w.id]?.channel else { return } // not attached: it runs no job yet
        channel.writeAndFlush(channel.allocator.frame(SupervisorToWorker.pause.encoded()), promise: nil)
    }

    /// Undoes `freeze`. The worker hears first (the frame waits in its socket while it is frozen)
    /// so that it moves its jobs' deadlines by the pause before it looks at them again.
    func thaw(_ tenant: TenantName, _ w: WorkerRef, pausedMs: Int) {
        if let channel = workers[w.id]?.channel {
            let resume = SupervisorToWorker.resume(pausedMs: UInt32(clamping: max(0, pausedMs)))
            channel.writeAndFlush(channel.allocator.frame(resume.encoded()), promise: nil)
        }
        if freezeMethods.removeValue(forKey: tenant) == .cgroupFreeze, let cgroups, !cgroups.setFrozen(tenant, false) {
            logger.error("cannot thaw the tenant's cgroup; killing its worker", metadata: ["tenant": "\(tenant)", "errno": "\(errnoString(errno))"])
            kill(w.pid, SIGKILL)
        }
    }
}
