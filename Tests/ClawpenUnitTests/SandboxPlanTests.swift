import CClawpenShim
@testable import ClawpenPolicy
@testable import ClawpenSandbox
@testable import ClawpenSupervisor
import ClawpenWire
import Foundation
import XCTest

final class SandboxPlanTests: XCTestCase {
    func plan(controllers: Set<String> = []) throws -> SandboxPlan {
        Plan.make(
            tenant: try TenantName(validating: "acme"), uid: 200_007, workspace: "/workspace/acme",
            limits: SandboxLimits(TierLimits.defaults(for: .free)), enabled: true, controllers: controllers)
    }

    func testPlanRoundTripsThroughTheConfigureMessage() throws {
        var p = try plan()
        p.seccompProfile = "default"
        p.seccompProgram = Array(repeating: 7, count: 80)
        XCTAssertEqual(try SupervisorToWorker.decode(SupervisorToWorker.configure(p).encoded()), .configure(p))
    }

    func testPlanFollowsTheHostAndThePolicy() throws {
        let p = try plan()
        XCTAssertEqual(p.uid, 200_007)
        XCTAssertEqual(p.gid, 200_007)
        XCTAssertTrue(p.passwd.contains("acme:x:200007:200007:"))
        XCTAssertTrue(p.group.contains("acme:x:200007:"))
        XCTAssertEqual(p.tmpSizeBytes, 64 * 1024 * 1024)
        // /usr is bound; merged-usr links become links (on a host that has them).
        XCTAssertTrue(p.readOnlyBinds.contains { $0.target == "/usr" })
        for link in p.symlinks {
            XCTAssertEqual(Plan.linkContent(link.target), link.source, "the same link as the host's")
            XCTAssertFalse(p.readOnlyBinds.contains { $0.target == link.target })
        }
        XCTAssertTrue(p.etcBinds.allSatisfy { $0.target.hasPrefix("/etc/") })
        // Without controllers: RLIMIT_NPROC on the worker and RLIMIT_AS on each job are the fallbacks.
        XCTAssertTrue(p.workerLimits.contains { $0.resource == CP_RLIMIT_NPROC && $0.hard == 64 })
        XCTAssertEqual(p.jobLimits.first?.hard, 256 * 1024 * 1024)
        // With them, the cgroup holds those limits instead.
        let withControllers = try plan(controllers: ["memory", "pids", "cpu"])
        XCTAssertFalse(withControllers.workerLimits.contains { $0.resource == CP_RLIMIT_NPROC })
        XCTAssertTrue(withControllers.jobLimits.isEmpty)
        let lines = Checklist.lines(for: p)
        XCTAssertTrue(lines.contains("[worker] seccomp: no seccomp filter") && lines.contains("[job] job cgroup: no job cgroups"), "\(lines)")
        XCTAssertEqual(lines.count, Checklist.steps.count)
    }

    /// The checklist is the order of operations: the supervisor's mount-namespace steps form one
    /// run that starts with private propagation, the workspace is opened before anything is
    /// mounted over it, /dev comes before /proc (its masks bind /dev/null), the root becomes
    /// read-only last of them, pivot_root after every mount, identity after everything that
    /// needs privilege, seccomp last of the worker's steps.
    func testChecklistOrderIsTheOrderOfOperations() throws {
        let names = Checklist.steps.map(\.name)
        func index(_ n: String) throws -> Int { try XCTUnwrap(names.firstIndex(of: n), n) }
        let mountSteps = Checklist.steps.indices.filter { Checklist.steps[$0].side == .mountNamespace }
        XCTAssertEqual(mountSteps, Array(mountSteps.first!...mountSteps.last!), "one contiguous run")
        XCTAssertEqual(Checklist.steps[mountSteps.first!].name, "private mounts")
        XCTAssertEqual(Checklist.steps[mountSteps.last!].name, "root read-only")
        XCTAssertLessThan(try index("workspace"), try index("new root"))
        XCTAssertLessThan(try index("/dev"), try index("/proc"))
        XCTAssertLessThan(mountSteps.last!, try index("pivot_root"))
        XCTAssertLessThan(try index("pivot_root"), try index("identity"))
        let workerSteps = Checklist.steps.filter { $0.side == .worker }
        XCTAssertEqual(workerSteps.first?.name, "loopback")
        XCTAssertEqual(workerSteps.last?.name, "seccomp")
        XCTAssertEqual(Checklist.steps.filter(\.finishedInWorker).map(\.name), ["/proc"])
        XCTAssertTrue(Checklist.steps.filter { $0.side == .worker || $0.side == .mountNamespace }.allSatisfy { $0.run != nil })
        XCTAssertTrue(Checklist.steps.allSatisfy { !$0.name.isEmpty && ($0.name == "cwd" || !$0.defendsAgainst.isEmpty) })
    }

