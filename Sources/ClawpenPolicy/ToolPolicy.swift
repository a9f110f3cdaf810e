import ClawpenTOML

// Tool permissions: which executables a tenant's jobs may start and which environment variables
// a request may set. This is the agent's tool policy, not the security boundary: the sandbox is.
// Allowing a shell or an interpreter allows whatever it runs, and the decision is made on a path
// string (symlinks are not followed here), so a tenant's own /home/link -> /usr/bin/su passes a
// /home/** rule; it still runs inside the sandbox, without privileges (no_new_privs, no caps).

/// One entry of a pattern list (`commands_allow`, `commands_deny`, `env_allow`, or an access
/// list), with where it was written: `file` is relative to the policies directory
/// ("tiers/free.toml", "tenants/acme.toml", "quota/acme.toml"), `line` is 1-based.
public struct PatternRule: Sendable, Equatable, Hashable {
    public var pattern: String
    public var file: String
    public var line: Int

    public init(_ pattern: String, file: String, line: Int) {
        self.pattern = pattern
        self.file = file
        self.line = line
    }

    /// `"/usr/bin/*" (tiers/free.toml:52)`
    public var located: String { "\(quoted(pattern)) (\(file):\(line))" }
}

/// Glob matching for policy patterns. `*` matches any run of characters except '/', `**` any run
/// including '/'; every other character matches itself. No character classes, no `?`: policy
/// lists should read as what they match.
public enum Glob {
    public static func matches(_ pattern: String, _ subject: String) -> Bool {
        // Fast paths for the shapes policy lists are made of (every submit checks dozens):
        // a literal, "dir/*" and "dir/**".
        var u = pattern.utf8
        if !u.contains(UInt8(ascii: "*")) { return pattern == subject }
        if u.last == UInt8(ascii: "*") {
            u = pattern.utf8
            let doubled = u.count >= 2 && u[u.index(u.endIndex, offsetBy: -2)] == UInt8(ascii: "*")
            let prefix = u.dropLast(doubled ? 2 : 1)
            if !prefix.contains(UInt8(ascii: "*")) {
                let sv = subject.utf8
                guard sv.starts(with: prefix) else { return false }
                return doubled || !sv.dropFirst(prefix.count).contains(UInt8(ascii: "/"))
            }
        }
        return general(pattern, subject)
    }

    static func general(_ pattern: String, _ subject: String) -> Bool {
        let p = Array(pattern.utf8), s = Array(subject.utf8)
        var memo = [Bool?](repeating: nil, count: (p.count + 1) * (s.count + 1))
        func match(_ i: Int, _ j: Int) -> Bool {
            let key = i * (s.count + 1) + j
            if let known = memo[key] { return known }
            let result: Bool
            if i == p.count {
                result = j == s.count
            } else if p[i] == UInt8(ascii: "*") {
                let crossesSlash = i + 1 < p.count && p[i + 1] == UInt8(ascii: "*")
                let next = crossesSlash ? i + 2 : i + 1
                var k = j
                var found = match(next, k)
                while !found && k < s.count && (crossesSlash || s[k] != UInt8(ascii: "/")) {
                    k += 1
                    found = match(next, k)
                }
                result = found
            } else {
                result = j < s.count && p[i] == s[j] && match(i + 1, j + 1)
            }
            memo[key] = result
            return result
        }
        return match(0, 0)
    }
}

/// Resolving a job's argv[0] to the absolute sandbox path that will run.
public enum CommandPath {
    /// The sandbox's PATH (the worker sets it; `PATH` is on the fixed environment deny list, so a
    /// request cannot change where a bare command name is looked up).
    public static let sandboxPath = "/usr/local/bin:/usr/bin:/bin"
    /// The job's working directory when the request names none.
    public static let defaultCwd = "/home"

    /// `path` made absolute against `cwd` (itself relative to /home when relative) with `.`,
    /// `..` and repeated slashes removed, lexically: no symlink is followed. `..` stops at `/`.
    public static func normalize(_ path: String, cwd: String = defaultCwd) -> String {
        var base = cwd.isEmpty ? defaultCwd : cwd
        if !base.hasPrefix("/") { base = defaultCwd + "/" + base }
        let full = path.hasPrefix("/") ? path : base + "/" + path
        var parts: [Substring] = []
        for part in full.split(separator: "/", omittingEmptySubsequences: true) {
            if part == "." { continue }
            if part == ".." {
                _ = parts.popLast()
            } else {
                parts.append(part)
            }
        }
        return "/" + parts.joined(separator: "/")
    }
}

