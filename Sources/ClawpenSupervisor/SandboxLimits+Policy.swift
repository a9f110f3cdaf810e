import ClawpenWire
import ClawpenPolicy
import ClawpenSandbox
import ClawpenCore
import ClawpenSystem

// The sandbox reads no policy: these turn a tenant's TierLimits into what its facilities take.

extension SandboxLimits {
    init(_ limits: TierLimits) {
        self.init(
            pidsMax: limits.pidsMax, memoryMaxBytes: Int64(limits.memoryMaxBytes), tmpSizeBytes: Int64(limits.tmpSizeBytes),
            network: limits.network)
    }
}

extension CgroupLimits {
    init(_ limits: TierLimits) {
        self.init(
            memoryMaxBytes: Int64(limits.memoryMaxBytes), pidsMax: limits.pidsMax, cpuMax: limits.cpuMaxCgroupString,
            cpuWeight: limits.cpuWeight)
    }
}

extension CgroupTree {
    func applyLimits(_ tenant: TenantName, _ limits: TierLimits) -> Set<String> { applyLimits(tenant, CgroupLimits(limits)) }
    func limitsInForce(_ tenant: TenantName, _ limits: TierLimits) -> InForce { limitsInForce(tenant, CgroupLimits(limits)) }
}

extension CgroupError {
    /// As a failed worker start: the stage, errno and path kept apart.
    var workerFailure: WorkerFailure {
        switch self {
        case .create(let p, let e): WorkerFailure(.start, stage: "create cgroup", errno: e, errnoText: errnoString(e), detail: p)
        case .move(let p, let e): WorkerFailure(.start, stage: "move into cgroup", errno: e, errnoText: errnoString(e), detail: p)
        }
    }
}

extension WorkerFailure {
    /// A sandbox or spawn step that failed, with its errno in words.
    init(_ kind: Kind, _ f: StepFailure) {
        self.init(kind, stage: f.step, errno: f.errno, errnoText: errnoString(f.errno), detail: f.detail)
    }
}
