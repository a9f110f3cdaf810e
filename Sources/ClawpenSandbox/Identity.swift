import CClawpenShim
import ClawpenSystem
import ClawpenWire
import Glibc

/// The identity facility, worker side: hostname, rlimits, and becoming the tenant's uid for
/// good (cp_drop_identity). Who owns the tenant's files is the workspace's business (Workspace).
enum Identity {
    static func hostname(_ ctx: SetupContext) throws(StepFailure) {
        try StepFailure.check("sethostname") { cp_sethostname(ctx.plan.tenant) }
    }

    /// The plan's ceilings, each no higher than the hard limit the worker was started with:
    /// raising a hard limit needs CAP_SYS_RESOURCE in the first user namespace, so a host (or a
    /// unit's LimitNOFILE=) below the plan's 4096 descriptors would otherwise fail every
    /// worker's setup. A lower limit is only stricter.
    static func rlimits(_ ctx: SetupContext) throws(StepFailure) {
        for l in ctx.plan.workerLimits {
            var current = rlimit()
            let inherited = getrlimit(__rlimit_resource_t(UInt32(l.resource)), &current) == 0 ? UInt64(current.rlim_max) : UInt64.max
            let hard = min(l.hard, inherited)
            var rl = rlimit(rlim_cur: rlim_t(min(l.soft, hard)), rlim_max: rlim_t(hard))
            try StepFailure.check("setrlimit \(SandboxPlan.limitName(l.resource))") { setrlimit(__rlimit_resource_t(UInt32(l.resource)), &rl) }
        }
    }

    /// The privilege boundary: root with every capability before, the tenant's uid with none after.
    static func drop(_ ctx: SetupContext) throws(StepFailure) {
        var failed: Int32 = 0
        if cp_drop_identity(ctx.plan.uid, ctx.plan.gid, &failed) != 0 {
            throw StepFailure(step: String(cString: cp_identity_step_name(failed)), errno: errno, detail: "uid \(ctx.plan.uid)")
        }
    }

    static func enterHome(_ ctx: SetupContext) throws(StepFailure) {
        try StepFailure.check("chdir /home") { chdir("/home") }
    }
}
