import ClawpenTestSupport
import Foundation
import XCTest

/// Tenant data against the real daemon (docs/tenant-data.md): job records sealed at rest,
/// offboarding, restore, rotation, the master key's checks at start, export.
final class TenantDataTests: XCTestCase {
    var daemon: Daemon!
    override func tearDown() { daemon?.cleanup() }

    func cli(_ args: [String], stdin: String? = nil) throws -> CLIResult { try runCLI(args, socket: daemon.socket, stdin: stdin) }

    /// Runs `sqlite3` (python's) on the daemon's database while it is stopped.
    func sql(_ statement: String) throws {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = [
            "python3", "-c", "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.execute(sys.argv[2]); c.commit()", daemon.stateDir + "/clawpen.db",
            statement,
        ]
        try p.run()
        p.waitUntilExit()
        XCTAssertEqual(p.terminationStatus, 0)
    }

    /// A job whose argv, env value, stdin and output each carry a marker found nowhere else.
    func markedJob(_ tenant: String, tag: String) throws -> JobView {
        try daemon.run(
            tenant, ["sh", "-c", "echo ARGV-\(tag)-a >/dev/null; echo OUT-$((7000+1))-\(tag); cat; echo ERR-$((8000+2)) >&2"],
            env: ["AGENT_TOKEN": "ENV-\(tag)-v"], stdin: Array("STDIN-\(tag)-s\n".utf8))
    }

