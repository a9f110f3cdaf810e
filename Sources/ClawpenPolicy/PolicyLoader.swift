import ClawpenTOML
import ClawpenWire

/// Loads and validates a policy directory:
///
///     tiers/free.toml tiers/pro.toml tiers/enterprise.toml   required, every limit key set
///     tenants/<name>.toml                                    optional overrides (other files ignored)
///     seccomp/<profile>.toml                                 optional (else the embedded profiles);
///                                                            every profile a policy names must exist
///     access.toml                                            optional (else only root may connect)
///
/// and, from the daemon's state directory, `quota/<name>.toml` (written by `clawpen tenant
/// set-quota`), applied on top of tenants/<name>.toml: tier -> tenants/ -> quota/.
public enum PolicyLoader {
    /// The compiled-in policy set, identical to the shipped `policies/` (the daemon uses it when
    /// the policies directory does not exist). Only root is an operator; no tenant grants.
    public static let embedded = PolicySet(
        source: .embedded, free: .defaults(for: .free), pro: .defaults(for: .pro),
        enterprise: .defaults(for: .enterprise), access: .rootOnly, seccompProfiles: SeccompProfiles.embedded)

    /// The policy set in `directory`; throws the first problem found (`check` lists them all).
    public static func load(directory: String) throws(PolicyError) -> PolicySet {
        try load(directory: directory, quotaDirectory: nil)
    }

    /// The policy set in `directory` (nil: the embedded defaults) with the set-quota overrides of
    /// `quotaDirectory` (nil or absent: none) on top. Throws the first problem found.
    public static func load(directory: String?, quotaDirectory: String?) throws(PolicyError) -> PolicySet {
        let report = analyze(directory: directory, quotaDirectory: quotaDirectory)
        if let first = report.problems.first { throw first }
        guard let set = report.policySet else { throw PolicyError.missingDirectory(directory ?? "") } // unreachable
        return set
    }

    /// Every problem in `directory`, in file order; empty when `load` would succeed.
    public static func check(directory: String) -> [PolicyError] {
        analyze(directory: directory, quotaDirectory: nil).problems
    }

    /// Every problem, and what was found, for `clawpen policy check`.
    public static func check(directory: String?, quotaDirectory: String?) -> PolicyCheckReport {
        analyze(directory: directory, quotaDirectory: quotaDirectory)
    }

    /// Tenant (and profile) file names follow the tenant name rule: `TenantName` is its only
    /// validator.
    public static func isValidTenantName(_ name: String) -> Bool { (try? TenantName(validating: name)) != nil }

    // MARK: - Implementation

