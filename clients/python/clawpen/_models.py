"""Typed views of the daemon's objects: a job, a chunk of output, a file's description.

Each keeps the object it was made from in ``raw``, so that a field the daemon adds later is
readable before this client names it.
"""

from __future__ import annotations

import stat as _stat
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional

from ._errors import ClawpenError, ProtocolError, error_for_job
from ._wire import unb64

__all__ = ["Job", "OutputChunk", "FileInfo", "FINAL_STATES"]

#: The states a job does not leave.
FINAL_STATES = frozenset({"succeeded", "failed", "timed_out", "oom_killed", "killed", "canceled", "rejected"})


def _opt_int(value: Any) -> Optional[int]:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _opt_float(value: Any) -> Optional[float]:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _opt_str(value: Any) -> Optional[str]:
    return value if isinstance(value, str) else None


@dataclass(frozen=True)
class Job:
    """A job as the daemon reported it (the protocol's JOB object).

    The job's outcome is data, not an exception: a job that exits 3 is a ``Job`` with
    ``state == "failed"`` and ``exit_code == 3``. Call :meth:`check` (or pass ``check=True``
    to ``run``) to turn an unsuccessful end into an exception.
    """

    id: str
    tenant: str
    state: str
    exit_code: Optional[int] = None
    signal: Optional[int] = None
    #: Captured standard output as text (U+FFFD where the bytes were not UTF-8; capped by the
    #: tier's ``output_max_bytes``). :attr:`stdout_bytes` has the exact bytes.
    stdout: str = ""
    stderr: str = ""
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    error: Optional[Dict[str, Any]] = None
    attempt: Optional[int] = None
    queued_ms: Optional[float] = None
    run_ms: Optional[float] = None
    cpu_ms: Optional[float] = None
    max_rss_kb: Optional[int] = None
    argv: List[str] = field(default_factory=list)
    cwd: Optional[str] = None
    timeout_s: Optional[float] = None
    idempotency_key: Optional[str] = None
    stdin_open: bool = False
    tty: bool = False
    created_at: Optional[float] = None
    started_at: Optional[float] = None
    finished_at: Optional[float] = None
    #: Sub-jobs: the job that submitted this one from inside its sandbox (``None`` for a job
    #: submitted from outside), the root of its tree (its own id for a root), its depth below it.
    parent_id: Optional[str] = None
    root_id: Optional[str] = None
    depth: int = 0
    #: ``True`` when an idempotency key matched an earlier job (this is that job).
    existing: bool = False
    #: The JOB object as received.
    raw: Dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_wire(cls, obj: Any, existing: bool = False) -> "Job":
        """Build a ``Job`` from a JOB object (``ProtocolError`` if it is not one)."""
        if not isinstance(obj, dict) or not isinstance(obj.get("id"), str):
            raise ProtocolError(f"expected a JOB object, got {str(obj)[:200]}")
        argv = obj.get("argv")
        error = obj.get("error")
        return cls(
            id=obj["id"],
            tenant=_opt_str(obj.get("tenant")) or "",
            state=_opt_str(obj.get("state")) or "",
            exit_code=_opt_int(obj.get("exit_code")),
            signal=_opt_int(obj.get("signal")),
            stdout=_opt_str(obj.get("stdout")) or "",
            stderr=_opt_str(obj.get("stderr")) or "",
            stdout_truncated=obj.get("stdout_truncated") is True,
            stderr_truncated=obj.get("stderr_truncated") is True,
            error=error if isinstance(error, dict) else None,
            attempt=_opt_int(obj.get("attempt")),
            queued_ms=_opt_float(obj.get("queued_ms")),
            run_ms=_opt_float(obj.get("run_ms")),
            cpu_ms=_opt_float(obj.get("cpu_ms")),
            max_rss_kb=_opt_int(obj.get("max_rss_kb")),
            argv=[a for a in argv if isinstance(a, str)] if isinstance(argv, list) else [],
            cwd=_opt_str(obj.get("cwd")),
            timeout_s=_opt_float(obj.get("timeout_s")),
            idempotency_key=_opt_str(obj.get("idempotency_key")),
            stdin_open=obj.get("stdin_open") is True,
            tty=obj.get("tty") is True,
            created_at=_opt_float(obj.get("created_at")),
            started_at=_opt_float(obj.get("started_at")),
            finished_at=_opt_float(obj.get("finished_at")),
            parent_id=_opt_str(obj.get("parent_id")),
            root_id=_opt_str(obj.get("root_id")),
            depth=_opt_int(obj.get("depth")) or 0,
            existing=existing,
            raw=obj,
        )

    @property
    def stdout_bytes(self) -> bytes:
        """The captured stdout exactly (from ``stdout_b64`` when it is not UTF-8)."""
        if "stdout_b64" in self.raw:
            return unb64(self.raw["stdout_b64"], "stdout_b64")
        return self.stdout.encode("utf-8")

    @property
    def stderr_bytes(self) -> bytes:
        """The captured stderr exactly (from ``stderr_b64`` when it is not UTF-8)."""
        if "stderr_b64" in self.raw:
            return unb64(self.raw["stderr_b64"], "stderr_b64")
        return self.stderr.encode("utf-8")

    @property
    def done(self) -> bool:
        """``True`` once the job is in a final state."""
        return self.state in FINAL_STATES

    @property
    def ok(self) -> bool:
        """``True`` when the job succeeded (exited 0)."""
        return self.state == "succeeded"

    @property
    def returncode(self) -> Optional[int]:
        """As ``subprocess``: the exit code, or ``-N`` for a job ended by signal N."""
        if self.exit_code is not None:
            return self.exit_code
        if self.signal is not None:
            return -self.signal
        return None

    def check(self) -> "Job":
        """Return ``self`` if the job succeeded or has not finished; else raise the matching
        :class:`~clawpen.ClawpenError` (``TimedOut``, ``OOMKilled``, ``WorkerCrashed``,
        ``JobFailed``) with :attr:`ClawpenError.job <clawpen.ClawpenError.job>` set."""
        err: Optional[ClawpenError] = error_for_job(self)
        if err is not None:
            raise err
        return self


