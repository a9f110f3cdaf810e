import CClawpenShim
import CSeccomp
import ClawpenPolicy
import Glibc

/// Compiles a SeccompProfile into a BPF program with libseccomp, in the supervisor: the worker
/// only installs the bytes (seccomp_load allocates, which a post-fork child must not do, and the worker stays lean).
enum SeccompCompiler {
    struct Failure: Error, CustomStringConvertible {
        let profile: String
        let message: String
        var description: String { "seccomp profile '\(profile)': \(message)" }
    }

    /// A name must be a syscall on at least one architecture clawpen supports (x86_64, aarch64);
    /// one that this architecture lacks (open on aarch64) is skipped.
    static func unknownNames(_ profile: SeccompProfile) -> [String] {
        (profile.allow + profile.kill).filter { name in
            cs_resolve(cs_arch_x86_64(), name) == cs_nr_error() && cs_resolve(cs_arch_aarch64(), name) == cs_nr_error()
        }
    }

    /// The worker's program. With restrict_namespaces it allows clone3 (the worker clones jobs
    /// into their cgroups with it); each job installs `jobGuard()` on top, which refuses clone3
    /// again. Filters stack and the strictest answer wins, so a job is held to the profile.
    static func compile(_ profile: SeccompProfile, allowClone3: Bool = false) throws(Failure) -> [UInt8] {
        if let bad = unknownNames(profile).first {
            throw Failure(profile: profile.name, message: "'\(bad)' is not a syscall on x86_64 or aarch64")
        }
        guard let ctx = seccomp_init(cs_act_errno(EPERM)) else { throw Failure(profile: profile.name, message: "seccomp_init failed") }
        defer { seccomp_release(ctx) }
        let opt = cs_optimize_binary_tree(ctx)
        guard opt == 0 else { throw Failure(profile: profile.name, message: "binary-tree layout: \(String(cString: strerror(-opt)))") }
        func add(_ name: String, _ action: UInt32) throws(Failure) {
            let nr = seccomp_syscall_resolve_name(name)
            guard nr != cs_nr_error() else { return } // not on this architecture
            if profile.restrictNamespaces && name == "clone" {
                // Allowed only without CLONE_NEW* flags (arg 0 is the flags on x86_64 and aarch64).
                let rc = cs_rule_masked_eq(ctx, action, nr, 0, cp_namespace_clone_flags(), 0)
                guard rc == 0 else { throw Failure(profile: profile.name, message: "rule for clone: \(String(cString: strerror(-rc)))") }
                return
            }
            if action == cs_act_allow(), name == "socket" || name == "socketpair" {
                // Only the profile's address families (SocketFamily); any other domain falls
                // through to the default action, EPERM. socketpair exists for AF_UNIX only.
                let families = name == "socket" ? profile.socketFamilies : profile.socketFamilies.filter { $0 == .unix }
                for family in families {
                    let rc: Int32
                    if let proto = family.protocolArgument {
                        rc = cs_rule_masked_eq2(ctx, action, nr, 0, 0xFFFF_FFFF, family.domain, 2, 0xFFFF_FFFF, proto)
                    } else {
                        rc = cs_rule_masked_eq(ctx, action, nr, 0, 0xFFFF_FFFF, family.domain)
                    }
                    guard rc == 0 else {
                        throw Failure(profile: profile.name, message: "rule for \(name)(\(family.rawValue)): \(String(cString: strerror(-rc)))")
                    }
                }
                return
            }
            let rc = cs_rule(ctx, action, nr)
            guard rc == 0 else { throw Failure(profile: profile.name, message: "rule for \(name): \(String(cString: strerror(-rc)))") }
        }
        for name in profile.allow { try add(name, cs_act_allow()) }
        // Every job enters a Landlock domain of its own under the worker's filter (JobIsolation):
        // these two only ever take rights away, so every profile allows them.
        for name in ["landlock_create_ruleset", "landlock_restrict_self"] where !profile.allow.contains(name) && !profile.kill.contains(name) {
            try add(name, cs_act_allow())
        }
        for name in profile.kill { try add(name, cs_act_kill_process()) }
        if profile.restrictNamespaces {
            // clone3 passes its flags in memory a filter cannot read: ENOSYS makes libc use clone.
            let nr = seccomp_syscall_resolve_name("clone3")
            if nr != cs_nr_error() { _ = cs_rule(ctx, allowClone3 ? cs_act_allow() : cs_act_errno(ENOSYS), nr) }
        }
        return try export(ctx, profile.name)
    }

    /// inotify events that report reads, opens and closes-without-write (IN_ACCESS, IN_OPEN,
    /// IN_CLOSE_NOWRITE). On the read-only host paths every tenant shares (/usr, /etc's binds)
    /// the inodes are the host's, so a watch there would show a tenant what other tenants and the
    /// host run and read. A watch asking for any of them fails with EPERM; watches for changes
    /// (create, modify, close-write, delete, move, attrib), what dev servers use, keep working,
    /// on the tenant's own files as anywhere.
    static let inotifyReadEvents: [UInt64] = [0x0000_0001, 0x0000_0020, 0x0000_0010]

    /// The filter every job adds on top of its worker's: clone3 fails with ENOSYS (libc falls
    /// back to clone, whose flags the worker's filter checks), and inotify_add_watch with a read
    /// event in its mask (argument 2) fails with EPERM (`inotifyReadEvents`). A per-worker
    /// read-only overlay of the shared paths would give each worker inodes of its own instead,
    /// but mounting one cost ~0.75 ms here, a sixth of a cold start.
    static func jobGuard() throws(Failure) -> [UInt8] {
        guard let ctx = seccomp_init(cs_act_allow()) else { throw Failure(profile: "job guard", message: "seccomp_init failed") }
        defer { seccomp_release(ctx) }
        let nr = seccomp_syscall_resolve_name("clone3")
        if nr != cs_nr_error() { _ = cs_rule(ctx, cs_act_errno(ENOSYS), nr) }
        let watch = seccomp_syscall_resolve_name("inotify_add_watch")
        if watch != cs_nr_error() {
            // One rule per bit: libseccomp ORs the rules of one syscall.
            for bit in inotifyReadEvents {
                let rc = cs_rule_masked_eq(ctx, cs_act_errno(EPERM), watch, 2, bit, bit)
                guard rc == 0 else { throw Failure(profile: "job guard", message: "rule for inotify_add_watch: \(String(cString: strerror(-rc)))") }
            }
        }
        return try export(ctx, "job guard")
    }

    private static func export(_ ctx: scmp_filter_ctx, _ name: String) throws(Failure) -> [UInt8] {
        let profileName = name
        let fd = cp_memfd("seccomp-bpf")
        guard fd >= 0 else { throw Failure(profile: profileName, message: "memfd: \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        let rc = seccomp_export_bpf(ctx, fd)
        guard rc == 0 else { throw Failure(profile: profileName, message: "export: \(String(cString: strerror(-rc)))") }
        let size = Int(lseek(fd, 0, SEEK_END))
        var program = [UInt8](repeating: 0, count: size)
        let n = program.withUnsafeMutableBytes { pread(fd, $0.baseAddress, size, 0) }
        guard n == size, size > 0 else { throw Failure(profile: profileName, message: "export: short read") }
        return program
    }
}
