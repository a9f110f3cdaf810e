"""Python client for the clawpen supervisor (standard library only, Python 3.9+).

The wire protocol is described in ``docs/protocol.md``: every message is a frame made of a
4-byte unsigned big-endian payload length followed by that many bytes of UTF-8 JSON (one
object with a string ``"type"``), sent over a Unix stream socket.

Example::

    from clawpen_client import Client, ClawpenError

    with Client() as c:                       # $CLAWPEN_SOCKET or /run/clawpen/clawpen.sock
        c.create_tenant("acme")
        job = c.submit("acme", ["echo", "hi"])
        print(job["state"], job["stdout"])    # succeeded hi

A :class:`Client` holds one connection and sends one request at a time (it is safe to share
between threads, but requests are then serialized; use one client per thread for
concurrency).
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import socket
import struct
import threading
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

__all__ = ["Client", "ClawpenError", "DEFAULT_SOCKET", "MAX_FRAME_BYTES"]
__version__ = "0.1.0"

#: Socket path used when neither ``socket_path`` nor ``$CLAWPEN_SOCKET`` is given.
DEFAULT_SOCKET = "/run/clawpen/clawpen.sock"

#: Largest incoming frame payload the client accepts (the protocol asks for at least 64 MiB).
MAX_FRAME_BYTES = 64 * 1024 * 1024

_HEADER = struct.Struct(">I")


class ClawpenError(Exception):
    """A refusal from the daemon (an ``{"type": "error"}`` reply) or a client-side failure.

    Attributes:
        code: machine-readable code, one of the protocol's error codes (``invalid_request``,
            ``invalid_tenant``, ``unknown_tenant``, ``frame_too_large``, ``quota_exceeded``,
            ``policy_denied``, ``permission_denied``, ``timed_out``, ``oom_killed``,
            ``worker_crashed``, ``unavailable``, ``internal``). Connection problems on the
            client side (cannot connect, connection closed, no reply in time) use
            ``unavailable``; a malformed frame from the daemon uses ``internal``.
        message: human-readable explanation.
        details: the whole ``error`` object of the reply (including any fields besides
            ``code`` and ``message``, such as the rule that refused the request); for
            client-side failures, whatever context is known.
    """

    def __init__(self, code: str, message: str, details: Optional[Dict[str, Any]] = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code: str = code
        self.message: str = message
        self.details: Dict[str, Any] = dict(details) if details else {}

    def __repr__(self) -> str:
        return f"ClawpenError(code={self.code!r}, message={self.message!r})"

    @property
    def retry_after(self) -> Optional[float]:
        """For ``quota_exceeded``: seconds until a retry can succeed (None: waiting does not help)."""
        ms = self.details.get("retry_after_ms")
        return ms / 1000.0 if isinstance(ms, (int, float)) else None


def encode_frame(obj: Mapping[str, Any]) -> bytes:
    """Return ``obj`` serialized as one frame (4-byte big-endian length + UTF-8 JSON)."""
    payload = json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return _HEADER.pack(len(payload)) + payload


class Client:
    """One connection to the clawpen supervisor.

    Args:
        socket_path: path of the daemon's Unix socket; defaults to ``$CLAWPEN_SOCKET``, else
            ``/run/clawpen/clawpen.sock``.
        timeout: seconds to wait for the connection and for each reply (``None``: wait
            forever, which is what ``submit(wait=True)`` and :meth:`wait` usually want).
            When a reply does not come in time the connection is closed (the stream can no
            longer be trusted) and :class:`ClawpenError` ``unavailable`` is raised.

    Raises:
        ClawpenError: ``unavailable`` if the socket cannot be reached.
    """

    def __init__(self, socket_path: Optional[str] = None, timeout: Optional[float] = None) -> None:
        if socket_path is None:
            socket_path = os.environ.get("CLAWPEN_SOCKET") or DEFAULT_SOCKET
        self.socket_path: str = os.fspath(socket_path)
        self.timeout: Optional[float] = timeout
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._pending: Dict[Any, Dict[str, Any]] = {}
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(self.socket_path)
        except (OSError, socket.timeout) as exc:
            sock.close()
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise ClawpenError(
                "unavailable",
                f"cannot connect to the clawpen daemon at {self.socket_path}: {reason} "
                "(is `clawpen serve` running? set --socket / $CLAWPEN_SOCKET to its socket)",
                {"socket": self.socket_path},
            ) from exc
        self._sock: Optional[socket.socket] = sock

    # -- connection ------------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection (idempotent)."""
        sock, self._sock = self._sock, None
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:
            pass

    @property
    def closed(self) -> bool:
        """``True`` once the connection is closed (by :meth:`close` or after a failure)."""
        return self._sock is None

    def _require_sock(self) -> socket.socket:
        if self._sock is None:
            raise ClawpenError("unavailable", f"connection to {self.socket_path} is closed")
        return self._sock

    def _fail(self, message: str, exc: Optional[BaseException] = None,
              code: str = "unavailable") -> ClawpenError:
        """Close the (now unusable) connection and build the error to raise."""
        self.close()
        if exc is not None and not isinstance(exc, socket.timeout):
            message = f"{message}: {exc}"
        return ClawpenError(code, message, {"socket": self.socket_path})

    def _recv_exactly(self, n: int, what: str) -> bytes:
        """Read exactly ``n`` bytes, looping over short reads."""
        sock = self._require_sock()
        buf = bytearray()
        while len(buf) < n:
            try:
                chunk = sock.recv(min(n - len(buf), 1 << 20))
            except socket.timeout as exc:
                raise self._fail(f"no reply from the clawpen daemon within {self.timeout} s", exc)
            except OSError as exc:
                raise self._fail("connection to the clawpen daemon failed", exc)
            if not chunk:
                if not buf and what == "header":
                    raise self._fail("the clawpen daemon closed the connection")
                raise self._fail(
                    f"the clawpen daemon closed the connection in the middle of a frame "
                    f"({what}: got {len(buf)} of {n} bytes)")
            buf += chunk
        return bytes(buf)

    def _read_frame(self) -> Dict[str, Any]:
        """Read one frame and return its decoded JSON object."""
        (length,) = _HEADER.unpack(self._recv_exactly(_HEADER.size, "header"))
        if length > MAX_FRAME_BYTES:
            raise self._fail(
                f"the clawpen daemon announced a frame of {length} bytes, above the client's "
                f"limit of {MAX_FRAME_BYTES} bytes", code="frame_too_large")
        payload = self._recv_exactly(length, "payload") if length else b""
        try:
            obj = json.loads(payload.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise self._fail("the clawpen daemon sent a frame that is not UTF-8 JSON", exc,
                             code="internal")
        if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
            raise self._fail("the clawpen daemon sent a frame that is not a JSON object with a "
                             "string \"type\"", code="internal")
        return obj

    def _send(self, frame: bytes) -> None:
        sock = self._require_sock()
        try:
            sock.sendall(frame)
        except socket.timeout as exc:
            raise self._fail(f"could not send to the clawpen daemon within {self.timeout} s", exc)
        except OSError as exc:
            # The daemon may have answered (e.g. frame_too_large) and closed: surface that.
            try:
                reply = self._read_frame()
            except ClawpenError:
                raise self._fail("connection to the clawpen daemon failed", exc) from None
            _raise_if_error(reply)
            raise self._fail("connection to the clawpen daemon failed", exc)

    # -- requests --------------------------------------------------------------------------

    def request(self, type_: str, **fields: Any) -> Dict[str, Any]:
        """Send one request and return its reply.

        The request gets a fresh integer ``id``; frames are read until the reply with that
        ``id`` arrives (replies to other ids are kept for later). Fields whose value is
        ``None`` are left out.

        Raises:
            ClawpenError: the reply was ``{"type": "error"}`` (with its ``code``), or the
                connection failed (``unavailable``).
        """
        msg: Dict[str, Any] = {k: v for k, v in fields.items() if v is not None}
        with self._lock:
            req_id = next(self._ids)
            msg["type"] = type_
            msg["id"] = req_id
            self._send(encode_frame(msg))
            while True:
                reply = self._pending.pop(req_id, None) or self._read_frame()
                rid = reply.get("id")
                if rid == req_id and not isinstance(rid, bool):
                    break
                if rid is None and reply.get("type") == "error":
                    # A connection-level refusal (bad frame) that could not echo an id.
                    break
                self._pending[rid] = reply
        _raise_if_error(reply)
        return reply

    def ping(self) -> Dict[str, Any]:
        """Check the daemon is alive; returns the ``pong`` reply (``version``, ``pid``)."""
        return self.request("ping")

    def submit(
        self,
        tenant: str,
        argv: Sequence[str],
        *,
        env: Optional[Mapping[str, str]] = None,
        cwd: Optional[str] = None,
        stdin: Union[str, bytes, bytearray, memoryview, None] = None,
        timeout_s: Optional[float] = None,
        idempotency_key: Optional[str] = None,
        wait: bool = True,
    ) -> Dict[str, Any]:
        """Run ``argv`` as ``tenant`` and return the JOB object.

        Args:
            tenant: the tenant to run as.
            argv: the command (non-empty); ``argv[0]`` without ``/`` is looked up in ``PATH``.
            env: variables added to the job's base environment.
            cwd: working directory as seen by the job (default ``/home``).
            stdin: the job's standard input; ``str`` is sent as UTF-8 (``stdin``), bytes are
                sent base64-encoded (``stdin_b64``).
            timeout_s: kill the job after this many seconds (state ``timed_out``).
            idempotency_key: a repeated submit with the same tenant and key returns the first
                job instead of running again.
            wait: ``True`` (default): return when the job has finished. ``False``: return as
                soon as the daemon has accepted (committed) the job; use :meth:`wait`,
                :meth:`get` or :meth:`cancel` with its ``id`` afterwards.

        Use ``request("submit", ...)`` directly to see the ``existing`` flag of the reply.
        """
        fields: Dict[str, Any] = {"tenant": tenant, "argv": list(argv), "wait": bool(wait)}
        if env is not None:
            fields["env"] = dict(env)
        if cwd is not None:
            fields["cwd"] = cwd
        if stdin is not None:
            if isinstance(stdin, str):
                fields["stdin"] = stdin
            elif isinstance(stdin, (bytes, bytearray, memoryview)):
                fields["stdin_b64"] = base64.b64encode(bytes(stdin)).decode("ascii")
            else:
                raise TypeError(f"stdin must be str or bytes, not {type(stdin).__name__}")
        if timeout_s is not None:
            fields["timeout_s"] = timeout_s
        if idempotency_key is not None:
            fields["idempotency_key"] = idempotency_key
        return self.request("submit", **fields)["job"]

    def get(self, job_id: str) -> Dict[str, Any]:
        """Return the job's current state (JOB object) at once."""
        return self.request("job.get", job_id=job_id)["job"]

    def wait(self, job_id: str) -> Dict[str, Any]:
        """Block until the job has reached a final state and return it (JOB object)."""
        return self.request("job.wait", job_id=job_id)["job"]

    def cancel(self, job_id: str) -> Dict[str, Any]:
        """Cancel a queued job or kill a running one; returns the JOB once it has stopped."""
        return self.request("job.cancel", job_id=job_id)["job"]

    def create_tenant(self, name: str, tier: str = "free") -> Dict[str, Any]:
        """Create a tenant (``tier`` ∈ ``free``, ``pro``, ``enterprise``); returns TENANT."""
        return self.request("tenant.create", name=name, tier=tier)["tenant"]

    def tenants(self) -> List[Dict[str, Any]]:
        """Return every tenant (list of TENANT objects)."""
        return self.request("tenant.list")["tenants"]

    def tenant(self, name: str) -> Dict[str, Any]:
        """Return one tenant (TENANT object)."""
        return self.request("tenant.show", name=name)["tenant"]

    def status(self, tenant: Optional[str] = None) -> Dict[str, Any]:
        """Return the STATUS object (``supervisor`` and ``tenants``), optionally for one tenant."""
        return self.request("status", tenant=tenant)["status"]

    def explain(self, tenant: str, argv: Sequence[str], env: Optional[Mapping[str, str]] = None,
                cwd: Optional[str] = None) -> Dict[str, Any]:
        """What the tenant's tool policy decides for ``argv`` (and ``env``), with every rule
        that took part; nothing runs. ``result["decision"]["allowed"]`` is the verdict."""
        return self.request("policy.explain", tenant=tenant, argv=list(argv),
                            env=dict(env) if env else None, cwd=cwd)["explain"]

    def set_quota(self, tenant: str, **limits: Any) -> Dict[str, Any]:
        """Change a tenant's limits (operators): policy keys as keyword arguments, for example
        ``set_quota("acme", max_concurrent_runs=4, memory_max="512M")``. Kept across restarts."""
        if not limits:
            raise ValueError("set_quota needs at least one limit")
        return self.request("tenant.set_quota", name=tenant, set=limits)

    def reload_policies(self) -> Dict[str, Any]:
        """Make the daemon re-read its policies (operators); a bad set raises and keeps the old one."""
        return self.request("policy.reload")["policy"]

    def audit(self, tenant: Optional[str] = None, since: Optional[float] = None,
              limit: int = 100) -> List[Dict[str, Any]]:
        """Audit events (operators), oldest first: refusals and admin actions with the rule."""
        return self.request("audit", tenant=tenant, since=since, limit=limit)["events"]


def _raise_if_error(reply: Mapping[str, Any]) -> None:
    """Raise :class:`ClawpenError` if ``reply`` is an ``error`` frame."""
    if reply.get("type") != "error":
        return
    err = reply.get("error")
    if not isinstance(err, dict):
        err = {"code": "internal", "message": f"malformed error reply: {reply!r}"}
    raise ClawpenError(str(err.get("code") or "internal"), str(err.get("message") or ""), err)