@dataclass(frozen=True)
class OutputChunk:
    """One piece of a job's output, as the job wrote it.

    Attributes:
        stream: ``"stdout"`` or ``"stderr"`` (a job on a terminal writes everything to
            ``"stdout"``).
        data: the bytes.
        seq: the chunk's number among the job's chunks of both streams, from 0: a gap means a
            chunk this client did not receive (an attach from now on starts past 0). ``None``
            for kept output sent again (:attr:`replay`), whose chunks are not the job's.
        offset: where ``data`` starts within its stream, in bytes.
        replay: ``True`` for kept output sent again (attach with ``replay``, logs), ``False``
            for output as the job writes it.
    """

    stream: str
    data: bytes
    seq: Optional[int] = 0
    offset: int = 0
    replay: bool = False

    @classmethod
    def from_wire(cls, frame: Mapping[str, Any]) -> "OutputChunk":
        """Build a chunk from an ``output`` frame."""
        stream = frame.get("stream")
        if stream not in ("stdout", "stderr"):
            raise ProtocolError(f"an output frame with stream {stream!r}")
        return cls(
            stream=stream,
            data=unb64(frame.get("data_b64"), "output data_b64"),
            seq=_opt_int(frame.get("seq")),
            offset=_opt_int(frame.get("offset")) or 0,
            replay=frame.get("replay") is True,
        )

    @property
    def text(self) -> str:
        """``data`` decoded as UTF-8 (invalid sequences replaced; a character cut between two
        chunks shows as replacements: join the bytes first to decode exactly)."""
        return self.data.decode("utf-8", "replace")


@dataclass(frozen=True)
class FileInfo:
    """A file or directory in a tenant's sandbox (the protocol's STAT object)."""

    path: str
    name: str
    #: ``"file"``, ``"dir"``, ``"symlink"`` or ``"other"`` (fifo, socket, device).
    type: str
    size: Optional[int] = None
    #: Permission bits (``0o644`` is 420).
    mode: Optional[int] = None
    uid: Optional[int] = None
    gid: Optional[int] = None
    mtime: Optional[float] = None
    #: A symbolic link's target as text (never followed), else ``None``.
    target: Optional[str] = None
    raw: Dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_wire(cls, obj: Any) -> "FileInfo":
        """Build a ``FileInfo`` from a STAT object."""
        if not isinstance(obj, dict) or not isinstance(obj.get("path"), str):
            raise ProtocolError(f"expected a STAT object, got {str(obj)[:200]}")
        return cls(
            path=obj["path"],
            name=_opt_str(obj.get("name")) or obj["path"].rsplit("/", 1)[-1],
            type=_opt_str(obj.get("type")) or "other",
            size=_opt_int(obj.get("size")),
            mode=_opt_int(obj.get("mode")),
            uid=_opt_int(obj.get("uid")),
            gid=_opt_int(obj.get("gid")),
            mtime=_opt_float(obj.get("mtime")),
            target=_opt_str(obj.get("target")),
            raw=obj,
        )

    @property
    def is_file(self) -> bool:
        return self.type == "file"

    @property
    def is_dir(self) -> bool:
        return self.type == "dir"

    @property
    def is_symlink(self) -> bool:
        return self.type == "symlink"

    @property
    def mode_string(self) -> str:
        """The mode as ``ls -l`` shows it (``-rw-r--r--``)."""
        kind = {"file": _stat.S_IFREG, "dir": _stat.S_IFDIR, "symlink": _stat.S_IFLNK}.get(self.type, 0)
        return _stat.filemode(kind | (self.mode or 0))
