"""The exceptions of the clawpen client, one class per error code of the protocol.

Every refusal of the daemon is an ``{"type": "error", "error": {"code": ..., "message": ...}}``
frame; :func:`error_from_reply` turns it into the class registered for its code, keeping the
whole error object in :attr:`ClawpenError.details` (the rule that refused, the quota, the
limit, ...). Failures on the client's side have classes of their own
(:class:`DaemonUnreachable`, :class:`RequestTimeout`, :class:`ProtocolError`).

Some classes also derive from the built-in exception a Python programmer would catch for the
same condition (``PermissionError``, ``FileNotFoundError``, ``TimeoutError``, ...), so that
``except FileNotFoundError`` works around :meth:`Files.read <clawpen.Files.read>` as it does
around ``open``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, Mapping, Optional, Type

if TYPE_CHECKING:  # pragma: no cover
    from ._models import Job

__all__ = [
    "ClawpenError",
    "InvalidRequest",
    "InvalidTenant",
    "UnknownTenant",
    "UnknownJob",
    "FrameTooLarge",
    "QuotaExceeded",
    "PolicyDenied",
    "PermissionDenied",
    "TimedOut",
    "OOMKilled",
    "WorkerCrashed",
    "Unavailable",
    "NotFound",
    "FileTooLarge",
    "Internal",
    "DaemonUnreachable",
    "RequestTimeout",
    "ProtocolError",
    "JobFailed",
    "error_from_reply",
    "error_for_job",
]


class ClawpenError(Exception):
    """Base class of every error the client raises.

    Attributes:
        code: the protocol's machine-readable code (``"quota_exceeded"``, ...). Client-side
            failures use ``"unavailable"`` (:class:`DaemonUnreachable`), ``"request_timeout"``
            (:class:`RequestTimeout`) and ``"protocol_error"`` (:class:`ProtocolError`).
        message: the daemon's explanation, in words (names what was refused and by which rule).
        details: the whole ``error`` object of the reply, with fields beyond ``code`` and
            ``message`` (``rule``, ``quota``, ``retry_after_ms``, ``path``, ...).
        job: the job, for errors raised from a job's outcome (``run(..., check=True)``,
            :meth:`Job.check <clawpen.Job.check>`); ``None`` for refusals of a request.
    """

    #: The code this class stands for; instances carry the code they were raised with.
    default_code = "internal"

    def __init__(
        self,
        message: str,
        *,
        code: Optional[str] = None,
        details: Optional[Mapping[str, Any]] = None,
        job: Optional["Job"] = None,
    ) -> None:
        super().__init__(message)
        self.code: str = code or self.default_code
        self.message: str = message
        self.details: Dict[str, Any] = dict(details) if details else {}
        self.job: Optional["Job"] = job

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, message={self.message!r})"

    @property
    def rule(self) -> Optional[str]:
        """The rule that refused the request, as the daemon names it (``None`` if none)."""
        value = self.details.get("rule")
        return value if isinstance(value, str) else None

    @property
    def retry_after(self) -> Optional[float]:
        """Seconds after which the same request may succeed, from ``retry_after_ms``.

        ``None`` when the daemon said that waiting does not help (or said nothing).
        """
        ms = self.details.get("retry_after_ms")
        if isinstance(ms, bool) or not isinstance(ms, (int, float)):
            return None
        return ms / 1000.0


class InvalidRequest(ClawpenError, ValueError):
    """``invalid_request``: malformed or impossible request (the message says which field)."""

    default_code = "invalid_request"


class InvalidTenant(ClawpenError, ValueError):
    """``invalid_tenant``: a tenant name outside ``^[a-z0-9][a-z0-9_-]{0,62}$``."""

    default_code = "invalid_tenant"


class UnknownTenant(ClawpenError, LookupError):
    """``unknown_tenant``: no tenant of that name (create it first)."""

    default_code = "unknown_tenant"


class UnknownJob(ClawpenError, LookupError):
    """``unknown_job``: no job has that id."""

    default_code = "unknown_job"


class FrameTooLarge(ClawpenError):
    """``frame_too_large``: a frame above the limit (the daemon closes the connection)."""

    default_code = "frame_too_large"


class QuotaExceeded(ClawpenError):
    """``quota_exceeded``: a quota refused the request; back off for :attr:`retry_after`."""

    default_code = "quota_exceeded"

    @property
    def quota(self) -> Optional[str]:
        """The quota that refused (``jobs_per_minute``, ``max_queued``, ...)."""
        value = self.details.get("quota")
        return value if isinstance(value, str) else None

    @property
    def rule(self) -> Optional[str]:
        """The refusing rule: the error's ``rule`` if present, else the quota's name."""
        return super().rule or self.quota

    @property
    def limit(self) -> Optional[str]:
        """The quota's limit, as the daemon reports it."""
        value = self.details.get("limit")
        return None if value is None else str(value)

    @property
    def current(self) -> Optional[str]:
        """The tenant's current count against the quota, as the daemon reports it."""
        value = self.details.get("current")
        return None if value is None else str(value)


class PolicyDenied(ClawpenError, PermissionError):
    """``policy_denied``: the tenant's tool policy refused the command or a variable."""

    default_code = "policy_denied"

    @property
    def command(self) -> Optional[str]:
        """The command (``argv[0]`` as resolved) that was refused, when one was."""
        value = self.details.get("command")
        return value if isinstance(value, str) else None


