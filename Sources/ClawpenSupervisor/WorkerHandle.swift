import ClawpenCore
import ClawpenWire
import NIOCore

/// The supervisor's side of one running clawpen-worker: its process, its socket, and what the
/// shell measured of it. The decisions about it are the core's (`WorkerLifecycle`). Confined to
/// the supervisor's event loop.
final class WorkerHandle: @unchecked Sendable {
    let ref: WorkerRef
    let tenant: TenantName
    let startedAt: Double // monotonic
    var channel: Channel?
    /// Its socket closed (it is being reaped).
    var exited = false
    /// Seconds spent making its cgroup, cloning it (up to its exec) and building its mounts, for
    /// the ready log line.
    var startPhases: (cgroup: Double, spawn: Double, mounts: Double) = (0, 0, 0)
    /// Limits the tenant's cgroup enforces for this worker ("memory", "pids", "cpu").
    var cgroupEnforced: Set<String> = []
    /// Its end of the socketpair (the channel's descriptor), kept for a handoff.
    var socketFD: Int32 = -1
    /// Adopted from the previous supervisor (an upgrade): not this process's child, so it is
    /// watched by `pidFD` instead of wait4.
    var adopted = false
    var pidFD: Int32 = -1
    /// Asked to hand itself over (`handoff` sent), not yet answered.
    var handoffAsked = false

    var pid: Int32 { ref.pid }

    init(ref: WorkerRef, tenant: TenantName, startedAt: Double) {
        self.ref = ref; self.tenant = tenant; self.startedAt = startedAt
    }
}
