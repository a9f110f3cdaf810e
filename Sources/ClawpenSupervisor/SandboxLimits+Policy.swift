import ClawpenWire
import ClawpenPolicy
import ClawpenSandbox

// The sandbox reads no policy: these turn a tenant's TierLimits into what its facilities take.

extension SandboxLimits {
    init(_ limits: TierLimits) {
        self.init(pidsMax: limits.pidsMax, memoryMaxBytes: Int64(limits.memoryMaxBytes), tmpSizeBytes: Int64(limits.tmpSizeBytes),
                  network: limits.network)
    }
}

extension CgroupLimits {
    init(_ limits: TierLimits) {
        self.init(memoryMaxBytes: Int64(limits.memoryMaxBytes), pidsMax: limits.pidsMax, cpuMax: limits.cpuMaxCgroupString,
                  cpuWeight: limits.cpuWeight)
    }
}

extension CgroupTree {
    func applyLimits(_ tenant: TenantName, _ limits: TierLimits) -> Set<String> { applyLimits(tenant, CgroupLimits(limits)) }
    func limitsInForce(_ tenant: TenantName, _ limits: TierLimits) -> InForce { limitsInForce(tenant, CgroupLimits(limits)) }
}
