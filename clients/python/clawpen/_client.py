"""The synchronous client: :class:`Client`, its job handles and its namespaces."""

from __future__ import annotations

import collections
from typing import (
    IO,
    Any,
    Callable,
    Deque,
    Dict,
    Iterator,
    List,
    Mapping,
    Optional,
    Sequence,
    Union,
    overload,
)

from ._connection import Connection
from ._errors import ClawpenError, ProtocolError, RequestTimeout, error_from_reply
from ._models import FileInfo, Job, OutputChunk
from ._requests import (
    GET_CHUNK_BYTES,
    PUT_CHUNK_BYTES,
    ChunkSource,
    FileData,
    StdinData,
    deadline_for,
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
from ._wire import PathLike, SignalLike, as_bytes, drop_none, resolve_socket, signal_field, unb64

__all__ = ["Client", "JobHandle", "Jobs", "Files", "Tenants"]


class Client:
    """A connection to the clawpen daemon.

    Args:
        socket: the daemon's Unix socket; default ``$CLAWPEN_SOCKET``, else
            ``/run/clawpen/clawpen.sock``.
        timeout: seconds to wait for each reply, unless a call says otherwise with
            ``request_timeout`` (``None``, the default: as long as it takes; the daemon bounds
            every job by its own timeout). A reply that does not come in time raises
            :class:`~clawpen.RequestTimeout`; the connection stays usable.
        connect_timeout: seconds to wait for the connection itself.

    Raises:
        DaemonUnreachable: the socket cannot be reached.

    A ``Client`` is one connection for request/reply calls, safe to share between threads:
    their requests travel together and each gets its own reply. Streams (``stream``,
    ``spawn``, ``attach``, ``jobs.logs``) open a connection of their own, so that output
    nobody reads holds back only its own job. Use it as a context manager, or call
    :meth:`close`::

        with clawpen.Client() as client:
            job = client.run("acme", ["echo", "hi"])
            print(job.stdout)
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
        self._conn = Connection(self.socket_path, connect_timeout)
        #: Jobs by id: get, wait, cancel, list, logs, attach, signal.
        self.jobs = Jobs(self)
        #: The tenants' files, read and written inside their sandboxes.
        self.files = Files(self)
        #: Tenants (operators): create, list, get, set_quota, suspend, resume, inspect.
        self.tenants = Tenants(self)

    # -- connection ---------------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection (idempotent). Jobs keep running; open handles stay open."""
        self._conn.close()

    @property
    def closed(self) -> bool:
        return self._conn.closed

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client(socket={self.socket_path!r})"

    def _deadline(self, request_timeout: Optional[float]) -> Optional[float]:
        return deadline_for(self.timeout if request_timeout is None else request_timeout)

    def request(self, type_: str, *, request_timeout: Optional[float] = None, **fields: Any) -> Dict[str, Any]:
        """Send any request and return its whole reply (the escape hatch for fields this client
        does not wrap). Fields that are ``None`` are left out.

        Raises:
            ClawpenError: the subclass for the ``error`` reply's code.
        """
        return self._conn.call(type_, drop_none(fields), self._deadline(request_timeout))

    # -- jobs ---------------------------------------------------------------------------------

    def ping(self) -> Dict[str, Any]:
        """Check that the daemon answers: the ``pong`` reply (``version``, ``pid``)."""
        return self.request("ping")

    def run(
        self,
        tenant: Optional[str],
        argv: Sequence[str],
        *,
        env: Optional[Mapping[str, str]] = None,
        cwd: Optional[str] = None,
        stdin: StdinData = None,
        timeout: Optional[float] = None,
        idempotency_key: Optional[str] = None,
        check: bool = False,
        on_output: Optional[Callable[[OutputChunk], None]] = None,
        request_timeout: Optional[float] = None,
    ) -> Job:
        """Run ``argv`` as ``tenant`` inside its sandbox and return the finished job.

        Args:
            tenant: the tenant to run as; ``None`` from inside a job (its own tenant: the job's
                ``$CLAWPEN_SOCKET`` is its tenant's agent socket, and the job is the parent).
            argv: the command and its arguments; ``argv[0]`` without ``/`` is looked up in
                the job's ``PATH``.
            env: variables added to the job's environment (the tenant's ``env_allow`` decides).
            cwd: the job's working directory (default ``/home``).
            stdin: the job's standard input, ``str`` (UTF-8) or bytes.
            timeout: seconds after which the daemon kills the job (state ``timed_out``);
                default the tier's (30 s).
            idempotency_key: a second run with the same tenant and key returns the first job
                (:attr:`Job.existing` is then ``True``) instead of running again.
            check: raise when the job does not succeed (:class:`~clawpen.JobFailed`,
                :class:`~clawpen.TimedOut`, :class:`~clawpen.OOMKilled`, ...), as
                ``subprocess.run(check=True)``.
            on_output: called with each :class:`OutputChunk` as the job writes it (the job is
                then streamed; the result still has the captured output).
            request_timeout: seconds to wait for the result on this side (the job keeps
                running when it passes: :class:`~clawpen.RequestTimeout`).

        Returns:
            The job in its final state. A job that ran and failed is returned, not raised
            (unless ``check``); refusals raise (:class:`~clawpen.QuotaExceeded`,
            :class:`~clawpen.PolicyDenied`, :class:`~clawpen.UnknownTenant`, ...).
        """
        if on_output is not None:
            with self.stream(
                tenant,
                argv,
                env=env,
                cwd=cwd,
                stdin=stdin,
                timeout=timeout,
                idempotency_key=idempotency_key,
                request_timeout=request_timeout,
            ) as handle:
                deadline = self._deadline(request_timeout)
                while True:
                    chunk = handle._read(deadline)
                    if chunk is None:
                        break
                    on_output(chunk)
                assert handle.result is not None
                job = handle.result
        else:
            fields = submit_fields(
                tenant,
                argv,
                env=env,
                cwd=cwd,
                stdin=stdin,
                timeout=timeout,
                idempotency_key=idempotency_key,
                wait=True,
            )
            reply = self.request("submit", request_timeout=request_timeout, **fields)
            job = Job.from_wire(reply_field(reply, "job"), existing=reply.get("existing") is True)
        return job.check() if check else job

    def submit(
        self,
        tenant: Optional[str],
        argv: Sequence[str],
        *,
        env: Optional[Mapping[str, str]] = None,
        cwd: Optional[str] = None,
        stdin: StdinData = None,
        timeout: Optional[float] = None,
        idempotency_key: Optional[str] = None,
        request_timeout: Optional[float] = None,
    ) -> Job:
        """Submit a job and return as soon as the daemon has accepted it (committed it to its
        store: it survives a daemon restart). The job is ``queued`` or ``running``; follow it
        with ``jobs.wait(job.id)``, ``jobs.get``, ``jobs.cancel`` or :meth:`attach`.
        Arguments as :meth:`run`."""
        reply = self.request(
            "submit",
            request_timeout=request_timeout,
            **submit_fields(
                tenant,
                argv,
                env=env,
                cwd=cwd,
                stdin=stdin,
                timeout=timeout,
                idempotency_key=idempotency_key,
                wait=False,
            ),
        )
        return Job.from_wire(reply_field(reply, "job"), existing=reply.get("existing") is True)

    def stream(
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
    ) -> "JobHandle":
        """Run a job and follow its output as it is written: iterate the returned handle for
        :class:`OutputChunk` values (``stream`` is ``"stdout"`` or ``"stderr"``), in the
        order the job wrote them; :attr:`JobHandle.result` is the finished job afterwards::

            for chunk in client.stream("acme", ["make", "test"]):
                sys.stdout.buffer.write(chunk.data)

        A job whose output nobody reads is held back (its pipe fills), never buffered without
        bound. Arguments as :meth:`run`; ``request_timeout`` bounds the wait for the daemon's
        acceptance."""
        return self.spawn(
            tenant,
            argv,
            env=env,
            cwd=cwd,
            stdin=stdin,
            timeout=timeout,
            idempotency_key=idempotency_key,
            request_timeout=request_timeout,
        )

    def spawn(
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
    ) -> "JobHandle":
        """Start a job you can talk to, and return its handle once the daemon accepted it.

        Args:
            stdin: ``True`` keeps the job's stdin open for :meth:`JobHandle.write` until
                :meth:`JobHandle.close_stdin`; ``str``/bytes are the whole input (as for
                :meth:`run`); ``False`` (default): no input.
            tty: run the job on a pseudo-terminal (its stdin, stdout and stderr; all output
                arrives as ``"stdout"``), ``rows`` x ``cols`` (default 24 x 80). Its input is
                open: :meth:`JobHandle.write` types into the terminal.
            timeout: seconds the job may run; a job with stdin open or a terminal is bounded by
                the tier's ``interactive_timeout_max_s`` instead of ``timeout_max_s``.

        Other arguments as :meth:`run`. The handle is a context manager: leaving it closes
        its connection and the job keeps running (``cancel()`` or ``wait()`` first to end it)::

            with client.spawn("acme", ["python3", "-i"], stdin=True, tty=True) as repl:
                repl.read_until(">>> ")
                repl.write("1+1\\n")
                print(repl.read_until(">>> "))
        """
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
        return JobHandle._open(self, "submit", fields, self._deadline(request_timeout))

    def attach(self, job_id: str, *, replay: bool = False, request_timeout: Optional[float] = None) -> "JobHandle":
        """Follow a running job's output from now on (``replay=True``: from the start of what is
        kept), on a connection of its own; the handle also sends input, resizes and signals.
        Closing the handle detaches: the job keeps running. Any number of clients may attach.
        A finished job's handle gives the kept output (with ``replay``) and the result."""
        return JobHandle._open(
            self, "job.attach", {"job_id": job_id, "replay": bool(replay)}, self._deadline(request_timeout)
        )

    # -- the daemon and its policies ------------------------------------------------------------

    def status(self, tenant: Optional[str] = None) -> Dict[str, Any]:
        """The STATUS object (``supervisor`` and ``tenants``; operators), optionally for one
        tenant."""
        return reply_dict(self.request("status", tenant=tenant), "status")

    def explain(
        self,
        tenant: str,
        argv: Sequence[str],
        env: Optional[Mapping[str, str]] = None,
        cwd: Optional[str] = None,
    ) -> Dict[str, Any]:
        """What the tenant's tool policy decides for ``argv`` (and ``env``), with every rule
        that took part; nothing runs. ``result["decision"]["allowed"]`` is the verdict."""
        return reply_dict(self.request("policy.explain", **explain_fields(tenant, argv, env, cwd)), "explain")

    def audit(
        self, tenant: Optional[str] = None, since: Optional[float] = None, limit: Optional[int] = None
    ) -> List[Dict[str, Any]]:
        """Audit events (operators), oldest first: refusals and admin actions, with the rule."""
        return reply_list(self.request("audit", tenant=tenant, since=since, limit=limit), "events")

    def reload_policies(self) -> Dict[str, Any]:
        """Make the daemon re-read its policies (operators). A set that does not load raises
        :class:`~clawpen.InvalidRequest` (naming file, line and key) and the old one stays."""
        return reply_dict(self.request("policy.reload"), "policy")


class JobHandle:
    """A job being followed on a connection of its own: a streamed or spawned job, an attach,
    or a job's logs.

    Iterate it for :class:`OutputChunk` values until the job ends; :attr:`result` then holds
    the finished :class:`Job`. Input, resize and signals go to the job whichever way it was
    opened. One thread should read a handle at a time; the other methods may be called from
    any thread.
    """

    def __init__(self, client: Client, conn: Connection, rid: int, job: Job, kind: str) -> None:
        self._client = client
        self._conn: Optional[Connection] = conn
        self._rid = rid
        self._kind = kind
        self._pushback: Deque[OutputChunk] = collections.deque()
        #: The job as it was when the handle opened (``accepted`` or ``attached``).
        self.job: Job = job
        #: The job's id.
        self.id: str = job.id
        #: The finished job, once the stream has ended; ``None`` before.
        self.result: Optional[Job] = None

    @classmethod
    def _open(cls, client: Client, type_: str, fields: Dict[str, Any], deadline: Optional[float]) -> "JobHandle":
        conn = Connection(client.socket_path, client.connect_timeout)
        try:
            rid = conn.open_request()
            conn.send(rid, type_, fields, deadline)
            first = conn.next_frame(rid, deadline)
            kind = first.get("type")
            if kind == "error":
                raise error_from_reply(first)
            if type_ == "job.logs":
                # logs has no opening frame: its first frame is already output (or the job).
                job = Job.from_wire({"id": fields["job_id"]})
                handle = cls(client, conn, rid, job, "logs")
                chunk = handle._handle_frame(first)
                if chunk is not None:
                    handle._pushback.append(chunk)
                return handle
            if kind not in ("accepted", "attached", "job"):
                raise ProtocolError(f"expected 'accepted' or 'attached', got {kind!r}")
            job = Job.from_wire(reply_field(first, "job"), existing=first.get("existing") is True)
            handle = cls(client, conn, rid, job, "attach" if type_ == "job.attach" else "submit")
            if kind == "job":  # a stream that ended at once
                if not job.done:
                    raise ProtocolError(
                        f"the daemon answered a stream with job {job.id} {job.state}: it does not "
                        "stream output (a clawpen daemon older than this client?)"
                    )
                handle._finish(job)
            return handle
        except BaseException:
            conn.close()
            raise

    # -- output -------------------------------------------------------------------------------

    def _handle_frame(self, frame: Dict[str, Any]) -> Optional[OutputChunk]:
        kind = frame.get("type")
        if kind == "output":
            return OutputChunk.from_wire(frame)
        if kind == "job":
            self._finish(Job.from_wire(reply_field(frame, "job"), existing=frame.get("existing") is True))
            return None
        if kind == "error":
            self._close_conn()
            raise error_from_reply(frame)
        raise ProtocolError(f"unexpected {kind!r} frame in the stream of job {self.id}")

    def _finish(self, job: Job) -> None:
        self.result = job
        self._close_conn()

    def _read(self, deadline: Optional[float]) -> Optional[OutputChunk]:
        if self._pushback:
            return self._pushback.popleft()
        while self.result is None:
            if self._conn is None:
                raise ClawpenError(
                    f"the handle of job {self.id} was closed (attach again to follow it)", code="unavailable"
                )
            chunk = self._handle_frame(self._conn.next_frame(self._rid, deadline))
            if chunk is not None:
                return chunk
        return None

    def read(self, timeout: Optional[float] = None) -> Optional[OutputChunk]:
        """The next chunk of output, or ``None`` once the job has ended (then :attr:`result`
        is set). ``timeout``: seconds to wait (:class:`~clawpen.RequestTimeout` after)."""
        return self._read(deadline_for(timeout))

    def __iter__(self) -> Iterator[OutputChunk]:
        while True:
            chunk = self._read(None)
            if chunk is None:
                return
            yield chunk

    def read_until(
        self, marker: Union[bytes, str], timeout: Optional[float] = None, *, stream: Optional[str] = None
    ) -> bytes:
        """Read output until ``marker`` has appeared, and return everything up to and including
        it (what follows it stays for the next read). ``stream`` limits it to ``"stdout"`` or
        ``"stderr"`` (the other stream's chunks are dropped meanwhile).

        Raises:
            RequestTimeout: ``marker`` did not come within ``timeout`` seconds (what was read
                is in ``details["output"]`` and is not lost: it is read again next time).
            EOFError: the job ended first (what it wrote meanwhile is ``args[1]``).
        """
        want = as_bytes(marker)
        if not want:
            raise ValueError("marker must not be empty")
        deadline = deadline_for(timeout)
        got: List[OutputChunk] = []
        buf = bytearray()
        while True:
            try:
                chunk = self._read(deadline)
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

    def wait(self, timeout: Optional[float] = None) -> Job:
        """Read to the end (output not yet read is dropped: the result has the captured
        output) and return the finished job. ``timeout``: seconds
        (:class:`~clawpen.RequestTimeout` after; the job keeps running)."""
        deadline = deadline_for(timeout)
        self._pushback.clear()
        while self._read(deadline) is not None:
            pass
        assert self.result is not None
        return self.result

    # -- talking to the job ---------------------------------------------------------------------

    def _call(self, type_: str, fields: Dict[str, Any], timeout: Optional[float]) -> Dict[str, Any]:
        # On the handle's own connection while it is open (its input keeps its order with the
        # stream), else on the client's.
        conn = self._conn if self._conn is not None and not self._conn.closed else self._client._conn
        return conn.call(type_, fields, self._client._deadline(timeout))

    def write(self, data: Union[bytes, str], *, eof: bool = False, timeout: Optional[float] = None) -> int:
        """Write to the job's stdin (``str`` as UTF-8); ``eof=True`` closes it afterwards.

        Returns the number of bytes the daemon took (it does not wait for the job to read
        them; a job that does not read slows the writer down instead of piling input up).
        More than 1 MiB goes as several requests, in order."""
        taken = 0
        for fields in input_requests(self.id, as_bytes(data), eof):
            got = self._call("job.input", fields, timeout).get("bytes")
            taken += got if isinstance(got, int) else 0
        return taken

    def close_stdin(self, timeout: Optional[float] = None) -> None:
        """Close the job's stdin (on a terminal: send end-of-file, ctrl-D)."""
        self._call("job.input", {"job_id": self.id, "eof": True}, timeout)

    def resize(self, rows: int, cols: int, timeout: Optional[float] = None) -> None:
        """Set the terminal's size of a job started with ``tty=True`` (it gets SIGWINCH)."""
        self._call("job.resize", {"job_id": self.id, "rows": int(rows), "cols": int(cols)}, timeout)

    def signal(self, sig: SignalLike, timeout: Optional[float] = None) -> None:
        """Send a signal to the job's process group: ``signal.SIGINT``, ``"INT"``, ``"SIGINT"``
        or ``2``."""
        self._call("job.signal", {"job_id": self.id, "signal": signal_field(sig)}, timeout)

    def cancel(self, timeout: Optional[float] = None) -> Job:
        """Kill the job (all of its process group); returns it once it has stopped."""
        job = Job.from_wire(reply_field(self._call("job.cancel", {"job_id": self.id}, timeout), "job"))
        return job

    def attach(self, *, replay: bool = False) -> "JobHandle":
        """Another handle following this job from now on (``replay``: from the start of what
        is kept), for example after :meth:`detach`."""
        return self._client.attach(self.id, replay=replay)

    def detach(self, timeout: Optional[float] = None) -> None:
        """Stop following the job and close the handle's connection; the job keeps running."""
        conn = self._conn
        if conn is not None and not conn.closed and self.result is None and self._kind != "logs":
            try:
                conn.call("job.detach", {"job_id": self.id, "attach_id": self._rid}, self._client._deadline(timeout))
            except ClawpenError:
                pass  # closing the connection detaches as well
        self._close_conn()

    def _close_conn(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def close(self) -> None:
        """Close the handle's connection (the job keeps running; idempotent)."""
        self._close_conn()

    @property
    def closed(self) -> bool:
        """``True`` once the stream ended or the handle was closed."""
        return self._conn is None

    def __enter__(self) -> "JobHandle":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            self._close_conn()
        except Exception:
            pass

    def __repr__(self) -> str:
        state = self.result.state if self.result else self.job.state
        return f"JobHandle(id={self.id!r}, state={state!r})"


class Jobs:
    """Jobs by id (``client.jobs``)."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def _job(self, type_: str, job_id: str, timeout: Optional[float] = None) -> Job:
        reply = self._client.request(type_, job_id=job_id, request_timeout=timeout)
        return Job.from_wire(reply_field(reply, "job"))

    def get(self, job_id: str) -> Job:
        """The job's current state, at once (:class:`~clawpen.UnknownJob` if there is none)."""
        return self._job("job.get", job_id)

    def wait(self, job_id: str, timeout: Optional[float] = None) -> Job:
        """Wait until the job has finished and return it. ``timeout``: seconds to wait
        (:class:`~clawpen.RequestTimeout` after; the job keeps running)."""
        return self._job("job.wait", job_id, timeout)

    def cancel(self, job_id: str) -> Job:
        """Remove a queued job or kill a running one; returns it once it has stopped (a
        finished job is returned unchanged)."""
        return self._job("job.cancel", job_id)

    def tree(self, job_id: str) -> List[Job]:
        """The tree ``job_id`` belongs to: its root first, then every sub-job below it (by
        depth, then acceptance). From inside a job: jobs of its own tree only."""
        reply = self._client.request("job.tree", job_id=job_id)
        return [Job.from_wire(j) for j in reply_list(reply, "jobs")]

    def list(self, tenant: Optional[str] = None, state: Optional[str] = None, limit: Optional[int] = None) -> List[Job]:
        """Jobs from the store, newest first, without their output (``get`` has it)."""
        reply = self._client.request("job.list", tenant=tenant, state=state, limit=limit)
        return [Job.from_wire(j) for j in reply_list(reply, "jobs")]

    def logs(self, job_id: str, *, follow: bool = False) -> JobHandle:
        """The job's kept output (stdout's chunks, then stderr's) as a handle to iterate;
        ``follow=True``: then its live output until it ends. :attr:`JobHandle.result` is the
        job at the end::

            out = b"".join(c.data for c in client.jobs.logs(job_id) if c.stream == "stdout")
        """
        return JobHandle._open(
            self._client, "job.logs", {"job_id": job_id, "follow": bool(follow)}, self._client._deadline(None)
        )

    def attach(self, job_id: str, *, replay: bool = False) -> JobHandle:
        """As :meth:`Client.attach`."""
        return self._client.attach(job_id, replay=replay)

    def signal(self, job_id: str, sig: SignalLike) -> None:
        """Send a signal to a running job's process group (see :meth:`JobHandle.signal`)."""
        self._client.request("job.signal", job_id=job_id, signal=signal_field(sig))

    def write(self, job_id: str, data: Union[bytes, str], *, eof: bool = False) -> int:
        """Write to the stdin of a job started with stdin open (see :meth:`JobHandle.write`)."""
        taken = 0
        for fields in input_requests(job_id, as_bytes(data), eof):
            got = self._client.request("job.input", **fields).get("bytes")
            taken += got if isinstance(got, int) else 0
        return taken

    def resize(self, job_id: str, rows: int, cols: int) -> None:
        """Set the terminal size of a job started with ``tty=True``."""
        self._client.request("job.resize", job_id=job_id, rows=int(rows), cols=int(cols))


class Files:
    """A tenant's files, read and written by its worker as the tenant's uid, inside its
    sandbox (``client.files``). Paths are absolute, as a job of the tenant sees them
    (``/home/data.csv``); writes go under ``/home`` and ``/tmp``. A path that leaves the
    tenant's root, goes through a symbolic link or onto a read-only mount is refused with
    :class:`~clawpen.PolicyDenied` (``rule`` says which)."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def write(
        self,
        tenant: str,
        path: str,
        data: FileData,
        *,
        mode: Optional[int] = None,
        chunk_size: int = PUT_CHUNK_BYTES,
        request_timeout: Optional[float] = None,
    ) -> FileInfo:
        """Write a file: ``data`` is bytes, ``str`` (UTF-8) or a binary file object (read to
        its end, ``chunk_size`` bytes at a time). ``mode``: permission bits (default 0o644).

        The file appears whole or not at all: it is written beside the target and renamed
        over it after the last chunk. Returns the new file's :class:`FileInfo`.

        Raises:
            FileTooLarge: over the tier's ``file_max_bytes``.
            NotFound: the parent directory does not exist.
            PolicyDenied: the path may not be written (``rule``).
        """
        conn = self._client._conn
        deadline = self._client._deadline(request_timeout)
        source = ChunkSource(data, chunk_size)
        rid = conn.open_request()
        try:
            reply: Optional[Dict[str, Any]] = None
            sent = 0
            for type_, fields, eof, nbytes in put_frames(tenant, path, source, mode, file_size_hint(data)):
                conn.send(rid, type_, fields, deadline)
                sent += nbytes
                if eof:
                    break
                # A refusal may come before the last chunk (a size over the limit, a path
                # refused): stop sending then, and close the put with an empty last chunk.
                reply = conn.poll_frame(rid)
                if reply is not None:
                    conn.send(rid, "file.chunk", {"data_b64": "", "offset": sent, "eof": True}, deadline)
                    break
            if reply is None:
                reply = conn.next_frame(rid, deadline)
        finally:
            conn.release(rid)
        if reply.get("type") == "error":
            raise error_from_reply(reply)
        return FileInfo.from_wire(reply_field(reply, "file"))

    @overload
    def read(
        self,
        tenant: str,
        path: str,
        into: None = None,
        *,
        chunk_size: int = ...,
        request_timeout: Optional[float] = ...,
    ) -> bytes: ...

    @overload
    def read(
        self, tenant: str, path: str, into: IO[bytes], *, chunk_size: int = ..., request_timeout: Optional[float] = ...
    ) -> int: ...

    def read(
        self,
        tenant: str,
        path: str,
        into: Optional[IO[bytes]] = None,
        *,
        chunk_size: int = GET_CHUNK_BYTES,
        request_timeout: Optional[float] = None,
    ) -> Union[bytes, int]:
        """Read a file: its bytes, or with ``into`` (a binary file object) write them there
        as they arrive, ``chunk_size`` bytes at a time, and return how many.

        Raises:
            NotFound: no such file. FileTooLarge: over ``file_max_bytes``.
            InvalidRequest: not a regular file. PolicyDenied: the path may not be read.
        """
        conn = self._client._conn
        deadline = self._client._deadline(request_timeout)
        rid = conn.open_request()
        parts: List[bytes] = []
        total = 0
        try:
            conn.send(rid, "file.get", {"tenant": tenant, "path": path, "chunk_bytes": int(chunk_size)}, deadline)
            while True:
                frame = conn.next_frame(rid, deadline)
                kind = frame.get("type")
                if kind == "error":
                    raise error_from_reply(frame)
                if kind != "file.data":
                    raise ProtocolError(f"expected 'file.data', got {kind!r}")
                offset = frame.get("offset")
                if offset != total:
                    raise ProtocolError(f"file.data at offset {offset}, expected {total}")
                data = unb64(frame.get("data_b64"), "file.data data_b64")
                total += len(data)
                if into is not None:
                    into.write(data)
                else:
                    parts.append(data)
                if frame.get("eof") is True:
                    break
        finally:
            conn.release(rid)
        return total if into is not None else b"".join(parts)

    def read_text(self, tenant: str, path: str, encoding: str = "utf-8", errors: str = "strict") -> str:
        """A file's content decoded as text."""
        return self.read(tenant, path).decode(encoding, errors)

    def stat(self, tenant: str, path: str) -> FileInfo:
        """A file's or directory's description (a symbolic link is described, not followed)."""
        return FileInfo.from_wire(reply_field(self._client.request("file.stat", tenant=tenant, path=path), "file"))

    def exists(self, tenant: str, path: str) -> bool:
        """``True`` if something is at ``path`` (a link counts, whatever it points to)."""
        from ._errors import NotFound

        try:
            self.stat(tenant, path)
            return True
        except NotFound:
            return False

    def list(self, tenant: str, path: str = "/home", *, limit: Optional[int] = None) -> List[FileInfo]:
        """A directory's entries sorted by name (a file lists itself, as ``ls`` does). More
        than ``limit`` (default 10,000) are cut off: see :meth:`list_page` for the flag."""
        return self.list_page(tenant, path, limit=limit)[0]

    def list_page(
        self, tenant: str, path: str = "/home", *, limit: Optional[int] = None
    ) -> "tuple[List[FileInfo], bool]":
        """As :meth:`list`, with whether the listing was truncated at ``limit``."""
        reply = self._client.request("file.list", tenant=tenant, path=path, limit=limit)
        entries = [FileInfo.from_wire(e) for e in reply_list(reply, "entries")]
        return entries, reply.get("truncated") is True

    def remove(self, tenant: str, path: str, *, recursive: bool = False) -> int:
        """Remove a file, a link (never what it points to) or an empty directory; with
        ``recursive``, a directory and all it holds. Returns how many entries were removed."""
        reply = self._client.request("file.remove", tenant=tenant, path=path, recursive=bool(recursive) or None)
        removed = reply.get("removed")
        return removed if isinstance(removed, int) else 0

    def mkdir(self, tenant: str, path: str, *, parents: bool = False, mode: Optional[int] = None) -> FileInfo:
        """Make a directory (``mode`` default 0o755); ``parents=True`` as ``mkdir -p``."""
        reply = self._client.request("file.mkdir", tenant=tenant, path=path, mode=mode, parents=bool(parents) or None)
        return FileInfo.from_wire(reply_field(reply, "file"))


class Tenants:
    """Tenants (``client.tenants``). Operators only, except where the daemon's access policy
    grants more."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def create(self, name: str, tier: str = "free", *, key_file: Optional[str] = None) -> Dict[str, Any]:
        """Create a tenant (``tier``: ``free``, ``pro`` or ``enterprise``); its TENANT object
        (``tenant``, ``tier``, ``uid``, ``workspace``, ``created_at``). ``key_file``: an
        absolute path on the daemon's host to the tenant's own key (32 bytes or 64 hex digits,
        0600), which then wraps the tenant's data key instead of the host's master key."""
        return reply_dict(self._client.request("tenant.create", name=name, tier=tier, key_file=key_file), "tenant")

    def list(self) -> List[Dict[str, Any]]:
        """Every tenant (TENANT objects)."""
        return reply_list(self._client.request("tenant.list"), "tenants")

    def get(self, name: str) -> Dict[str, Any]:
        """One tenant (:class:`~clawpen.UnknownTenant` if there is none)."""
        return reply_dict(self._client.request("tenant.show", name=name), "tenant")

    def set_quota(self, name: str, **limits: Any) -> Dict[str, Any]:
        """Change a tenant's limits: policy keys as keyword arguments, sizes as strings
        (``set_quota("acme", max_concurrent_runs=4, memory_max="512M")``). Kept across
        restarts. Returns the reply's ``tenant``, ``file`` and ``sources``."""
        return strip_envelope(self._client.request("tenant.set_quota", **set_quota_fields(name, limits)))

    def suspend(self, name: str) -> Dict[str, Any]:
        """Freeze a tenant: submits refused (:class:`~clawpen.Unavailable`, rule
        ``suspended``), queued jobs wait, running jobs frozen. Returns ``tenant``, ``state``
        and ``suspension``."""
        return strip_envelope(self._client.request("tenant.suspend", name=name))

    def resume(self, name: str) -> Dict[str, Any]:
        """Thaw a suspended tenant (also lifts a crash-loop quarantine); ``lifted`` names what
        was lifted."""
        return strip_envelope(self._client.request("tenant.resume", name=name))

    def inspect(self, name: str) -> Dict[str, Any]:
        """What the tenant's running worker actually has, read from the kernel, beside what its
        policy asks (``facts``, ``mismatches``)."""
        return reply_dict(self._client.request("tenant.inspect", name=name), "inspect")

    def offboard(
        self,
        name: str,
        *,
        dry_run: bool = False,
        grace_period_days: Optional[int] = None,
        now: bool = False,
        delete_audit: bool = False,
    ) -> Dict[str, Any]:
        """Offboard a tenant. ``dry_run=True`` changes nothing and returns ``would_remove`` (the
        inventory: workspace files and bytes, job records, secrets, overrides, audit rows).
        Otherwise the tenant is suspended and its secrets revoked at once, and its data is
        destroyed at the end of the grace period (``grace_period_days``, default 30) or, with
        ``now=True``, before the reply (its data key first). ``delete_audit=True`` leaves only
        the offboarding's own audit record. Returns ``removes`` and ``offboarding`` (``state``,
        ``deadline``, ``uid``); :class:`~clawpen.InvalidRequest` with ``rule`` ``offboarding
        in progress`` if it already is."""
        fields: Dict[str, Any] = {"name": name, "dry_run": dry_run}
        if not dry_run:
            fields.update(grace_period_days=grace_period_days, now=now, delete_audit=delete_audit)
        return strip_envelope(self._client.request("tenant.offboard", **fields))

    def restore(self, name: str) -> Dict[str, Any]:
        """Call off an offboarding within its grace period: the tenant, its secrets and its
        data are back (``rule`` ``not offboarding`` or ``grace period over`` otherwise)."""
        return strip_envelope(self._client.request("tenant.restore", name=name))

    def export(self, name: str, to: str) -> Dict[str, Any]:
        """Write the tenant's workspace and its decrypted job history (JSON lines) to ``to``, a
        tar file the daemon creates (an absolute path on its host, never over an existing
        file). Returns ``path``, ``jobs``, ``workspace_entries`` and ``bytes``."""
        return strip_envelope(self._client.request("tenant.export", name=name, to=to))
