"""Framing and the small conversions both clients share (no I/O here).

A frame is a 4-byte unsigned big-endian payload length, then that many bytes of UTF-8 JSON: one
object with a string ``"type"``. :class:`FrameReader` turns bytes as they arrive (in any
pieces) into decoded frames, so that a read cut short by a timeout loses nothing: the bytes
stay in the reader until the rest of the frame comes.
"""

from __future__ import annotations

import base64
import json
import os
import signal as _signal
import struct
from typing import Any, Dict, List, Mapping, Optional, Union

from ._errors import ProtocolError

#: Socket path used when neither the ``socket`` argument nor ``$CLAWPEN_SOCKET`` is given.
DEFAULT_SOCKET = "/run/clawpen/clawpen.sock"

#: Largest incoming frame payload the client accepts (the protocol asks for at least 64 MiB).
MAX_FRAME_BYTES = 64 * 1024 * 1024

#: The daemon's default limit for a frame it receives; requests are kept well below it.
DAEMON_MAX_FRAME_BYTES = 16 * 1024 * 1024

_HEADER = struct.Struct(">I")

PathLike = Union[str, "os.PathLike[str]"]


def resolve_socket(socket: Optional[PathLike] = None) -> str:
    """The daemon's socket path: ``socket`` if given, else ``$CLAWPEN_SOCKET``, else
    ``/run/clawpen/clawpen.sock`` (the same order as the ``clawpen`` command line)."""
    if socket is not None:
        return os.fspath(socket)
    return os.environ.get("CLAWPEN_SOCKET") or DEFAULT_SOCKET


def encode_frame(obj: Mapping[str, Any]) -> bytes:
    """``obj`` as one frame: 4-byte big-endian length, then compact UTF-8 JSON."""
    payload = json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return _HEADER.pack(len(payload)) + payload


class FrameReader:
    """Accumulates received bytes and hands out complete frames, decoded."""

    def __init__(self, max_frame_bytes: int = MAX_FRAME_BYTES) -> None:
        self._buf = bytearray()
        self._max = max_frame_bytes

    @property
    def partial(self) -> int:
        """How many bytes of an incomplete frame are held."""
        return len(self._buf)

    def feed(self, data: bytes) -> List[Dict[str, Any]]:
        """Add ``data``; return every frame it completed, in order.

        Raises:
            ProtocolError: a frame above the client's limit, or a payload that is not a JSON
                object with a string ``"type"`` (the connection cannot be trusted after it).
        """
        self._buf += data
        frames: List[Dict[str, Any]] = []
        start = 0
        buf = self._buf
        while len(buf) - start >= _HEADER.size:
            (length,) = _HEADER.unpack_from(buf, start)
            if length > self._max:
                raise ProtocolError(
                    f"the daemon announced a frame of {length} bytes, above the client's limit " f"of {self._max} bytes"
                )
            end = start + _HEADER.size + length
            if len(buf) < end:
                break
            frames.append(_decode(bytes(buf[start + _HEADER.size : end])))
            start = end
        if start:
            del buf[:start]
        return frames


def _decode(payload: bytes) -> Dict[str, Any]:
    try:
        obj = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(f"the daemon sent a frame that is not UTF-8 JSON: {exc}") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
        raise ProtocolError(
            'the daemon sent a frame that is not a JSON object with a string "type": ' f"{payload[:120]!r}"
        )
    return obj


def b64(data: bytes) -> str:
    """Bytes as the protocol's ``*_b64`` strings carry them."""
    return base64.b64encode(data).decode("ascii")


def unb64(text: Any, what: str) -> bytes:
    """Decode a ``*_b64`` field of a frame (``ProtocolError`` if it is not base64)."""
    if text is None:
        return b""
    if not isinstance(text, str):
        raise ProtocolError(f"{what} is not a string")
    try:
        return base64.b64decode(text, validate=True)
    except ValueError as exc:
        raise ProtocolError(f"{what} is not valid base64: {exc}") from None


def as_bytes(data: Union[bytes, bytearray, memoryview, str]) -> bytes:
    """``str`` as UTF-8, bytes-like objects as they are."""
    if isinstance(data, str):
        return data.encode("utf-8")
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    raise TypeError(f"expected bytes or str, not {type(data).__name__}")


SignalLike = Union[str, int, _signal.Signals]


def signal_field(sig: SignalLike) -> Union[str, int]:
    """The ``signal`` field of ``job.signal``: ``signal.SIGINT``, ``"INT"``, ``"SIGINT"``,
    ``"int"`` and ``2`` all name SIGINT. A ``Signals`` member is sent by name (the numbers of
    a few signals differ between architectures; the names do not)."""
    if isinstance(sig, _signal.Signals):
        return sig.name[3:] if sig.name.startswith("SIG") else sig.name
    if isinstance(sig, bool):
        raise TypeError("a signal is a name or a number, not a bool")
    if isinstance(sig, int):
        return sig
    if isinstance(sig, str):
        name = sig.strip().upper()
        return name[3:] if name.startswith("SIG") else name
    raise TypeError(f"a signal is a name or a number, not {type(sig).__name__}")


def drop_none(fields: Mapping[str, Any]) -> Dict[str, Any]:
    """The fields whose value is not ``None`` (absent fields take the daemon's default)."""
    return {k: v for k, v in fields.items() if v is not None}
