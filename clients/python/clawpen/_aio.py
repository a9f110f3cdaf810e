"""The asyncio client: :class:`AsyncClient`, with the same calls as :class:`~clawpen.Client`,
awaitable."""

from __future__ import annotations

import asyncio
import collections
import itertools
from typing import (
    IO,
    Any,
    AsyncIterator,
    Awaitable,
    Callable,
    Deque,
    Dict,
    List,
    Mapping,
    Optional,
    Sequence,
    Tuple,
    TypeVar,
    Union,
    overload,
)

from ._errors import (
    ClawpenError,
    DaemonUnreachable,
    NotFound,
    ProtocolError,
    RequestTimeout,
    error_from_reply,
)
from ._models import FileInfo, Job, OutputChunk
from ._requests import (
    GET_CHUNK_BYTES,
    PUT_CHUNK_BYTES,
    ChunkSource,
    FileData,
    StdinData,
    explain_fields,
    file_size_hint,
    input_requests,
    put_frames,
    reply_dict,
    reply_field,
    reply_list,
    set_quota_fields,
    strip_envelope,
    submit_fields,
)
from ._wire import PathLike, SignalLike, as_bytes, drop_none, encode_frame, resolve_socket, signal_field, unb64
from ._wire import FrameReader

__all__ = ["AsyncClient", "AsyncJobHandle", "AsyncJobs", "AsyncFiles", "AsyncTenants"]

_T = TypeVar("_T")
_RECV_BYTES = 256 * 1024
#: Frames kept for a stream that nobody reads before the connection stops reading (the
#: daemon's back-pressure then holds the job), unless a reply is awaited on the connection.
_STREAM_BACKLOG = 64


def _timeout_for(timeout: Optional[float]) -> Optional[float]:
    if timeout is not None and timeout == float("inf"):
        return None
    return timeout


async def _within(aw: Awaitable[_T], timeout: Optional[float], what: str, path: str) -> _T:
    if timeout is None:
        return await aw
    try:
        return await asyncio.wait_for(aw, timeout)
    except asyncio.TimeoutError:
        raise RequestTimeout(f"{what} within {timeout} s", details={"socket": path}) from None