/// One rule (or resolution step) that took part in a decision.
public struct RuleStep: Sendable, Equatable {
    public enum Outcome: String, Sendable, Equatable {
        /// The rule applied to the subject without deciding on its own (argv[0] found in PATH).
        case matched
        /// The rule was tried and does not apply.
        case notMatched = "not matched"
        /// The rule refused the subject.
        case refused
        /// The rule allowed the subject.
        case allowed
    }

    /// Human-readable: `commands_deny "/usr/bin/su" (tiers/free.toml:52)`.
    public var rule: String
    /// `commands_allow`, `commands_deny`, `env_allow`, `env_fixed_deny`, `resolve`, `argv`.
    public var key: String
    /// The pattern of a list entry; empty for built-in rules.
    public var pattern: String
    /// Where the entry was written (nil for built-in rules).
    public var file: String?
    public var line: Int?
    /// What the rule was applied to: the resolved path, or an environment variable's name.
    public var subject: String
    public var outcome: Outcome

    public init(
        rule: String, key: String, pattern: String = "", file: String? = nil, line: Int? = nil, subject: String,
        outcome: Outcome
    ) {
        self.rule = rule
        self.key = key
        self.pattern = pattern
        self.file = file
        self.line = line
        self.subject = subject
        self.outcome = outcome
    }

    /// `  refused      commands_deny "/usr/bin/su" (tiers/free.toml:52)  [/usr/bin/su]`
    public var explanation: String {
        let padded = outcome.rawValue + String(repeating: " ", count: max(0, 12 - outcome.rawValue.count))
        return "\(padded) \(rule)  [\(subject)]"
    }
}

/// The outcome of `decideTool`: allowed or not, and every rule that took part, in order.
public struct ToolDecision: Sendable, Equatable {
    public var allowed: Bool
    /// The absolute sandbox path argv[0] resolved to; nil when it could not be resolved.
    public var resolvedPath: String?
    /// True when argv[0] has no '/' and no PATH directory holds an executable of that name (the
    /// daemon may report this as "command not found" rather than as a policy refusal).
    public var notFound: Bool
    public var steps: [RuleStep]
    /// The first rule that refused (nil when allowed).
    public var refusingRule: String?
    /// For the operator: what was refused, by which rule, where it is written (nil when allowed).
    public var message: String?
}

/// Environment variables no policy can let through: they change what the dynamic loader or libc
/// load into every process (LD_*, GCONV_PATH, GLIBC_TUNABLES: CVE-2023-4911), or where a bare
/// command name is looked up (PATH, which the command rules must see as the sandbox sets it).
public enum FixedEnvDeny {
    public static let patterns = ["LD_*", "GCONV_PATH", "GLIBC_TUNABLES", "PATH"]

    /// The fixed pattern `name` matches, if any.
    public static func pattern(matching name: String) -> String? {
        patterns.first { Glob.matches($0, name) }
    }

    public static func rule(_ pattern: String) -> String {
        "fixed env deny \(quoted(pattern)) (built in; no policy can lift it)"
    }
}

