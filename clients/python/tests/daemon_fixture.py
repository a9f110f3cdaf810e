"""A real ``clawpen serve`` for the tests, started once per test run in a temporary directory.

The binary is ``$CLAWPEN_BIN``, else ``<repo>/.build/debug/clawpen`` (build it first: ``swift
build``); the policies ``$CLAWPEN_POLICIES``, else ``<repo>/policies``. A test that needs the daemon FAILS when it cannot be started (it is never skipped);
a test of a request the daemon under test does not know yet is skipped, and says so.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
import unittest
import uuid
from typing import Any, Callable, Dict, Optional

import clawpen

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.environ.get("CLAWPEN_REPO") or os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
CALL_TIMEOUT_S = 60.0


def binary() -> str:
    return os.environ.get("CLAWPEN_BIN") or os.path.join(REPO, ".build", "debug", "clawpen")


def policies() -> str:
    """The policy set the daemon loads: ``$CLAWPEN_POLICIES``, else the repository's."""
    return os.environ.get("CLAWPEN_POLICIES") or os.path.join(REPO, "policies")


def unique(prefix: str = "t") -> str:
    """A fresh valid tenant name."""
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def raw_request(path: str, obj: Dict[str, Any], timeout: float = 10.0) -> Dict[str, Any]:
    """One request on a raw socket, its first reply (independent of the client under test)."""
    payload = json.dumps(obj).encode()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        s.sendall(struct.pack(">I", len(payload)) + payload)
        head = _recv(s, 4)
        (n,) = struct.unpack(">I", head)
        return json.loads(_recv(s, n))


def _recv(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise EOFError(f"EOF after {len(buf)} of {n} bytes")
        buf += chunk
    return buf


class Daemon:
    def __init__(self) -> None:
        self.tmp = ""
        self.socket = ""
        self.log = ""
        self.proc: Optional[subprocess.Popen] = None
        self.error: Optional[str] = None
        self._support: Dict[str, bool] = {}

    def start(self) -> None:
        exe = binary()
        if not (os.path.isfile(exe) and os.access(exe, os.X_OK)):
            self.error = (
                f"clawpen binary not found at {exe}: build it first (`swift build` in {REPO}) or set $CLAWPEN_BIN"
            )
            return
        # A short path: AF_UNIX socket paths are limited to 108 bytes.
        self.tmp = tempfile.mkdtemp(prefix="cpy-", dir="/tmp")
        self.socket = os.path.join(self.tmp, "s.sock")
        self.log = os.path.join(self.tmp, "daemon.log")
        cmd = [
            exe, "serve", "--socket", self.socket,
            "--state-dir", os.path.join(self.tmp, "state"),
            # the tenant uid range is registered in the test's own files, never the host's
            "--subuid-file", os.path.join(self.tmp, "subuid"),
            "--subgid-file", os.path.join(self.tmp, "subgid"),
            "--workspace-root", os.path.join(self.tmp, "ws"),
            "--policies", policies(),
        ]  # fmt: skip
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT_S
        last = "no attempt"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                last = f"it exited with status {self.proc.returncode}"
                break
            try:
                if raw_request(self.socket, {"type": "ping", "id": 1}, 2.0).get("type") == "pong":
                    return
            except (OSError, EOFError, ValueError) as exc:
                last = str(exc)
            time.sleep(0.05)
        self.error = (
            f"`{' '.join(cmd)}` did not answer ping within {START_TIMEOUT_S} s ({last}); log:\n{self.log_tail()}"
        )

    def stop(self) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self.tmp and not os.environ.get("CLAWPEN_KEEP_TMP"):
            shutil.rmtree(self.tmp, ignore_errors=True)

    def log_tail(self, n: int = 4000) -> str:
        try:
            with open(self.log, "rb") as f:
                return f.read()[-n:].decode("utf-8", "replace")
        except OSError:
            return "(no log)"

    def knows(self, request_type: str) -> bool:
        """Whether the daemon under test knows a request type (an unknown one is refused with
        ``invalid_request`` "unknown request type")."""
        if request_type not in self._support:
            reply = raw_request(self.socket, {"type": request_type, "id": 1})
            err = reply.get("error") or {}
            unknown = reply.get("type") == "error" and "unknown request type" in str(err.get("message", ""))
            self._support[request_type] = not unknown
        return self._support[request_type]

    def streams(self) -> bool:
        """Whether ``submit`` with ``"stream": true`` is answered with ``accepted`` first."""
        if "stream" not in self._support:
            name = unique("probe")
            raw_request(self.socket, {"type": "tenant.create", "id": 1, "name": name})
            reply = raw_request(
                self.socket, {"type": "submit", "id": 2, "tenant": name, "argv": ["true"], "stream": True}, 30.0
            )
            self._support["stream"] = reply.get("type") == "accepted"
        return self._support["stream"]


_shared: Optional[Daemon] = None


def shared() -> Daemon:
    """The daemon of this test run (started on first use, stopped at exit)."""
    global _shared
    if _shared is None:
        _shared = Daemon()
        _shared.start()
        atexit.register(_shared.stop)
    return _shared


class DaemonTestCase(unittest.TestCase):
    """A test against the shared daemon; ``self.client`` is a fresh :class:`clawpen.Client`."""

    daemon: Daemon

    def setUp(self) -> None:
        self.daemon = shared()
        if self.daemon.error:
            self.fail(self.daemon.error)
        proc = self.daemon.proc
        if proc is not None and proc.poll() is not None:
            self.fail(f"the daemon died (status {proc.returncode}); log:\n{self.daemon.log_tail()}")
        self.client = clawpen.Client(self.daemon.socket, timeout=CALL_TIMEOUT_S)
        self.addCleanup(self.client.close)

    def require(self, request_type: str) -> None:
        if not self.daemon.knows(request_type):
            self.skipTest(f"the daemon under test does not know {request_type!r} yet")

    def require_stream(self) -> None:
        if not self.daemon.streams():
            self.skipTest('the daemon under test does not stream output (submit with "stream": true) yet')

    def new_tenant(self, tier: str = "free") -> str:
        name = unique()
        self.client.tenants.create(name, tier)
        return name

    def assertRaisesCode(self, cls: type, code: str, fn: Callable[[], Any]) -> clawpen.ClawpenError:
        with self.assertRaises(cls) as cm:
            fn()
        err = cm.exception
        self.assertIsInstance(err, clawpen.ClawpenError)
        self.assertEqual(err.code, code, f"message: {err}")
        self.assertTrue(err.message, "an error has a message")
        return err  # type: ignore[return-value]
