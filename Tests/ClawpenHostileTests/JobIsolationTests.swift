import ClawpenTestSupport
import Foundation
import XCTest

/// Jobs of one tenant cannot read or steal from each other: a victim job holds a marker in its
/// environment and its memory; a second, concurrent job of the same tenant tries every way to
/// reach it (/proc/<pid>/environ, mem, maps, ptrace(PTRACE_ATTACH), process_vm_readv,
/// pidfd_open + pidfd_getfd, kill, pidfd_send_signal). Each job runs in a Landlock domain of its
/// own (docs/sandbox.md, "Jobs of one tenant").
///
/// Safety: the gate proves the sandbox (non-root uid, own mount namespace, no_new_privs); the
/// attacks are reads and a signal to the victim job itself, which belongs to this test.
final class JobIsolationTests: XCTestCase {
    var daemon: Daemon!
    let marker = "JOBMARKER-\(UInt64.random(in: 1...UInt64.max))"

    override func setUpWithError() throws {
        daemon = try Daemon().start()
        try daemon.createTenant("a")
        try daemon.assertSandboxed("a")
    }

    override func tearDown() { daemon?.cleanup() }

    /// The Landlock ABI of this kernel (the daemon's status says it).
    func landlockABI() throws -> Int { Int(try daemon.status()["supervisor"]?["landlock_abi"]?.intValue ?? 0) }

    /// Starts the victim: a job with the marker in its environment and memory, its pid in /home.
    func startVictim(seconds: Int = 20) throws -> String {
        _ = try daemon.run("a", ["rm", "-f", "/home/victim.pid"])
        let id = try daemon.connect().submit(
            SubmitRequest(
                tenant: .t("a"),
                argv: [
                    "python3", "-c",
                    """
                    import os, time
                    secret = ("\(marker)-MEM-" * 64).encode()
                    open("/home/victim.pid.tmp", "w").write(str(os.getpid()))
                    os.rename("/home/victim.pid.tmp", "/home/victim.pid")
                    time.sleep(\(seconds))
                    print("victim survived", len(secret))
                    """,
                ],
                env: [.init(name: "AGENT_SECRET", value: marker)], timeoutSeconds: Double(seconds + 10), wait: false)
        ).job.id
        XCTAssertTrue(try daemon.eventually(10) { try daemon.run("a", ["test", "-s", "/home/victim.pid"]).exitCode == 0 }, "the victim started")
        return id
    }

    func testSiblingJobCannotReadEnvironMemOrFdsOfAnother() throws {
        guard try landlockABI() > 0 else {
            throw XCTSkip("no Landlock on this kernel: status says job_isolation none (checked in testStatusSaysHowJobsAreIsolated)")
        }
        let victim = try startVictim(seconds: 8)
        let attack = try daemon.run(
            "a",
            [
                "python3", "-c",
                """
                import ctypes, os
                libc = ctypes.CDLL(None, use_errno=True)
                p = int(open("/home/victim.pid").read())
                print("VICTIM", p)
                print("LISTED" if str(p) in os.listdir("/proc") else "hidden")
                for f in ("environ", "mem", "maps", "fd", "cmdline", "status"):
                    try:
                        if f == "fd":
                            print("READ", f, os.listdir(f"/proc/{p}/fd"))
                        else:
                            with open(f"/proc/{p}/{f}", "rb") as fh:
                                print("READ", f, fh.read(4096))
                    except OSError as e:
                        print("refused", f, e.errno)
                # process_vm_readv(pid, local iov, 1, remote iov, 1, 0) of the victim's stack page
                class iovec(ctypes.Structure):
                    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]
                buf = ctypes.create_string_buffer(64)
                local = iovec(ctypes.cast(buf, ctypes.c_void_p), 64)
                remote = iovec(0x400000, 64)
                r = libc.syscall(310, p, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
                print("process_vm_readv", "OK" if r >= 0 else "refused", ctypes.get_errno())
                fd = libc.syscall(434, p, 0)   # pidfd_open
                print("pidfd_open", fd, ctypes.get_errno())
                if fd >= 0:
                    for target in range(0, 8):
                        r = libc.syscall(438, fd, target, 0)   # pidfd_getfd
                        print("pidfd_getfd", target, "STOLEN" if r >= 0 else "refused", ctypes.get_errno())
                """,
            ])
        XCTAssertEqual(attack.state, .succeeded, attack.stderr)
        let out = attack.stdout
        XCTAssertTrue(out.contains("VICTIM"), out)
        XCTAssertFalse(out.contains(marker), "LEAK: the sibling's environment or memory was read: \(out)")
        XCTAssertFalse(out.contains("READ environ") || out.contains("READ mem") || out.contains("READ maps") || out.contains("READ fd"), out)
        XCTAssertTrue(out.contains("process_vm_readv refused"), out)
        XCTAssertFalse(out.contains("STOLEN"), "pidfd_getfd took a sibling's fd: \(out)")
        XCTAssertTrue(out.contains("hidden"), "with hidepid=invisible the sibling is not even listed (ptrace_may_access fails): \(out)")

        // ptrace(PTRACE_ATTACH) in a child process: seccomp kills it (SIGSYS), and were ptrace
        // allowed, Landlock would refuse the sibling.
        let ptrace = try daemon.run(
            "a",
            [
                "python3", "-c",
                """
                import ctypes, os, signal
                p = int(open("/home/victim.pid").read())
                child = os.fork()
                if child == 0:
                    libc = ctypes.CDLL(None, use_errno=True)
                    r = libc.ptrace(16, p, None, None)  # PTRACE_ATTACH
                    os._exit(0 if r == 0 else 3)
                _, status = os.waitpid(child, 0)
                if os.WIFSIGNALED(status): print("ptrace killed by", os.WTERMSIG(status))
                else: print("ptrace exit", os.WEXITSTATUS(status))
                """,
            ])
        XCTAssertFalse(ptrace.stdout.contains("ptrace exit 0"), "PTRACE_ATTACH of a sibling succeeded: \(ptrace.stdout)")
        XCTAssertTrue(ptrace.stdout.contains("ptrace killed by \(SIGSYS)") || ptrace.stdout.contains("ptrace exit 3"), ptrace.stdout + ptrace.stderr)

        // The victim is unharmed and still has its marker.
        let done = try daemon.connect().call(.jobWait(jobID: victim))
        XCTAssertEqual(done["job"]?["state"]?.stringValue, "succeeded", "\(done)")
        XCTAssertTrue(done["job"]?["stdout"]?.stringValue?.contains("victim survived") == true, "\(done)")
    }

