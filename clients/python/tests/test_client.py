"""The synchronous client against the real daemon: jobs, refusals as typed exceptions, the
admin calls."""

from __future__ import annotations

import os
import tarfile
import tempfile
import threading
import time
import uuid
from typing import Dict, List

import clawpen
from daemon_fixture import CALL_TIMEOUT_S, DaemonTestCase, policies, unique


class ClientTest(DaemonTestCase):
    def test_ping_and_socket_from_environment(self) -> None:
        pong = self.client.ping()
        self.assertEqual(pong["type"], "pong")
        assert self.daemon.proc is not None
        self.assertEqual(pong["pid"], self.daemon.proc.pid)
        old = os.environ.get("CLAWPEN_SOCKET")
        os.environ["CLAWPEN_SOCKET"] = self.daemon.socket
        try:
            with clawpen.Client(timeout=CALL_TIMEOUT_S) as c:
                self.assertEqual(c.socket_path, self.daemon.socket)
                self.assertEqual(c.ping()["pid"], pong["pid"])
        finally:
            if old is None:
                del os.environ["CLAWPEN_SOCKET"]
            else:
                os.environ["CLAWPEN_SOCKET"] = old

    def test_tenants(self) -> None:
        name = unique()
        t = self.client.tenants.create(name)
        self.assertEqual((t["tenant"], t["tier"]), (name, "free"))
        self.assertIsInstance(t["uid"], int)
        self.assertIn(name, [x["tenant"] for x in self.client.tenants.list()])
        self.assertEqual(self.client.tenants.get(name)["uid"], t["uid"])
        self.assertRaisesCode(clawpen.InvalidRequest, "invalid_request", lambda: self.client.tenants.create(name))
        for bad in ["../x", "A", "", "a" * 64]:
            with self.subTest(name=bad):
                self.assertRaisesCode(clawpen.InvalidTenant, "invalid_tenant", lambda: self.client.tenants.create(bad))
        self.assertRaisesCode(clawpen.InvalidTenant, "invalid_tenant", lambda: self.client.run("../x", ["true"]))
        missing = unique("nosuch")
        self.assertRaisesCode(clawpen.UnknownTenant, "unknown_tenant", lambda: self.client.tenants.get(missing))
        self.assertRaisesCode(clawpen.UnknownTenant, "unknown_tenant", lambda: self.client.run(missing, ["true"]))

    def test_unknown_job(self) -> None:
        with self.assertRaises(clawpen.ClawpenError) as cm:
            self.client.jobs.get("0196a0c3e2f1-000000000000dead")
        if cm.exception.code == "unknown_tenant":
            self.skipTest("the daemon under test answers an unknown job id with unknown_tenant (before unknown_job)")
        self.assertIsInstance(cm.exception, clawpen.UnknownJob)
        self.assertIsInstance(cm.exception, LookupError)

    def test_run(self) -> None:
        t = self.new_tenant()
        job = self.client.run(t, ["sh", "-c", "echo hi; echo oops >&2"])
        self.assertIsInstance(job, clawpen.Job)
        self.assertEqual((job.state, job.exit_code, job.stdout, job.stderr), ("succeeded", 0, "hi\n", "oops\n"))
        self.assertTrue(job.ok and job.done)
        self.assertEqual((job.tenant, job.attempt, job.argv), (t, 1, ["sh", "-c", "echo hi; echo oops >&2"]))
        self.assertIsNotNone(job.run_ms)
        failed = self.client.run(t, ["sh", "-c", "exit 3"])
        self.assertEqual((failed.state, failed.exit_code, failed.returncode), ("failed", 3, 3))
        with self.assertRaises(clawpen.JobFailed) as cm:
            self.client.run(t, ["sh", "-c", "echo bad >&2; exit 4"], check=True)
        self.assertEqual(cm.exception.job.exit_code if cm.exception.job else None, 4)
        self.assertIn("bad", cm.exception.message)

    def test_stdin_env_cwd(self) -> None:
        t = self.new_tenant()
        text = "hello\nwörld ✓\n"
        self.assertEqual(self.client.run(t, ["cat"], stdin=text).stdout, text)
        raw = bytes([0, 1, 0xFF, 0xFE, 0x80, 0x0A])
        job = self.client.run(t, ["od", "-An", "-tx1", "-v"], stdin=raw)
        self.assertEqual(job.stdout.split(), ["00", "01", "ff", "fe", "80", "0a"])
        job = self.client.run(t, ["sh", "-c", "echo $AGENT_FOO; pwd"], env={"AGENT_FOO": "bar baz"}, cwd="/tmp")
        self.assertEqual(job.stdout, "bar baz\n/tmp\n")

    def test_non_utf8_output_is_exact(self) -> None:
        t = self.new_tenant()
        job = self.client.run(t, ["printf", "\\377\\000ok"])
        if "stdout_b64" not in job.raw:
            self.skipTest("the daemon under test has no stdout_b64 in JOB yet")
        self.assertEqual(job.stdout_bytes, b"\xff\x00ok")
        self.assertIn("\ufffd", job.stdout)

    def test_submit_wait_get_cancel(self) -> None:
        t = self.new_tenant()
        job = self.client.submit(t, ["sh", "-c", "sleep 0.3; echo done"])
        self.assertIn(job.state, ("queued", "running"))
        self.assertFalse(job.done)
        done = self.client.jobs.wait(job.id)
        self.assertEqual((done.id, done.state, done.stdout), (job.id, "succeeded", "done\n"))
        self.assertEqual(self.client.jobs.get(job.id).stdout, "done\n")
        sleeper = self.client.submit(t, ["sleep", "30"])
        with self.assertRaises(clawpen.RequestTimeout):
            self.client.jobs.wait(sleeper.id, timeout=0.3)
        self.assertEqual(
            self.client.jobs.get(sleeper.id).state, "running", "a client-side timeout leaves the job alone"
        )
        start = time.monotonic()
        self.assertEqual(self.client.jobs.cancel(sleeper.id).state, "canceled")
        self.assertLess(time.monotonic() - start, 5.0)

    def test_job_timeout(self) -> None:
        t = self.new_tenant()
        job = self.client.run(t, ["sleep", "10"], timeout=0.5)
        self.assertEqual(job.state, "timed_out")
        with self.assertRaises(clawpen.TimedOut) as cm:
            self.client.run(t, ["sleep", "10"], timeout=0.3, check=True)
        self.assertEqual(cm.exception.code, "timed_out")

    def test_idempotency_key(self) -> None:
        t = self.new_tenant()
        key = uuid.uuid4().hex
        first = self.client.run(t, ["echo", "once"], idempotency_key=key)
        second = self.client.run(t, ["echo", "once"], idempotency_key=key)
        self.assertFalse(first.existing)
        self.assertTrue(second.existing)
        self.assertEqual((second.id, second.idempotency_key), (first.id, key))

    def test_quota_exceeded(self) -> None:
        t = self.new_tenant()
        with self.assertRaises(clawpen.QuotaExceeded) as cm:
            self.client.run(t, ["true"], timeout=100000)
        self.assertEqual((cm.exception.quota, cm.exception.rule), ("timeout_max_s", "timeout_max_s"))
        self.assertIsNone(cm.exception.retry_after, "waiting does not help a timeout over the maximum")
        self.client.tenants.set_quota(t, jobs_per_minute=1)
        self.assertTrue(self.client.run(t, ["true"]).ok)
        with self.assertRaises(clawpen.QuotaExceeded) as cm:
            self.client.run(t, ["true"])
        self.assertEqual(cm.exception.rule, "jobs_per_minute")
        retry = cm.exception.retry_after
        self.assertIsNotNone(retry)
        assert retry is not None
        self.assertGreater(retry, 0)
        self.assertLessEqual(retry, 60.0)

    def test_policy_denied_explain_audit(self) -> None:
        t = self.new_tenant()
        with self.assertRaises(clawpen.PolicyDenied) as cm:
            self.client.run(t, ["su", "-c", "id"])
        self.assertIn("commands_deny", cm.exception.rule or "")
        self.assertEqual(cm.exception.command, "/usr/bin/su")
        self.assertIsInstance(cm.exception, PermissionError)
        allowed = self.client.explain(t, ["python3", "-c", "1"])
        self.assertTrue(allowed["decision"]["allowed"])
        self.assertFalse(self.client.explain(t, ["true"], env={"LD_PRELOAD": "x"})["decision"]["allowed"])
        actions = [e["action"] for e in self.client.audit(tenant=t)]
        self.assertIn("submit.denied", actions)
        self.assertEqual(self.client.reload_policies()["source"], policies())

    def test_suspend_resume(self) -> None:
        t = self.new_tenant()
        self.assertTrue(self.client.run(t, ["true"]).ok)
        suspended = self.client.tenants.suspend(t)
        self.assertEqual(suspended["state"], "suspended")
        try:
            with self.assertRaises(clawpen.Unavailable) as cm:
                self.client.run(t, ["true"])
            self.assertEqual(cm.exception.rule, "suspended")
        finally:
            resumed = self.client.tenants.resume(t)
        self.assertIn("lifted", resumed)
        self.assertTrue(self.client.run(t, ["true"]).ok)

    def test_offboard_restore_export(self) -> None:
        t = self.new_tenant()
        job = self.client.run(t, ["sh", "-c", "echo kept > /home/f.txt; echo done"])
        self.assertTrue(job.ok, job.stderr)
        would = self.client.tenants.offboard(t, dry_run=True)
        self.assertTrue(would["dry_run"])
        self.assertEqual(would["would_remove"]["job_records"], 1)
        self.assertGreaterEqual(would["would_remove"]["workspace"]["files"], 1)
        self.assertTrue(self.client.run(t, ["true"]).ok, "a dry run changes nothing")

        grace = self.client.tenants.offboard(t, grace_period_days=2)
        self.assertEqual(grace["offboarding"]["state"], "grace")
        with self.assertRaises(clawpen.Unavailable):
            self.client.run(t, ["true"])
        with self.assertRaises(clawpen.InvalidRequest) as cm:
            self.client.tenants.offboard(t, now=True)
        self.assertEqual(cm.exception.rule, "offboarding in progress")
        self.client.tenants.restore(t)
        self.assertTrue(self.client.run(t, ["true"]).ok, "restored")
        self.assertEqual(self.client.jobs.get(job.id).stdout, "done\n")

        with tempfile.TemporaryDirectory() as d:
            tar_path = os.path.join(d, "export.tar")
            exported = self.client.tenants.export(t, tar_path)
            self.assertEqual(exported["path"], tar_path)
            self.assertGreaterEqual(exported["jobs"], 2)
            with tarfile.open(tar_path) as tar:
                names = tar.getnames()
            self.assertTrue(any(n.endswith("f.txt") for n in names), names)

        gone = self.client.tenants.offboard(t, now=True)
        self.assertEqual(gone["offboarding"]["state"], "done")
        with self.assertRaises(clawpen.ClawpenError):
            self.client.jobs.get(job.id)

    def test_status_and_inspect(self) -> None:
        t = self.new_tenant()
        self.assertTrue(self.client.run(t, ["true"]).ok)
        status = self.client.status(t)
        self.assertEqual([x["tenant"] for x in status["tenants"]], [t])
        self.assertEqual(status["tenants"][0]["jobs"]["succeeded"], 1)
        inspect = self.client.tenants.inspect(t)
        self.assertEqual(inspect["tenant"], t)
        self.assertIn("facts", inspect)

    def test_threads_share_one_client(self) -> None:
        # Requests from several threads travel on one connection; each gets its own reply,
        # and a slow one does not hold up the others.
        t = self.new_tenant("pro")
        results: Dict[str, str] = {}
        errors: List[BaseException] = []

        def run(word: str, delay: float) -> None:
            try:
                results[word] = self.client.run(t, ["sh", "-c", f"sleep {delay}; echo {word}"]).stdout.strip()
            except BaseException as exc:
                errors.append(exc)

        slow = threading.Thread(target=run, args=("slow", 1.5))
        slow.start()
        time.sleep(0.2)
        start = time.monotonic()
        quick = [threading.Thread(target=run, args=(f"w{i}", 0)) for i in range(4)]
        for th in quick:
            th.start()
        for th in quick:
            th.join(30)
        quick_elapsed = time.monotonic() - start
        slow.join(30)
        self.assertEqual(errors, [])
        self.assertEqual(results, {"slow": "slow", "w0": "w0", "w1": "w1", "w2": "w2", "w3": "w3"})
        self.assertLess(quick_elapsed, 1.2, "quick jobs should not wait behind the slow one")
