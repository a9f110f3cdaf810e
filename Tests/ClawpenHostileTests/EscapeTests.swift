import ClawpenTestSupport
import Foundation
import XCTest

/// The escape battery: hostile jobs as tenant `a`, with tenant `b` (and its secret) present.
/// Each test names the attack, asserts that it fails, and that `b` and the daemon are unharmed.
///
/// Safety: every test first proves the sandbox is there (non-root uid, own mount namespace,
/// no_new_privs) and fails without attacking if it is not; and every attack is harmless if it
/// succeeds (writes are probed by opening without writing, mounts target the sandbox's /tmp,
/// signals target the test's own daemon).
final class EscapeTests: XCTestCase {
    var daemon: Daemon!
    let secret = "TOPSECRET-\(UInt64.random(in: 1...UInt64.max))"

    override func setUpWithError() throws {
        daemon = try Daemon().start()
        try daemon.createTenant("a")
        try daemon.createTenant("b")
        // b keeps a secret in its workspace; the host keeps one next to the daemon.
        let write = try daemon.run("b", ["sh", "-c", "echo \(secret) > /home/secret; chmod 600 /home/secret"])
        XCTAssertEqual(write.state, .succeeded, write.stderr)
        try "\(secret)\n".write(toFile: daemon.dir + "/host-secret", atomically: true, encoding: .utf8)
        try assertSandboxed()
    }

    override func tearDown() { daemon?.cleanup() }

    /// The gate: a's jobs run as a non-root uid, in their own mount namespace, with no_new_privs.
    func assertSandboxed(file: StaticString = #filePath, line: UInt = #line) throws {
        let probe = try daemon.run("a", ["sh", "-c", "id -u; readlink /proc/self/ns/mnt; grep NoNewPrivs /proc/self/status"])
        let lines = probe.stdout.split(separator: "\n").map(String.init)
        let hostMnt = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/ns/mnt")) ?? "?"
        guard lines.count == 3, lines[0] != "0", lines[1] != hostMnt, lines[2].hasSuffix("1") else {
            XCTFail("the sandbox is not there (uid, mount namespace, no_new_privs): \(probe.stdout) \(probe.stderr); not attacking", file: file, line: line)
            throw XCTSkip("no sandbox")
        }
    }

    /// Runs a hostile shell snippet as a.
    func attack(_ script: String, timeout: Double = 10) throws -> JobView {
        try daemon.run("a", ["sh", "-c", script], timeout: timeout)
    }

    func python(_ code: String) throws -> JobView {
        try daemon.run("a", ["python3", "-c", code])
    }

    /// b and the daemon are unharmed: b's secret is intact and b still runs jobs.
    func assertUnharmed(file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(try? daemon.run("b", ["cat", "/home/secret"]).stdout, secret + "\n", "b's secret intact", file: file, line: line)
        XCTAssertNoThrow(try daemon.connect().call(.ping), file: file, line: line)
    }

    func assertNoLeak(_ job: JobView, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertFalse(job.stdout.contains(secret) || job.stderr.contains(secret), "LEAK: \(job.stdout)", file: file, line: line)
    }

    // MARK: Files

    func testReadOtherTenantWorkspaceByAnyPath() throws {
        let ws = daemon.workspaceRoot
        let paths = [
            "\(ws)/b/home/secret", "/workspace/b/home/secret", "../b/home/secret", "/home/../../b/home/secret",
            "/../../../..\(ws)/b/home/secret", "/proc/1/root/../b/home/secret", "/proc/self/cwd/../../b/home/secret",
            "/proc/self/root\(ws)/b/home/secret",
        ]
        let job = try attack(
            paths.map { "cat '\($0)' 2>&1; ls '\((($0 as NSString).deletingLastPathComponent as NSString).deletingLastPathComponent)' 2>&1" }.joined(
                separator: "; ")
                + "; ls -la / /proc/1/root/ 2>&1; find / -xdev -name secret 2>/dev/null; true")
        XCTAssertEqual(job.state, .succeeded, "state \(job.state) after \(job.runMs ?? -1) ms: \(job.stdout.suffix(300)) \(job.stderr.suffix(300))")
        assertNoLeak(job)
        XCTAssertFalse(job.stdout.contains("\n./b\n") || job.stdout.contains(" b\n"), "another tenant's workspace is listed: \(job.stdout)")
        assertUnharmed()
    }

