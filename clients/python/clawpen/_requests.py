"""Request fields and reply parsing shared by :class:`~clawpen.Client` and
:class:`~clawpen.AsyncClient`, so that both speak the protocol the same way."""

from __future__ import annotations

import math
import os
import time
from typing import IO, Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from ._errors import ProtocolError
from ._wire import b64, drop_none

#: Bytes of a file sent per ``file.put``/``file.chunk`` frame (the protocol suggests 256 KiB
#: to 1 MiB; base64 makes a frame 4/3 of it, well under the daemon's 16 MiB).
PUT_CHUNK_BYTES = 512 * 1024

#: Bytes per ``file.data`` frame asked of the daemon (it accepts 4 KiB to 4 MiB).
GET_CHUNK_BYTES = 1024 * 1024

#: Bytes of input per ``job.input`` (the daemon takes at most 1 MiB per request).
INPUT_CHUNK_BYTES = 1024 * 1024

StdinData = Union[str, bytes, bytearray, memoryview, None]
FileData = Union[bytes, bytearray, memoryview, str, IO[bytes]]


def deadline_for(timeout: Optional[float]) -> Optional[float]:
    """A ``time.monotonic()`` deadline, ``None`` for no limit (``None`` or ``math.inf``)."""
    if timeout is None or math.isinf(timeout):
        return None
    if timeout < 0:
        raise ValueError(f"a timeout cannot be negative ({timeout})")
    return time.monotonic() + timeout


def submit_fields(
    tenant: Optional[str],
    argv: Sequence[str],
    *,
    env: Optional[Mapping[str, str]] = None,
    cwd: Optional[str] = None,
    stdin: StdinData = None,
    timeout: Optional[float] = None,
    idempotency_key: Optional[str] = None,
    wait: bool = False,
    stream: bool = False,
    stdin_open: bool = False,
    tty: bool = False,
    rows: Optional[int] = None,
    cols: Optional[int] = None,
) -> Dict[str, Any]:
    """The fields of a ``submit`` request."""
    if isinstance(argv, (str, bytes)):
        raise TypeError("argv is a sequence of strings (the command and its arguments), not a string")
    # Inside a job (its agent socket, $CLAWPEN_SOCKET) the tenant may be left out: the job's own.
    fields: Dict[str, Any] = {"argv": [str(a) for a in argv]}
    if tenant is not None:
        fields["tenant"] = tenant
    if env:
        fields["env"] = {str(k): str(v) for k, v in env.items()}
    if cwd is not None:
        fields["cwd"] = cwd
    if stdin is not None:
        if isinstance(stdin, str):
            fields["stdin"] = stdin
        elif isinstance(stdin, (bytes, bytearray, memoryview)):
            fields["stdin_b64"] = b64(bytes(stdin))
        else:
            raise TypeError(f"stdin must be str or bytes, not {type(stdin).__name__}")
    if timeout is not None:
        fields["timeout_s"] = timeout
    if idempotency_key is not None:
        fields["idempotency_key"] = idempotency_key
    if stream:
        fields["stream"] = True
    else:
        fields["wait"] = bool(wait)
    if stdin_open:
        fields["stdin_open"] = True
    if tty:
        fields["tty"] = True
        if rows is not None:
            fields["rows"] = int(rows)
        if cols is not None:
            fields["cols"] = int(cols)
    elif rows is not None or cols is not None:
        raise ValueError("rows and cols are the size of a terminal: pass tty=True with them")
    return fields


def input_requests(job_id: str, data: bytes, eof: bool) -> List[Dict[str, Any]]:
    """The ``job.input`` requests that carry ``data`` (and ``eof`` on the last)."""
    pieces = [data[i : i + INPUT_CHUNK_BYTES] for i in range(0, len(data), INPUT_CHUNK_BYTES)] or [b""]
    return [
        {"job_id": job_id, "data_b64": b64(piece), "eof": bool(eof) and n == len(pieces) - 1}
        for n, piece in enumerate(pieces)
    ]


def explain_fields(
    tenant: str,
    argv: Sequence[str],
    env: Optional[Mapping[str, str]],
    cwd: Optional[str],
) -> Dict[str, Any]:
    return drop_none({"tenant": tenant, "argv": list(argv), "env": dict(env) if env else None, "cwd": cwd})


