import ClawpenTestSupport
import Foundation
import XCTest

/// Class: /proc. What container runtimes mask reads as empty, what they make read-only refuses
/// writes, and mountinfo shows the host's workspace path only where a bind cannot hide it.
final class ProcMaskTests: XCTestCase {
    var daemon: Daemon!
    /// The masks the sandbox promises (docs/sandbox.md, "/proc").
    static let maskedFiles = [
        "kcore", "keys", "key-users", "kallsyms", "config.gz", "interrupts", "softirqs",
        "timer_list", "timer_stats", "sched_debug", "latency_stats",
    ]
    static let maskedDirectories = ["acpi", "asound", "scsi"]
    static let readOnly = ["sys", "sysrq-trigger"]

    override func setUpWithError() throws {
        try XCTSkipUnless(geteuid() == 0, "the sandbox needs root")
        daemon = try Daemon().start()
        try daemon.createTenant("a")
        try daemon.assertSandboxed("a")
    }
    override func tearDown() { daemon?.cleanup() }

    func testReadsOfMaskedProcFilesAreEmpty() throws {
        // Those a non-root user could read at all (a root-only file needs no cover).
        let present = Self.maskedFiles.filter { FileManager.default.fileExists(atPath: "/proc/" + $0) }
        XCTAssertFalse(present.isEmpty, "this kernel has none of them?")
        let job = try daemon.run("a", ["sh", "-c", present.map { "printf '%s %s\\n' \($0) $(cat /proc/\($0) 2>/dev/null | wc -c)" }.joined(separator: "; ")])
        XCTAssertEqual(job.state, .succeeded, job.stderr)
        for name in present {
            XCTAssertTrue(job.stdout.contains("\(name) 0\n"), "/proc/\(name) is not masked: \(job.stdout)")
        }
        let dirs = Self.maskedDirectories.filter { FileManager.default.fileExists(atPath: "/proc/" + $0) }
        if !dirs.isEmpty {
            let listing = try daemon.run("a", ["sh", "-c", dirs.map { "ls -A /proc/\($0) | wc -l" }.joined(separator: "; ")])
            XCTAssertEqual(
                listing.stdout.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }, dirs.map { _ in "0" },
                "masked directories are empty: \(listing.stdout)")
        }
        // Writes where runtimes make /proc read-only are refused (probed by opening only).
        let probe = try daemon.run(
            "a",
            [
                "python3", "-c",
                """
                import os
                for p in ["/proc/sys/kernel/hostname", "/proc/sys/vm/drop_caches", "/proc/sysrq-trigger", "/proc/irq/default_smp_affinity", "/proc/fs", "/proc/bus"]:
                    if not os.path.exists(p): continue
                    try:
                        fd = os.open(p, os.O_WRONLY) if not os.path.isdir(p) else os.open(p + "/.probe", os.O_WRONLY | os.O_CREAT); os.close(fd); print("WRITABLE", p)
                    except OSError as e:
                        print("refused", p, e.errno)
                """,
            ])
        XCTAssertFalse(probe.stdout.contains("WRITABLE"), probe.stdout)
        let mounts = try daemon.run("a", ["cat", "/proc/self/mountinfo"]).stdout
        for name in Self.readOnly where FileManager.default.fileExists(atPath: "/proc/" + name) {
            let line = mounts.split(separator: "\n").first { $0.split(separator: " ").dropFirst(4).first.map(String.init) == "/proc/" + name }
            XCTAssertTrue(line?.split(separator: " ").dropFirst(5).first?.hasPrefix("ro") ?? false, "/proc/\(name) read-only: \(line ?? "missing")")
        }
    }

    /// The root no longer shows the workspace's host path; the /home bind is the one line that
    /// still does (a bind's root is its path in the host filesystem), and of the daemon's other
    /// paths only the tenant's agent socket directory, bound at /run/clawpen (docs/sandbox.md).
    func testMountinfoShowsTheWorkspacePathOnlyForHome() throws {
        let mounts = try daemon.run("a", ["cat", "/proc/self/mountinfo"]).stdout
        let leaking = mounts.split(separator: "\n").filter { $0.contains(daemon.workspaceRoot) }
        XCTAssertEqual(leaking.count, 1, "\(leaking)")
        XCTAssertEqual(leaking.first?.split(separator: " ").dropFirst(4).first, "/home", "\(leaking)")
        let hostPaths = mounts.split(separator: "\n").filter { $0.contains(daemon.dir + "/") }
        XCTAssertEqual(
            hostPaths.compactMap { $0.split(separator: " ").dropFirst(4).first.map(String.init) }.sorted(), ["/home", "/run/clawpen"],
            "nothing else of the test's host paths: \(hostPaths)")
        XCTAssertTrue(hostPaths.contains { $0.contains(daemon.stateDir + "/agent/a ") }, "\(hostPaths)")
    }
}