    func testReadHostFilesThatAreNotBoundIn() throws {
        let job = try attack("cat /etc/shadow; cat '\(daemon.dir)/host-secret'; cat /proc/1/root/etc/shadow; ls /root /var /boot /sys /run 2>&1; ls /etc")
        assertNoLeak(job)
        XCTAssertFalse(job.stdout.contains("root:"), "read /etc/shadow: \(job.stdout)")
        let etc = job.stdout.split(separator: "\n").suffix(7).map(String.init)
        XCTAssertEqual(
            Set(etc), ["alternatives", "group", "hostname", "hosts", "ld.so.cache", "passwd", "ssl"], "/etc holds only the synthetic set: \(job.stdout)")
    }

    func testSeeHostOrOtherTenantProcesses() throws {
        let job = try attack("ls /proc | grep -E '^[0-9]+$' | sort -n | tr '\\n' ' '; echo; cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' ' '")
        let pids = job.stdout.split(separator: "\n").first.map { $0.split(separator: " ").compactMap { Int($0) } } ?? []
        XCTAssertFalse(pids.isEmpty)
        XCTAssertLessThan(pids.count, 8, "only the worker and this job's processes: \(pids)")
        XCTAssertFalse(pids.contains(Int(daemon.pid)), "the supervisor's pid is visible")
        XCTAssertFalse(job.stdout.contains("clawpen serve"), job.stdout)
        XCTAssertFalse(job.stdout.contains("--tenant b"), job.stdout)
    }

    func testWriteUnderUsrAndEtc() throws {
        // Probes open for writing without writing anything.
        let job = try python(
            """
            import os
            for p in ["/usr/bin/true", "/usr/lib/os-release", "/etc/passwd", "/bin/sh", "/usr/newfile"]:
                try:
                    fd = os.open(p, os.O_WRONLY | os.O_CREAT, 0o644); os.close(fd); print("WRITABLE", p)
                except OSError as e:
                    print("refused", p, e.errno)
            """)
        XCTAssertFalse(job.stdout.contains("WRITABLE"), job.stdout)
        XCTAssertEqual(job.stdout.components(separatedBy: "refused").count - 1, 5, job.stdout)
    }

    func testMknodOfADevice() throws {
        let job = try attack("mknod /tmp/mem c 1 1 && echo MADE; mknod /home/null c 1 3 && echo MADE; ls -l /dev | grep -c '^c'")
        XCTAssertFalse(job.stdout.contains("MADE"), job.stdout)
    }

    func testWriteProcSysAndSys() throws {
        let job = try python(
            """
            import os
            for p in ["/proc/sys/vm/drop_caches", "/proc/sys/kernel/hostname", "/proc/sysrq-trigger", "/sys/kernel/uevent_helper"]:
                try:
                    fd = os.open(p, os.O_WRONLY); os.close(fd); print("WRITABLE", p)
                except OSError as e:
                    print("refused", p, e.errno)
            """)
        XCTAssertFalse(job.stdout.contains("WRITABLE"), job.stdout)
    }

    func testSymlinkPlantedForTheSupervisorToFollow() throws {
        // a tries to swap its home for a link to the worker's /etc (the host's /etc would be the
        // prize for a supervisor that chowns by path). / is read-only and root's, so the swap
        // fails; its next worker starts as before. (A link left in the workspace on the host
        // side is refused at "open /home": MountPreparationTests.)
        let plant = try attack("cd / && mv home home.real && ln -s /etc home && ls -ld /home")
        XCTAssertEqual(plant.state, .failed, plant.stdout)
        XCTAssertTrue(plant.stderr.contains("Read-only file system") || plant.stderr.contains("Device or resource busy"), plant.stderr)
        try daemon.restartWorker("a")
        XCTAssertEqual(try daemon.run("a", ["true"]).state, .succeeded)
        var st = stat()
        XCTAssertEqual(stat("/etc", &st), 0)
        XCTAssertEqual(st.st_uid, 0, "the host's /etc still belongs to root")
        XCTAssertEqual(st.st_mode & 0o777, 0o755)
        var home = stat()
        XCTAssertEqual(lstat(daemon.workspaceRoot + "/a/home", &home), 0)
        XCTAssertEqual(home.st_mode & S_IFMT, S_IFDIR, "home is still the tenant's directory")
        assertUnharmed()
    }

    // MARK: Processes and identity