class _AsyncConnection:
    """One connection; a reader task files every frame under the request id it echoes."""

    def __init__(self, path: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.path = path
        self._reader = reader
        self._writer = writer
        self._frames = FrameReader()
        self._queues: Dict[int, Deque[Dict[str, Any]]] = {}
        self._ids = itertools.count(1)
        self._cond = asyncio.Condition()
        self._awaiting_reply = 0
        self._error: Optional[ClawpenError] = None
        self._send_lock = asyncio.Lock()
        self._task = asyncio.ensure_future(self._read_loop())

    @classmethod
    async def connect(cls, path: str, connect_timeout: Optional[float]) -> "_AsyncConnection":
        try:
            reader, writer = await _within(
                asyncio.open_unix_connection(path, limit=_RECV_BYTES), connect_timeout, "no connection", path
            )
        except RequestTimeout as exc:
            raise DaemonUnreachable(
                f"cannot connect to the clawpen daemon at {path}: {exc.message}", details={"socket": path}
            ) from None
        except OSError as exc:
            raise DaemonUnreachable(
                f"cannot connect to the clawpen daemon at {path}: {exc.strerror or exc} (is `clawpen serve` "
                "running? pass socket=... or set $CLAWPEN_SOCKET to its socket)",
                details={"socket": path},
            ) from exc
        return cls(path, reader, writer)

    @property
    def closed(self) -> bool:
        return self._error is not None

    def _backlogged(self) -> bool:
        if self._awaiting_reply:
            return False
        return any(len(q) >= _STREAM_BACKLOG for q in self._queues.values())

    async def _read_loop(self) -> None:
        failure: Optional[ClawpenError] = None
        try:
            while True:
                async with self._cond:
                    await self._cond.wait_for(lambda: not self._backlogged() or self._error is not None)
                    if self._error is not None:
                        return
                data = await self._reader.read(_RECV_BYTES)
                if not data:
                    partial = self._frames.partial
                    detail = f" in the middle of a frame ({partial} bytes of it received)" if partial else ""
                    failure = DaemonUnreachable(
                        f"the clawpen daemon closed the connection{detail}", details={"socket": self.path}
                    )
                    return
                frames = self._frames.feed(data)
                async with self._cond:
                    for frame in frames:
                        rid = frame.get("id")
                        if isinstance(rid, int) and not isinstance(rid, bool) and rid in self._queues:
                            self._queues[rid].append(frame)
                        elif rid is None and frame.get("type") == "error":
                            failure = error_from_reply(frame)
                    self._cond.notify_all()
                if failure is not None:
                    return
        except ProtocolError as exc:
            failure = exc
        except (OSError, asyncio.IncompleteReadError) as exc:
            failure = DaemonUnreachable(f"reading from the clawpen daemon failed: {exc}", details={"socket": self.path})
        except asyncio.CancelledError:
            failure = DaemonUnreachable(f"the connection to {self.path} was closed", details={"socket": self.path})
            raise
        finally:
            await self._mark_failed(
                failure or DaemonUnreachable(f"the connection to {self.path} was closed", details={"socket": self.path})
            )

    async def _mark_failed(self, err: ClawpenError) -> None:
        async with self._cond:
            if self._error is None:
                self._error = err
            self._cond.notify_all()
        self._writer.close()

    async def close(self) -> None:
        if self._error is None:
            self._error = DaemonUnreachable(f"the connection to {self.path} was closed", details={"socket": self.path})
        self._writer.close()
        self._task.cancel()
        try:
            await self._task
        except (asyncio.CancelledError, Exception):
            pass
        try:
            await self._writer.wait_closed()
        except (OSError, asyncio.CancelledError):
            pass

    def _raise_error(self) -> None:
        err = self._error
        if err is not None:
            raise type(err)(err.message, code=err.code, details=err.details)

    def open_request(self) -> int:
        rid = next(self._ids)
        self._queues[rid] = collections.deque()
        return rid

    async def release(self, rid: int) -> None:
        async with self._cond:
            self._queues.pop(rid, None)
            self._cond.notify_all()

    async def send(self, rid: int, type_: str, fields: Mapping[str, Any], timeout: Optional[float]) -> None:
        self._raise_error()
        msg = dict(fields)
        msg["type"] = type_
        msg["id"] = rid
        frame = encode_frame(msg)
        async with self._send_lock:
            self._raise_error()
            self._writer.write(frame)
            try:
                await _within(
                    self._writer.drain(), timeout, "could not send a request to the clawpen daemon", self.path
                )
            except (ConnectionError, OSError) as exc:
                await self._mark_failed(
                    DaemonUnreachable(f"sending to the clawpen daemon failed: {exc}", details={"socket": self.path})
                )
                self._raise_error()

    async def next_frame(self, rid: int, timeout: Optional[float]) -> Dict[str, Any]:
        async def take() -> Dict[str, Any]:
            async with self._cond:
                await self._cond.wait_for(
                    lambda: bool(self._queues.get(rid)) or self._error is not None or rid not in self._queues
                )
                queue = self._queues.get(rid)
                if queue:
                    frame = queue.popleft()
                    self._cond.notify_all()  # the reader may be waiting for room
                    return frame
                if queue is None:
                    raise ProtocolError(f"request {rid} is not open on this connection")
                self._raise_error()
                raise AssertionError("unreachable")

        return await _within(take(), timeout, "no reply from the clawpen daemon", self.path)

    def poll_frame(self, rid: int) -> Optional[Dict[str, Any]]:
        queue = self._queues.get(rid)
        if queue:
            return queue.popleft()
        self._raise_error()
        return None

    async def call(self, type_: str, fields: Mapping[str, Any], timeout: Optional[float]) -> Dict[str, Any]:
        rid = self.open_request()
        async with self._cond:
            self._awaiting_reply += 1
            self._cond.notify_all()
        try:
            await self.send(rid, type_, fields, timeout)
            reply = await self.next_frame(rid, timeout)
        finally:
            async with self._cond:
                self._awaiting_reply -= 1
                self._queues.pop(rid, None)
                self._cond.notify_all()
        if reply.get("type") == "error":
            raise error_from_reply(reply)
        return reply

    async def begin_reply(self) -> None:
        """Hold the reader going (a reply is awaited) until :meth:`end_reply`."""
        async with self._cond:
            self._awaiting_reply += 1
            self._cond.notify_all()

    async def end_reply(self) -> None:
        async with self._cond:
            self._awaiting_reply -= 1
            self._cond.notify_all()


class AsyncClient:
    """The asyncio counterpart of :class:`~clawpen.Client`: the same calls, awaitable.

    The connection is made by ``async with`` (or :meth:`connect`, or the first call); one
    client may serve many tasks at once (their requests share the connection, each gets its
    own reply). Streams open connections of their own::

        async with clawpen.AsyncClient() as client:
            job = await client.run("acme", ["echo", "hi"])
            async for chunk in await client.stream("acme", ["make"]):
                ...
    """

    def __init__(
        self,
        socket: Optional[PathLike] = None,
        *,
        timeout: Optional[float] = None,
        connect_timeout: Optional[float] = 5.0,
    ) -> None:
        self.socket_path: str = resolve_socket(socket)
        self.timeout: Optional[float] = timeout
        self.connect_timeout: Optional[float] = connect_timeout
        self._conn: Optional[_AsyncConnection] = None
        self._connect_lock: Optional[asyncio.Lock] = None
        self.jobs = AsyncJobs(self)
        self.files = AsyncFiles(self)
        self.tenants = AsyncTenants(self)

    async def connect(self) -> "AsyncClient":
        """Open the connection now (raises :class:`~clawpen.DaemonUnreachable`)."""
        await self._connection()
        return self

    async def _connection(self) -> _AsyncConnection:
        if self._conn is not None and not self._conn.closed:
            return self._conn
        if self._connect_lock is None:
            self._connect_lock = asyncio.Lock()
        async with self._connect_lock:
            if self._conn is None or self._conn.closed:
                self._conn = await _AsyncConnection.connect(self.socket_path, self.connect_timeout)
            return self._conn

    async def _new_connection(self) -> _AsyncConnection:
        return await _AsyncConnection.connect(self.socket_path, self.connect_timeout)

    async def close(self) -> None:
        """Close the connection (jobs keep running)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()

    async def __aenter__(self) -> "AsyncClient":
        return await self.connect()

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"AsyncClient(socket={self.socket_path!r})"

    def _timeout(self, request_timeout: Optional[float]) -> Optional[float]:
        return _timeout_for(self.timeout if request_timeout is None else request_timeout)

    async def request(self, type_: str, *, request_timeout: Optional[float] = None, **fields: Any) -> Dict[str, Any]:
        """Send any request and return its whole reply (see :meth:`Client.request`)."""
        conn = await self._connection()
        return await conn.call(type_, drop_none(fields), self._timeout(request_timeout))

    async def ping(self) -> Dict[str, Any]:
        """The ``pong`` reply (``version``, ``pid``)."""
        return await self.request("ping")

    async def run(
        self,
        tenant: str,
        argv: Sequence[str],
        *,
        env: Optional[Mapping[str, str]] = None,
        cwd: Optional[str] = None,
        stdin: StdinData = None,
        timeout: Optional[float] = None,
        idempotency_key: Optional[str] = None,
        check: bool = False,
        on_output: Optional[Callable[[OutputChunk], Any]] = None,
        request_timeout: Optional[float] = None,
    ) -> Job:
        """Run a job and return it finished (see :meth:`Client.run`). ``on_output`` may be a
        function or a coroutine function."""
        if on_output is not None:
            handle = await self.stream(
                tenant, argv, env=env, cwd=cwd, stdin=stdin, timeout=timeout, idempotency_key=idempotency_key
            )
            async with handle:
                while True:
                    chunk = await handle.read(self._timeout(request_timeout))
                    if chunk is None:
                        break
                    res = on_output(chunk)
                    if asyncio.iscoroutine(res):
                        await res
                assert handle.result is not None
                job = handle.result
        else:
            fields = submit_fields(
                tenant, argv, env=env, cwd=cwd, stdin=stdin, timeout=timeout, idempotency_key=idempotency_key, wait=True
            )
            reply = await self.request("submit", request_timeout=request_timeout, **fields)
            job = Job.from_wire(reply_field(reply, "job"), existing=reply.get("existing") is True)
        return job.check() if check else job

    async def submit(
        self,
        tenant: str,
        argv: Sequence[str],
        *,
        env: Optional[Mapping[str, str]] = None,
        cwd: Optional[str] = None,
        stdin: StdinData = None,
        timeout: Optional[float] = None,
        idempotency_key: Optional[str] = None,
        request_timeout: Optional[float] = None,
    ) -> Job:
        """Submit a job; return once it is accepted (see :meth:`Client.submit`)."""
        fields = submit_fields(
            tenant, argv, env=env, cwd=cwd, stdin=stdin, timeout=timeout, idempotency_key=idempotency_key, wait=False
        )
        reply = await self.request("submit", request_timeout=request_timeout, **fields)
        return Job.from_wire(reply_field(reply, "job"), existing=reply.get("existing") is True)

    async def stream(
        self,
        tenant: str,
        argv: Sequence[str],
        *,
        env: Optional[Mapping[str, str]] = None,
        cwd: Optional[str] = None,
        stdin: StdinData = None,
        timeout: Optional[float] = None,
        idempotency_key: Optional[str] = None,
        request_timeout: Optional[float] = None,
    ) -> "AsyncJobHandle":
        """Run a job and follow its output (``async for chunk in handle``; see
        :meth:`Client.stream`)."""
        return await self.spawn(
            tenant,
            argv,
            env=env,
            cwd=cwd,
            stdin=stdin,
            timeout=timeout,
            idempotency_key=idempotency_key,
            request_timeout=request_timeout,
        )

    async def spawn(
        self,
        tenant: str,
        argv: Sequence[str],
        *,
        stdin: Union[bool, StdinData] = False,
        tty: bool = False,
        rows: Optional[int] = None,
        cols: Optional[int] = None,
        env: Optional[Mapping[str, str]] = None,
        cwd: Optional[str] = None,
        timeout: Optional[float] = None,
        idempotency_key: Optional[str] = None,
        request_timeout: Optional[float] = None,
    ) -> "AsyncJobHandle":
        """Start a job you can talk to (see :meth:`Client.spawn`)."""
        keep_open = stdin is True
        data: StdinData = None if isinstance(stdin, bool) else stdin
        fields = submit_fields(
            tenant,
            argv,
            env=env,
            cwd=cwd,
            stdin=data,
            timeout=timeout,
            idempotency_key=idempotency_key,
            stream=True,
            stdin_open=keep_open or tty,
            tty=tty,
            rows=rows,
            cols=cols,
        )
        return await AsyncJobHandle._open(self, "submit", fields, self._timeout(request_timeout))

    async def attach(
        self, job_id: str, *, replay: bool = False, request_timeout: Optional[float] = None
    ) -> "AsyncJobHandle":
        """Follow a job's output on a connection of its own (see :meth:`Client.attach`)."""
        return await AsyncJobHandle._open(
            self, "job.attach", {"job_id": job_id, "replay": bool(replay)}, self._timeout(request_timeout)
        )

    async def status(self, tenant: Optional[str] = None) -> Dict[str, Any]:
        """The STATUS object (operators)."""
        return reply_dict(await self.request("status", tenant=tenant), "status")

    async def explain(
        self, tenant: str, argv: Sequence[str], env: Optional[Mapping[str, str]] = None, cwd: Optional[str] = None
    ) -> Dict[str, Any]:
        """What the tenant's tool policy decides for ``argv``; nothing runs."""
        return reply_dict(await self.request("policy.explain", **explain_fields(tenant, argv, env, cwd)), "explain")

    async def audit(
        self, tenant: Optional[str] = None, since: Optional[float] = None, limit: Optional[int] = None
    ) -> List[Dict[str, Any]]:
        """Audit events (operators), oldest first."""
        return reply_list(await self.request("audit", tenant=tenant, since=since, limit=limit), "events")

    async def reload_policies(self) -> Dict[str, Any]:
        """Make the daemon re-read its policies (operators)."""
        return reply_dict(await self.request("policy.reload"), "policy")


class AsyncJobHandle:
    """The asyncio counterpart of :class:`~clawpen.JobHandle` (``async for`` over its output,
    ``async with`` to close it; the job keeps running)."""

    def __init__(self, client: AsyncClient, conn: _AsyncConnection, rid: int, job: Job, kind: str) -> None:
        self._client = client
        self._conn: Optional[_AsyncConnection] = conn
        self._rid = rid
        self._kind = kind
        self._pushback: Deque[OutputChunk] = collections.deque()
        self.job: Job = job
        self.id: str = job.id
        self.result: Optional[Job] = None

    @classmethod
    async def _open(
        cls, client: AsyncClient, type_: str, fields: Dict[str, Any], timeout: Optional[float]
    ) -> "AsyncJobHandle":
        conn = await client._new_connection()
        try:
            rid = conn.open_request()
            await conn.send(rid, type_, fields, timeout)
            first = await conn.next_frame(rid, timeout)
            kind = first.get("type")
            if kind == "error":
                raise error_from_reply(first)
            if type_ == "job.logs":
                handle = cls(client, conn, rid, Job.from_wire({"id": fields["job_id"]}), "logs")
                chunk = await handle._handle_frame(first)
                if chunk is not None:
                    handle._pushback.append(chunk)
                return handle
            if kind not in ("accepted", "attached", "job"):
                raise ProtocolError(f"expected 'accepted' or 'attached', got {kind!r}")
            job = Job.from_wire(reply_field(first, "job"), existing=first.get("existing") is True)
            handle = cls(client, conn, rid, job, "attach" if type_ == "job.attach" else "submit")
            if kind == "job":
                if not job.done:
                    raise ProtocolError(
                        f"the daemon answered a stream with job {job.id} {job.state}: it does not "
                        "stream output (a clawpen daemon older than this client?)"
                    )
                await handle._finish(job)
            return handle
        except BaseException:
            await conn.close()
            raise

    async def _handle_frame(self, frame: Dict[str, Any]) -> Optional[OutputChunk]:
        kind = frame.get("type")
        if kind == "output":
            return OutputChunk.from_wire(frame)
        if kind == "job":
            await self._finish(Job.from_wire(reply_field(frame, "job"), existing=frame.get("existing") is True))
            return None
        if kind == "error":
            await self.close()
            raise error_from_reply(frame)
        raise ProtocolError(f"unexpected {kind!r} frame in the stream of job {self.id}")

    async def _finish(self, job: Job) -> None:
        self.result = job
        await self.close()

    async def read(self, timeout: Optional[float] = None) -> Optional[OutputChunk]:
        """The next chunk, or ``None`` once the job has ended (:attr:`result` is then set)."""
        if self._pushback:
            return self._pushback.popleft()
        while self.result is None:
            if self._conn is None:
                raise ClawpenError(
                    f"the handle of job {self.id} was closed (attach again to follow it)", code="unavailable"
                )
            chunk = await self._handle_frame(await self._conn.next_frame(self._rid, _timeout_for(timeout)))
            if chunk is not None:
                return chunk
        return None

    def __aiter__(self) -> AsyncIterator[OutputChunk]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[OutputChunk]:
        while True:
            chunk = await self.read()
            if chunk is None:
                return
            yield chunk

    async def read_until(
        self, marker: Union[bytes, str], timeout: Optional[float] = None, *, stream: Optional[str] = None
    ) -> bytes:
        """Read until ``marker`` appears (see :meth:`JobHandle.read_until`)."""
        want = as_bytes(marker)
        if not want:
            raise ValueError("marker must not be empty")
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        got: List[OutputChunk] = []
        buf = bytearray()
        while True:
            remaining = None if deadline is None else max(0.0, deadline - loop.time())
            try:
                chunk = await self.read(remaining)
            except RequestTimeout as exc:
                self._pushback.extendleft(reversed(got))
                exc.details["output"] = bytes(buf)
                raise
            if chunk is None:
                raise EOFError(f"job {self.id} ended before {want!r} appeared", bytes(buf))
            if stream is not None and chunk.stream != stream:
                continue
            got.append(chunk)
            search_from = max(0, len(buf) - len(want) + 1)
            buf += chunk.data
            at = buf.find(want, search_from)
            if at >= 0:
                end = at + len(want)
                rest = bytes(buf[end:])
                if rest:
                    cut = len(chunk.data) - len(rest)
                    self._pushback.appendleft(
                        OutputChunk(chunk.stream, rest, chunk.seq, chunk.offset + cut, chunk.replay)
                    )
                return bytes(buf[:end])

    async def wait(self, timeout: Optional[float] = None) -> Job:
        """Read to the end and return the finished job (see :meth:`JobHandle.wait`)."""

        async def drain() -> Job:
            self._pushback.clear()
            while await self.read() is not None:
                pass
            assert self.result is not None
            return self.result

        path = self._client.socket_path
        return await _within(drain(), _timeout_for(timeout), f"job {self.id} did not finish", path)

    async def _call(self, type_: str, fields: Dict[str, Any], timeout: Optional[float]) -> Dict[str, Any]:
        conn = self._conn if self._conn is not None and not self._conn.closed else await self._client._connection()
        return await conn.call(type_, fields, self._client._timeout(timeout))

    async def write(self, data: Union[bytes, str], *, eof: bool = False, timeout: Optional[float] = None) -> int:
        """Write to the job's stdin; ``eof=True`` closes it afterwards. Bytes the daemon took."""
        taken = 0
        for fields in input_requests(self.id, as_bytes(data), eof):
            got = (await self._call("job.input", fields, timeout)).get("bytes")
            taken += got if isinstance(got, int) else 0
        return taken

    async def close_stdin(self, timeout: Optional[float] = None) -> None:
        """Close the job's stdin (on a terminal: end-of-file)."""
        await self._call("job.input", {"job_id": self.id, "eof": True}, timeout)

    async def resize(self, rows: int, cols: int, timeout: Optional[float] = None) -> None:
        """Set the terminal size of a ``tty`` job."""
        await self._call("job.resize", {"job_id": self.id, "rows": int(rows), "cols": int(cols)}, timeout)

    async def signal(self, sig: SignalLike, timeout: Optional[float] = None) -> None:
        """Send a signal to the job's process group."""
        await self._call("job.signal", {"job_id": self.id, "signal": signal_field(sig)}, timeout)

    async def cancel(self, timeout: Optional[float] = None) -> Job:
        """Kill the job; returns it once it has stopped."""
        return Job.from_wire(reply_field(await self._call("job.cancel", {"job_id": self.id}, timeout), "job"))

    async def attach(self, *, replay: bool = False) -> "AsyncJobHandle":
        """Another handle following this job."""
        return await self._client.attach(self.id, replay=replay)

    async def detach(self, timeout: Optional[float] = None) -> None:
        """Stop following the job and close the handle; the job keeps running."""
        conn = self._conn
        if conn is not None and not conn.closed and self.result is None and self._kind != "logs":
            try:
                await conn.call(
                    "job.detach", {"job_id": self.id, "attach_id": self._rid}, self._client._timeout(timeout)
                )
            except ClawpenError:
                pass
        await self.close()

    async def close(self) -> None:
        """Close the handle's connection (the job keeps running)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()

    @property
    def closed(self) -> bool:
        return self._conn is None

    async def __aenter__(self) -> "AsyncJobHandle":
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()

    def __repr__(self) -> str:
        state = self.result.state if self.result else self.job.state
        return f"AsyncJobHandle(id={self.id!r}, state={state!r})"


class AsyncJobs:
    """Jobs by id (``client.jobs``), awaitable; see :class:`~clawpen.Jobs`."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def _job(self, type_: str, job_id: str, timeout: Optional[float] = None) -> Job:
        reply = await self._client.request(type_, job_id=job_id, request_timeout=timeout)
        return Job.from_wire(reply_field(reply, "job"))

    async def get(self, job_id: str) -> Job:
        return await self._job("job.get", job_id)

    async def wait(self, job_id: str, timeout: Optional[float] = None) -> Job:
        return await self._job("job.wait", job_id, timeout)

    async def cancel(self, job_id: str) -> Job:
        return await self._job("job.cancel", job_id)

    async def tree(self, job_id: str) -> List[Job]:
        reply = await self._client.request("job.tree", job_id=job_id)
        return [Job.from_wire(j) for j in reply_list(reply, "jobs")]

    async def list(
        self, tenant: Optional[str] = None, state: Optional[str] = None, limit: Optional[int] = None
    ) -> List[Job]:
        reply = await self._client.request("job.list", tenant=tenant, state=state, limit=limit)
        return [Job.from_wire(j) for j in reply_list(reply, "jobs")]

    async def logs(self, job_id: str, *, follow: bool = False) -> AsyncJobHandle:
        return await AsyncJobHandle._open(
            self._client, "job.logs", {"job_id": job_id, "follow": bool(follow)}, self._client._timeout(None)
        )

    async def attach(self, job_id: str, *, replay: bool = False) -> AsyncJobHandle:
        return await self._client.attach(job_id, replay=replay)

    async def signal(self, job_id: str, sig: SignalLike) -> None:
        await self._client.request("job.signal", job_id=job_id, signal=signal_field(sig))

    async def write(self, job_id: str, data: Union[bytes, str], *, eof: bool = False) -> int:
        taken = 0
        for fields in input_requests(job_id, as_bytes(data), eof):
            got = (await self._client.request("job.input", **fields)).get("bytes")
            taken += got if isinstance(got, int) else 0
        return taken

    async def resize(self, job_id: str, rows: int, cols: int) -> None:
        await self._client.request("job.resize", job_id=job_id, rows=int(rows), cols=int(cols))


class AsyncFiles:
    """A tenant's files (``client.files``), awaitable; see :class:`~clawpen.Files`. A file
    object given to :meth:`write` or :meth:`read` is read or written synchronously, chunk by
    chunk."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def write(
        self,
        tenant: str,
        path: str,
        data: FileData,
        *,
        mode: Optional[int] = None,
        chunk_size: int = PUT_CHUNK_BYTES,
        request_timeout: Optional[float] = None,
    ) -> FileInfo:
        conn = await self._client._connection()
        timeout = self._client._timeout(request_timeout)
        source = ChunkSource(data, chunk_size)
        rid = conn.open_request()
        await conn.begin_reply()
        try:
            reply: Optional[Dict[str, Any]] = None
            sent = 0
            for type_, fields, eof, nbytes in put_frames(tenant, path, source, mode, file_size_hint(data)):
                await conn.send(rid, type_, fields, timeout)
                sent += nbytes
                if eof:
                    break
                reply = conn.poll_frame(rid)
                if reply is not None:
                    await conn.send(rid, "file.chunk", {"data_b64": "", "offset": sent, "eof": True}, timeout)
                    break
            if reply is None:
                reply = await conn.next_frame(rid, timeout)
        finally:
            await conn.end_reply()
            await conn.release(rid)
        if reply.get("type") == "error":
            raise error_from_reply(reply)
        return FileInfo.from_wire(reply_field(reply, "file"))

    @overload
    async def read(
        self,
        tenant: str,
        path: str,
        into: None = None,
        *,
        chunk_size: int = ...,
        request_timeout: Optional[float] = ...,
    ) -> bytes: ...

    @overload
    async def read(
        self, tenant: str, path: str, into: IO[bytes], *, chunk_size: int = ..., request_timeout: Optional[float] = ...
    ) -> int: ...

    async def read(
        self,
        tenant: str,
        path: str,
        into: Optional[IO[bytes]] = None,
        *,
        chunk_size: int = GET_CHUNK_BYTES,
        request_timeout: Optional[float] = None,
    ) -> Union[bytes, int]:
        conn = await self._client._connection()
        timeout = self._client._timeout(request_timeout)
        rid = conn.open_request()
        parts: List[bytes] = []
        total = 0
        await conn.begin_reply()
        try:
            await conn.send(rid, "file.get", {"tenant": tenant, "path": path, "chunk_bytes": int(chunk_size)}, timeout)
            while True:
                frame = await conn.next_frame(rid, timeout)
                kind = frame.get("type")
                if kind == "error":
                    raise error_from_reply(frame)
                if kind != "file.data":
                    raise ProtocolError(f"expected 'file.data', got {kind!r}")
                if frame.get("offset") != total:
                    raise ProtocolError(f"file.data at offset {frame.get('offset')}, expected {total}")
                data = unb64(frame.get("data_b64"), "file.data data_b64")
                total += len(data)
                if into is not None:
                    into.write(data)
                else:
                    parts.append(data)
                if frame.get("eof") is True:
                    break
        finally:
            await conn.end_reply()
            await conn.release(rid)
        return total if into is not None else b"".join(parts)

    async def read_text(self, tenant: str, path: str, encoding: str = "utf-8", errors: str = "strict") -> str:
        return (await self.read(tenant, path)).decode(encoding, errors)

    async def stat(self, tenant: str, path: str) -> FileInfo:
        return FileInfo.from_wire(
            reply_field(await self._client.request("file.stat", tenant=tenant, path=path), "file")
        )

    async def exists(self, tenant: str, path: str) -> bool:
        try:
            await self.stat(tenant, path)
            return True
        except NotFound:
            return False

    async def list(self, tenant: str, path: str = "/home", *, limit: Optional[int] = None) -> List[FileInfo]:
        return (await self.list_page(tenant, path, limit=limit))[0]

    async def list_page(
        self, tenant: str, path: str = "/home", *, limit: Optional[int] = None
    ) -> Tuple[List[FileInfo], bool]:
        reply = await self._client.request("file.list", tenant=tenant, path=path, limit=limit)
        return [FileInfo.from_wire(e) for e in reply_list(reply, "entries")], reply.get("truncated") is True

    async def remove(self, tenant: str, path: str, *, recursive: bool = False) -> int:
        reply = await self._client.request("file.remove", tenant=tenant, path=path, recursive=bool(recursive) or None)
        removed = reply.get("removed")
        return removed if isinstance(removed, int) else 0

    async def mkdir(self, tenant: str, path: str, *, parents: bool = False, mode: Optional[int] = None) -> FileInfo:
        reply = await self._client.request(
            "file.mkdir", tenant=tenant, path=path, mode=mode, parents=bool(parents) or None
        )
        return FileInfo.from_wire(reply_field(reply, "file"))


class AsyncTenants:
    """Tenants (``client.tenants``), awaitable; see :class:`~clawpen.Tenants`."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def create(self, name: str, tier: str = "free", *, key_file: Optional[str] = None) -> Dict[str, Any]:
        return reply_dict(await self._client.request("tenant.create", name=name, tier=tier, key_file=key_file), "tenant")

    async def list(self) -> List[Dict[str, Any]]:
        return reply_list(await self._client.request("tenant.list"), "tenants")

    async def get(self, name: str) -> Dict[str, Any]:
        return reply_dict(await self._client.request("tenant.show", name=name), "tenant")

    async def set_quota(self, name: str, **limits: Any) -> Dict[str, Any]:
        return strip_envelope(await self._client.request("tenant.set_quota", **set_quota_fields(name, limits)))

    async def suspend(self, name: str) -> Dict[str, Any]:
        return strip_envelope(await self._client.request("tenant.suspend", name=name))

    async def resume(self, name: str) -> Dict[str, Any]:
        return strip_envelope(await self._client.request("tenant.resume", name=name))

    async def inspect(self, name: str) -> Dict[str, Any]:
        return reply_dict(await self._client.request("tenant.inspect", name=name), "inspect")

    async def offboard(
        self,
        name: str,
        *,
        dry_run: bool = False,
        grace_period_days: Optional[int] = None,
        now: bool = False,
        delete_audit: bool = False,
    ) -> Dict[str, Any]:
        fields: Dict[str, Any] = {"name": name, "dry_run": dry_run}
        if not dry_run:
            fields.update(grace_period_days=grace_period_days, now=now, delete_audit=delete_audit)
        return strip_envelope(await self._client.request("tenant.offboard", **fields))

    async def restore(self, name: str) -> Dict[str, Any]:
        return strip_envelope(await self._client.request("tenant.restore", name=name))

    async def export(self, name: str, to: str) -> Dict[str, Any]:
        return strip_envelope(await self._client.request("tenant.export", name=name, to=to))
