/// Loads and validates a policy directory:
///
///     tiers/free.toml tiers/pro.toml tiers/enterprise.toml   required, every limit key set
///     tenants/<name>.toml                                    optional overrides (other files ignored)
///     seccomp/  access.toml                                  not read yet
public enum PolicyLoader {
    /// The compiled-in policy set, identical to the shipped `policies/` (the daemon uses it when
    /// the policies directory does not exist).
    public static let embedded = PolicySet(
        source: .embedded, free: .defaults(for: .free), pro: .defaults(for: .pro),
        enterprise: .defaults(for: .enterprise))

    /// The policy set in `directory`; throws the first problem found (`check` lists them all).
    public static func load(directory: String) throws(PolicyError) -> PolicySet {
        let (set, errors) = analyze(directory: directory)
        if let first = errors.first { throw first }
        guard let set else { throw PolicyError.missingDirectory(directory) }  // unreachable: no errors means a set
        return set
    }

    /// Every problem in `directory`, in file order; empty when `load` would succeed.
    public static func check(directory: String) -> [PolicyError] {
        analyze(directory: directory).errors
    }

    /// Tenant names, as in the design: `^[a-z0-9][a-z0-9_-]{0,62}$`.
    public static func isValidTenantName(_ name: String) -> Bool {
        let bytes = Array(name.utf8)
        guard let first = bytes.first, bytes.count <= 63, isLowerAlnum(first) else { return false }
        return bytes.dropFirst().allSatisfy { isLowerAlnum($0) || $0 == UInt8(ascii: "_") || $0 == UInt8(ascii: "-") }
    }

    // MARK: - Implementation

    static func analyze(directory: String) -> (set: PolicySet?, errors: [PolicyError]) {
        guard FileSystem.isDirectory(directory) else { return (nil, [.missingDirectory(directory)]) }
        var errors: [PolicyError] = []

        var tiers: [Tier: TierLimits] = [:]
        for tier in Tier.allCases {
            let file = FileSystem.join(directory, "tiers/\(tier.rawValue).toml")
            guard let root = readDocument(file, missingIsError: true, errors: &errors) else { continue }
            let decoded = decode(root, file: file, isTenantFile: false, errors: &errors)
            for key in LimitKey.allCases where decoded.lines[key] == nil {
                errors.append(.missingKey(file: file, key: key.rawValue))
            }
            guard let limits = decoded.values.complete else { continue }
            if let problem = timeoutProblem(limits) {
                errors.append(
                    .invalidValue(
                        file: file, line: decoded.lines[.timeoutDefault] ?? 0, key: LimitKey.timeoutDefault.rawValue,
                        reason: problem))
            } else if decoded.valid {
                tiers[tier] = limits
            }
        }
        checkForStrayTierFiles(directory: directory, errors: &errors)

        var overrides: [String: TenantOverride] = [:]
        let tenantsDir = FileSystem.join(directory, "tenants")
        if FileSystem.exists(tenantsDir) {
            if let names = FileSystem.list(tenantsDir) {
                for name in names where name.hasSuffix(".toml") && !name.hasPrefix(".") {
                    let file = FileSystem.join(tenantsDir, name)
                    let tenant = String(name.dropLast(5))
                    guard isValidTenantName(tenant) else {
                        errors.append(
                            .invalidFileName(
                                file: file,
                                reason: "'\(name)' is not <tenant>.toml for a valid tenant name (tenant names match ^[a-z0-9][a-z0-9_-]{0,62}$)"))
                        continue
                    }
                    guard let root = readDocument(file, missingIsError: false, errors: &errors) else { continue }
                    let decoded = decode(root, file: file, isTenantFile: true, errors: &errors)
                    guard decoded.valid else { continue }
                    if checkOverride(decoded, file: file, tiers: tiers, errors: &errors) {
                        overrides[tenant] = decoded.values
                    }
                }
            } else {
                errors.append(.unreadable(file: tenantsDir, reason: "not a directory that can be listed"))
            }
        }

        guard errors.isEmpty, let free = tiers[.free], let pro = tiers[.pro], let enterprise = tiers[.enterprise]
        else { return (nil, errors) }
        return (
            PolicySet(
                source: .directory(directory), free: free, pro: pro, enterprise: enterprise,
                tenantOverrides: overrides),
            []
        )
    }

    private static func readDocument(_ file: String, missingIsError: Bool, errors: inout [PolicyError]) -> TOMLTable? {
        switch FileSystem.read(file) {
        case .missing:
            if missingIsError { errors.append(.missingFile(file)) }
            return nil
        case .failed(let reason):
            errors.append(.unreadable(file: file, reason: reason))
            return nil
        case .text(let text):
            do {
                return try TOMLDocument.parse(text, file: file).root
            } catch {
                errors.append(PolicyError(error))
                return nil
            }
        }
    }

