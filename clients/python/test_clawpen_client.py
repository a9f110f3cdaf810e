"""Tests for clawpen_client against the real daemon (no mocks).

Run from the repository root::

    swift build
    python3 -m unittest discover -s clients/python -v

The daemon binary is ``$CLAWPEN_BIN``, else ``<repo>/.build/debug/clawpen``. One daemon is
started per TestCase class, in a temporary directory, and stopped with SIGTERM afterwards.
If the binary is missing, every daemon test FAILS (it is never skipped).

``FramingTest`` checks the client's frame reader against a scripted peer on a real Unix
socket (short reads, EOF mid-frame, the 64 MiB cap); it does not need the daemon.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import uuid
from typing import Any, Callable, Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)

from clawpen_client import MAX_FRAME_BYTES, ClawpenError, Client  # noqa: E402

START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 15.0
CLIENT_TIMEOUT_S = 60.0
FINAL_STATES = {"succeeded", "failed", "timed_out", "oom_killed", "killed", "canceled", "rejected"}


def daemon_binary() -> str:
    """Path of the clawpen binary under test."""
    return os.environ.get("CLAWPEN_BIN") or os.path.join(REPO, ".build", "debug", "clawpen")


def unique(prefix: str = "t") -> str:
    """A fresh valid tenant name."""
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def send_raw(sock: socket.socket, payload: bytes) -> None:
    sock.sendall(struct.pack(">I", len(payload)) + payload)


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError(f"EOF after {len(buf)} of {n} bytes")
        buf += chunk
    return buf


def recv_raw(sock: socket.socket) -> Dict[str, Any]:
    (n,) = struct.unpack(">I", recv_exactly(sock, 4))
    return json.loads(recv_exactly(sock, n).decode("utf-8"))


class DaemonTestCase(unittest.TestCase):
    """Starts one ``clawpen serve`` per class; every test FAILS if it cannot be started."""

    tmp: str = ""
    sock_path: str = ""
    log_path: str = ""
    proc: Optional[subprocess.Popen] = None
    start_error: Optional[str] = None

    @classmethod
    def setUpClass(cls) -> None:
        cls.proc = None
        cls.start_error = None
        binary = daemon_binary()
        if not (os.path.isfile(binary) and os.access(binary, os.X_OK)):
            cls.start_error = (
                f"clawpen binary not found at {binary}: build it first (`swift build` in {REPO}) "
                "or point $CLAWPEN_BIN at it")
            return
        # Short path: AF_UNIX socket paths are limited to ~108 bytes.
        cls.tmp = tempfile.mkdtemp(prefix="cpt-", dir="/tmp")
        cls.sock_path = os.path.join(cls.tmp, "s.sock")
        cls.log_path = os.path.join(cls.tmp, "daemon.log")
        cmd = [binary, "serve", "--socket", cls.sock_path,
               "--state-dir", os.path.join(cls.tmp, "state"),
               # the uid range is registered in files of the test's own, never the host's
               "--subuid-file", os.path.join(cls.tmp, "subuid"),
               "--subgid-file", os.path.join(cls.tmp, "subgid"),
               "--workspace-root", os.path.join(cls.tmp, "ws"),
               "--policies", os.path.join(REPO, "policies")]
        log = open(cls.log_path, "wb")
        try:
            cls.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log,
                                        stderr=subprocess.STDOUT)
        except OSError as exc:
            cls.start_error = f"cannot start {cmd}: {exc}"
            return
        finally:
            log.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        last = "no attempt"
        while time.monotonic() < deadline:
            if cls.proc.poll() is not None:
                last = f"daemon exited with status {cls.proc.returncode}"
                break
            try:
                with Client(cls.sock_path, timeout=2.0) as c:
                    if c.ping().get("type") == "pong":
                        return
            except ClawpenError as exc:
                last = str(exc)
            time.sleep(0.1)
        cls.start_error = (f"`{' '.join(cmd)}` did not answer ping within {START_TIMEOUT_S} s "
                           f"({last}); daemon log:\n{cls._log_tail()}")

    @classmethod
    def tearDownClass(cls) -> None:
        proc = cls.proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if cls.tmp and not os.environ.get("CLAWPEN_KEEP_TMP"):
            shutil.rmtree(cls.tmp, ignore_errors=True)

    @classmethod
    def _log_tail(cls, n: int = 4000) -> str:
        try:
            with open(cls.log_path, "rb") as f:
                return f.read()[-n:].decode("utf-8", "replace")
        except OSError:
            return "(no log)"

    def setUp(self) -> None:
        if self.start_error:
            self.fail(self.start_error)
        if self.proc is not None and self.proc.poll() is not None:
            self.fail(f"daemon died (status {self.proc.returncode}); log:\n{self._log_tail()}")
        self.client = Client(self.sock_path, timeout=CLIENT_TIMEOUT_S)
        self.addCleanup(self.client.close)

    def new_tenant(self, tier: str = "free") -> str:
        name = unique()
        self.client.create_tenant(name, tier)
        return name

    def assertCode(self, code: str, fn: Callable[[], Any]) -> ClawpenError:
        with self.assertRaises(ClawpenError) as cm:
            fn()
        self.assertEqual(cm.exception.code, code, f"message: {cm.exception.message}")
        self.assertTrue(cm.exception.message, "error message should not be empty")
        return cm.exception

    def assertJob(self, job: Dict[str, Any], state: str) -> None:
        self.assertEqual(job.get("state"), state, f"job: {json.dumps(job)[:2000]}")


class ClientTest(DaemonTestCase):
    """The client API against a real daemon."""

    # -- ping and tenants -------------------------------------------------------------------

    def test_ping(self) -> None:
        pong = self.client.ping()
        self.assertEqual(pong["type"], "pong")
        self.assertEqual(pong["id"], 1)
        self.assertIsInstance(pong.get("version"), str)
        self.assertEqual(pong.get("pid"), self.proc.pid)

    def test_default_socket_from_env(self) -> None:
        old = os.environ.get("CLAWPEN_SOCKET")
        os.environ["CLAWPEN_SOCKET"] = self.sock_path
        try:
            with Client(timeout=CLIENT_TIMEOUT_S) as c:
                self.assertEqual(c.ping()["type"], "pong")
        finally:
            if old is None:
                del os.environ["CLAWPEN_SOCKET"]
            else:
                os.environ["CLAWPEN_SOCKET"] = old

    def test_tenant_create_list_show(self) -> None:
        name = unique()
        t = self.client.create_tenant(name)
        self.assertEqual(t["tenant"], name)
        self.assertEqual(t["tier"], "free")
        self.assertIsInstance(t.get("uid"), int)
        self.assertIn("workspace", t)
        names = [x["tenant"] for x in self.client.tenants()]
        self.assertIn(name, names)
        shown = self.client.tenant(name)
        self.assertEqual(shown["tenant"], name)
        self.assertEqual(shown["uid"], t["uid"])
        pro = unique()
        self.assertEqual(self.client.create_tenant(pro, tier="pro")["tier"], "pro")
        self.assertNotEqual(self.client.tenant(pro)["uid"], t["uid"])

    def test_invalid_tenant_names(self) -> None:
        for bad in ["../x", "A", "", "a" * 64, "a/b"]:
            with self.subTest(name=bad):
                self.assertCode("invalid_tenant", lambda: self.client.create_tenant(bad))
        self.assertCode("invalid_tenant", lambda: self.client.tenant("../x"))
        self.assertCode("invalid_tenant", lambda: self.client.submit("../x", ["true"]))
        self.client.create_tenant("a" * 63)  # the longest valid name is accepted

    def test_duplicate_tenant(self) -> None:
        name = self.new_tenant()
        self.assertCode("invalid_request", lambda: self.client.create_tenant(name))

    def test_unknown_tenant(self) -> None:
        name = unique("nosuch")
        self.assertCode("unknown_tenant", lambda: self.client.tenant(name))
        self.assertCode("unknown_tenant", lambda: self.client.submit(name, ["true"]))
        self.assertCode("unknown_tenant", lambda: self.client.status(name))

    def test_unknown_job_id(self) -> None:
        self.assertCode("unknown_job", lambda: self.client.get("0196a0c3e2f1-000000000000dead"))

    # -- jobs -------------------------------------------------------------------------------

    def test_submit_echo(self) -> None:
        t = self.new_tenant()
        job = self.client.submit(t, ["echo", "hi"])
        self.assertJob(job, "succeeded")
        self.assertEqual(job["stdout"], "hi\n")
        self.assertEqual(job["stderr"], "")
        self.assertEqual(job["exit_code"], 0)
        self.assertIsNone(job["signal"])
        self.assertIsNone(job["error"])
        self.assertEqual(job["tenant"], t)
        self.assertEqual(job["attempt"], 1)
        self.assertFalse(job["stdout_truncated"])
        for key in ("id", "queued_ms", "run_ms", "cpu_ms", "max_rss_kb", "stderr_truncated"):
            self.assertIn(key, job)

    def test_nonzero_exit(self) -> None:
        t = self.new_tenant()
        job = self.client.submit(t, ["sh", "-c", "echo oops >&2; exit 3"])
        self.assertJob(job, "failed")
        self.assertEqual(job["exit_code"], 3)
        self.assertEqual(job["stderr"], "oops\n")

    def test_stdin_str(self) -> None:
        t = self.new_tenant()
        text = "hello\nwörld ✓\n"
        job = self.client.submit(t, ["cat"], stdin=text)
        self.assertJob(job, "succeeded")
        self.assertEqual(job["stdout"], text)

    def test_stdin_bytes(self) -> None:
        t = self.new_tenant()
        data = "bytes wörld\n".encode("utf-8")
        job = self.client.submit(t, ["cat"], stdin=data)
        self.assertJob(job, "succeeded")
        self.assertEqual(job["stdout"].encode("utf-8"), data)
        # Non-UTF-8 bytes reach the job intact (checked through od, since stdout is text).
        raw = bytes([0, 1, 0xFF, 0xFE, 0x80, 0x0A])
        job = self.client.submit(t, ["od", "-An", "-tx1", "-v"], stdin=raw)
        self.assertJob(job, "succeeded")
        self.assertEqual(job["stdout"].split(), ["00", "01", "ff", "fe", "80", "0a"])

    def test_env(self) -> None:
        t = self.new_tenant()
        job = self.client.submit(t, ["sh", "-c", "echo $AGENT_FOO"], env={"AGENT_FOO": "bar baz"})
        self.assertJob(job, "succeeded")
        self.assertEqual(job["stdout"], "bar baz\n")

    def test_detach_then_wait(self) -> None:
        t = self.new_tenant()
        job = self.client.submit(t, ["sh", "-c", "sleep 0.5; echo done"], wait=False)
        self.assertIn(job["state"], ("queued", "running"))
        done = self.client.wait(job["id"])
        self.assertEqual(done["id"], job["id"])
        self.assertJob(done, "succeeded")
        self.assertEqual(done["stdout"], "done\n")

    def test_get_finished_job(self) -> None:
        t = self.new_tenant()
        job = self.client.submit(t, ["echo", "kept"])
        got = self.client.get(job["id"])
        self.assertEqual(got["id"], job["id"])
        self.assertJob(got, "succeeded")
        self.assertEqual(got["stdout"], "kept\n")
        self.assertEqual(got["exit_code"], 0)

    def test_cancel(self) -> None:
        t = self.new_tenant()
        job = self.client.submit(t, ["sleep", "30"], wait=False)
        time.sleep(0.3)
        start = time.monotonic()
        canceled = self.client.cancel(job["id"])
        elapsed = time.monotonic() - start
        self.assertEqual(canceled["id"], job["id"])
        self.assertJob(canceled, "canceled")
        self.assertLess(elapsed, 5.0, "cancel should answer quickly")
        self.assertJob(self.client.get(job["id"]), "canceled")
        # Canceling a finished job returns it unchanged.
        self.assertJob(self.client.cancel(job["id"]), "canceled")

    def test_timeout(self) -> None:
        t = self.new_tenant()
        start = time.monotonic()
        job = self.client.submit(t, ["sleep", "10"], timeout_s=0.5)
        elapsed = time.monotonic() - start
        self.assertJob(job, "timed_out")
        self.assertLess(elapsed, 8.0, "the job should be killed after ~0.5 s")

    def test_idempotency_key(self) -> None:
        t = self.new_tenant()
        key = uuid.uuid4().hex
        first = self.client.request("submit", tenant=t, argv=["echo", "once"],
                                    idempotency_key=key, wait=True)
        second = self.client.request("submit", tenant=t, argv=["echo", "once"],
                                     idempotency_key=key, wait=True)
        self.assertEqual(first["type"], "job")
        self.assertIs(first["existing"], False)
        self.assertIs(second["existing"], True)
        self.assertEqual(second["job"]["id"], first["job"]["id"])
        self.assertEqual(second["job"]["idempotency_key"], key)

    # -- the router: quotas, tool policy, set-quota, audit ----------------------------------

    def test_quota_refusal_carries_retry_after(self) -> None:
        t = self.new_tenant()
        with self.assertRaises(ClawpenError) as cm:
            self.client.submit(t, ["true"], timeout_s=100000)
        self.assertEqual(cm.exception.code, "quota_exceeded")
        self.assertEqual(cm.exception.details.get("quota"), "timeout_max_s")
        self.assertIsNone(cm.exception.retry_after, "waiting does not help a timeout over the maximum")
        self.client.set_quota(t, jobs_per_minute=1)
        self.assertJob(self.client.submit(t, ["true"]), "succeeded")
        with self.assertRaises(ClawpenError) as cm:
            self.client.submit(t, ["true"])
        self.assertEqual(cm.exception.details.get("quota"), "jobs_per_minute")
        self.assertGreater(cm.exception.retry_after or 0, 0)

    def test_policy_denied_and_explain(self) -> None:
        t = self.new_tenant()
        with self.assertRaises(ClawpenError) as cm:
            self.client.submit(t, ["su", "-c", "id"])
        self.assertEqual(cm.exception.code, "policy_denied")
        self.assertIn("commands_deny", cm.exception.details.get("rule", ""))
        e = self.client.explain(t, ["python3", "-c", "1"])
        self.assertTrue(e["decision"]["allowed"])
        self.assertEqual(e["decision"]["resolved_path"], "/usr/bin/python3")
        denied = self.client.explain(t, ["true"], env={"LD_PRELOAD": "x"})
        self.assertFalse(denied["decision"]["allowed"])

    def test_audit_lists_refusals(self) -> None:
        t = self.new_tenant()
        with self.assertRaises(ClawpenError):
            self.client.submit(t, ["su"])
        events = self.client.audit(tenant=t)
        self.assertIn("submit.denied", [e["action"] for e in events])
        self.assertEqual(self.client.reload_policies()["source"], os.path.join(REPO, "policies"))

    def test_status(self) -> None:
        t = self.new_tenant()
        st = self.client.status()
        sup = st["supervisor"]
        self.assertEqual(sup["pid"], self.proc.pid)
        for key in ("uptime_s", "version", "cgroup"):
            self.assertIn(key, sup)
        self.assertIn(t, [x["tenant"] for x in st["tenants"]])

        def entry() -> Dict[str, Any]:
            tenants = self.client.status(t)["tenants"]
            matching = [x for x in tenants if x["tenant"] == t]
            self.assertEqual(len(matching), 1, f"status({t!r}) tenants: {tenants}")
            return matching[0]

        before = entry()
        for key in ("tenant", "tier", "state", "worker_pid", "uptime_s", "restarts", "jobs",
                    "limits", "usage", "enforcement"):
            self.assertIn(key, before)
        for key in ("queued", "running", "succeeded", "failed"):
            self.assertIsInstance(before["jobs"][key], int)
        for key in ("memory", "pids", "cpu"):
            self.assertIn(before["enforcement"][key], ("cgroup", "per-process-rlimit", "rlimit", "none"))
        self.assertJob(self.client.submit(t, ["true"]), "succeeded")
        self.assertJob(self.client.submit(t, ["false"]), "failed")
        after = entry()
        self.assertEqual(after["jobs"]["succeeded"], before["jobs"]["succeeded"] + 1)
        self.assertEqual(after["jobs"]["failed"], before["jobs"]["failed"] + 1)

    def test_connection_refused(self) -> None:
        missing = os.path.join(self.tmp, "missing.sock")
        with self.assertRaises(ClawpenError) as cm:
            Client(missing)
        self.assertEqual(cm.exception.code, "unavailable")
        self.assertIn(missing, cm.exception.message)


class RawSocketTest(DaemonTestCase):
    """Framing errors sent on a raw socket."""

    def raw(self) -> socket.socket:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(CLIENT_TIMEOUT_S)
        s.connect(self.sock_path)
        self.addCleanup(s.close)
        return s

    def test_malformed_json_keeps_connection(self) -> None:
        s = self.raw()
        for bad in [b"{not json", b"[1, 2]", b'{"id": 5}', b'{"type": 5, "id": 6}', b"\xff\xfe"]:
            with self.subTest(payload=bad):
                send_raw(s, bad)
                reply = recv_raw(s)
                self.assertEqual(reply["type"], "error", reply)
                self.assertEqual(reply["error"]["code"], "invalid_request", reply)
        send_raw(s, b'{"type": "ping", "id": "after"}')
        reply = recv_raw(s)
        self.assertEqual(reply["type"], "pong", reply)
        self.assertEqual(reply["id"], "after")

    def test_unknown_type(self) -> None:
        s = self.raw()
        send_raw(s, b'{"type": "no.such.thing", "id": 9}')
        reply = recv_raw(s)
        self.assertEqual(reply["type"], "error")
        self.assertEqual(reply["id"], 9)
        self.assertEqual(reply["error"]["code"], "invalid_request")

    def test_id_echo_and_pipelining(self) -> None:
        s = self.raw()
        send_raw(s, b'{"type": "ping", "id": "a"}')
        send_raw(s, b'{"type": "ping", "id": 2}')
        send_raw(s, b'{"type": "ping"}')
        ids = sorted(repr(recv_raw(s).get("id")) for _ in range(3))
        self.assertEqual(ids, sorted(["'a'", "2", "None"]))

    def test_frame_too_large(self) -> None:
        s = self.raw()
        s.sendall(struct.pack(">I", 100 * 1024 * 1024))
        reply = recv_raw(s)
        self.assertEqual(reply["type"], "error", reply)
        self.assertEqual(reply["error"]["code"], "frame_too_large", reply)
        self.assertEqual(s.recv(1), b"", "the connection should be closed after frame_too_large")
        self.assertEqual(self.client.ping()["type"], "pong", "the daemon keeps serving others")


class _ScriptedServer:
    """A Unix socket server that accepts one connection and sends scripted bytes."""

    def __init__(self, tmp: str, chunks: List[bytes], close_after: bool = True) -> None:
        self.path = os.path.join(tmp, f"f{uuid.uuid4().hex[:8]}.sock")
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(self.path)
        self.listener.listen(1)
        self.chunks = chunks
        self.close_after = close_after
        self.received = b""
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        conn, _ = self.listener.accept()
        with conn:
            (n,) = struct.unpack(">I", recv_exactly(conn, 4))
            self.received = recv_exactly(conn, n)
            for chunk in self.chunks:
                conn.sendall(chunk)
                time.sleep(0.02)  # force separate reads
            if not self.close_after:
                time.sleep(1)

    def close(self) -> None:
        self.thread.join(10)
        self.listener.close()


class FramingTest(unittest.TestCase):
    """The client's frame reader against a scripted peer (no daemon needed)."""

    def setUp(self) -> None:
        self.tmp = tempfile.mkdtemp(prefix="cpf-", dir="/tmp")
        self.addCleanup(shutil.rmtree, self.tmp, True)

    def serve(self, chunks: List[bytes]) -> _ScriptedServer:
        srv = _ScriptedServer(self.tmp, chunks)
        self.addCleanup(srv.close)
        return srv

    def test_short_reads(self) -> None:
        payload = json.dumps({"type": "pong", "id": 1, "version": "x", "pid": 1}).encode()
        frame = struct.pack(">I", len(payload)) + payload
        srv = self.serve([frame[i:i + 1] for i in range(len(frame))])
        with Client(srv.path, timeout=10) as c:
            self.assertEqual(c.ping()["version"], "x")
        self.assertEqual(json.loads(srv.received), {"type": "ping", "id": 1})

    def test_skips_other_ids_and_raises_errors(self) -> None:
        other = json.dumps({"type": "pong", "id": 99}).encode()
        err = json.dumps({"type": "error", "id": 1,
                          "error": {"code": "unknown_tenant", "message": "no tenant", "x": 1}})
        err_b = err.encode()
        srv = self.serve([struct.pack(">I", len(other)) + other,
                          struct.pack(">I", len(err_b)) + err_b])
        with Client(srv.path, timeout=10) as c:
            with self.assertRaises(ClawpenError) as cm:
                c.tenant("zed")
        self.assertEqual(cm.exception.code, "unknown_tenant")
        self.assertEqual(cm.exception.message, "no tenant")
        self.assertEqual(cm.exception.details.get("x"), 1)

    def test_eof_mid_frame(self) -> None:
        srv = self.serve([struct.pack(">I", 100) + b'{"type":'])
        with Client(srv.path, timeout=10) as c:
            with self.assertRaises(ClawpenError) as cm:
                c.ping()
            self.assertTrue(c.closed)
        self.assertEqual(cm.exception.code, "unavailable")
        self.assertIn("middle of a frame", cm.exception.message)

    def test_eof_mid_header(self) -> None:
        srv = self.serve([b"\x00\x00"])
        with Client(srv.path, timeout=10) as c:
            with self.assertRaises(ClawpenError) as cm:
                c.ping()
        self.assertIn("middle of a frame", cm.exception.message)

    def test_incoming_frame_cap(self) -> None:
        srv = self.serve([struct.pack(">I", MAX_FRAME_BYTES + 1)])
        with Client(srv.path, timeout=10) as c:
            with self.assertRaises(ClawpenError) as cm:
                c.ping()
        self.assertEqual(cm.exception.code, "frame_too_large")

    def test_reply_timeout(self) -> None:
        srv = _ScriptedServer(self.tmp, [], close_after=False)
        self.addCleanup(srv.close)
        with Client(srv.path, timeout=0.3) as c:
            with self.assertRaises(ClawpenError) as cm:
                c.ping()
        self.assertEqual(cm.exception.code, "unavailable")

    def test_stdin_bytes_encoding(self) -> None:
        reply = json.dumps({"type": "job", "id": 1, "job": {"id": "j"}, "existing": False}).encode()
        srv = self.serve([struct.pack(">I", len(reply)) + reply])
        with Client(srv.path, timeout=10) as c:
            self.assertEqual(c.submit("acme", ["cat"], stdin=b"\xff\x00"), {"id": "j"})
        sent = json.loads(srv.received)
        self.assertEqual(sent["stdin_b64"], "/wA=")
        self.assertNotIn("stdin", sent)
        self.assertIs(sent["wait"], True)


if __name__ == "__main__":
    unittest.main()