    func testSiblingJobCannotSignalAnother() throws {
        guard try landlockABI() >= 6 else { throw XCTSkip("Landlock ABI below 6 has no signal scope: status says landlock-no-signal-scope") }
        let victim = try startVictim(seconds: 6)
        let attack = try daemon.run(
            "a",
            [
                "python3", "-c",
                """
                import ctypes, os, signal
                libc = ctypes.CDLL(None, use_errno=True)
                p = int(open("/home/victim.pid").read())
                for sig in (0, signal.SIGTERM, signal.SIGKILL):
                    try: os.kill(p, sig); print("SIGNALLED", sig)
                    except OSError as e: print("refused kill", sig, e.errno)
                fd = libc.syscall(434, p, 0)
                r = libc.syscall(424, fd, signal.SIGKILL, None, 0) if fd >= 0 else -1   # pidfd_send_signal
                print("pidfd_send_signal", "SIGNALLED" if r == 0 else "refused", ctypes.get_errno())
                # Brute force over the pid namespace: no other job may be hit either.
                hit = []
                for q in range(2, 400):
                    if q == os.getpid() or q == os.getppid(): continue
                    try: os.kill(q, 0); hit.append(q)
                    except OSError: pass
                print("reachable", hit)
                # Within its own domain a job still signals its own children.
                c = os.fork()
                if c == 0:
                    import time; time.sleep(30); os._exit(0)
                os.kill(c, signal.SIGKILL); _, st = os.waitpid(c, 0)
                print("own child killed", os.WIFSIGNALED(st))
                """,
            ])
        XCTAssertEqual(attack.state, .succeeded, attack.stderr)
        XCTAssertFalse(attack.stdout.contains("SIGNALLED"), "a sibling job was signalled: \(attack.stdout)")
        XCTAssertTrue(attack.stdout.contains("reachable []"), attack.stdout)
        XCTAssertTrue(attack.stdout.contains("own child killed True"), "a job can still manage its own processes: \(attack.stdout)")
        let done = try daemon.connect().call(.jobWait(jobID: victim))
        XCTAssertEqual(done["job"]?["state"]?.stringValue, "succeeded", "the victim was not killed: \(done)")
    }

    func testJobStillReadsItsOwnChildrenAndTheWorkerManagesJobs() throws {
        // Own domain: a job reads its own child's environ (the refusals above are not blanket).
        let own = try daemon.run(
            "a",
            [
                "python3", "-c",
                """
                import os, subprocess, time
                c = subprocess.Popen(["sleep", "5"], env={"MINE": "\(marker)"})
                time.sleep(0.2)
                print(open(f"/proc/{c.pid}/environ", "rb").read().decode(errors="replace"))
                c.kill()
                """,
            ])
        XCTAssertTrue(own.stdout.contains("MINE=\(marker)"), own.stdout + own.stderr)
        // The worker (no domain) still kills a job: a timeout and a cancel both end it.
        let timed = try daemon.run("a", ["sleep", "30"], timeout: 1)
        XCTAssertEqual(timed.state, .timedOut)
        let id = try daemon.detach("a", ["sleep", "30"]).id
        _ = try daemon.connect().call(.jobCancel(jobID: id))
        XCTAssertTrue(try daemon.eventually(10) { (try daemon.connect().call(.jobGet(jobID: id))["job"]?["state"]?.stringValue) == "canceled" })
    }

    func testStatusSaysHowJobsAreIsolated() throws {
        let abi = try landlockABI()
        let t = try daemon.tenantStatus("a")
        let expected = abi == 0 ? "none" : abi < 6 ? "landlock-no-signal-scope" : "landlock"
        XCTAssertEqual(t["enforcement"]?["job_isolation"]?.stringValue, expected)
        let warnings = (try daemon.status()["supervisor"]?["warnings"]?.arrayValue ?? []).compactMap(\.stringValue)
        XCTAssertEqual(warnings.contains { $0.hasPrefix("job_isolation:") }, abi < 6, "\(warnings)")
    }
}
