@_exported import enum ClawpenCore.DispatchMode
@_exported import struct ClawpenCore.ClientBudget
import ClawpenCore
/// Everything `clawpen serve` is configured with, after flags, environment and config file have
/// been merged (flag > environment > config file > default).
public struct ServeConfig: Sendable {
    public var socketPath = "/run/clawpen/clawpen.sock"
    public var stateDir = "/var/lib/clawpen"
    public var workspaceRoot = "/workspace"
    public var policiesDir = "/etc/clawpen/policies"
    /// false when policiesDir is the built-in default: then a missing directory means "use the
    /// embedded defaults"; an explicitly named directory must exist.
    public var policiesDirExplicit = false
    /// The clawpen-worker executable; default: next to the running clawpen.
    public var workerPath: String?
    /// A worker with nothing to do is stopped after this long (scale to zero).
    public var idleTimeoutSeconds = 300.0
    public var maxFrameBytes = 16 * 1024 * 1024
    /// On SIGTERM, running jobs get this long to finish before they are killed (and re-queued
    /// at the next start).
    public var shutdownGraceSeconds = 10.0
    public var uidRange: ClosedRange<Int> = 200_000...265_535
    /// fsync every accepted job before acknowledging it (survives power loss, not only a crash).
    public var fsyncAccepts = true
    /// A client that leaves a frame half-sent this long is disconnected.
    public var partialFrameTimeoutSeconds = 30.0
    /// Bytes of replies and output queued for one client connection before it is disconnected
    /// (`--client-buffer-bytes`; ClientBudget).
    public var clientBufferBytes = ClientBudget.defaultPerClient
    /// Requests a second one client connection may send while others are served
    /// (`--client-requests-per-second`; ClientPacing); 0: no limit.
    public var clientRequestsPerSecond = ClientPacing.defaultRequestsPerSecond
    public var clientPacing: ClientPacing? { clientRequestsPerSecond > 0 ? ClientPacing(requestsPerSecond: clientRequestsPerSecond) : nil }
    /// Waits (`job.wait`, ...) one connection and all of them may hold (`--client-waits`,
    /// `--all-clients-waits`; JobWaiters).
    public var waitLimits = WaitLimits.default
    /// The same for all connections together, with their half-received frames
    /// (`--all-clients-buffer-bytes`); nil: ClientBudget.defaultAllClients(perClient:maxFrameBytes:).
    public var allClientsBufferBytes: Int?
    /// Control socket connections from one peer uid and from all (`--max-clients-per-uid`,
    /// `--max-clients`; ControlConnections); nil: derived from RLIMIT_NOFILE.
    public var maxClientsPerUID: Int?
    public var maxClients: Int?
    public func controlConnections(descriptors: Int) -> ControlConnections {
        let all = maxClients ?? ControlConnections.defaultAll(descriptors: descriptors)
        return ControlConnections(all: all, perUID: maxClientsPerUID ?? ControlConnections.defaultPerUID(all: all))
    }
    public var clientBudget: ClientBudget {
        ClientBudget(
            perClient: clientBufferBytes,
            allClients: allClientsBufferBytes ?? ClientBudget.defaultAllClients(perClient: clientBufferBytes, maxFrameBytes: maxFrameBytes))
    }
    /// Spare workers kept cloned and waiting, so that a new tenant's first job skips the clone,
    /// the namespaces and the exec (0: none). nil: automatic: 2 without tenant cgroups; 0 with
    /// them, because a spare must then be migrated into its tenant's cgroup, which waits for an
    /// RCU grace period (10-20 ms on an idle host) and costs more than a fresh clone straight
    /// into the cgroup saves, except in bursts of new tenants (BENCHMARKS.md).
    public var prespawnWorkers: Int?
    /// How the router picks the next tenant (fair, or fifo for comparison).
    public var dispatchMode: DispatchMode = .fair
    /// Jobs running at once across all tenants; nil: 4 per online core.
    public var maxRunning: Int?
    /// Slots only tenants with nothing running may take; nil: a quarter of maxRunning, at least 1.
    public var reservedSlots: Int?
    /// Refuse to start unless the tenant cgroups get real memory, pids and cpu controllers
    /// (`--require-cgroup-limits`; the systemd unit sets it): no rlimit fallback in production.
    public var requireCgroupLimits = false
    /// `--worker-cgroup DIR`: the tenants' cgroups go under this delegated cgroup of another
    /// unit (clawpen-workers.service) instead of the daemon's own, so that a restart of the
    /// daemon's unit (an upgrade with the descriptor store) leaves them, and their workers, be.
    public var workerCgroup: String?
    /// `--metrics-listen HOST:PORT`: the HTTP server of /metrics, /healthz and /readyz; nil: none.
    public var metricsListen: String?
    /// Where the host registers subordinate uid and gid ranges (UIDRange). Other paths are for
    /// tests only (`--subuid-file`, `--subgid-file`).
    public var subuidPath = "/etc/subuid"
    public var subgidPath = "/etc/subgid"
    /// The master key of the secret store (`--master-key-file`); nil: the systemd credential
    /// `clawpen-master-key`, else `<state-dir>/master.key` (generated 0600 at the first start).
    public var masterKeyFile: String?
    /// CA certificates the egress proxy verifies upstream servers against, instead of the host's
    /// trust store (`--egress-ca-file`; PEM).
    public var egressCAFile: String?
    /// The egress proxy executable; default: `clawpen-egress` next to the running clawpen.
    public var egressPath: String?
    /// The uid and gid the egress proxy runs as; nil: the uid just below the tenant range.
    public var egressUID: Int?

    public init() {}
}