/// Decides whether a job may start `argv` with `env`: argv[0] is resolved as the sandbox's shell
/// would (contains '/': taken as is, relative to `cwd`; else searched in `CommandPath.sandboxPath`
/// with `isExecutable`), then `commands_deny` (deny wins), then `commands_allow` (default deny);
/// then each environment variable against the fixed deny list and `env_allow`. Every rule is
/// evaluated and listed, so an explanation shows all problems; the first refusal decides.
///
/// `isExecutable(path)` answers "is there an executable file at this sandbox path" (the daemon
/// checks the host's /usr, which the sandbox bind-mounts read-only, and resolves /home and /tmp
/// inside the tenant's workspace without following symlinks). It is only called for PATH search.
public func decideTool(
    argv: [String], env: [(name: String, value: String)], cwd: String, limits: TierLimits,
    isExecutable: (String) -> Bool
) -> ToolDecision {
    var steps: [RuleStep] = []
    var refusal: (rule: String, message: String)?
    func refuse(_ rule: String, _ message: String) {
        if refusal == nil { refusal = (rule, message) }
    }

    // 1. The command.
    var resolved: String?
    var notFound = false
    if let command = argv.first, !command.isEmpty {
        if command.contains("/") {
            let path = CommandPath.normalize(command, cwd: cwd)
            resolved = path
            let how = command.hasPrefix("/") ? "absolute" : "relative to the working directory \(quoted(cwd.isEmpty ? CommandPath.defaultCwd : cwd))"
            steps.append(
                RuleStep(rule: "argv[0] \(quoted(command)) is a path (\(how)): \(path)", key: "resolve", subject: path, outcome: .matched))
        } else {
            for dir in CommandPath.sandboxPath.split(separator: ":") {
                let candidate = "\(dir)/\(command)"
                if isExecutable(candidate) {
                    resolved = candidate
                    steps.append(
                        RuleStep(
                            rule: "PATH entry \(dir): executable \(candidate)", key: "resolve", pattern: String(dir), subject: candidate, outcome: .matched))
                    break
                }
                steps.append(
                    RuleStep(
                        rule: "PATH entry \(dir): no executable \(quoted(command))", key: "resolve", pattern: String(dir), subject: candidate,
                        outcome: .notMatched))
            }
            if resolved == nil {
                notFound = true
                let rule = "argv[0] \(quoted(command)) not found in PATH \(CommandPath.sandboxPath)"
                steps.append(RuleStep(rule: rule, key: "resolve", subject: command, outcome: .refused))
                refuse(rule, "\(quoted(command)) is not an executable in the sandbox's PATH (\(CommandPath.sandboxPath)); give its absolute path or install it")
            }
        }
    } else {
        let rule = argv.isEmpty ? "argv is empty" : "argv[0] is empty"
        steps.append(RuleStep(rule: rule, key: "argv", subject: "", outcome: .refused))
        refuse(rule, "the request names no command to run")
    }

    if let path = resolved {
        var denied = false
        for r in limits.commandsDeny {
            let hit = Glob.matches(r.pattern, path)
            let rule = "commands_deny \(r.located)"
            steps.append(
                RuleStep(
                    rule: rule, key: "commands_deny", pattern: r.pattern, file: r.file, line: r.line, subject: path,
                    outcome: hit ? .refused : .notMatched))
            if hit {
                denied = true
                refuse(rule, "\(singleQuoted(path)) is denied by \(rule)")
                break
            }
        }
        if !denied {
            var allowed = false
            for r in limits.commandsAllow {
                let hit = Glob.matches(r.pattern, path)
                steps.append(
                    RuleStep(
                        rule: "commands_allow \(r.located)", key: "commands_allow", pattern: r.pattern, file: r.file,
                        line: r.line, subject: path, outcome: hit ? .allowed : .notMatched))
                if hit {
                    allowed = true
                    break
                }
            }
            if !allowed {
                let files = Set(limits.commandsAllow.map(\.file)).sorted()
                let rule = "default deny: no commands_allow entry matches"
                steps.append(RuleStep(rule: rule, key: "commands_allow", subject: path, outcome: .refused))
                let whereWritten = files.isEmpty ? "commands_allow is empty" : "commands_allow is in \(files.joined(separator: ", "))"
                refuse(rule, "\(singleQuoted(path)) matches no commands_allow entry (\(whereWritten)); add a path or glob there to allow it")
            }
        }
    }

    // 2. The environment the request sets.
    for (name, _) in env {
        guard isValidEnvName(name) else {
            let rule = "environment variable names are letters, digits and '_'"
            steps.append(RuleStep(rule: rule, key: "env_allow", subject: name, outcome: .refused))
            refuse(rule, "\(quoted(name)) is not a valid environment variable name")
            continue
        }
        if let fixed = FixedEnvDeny.pattern(matching: name) {
            let rule = FixedEnvDeny.rule(fixed)
            steps.append(RuleStep(rule: rule, key: "env_fixed_deny", pattern: fixed, subject: name, outcome: .refused))
            refuse(rule, "environment variable \(singleQuoted(name)) is refused by \(rule)")
            continue
        }
        var allowed = false
        for r in limits.envAllow {
            let hit = Glob.matches(r.pattern, name)
            steps.append(
                RuleStep(
                    rule: "env_allow \(r.located)", key: "env_allow", pattern: r.pattern, file: r.file, line: r.line,
                    subject: name, outcome: hit ? .allowed : .notMatched))
            if hit {
                allowed = true
                break
            }
        }
        if !allowed {
            let rule = "default deny: no env_allow entry matches"
            steps.append(RuleStep(rule: rule, key: "env_allow", subject: name, outcome: .refused))
            refuse(
                rule,
                "environment variable \(singleQuoted(name)) matches no env_allow entry; add it (or a glob such as \"\(name.prefix { $0 != "_" })_*\") to env_allow"
            )
        }
    }

    return ToolDecision(
        allowed: refusal == nil, resolvedPath: resolved, notFound: notFound, steps: steps,
        refusingRule: refusal?.rule, message: refusal?.message)
}