    func testOutliveTheJobBySetsidAndDoubleFork() throws {
        // A job leaves its process group (setsid) and daemonizes; the next job looks for it.
        let escape = try attack("setsid sh -c 'sleep 60 & echo $! > /home/escapee.pid; sleep 60' >/dev/null 2>&1 & sleep 0.2; echo spawned")
        XCTAssertEqual(escape.stdout, "spawned\n")
        let hasCgroups = (try? daemon.status()["supervisor"]?["cgroup"]?["tenants_base"]?.stringValue) != nil
        let look = try attack("kill -0 $(cat /home/escapee.pid) 2>/dev/null && echo ALIVE || echo gone")
        if hasCgroups {
            XCTAssertEqual(look.stdout, "gone\n", "the job's cgroup was killed when the job ended")
        }
        assertUnharmed()
    }

    func testSignalTheSupervisorOrAnotherWorker() throws {
        let bWorker = try XCTUnwrap(try daemon.tenantStatus("b")["worker_pid"]?.intValue)
        let aWorker = try XCTUnwrap(try daemon.tenantStatus("a")["worker_pid"]?.intValue)
        _ = try attack("kill -9 \(daemon.pid); kill -9 \(bWorker); kill -9 \(aWorker); kill -9 1; kill -TERM 1; kill -9 -1; true")
        XCTAssertEqual(kill(Int32(bWorker), 0), 0, "b's worker is alive")
        XCTAssertEqual(kill(Int32(aWorker), 0), 0, "a's own worker (PID 1 of its namespace) is alive")
        XCTAssertEqual(try daemon.tenantStatus("b")["worker_pid"]?.intValue, bWorker)
        XCTAssertEqual(try daemon.tenantStatus("a")["restarts"]?.intValue, 0)
        assertUnharmed()
    }

    func testPtraceAnything() throws {
        // seccomp kills on ptrace: attaching to the worker, or tracing oneself.
        let attach = try python("import ctypes; ctypes.CDLL(None).ptrace(16, 1, 0, 0); print('ATTACHED')")
        XCTAssertEqual(attach.state, .killed)
        XCTAssertEqual(attach.signal, 31, "SIGSYS")
        XCTAssertFalse(attach.stdout.contains("ATTACHED"))
        let traceme = try python("import ctypes; ctypes.CDLL(None).ptrace(0, 0, 0, 0); print('TRACED')")
        XCTAssertEqual(traceme.signal, 31)
        assertUnharmed()
    }

    func testMountUmountUnshareSetnsChroot() throws {
        let job = try attack(
            """
            mount -t tmpfs none /tmp && echo MOUNTED; umount /usr && echo UNMOUNTED; umount -l /proc && echo UNMOUNTED
            unshare -m true && echo UNSHARED; unshare -Ur true && echo USERNS; unshare -n true && echo NETNS
            chroot / true && echo CHROOTED; nsenter -t 1 -m true && echo SETNS
            python3 -c 'import ctypes,os; f=os.open("/proc/1/ns/mnt", os.O_RDONLY); r=ctypes.CDLL(None).setns(f, 0); print("SETNS" if r == 0 else "refused")'
            ls /usr/bin/sh
            """)
        for word in ["MOUNTED", "UNMOUNTED", "UNSHARED", "USERNS", "NETNS", "CHROOTED", "SETNS"] {
            XCTAssertFalse(job.stdout.contains(word + "\n") && !job.stdout.contains("UN" + word), "\(word): \(job.stdout)")
        }
        XCTAssertFalse(
            job.stdout.split(separator: "\n").contains { ["MOUNTED", "UNMOUNTED", "UNSHARED", "USERNS", "NETNS", "CHROOTED", "SETNS"].contains(String($0)) },
            job.stdout)
        XCTAssertTrue(job.stdout.contains("/usr/bin/sh"), "/usr still mounted")
    }

    func testSetuidRootBinaryGainsNothing() throws {
        let job = try attack(
            """
            grep -E ' /usr .*nosuid' /proc/self/mountinfo >/dev/null && echo usr-nosuid
            grep NoNewPrivs /proc/self/status
            for b in $(find /usr/bin /usr/sbin -perm -4000 2>/dev/null); do echo "setuid: $b"; done
            su root -c 'echo ROOT' </dev/null 2>&1; newgrp root </dev/null 2>&1; id -u
            """)
        XCTAssertTrue(job.stdout.contains("usr-nosuid"), job.stdout)
        XCTAssertTrue(job.stdout.contains("NoNewPrivs:\t1"), job.stdout)
        XCTAssertFalse(job.stdout.contains("\nROOT"), job.stdout)
        XCTAssertFalse(job.stdout.hasSuffix("\n0\n"), "became root: \(job.stdout)")
    }