class PermissionDenied(ClawpenError, PermissionError):
    """``permission_denied``: the caller (by its uid) may not do this; :attr:`rule` says why."""

    default_code = "permission_denied"


class TimedOut(ClawpenError):
    """``timed_out``: the job ran past its timeout and was killed."""

    default_code = "timed_out"


class OOMKilled(ClawpenError):
    """``oom_killed``: the job was killed for memory."""

    default_code = "oom_killed"


class WorkerCrashed(ClawpenError):
    """``worker_crashed``: the tenant's worker kept dying while running the job."""

    default_code = "worker_crashed"


class Unavailable(ClawpenError):
    """``unavailable``: the daemon cannot serve this now (shutting down, tenant suspended or
    quarantined: :attr:`rule` says which; :attr:`retry_after` when a retry may succeed)."""

    default_code = "unavailable"


class NotFound(ClawpenError, FileNotFoundError):
    """``not_found``: no file or directory at that path in the tenant's sandbox."""

    default_code = "not_found"

    @property
    def path(self) -> Optional[str]:
        """The path that was not found, as the daemon reports it."""
        value = self.details.get("path")
        return value if isinstance(value, str) else None


class FileTooLarge(ClawpenError):
    """``file_too_large``: the file is larger than the tenant's ``file_max_bytes``."""

    default_code = "file_too_large"


class Internal(ClawpenError):
    """``internal``: a bug or an I/O failure in the daemon (the message says which)."""

    default_code = "internal"


class DaemonUnreachable(Unavailable, ConnectionError):
    """The daemon's socket could not be reached, or the connection to it broke.

    Its code is ``unavailable``, as the CLI reports it (exit 69). ``details["socket"]`` is the
    path that was tried.
    """

    default_code = "unavailable"


class RequestTimeout(ClawpenError, TimeoutError):
    """No reply within the call's timeout (``request_timeout``, or the client's ``timeout``).

    Raised on the client side: the request itself may still be carried out by the daemon (a
    job that was submitted keeps running). The connection stays usable; a late reply is
    dropped.
    """

    default_code = "request_timeout"


class ProtocolError(ClawpenError):
    """The daemon sent something that is not a valid frame of the protocol."""

    default_code = "protocol_error"


class JobFailed(ClawpenError):
    """A job that ran and did not succeed (``run(..., check=True)``): exited non-zero, was
    killed by a signal, or was canceled. :attr:`job` is the job."""

    default_code = "job_failed"


_BY_CODE: Dict[str, Type[ClawpenError]] = {
    cls.default_code: cls
    for cls in (
        InvalidRequest,
        InvalidTenant,
        UnknownTenant,
        UnknownJob,
        FrameTooLarge,
        QuotaExceeded,
        PolicyDenied,
        PermissionDenied,
        TimedOut,
        OOMKilled,
        WorkerCrashed,
        Unavailable,
        NotFound,
        FileTooLarge,
        Internal,
    )
}


def error_from_reply(reply: Mapping[str, Any]) -> ClawpenError:
    """The exception for an ``error`` frame: the class registered for its code (codes this
    client does not know yet become a plain :class:`ClawpenError` carrying that code)."""
    err = reply.get("error")
    if not isinstance(err, dict):
        return ProtocolError(f"an error frame without an error object: {str(dict(reply))[:200]}")
    code = err.get("code")
    code = code if isinstance(code, str) and code else "internal"
    message = err.get("message")
    message = message if isinstance(message, str) else ""
    cls = _BY_CODE.get(code, ClawpenError)
    return cls(message, code=code, details=err)


def error_for_job(job: "Job") -> Optional[ClawpenError]:
    """The exception that stands for a finished job that did not succeed (``None`` if it did,
    or if it has not finished)."""
    state = job.state
    if state in ("succeeded", "queued", "running"):
        return None
    err = job.error or {}
    code = err.get("code") if isinstance(err.get("code"), str) else None
    text = err.get("message") if isinstance(err.get("message"), str) else None
    if code == "worker_crashed":
        return WorkerCrashed(text or f"job {job.id}: the worker crashed", details=err, job=job)
    if state == "timed_out":
        limit = f" of {job.timeout_s:g} s" if isinstance(job.timeout_s, (int, float)) else ""
        return TimedOut(text or f"job {job.id} ran past its timeout{limit}", details=err, job=job)
    if state == "oom_killed":
        return OOMKilled(text or f"job {job.id} was killed for memory", details=err, job=job)
    if code in _BY_CODE:
        return _BY_CODE[code](text or f"job {job.id} {state}", code=code, details=err, job=job)
    if state == "failed":
        what = f"exited with {job.exit_code}"
    elif state == "killed":
        what = f"was killed by signal {job.signal}"
    else:
        what = f"ended {state}"
    argv = " ".join(job.argv) if job.argv else job.id
    message = f"job {job.id} ({argv[:120]}) {what}"
    tail = (job.stderr or "").strip().splitlines()[-1:] if job.stderr else []
    if tail:
        message += f": {tail[0][:200]}"
    return JobFailed(message, details=err, job=job)
