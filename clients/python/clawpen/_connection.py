"""One blocking connection to the daemon, shared safely by threads.

Requests carry ids chosen here; replies (and the several frames of a stream) are routed to the
request they echo. There is no background thread: whoever waits for a frame reads the socket
(one reader at a time, the others wait on a condition) and files every frame it reads under
its id. So a frame is read from the socket only when someone waits for one: a stream nobody
reads stays in the kernel's socket buffer and the daemon's back-pressure slows the job, as
the protocol intends.

While a frame is being sent, incoming frames are read too, when nobody else reads: a job that
fills its output while this client floods its input would otherwise block both sides.
"""

from __future__ import annotations

import collections
import itertools
import select
import socket
import threading
import time
from typing import Any, Deque, Dict, List, Mapping, Optional

from ._errors import ClawpenError, DaemonUnreachable, ProtocolError, RequestTimeout, error_from_reply
from ._wire import FrameReader, encode_frame

_RECV_BYTES = 256 * 1024


def _copy(err: ClawpenError) -> ClawpenError:
    """A fresh exception like ``err`` (one instance is not raised in several threads)."""
    return type(err)(err.message, code=err.code, details=err.details)


class Connection:
    """A Unix-socket connection carrying any number of requests at once."""

    def __init__(self, path: str, connect_timeout: Optional[float]) -> None:
        self.path = path
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(connect_timeout)
            sock.connect(path)
            sock.settimeout(None)
        except (OSError, socket.timeout) as exc:
            sock.close()
            if isinstance(exc, socket.timeout):
                reason = f"no answer within {connect_timeout} s"
            else:
                reason = exc.strerror or str(exc)
            raise DaemonUnreachable(
                f"cannot connect to the clawpen daemon at {path}: {reason} (is `clawpen serve` "
                "running? pass socket=... or set $CLAWPEN_SOCKET to its socket)",
                details={"socket": path},
            ) from exc
        self._sock: Optional[socket.socket] = sock
        self._fd = sock.fileno()
        self._reader = FrameReader()
        self._cv = threading.Condition()
        self._send_lock = threading.Lock()
        self._reading = False
        self._queues: Dict[int, Deque[Dict[str, Any]]] = {}
        self._ids = itertools.count(1)
        self._error: Optional[ClawpenError] = None

    # -- life cycle ---------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._sock is None

    def close(self) -> None:
        """Close the socket; every waiter gets :class:`DaemonUnreachable` (idempotent)."""
        with self._cv:
            self._fail(DaemonUnreachable(f"the connection to {self.path} was closed", details={"socket": self.path}))

    def __del__(self) -> None:  # pragma: no cover - best effort, at garbage collection
        sock = getattr(self, "_sock", None)
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass

    def _fail(self, err: ClawpenError) -> None:
        """Mark the connection dead (with ``self._cv`` held)."""
        if self._error is None:
            self._error = err
        sock, self._sock = self._sock, None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        self._cv.notify_all()

    # -- ids and queues -----------------------------------------------------------------------

    def open_request(self) -> int:
        """A fresh request id whose frames will be kept until :meth:`release`."""
        with self._cv:
            rid = next(self._ids)
            self._queues[rid] = collections.deque()
            return rid

    def release(self, rid: int) -> None:
        """Stop keeping frames for ``rid`` (late frames for it are dropped)."""
        with self._cv:
            self._queues.pop(rid, None)

    def _route(self, frames: List[Dict[str, Any]]) -> None:
        for frame in frames:
            rid = frame.get("id")
            if isinstance(rid, int) and not isinstance(rid, bool) and rid in self._queues:
                self._queues[rid].append(frame)
            elif rid is None and frame.get("type") == "error":
                # A refusal of the connection itself (frame_too_large, a partial frame that
                # took too long): the daemon closes it after this frame.
                self._fail(error_from_reply(frame))

    # -- sending ------------------------------------------------------------------------------

    def send(self, rid: int, type_: str, fields: Mapping[str, Any], deadline: Optional[float]) -> None:
        """Send one request frame (all of it, or raise)."""
        msg = dict(fields)
        msg["type"] = type_
        msg["id"] = rid
        self.send_bytes(encode_frame(msg), deadline)

    def send_bytes(self, frame: bytes, deadline: Optional[float]) -> None:
        with self._send_lock:
            view = memoryview(frame)
            while view:
                sock = self._live_socket()
                want_read = not self._reading
                events = select.POLLOUT | (select.POLLIN if want_read else 0)
                ready = self._wait_fd(events, deadline, "send a request to")
                if ready & (select.POLLERR | select.POLLHUP | select.POLLNVAL) and not ready & select.POLLIN:
                    self._broken("the daemon closed the connection")
                if ready & select.POLLIN and want_read:
                    self._read_once(deadline=time.monotonic())
                if ready & select.POLLOUT:
                    try:
                        n = sock.send(view[: 1 << 20], socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)
                    except (BlockingIOError, InterruptedError):
                        continue
                    except OSError as exc:
                        self._broken(f"sending to the daemon failed: {exc.strerror or exc}")
                    view = view[n:]

    # -- receiving ----------------------------------------------------------------------------

    def next_frame(self, rid: int, deadline: Optional[float]) -> Dict[str, Any]:
        """The next frame for request ``rid``, in order.

        Raises:
            RequestTimeout: none came before ``deadline`` (the connection stays usable).
            DaemonUnreachable, ProtocolError: the connection broke.
        """
        with self._cv:
            while True:
                queue = self._queues.get(rid)
                if queue:
                    return queue.popleft()
                if self._error is not None:
                    raise _copy(self._error)
                if queue is None:
                    raise ProtocolError(f"request {rid} is not open on this connection")
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise RequestTimeout("no reply from the clawpen daemon in time", details={"socket": self.path})
                if self._reading:
                    self._cv.wait(remaining)
                    continue
                self._cv.release()
                try:
                    self._read_once(deadline)
                finally:
                    self._cv.acquire()

    def poll_frame(self, rid: int) -> Optional[Dict[str, Any]]:
        """The next frame for ``rid`` if one has arrived already (reads what is waiting)."""
        with self._cv:
            queue = self._queues.get(rid)
            if queue:
                return queue.popleft()
            if self._error is not None:
                raise _copy(self._error)
            if self._reading:
                return None
        self._read_once(deadline=time.monotonic())
        with self._cv:
            queue = self._queues.get(rid)
            return queue.popleft() if queue else None

    def _read_once(self, deadline: Optional[float]) -> None:
        """Become the reader (if nobody is), read what arrives before ``deadline``, file it.

        Called without ``self._cv`` held. Returns without reading if another thread reads.
        """
        with self._cv:
            if self._reading or self._error is not None:
                return
            self._reading = True
        frames: List[Dict[str, Any]] = []
        failure: Optional[ClawpenError] = None
        try:
            sock = self._sock
            if sock is None:
                return
            ready = self._poll_once(select.POLLIN, deadline)
            if ready:
                try:
                    data = sock.recv(_RECV_BYTES, socket.MSG_DONTWAIT)
                except (BlockingIOError, InterruptedError):
                    data = None
                except OSError as exc:
                    failure = DaemonUnreachable(
                        f"reading from the clawpen daemon failed: {exc.strerror or exc}",
                        details={"socket": self.path},
                    )
                    data = None
                if data == b"":
                    partial = self._reader.partial
                    detail = f" in the middle of a frame ({partial} bytes of it received)" if partial else ""
                    failure = DaemonUnreachable(
                        f"the clawpen daemon closed the connection{detail}", details={"socket": self.path}
                    )
                elif data:
                    try:
                        frames = self._reader.feed(data)
                    except ProtocolError as exc:
                        failure = exc
        finally:
            with self._cv:
                self._reading = False
                self._route(frames)
                if failure is not None:
                    self._fail(failure)
                self._cv.notify_all()

    def _poll_once(self, events: int, deadline: Optional[float]) -> int:
        """``poll`` the socket once, until ``deadline`` at most; the events that are ready."""
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        # Wake at least every second: a close() from another thread shuts the socket down,
        # which poll reports, but a wake-up also bounds any surprise.
        ms = 1000 if remaining is None else min(1000, int(remaining * 1000))
        poller = select.poll()  # one per call: a poll object may not be shared by threads
        poller.register(self._fd, events)
        try:
            result = poller.poll(ms)
        except InterruptedError:
            return 0
        return result[0][1] if result else 0

    def _wait_fd(self, events: int, deadline: Optional[float], what: str) -> int:
        while True:
            ready = self._poll_once(events, deadline)
            if ready:
                return ready
            self._live_socket()
            if deadline is not None and time.monotonic() >= deadline:
                raise RequestTimeout(f"could not {what} the clawpen daemon in time", details={"socket": self.path})

    def _live_socket(self) -> socket.socket:
        with self._cv:
            if self._error is not None:
                raise _copy(self._error)
            assert self._sock is not None
            return self._sock

    def _broken(self, message: str) -> None:
        with self._cv:
            self._fail(DaemonUnreachable(message, details={"socket": self.path}))
            assert self._error is not None
            raise _copy(self._error)

    # -- one request, one reply ---------------------------------------------------------------

    def call(self, type_: str, fields: Mapping[str, Any], deadline: Optional[float]) -> Dict[str, Any]:
        """Send a request and return its reply (an ``error`` reply is raised)."""
        rid = self.open_request()
        try:
            self.send(rid, type_, fields, deadline)
            reply = self.next_frame(rid, deadline)
        finally:
            self.release(rid)
        if reply.get("type") == "error":
            raise error_from_reply(reply)
        return reply