    func testSetuidZeroAndFriends() throws {
        let job = try python(
            """
            import os
            for name, f in [("setuid", lambda: os.setuid(0)), ("setgid", lambda: os.setgid(0)), ("setgroups", lambda: os.setgroups([0])),
                            ("seteuid", lambda: os.seteuid(0)), ("setresuid", lambda: os.setresuid(0, 0, 0))]:
                try:
                    f(); print("GAINED", name)
                except OSError as e:
                    print("refused", name)
            print(os.getuid(), os.geteuid(), os.getgroups())
            """)
        XCTAssertFalse(job.stdout.contains("GAINED"), job.stdout)
        // The tenant's uid (the first of the range, unless the host uses it: tenant create skips those).
        let uid = try daemon.connect().tenant(.tenantShow(name: .t("a"))).uid
        XCTAssertTrue(job.stdout.contains("\(uid) \(uid)"), job.stdout)
    }

    func testRaiseAnRlimitAboveItsHardLimit() throws {
        let job = try python(
            """
            import resource
            for r in [resource.RLIMIT_NOFILE, resource.RLIMIT_NPROC, resource.RLIMIT_FSIZE, resource.RLIMIT_CORE]:
                soft, hard = resource.getrlimit(r)
                try:
                    resource.setrlimit(r, (resource.RLIM_INFINITY, resource.RLIM_INFINITY)); print("RAISED", r)
                except (ValueError, OSError):
                    print("refused", r, hard)
            """)
        XCTAssertFalse(job.stdout.contains("RAISED"), job.stdout)
        XCTAssertEqual(job.stdout.components(separatedBy: "refused").count - 1, 4, job.stdout)
    }

    func testKernelAttackSurfaceSyscalls() throws {
        // bpf, module and kexec calls kill (SIGSYS); perf_event_open and keyctl fail with EPERM.
        let numbers: [String: (Int, Int)] = [
            "bpf": (321, 280), "init_module": (175, 105), "kexec_load": (246, 104),
            "perf_event_open": (298, 241), "keyctl": (250, 219), "add_key": (248, 217),
        ]
        for (name, nr) in numbers.sorted(by: { $0.key < $1.key }) {
            let job = try python(
                """
                import ctypes, platform
                libc = ctypes.CDLL(None, use_errno=True)
                nr = \(nr.0) if platform.machine() == "x86_64" else \(nr.1)
                r = libc.syscall(nr, 0, 0, 0, 0, 0)
                print("returned", r, ctypes.get_errno())
                """)
            if ["perf_event_open", "keyctl", "add_key"].contains(name) {
                XCTAssertEqual(job.stdout, "returned -1 1\n", "\(name) must fail with EPERM: \(job.stdout)\(job.stderr)")
            } else {
                XCTAssertEqual(job.signal, 31, "\(name) must be killed by seccomp: \(job.stdout)\(job.stderr)")
            }
        }
        assertUnharmed()
    }

    // MARK: Network