    /// network = "none" leaves lo down; "loopback" brings it up, and the plan says which.
    func testNetworkSettingReachesThePlan() throws {
        XCTAssertFalse(try plan().loopback, "the free tier's network is none")
        var limits = SandboxLimits(TierLimits.defaults(for: .free))
        limits.network = "loopback"
        let p = Plan.make(tenant: try TenantName(validating: "acme"), uid: 200_007, workspace: "/w/acme", limits: limits, enabled: true, controllers: [])
        XCTAssertTrue(p.loopback)
        XCTAssertTrue(Checklist.lines(for: p).contains("[worker] loopback: lo up (network = \"loopback\")"))
        XCTAssertEqual(try SupervisorToWorker.decode(SupervisorToWorker.configure(p).encoded()), .configure(p))
    }

    func testUntrustedPlanBytesAreRejected() throws {
        let encoded = SupervisorToWorker.configure(try plan()).encoded()
        for n in stride(from: 0, to: encoded.count, by: 7) {
            XCTAssertThrowsError(try SupervisorToWorker.decode(Array(encoded.prefix(n))))
        }
    }
}

final class SeccompProfileTests: XCTestCase {
    static var repoRoot: String {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path
    }

    func testShippedProfilesEqualTheEmbeddedOnes() throws {
        let shipped = try SeccompProfiles.load(directory: Self.repoRoot + "/policies")
        let embedded = SeccompProfiles.embedded
        XCTAssertEqual(Set(shipped.keys), ["default", "strict"])
        for (name, profile) in shipped { XCTAssertEqual(embedded[name], profile, "policies/seccomp/\(name).toml differs from the embedded copy") }
        for f in EmbeddedSeccomp.files {
            let text = try String(contentsOfFile: Self.repoRoot + "/policies/seccomp/\(f.name).toml", encoding: .utf8)
            XCTAssertEqual(text, f.text, "\(f.name).toml and EmbeddedSeccomp.swift must stay identical")
        }
    }

    func testEveryShippedNameIsASyscallAndTheProfilesCompile() throws {
        for (name, profile) in SeccompProfiles.embedded {
            XCTAssertEqual(SeccompCompiler.unknownNames(profile), [], name)
            let program = try SeccompCompiler.compile(profile)
            XCTAssertEqual(program.count % 8, 0)
            XCTAssertGreaterThan(program.count, 8 * 50)
        }
        XCTAssertTrue(SeccompProfiles.embedded["strict"]!.allow.count < SeccompProfiles.embedded["default"]!.allow.count)
        XCTAssertFalse(SeccompProfiles.embedded["strict"]!.allow.contains("socket"))
    }

    func testProfileErrorsNameFileKeyAndLine() {
        func parse(_ text: String) -> PolicyError? {
            do { _ = try SeccompProfile.parse(text, file: "p.toml", name: "p"); return nil } catch { return error }
        }
        XCTAssertEqual(parse("kill = []\n"), .missingKey(file: "p.toml", key: "allow"))
        if case .unknownKey(_, let line, let key) = parse("allow = [\"read\"]\nbogus = 1\n") {
            XCTAssertEqual(line, 2); XCTAssertEqual(key, "bogus")
        } else {
            XCTFail()
        }
        if case .invalidValue(_, _, let key, let reason) = parse("allow = [\"unshare\"]\n") {
            XCTAssertEqual(key, "allow"); XCTAssertTrue(reason.contains("restrict_namespaces"))
        } else {
            XCTFail()
        }
        if case .invalidValue(_, _, _, let reason) = parse("allow = [\"read\"]\nkill = [\"read\"]\n") {
            XCTAssertTrue(reason.contains("also in allow"))
        } else {
            XCTFail()
        }
        if case .invalidValue = parse("allow = [\"Read Me\"]\n") {} else { XCTFail() }
        XCTAssertEqual(
            SeccompCompiler.unknownNames(SeccompProfile(name: "x", allow: ["read", "no_such_call"], kill: [], restrictNamespaces: true)), ["no_such_call"])
    }
}
