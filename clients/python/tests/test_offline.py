"""The client's framing, routing and error mapping, against scripted peers on real Unix sockets
(no daemon): what the daemon cannot be made to do on purpose (short reads, EOF in a frame,
oversized or garbage frames, replies out of order, silence)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import struct
import sys
import sysconfig
import tempfile
import threading
import time
import unittest
import uuid
from typing import Any, Callable, Dict, List

import clawpen
from clawpen._wire import signal_field


def frame(obj: Dict[str, Any]) -> bytes:
    payload = json.dumps(obj).encode()
    return struct.pack(">I", len(payload)) + payload


def read_frame(conn: socket.socket) -> Dict[str, Any]:
    def exactly(n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = conn.recv(n - len(buf))
            if not chunk:
                raise EOFError
            buf += chunk
        return buf

    (n,) = struct.unpack(">I", exactly(4))
    return json.loads(exactly(n))


class Peer:
    """A Unix socket server running ``script(conn)`` for each connection it accepts."""

    def __init__(self, tmp: str, script: Callable[[socket.socket], None]) -> None:
        self.path = os.path.join(tmp, f"p{uuid.uuid4().hex[:8]}.sock")
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(self.path)
        self.listener.listen(8)
        self.script = script
        self.errors: List[BaseException] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        with conn:
            try:
                self.script(conn)
            except (EOFError, OSError):
                pass
            except BaseException as exc:  # surfaced by close()
                self.errors.append(exc)

    def close(self) -> None:
        self.listener.close()
        self.thread.join(10)
        if self.errors:
            raise self.errors[0]


class OfflineTest(unittest.TestCase):
    def setUp(self) -> None:
        self.tmp = tempfile.mkdtemp(prefix="cpo-", dir="/tmp")
        self.addCleanup(shutil.rmtree, self.tmp, True)

    def peer(self, script: Callable[[socket.socket], None]) -> Peer:
        p = Peer(self.tmp, script)
        self.addCleanup(p.close)
        return p

    def test_installed_package_is_under_test(self) -> None:
        # The tests import the package installed into the venv, never the source tree.
        if os.environ.get("CLAWPEN_TEST_VENV"):
            site = sysconfig.get_paths()["purelib"]
            self.assertTrue(clawpen.__file__.startswith(site), f"clawpen imported from {clawpen.__file__}, not {site}")
            self.assertTrue(sys.prefix.startswith(os.environ["CLAWPEN_TEST_VENV"]), sys.prefix)
        self.assertTrue(os.path.isfile(os.path.join(os.path.dirname(clawpen.__file__), "py.typed")))

    def test_short_reads_and_ids(self) -> None:
        got: Dict[str, Any] = {}

        def script(conn: socket.socket) -> None:
            req = read_frame(conn)
            got.update(req)
            data = frame({"type": "pong", "id": req["id"], "version": "x", "pid": 1})
            for i in range(len(data)):
                conn.sendall(data[i : i + 1])
                time.sleep(0.002)

        p = self.peer(script)
        with clawpen.Client(p.path, timeout=10) as c:
            self.assertEqual(c.ping()["version"], "x")
        self.assertEqual(got["type"], "ping")
        self.assertIsInstance(got["id"], int)

    def test_replies_out_of_order_reach_their_threads(self) -> None:
        # Three threads share one client; the peer answers the last request first.
        def script(conn: socket.socket) -> None:
            reqs = [read_frame(conn) for _ in range(3)]
            for req in reversed(reqs):
                conn.sendall(frame({"type": "tenant", "id": req["id"], "tenant": {"tenant": req["name"]}}))
                time.sleep(0.05)
            time.sleep(0.5)

        p = self.peer(script)
        results: Dict[str, str] = {}
        with clawpen.Client(p.path, timeout=10) as c:
            threads = [
                threading.Thread(target=lambda n=n: results.__setitem__(n, c.tenants.get(n)["tenant"]))
                for n in ("a", "b", "c")
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join(10)
        self.assertEqual(results, {"a": "a", "b": "b", "c": "c"})

    def test_error_codes_become_classes(self) -> None:
        cases = {
            "invalid_request": clawpen.InvalidRequest,
            "invalid_tenant": clawpen.InvalidTenant,
            "unknown_tenant": clawpen.UnknownTenant,
            "unknown_job": clawpen.UnknownJob,
            "frame_too_large": clawpen.FrameTooLarge,
            "quota_exceeded": clawpen.QuotaExceeded,
            "policy_denied": clawpen.PolicyDenied,
            "permission_denied": clawpen.PermissionDenied,
            "timed_out": clawpen.TimedOut,
            "oom_killed": clawpen.OOMKilled,
            "worker_crashed": clawpen.WorkerCrashed,
            "unavailable": clawpen.Unavailable,
            "not_found": clawpen.NotFound,
            "file_too_large": clawpen.FileTooLarge,
            "internal": clawpen.Internal,
        }
        for code, cls in cases.items():
            err = clawpen.error_from_reply({"type": "error", "error": {"code": code, "message": "m", "rule": "r"}})
            self.assertIs(type(err), cls, code)
            self.assertEqual(err.code, code)
            self.assertEqual(err.rule, "r")
        future = clawpen.error_from_reply({"type": "error", "error": {"code": "brand_new", "message": "m"}})
        self.assertIs(type(future), clawpen.ClawpenError)
        self.assertEqual(future.code, "brand_new")
        quota = clawpen.error_from_reply(
            {
                "type": "error",
                "error": {"code": "quota_exceeded", "quota": "jobs_per_minute", "retry_after_ms": 250, "message": "m"},
            }
        )
        assert isinstance(quota, clawpen.QuotaExceeded)
        self.assertEqual(quota.retry_after, 0.25)
        self.assertEqual(quota.rule, "jobs_per_minute")
        self.assertIsInstance(
            clawpen.error_from_reply({"type": "error", "error": {"code": "not_found", "message": ""}}),
            FileNotFoundError,
        )
        self.assertIsInstance(
            clawpen.error_from_reply({"type": "error", "error": {"code": "permission_denied", "message": ""}}),
            PermissionError,
        )

    def test_eof_mid_frame(self) -> None:
        def script(conn: socket.socket) -> None:
            read_frame(conn)
            conn.sendall(struct.pack(">I", 100) + b'{"type":')

        p = self.peer(script)
        with clawpen.Client(p.path, timeout=10) as c:
            with self.assertRaises(clawpen.DaemonUnreachable) as cm:
                c.ping()
            self.assertIn("middle of a frame", cm.exception.message)
            self.assertTrue(c.closed)
            with self.assertRaises(clawpen.DaemonUnreachable):
                c.ping()

    def test_incoming_frame_cap(self) -> None:
        def script(conn: socket.socket) -> None:
            read_frame(conn)
            conn.sendall(struct.pack(">I", clawpen.MAX_FRAME_BYTES + 1))
            time.sleep(0.5)

        p = self.peer(script)
        with clawpen.Client(p.path, timeout=10) as c:
            with self.assertRaises(clawpen.ProtocolError) as cm:
                c.ping()
        self.assertIn("above the client's limit", cm.exception.message)

    def test_garbage_frame(self) -> None:
        def script(conn: socket.socket) -> None:
            read_frame(conn)
            conn.sendall(struct.pack(">I", 5) + b"[1,2]")
            time.sleep(0.5)

        p = self.peer(script)
        with clawpen.Client(p.path, timeout=10) as c:
            with self.assertRaises(clawpen.ProtocolError):
                c.ping()

    def test_timeout_keeps_the_connection(self) -> None:
        # The first reply comes late (after the call gave up): it is dropped, and the
        # connection still serves the next call.
        def script(conn: socket.socket) -> None:
            first = read_frame(conn)
            second = read_frame(conn)
            late = frame({"type": "pong", "id": first["id"], "version": "late"})
            conn.sendall(late[:3])  # a partial frame when the first call times out
            time.sleep(0.1)
            conn.sendall(late[3:] + frame({"type": "pong", "id": second["id"], "version": "second"}))
            time.sleep(0.5)

        p = self.peer(script)
        with clawpen.Client(p.path, timeout=10) as c:
            with self.assertRaises(clawpen.RequestTimeout) as cm:
                c.request("ping", request_timeout=0.2)
            self.assertIsInstance(cm.exception, TimeoutError)
            self.assertEqual(c.ping()["version"], "second")
            self.assertFalse(c.closed)

    def test_connection_level_error(self) -> None:
        def script(conn: socket.socket) -> None:
            read_frame(conn)
            conn.sendall(
                frame({"type": "error", "id": None, "error": {"code": "frame_too_large", "message": "too big"}})
            )

        p = self.peer(script)
        with clawpen.Client(p.path, timeout=10) as c:
            with self.assertRaises(clawpen.FrameTooLarge):
                c.ping()

    def test_unreachable(self) -> None:
        missing = os.path.join(self.tmp, "missing.sock")
        with self.assertRaises(clawpen.DaemonUnreachable) as cm:
            clawpen.Client(missing)
        self.assertEqual(cm.exception.code, "unavailable")
        self.assertIn(missing, cm.exception.message)
        self.assertIsInstance(cm.exception, ConnectionError)
        self.assertIsInstance(cm.exception, clawpen.Unavailable)

    def test_socket_resolution(self) -> None:
        old = os.environ.pop("CLAWPEN_SOCKET", None)
        try:
            self.assertEqual(clawpen.resolve_socket(), clawpen.DEFAULT_SOCKET)
            os.environ["CLAWPEN_SOCKET"] = "/tmp/x.sock"
            self.assertEqual(clawpen.resolve_socket(), "/tmp/x.sock")
            self.assertEqual(clawpen.resolve_socket("/tmp/y.sock"), "/tmp/y.sock")
        finally:
            os.environ.pop("CLAWPEN_SOCKET", None)
            if old is not None:
                os.environ["CLAWPEN_SOCKET"] = old

    def test_submit_fields(self) -> None:
        sent: List[Dict[str, Any]] = []

        def script(conn: socket.socket) -> None:
            for _ in range(2):
                req = read_frame(conn)
                sent.append(req)
                job = {"id": "j", "tenant": "acme", "state": "succeeded", "exit_code": 0, "stdout": "\ufffd",
                       "stdout_b64": "/wA=", "stderr": ""}  # fmt: skip
                conn.sendall(frame({"type": "job", "id": req["id"], "job": job, "existing": False}))

        p = self.peer(script)
        with clawpen.Client(p.path, timeout=10) as c:
            job = c.run("acme", ["cat"], stdin=b"\xff\x00", env={"A": "1"}, timeout=5)
            self.assertEqual(job.stdout_bytes, b"\xff\x00")
            c.run("acme", ["cat"], stdin="text")
        self.assertEqual(sent[0]["stdin_b64"], "/wA=")
        self.assertNotIn("stdin", sent[0])
        self.assertIs(sent[0]["wait"], True)
        self.assertEqual(sent[0]["timeout_s"], 5)
        self.assertEqual(sent[0]["env"], {"A": "1"})
        self.assertEqual(sent[1]["stdin"], "text")
        with self.assertRaises(TypeError):
            c.run("acme", "echo hi")  # type: ignore[arg-type]

    def test_signal_names(self) -> None:
        self.assertEqual(signal_field(signal.SIGINT), "INT")
        self.assertEqual(signal_field("sigterm"), "TERM")
        self.assertEqual(signal_field("KILL"), "KILL")
        self.assertEqual(signal_field(9), 9)

    def test_frame_reader_pieces(self) -> None:
        data = frame({"type": "a", "id": 1}) + frame({"type": "b", "id": 2})
        reader = clawpen.FrameReader()
        out: List[Dict[str, Any]] = []
        for i in range(0, len(data), 3):
            out += reader.feed(data[i : i + 3])
        self.assertEqual([f["type"] for f in out], ["a", "b"])
        self.assertEqual(reader.partial, 0)

    def test_output_chunks(self) -> None:
        live = clawpen.OutputChunk.from_wire(
            {"type": "output", "stream": "stderr", "seq": 4, "offset": 10, "data_b64": "aGkK"}
        )
        self.assertEqual(
            (live.stream, live.data, live.seq, live.offset, live.replay), ("stderr", b"hi\n", 4, 10, False)
        )
        kept = clawpen.OutputChunk.from_wire(
            {"type": "output", "stream": "stdout", "seq": None, "offset": 0, "replay": True, "data_b64": ""}
        )
        self.assertEqual((kept.seq, kept.replay, kept.data), (None, True, b""))
        with self.assertRaises(clawpen.ProtocolError):
            clawpen.OutputChunk.from_wire({"type": "output", "stream": "stdin", "data_b64": ""})
        with self.assertRaises(clawpen.ProtocolError):
            clawpen.OutputChunk.from_wire({"type": "output", "stream": "stdout", "data_b64": "not base64!"})

    def test_job_check(self) -> None:
        failed = clawpen.Job.from_wire(
            {"id": "j", "state": "failed", "exit_code": 2, "stderr": "boom\n", "argv": ["x"]}
        )
        with self.assertRaises(clawpen.JobFailed) as cm:
            failed.check()
        self.assertIs(cm.exception.job, failed)
        self.assertIn("boom", cm.exception.message)
        with self.assertRaises(clawpen.TimedOut):
            clawpen.Job.from_wire({"id": "j", "state": "timed_out", "timeout_s": 1}).check()
        with self.assertRaises(clawpen.OOMKilled):
            clawpen.Job.from_wire({"id": "j", "state": "oom_killed"}).check()
        with self.assertRaises(clawpen.WorkerCrashed):
            clawpen.Job.from_wire(
                {"id": "j", "state": "failed", "error": {"code": "worker_crashed", "message": "x"}}
            ).check()
        ok = clawpen.Job.from_wire({"id": "j", "state": "succeeded", "exit_code": 0})
        self.assertIs(ok.check(), ok)
        self.assertEqual(clawpen.Job.from_wire({"id": "j", "state": "killed", "signal": 9}).returncode, -9)


if __name__ == "__main__":
    unittest.main()