def set_quota_fields(name: str, limits: Mapping[str, Any]) -> Dict[str, Any]:
    if not limits:
        raise ValueError("set_quota needs at least one limit (policy keys as keyword arguments)")
    return {"name": name, "set": dict(limits)}


def reply_field(reply: Mapping[str, Any], key: str) -> Any:
    """``reply[key]``, or ``ProtocolError`` naming what was missing."""
    if key not in reply:
        raise ProtocolError(f"a {reply.get('type')!r} reply without {key!r}")
    return reply[key]


def reply_dict(reply: Mapping[str, Any], key: str) -> Dict[str, Any]:
    """``reply[key]``, which must be a JSON object."""
    value = reply_field(reply, key)
    if not isinstance(value, dict):
        raise ProtocolError(f"{key!r} of a {reply.get('type')!r} reply is not an object")
    return value


def reply_list(reply: Mapping[str, Any], key: str) -> List[Dict[str, Any]]:
    """``reply[key]``, which must be a list of JSON objects."""
    value = reply_field(reply, key)
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise ProtocolError(f"{key!r} of a {reply.get('type')!r} reply is not a list of objects")
    return value


def strip_envelope(reply: Mapping[str, Any]) -> Dict[str, Any]:
    """The reply without ``type`` and ``id``."""
    return {k: v for k, v in reply.items() if k not in ("type", "id")}


def file_size_hint(data: FileData) -> Optional[int]:
    """The number of bytes a put will send, when it can be known before reading."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        return len(data)
    if isinstance(data, str):
        return len(data.encode("utf-8"))
    try:
        fd = data.fileno()
        st = os.fstat(fd)
        import stat as _stat

        if _stat.S_ISREG(st.st_mode):
            return max(0, st.st_size - data.tell())
    except (AttributeError, OSError, ValueError):
        pass
    return None


class ChunkSource:
    """The content of a put, read ``chunk_size`` bytes at a time (bytes or a file object)."""

    def __init__(self, data: FileData, chunk_size: int) -> None:
        if chunk_size <= 0:
            raise ValueError("chunk_size must be positive")
        self._chunk = chunk_size
        self._mem: Optional[memoryview] = None
        self._file: Optional[IO[bytes]] = None
        if isinstance(data, str):
            self._mem = memoryview(data.encode("utf-8"))
        elif isinstance(data, (bytes, bytearray, memoryview)):
            self._mem = memoryview(bytes(data))
        elif hasattr(data, "read"):
            self._file = data
        else:
            raise TypeError(f"file data must be bytes, str or a binary file object, not {type(data).__name__}")
        self._pos = 0
        self._next: Optional[bytes] = None
        self._done = False

    def _read(self) -> bytes:
        if self._mem is not None:
            piece = bytes(self._mem[self._pos : self._pos + self._chunk])
        else:
            assert self._file is not None
            got: Any = self._file.read(self._chunk)
            if isinstance(got, str):
                got = got.encode("utf-8")
            piece = bytes(got or b"")
        self._pos += len(piece)
        return piece

    def next_chunk(self) -> Tuple[bytes, bool]:
        """The next chunk and whether it is the last (a look-ahead read decides that)."""
        piece = self._next if self._next is not None else self._read()
        self._next = None
        if not piece:
            return b"", True
        following = self._read()
        if not following:
            return piece, True
        self._next = following
        return piece, False


def put_frames(tenant: str, path: str, source: ChunkSource, mode: Optional[int], size: Optional[int]) -> Any:
    """Yield ``(type, fields, eof, nbytes)`` for each frame of a put: ``file.put``, then ``file.chunk``s."""
    offset = 0
    first = True
    while True:
        data, eof = source.next_chunk()
        if first:
            fields = drop_none(
                {
                    "tenant": tenant,
                    "path": path,
                    "mode": mode,
                    "size": size,
                    "data_b64": b64(data),
                    "offset": 0,
                    "eof": eof,
                }
            )
            yield "file.put", fields, eof, len(data)
            first = False
        else:
            yield "file.chunk", {"data_b64": b64(data), "offset": offset, "eof": eof}, eof, len(data)
        offset += len(data)
        if eof:
            return