    func testJobRecordsAreSealedAtRestAndAMovedCiphertextDoesNotOpen() throws {
        daemon = try Daemon().start()
        try daemon.createTenant("acme")
        let a = try markedJob("acme", tag: "q1")
        XCTAssertEqual(a.state, .succeeded, "\(a)")
        XCTAssertEqual(a.stdout, "OUT-7001-q1\nSTDIN-q1-s\n")
        let b = try daemon.run("acme", ["echo", "second"])
        // Read back from the store (not memory) after a restart: it opens.
        daemon.stop()
        daemon = try Daemon(dir: daemon.dir).start()
        var r = try cli(["job", "get", a.id, "--json"])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stdout.contains("OUT-7001-q1") && r.stdout.contains("ERR-8002"), r.stdout)
        let markers = ["ARGV-q1-a", "ENV-q1-v", "STDIN-q1-s", "OUT-7001-q1", "ERR-8002"]
        // While it runs: the database, its live WAL and shm, the keys.
        XCTAssertTrue(FileManager.default.fileExists(atPath: daemon.stateDir + "/clawpen.db-wal"))
        for marker in markers { XCTAssertEqual(filesContain(daemon.stateDir, marker), [], marker) }
        daemon.stop()
        // And after the checkpoint at shutdown.
        for marker in markers { XCTAssertEqual(filesContain(daemon.stateDir, marker), [], marker) }
        // A ciphertext copied onto another row does not open there: that record fails, clearly.
        try sql("UPDATE jobs SET stdout=(SELECT stdout FROM jobs WHERE id='\(a.id)') WHERE id='\(b.id)'")
        daemon = try Daemon(dir: daemon.dir).start()
        r = try cli(["job", "get", b.id])
        XCTAssertEqual(r.status, 70, r.stdout)
        XCTAssertTrue(r.stderr.contains("cannot be decrypted") && r.stderr.contains(b.id), r.stderr)
        r = try cli(["job", "get", a.id, "--json"])
        XCTAssertEqual(r.status, 0, "the other records are unaffected: \(r.stderr)")
        let list = try cli(["job", "list", "--tenant", "acme", "--json"])
        XCTAssertEqual(list.status, 0, "a listing shows the bad record with its error: \(list.stderr)")
        XCTAssertTrue(list.stdout.contains("cannot be decrypted"), list.stdout)
    }

    func testOffboardDryRunThenNowRemovesOnlyThatTenantAndRetiresItsUID() throws {
        daemon = try Daemon().start()
        try daemon.createTenant("acme")
        try daemon.createTenant("bob")
        // A link the tenant plants towards a host file: removal must take the link, not the file.
        let victim = daemon.dir + "/victim.txt"
        try "keep me".write(toFile: victim, atomically: true, encoding: .utf8)
        let w = try daemon.run("acme", ["sh", "-c", "echo data > /home/f.txt; mkdir -p /home/d/e; echo x > /home/d/e/g; ln -s \(victim) /home/link"])
        XCTAssertEqual(w.state, .succeeded, w.stderr)
        let job = try markedJob("acme", tag: "o1")
        let bobJob = try markedJob("bob", tag: "b1")
        XCTAssertEqual(try cli(["secret", "put", "acme", "S1", "--from-stdin"], stdin: "secret-o1").status, 0)
        let acmeUID = try XCTUnwrap(try daemon.connect().tenants().first { $0.name == "acme" }?.uid)
        let acmeHome = daemon.workspaceRoot + "/acme/home"

        var r = try cli(["tenant", "offboard", "acme", "--dry-run", "--json"])
        XCTAssertEqual(r.status, 0, r.stderr)
        let dry = try JSONValue.parse(Array(r.stdout.utf8))
        let would = try XCTUnwrap(dry["would_remove"])
        XCTAssertEqual(would["job_records"]?.intValue, 2)
        XCTAssertEqual(would["secrets"]?.arrayValue?.compactMap(\.stringValue), ["S1"])
        XCTAssertEqual(would["workspace"]?["files"]?.intValue, 3, "f.txt, g and the link: \(would)")
        XCTAssertGreaterThan(would["workspace"]?["bytes"]?.intValue ?? 0, 0)
        XCTAssertGreaterThan(would["audit_rows"]?.intValue ?? 0, 0)
        // Dry run changed nothing.
        XCTAssertTrue(FileManager.default.fileExists(atPath: acmeHome + "/f.txt"))
        XCTAssertEqual(try daemon.run("acme", ["true"]).state, .succeeded, "not suspended")
        XCTAssertEqual(try cli(["job", "get", job.id]).status, 0)

        XCTAssertTrue(try cli(["metrics"]).stdout.contains("tenant=\"acme\""), "acme has series before")
        r = try cli(["tenant", "offboard", "acme", "--now", "--json"])
        XCTAssertEqual(r.status, 0, r.stderr + daemon.log)
        XCTAssertEqual(try JSONValue.parse(Array(r.stdout.utf8))["offboarding"]?["state"]?.stringValue, "done")
        XCTAssertEqual(try cli(["job", "get", job.id]).status, 64, "the record is gone (unknown_job)")
        XCTAssertFalse(FileManager.default.fileExists(atPath: daemon.workspaceRoot + "/acme"), "workspace removed")
        XCTAssertEqual(try String(contentsOfFile: victim, encoding: .utf8), "keep me", "the link was removed, not followed")
        XCTAssertEqual(try cli(["secret", "list", "acme"]).status, 64, "the tenant and its secrets are gone")
        // Its agent socket too: the listener (a descriptor of the daemon) and its directory.
        XCTAssertFalse(FileManager.default.fileExists(atPath: daemon.stateDir + "/agent/acme"), "agent socket directory removed")
        // A bound socket keeps its path in /proc/net/unix until it is closed, unlinked or not.
        let unixSockets = (try? String(contentsOfFile: "/proc/net/unix", encoding: .utf8)) ?? ""
        XCTAssertTrue(
            daemon.eventually(5) { !((try? String(contentsOfFile: "/proc/net/unix", encoding: .utf8)) ?? "").contains(daemon.stateDir + "/agent/acme/") },
            "acme's agent listener is closed: \(unixSockets.split(separator: "\n").filter { $0.contains("/agent/") })")
        XCTAssertTrue(FileManager.default.fileExists(atPath: daemon.stateDir + "/agent/bob/clawpen.sock"), "bob's is kept")
        // Its metric series leave the exposition; bob's stay.
        let metrics = try cli(["metrics"]).stdout
        XCTAssertFalse(metrics.contains("tenant=\"acme\""), metrics.split(separator: "\n").filter { $0.contains("acme") }.joined(separator: "\n"))
        XCTAssertTrue(metrics.contains("clawpen_jobs_total{tenant=\"bob\""), "bob's series are kept")
        // Not one job marker, secret or key of acme left in the state dir.
        daemon.stop()
        for marker in ["OUT-7001-o1", "secret-o1"] { XCTAssertEqual(filesContain(daemon.stateDir, marker), [], marker) }
        daemon = try Daemon(dir: daemon.dir).start()
        // A new tenant never gets acme's uid, even named the same.
        try daemon.createTenant("acme")
        try daemon.createTenant("carol")
        let uids = try daemon.connect().tenants().map(\.uid)
        XCTAssertFalse(uids.contains(acmeUID), "uid \(acmeUID) retired: \(uids)")
        // Nothing of bob changed.
        r = try cli(["job", "get", bobJob.id, "--json"])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stdout.contains("OUT-7001-b1"))
        XCTAssertEqual(try daemon.run("bob", ["echo", "still"]).stdout, "still\n")
        let audit = try cli(["audit", "--tenant", "acme"]).stdout
        XCTAssertTrue(audit.contains("tenant.offboard") && audit.contains("tenant.offboarded"), audit)
    }

    func testGracePeriodSuspendsAndRevokesAndRestoreBringsEverythingBack() throws {
        daemon = try Daemon().start()
        try daemon.createTenant("acme")
        let job = try markedJob("acme", tag: "g1")
        XCTAssertEqual(try cli(["secret", "put", "acme", "S1", "--from-stdin"], stdin: "v").status, 0)
        var r = try cli(["tenant", "offboard", "acme", "--grace-period-days", "2"])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stdout.contains("is offboarding"), r.stdout)
        r = try cli(["submit", "--tenant", "acme", "--", "true"])
        XCTAssertNotEqual(r.status, 0, "suspended: submits refused")
        XCTAssertNotEqual(try cli(["secret", "put", "acme", "S2", "--from-stdin"], stdin: "v").status, 0, "secrets revoked")
        XCTAssertNotEqual(try cli(["tenant", "resume", "acme"]).status, 0, "resume does not undo an offboarding")
        XCTAssertTrue(FileManager.default.fileExists(atPath: daemon.workspaceRoot + "/acme/home"), "nothing deleted")
        // The deadline survives a restart.
        daemon.stop()
        daemon = try Daemon(dir: daemon.dir).start()
        XCTAssertNotEqual(try cli(["submit", "--tenant", "acme", "--", "true"]).status, 0, "still offboarding after a restart")
        XCTAssertNotEqual(try cli(["tenant", "offboard", "acme"]).status, 0, "already offboarding")
        r = try cli(["tenant", "restore", "acme"])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertEqual(try daemon.run("acme", ["echo", "back"]).stdout, "back\n")
        XCTAssertTrue(try cli(["job", "get", job.id, "--json"]).stdout.contains("OUT-7001-g1"))
        XCTAssertTrue(try cli(["secret", "list", "acme"]).stdout.contains("S1"))
        XCTAssertEqual(try cli(["tenant", "restore", "acme"]).status, 64, "nothing to restore")
        let audit = try cli(["audit", "--tenant", "acme"]).stdout
        XCTAssertTrue(audit.contains("tenant.offboard") && audit.contains("tenant.restore"), audit)
    }

    func testRotationKeepsEveryRecordReadableAndAMissingKeyStopsTheStart() throws {
        daemon = try Daemon().start()
        try daemon.createTenant("acme")
        try daemon.createTenant("bob")
        let a = try markedJob("acme", tag: "r1")
        let b = try markedJob("bob", tag: "r2")
        let before = try String(contentsOfFile: daemon.stateDir + "/master.key", encoding: .utf8)
        var r = try cli(["key", "rotate", "--json"])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertEqual(try JSONValue.parse(Array(r.stdout.utf8))["rewrapped"]?.intValue, 2)
        XCTAssertNotEqual(try String(contentsOfFile: daemon.stateDir + "/master.key", encoding: .utf8), before)
        XCTAssertFalse(FileManager.default.fileExists(atPath: daemon.stateDir + "/master.key.next"))
        for (id, marker) in [(a.id, "OUT-7001-r1"), (b.id, "OUT-7001-r2")] {
            XCTAssertTrue(try cli(["job", "get", id, "--json"]).stdout.contains(marker))
        }
        daemon.stop()
        daemon = try Daemon(dir: daemon.dir).start()
        XCTAssertTrue(try cli(["job", "get", a.id, "--json"]).stdout.contains("OUT-7001-r1"), "after a restart with the new key")
        daemon.stop()
        // A rotation stopped between its steps is resolved at the next start by which key the
        // rows name. After the commit, before the rename: the new key is still `.next`.
        let key = daemon.stateDir + "/master.key", next = key + ".next"
        try FileManager.default.moveItem(atPath: key, toPath: next)
        FileManager.default.createFile(atPath: key, contents: Data(before.utf8), attributes: [.posixPermissions: 0o600])
        daemon = try Daemon(dir: daemon.dir).start()
        XCTAssertTrue(try cli(["job", "get", b.id, "--json"]).stdout.contains("OUT-7001-r2"), "the rename was finished: \(daemon.log)")
        XCTAssertFalse(FileManager.default.fileExists(atPath: next))
        XCTAssertNotEqual(try String(contentsOfFile: key, encoding: .utf8), before)
        daemon.stop()
        // Before the commit: a `.next` the rows do not name is removed, the key stays.
        let current = try String(contentsOfFile: key, encoding: .utf8)
        FileManager.default.createFile(atPath: next, contents: Data(repeating: 0x42, count: 32), attributes: [.posixPermissions: 0o600])
        daemon = try Daemon(dir: daemon.dir).start()
        XCTAssertTrue(try cli(["job", "get", a.id, "--json"]).stdout.contains("OUT-7001-r1"))
        XCTAssertFalse(FileManager.default.fileExists(atPath: next))
        XCTAssertEqual(try String(contentsOfFile: key, encoding: .utf8), current)
        daemon.stop()
        // The old key is refused at start, and so is no key at all.
        let old = daemon.dir + "/old.key"
        FileManager.default.createFile(atPath: old, contents: Data(before.utf8), attributes: [.posixPermissions: 0o600])
        r = try runCLI(["serve"] + Daemon(extraArgs: ["--master-key-file", old], dir: daemon.dir).serveArguments.dropFirst(), socket: nil)
        XCTAssertEqual(r.status, 78, r.stderr)
        XCTAssertTrue(r.stderr.contains("wrong master key"), r.stderr)
        try FileManager.default.removeItem(atPath: daemon.stateDir + "/master.key")
        r = try runCLI(["serve"] + daemon.serveArguments.dropFirst(), socket: nil)
        XCTAssertEqual(r.status, 78, r.stderr)
        XCTAssertTrue(r.stderr.contains("master key missing"), r.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: daemon.stateDir + "/master.key"), "no new key made over the data")
    }

    func testBringYourOwnKeyWrapsTheTenantsDataKey() throws {
        daemon = try Daemon().start()
        let own = daemon.dir + "/acme.key"
        FileManager.default.createFile(atPath: own, contents: Data(repeating: 7, count: 32), attributes: [.posixPermissions: 0o600])
        var r = try cli(["tenant", "create", "acme", "--key-file", own])
        XCTAssertEqual(r.status, 0, r.stderr)
        let a = try markedJob("acme", tag: "k1")
        XCTAssertEqual(a.state, .succeeded)
        XCTAssertEqual(try cli(["key", "rotate", "--json"]).status, 0, "rotation leaves the tenant's own key alone")
        daemon.stop()
        daemon = try Daemon(dir: daemon.dir).start()
        XCTAssertTrue(try cli(["job", "get", a.id, "--json"]).stdout.contains("OUT-7001-k1"))
        // The tenant withdraws its key: its records no longer open; the daemon still serves.
        daemon.stop()
        try FileManager.default.removeItem(atPath: own)
        daemon = try Daemon(dir: daemon.dir).start()
        r = try cli(["job", "get", a.id])
        XCTAssertEqual(r.status, 70)
        XCTAssertTrue(r.stderr.contains("cannot be decrypted"), r.stderr)
        XCTAssertEqual(try cli(["tenant", "create", "bob", "--key-file", daemon.dir + "/none.key"]).status, 64, "a missing key file creates nothing")
        XCTAssertEqual(try cli(["tenant", "show", "bob"]).status, 64)
    }

    func testExportIsATarOfTheWorkspaceAndTheDecryptedHistory() throws {
        daemon = try Daemon().start()
        try daemon.createTenant("acme")
        XCTAssertEqual(try daemon.run("acme", ["sh", "-c", "mkdir -p /home/p; echo hello > /home/p/h.txt; ln -s /etc/shadow /home/p/l"]).state, .succeeded)
        let job = try markedJob("acme", tag: "e1")
        let out = daemon.dir + "/acme.tar"
        var r = try cli(["tenant", "export", "acme", "--to", out])
        XCTAssertEqual(r.status, 0, r.stderr)
        let tar = Process()
        tar.executableURL = URL(fileURLWithPath: "/usr/bin/tar")
        tar.arguments = ["-tvf", out]
        let pipe = Pipe()
        tar.standardOutput = pipe
        try tar.run()
        let listing = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        tar.waitUntilExit()
        XCTAssertEqual(tar.terminationStatus, 0, listing)
        XCTAssertTrue(listing.contains("jobs.jsonl") && listing.contains("workspace/home/p/h.txt"), listing)
        XCTAssertTrue(listing.contains("workspace/home/p/l -> /etc/shadow"), "the link is archived as a link: \(listing)")
        let x = Process()
        x.executableURL = URL(fileURLWithPath: "/usr/bin/tar")
        x.arguments = ["-xOf", out, "jobs.jsonl"]
        let xp = Pipe()
        x.standardOutput = xp
        try x.run()
        let lines = String(decoding: xp.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        x.waitUntilExit()
        XCTAssertTrue(lines.contains(job.id) && lines.contains("OUT-7001-e1") && lines.contains("ENV-e1-v"), lines)
        XCTAssertEqual(lines.split(separator: "\n").count, 2)
        r = try cli(["tenant", "export", "acme", "--to", out])
        XCTAssertNotEqual(r.status, 0, "never over an existing file")
    }
    /// A state dir of the last release before migrations (Tests/Fixtures/release-85eeac2, made by
    /// that release's daemon): the new daemon upgrades it in place at start, finds every job with
    /// its output, seals what was clear, and opens the old release's secret with its master key.
    func testTheLastReleasesStateDirUpgradesInPlaceAndEveryJobIsFound() throws {
        let fixture = Daemon.repoRoot + "/Tests/Fixtures/release-85eeac2"
        let expected = try XCTUnwrap(try JSONValue.parse(Array(try Data(contentsOf: URL(fileURLWithPath: fixture + "/jobs.json")))).arrayValue)
        daemon = try Daemon()
        try FileManager.default.createDirectory(atPath: daemon.stateDir, withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: fixture + "/clawpen.db", toPath: daemon.stateDir + "/clawpen.db")
        try FileManager.default.copyItem(atPath: fixture + "/master.key", toPath: daemon.stateDir + "/master.key")
        chmod(daemon.stateDir + "/master.key", 0o600)
        // The tenants' workspaces were on that host; here only acme's directory is made again.
        try FileManager.default.createDirectory(atPath: daemon.workspaceRoot + "/acme", withIntermediateDirectories: true)
        daemon = try daemon.start()
        for e in expected {
            let id = try XCTUnwrap(e["id"]?.stringValue)
            let r = try cli(["job", "get", id, "--json"])
            XCTAssertEqual(r.status, 0, "\(id): \(r.stderr)")
            let v = try JSONValue.parse(Array(r.stdout.utf8))
            XCTAssertEqual(v["stdout"]?.stringValue, e["stdout"]?.stringValue, id)
            XCTAssertEqual(v["state"]?.stringValue, e["state"]?.stringValue, id)
            XCTAssertEqual(v["tenant"]?.stringValue, e["tenant"]?.stringValue, id)
        }
        XCTAssertTrue(try cli(["secret", "list", "bob"]).stdout.contains("FIXTURE_SECRET"))
        XCTAssertEqual(try daemon.run("acme", ["echo", "after-upgrade"]).stdout, "after-upgrade\n")
        daemon.stop()
        for e in expected {
            if let out = e["stdout"]?.stringValue, out.count > 8 {
                XCTAssertEqual(filesContain(daemon.stateDir, out.trimmingCharacters(in: .newlines)), [], "sealed at the upgrade")
            }
        }
    }
    /// `job_retention_days` (free: 7): records that finished longer ago are purged by the
    /// daemon's retention pass (five seconds after start, then hourly), the others stay.
    func testRetentionPurgesOnlyRecordsPastTheTiersDays() throws {
        daemon = try Daemon().start()
        try daemon.createTenant("acme")
        try daemon.createTenant("ent", tier: "enterprise")
        let old = try daemon.run("acme", ["echo", "old"])
        let recent = try daemon.run("acme", ["echo", "recent"])
        let entOld = try daemon.run("ent", ["echo", "kept"])
        daemon.stop()
        // Eight days ago: past free's 7, within enterprise's 90.
        try sql("UPDATE jobs SET finished_at = finished_at - 8*86400, created_at = created_at - 8*86400 WHERE id IN ('\(old.id)', '\(entOld.id)')")
        daemon = try Daemon(dir: daemon.dir).start()
        XCTAssertTrue(daemon.eventually(30) { (try? cli(["job", "get", old.id]).status) == 64 }, "purged: \(daemon.log)")
        XCTAssertEqual(try cli(["job", "get", recent.id]).status, 0)
        XCTAssertEqual(try cli(["job", "get", entOld.id]).status, 0, "enterprise keeps 90 days")
        let audit = try cli(["audit", "--tenant", "acme"]).stdout
        XCTAssertTrue(audit.contains("jobs.purged") && audit.contains("job_retention_days"), audit)
    }

    /// `job_records_max`: a tenant whose finished records pass it loses its oldest ones, down to
    /// 90 % of it, while its newest stay and a neighbour's records are untouched; a restart
    /// measures the store again (the size is not kept in memory only).
    func testATenantOverJobRecordsMaxLosesItsOldestRecordsOnly() throws {
        let dir = try Daemon.tempDir()
        let pol = try Daemon.policiesWithOverrides(in: dir, ["big": "job_records_max = \"1M\"\n"])
        daemon = try Daemon(dir: dir, policies: pol).start()
        try daemon.createTenant("big")
        try daemon.createTenant("calm")
        let calm = try daemon.run("calm", ["sh", "-c", "head -c 300000 /dev/zero | tr '\\0' c"])
        XCTAssertEqual(calm.stdout.count, 300_000)
        // Twelve jobs of 200 kB each: 2.4 MB against 1 MiB.
        var ids: [String] = []
        for i in 0..<12 {
            let job = try daemon.run("big", ["sh", "-c", "head -c 200000 /dev/zero | tr '\\0' \(i % 10)"])
            XCTAssertEqual(job.state, .succeeded, job.stderr)
            ids.append(job.id)
        }
        func exists(_ id: String) throws -> Bool { try cli(["job", "get", id]).status == 0 }
        XCTAssertTrue(try daemon.eventually(20) { try !exists(ids[0]) }, "the oldest went: \(daemon.log)")
        let kept = try ids.filter { try exists($0) }
        XCTAssertEqual(kept, Array(ids.suffix(kept.count)), "the newest are the ones kept")
        XCTAssertTrue((3...5).contains(kept.count), "about 0.9 MiB of 200 kB records: \(kept.count)")
        XCTAssertEqual(try daemon.connect().job(.jobGet(jobID: ids[11])).job.stdout.count, 200_000)
        XCTAssertTrue(try exists(calm.id), "a neighbour's records are not touched")
        let held = try XCTUnwrap(try daemon.tenantStatus("big")["quotas"]?["job_records_bytes"]?.intValue)
        XCTAssertLessThanOrEqual(held, 1 << 20)
        XCTAssertEqual(try daemon.tenantStatus("big")["limits"]?["job_records_max"]?.intValue, 1 << 20)
        let audit = try cli(["audit", "--tenant", "big"]).stdout
        XCTAssertTrue(audit.contains("jobs.purged") && audit.contains("job_records_max"), audit)
        // After a restart the store is measured again, and the next record over the limit purges.
        daemon.stop()
        daemon = try Daemon(dir: dir, policies: pol).start()
        XCTAssertTrue(
            try daemon.eventually(20) { (try daemon.tenantStatus("big")["quotas"]?["job_records_bytes"]?.intValue ?? 0) > 600_000 },
            "measured at start")
        for i in 0..<2 { _ = try daemon.run("big", ["sh", "-c", "head -c 200000 /dev/zero | tr '\\0' \(i)"]) }
        XCTAssertTrue(try daemon.eventually(20) { try !exists(kept[0]) }, "the oldest kept one goes next")
    }

    /// A large purge never stalls the event loop: 60,000 finished records past retention are
    /// deleted by the retention thread (in batches, with pauses) while a client pings and
    /// submits. The figures are printed; the bounds asserted are loose enough for a loaded
    /// machine and still catch a purge that holds the loop (or SQLite's write lock) for seconds.
    func testALargePurgeDoesNotStallPingsOrSubmits() throws {
        daemon = try Daemon().start()
        try daemon.createTenant("acme")
        let seed = try daemon.run("acme", ["echo", "seed"])
        daemon.stop()
        let count = 60_000
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = [
            "python3", "-c",
            """
            import sqlite3, sys
            c = sqlite3.connect(sys.argv[1])
            cols = [r[1] for r in c.execute("PRAGMA table_info(jobs)")]
            pick = ", ".join("id || '-' || n.v" if k == "id" else "NULL" if k == "idempotency_key" else
                             "finished_at - 8*86400" if k == "finished_at" else "created_at - 8*86400" if k == "created_at" else k
                             for k in cols)
            c.execute("WITH RECURSIVE n(v) AS (SELECT 1 UNION ALL SELECT v+1 FROM n WHERE v < ?) "
                      "INSERT INTO jobs (" + ", ".join(cols) + ") SELECT " + pick + " FROM jobs, n WHERE jobs.id = ?",
                      (int(sys.argv[2]), sys.argv[3]))
            c.commit()
            """,
            daemon.stateDir + "/clawpen.db", "\(count)", seed.id,
        ]
        try p.run()
        p.waitUntilExit()
        XCTAssertEqual(p.terminationStatus, 0)

        daemon = try Daemon(dir: daemon.dir).start()
        let conn = try daemon.connect()
        // The retention pass starts five seconds after start: the first 2.5 s are the baseline.
        var baseline: [Double] = []
        var baselineSubmits: [Double] = []
        let quiet = Date().addingTimeInterval(2.5)
        while Date() < quiet {
            let t0 = DispatchTime.now().uptimeNanoseconds
            _ = try conn.call(.ping)
            baseline.append(Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e6)
            if baseline.count % 20 == 0 {
                let t1 = DispatchTime.now().uptimeNanoseconds
                _ = try daemon.run("acme", ["true"])
                baselineSubmits.append(Double(DispatchTime.now().uptimeNanoseconds - t1) / 1e6)
            }
            usleep(2_000)
        }
        var pings: [Double] = []
        var submits: [Double] = []
        var purged = false
        let deadline = Date().addingTimeInterval(120)
        while !purged && Date() < deadline {
            let t0 = DispatchTime.now().uptimeNanoseconds
            _ = try conn.call(.ping)
            pings.append(Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e6)
            if pings.count % 20 == 0 {
                let t1 = DispatchTime.now().uptimeNanoseconds
                _ = try daemon.run("acme", ["true"])
                submits.append(Double(DispatchTime.now().uptimeNanoseconds - t1) / 1e6)
                let audit = try cli(["audit", "--tenant", "acme", "--json"]).stdout
                purged = audit.contains("\(count) finished job record")
            }
            usleep(2_000)
        }
        XCTAssertTrue(purged, "the purge of \(count) records finished: \(daemon.log)")
        XCTAssertEqual(try cli(["job", "get", seed.id]).status, 0, "the recent seed record stays")
        func pct(_ xs: [Double], _ q: Double) -> Double { xs.sorted()[min(xs.count - 1, Int(Double(xs.count) * q))] }
        print(
            "before the purge: \(baseline.count) pings p50 \(pct(baseline, 0.5)) ms p99 \(pct(baseline, 0.99)) ms; \(baselineSubmits.count) submits p50 \(pct(baselineSubmits, 0.5)) ms p99 \(pct(baselineSubmits, 0.99)) ms"
        )
        print(
            "purge of \(count): \(pings.count) pings p50 \(pct(pings, 0.5)) ms p99 \(pct(pings, 0.99)) ms max \(pings.max()!) ms; \(submits.count) submits p50 \(pct(submits, 0.5)) ms p99 \(pct(submits, 0.99)) ms"
        )
        XCTAssertLessThan(pct(pings, 0.99), 100, "ping p99 during the purge")
        XCTAssertLessThan(pings.max()!, 1000, "no ping waited a second")
        XCTAssertLessThan(submits.max() ?? 0, 2000, "no submit waited two seconds")
    }
}