    static func analyze(directory: String?, quotaDirectory: String?) -> PolicyCheckReport {
        var report = PolicyCheckReport(directory: directory, quotaDirectory: quotaDirectory)
        if let directory, !FileSystem.isDirectory(directory) {
            report.problems = [.missingDirectory(directory)]
            return report
        }
        var errors: [PolicyError] = []
        var keyLines: [String: [String: Int]] = [:]
        /// Where each seccomp profile name is used, for the "profile exists" check.
        var profileUses: [(name: String, file: String, line: Int)] = []

        var tiers: [Tier: TierLimits] = [:]
        if let directory {
            for tier in Tier.allCases {
                let origin = "tiers/\(tier.rawValue).toml"
                let file = FileSystem.join(directory, origin)
                guard let root = readDocument(file, missingIsError: true, errors: &errors) else { continue }
                let decoded = decode(root, file: file, origin: origin, isTenantFile: false, errors: &errors)
                keyLines[origin] = decoded.keyLines
                for key in LimitKey.allCases where decoded.lines[key] == nil && !key.isOptionalInTierFile {
                    errors.append(.missingKey(file: file, key: key.rawValue))
                }
                guard let limits = decoded.values.withCrashLoopDefaults(of: tier).complete else { continue }
                if let problem = timeoutProblem(limits) {
                    errors.append(
                        .invalidValue(
                            file: file, line: decoded.lines[.timeoutDefault] ?? 0,
                            key: LimitKey.timeoutDefault.rawValue, reason: problem))
                } else if decoded.valid {
                    tiers[tier] = limits
                    profileUses.append((limits.seccompProfile, file, decoded.lines[.seccompProfile] ?? 0))
                }
            }
            checkForStrayTierFiles(directory: directory, errors: &errors)
        } else {
            tiers = embedded.tiers
        }
        report.tierCount = tiers.count

        var overrides: [String: TenantOverride] = [:]
        if let directory {
            overrides = loadOverrides(
                in: FileSystem.join(directory, "tenants"), originPrefix: "tenants", tiers: tiers, under: [:],
                keyLines: &keyLines, profileUses: &profileUses, errors: &errors)
        }
        report.tenantOverrideCount = overrides.count

        var quotas: [String: TenantOverride] = [:]
        if let quotaDirectory {
            quotas = loadOverrides(
                in: quotaDirectory, originPrefix: "quota", tiers: tiers, under: overrides, keyLines: &keyLines,
                profileUses: &profileUses, errors: &errors)
        }
        report.quotaOverrideCount = quotas.count

        var profiles = SeccompProfiles.embedded
        if let directory, FileSystem.exists(FileSystem.join(directory, "seccomp")) {
            profiles = loadSeccompProfiles(directory: directory, errors: &errors)
        }
        report.seccompProfileCount = profiles.count
        for use in profileUses where profiles[use.name] == nil {
            errors.append(
                .invalidValue(
                    file: use.file, line: use.line, key: LimitKey.seccompProfile.rawValue,
                    reason: "there is no profile \(quoted(use.name)) (no seccomp/\(use.name).toml; profiles: \(profiles.keys.sorted().joined(separator: ", ")))"
                ))
        }

        var access = AccessPolicy.rootOnly
        if let directory {
            let file = FileSystem.join(directory, "access.toml")
            if let root = readDocument(file, missingIsError: false, errors: &errors) {
                report.accessFilePresent = true
                do { access = try AccessPolicy.parse(root, file: file) } catch { errors.append(error) }
            }
        }
        report.accessRuleCount = access.ruleCount

        report.problems = errors
        guard errors.isEmpty, let free = tiers[.free], let pro = tiers[.pro], let enterprise = tiers[.enterprise]
        else { return report }
        report.policySet = PolicySet(
            source: directory.map { .directory($0) } ?? .embedded, free: free, pro: pro, enterprise: enterprise,
            tenantOverrides: overrides, quotaOverrides: quotas, quotaDirectory: quotaDirectory, access: access,
            seccompProfiles: profiles, keyLines: keyLines)
        return report
    }

    /// The `<name>.toml` files of `dir` (tenants/ or the quota directory); `under` holds the
    /// overrides these apply on top of (tenants/ under quota/), for the consistency check.
    private static func loadOverrides(
        in dir: String, originPrefix: String, tiers: [Tier: TierLimits], under: [String: TenantOverride],
        keyLines: inout [String: [String: Int]], profileUses: inout [(name: String, file: String, line: Int)],
        errors: inout [PolicyError]
    ) -> [String: TenantOverride] {
        var overrides: [String: TenantOverride] = [:]
        guard FileSystem.exists(dir) else { return overrides }
        guard let names = FileSystem.list(dir) else {
            errors.append(.unreadable(file: dir, reason: "not a directory that can be listed"))
            return overrides
        }
        for name in names where name.hasSuffix(".toml") && !name.hasPrefix(".") {
            let file = FileSystem.join(dir, name)
            let tenant = String(name.dropLast(5))
            guard isValidTenantName(tenant) else {
                errors.append(
                    .invalidFileName(
                        file: file,
                        reason: "'\(name)' is not <tenant>.toml for a valid tenant name (tenant names match ^[a-z0-9][a-z0-9_-]{0,62}$)"))
                continue
            }
            guard let root = readDocument(file, missingIsError: false, errors: &errors) else { continue }
            let origin = "\(originPrefix)/\(name)"
            let decoded = decode(root, file: file, origin: origin, isTenantFile: true, errors: &errors)
            guard decoded.valid else { continue }
            keyLines[origin] = decoded.keyLines
            if checkOverride(decoded, under: under[tenant], file: file, tiers: tiers, errors: &errors) {
                overrides[tenant] = decoded.values
                if let p = decoded.values.seccompProfile {
                    profileUses.append((p, file, decoded.lines[.seccompProfile] ?? 0))
                }
            }
        }
        return overrides
    }

