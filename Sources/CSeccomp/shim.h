// Why: libseccomp (Debian's libseccomp-dev) compiles the tenants' seccomp profiles into BPF in the
// supervisor. Its action and argument macros are function-like and seccomp_rule_add is variadic:
// neither imports into Swift, so these inline wrappers stand in for them.
#include <errno.h>
#include <seccomp.h>
#include <unistd.h>

static inline uint32_t cs_act_allow(void) { return SCMP_ACT_ALLOW; }
static inline uint32_t cs_act_errno(int e) { return SCMP_ACT_ERRNO(e); }
static inline uint32_t cs_act_kill_process(void) { return SCMP_ACT_KILL_PROCESS; }

static inline int cs_rule(scmp_filter_ctx ctx, uint32_t action, int syscall) {
    return seccomp_rule_add_array(ctx, action, syscall, 0, NULL);
}

/// action when (arg & mask) == value.
static inline int cs_rule_masked_eq(scmp_filter_ctx ctx, uint32_t action, int syscall, unsigned arg,
                                    uint64_t mask, uint64_t value) {
    struct scmp_arg_cmp cmp = {arg, SCMP_CMP_MASKED_EQ, mask, value};
    return seccomp_rule_add_array(ctx, action, syscall, 1, &cmp);
}

/// action when (arg_a & mask_a) == value_a and (arg_b & mask_b) == value_b (socket(AF_NETLINK, *, NETLINK_ROUTE)).
static inline int cs_rule_masked_eq2(scmp_filter_ctx ctx, uint32_t action, int syscall, unsigned arg_a, uint64_t mask_a,
                                     uint64_t value_a, unsigned arg_b, uint64_t mask_b, uint64_t value_b) {
    struct scmp_arg_cmp cmp[2] = {{arg_a, SCMP_CMP_MASKED_EQ, mask_a, value_a}, {arg_b, SCMP_CMP_MASKED_EQ, mask_b, value_b}};
    return seccomp_rule_add_array(ctx, action, syscall, 2, cmp);
}

static inline uint32_t cs_arch_x86_64(void) { return SCMP_ARCH_X86_64; }
static inline uint32_t cs_arch_aarch64(void) { return SCMP_ARCH_AARCH64; }
static inline int cs_resolve(uint32_t arch, const char *name) { return seccomp_syscall_resolve_name_arch(arch, name); }
static inline int cs_nr_error(void) { return __NR_SCMP_ERROR; }

/// Binary-tree filter layout (libseccomp >= 2.5): a syscall is found in about log2(n)
/// comparisons instead of a linear scan. The kernel emulates the filter for every syscall
/// number when it is attached (the action cache), so a 300-rule linear filter cost the worker
/// about 0.4 ms of its start; the tree makes that, and every uncached check, short.
static inline int cs_optimize_binary_tree(scmp_filter_ctx ctx) {
    return seccomp_attr_set(ctx, SCMP_FLTATR_CTL_OPTIMIZE, 2);
}