/// What a submit needs from the tool policy, without building an explanation (every submit
/// asks; `decideTool` explains, and is asked only when this says no). Agrees with `decideTool`:
/// `.allowed` when it allows; `.notFoundOnly` when its only refusal is a bare command name found
/// nowhere in PATH; `.refused` otherwise.
public enum ToolVerdict: Sendable, Equatable { case allowed, notFoundOnly, refused }

public func toolVerdict(
    argv: [String], env: [(name: String, value: String)], cwd: String, limits: TierLimits,
    isExecutable: (String) -> Bool
) -> ToolVerdict {
    guard let command = argv.first, !command.isEmpty else { return .refused }
    var resolved: String?
    if command.contains("/") {
        resolved = CommandPath.normalize(command, cwd: cwd)
    } else {
        for dir in CommandPath.sandboxPath.split(separator: ":") where isExecutable("\(dir)/\(command)") {
            resolved = "\(dir)/\(command)"
            break
        }
    }
    for (name, _) in env {
        guard isValidEnvName(name), FixedEnvDeny.pattern(matching: name) == nil,
            limits.envAllow.contains(where: { Glob.matches($0.pattern, name) })
        else { return .refused }
    }
    guard let path = resolved else { return .notFoundOnly }
    if limits.commandsDeny.contains(where: { Glob.matches($0.pattern, path) }) { return .refused }
    return limits.commandsAllow.contains(where: { Glob.matches($0.pattern, path) }) ? .allowed : .refused
}

/// `[A-Za-z_][A-Za-z0-9_]*`
func isValidEnvName(_ name: String) -> Bool {
    guard let first = name.utf8.first, !(first >= UInt8(ascii: "0") && first <= UInt8(ascii: "9")) else { return false }
    return name.utf8.allSatisfy(isEnvNameByte)
}

func isEnvNameByte(_ b: UInt8) -> Bool {
    (b >= UInt8(ascii: "a") && b <= UInt8(ascii: "z")) || (b >= UInt8(ascii: "A") && b <= UInt8(ascii: "Z"))
        || (b >= UInt8(ascii: "0") && b <= UInt8(ascii: "9")) || b == UInt8(ascii: "_")
}

/// `'text'`, for paths and names in messages.
func singleQuoted(_ s: String) -> String {
    let inner = quoted(s).dropFirst().dropLast()
    return "'" + inner + "'"
}

// MARK: - Checking list entries (used by LimitKey.decode)

enum PatternCheck {
    /// Why `pattern` is not an acceptable `commands_allow` / `commands_deny` entry, or nil.
    static func commandProblem(_ pattern: String) -> String? {
        guard pattern.hasPrefix("/") else {
            let example = pattern.isEmpty ? "/usr/bin/ls" : pattern.contains("/") ? "/" + pattern : "/usr/bin/" + pattern
            return
                "\(quoted(pattern)) is not an absolute path or glob (write it from '/', e.g. \(quoted(example)); commands are resolved to absolute paths before they are matched)"
        }
        guard pattern.utf8.count <= 4096 else { return "\(quoted(pattern)) is longer than 4096 bytes" }
        if pattern.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7F }) {
            return "\(quoted(pattern)) contains a control character"
        }
        if pattern.contains("***") { return "\(quoted(pattern)): use '*' (one path component) or '**' (any depth), not '***'" }
        let components = pattern.split(separator: "/", omittingEmptySubsequences: false).dropFirst()
        if pattern.count > 1, components.contains(where: { $0 == "." || $0 == ".." || $0.isEmpty }) {
            return "\(quoted(pattern)) has an empty, '.' or '..' component; commands are matched on normalized paths, so it would match nothing"
        }
        return nil
    }

    /// Why `pattern` is not an acceptable `env_allow` entry, or nil.
    static func envProblem(_ pattern: String) -> String? {
        guard !pattern.isEmpty, pattern.utf8.allSatisfy({ isEnvNameByte($0) || $0 == UInt8(ascii: "*") }),
            let first = pattern.utf8.first, !(first >= UInt8(ascii: "0") && first <= UInt8(ascii: "9"))
        else {
            return "\(quoted(pattern)) is not an environment variable name or glob (letters, digits, '_' and '*', e.g. \"LANG\", \"LC_*\")"
        }
        // An entry that can only match fixed-denied names would silently do nothing.
        if pattern.hasPrefix("LD_") || (!pattern.contains("*") && FixedEnvDeny.pattern(matching: pattern) != nil) {
            let fixed = FixedEnvDeny.pattern(matching: pattern.hasPrefix("LD_") ? "LD_X" : pattern) ?? pattern
            return "\(quoted(pattern)) can only match variables on the fixed deny list (\(quoted(fixed))), which no policy can lift"
        }
        return nil
    }
}
