import Foundation
import XCTest

@testable import ClawpenPolicy

/// The repository's shipped `policies/`, found from this file's location.
private let shippedPolicies: String = {
    let here = URL(fileURLWithPath: #filePath).resolvingSymlinksInPath()
    return here.deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("policies").path
}()

/// A scratch copy of the shipped policy directory, removed by `cleanup()`.
private struct PolicyDir {
    let path: String

    init() throws {
        path = NSTemporaryDirectory() + "clawpen-policy-test-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: path + "/tiers", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: path + "/tenants", withIntermediateDirectories: true)
        for tier in Tier.allCases {
            try write("tiers/\(tier.rawValue).toml", try shipped("tiers/\(tier.rawValue).toml"))
        }
    }

    func shipped(_ relative: String) throws -> String {
        try String(contentsOfFile: shippedPolicies + "/" + relative, encoding: .utf8)
    }

    func file(_ relative: String) -> String { path + "/" + relative }

    func write(_ relative: String, _ text: String) throws {
        try text.write(toFile: file(relative), atomically: true, encoding: .utf8)
    }

    func remove(_ relative: String) throws {
        try FileManager.default.removeItem(atPath: file(relative))
    }

    /// Replaces the line `key = ...` of a shipped tier file; returns that line's number.
    @discardableResult
    func setKey(_ key: String, to valueText: String, in tier: Tier = .free) throws -> Int {
        let relative = "tiers/\(tier.rawValue).toml"
        var lines = try String(contentsOfFile: file(relative), encoding: .utf8)
            .split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        guard let i = lines.firstIndex(where: { $0.hasPrefix(key + " =") }) else {
            throw NSError(domain: "PolicyTests", code: 1, userInfo: [NSLocalizedDescriptionKey: "no key \(key)"])
        }
        lines[i] = "\(key) = \(valueText)"
        try write(relative, lines.joined(separator: "\n"))
        return i + 1
    }

    /// Deletes the line `key = ...` of a tier file.
    func deleteKey(_ key: String, in tier: Tier) throws {
        let relative = "tiers/\(tier.rawValue).toml"
        let lines = try String(contentsOfFile: file(relative), encoding: .utf8)
            .split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        try write(relative, lines.filter { !$0.hasPrefix(key + " =") }.joined(separator: "\n"))
    }

    func cleanup() {
        try? FileManager.default.removeItem(atPath: path)
    }
}

final class PolicyTests: XCTestCase {
    private func loadError(_ dir: String, file: StaticString = #filePath, line: UInt = #line) -> PolicyError? {
        do {
            let set = try PolicyLoader.load(directory: dir)
            XCTFail("loaded without error: \(set)", file: file, line: line)
            return nil
        } catch {
            return error
        }
    }

    // MARK: - Sizes

    func testByteSizeParse() {
        let mi = ByteSize.mebibyte
        let cases: [(String, Int64?)] = [
            ("0", 0), ("1048576", 1_048_576), ("512K", 512 * 1024), ("256M", 256 * mi), ("1G", 1024 * mi),
            ("4G", 4096 * mi), ("2T", 2 * ByteSize.tebibyte), ("256MiB", 256 * mi), ("256MB", 256 * mi),
            ("256m", 256 * mi), ("1gib", 1024 * mi), ("64 M", 64 * mi), (" 1K ", 1024), ("100B", 100),
            ("256Q", nil), ("", nil), ("M", nil), ("1.5G", nil), ("-1M", nil), ("1MiBs", nil), ("1 G B", nil),
            ("9999999999T", nil), ("99999999999999999999", nil),
        ]
        for (text, expected) in cases {
            XCTAssertEqual(ByteSize.parse(text), expected, "ByteSize.parse(\(text.debugDescription))")
        }
    }

    func testByteSizeFormat() {
        XCTAssertEqual(ByteSize.format(256 * ByteSize.mebibyte), "256M")
        XCTAssertEqual(ByteSize.format(ByteSize.gibibyte), "1G")
        XCTAssertEqual(ByteSize.format(1536 * 1024), "1536K")
        XCTAssertEqual(ByteSize.format(1000), "1000")
        XCTAssertEqual(ByteSize.format(0), "0")
        XCTAssertEqual(ByteSize.format(3 * ByteSize.tebibyte), "3T")
    }

    // MARK: - Model

    func testDefaults() {
        let free = TierLimits.defaults(for: .free)
        XCTAssertEqual(free.maxConcurrentRuns, 2)
        XCTAssertEqual(free.jobsPerMinute, 600)
        XCTAssertEqual(free.maxQueued, 1000)
        XCTAssertEqual(free.memoryMaxBytes, 268_435_456)
        XCTAssertEqual(free.pidsMax, 64)
        XCTAssertEqual(free.cpuMaxCores, 0.5)
        XCTAssertEqual(free.cpuWeight, 1)
        XCTAssertEqual(free.timeoutDefaultSeconds, 30)
        XCTAssertEqual(free.timeoutMaxSeconds, 300)
        XCTAssertEqual(free.outputMaxBytes, 1_048_576)
        XCTAssertEqual(free.network, "none")
        XCTAssertEqual(TierLimits.defaults(for: .pro).network, "egress", "pro: the egress proxy, with an empty allowlist")
        XCTAssertEqual(TierLimits.defaults(for: .enterprise).network, "egress")
        XCTAssertEqual(TierLimits.defaults(for: .pro).egressAllow, [])
        XCTAssertEqual(free.seccompProfile, "default")
        XCTAssertEqual(free.tmpSizeBytes, 64 * 1_048_576)
        let pro = TierLimits.defaults(for: .pro), ent = TierLimits.defaults(for: .enterprise)
        XCTAssertEqual([free, pro, ent].map(\.maxConcurrentRuns), [2, 8, 32])
        XCTAssertEqual([free, pro, ent].map(\.jobsPerMinute), [600, 6000, 60000])
        XCTAssertEqual([free, pro, ent].map(\.memoryMaxBytes), [256 << 20, 1 << 30, 4 << 30])
        XCTAssertEqual([free, pro, ent].map(\.pidsMax), [64, 256, 1024])
        XCTAssertEqual([free, pro, ent].map(\.cpuMaxCores), [0.5, 1, 2])
        XCTAssertEqual([free, pro, ent].map(\.cpuWeight), [1, 4, 16])
        XCTAssertEqual([free, pro, ent].map(\.jobRetentionDays), [7, 30, 90])
        XCTAssertEqual(TierLimits.keys.count, 34)
        XCTAssertEqual([free, pro, ent].map(\.agentMaxConnections), [64, 256, 1024])
        XCTAssertEqual([free, pro, ent].map(\.maxDepth), [3, 3, 3])
        XCTAssertEqual([free, pro, ent].map(\.treeMaxJobs), [50, 50, 50])
        XCTAssertEqual([free, pro, ent].map(\.treeCPUSeconds), [60, 600, 3600])
        XCTAssertEqual([free, pro, ent].map(\.treeTimeoutSeconds), [300, 1800, 7200])
        XCTAssertEqual([free, pro, ent].map(\.interactiveTimeoutMaxSeconds), [600, 3600, 14400])
        XCTAssertEqual(TierLimits.requiredKeys.count, 17)
        XCTAssertEqual([free, pro, ent].map(\.maxAttempts), [3, 3, 3])
        XCTAssertEqual([free, pro, ent].map(\.crashLoopMax), [5, 5, 5])
        XCTAssertEqual([free, pro, ent].map(\.diskMaxBytes), [1 << 30, 10 << 30, 100 << 30])
        XCTAssertEqual([free, pro, ent].map(\.inodesMax), [100_000, 1_000_000, 10_000_000])
        XCTAssertEqual([free, pro, ent].map(\.fileMaxBytes), [64 << 20, 1 << 30, 4 << 30])
    }

    func testCpuMaxCgroupString() {
        var l = TierLimits.defaults(for: .free)
        XCTAssertEqual(l.cpuMaxCgroupString, "50000 100000")
        l.cpuMaxCores = 1
        XCTAssertEqual(l.cpuMaxCgroupString, "100000 100000")
        l.cpuMaxCores = 2
        XCTAssertEqual(l.cpuMaxCgroupString, "200000 100000")
        l.cpuMaxCores = 0.25
        XCTAssertEqual(l.cpuMaxCgroupString, "25000 100000")
    }

    // MARK: - Shipped files

    func testShippedPoliciesEqualEmbedded() throws {
        let loaded = try PolicyLoader.load(directory: shippedPolicies)
        XCTAssertEqual(loaded.source, .directory(shippedPolicies))
        XCTAssertEqual(PolicyLoader.embedded.source, .embedded)
        for tier in Tier.allCases {
            XCTAssertEqual(loaded.limits(for: tier), PolicyLoader.embedded.limits(for: tier), "tier \(tier)")
        }
        XCTAssertEqual(loaded.tiers, PolicyLoader.embedded.tiers)
        XCTAssertEqual(loaded.tenantOverrides, [:]) // tenants/README.md is not a policy
        XCTAssertEqual(PolicyLoader.check(directory: shippedPolicies), [])
    }

    func testShippedTierFilesListEveryKeyInOrder() throws {
        for tier in Tier.allCases {
            let text = try String(contentsOfFile: shippedPolicies + "/tiers/\(tier.rawValue).toml", encoding: .utf8)
            let doc = try TOMLDocument.parse(text, file: "tiers/\(tier.rawValue).toml")
            // The [egress] table follows the keys (a TOML table cannot come before them).
            XCTAssertEqual(doc.root.keys.filter { $0 != "egress" && $0 != "secrets" }, TierLimits.keys, "tier \(tier)")
        }
    }

    func testShippedAccessFileParses() throws {
        let text = try String(contentsOfFile: shippedPolicies + "/access.toml", encoding: .utf8)
        let root = try TOMLDocument.parse(text, file: "access.toml").root
        XCTAssertEqual(root["operators"]?.tableValue?["users"], .array([.string("root")]))
        XCTAssertEqual(root["operators"]?.tableValue?["groups"], .array([]))
    }

    // MARK: - Loading errors

    func testMissingDirectory() {
        let dir = "/nonexistent/clawpen-policies-\(UUID().uuidString)"
        XCTAssertEqual(loadError(dir), .missingDirectory(dir))
        XCTAssertEqual(PolicyLoader.check(directory: dir), [.missingDirectory(dir)])
    }

    func testMissingTierFile() throws {
        let dir = try PolicyDir()
        defer { dir.cleanup() }
        try dir.remove("tiers/pro.toml")
        let error = loadError(dir.path)
        XCTAssertEqual(error, .missingFile(dir.file("tiers/pro.toml")))
        XCTAssertTrue(error?.description.hasPrefix(dir.file("tiers/pro.toml") + ": file is missing") ?? false)
    }

    func testUnknownKey() throws {
        let dir = try PolicyDir()
        defer { dir.cleanup() }
        let text = try dir.shipped("tiers/enterprise.toml") + "pids_mx = 3\nfrobnicate = true\n"
        try dir.write("tiers/enterprise.toml", text)
        let line = text.split(separator: "\n", omittingEmptySubsequences: false).count - 2
        let file = dir.file("tiers/enterprise.toml")
        let error = loadError(dir.path)
        XCTAssertEqual(error, .unknownKey(file: file, line: line, key: "pids_mx"))
        XCTAssertEqual(error?.description, "\(file):\(line): unknown key 'pids_mx' (did you mean 'pids_max'?)")
        let all = PolicyLoader.check(directory: dir.path)
        XCTAssertEqual(all.count, 2)
        XCTAssertEqual(all.last, .unknownKey(file: file, line: line + 1, key: "frobnicate"))
        XCTAssertTrue(all.last?.description.contains("known keys: max_concurrent_runs, jobs_per_minute") ?? false)
    }

    func testTableInTierFileIsUnknownKey() throws {
        let dir = try PolicyDir()
        defer { dir.cleanup() }
        let text = try dir.shipped("tiers/free.toml") + "[limits]\nx = 1\n"
        try dir.write("tiers/free.toml", text)
        let line = text.split(separator: "\n", omittingEmptySubsequences: false).count - 2
        XCTAssertEqual(loadError(dir.path), .unknownKey(file: dir.file("tiers/free.toml"), line: line, key: "limits"))
    }

    func testTierKeyOnlyInTenantFiles() throws {
        let dir = try PolicyDir()
        defer { dir.cleanup() }
        try dir.write("tiers/free.toml", "tier = \"pro\"\n" + (try dir.shipped("tiers/free.toml")))
        let error = loadError(dir.path)
        XCTAssertEqual(error, .unknownKey(file: dir.file("tiers/free.toml"), line: 1, key: "tier"))
        XCTAssertTrue(error?.description.contains("only valid in tenants/") ?? false)
    }

    func testWrongTypes() throws {
        let cases: [(key: String, value: String, expected: String, found: String)] = [
            ("pids_max", #""64""#, "an integer (write 64 without quotes)", #"string "64""#),
            ("max_concurrent_runs", "2.5", "an integer", "float 2.5"),
            ("memory_max", "true", #"a size (bytes as an integer, or a string such as "256M")"#, "boolean true"),
            ("cpu_max", #""0.5""#, "a number (CPU cores, e.g. 0.5 for half a core; cgroup cpu.max needs at least 0.01)", #"string "0.5""#),
            ("network", "[\"none\"]", "a string", "array of 1 element"),
            ("timeout_max_s", "'300'", "a number (seconds; at most one day)", #"string "300""#),
        ]
        for c in cases {
            let dir = try PolicyDir()
            defer { dir.cleanup() }
            let line = try dir.setKey(c.key, to: c.value, in: .pro)
            let file = dir.file("tiers/pro.toml")
            let error = loadError(dir.path)
            XCTAssertEqual(error, .wrongType(file: file, line: line, key: c.key, expected: c.expected, found: c.found))
            XCTAssertEqual(error?.description, "\(file):\(line): \(c.key): expected \(c.expected), found \(c.found)")
        }
    }

    func testImpossibleValues() throws {
        let cases: [(key: String, value: String, reason: String)] = [
            ("max_concurrent_runs", "0", "must be between 1 and 4096"),
            ("max_concurrent_runs", "-3", "not -3"),
            ("jobs_per_minute", "0", "must be between 1 and"),
            ("max_queued", "0", "must be between 1 and"),
            ("pids_max", "0", "must be between 1 and 4194304"),
            ("cpu_max", "0", "must be greater than 0 cores"),
            ("cpu_max", "-1.5", "must be greater than 0 cores"),
            ("cpu_max", "0.001", "must be at least 0.01 cores"),
            ("cpu_max", "nan", "must be a finite number"),
            ("cpu_weight", "0", "must be between 1 and 10000"),
            ("cpu_weight", "20000", "must be between 1 and 10000"),
            ("memory_max", #""512K""#, #""512K" is too small: the minimum is 1M"#),
            ("memory_max", "1000", "1000 is too small: the minimum is 1M"),
            ("memory_max", #""256Q""#, #""256Q" is not a size (use bytes or a number with K, M, G or T, e.g. "256M")"#),
            ("output_max_bytes", #""65M""#, #""65M" is too large: the maximum is 64M"#),
            ("output_max_bytes", "0", "0 is too small"),
            ("tmp_size", #""lots""#, "is not a size"),
            ("timeout_default_s", "0", "must be greater than 0 s"),
            ("timeout_max_s", "86401", "must be at most 86400 s"),
            ("timeout_max_s", "-1", "must be greater than 0 s"),
            ("timeout_default_s", "301", "timeout_default_s (301 s) is longer than timeout_max_s (300 s)"),
            ("timeout_max_s", "10", "timeout_default_s (30 s) is longer than timeout_max_s (10 s)"),
            ("network", #""host""#, #""host" is not a network mode"#),
            ("seccomp_profile", #""../etc/x""#, "is not a profile name"),
            ("seccomp_profile", #""""#, "is not a profile name"),
        ]
        for c in cases {
            let dir = try PolicyDir()
            defer { dir.cleanup() }
            let line = try dir.setKey(c.key, to: c.value, in: .free)
            let file = dir.file("tiers/free.toml")
            guard case .invalidValue(let f, let l, let k, let reason) = loadError(dir.path) else {
                XCTFail("\(c.key) = \(c.value): expected invalidValue, got \(String(describing: loadError(dir.path)))")
                continue
            }
            XCTAssertEqual(f, file)
            // A timeout conflict is reported on timeout_default_s, the others on their own line.
            if c.reason.hasPrefix("timeout_default_s (") {
                XCTAssertEqual(k, "timeout_default_s")
                XCTAssertEqual(l, c.key == "timeout_default_s" ? line : line - 3)
            } else {
                XCTAssertEqual(k, c.key)
                XCTAssertEqual(l, line, "\(c.key) = \(c.value)")
            }
            XCTAssertTrue(reason.contains(c.reason), "\(c.key) = \(c.value): '\(reason)' lacks '\(c.reason)'")
        }
    }

    func testSizeMessageMatchesTheDocumentedForm() throws {
        let dir = try PolicyDir()
        defer { dir.cleanup() }
        let line = try dir.setKey("memory_max", to: #""256Q""#)
        XCTAssertEqual(
            loadError(dir.path)?.description,
            #"\#(dir.file("tiers/free.toml")):\#(line): memory_max: "256Q" is not a size (use bytes or a number with K, M, G or T, e.g. "256M")"#
        )
    }

    func testSizesAsIntegersAndStrings() throws {
        let dir = try PolicyDir()
        defer { dir.cleanup() }
        try dir.setKey("memory_max", to: "536870912", in: .free)
        try dir.setKey("tmp_size", to: #""128MiB""#, in: .free)
        try dir.setKey("output_max_bytes", to: "65536", in: .free)
        try dir.setKey("cpu_max", to: "3", in: .pro)
        try dir.setKey("timeout_default_s", to: "2.5", in: .pro)
        let set = try PolicyLoader.load(directory: dir.path)
        XCTAssertEqual(set.free.memoryMaxBytes, 512 * ByteSize.mebibyte)
        XCTAssertEqual(set.free.tmpSizeBytes, 128 * ByteSize.mebibyte)
        XCTAssertEqual(set.free.outputMaxBytes, 65536)
        XCTAssertEqual(set.pro.cpuMaxCores, 3)
        XCTAssertEqual(set.pro.cpuMaxCgroupString, "300000 100000")
        XCTAssertEqual(set.pro.timeoutDefaultSeconds, 2.5)
        XCTAssertEqual(set.source, .directory(dir.path))
    }

    func testMissingKey() throws {
        let dir = try PolicyDir()
        defer { dir.cleanup() }
        try dir.deleteKey("cpu_weight", in: .enterprise)
        try dir.deleteKey("tmp_size", in: .enterprise)
        let file = dir.file("tiers/enterprise.toml")
        let error = loadError(dir.path)
        XCTAssertEqual(error, .missingKey(file: file, key: "cpu_weight"))
        XCTAssertTrue(error?.description.hasPrefix("\(file): missing key 'cpu_weight'") ?? false)
        XCTAssertEqual(
            PolicyLoader.check(directory: dir.path),
            [.missingKey(file: file, key: "cpu_weight"), .missingKey(file: file, key: "tmp_size")])
    }

    func testTierFileWithoutTheTreeKeysGetsTheTiersValues() throws {
        let dir = try PolicyDir()
        defer { dir.cleanup() }
        for key in ["max_depth", "tree_max_jobs", "tree_cpu_seconds", "tree_timeout_s"] {
            try dir.deleteKey(key, in: .pro)
        }
        try dir.setKey("tree_cpu_seconds", to: "2.5", in: .free)
        let set = try PolicyLoader.load(directory: dir.path)
        let pro = try XCTUnwrap(set.tiers[.pro])
        XCTAssertEqual(pro.maxDepth, 3)
        XCTAssertEqual(pro.treeMaxJobs, 50)
        XCTAssertEqual(pro.treeCPUSeconds, 600)
        XCTAssertEqual(pro.treeTimeoutSeconds, 1800)
        XCTAssertEqual(set.tiers[.free]?.treeCPUSeconds, 2.5)
        try dir.setKey("max_depth", to: "-1", in: .free)
        XCTAssertNotNil(loadError(dir.path), "a negative max_depth is refused")
    }

    func testSyntaxErrorInTierFile() throws {
        let dir = try PolicyDir()
        defer { dir.cleanup() }
        let line = try dir.setKey("pids_max", to: "64", in: .free)
        var text = try String(contentsOfFile: dir.file("tiers/free.toml"), encoding: .utf8)
        text = text.replacingOccurrences(of: "pids_max = 64", with: "pids_max 64")
        try dir.write("tiers/free.toml", text)
        let file = dir.file("tiers/free.toml")
        let error = loadError(dir.path)
        XCTAssertEqual(error, .syntax(file: file, line: line, message: "expected '=' after key 'pids_max', found '64'"))
        XCTAssertEqual(error?.description, "\(file):\(line): expected '=' after key 'pids_max', found '64'")
        XCTAssertEqual(error?.line, line)
        XCTAssertEqual(error?.file, file)
    }

    func testCheckCollectsProblemsAcrossFiles() throws {
        let dir = try PolicyDir()
        defer { dir.cleanup() }
        try dir.setKey("pids_max", to: "0", in: .free)
        try dir.setKey("network", to: #""wifi""#, in: .free)
        try dir.remove("tiers/pro.toml")
        try dir.write("tiers/enterprise.toml", "max_concurrent_runs = \n")
        try dir.write("tiers/gold.toml", "")
        try dir.write("tenants/Acme.toml", "")
        try dir.write("tenants/beta.toml", "memory_max = \"1X\"\n")
        let problems = PolicyLoader.check(directory: dir.path)
        let kinds = problems.map { p -> String in
            switch p {
            case .invalidValue(_, _, let key, _): "invalid \(key)"
            case .missingFile(let f): "missing \(f.split(separator: "/").last ?? "")"
            case .syntax: "syntax"
            case .invalidFileName(let f, _): "name \(f.split(separator: "/").last ?? "")"
            default: "\(p)"
            }
        }
        XCTAssertEqual(
            kinds,
            [
                "invalid pids_max", "invalid network", "missing pro.toml", "syntax", "name gold.toml", "name Acme.toml",
                "invalid memory_max",
            ])
        XCTAssertThrowsError(try PolicyLoader.load(directory: dir.path)) { error in
            XCTAssertEqual(error as? PolicyError, problems.first)
        }
    }

    func testUnreadableFiles() throws {
        let dir = try PolicyDir()
        defer { dir.cleanup() }
        try dir.remove("tiers/free.toml")
        try FileManager.default.createDirectory(atPath: dir.file("tiers/free.toml"), withIntermediateDirectories: false)
        XCTAssertEqual(loadError(dir.path), .unreadable(file: dir.file("tiers/free.toml"), reason: "not a regular file"))
        try FileManager.default.removeItem(atPath: dir.file("tiers/free.toml"))
        try Data([0x61, 0x20, 0x3D, 0x20, 0x22, 0xFF, 0x22, 0x0A]).write(to: URL(fileURLWithPath: dir.file("tiers/free.toml")))
        XCTAssertEqual(loadError(dir.path), .unreadable(file: dir.file("tiers/free.toml"), reason: "not valid UTF-8 text"))
    }

    // MARK: - Tenant overrides

    func testTenantOverrideApplies() throws {
        let dir = try PolicyDir()
        defer { dir.cleanup() }
        try dir.write(
            "tenants/acme.toml",
            """
            # acme gets more memory and longer jobs
            memory_max = "2G"
            timeout_max_s = 900
            network = "loopback"
            """)
        try dir.write("tenants/README.md", "not a policy = at all [\n")
        try dir.write("tenants/notes.txt", "ignored")
        let set = try PolicyLoader.load(directory: dir.path)
        XCTAssertEqual(Array(set.tenantOverrides.keys), ["acme"])
        XCTAssertEqual(
            set.tenantOverrides["acme"],
            TenantOverride(memoryMaxBytes: 2 * ByteSize.gibibyte, timeoutMaxSeconds: 900, network: "loopback"))

        var expected = TierLimits.defaults(for: .free)
        expected.memoryMaxBytes = 2 * ByteSize.gibibyte
        expected.timeoutMaxSeconds = 900
        expected.network = "loopback"
        XCTAssertEqual(set.limits(tenant: "acme", tier: .free), expected)
        XCTAssertEqual(set.limits(tenant: "acme", tier: .pro).pidsMax, 256)
        XCTAssertEqual(set.limits(tenant: "acme", tier: .pro).memoryMaxBytes, 2 * ByteSize.gibibyte)
        XCTAssertEqual(set.limits(tenant: "other", tier: .pro), TierLimits.defaults(for: .pro))
        XCTAssertEqual(set.effectiveTier(tenant: "acme", assigned: .enterprise), .enterprise)
    }

    func testTenantOverridePinsTier() throws {
        let dir = try PolicyDir()
        defer { dir.cleanup() }
        try dir.write("tenants/big-co_1.toml", "tier = \"enterprise\"\npids_max = 2048\n")
        let set = try PolicyLoader.load(directory: dir.path)
        XCTAssertEqual(set.effectiveTier(tenant: "big-co_1", assigned: .free), .enterprise)
        var expected = TierLimits.defaults(for: .enterprise)
        expected.pidsMax = 2048
        XCTAssertEqual(set.limits(tenant: "big-co_1", tier: .free), expected)
    }

    func testEmptyTenantOverrideIsAllowed() throws {
        let dir = try PolicyDir()
        defer { dir.cleanup() }
        try dir.write("tenants/quiet.toml", "# nothing changed yet\n")
        let set = try PolicyLoader.load(directory: dir.path)
        XCTAssertEqual(set.tenantOverrides["quiet"], TenantOverride())
        XCTAssertEqual(set.limits(tenant: "quiet", tier: .pro), TierLimits.defaults(for: .pro))
    }

    func testTenantOverrideErrors() throws {
        let cases: [(name: String, text: String, expected: (String) -> PolicyError)] = [
            (
                "acme.toml", "\nmemory_max = \"2X\"\n",
                {
                    .invalidValue(
                        file: $0, line: 2, key: "memory_max",
                        reason: #""2X" is not a size (use bytes or a number with K, M, G or T, e.g. "256M")"#)
                }
            ),
            (
                "acme.toml", "tier = \"gold\"\n",
                {
                    .invalidValue(
                        file: $0, line: 1, key: "tier",
                        reason: #""gold" is not a tier (use "free", "pro", "enterprise")"#)
                }
            ),
            (
                "acme.toml", "tier = 2\n",
                {
                    .wrongType(
                        file: $0, line: 1, key: "tier",
                        expected: #"a tier name string ("free", "pro", "enterprise")"#, found: "integer 2")
                }
            ),
            ("acme.toml", "a = 1\ncolour = \"red\"\n", { .unknownKey(file: $0, line: 1, key: "a") }),
            (
                "acme.toml", "tier = \"pro\"\ntimeout_default_s = 600\n",
                {
                    .invalidValue(
                        file: $0, line: 2, key: "timeout_default_s",
                        reason:
                            "timeout_default_s (600 s) is longer than timeout_max_s (300 s): lower timeout_default_s or raise timeout_max_s (with the limits of tier pro)"
                    )
                }
            ),
            (
                "acme.toml", "\ntimeout_max_s = 5\n",
                {
                    .invalidValue(
                        file: $0, line: 2, key: "timeout_max_s",
                        reason:
                            "timeout_default_s (30 s) is longer than timeout_max_s (5 s): lower timeout_default_s or raise timeout_max_s (with the limits of tiers free, pro, enterprise)"
                    )
                }
            ),
            (
                "Acme.toml", "",
                {
                    .invalidFileName(
                        file: $0, reason: "'Acme.toml' is not <tenant>.toml for a valid tenant name (tenant names match ^[a-z0-9][a-z0-9_-]{0,62}$)")
                }
            ),
            (
                "-x.toml", "",
                {
                    .invalidFileName(file: $0, reason: "'-x.toml' is not <tenant>.toml for a valid tenant name (tenant names match ^[a-z0-9][a-z0-9_-]{0,62}$)")
                }
            ),
            (".toml", "", { _ in .missingDirectory("unused") }), // hidden file: ignored, see below
        ]
        for c in cases {
            let dir = try PolicyDir()
            defer { dir.cleanup() }
            try dir.write("tenants/" + c.name, c.text)
            let file = dir.file("tenants/" + c.name)
            if c.name.hasPrefix(".") {
                XCTAssertEqual(PolicyLoader.check(directory: dir.path), [], "hidden files are ignored")
                continue
            }
            XCTAssertEqual(loadError(dir.path), c.expected(file), c.name + ": " + c.text)
        }
    }

    func testTenantNameValidation() {
        for good in ["a", "acme", "0", "a-b_c", String(repeating: "x", count: 63)] {
            XCTAssertTrue(PolicyLoader.isValidTenantName(good), good)
        }
        for bad in ["", "A", "-a", "_a", "a.b", "a b", "é", "a/b", String(repeating: "x", count: 64)] {
            XCTAssertFalse(PolicyLoader.isValidTenantName(bad), bad)
        }
    }

    func testErrorDescriptions() {
        XCTAssertEqual(
            PolicyError.missingDirectory("/etc/clawpen/policies").description,
            "/etc/clawpen/policies: policy directory does not exist (it must contain tiers/free.toml, tiers/pro.toml and tiers/enterprise.toml)")
        XCTAssertEqual(
            PolicyError.invalidValue(file: "p/tiers/free.toml", line: 3, key: "pids_max", reason: "r").description,
            "p/tiers/free.toml:3: pids_max: r")
        XCTAssertEqual(PolicyError(TOMLError(file: "f", line: 2, message: "m")), .syntax(file: "f", line: 2, message: "m"))
        XCTAssertNil(PolicyError.missingFile("f").line)
    }
}
