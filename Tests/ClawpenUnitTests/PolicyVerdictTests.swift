@testable import ClawpenPolicy
import XCTest

/// The submit path's fast verdict must agree with the explained decision, and the glob fast
/// paths with the general matcher.
final class PolicyVerdictTests: XCTestCase {
    func testGlobFastPathsAgreeWithTheGeneralMatcher() {
        let patterns = ["/usr/bin/su", "/usr/bin/*", "/usr/**", "/home/**", "/home/*", "*", "**", "/usr/*/su", "/a**b", "/usr/bin/*x", ""]
        let subjects = [
            "/usr/bin/su", "/usr/bin/sudo", "/usr/bin/x/y", "/usr/lib/x", "/home", "/home/", "/home/a", "/home/a/b",
            "", "su", "/usr/bin/", "/usr/sbin/su", "/ab", "/a/x/b", "/usr/bin/ax",
        ]
        for p in patterns {
            for s in subjects {
                XCTAssertEqual(Glob.matches(p, s), Glob.general(p, s), "pattern \(p) subject \(s)")
            }
        }
    }

    func testVerdictAgreesWithDecideToolOnTheShippedTiers() {
        let exists: Set<String> = ["/usr/bin/python3", "/usr/bin/su", "/bin/sh", "/usr/bin/sh", "/usr/bin/env", "/usr/bin/mount"]
        let isExecutable: (String) -> Bool = { exists.contains($0) }
        let argvs: [[String]] = [
            ["python3"], ["su"], ["sh", "-c", "x"], ["/bin/sh"], ["nosuch"], ["/opt/x"], ["./run.sh"],
            ["../../usr/bin/su"], ["/home/a/b.py"], ["/tmp/x"], ["mount"], ["/usr/lib/x/y"], [""], [],
        ]
        let envs: [[(name: String, value: String)]] = [
            [], [("TZ", "UTC")], [("LD_PRELOAD", "x")], [("SECRET", "1")],
            [("AGENT_X", "1")], [("PATH", "/x")], [("1BAD", "x")],
        ]
        for tier in Tier.allCases {
            let limits = TierLimits.defaults(for: tier)
            for argv in argvs {
                for env in envs {
                    for cwd in ["/home", "/home/sub", "/"] {
                        let d = decideTool(argv: argv, env: env, cwd: cwd, limits: limits, isExecutable: isExecutable)
                        let v = toolVerdict(argv: argv, env: env, cwd: cwd, limits: limits, isExecutable: isExecutable)
                        let onlyNotFound = d.notFound && d.steps.filter { $0.outcome == .refused }.count == 1
                        let expected: ToolVerdict = d.allowed ? .allowed : onlyNotFound ? .notFoundOnly : .refused
                        XCTAssertEqual(v, expected, "tier \(tier) argv \(argv) env \(env) cwd \(cwd): \(d.message ?? "")")
                    }
                }
            }
        }
    }
}