    func testConnectToAListenerOnTheHostsLoopback() throws {
        let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(listener) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        addr.sin_port = 0
        _ = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(listener, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        listen(listener, 8)
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(listener, $0, &len) } }
        let port = Int(UInt16(bigEndian: addr.sin_port))
        let job = try python(
            """
            import socket
            s = socket.socket(); s.settimeout(2)
            try:
                s.connect(("127.0.0.1", \(port))); print("CONNECTED")
            except OSError as e:
                print("refused", e)
            print(open("/proc/net/dev").read())
            """)
        XCTAssertFalse(job.stdout.contains("CONNECTED"), job.stdout)
        let ifaces = job.stdout.split(separator: "\n").filter { $0.contains(":") && !$0.contains("|") && !$0.hasPrefix("refused") }
        XCTAssertEqual(ifaces.map { $0.split(separator: ":")[0].trimmingCharacters(in: .whitespaces) }, ["lo"], job.stdout)
        _ = fcntl(listener, F_SETFL, O_NONBLOCK)
        XCTAssertLessThan(accept(listener, nil, nil), 0, "the host listener got a connection")
    }

    func testConnectToAnotherTenantsLoopbackListener() throws {
        // b listens on its own loopback (a background job that stays up); a tries every way in.
        let listen = try daemon.detach(
            "b",
            [
                "python3", "-c",
                """
                import socket, time
                s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(("127.0.0.1", 47011)); s.listen(8)
                u = socket.socket(socket.AF_UNIX); u.bind("\\0clawpen-b-abstract"); u.listen(8)
                time.sleep(6)
                """,
            ], timeout: 20)
        usleep(800_000)
        let job = try python(
            """
            import socket, os
            s = socket.socket(); s.settimeout(1)
            try:
                s.connect(("127.0.0.1", 47011)); print("CONNECTED-TCP")
            except OSError as e:
                print("tcp refused", e)
            u = socket.socket(socket.AF_UNIX); u.settimeout(1)
            try:
                u.connect("\\0clawpen-b-abstract"); print("CONNECTED-ABSTRACT")
            except OSError as e:
                print("abstract refused", e)
            print(os.readlink("/proc/self/ns/net"))
            """)
        XCTAssertFalse(job.stdout.contains("CONNECTED"), "a reached b's loopback: \(job.stdout)")
        let bNet = try daemon.run("b", ["readlink", "/proc/self/ns/net"]).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        let aNet = job.stdout.split(separator: "\n").last.map(String.init) ?? ""
        XCTAssertNotEqual(aNet, bNet, "a and b share a network namespace")
        XCTAssertFalse(bNet.isEmpty)
        _ = try? daemon.connect().call(.jobCancel(jobID: listen.id))
        assertUnharmed()
    }

    // MARK: Resource bombs: a's bomb, b's latency

    /// Median time of b's `true` jobs while `during` runs.
    func bLatency(samples: Int = 10) throws -> Double {
        var times: [Double] = []
        for _ in 0..<samples {
            let t0 = Date()
            XCTAssertEqual(try daemon.run("b", ["true"]).state, .succeeded)
            times.append(Date().timeIntervalSince(t0))
        }
        return times.sorted()[times.count / 2]
    }

    func runBomb(_ argv: [String], timeout: Double) throws -> (job: JobView, bBefore: Double, bDuring: Double) {
        let before = try bLatency()
        let bomb = try daemon.detach("a", argv, timeout: timeout)
        usleep(500_000)
        let during = try bLatency()
        let job = try daemon.connect().job(.jobWait(jobID: bomb.id)).job
        return (job, before, during)
    }

    func testForkBomb() throws {
        let r = try runBomb(["sh", "-c", "f() { f | f & }; f; sleep 3"], timeout: 4)
        XCTAssertTrue([.timedOut, .failed, .succeeded, .killed].contains(r.job.state))
        XCTAssertLessThan(r.bDuring, max(0.05, r.bBefore * 5), "b's jobs slowed from \(r.bBefore) s to \(r.bDuring) s")
        // The bomb hit RLIMIT_NPROC (pids_max 64), and the worker cleaned up after it.
        XCTAssertTrue(
            try daemon.eventually(5) {
                try daemon.run("a", ["sh", "-c", "ls /proc | grep -cE '^[0-9]+$'"]).stdout.trimmingCharacters(in: .whitespacesAndNewlines) == "3"
            })
        assertUnharmed()
    }

    func testMemoryBomb() throws {
        let r = try runBomb(["python3", "-c", "x = bytearray(3 * 256 * 1024 * 1024); print('ALLOCATED')"], timeout: 10)
        XCTAssertFalse(r.job.stdout.contains("ALLOCATED"), "allocated 3x memory_max")
        // RLIMIT_AS (no memory controller) refuses the allocation: MemoryError. With a memory
        // controller (the VM test) the tenant cgroup's memory.max makes the kernel kill the job.
        XCTAssertTrue(r.job.stderr.contains("MemoryError") || r.job.state == .oomKilled, "\(r.job.state): \(r.job.stderr)")
        XCTAssertLessThan(r.bDuring, max(0.05, r.bBefore * 5))
        assertUnharmed()
    }

    func testCPUSpinner() throws {
        let r = try runBomb(["sh", "-c", "while :; do :; done"], timeout: 3)
        XCTAssertEqual(r.job.state, .timedOut)
        XCTAssertLessThan(r.bDuring, max(0.05, r.bBefore * 5), "b's jobs slowed from \(r.bBefore) s to \(r.bDuring) s")
        assertUnharmed()
    }
}