    /// tiers/*.toml that is not one of the three tiers would be silently ignored: say so instead.
    private static func checkForStrayTierFiles(directory: String, errors: inout [PolicyError]) {
        let tiersDir = FileSystem.join(directory, "tiers")
        guard let names = FileSystem.list(tiersDir) else { return }
        let known = Set(Tier.allCases.map { "\($0.rawValue).toml" })
        for name in names where name.hasSuffix(".toml") && !name.hasPrefix(".") && !known.contains(name) {
            errors.append(
                .invalidFileName(
                    file: FileSystem.join(tiersDir, name),
                    reason: "unknown tier '\(name.dropLast(5))' (the tiers are free, pro and enterprise; limits for one tenant go in tenants/<name>.toml)"))
        }
    }

    struct Decoded {
        var values = TenantOverride()
        /// The line of every limit key present (even if its value was rejected).
        var lines: [LimitKey: Int] = [:]
        var tierLine: Int?
        var valid = true
    }

    /// The keys of one file, each checked on its own; problems go to `errors`.
    private static func decode(
        _ root: TOMLTable, file: String, isTenantFile: Bool, errors: inout [PolicyError]
    ) -> Decoded {
        var out = Decoded()
        for entry in root.entries {
            do throws(PolicyError) {
                if let key = LimitKey(rawValue: entry.key) {
                    out.lines[key] = entry.line
                    try key.decode(entry.value, file: file, line: entry.line, into: &out.values)
                } else if isTenantFile && entry.key == "tier" {
                    out.tierLine = entry.line
                    out.values.tier = try decodeTier(entry.value, file: file, line: entry.line)
                } else {
                    throw PolicyError.unknownKey(file: file, line: entry.line, key: entry.key)
                }
            } catch {
                errors.append(error)
                out.valid = false
            }
        }
        return out
    }

    private static func decodeTier(_ value: TOMLValue, file: String, line: Int) throws(PolicyError) -> Tier {
        let names = Tier.allCases.map { "\"\($0.rawValue)\"" }.joined(separator: ", ")
        guard case .string(let s) = value else {
            throw .wrongType(
                file: file, line: line, key: "tier", expected: "a tier name string (\(names))",
                found: value.shortDescription)
        }
        guard let tier = Tier(rawValue: s) else {
            throw .invalidValue(file: file, line: line, key: "tier", reason: "\(quoted(s)) is not a tier (use \(names))")
        }
        return tier
    }

    /// The checks that involve more than one key.
    private static func timeoutProblem(_ l: TierLimits) -> String? {
        guard l.timeoutDefaultSeconds > l.timeoutMaxSeconds else { return nil }
        return "timeout_default_s (\(formatNumber(l.timeoutDefaultSeconds)) s) is longer than timeout_max_s (\(formatNumber(l.timeoutMaxSeconds)) s): lower timeout_default_s or raise timeout_max_s"
    }

    /// An override must still be consistent once applied to the tier(s) it can apply to.
    private static func checkOverride(
        _ decoded: Decoded, file: String, tiers: [Tier: TierLimits], errors: inout [PolicyError]
    ) -> Bool {
        let candidates = decoded.values.tier.map { [$0] } ?? Tier.allCases
        var failing: [Tier] = []
        var problem: String?
        for tier in candidates {
            guard let base = tiers[tier] else { continue }
            if let p = timeoutProblem(decoded.values.applied(to: base)) {
                failing.append(tier)
                problem = problem ?? p
            }
        }
        guard let problem else { return true }
        let key: LimitKey = decoded.lines[.timeoutDefault] != nil ? .timeoutDefault : .timeoutMax
        let tierNote = decoded.values.tier != nil ? "tier" : "tier\(failing.count == 1 ? "" : "s")"
        errors.append(
            .invalidValue(
                file: file, line: decoded.lines[key] ?? decoded.tierLine ?? 1, key: key.rawValue,
                reason: "\(problem) (with the limits of \(tierNote) \(failing.map(\.rawValue).joined(separator: ", ")))"))
        return false
    }
}

private func isLowerAlnum(_ b: UInt8) -> Bool {
    (b >= UInt8(ascii: "a") && b <= UInt8(ascii: "z")) || (b >= UInt8(ascii: "0") && b <= UInt8(ascii: "9"))
}

/// 30 -> "30", 0.5 -> "0.5".
func formatNumber(_ d: Double) -> String {
    if d.isFinite, d == d.rounded(), abs(d) < 1e15 { return String(Int64(d)) }
    return String(d)
}
