import CClawpenShim
import ClawpenSystem
import ClawpenWire

/// The seccomp facility, worker side: installing the program the supervisor compiled
/// (libseccomp stays out of the static worker). The job's stacked guard is installed by
/// cp_spawn in each job's child, just before exec (SpawnOptions.seccompProgram).
enum Seccomp {
    /// Last step of the setup: from here on the filter holds for the worker and every job it
    /// starts. Needs no_new_privs (set by the identity step).
    static func install(_ ctx: SetupContext) throws(StepFailure) {
        let plan = ctx.plan
        guard !plan.seccompProgram.isEmpty else { return }
        try StepFailure.check("seccomp", plan.seccompProfile) {
            plan.seccompProgram.withUnsafeBytes { cp_install_seccomp($0.baseAddress, $0.count) }
        }
    }
}