    /// Every seccomp/*.toml, each problem reported (SeccompProfiles.load stops at the first).
    private static func loadSeccompProfiles(directory: String, errors: inout [PolicyError]) -> [String: SeccompProfile] {
        let dir = FileSystem.join(directory, "seccomp")
        guard let names = FileSystem.list(dir) else {
            errors.append(.unreadable(file: dir, reason: "not a directory that can be listed"))
            return [:]
        }
        var out: [String: SeccompProfile] = [:]
        for file in names where file.hasSuffix(".toml") && !file.hasPrefix(".") {
            let name = String(file.dropLast(5))
            let path = FileSystem.join(dir, file)
            guard isValidTenantName(name) else {
                errors.append(.invalidFileName(file: path, reason: "'\(file)' is not <profile>.toml (a profile name is lower-case letters, digits, - and _)"))
                continue
            }
            switch FileSystem.read(path) {
            case .text(let text):
                do { out[name] = try SeccompProfile.parse(text, file: path, name: name) } catch { errors.append(error) }
            case .missing: errors.append(.missingFile(path))
            case .failed(let reason): errors.append(.unreadable(file: path, reason: reason))
            }
        }
        return out
    }

    static func readDocument(_ file: String, missingIsError: Bool, errors: inout [PolicyError]) -> TOMLTable? {
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

        /// Every key present, by name, with its line (for provenance).
        var keyLines: [String: Int] {
            var out = Dictionary(uniqueKeysWithValues: lines.map { ($0.key.rawValue, $0.value) })
            if let tierLine { out["tier"] = tierLine }
            return out
        }
    }

    /// The keys of one file, each checked on its own; problems go to `errors`.
    static func decode(
        _ root: TOMLTable, file: String, origin: String, isTenantFile: Bool, errors: inout [PolicyError]
    ) -> Decoded {
        var out = Decoded()
        for entry in root.entries {
            do throws(PolicyError) {
                if let key = LimitKey(rawValue: entry.key) {
                    out.lines[key] = entry.line
                    try key.decode(
                        entry.value, file: file, line: entry.line, origin: origin, elementLines: entry.elementLines,
                        into: &out.values)
                } else if entry.key == "egress" {
                    out.values.egressAllow = try EgressDecoding.decodeEgress(entry.value, file: file, line: entry.line, origin: origin)
                } else if entry.key == "secrets" {
                    out.values.secrets = try EgressDecoding.decodeSecrets(entry.value, file: file, line: entry.line, origin: origin)
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
        return
            "timeout_default_s (\(formatNumber(l.timeoutDefaultSeconds)) s) is longer than timeout_max_s (\(formatNumber(l.timeoutMaxSeconds)) s): lower timeout_default_s or raise timeout_max_s"
    }

    /// An override must still be consistent once applied (on top of `under`, the tenant file a
    /// quota file applies to) to the tier(s) it can apply to.
    static func checkOverride(
        _ decoded: Decoded, under: TenantOverride? = nil, file: String, tiers: [Tier: TierLimits],
        errors: inout [PolicyError]
    ) -> Bool {
        let combined = (under ?? TenantOverride()).merged(with: decoded.values)
        let candidates = combined.tier.map { [$0] } ?? Tier.allCases
        var failing: [Tier] = []
        var problem: String?
        for tier in candidates {
            guard let base = tiers[tier] else { continue }
            if let p = timeoutProblem(combined.applied(to: base)) {
                failing.append(tier)
                problem = problem ?? p
            }
        }
        guard let problem else { return true }
        let key: LimitKey = decoded.lines[.timeoutDefault] != nil ? .timeoutDefault : .timeoutMax
        let tierNote = combined.tier != nil ? "tier" : "tier\(failing.count == 1 ? "" : "s")"
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

/// What `clawpen policy check` found: the problems, and what was read.
public struct PolicyCheckReport: Sendable {
    /// nil: the embedded defaults were checked.
    public var directory: String?
    public var quotaDirectory: String?
    /// Every problem, in file order; empty when the set loads.
    public var problems: [PolicyError] = []
    public var tierCount = 0
    public var tenantOverrideCount = 0
    public var quotaOverrideCount = 0
    public var seccompProfileCount = 0
    public var accessFilePresent = false
    public var accessRuleCount = 0
    /// The loaded set, when there are no problems.
    public var policySet: PolicySet?

    public init(directory: String?, quotaDirectory: String?) {
        self.directory = directory
        self.quotaDirectory = quotaDirectory
    }

    public var ok: Bool { problems.isEmpty }
}
