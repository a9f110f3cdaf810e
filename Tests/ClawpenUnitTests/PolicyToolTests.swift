import Foundation
import XCTest

@testable import ClawpenPolicy

private let repoPolicies: String = {
    let here = URL(fileURLWithPath: #filePath).resolvingSymlinksInPath()
    return here.deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("policies").path
}()

/// A scratch copy of the shipped policies (tiers, seccomp, access.toml), removed by `cleanup()`.
private struct ScratchPolicies {
    let path: String
    let quota: String

    init(copyAccess: Bool = true) throws {
        path = NSTemporaryDirectory() + "clawpen-policy-tool-" + UUID().uuidString
        quota = path + "-state/quota"
        let fm = FileManager.default
        try fm.createDirectory(atPath: path + "/tenants", withIntermediateDirectories: true)
        try fm.copyItem(atPath: repoPolicies + "/tiers", toPath: path + "/tiers")
        try fm.copyItem(atPath: repoPolicies + "/seccomp", toPath: path + "/seccomp")
        if copyAccess { try fm.copyItem(atPath: repoPolicies + "/access.toml", toPath: path + "/access.toml") }
        try fm.createDirectory(atPath: path + "-state", withIntermediateDirectories: true)
    }

    func file(_ relative: String) -> String { path + "/" + relative }

    func write(_ relative: String, _ text: String) throws {
        try text.write(toFile: file(relative), atomically: true, encoding: .utf8)
    }

    func cleanup() {
        try? FileManager.default.removeItem(atPath: path)
        try? FileManager.default.removeItem(atPath: path + "-state")
    }
}

/// The sandbox as `isExecutable` sees it in these tests.
private let sandboxExecutables: Set<String> = [
    "/usr/bin/ls", "/bin/ls", "/usr/bin/python3", "/usr/bin/su", "/usr/local/bin/tool", "/usr/bin/sudo",
]
private func fakeIsExecutable(_ path: String) -> Bool { sandboxExecutables.contains(path) }

final class PolicyToolTests: XCTestCase {
    private let free = TierLimits.defaults(for: .free)

    private func decide(
        _ argv: [String], env: [(name: String, value: String)] = [], cwd: String = "/home", limits: TierLimits? = nil
    ) -> ToolDecision {
        decideTool(argv: argv, env: env, cwd: cwd, limits: limits ?? free, isExecutable: fakeIsExecutable)
    }

    func testGlob() {
        let cases: [(String, String, Bool)] = [
            ("/usr/bin/*", "/usr/bin/ls", true),
            ("/usr/bin/*", "/usr/bin/x/ls", false),
            ("/usr/bin/*", "/usr/binary", false),
            ("/home/**", "/home/a/b/c.sh", true),
            ("/home/**", "/home/run.sh", true),
            ("/home/**", "/homework/x", false),
            ("/usr/lib/*/helper", "/usr/lib/x/helper", true),
            ("/usr/lib/*/helper", "/usr/lib/x/y/helper", false),
            ("/usr/lib/**/helper", "/usr/lib/x/y/helper", true),
            ("/usr/bin/su", "/usr/bin/su", true),
            ("/usr/bin/su", "/usr/bin/sudo", false),
            ("/usr/bin/py*3", "/usr/bin/python3", true),
            ("LC_*", "LC_ALL", true),
            ("LC_*", "LANG", false),
            ("*", "ANYTHING", true),
            ("PYTHON*", "PYTHON", true),
            ("", "", true),
            ("", "x", false),
        ]
        for (pattern, subject, expected) in cases {
            XCTAssertEqual(Glob.matches(pattern, subject), expected, "\(pattern) ~ \(subject)")
        }
    }

    func testNormalize() {
        XCTAssertEqual(CommandPath.normalize("./run.sh"), "/home/run.sh")
        XCTAssertEqual(CommandPath.normalize("bin/x", cwd: "/home/proj"), "/home/proj/bin/x")
        XCTAssertEqual(CommandPath.normalize("../../../usr/bin/su", cwd: "/home/a"), "/usr/bin/su")
        XCTAssertEqual(CommandPath.normalize("/../../bin//ls"), "/bin/ls")
        XCTAssertEqual(CommandPath.normalize("x", cwd: "proj"), "/home/proj/x")
        XCTAssertEqual(CommandPath.normalize("x", cwd: ""), "/home/x")
    }

    func testPathSearchFindsTheFirstExecutable() {
        let d = decide(["ls", "-l"])
        XCTAssertTrue(d.allowed, "\(d)")
        XCTAssertEqual(d.resolvedPath, "/usr/bin/ls") // /usr/local/bin first, /usr/bin next
        XCTAssertEqual(d.steps.first?.key, "resolve")
        XCTAssertEqual(d.steps.first?.outcome, .notMatched) // /usr/local/bin/ls
        XCTAssertEqual(d.steps[1].subject, "/usr/bin/ls")
        XCTAssertEqual(d.steps.last?.rule, "commands_allow \"/usr/bin/*\" (tiers/free.toml:79)")
        XCTAssertEqual(d.steps.last?.outcome, .allowed)
        XCTAssertNil(d.refusingRule)
        XCTAssertNil(d.message)
        XCTAssertEqual(decide(["tool"]).resolvedPath, "/usr/local/bin/tool")
        XCTAssertFalse(decide(["tool"]).allowed, "free does not allow /usr/local/bin")
        XCTAssertTrue(decide(["tool"], limits: .defaults(for: .pro)).allowed)
    }

    func testDenyWinsOverAllow() {
        let d = decide(["su", "-"])
        XCTAssertFalse(d.allowed)
        XCTAssertEqual(d.resolvedPath, "/usr/bin/su")
        XCTAssertEqual(d.refusingRule, "commands_deny \"/usr/bin/su\" (tiers/free.toml:88)")
        XCTAssertEqual(d.message, "'/usr/bin/su' is denied by commands_deny \"/usr/bin/su\" (tiers/free.toml:88)")
        let refused = d.steps.filter { $0.outcome == .refused }
        XCTAssertEqual(refused.count, 1)
        XCTAssertEqual(refused.first?.file, "tiers/free.toml")
        XCTAssertEqual(refused.first?.line, 88)
        XCTAssertEqual(refused.first?.pattern, "/usr/bin/su")
        XCTAssertFalse(d.steps.contains { $0.key == "commands_allow" }, "deny decides before allow is tried")
        // The same binary through /bin, and through a relative path that climbs out of /home.
        XCTAssertEqual(decide(["/bin/su"]).refusingRule, "commands_deny \"/bin/su\" (tiers/free.toml:88)")
        XCTAssertEqual(decide(["../usr/bin/sudo"]).refusingRule, "commands_deny \"/usr/bin/sudo\" (tiers/free.toml:89)")
    }

    func testDefaultDeny() {
        let d = decide(["/usr/sbin/iptables", "-L"])
        XCTAssertFalse(d.allowed)
        XCTAssertEqual(d.resolvedPath, "/usr/sbin/iptables")
        XCTAssertEqual(d.refusingRule, "default deny: no commands_allow entry matches")
        XCTAssertTrue(d.message?.contains("'/usr/sbin/iptables' matches no commands_allow entry") ?? false, d.message ?? "")
        // Every allow entry was tried and is listed.
        XCTAssertEqual(d.steps.filter { $0.key == "commands_allow" && $0.outcome == .notMatched }.count, free.commandsAllow.count)
        var none = free
        none.commandsAllow = []
        XCTAssertFalse(decide(["ls"], limits: none).allowed)
    }

    func testRelativePathsAndTenantScripts() {
        let d = decide(["./build.sh"], cwd: "/home/proj")
        XCTAssertTrue(d.allowed)
        XCTAssertEqual(d.resolvedPath, "/home/proj/build.sh")
        XCTAssertEqual(d.steps.last?.rule, "commands_allow \"/home/**\" (tiers/free.toml:81)")
        XCTAssertEqual(decide(["scripts/x.py"]).resolvedPath, "/home/scripts/x.py")
        // A path is not looked up: isExecutable is not consulted, and it need not exist.
        var called = false
        _ = decideTool(argv: ["/home/x"], env: [], cwd: "/home", limits: free) { _ in
            called = true; return false
        }
        XCTAssertFalse(called)
        // /tmp is allowed on pro, not on free.
        XCTAssertFalse(decide(["/tmp/x.sh"]).allowed)
        XCTAssertTrue(decide(["/tmp/x.sh"], limits: .defaults(for: .pro)).allowed)
    }

    func testNotFoundAndEmptyArgv() {
        let d = decide(["nosuch"])
        XCTAssertFalse(d.allowed)
        XCTAssertTrue(d.notFound)
        XCTAssertNil(d.resolvedPath)
        XCTAssertEqual(d.steps.filter { $0.key == "resolve" }.count, 4) // 3 PATH entries + the refusal
        XCTAssertEqual(d.refusingRule, "argv[0] \"nosuch\" not found in PATH /usr/local/bin:/usr/bin:/bin")
        for argv in [[], [""]] {
            let e = decide(argv)
            XCTAssertFalse(e.allowed)
            XCTAssertFalse(e.notFound)
            XCTAssertEqual(e.steps.count, 1)
            XCTAssertEqual(e.message, "the request names no command to run")
        }
    }

    func testEnvironmentRules() {
        let ok = decide(["ls"], env: [("LANG", "C"), ("LC_ALL", "C"), ("AGENT_ID", "7")])
        XCTAssertTrue(ok.allowed, "\(ok)")
        XCTAssertEqual(ok.steps.filter { $0.key == "env_allow" && $0.outcome == .allowed }.map(\.subject), ["LANG", "LC_ALL", "AGENT_ID"])

        let bad = decide(["ls"], env: [("SECRET_TOKEN", "x")])
        XCTAssertFalse(bad.allowed)
        XCTAssertEqual(bad.refusingRule, "default deny: no env_allow entry matches")
        XCTAssertTrue(bad.message?.hasPrefix("environment variable 'SECRET_TOKEN' matches no env_allow entry") ?? false)

        // Enterprise allows "*", but never LD_* or PATH.
        let ent = TierLimits.defaults(for: .enterprise)
        XCTAssertTrue(decide(["ls"], env: [("SECRET_TOKEN", "x")], limits: ent).allowed)
        for name in ["LD_PRELOAD", "LD_LIBRARY_PATH", "LD_AUDIT", "GLIBC_TUNABLES", "PATH"] {
            let d = decide(["ls"], env: [(name, "x")], limits: ent)
            XCTAssertFalse(d.allowed, name)
            XCTAssertTrue(d.refusingRule?.hasPrefix("fixed env deny") ?? false, name)
            XCTAssertEqual(d.steps.last?.key, "env_fixed_deny")
        }
        XCTAssertEqual(
            decide(["ls"], env: [("LD_PRELOAD", "/home/x.so")], limits: ent).message,
            "environment variable 'LD_PRELOAD' is refused by fixed env deny \"LD_*\" (built in; no policy can lift it)")
        XCTAssertFalse(decide(["ls"], env: [("A=B", "x")], limits: ent).allowed)
        XCTAssertFalse(decide(["ls"], env: [("1X", "x")], limits: ent).allowed)
    }

    func testFirstRefusalDecidesButEveryRuleIsListed() {
        let d = decide(["su"], env: [("LD_PRELOAD", "x"), ("LANG", "C")])
        XCTAssertEqual(d.refusingRule, "commands_deny \"/usr/bin/su\" (tiers/free.toml:88)")
        XCTAssertEqual(d.steps.filter { $0.outcome == .refused }.count, 2)
        XCTAssertEqual(d.steps.last?.subject, "LANG")
        XCTAssertTrue(d.steps.last?.explanation.hasPrefix("allowed") ?? false)
    }

    // MARK: - The new keys in files

    func testNewKeysInTierAndOverrideFiles() throws {
        let dir = try ScratchPolicies()
        defer { dir.cleanup() }
        try dir.write(
            "tenants/acme.toml",
            """
            cpu_seconds_per_hour = 120.5
            commands_allow = [
                "/usr/bin/python3",
                "/home/**",
            ]
            env_allow = []
            """)
        let set = try PolicyLoader.load(directory: dir.path)
        let acme = set.limits(tenant: "acme", tier: .free)
        XCTAssertEqual(acme.cpuSecondsPerHour, 120.5)
        XCTAssertEqual(
            acme.commandsAllow,
            [
                PatternRule("/usr/bin/python3", file: "tenants/acme.toml", line: 3),
                PatternRule("/home/**", file: "tenants/acme.toml", line: 4),
            ])
        XCTAssertEqual(acme.commandsDeny, TierLimits.defaults(for: .free).commandsDeny, "not overridden: the tier's list")
        XCTAssertEqual(acme.envAllow, [], "an override replaces a list as a whole")
        XCTAssertFalse(acme.decideTool(argv: ["ls"], env: [], cwd: "/home", isExecutable: fakeIsExecutable).allowed)
        let py = acme.decideTool(argv: ["python3"], env: [], cwd: "/home", isExecutable: fakeIsExecutable)
        XCTAssertEqual(py.steps.last?.rule, "commands_allow \"/usr/bin/python3\" (tenants/acme.toml:3)")
        XCTAssertEqual(TierLimits.defaults(for: .free).cpuSecondsPerHour, 900)
        XCTAssertEqual(TierLimits.defaults(for: .pro).cpuSecondsPerHour, 3600)
        XCTAssertEqual(TierLimits.defaults(for: .enterprise).cpuSecondsPerHour, 7200)
    }

    func testNewKeyErrorsNameFileLineAndKey() throws {
        let cases: [(text: String, expected: (String) -> PolicyError)] = [
            (
                "cpu_seconds_per_hour = 0\n",
                {
                    .invalidValue(
                        file: $0, line: 1, key: "cpu_seconds_per_hour",
                        reason:
                            "must be greater than 0 s (CPU seconds the tenant's processes together may use in any sliding hour; 3600 is one core all the time), not 0"
                    )
                }
            ),
            (
                "\ncpu_seconds_per_hour = \"1h\"\n",
                {
                    .wrongType(
                        file: $0, line: 2, key: "cpu_seconds_per_hour",
                        expected: "a number (CPU seconds the tenant's processes together may use in any sliding hour; 3600 is one core all the time)",
                        found: "string \"1h\"")
                }
            ),
            (
                "commands_allow = \"/usr/bin/*\"\n",
                {
                    .wrongType(
                        file: $0, line: 1, key: "commands_allow", expected: "an array of strings (absolute paths or globs), e.g. [\"/usr/bin/*\"]",
                        found: "string \"/usr/bin/*\"")
                }
            ),
            (
                "commands_deny = [\n  \"/usr/bin/su\",\n  42,\n]\n",
                {
                    .wrongType(
                        file: $0, line: 3, key: "commands_deny", expected: "an array of strings (absolute paths or globs)", found: "integer 42 as element 2")
                }
            ),
            (
                "commands_allow = [\n  \"/usr/bin/*\",\n  \"python3\",\n]\n",
                {
                    .invalidValue(
                        file: $0, line: 3, key: "commands_allow",
                        reason:
                            "\"python3\" is not an absolute path or glob (write it from '/', e.g. \"/usr/bin/python3\"; commands are resolved to absolute paths before they are matched)"
                    )
                }
            ),
            (
                "commands_allow = [\"/usr/bin/../sbin/*\"]\n",
                {
                    .invalidValue(
                        file: $0, line: 1, key: "commands_allow",
                        reason:
                            "\"/usr/bin/../sbin/*\" has an empty, '.' or '..' component; commands are matched on normalized paths, so it would match nothing")
                }
            ),
            (
                "env_allow = [\"LANG\", \"LD_*\"]\n",
                {
                    .invalidValue(
                        file: $0, line: 1, key: "env_allow",
                        reason: "\"LD_*\" can only match variables on the fixed deny list (\"LD_*\"), which no policy can lift")
                }
            ),
            (
                "env_allow = [\"MY-VAR\"]\n",
                {
                    .invalidValue(
                        file: $0, line: 1, key: "env_allow",
                        reason: "\"MY-VAR\" is not an environment variable name or glob (letters, digits, '_' and '*', e.g. \"LANG\", \"LC_*\")")
                }
            ),
            (
                "env_allow = [\"PATH\"]\n",
                {
                    .invalidValue(
                        file: $0, line: 1, key: "env_allow",
                        reason: "\"PATH\" can only match variables on the fixed deny list (\"PATH\"), which no policy can lift")
                }
            ),
        ]
        for c in cases {
            let dir = try ScratchPolicies()
            defer { dir.cleanup() }
            try dir.write("tenants/acme.toml", c.text)
            let problems = PolicyLoader.check(directory: dir.path)
            XCTAssertEqual(problems, [c.expected(dir.file("tenants/acme.toml"))], c.text)
        }
    }

    func testTierFileMissingANewKey() throws {
        let dir = try ScratchPolicies()
        defer { dir.cleanup() }
        let text = try String(contentsOfFile: dir.file("tiers/pro.toml"), encoding: .utf8)
        try dir.write("tiers/pro.toml", text.replacingOccurrences(of: "cpu_seconds_per_hour = 3600\n", with: ""))
        XCTAssertEqual(PolicyLoader.check(directory: dir.path), [.missingKey(file: dir.file("tiers/pro.toml"), key: "cpu_seconds_per_hour")])
    }

    func testSeccompProfilesNamedMustExist() throws {
        let dir = try ScratchPolicies()
        defer { dir.cleanup() }
        try dir.write("tenants/acme.toml", "\nseccomp_profile = \"nosuch\"\n")
        try dir.write("seccomp/broken.toml", "allow = [\"read\"]\nkill = [\"read\"]\n")
        let problems = PolicyLoader.check(directory: dir.path)
        XCTAssertEqual(
            problems.map(\.report),
            [
                "\(dir.file("seccomp/broken.toml")):2: kill: read is also in allow",
                "\(dir.file("tenants/acme.toml")):2: seccomp_profile: there is no profile \"nosuch\" (no seccomp/nosuch.toml; profiles: default, strict)",
            ])
    }

    func testReportFormat() {
        XCTAssertEqual(PolicyError.unknownKey(file: "f.toml", line: 3, key: "pids_mx").report, "f.toml:3: pids_mx: unknown key (did you mean 'pids_max'?)")
        XCTAssertEqual(PolicyError.missingKey(file: "f.toml", key: "tmp_size").report.hasPrefix("f.toml: tmp_size: missing key"), true)
        XCTAssertEqual(PolicyError.syntax(file: "f.toml", line: 2, message: "m").report, "f.toml:2: m")
        XCTAssertEqual(
            PolicyError.missingDirectory("/x").report,
            "/x: policy directory does not exist (it must contain tiers/free.toml, tiers/pro.toml and tiers/enterprise.toml)")
    }

    func testElementLines() throws {
        let root = try TOMLDocument.parse("a = [\n 1, 2,\n [3,\n 4],\n 5 ]\nb = 1\n", file: "t").root
        XCTAssertEqual(root.entry("a")?.elementLines, [2, 2, 3, 5])
        XCTAssertEqual(root.entry("b")?.elementLines, [])
    }
}

final class PolicyAccessTests: XCTestCase {
    private func policy(_ text: String) throws -> AccessPolicy {
        try AccessPolicy.parse(try TOMLDocument.parse(text, file: "access.toml").root, file: "access.toml")
    }

    private let sample = """
        [operators]
        users = ["ops", 4242]
        groups = ["clawpen-admin"]

        [tenants.acme]
        users = ["acme-svc"]
        groups = ["acme", 3000]

        [tenants."*"]
        users = ["gateway"]
        """

    func testRootIsAlwaysAnOperator() throws {
        for p in [AccessPolicy.rootOnly, try policy(sample), PolicyLoader.embedded.access] {
            let root = Caller(uid: 0, gid: 0, userName: "root")
            let d = p.decide(root, .operator(command: "status"))
            XCTAssertTrue(d.allowed)
            XCTAssertEqual(d.rule, "uid 0 is always an operator")
            XCTAssertTrue(p.decide(root, .submit(tenant: .t("acme"))).allowed)
        }
    }

    func testOperators() throws {
        let p = try policy(sample)
        let ops = Caller(uid: 1500, gid: 1500, userName: "ops", groupNames: ["ops"])
        XCTAssertEqual(p.decide(ops, .operator(command: "status")).rule, "operators.users \"ops\" (access.toml:2)")
        XCTAssertEqual(p.decide(Caller(uid: 4242, gid: 1), .operator(command: "status")).rule, "operators.users 4242 (access.toml:2)")
        let admin = Caller(uid: 1600, gid: 100, userName: "bob", groupNames: ["users", "clawpen-admin"])
        XCTAssertEqual(p.decide(admin, .operator(command: "policy reload")).rule, "operators.groups \"clawpen-admin\" (access.toml:3)")
        let submit = p.decide(admin, .submit(tenant: .t("zeta")))
        XCTAssertTrue(submit.allowed, "operators may submit for every tenant")
        XCTAssertEqual(submit.rule, "operators.groups \"clawpen-admin\" (access.toml:3)")

        let alice = Caller(uid: 1001, gid: 1001, userName: "alice", groupNames: ["alice"])
        let d = p.decide(alice, .operator(command: "status"))
        XCTAssertFalse(d.allowed)
        XCTAssertEqual(d.rule, "no rule in access.toml makes uid 1001 (alice) an operator")
        XCTAssertTrue(d.message.hasPrefix("'status' needs the operator role"))
    }

    func testTenantGrants() throws {
        let p = try policy(sample)
        let svc = Caller(uid: 2000, gid: 2000, userName: "acme-svc")
        XCTAssertEqual(p.decide(svc, .submit(tenant: .t("acme"))).rule, "tenants.acme.users \"acme-svc\" (access.toml:6)")
        XCTAssertFalse(p.decide(svc, .submit(tenant: .t("beta"))).allowed)
        XCTAssertFalse(p.decide(svc, .operator(command: "status")).allowed)
        XCTAssertEqual(
            p.decide(Caller(uid: 2001, gid: 3000), .submit(tenant: .t("acme"))).rule, "tenants.acme.groups 3000 (access.toml:7)")
        XCTAssertEqual(
            p.decide(Caller(uid: 2001, gid: 1, groupIDs: [3000]), .submit(tenant: .t("acme"))).rule,
            "tenants.acme.groups 3000 (access.toml:7)")
        let gw = Caller(uid: 2100, gid: 2100, userName: "gateway")
        XCTAssertEqual(p.decide(gw, .submit(tenant: .t("anyone"))).rule, "tenants.\"*\".users \"gateway\" (access.toml:10)")
        let alice = Caller(uid: 1001, gid: 1001, userName: "alice")
        let d = p.decide(alice, .submit(tenant: .t("acme")))
        XCTAssertFalse(d.allowed)
        XCTAssertEqual(d.rule, "no rule in access.toml grants uid 1001 (alice) tenant 'acme'")
        XCTAssertEqual(p.decide(Caller(uid: 1002, gid: 1), .submit(tenant: .t("acme"))).rule, "no rule in access.toml grants uid 1002 tenant 'acme'")
    }

    func testParseErrors() throws {
        let cases: [(String, PolicyError)] = [
            (
                "[operators]\nusers = \"root\"\n",
                .wrongType(
                    file: "access.toml", line: 2, key: "operators.users", expected: "an array of names or numeric ids, e.g. [\"alice\", 1001]",
                    found: "string \"root\"")
            ),
            (
                "[operators]\nusers = [\n \"root\",\n true,\n]\n",
                .wrongType(file: "access.toml", line: 4, key: "operators.users", expected: "a name (string) or a numeric id (integer)", found: "boolean true")
            ),
            (
                "[operators]\nmembers = []\n",
                .invalidValue(
                    file: "access.toml", line: 2, key: "operators.members", reason: "unknown key 'members' in [operators] (the keys are users and groups)")
            ),
            (
                "[tenants.Acme]\nusers = []\n",
                .invalidValue(
                    file: "access.toml", line: 1, key: "tenants.Acme",
                    reason: "\"Acme\" is not a tenant name (^[a-z0-9][a-z0-9_-]{0,62}$) or \"*\" (every tenant)")
            ),
            ("admins = []\n", .unknownKey(file: "access.toml", line: 1, key: "admins")),
            ("[operators]\nusers = [-1]\n", .invalidValue(file: "access.toml", line: 2, key: "operators.users", reason: "-1 is not a uid")),
            (
                "[operators]\ngroups = [\"bad name\"]\n",
                .invalidValue(
                    file: "access.toml", line: 2, key: "operators.groups",
                    reason: "\"bad name\" is not a user or group name (letters, digits, '.', '_', '-', not starting with '-'; at most 32)")
            ),
        ]
        for (text, expected) in cases {
            XCTAssertThrowsError(try policy(text), text) { XCTAssertEqual($0 as? PolicyError, expected, text) }
        }
    }

    func testLoadedWithThePolicySet() throws {
        let dir = try ScratchPolicies()
        defer { dir.cleanup() }
        XCTAssertEqual(try PolicyLoader.load(directory: dir.path).access.operators.count, 1) // shipped: root
        try dir.write("access.toml", sample)
        let set = try PolicyLoader.load(directory: dir.path)
        XCTAssertEqual(set.access.ruleCount, 7)
        XCTAssertTrue(set.access.decide(Caller(uid: 5, gid: 5, userName: "acme-svc"), .submit(tenant: .t("acme"))).allowed)
        try FileManager.default.removeItem(atPath: dir.file("access.toml"))
        let none = try PolicyLoader.load(directory: dir.path).access
        XCTAssertEqual(none, .rootOnly)
        XCTAssertFalse(none.decide(Caller(uid: 5, gid: 5, userName: "ops"), .operator(command: "status")).allowed)
        try dir.write("access.toml", "[operators]\nusers = [\"ok\", 1.5]\n")
        XCTAssertEqual(PolicyLoader.check(directory: dir.path).map(\.line), [2])
        XCTAssertEqual(PolicyLoader.embedded.access, .rootOnly)
    }
}

final class PolicyQuotaTests: XCTestCase {
    func testWriteMergesValidatesAndApplies() throws {
        let dir = try ScratchPolicies()
        defer { dir.cleanup() }
        try dir.write("tenants/acme.toml", "# acme\nmemory_max = \"2G\"\npids_max = 100\n")
        let policies = try PolicyLoader.load(directory: dir.path)

        let written = try QuotaOverrides.write(
            tenant: "acme", changes: ["max_concurrent_runs": .integer(4), "memory_max": .string("512M")],
            directory: dir.quota, policies: policies)
        XCTAssertEqual(written, TenantOverride(maxConcurrentRuns: 4, memoryMaxBytes: 512 * ByteSize.mebibyte))
        try QuotaOverrides.write(
            tenant: "acme",
            changes: [
                "cpu_max": QuotaOverrides.value(forKey: "cpu_max", argument: "1.5"),
                "commands_allow": QuotaOverrides.value(forKey: "commands_allow", argument: "/usr/bin/*, /home/**"),
            ],
            directory: dir.quota)
        let text = try String(contentsOfFile: dir.quota + "/acme.toml", encoding: .utf8)
        XCTAssertTrue(text.hasPrefix("# Written by `clawpen tenant set-quota`"), text)
        XCTAssertTrue(text.contains("max_concurrent_runs = 4\nmemory_max = \"512M\"\ncpu_max = 1.5\n"), text)
        XCTAssertTrue(text.contains("commands_allow = [\n    \"/usr/bin/*\",\n    \"/home/**\",\n]\n"), text)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir.quota), ["acme.toml"], "no temporary file left")

        let set = try PolicyLoader.load(directory: dir.path, quotaDirectory: dir.quota)
        let l = set.limits(tenant: "acme", tier: .free)
        XCTAssertEqual(l.maxConcurrentRuns, 4)
        XCTAssertEqual(l.memoryMaxBytes, 512 * ByteSize.mebibyte, "quota wins over tenants/")
        XCTAssertEqual(l.pidsMax, 100, "tenants/ still applies")
        XCTAssertEqual(l.cpuMaxCores, 1.5)
        XCTAssertEqual(l.commandsAllow.map(\.file), ["quota/acme.toml", "quota/acme.toml"])
        XCTAssertEqual(l.jobsPerMinute, 600)

        let p = set.provenance(tenant: "acme", tier: .free)
        let memLine = text.split(separator: "\n", omittingEmptySubsequences: false).firstIndex { $0.hasPrefix("memory_max") }.map { $0 + 1 }
        XCTAssertEqual(p["memory_max"], "quota/acme.toml:\(memLine ?? 0) (set-quota)")
        XCTAssertEqual(p["pids_max"], "tenants/acme.toml:3")
        XCTAssertEqual(p["jobs_per_minute"], "tiers/free.toml:14")
        XCTAssertEqual(p["tier"], "assigned when the tenant was created")
        XCTAssertEqual(Set(p.keys), Set(TierLimits.keys + ["tier"]))
        XCTAssertEqual(PolicyLoader.embedded.provenance(tenant: "x", tier: .pro)["pids_max"], "embedded default")

        // Embedded tiers with a quota directory: the daemon without a policies directory.
        let embedded = try PolicyLoader.load(directory: nil, quotaDirectory: dir.quota)
        XCTAssertEqual(embedded.source, .embedded)
        XCTAssertEqual(embedded.limits(tenant: "acme", tier: .pro).maxConcurrentRuns, 4)
        XCTAssertEqual(embedded.limits(tenant: "acme", tier: .pro).pidsMax, 256)
        XCTAssertEqual(embedded.provenance(tenant: "acme", tier: .pro)["pids_max"], "embedded default")

        // Removing a key.
        try QuotaOverrides.write(tenant: "acme", changes: [:], removing: ["memory_max"], directory: dir.quota)
        XCTAssertEqual(
            try PolicyLoader.load(directory: dir.path, quotaDirectory: dir.quota).limits(tenant: "acme", tier: .free).memoryMaxBytes,
            2 * ByteSize.gibibyte)
    }

    func testWriteRefusesBadValuesWithFileLineAndKey() throws {
        let dir = try ScratchPolicies()
        defer { dir.cleanup() }
        let file = dir.quota + "/acme.toml"
        try QuotaOverrides.write(tenant: "acme", changes: ["pids_max": .integer(10)], directory: dir.quota)
        let before = try String(contentsOfFile: file, encoding: .utf8)
        // The first key is on the line after the header (which ends with a blank line).
        let headerLines = QuotaOverrides.header.split(separator: "\n", omittingEmptySubsequences: false).count
        XCTAssertTrue(QuotaOverrides.header.hasSuffix(".\n\n"))
        let cases: [([String: TOMLValue], PolicyError)] = [
            (
                ["pids_max": .integer(0)],
                .invalidValue(
                    file: file, line: headerLines, key: "pids_max", reason: "must be between 1 and 4194304 (processes and threads of one tenant), not 0")
            ),
            (
                ["memory_max": .string("lots")],
                .invalidValue(
                    file: file, line: headerLines, key: "memory_max", reason: "\"lots\" is not a size (use bytes or a number with K, M, G or T, e.g. \"256M\")")
            ),
            (["pids_mx": .integer(3)], .unknownKey(file: file, line: headerLines + 1, key: "pids_mx")),
            (
                ["jobs_per_minute": .string("10")],
                .wrongType(file: file, line: headerLines, key: "jobs_per_minute", expected: "an integer (write 10 without quotes)", found: "string \"10\"")
            ),
        ]
        for (changes, expected) in cases {
            XCTAssertThrowsError(try QuotaOverrides.write(tenant: "acme", changes: changes, directory: dir.quota), "\(changes)") {
                XCTAssertEqual($0 as? PolicyError, expected)
            }
            XCTAssertEqual(try String(contentsOfFile: file, encoding: .utf8), before, "a refused change writes nothing")
        }
        // Checked against the tiers when the policy set is given.
        let policies = try PolicyLoader.load(directory: dir.path)
        XCTAssertThrowsError(
            try QuotaOverrides.write(tenant: "acme", changes: ["timeout_default_s": .integer(600)], directory: dir.quota, policies: policies)
        ) { XCTAssertTrue(($0 as? PolicyError)?.description.contains("is longer than timeout_max_s") ?? false) }
        XCTAssertThrowsError(
            try QuotaOverrides.write(tenant: "acme", changes: ["seccomp_profile": .string("nosuch")], directory: dir.quota, policies: policies)
        ) { XCTAssertEqual(($0 as? PolicyError)?.key, "seccomp_profile") }
        XCTAssertThrowsError(try QuotaOverrides.write(tenant: "../x", changes: [:], directory: dir.quota))
    }

    func testWriteDoesNotFollowSymlinks() throws {
        let dir = try ScratchPolicies()
        defer { dir.cleanup() }
        let victim = dir.path + "-state/victim"
        try "keep\n".write(toFile: victim, atomically: true, encoding: .utf8)
        try FileManager.default.createDirectory(atPath: dir.quota, withIntermediateDirectories: true)
        try FileManager.default.createSymbolicLink(atPath: dir.quota + "/acme.toml", withDestinationPath: victim)
        XCTAssertThrowsError(try QuotaOverrides.write(tenant: "acme", changes: ["pids_max": .integer(5)], directory: dir.quota)) {
            guard case .unreadable = $0 as? PolicyError else { return XCTFail("\($0)") }
        }
        XCTAssertEqual(try String(contentsOfFile: victim, encoding: .utf8), "keep\n")
        // A symlinked quota directory is refused too.
        let linkDir = dir.path + "-state/linked"
        try FileManager.default.createSymbolicLink(atPath: linkDir, withDestinationPath: dir.path + "/tenants")
        XCTAssertThrowsError(try QuotaOverrides.write(tenant: "beta", changes: ["pids_max": .integer(5)], directory: linkDir)) {
            guard case .unwritable = $0 as? PolicyError else { return XCTFail("\($0)") }
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir.file("tenants/beta.toml")))
    }

    func testBadQuotaFileIsReported() throws {
        let dir = try ScratchPolicies()
        defer { dir.cleanup() }
        try FileManager.default.createDirectory(atPath: dir.quota, withIntermediateDirectories: true)
        try "\nnetwork = \"host\"\n".write(toFile: dir.quota + "/acme.toml", atomically: true, encoding: .utf8)
        let report = PolicyLoader.check(directory: dir.path, quotaDirectory: dir.quota)
        XCTAssertEqual(
            report.problems.map(\.report),
            [
                "\(dir.quota)/acme.toml:2: network: \"host\" is not a network mode (use \"none\": own network namespace, no interface up; \"loopback\": only lo, up; or \"egress\": lo and the tenant's egress proxy, [egress] allow)"
            ])
        XCTAssertNil(report.policySet)
        XCTAssertTrue(PolicyLoader.check(directory: dir.path, quotaDirectory: dir.quota + "-absent").ok)
    }
}
