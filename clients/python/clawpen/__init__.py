"""Python client for clawpen, the process-per-tenant sandbox supervisor.

Run an agent's tool calls inside a tenant's sandbox, follow their output as it is written,
talk to interactive processes on a terminal, and move the tenant's files in and out, over the
daemon's Unix socket (``docs/protocol.md`` in the clawpen repository)::

    import clawpen

    with clawpen.Client() as client:          # socket: argument, $CLAWPEN_SOCKET, /run/clawpen/clawpen.sock
        job = client.run("acme", ["python3", "-c", "print(6 * 7)"])
        print(job.state, job.stdout)           # succeeded 42

        for chunk in client.stream("acme", ["sh", "-c", "echo one; sleep 1; echo two"]):
            print(chunk.stream, chunk.data)    # as the job writes it

        client.files.write("acme", "/home/data.csv", b"a,b\\n1,2\\n")
        print(client.files.read("acme", "/home/data.csv"))

    async with clawpen.AsyncClient() as client:   # the same API, awaitable
        job = await client.run("acme", ["true"])

Refusals raise a subclass of :class:`ClawpenError` per error code (:class:`QuotaExceeded`
with ``retry_after``, :class:`PolicyDenied` with ``rule``, :class:`UnknownTenant`, ...). The
package uses the standard library only.
"""

from ._aio import AsyncClient, AsyncFiles, AsyncJobHandle, AsyncJobs, AsyncTenants
from ._client import Client, Files, JobHandle, Jobs, Tenants
from ._errors import (
    ClawpenError,
    DaemonUnreachable,
    FileTooLarge,
    FrameTooLarge,
    Internal,
    InvalidRequest,
    InvalidTenant,
    JobFailed,
    NotFound,
    OOMKilled,
    PermissionDenied,
    PolicyDenied,
    ProtocolError,
    QuotaExceeded,
    RequestTimeout,
    TimedOut,
    Unavailable,
    UnknownJob,
    UnknownTenant,
    WorkerCrashed,
    error_from_reply,
)
from ._models import FINAL_STATES, FileInfo, Job, OutputChunk
from ._wire import DEFAULT_SOCKET, MAX_FRAME_BYTES, FrameReader, encode_frame, resolve_socket

__version__ = "0.2.0"

__all__ = [
    "AsyncClient",
    "AsyncFiles",
    "AsyncJobHandle",
    "AsyncJobs",
    "AsyncTenants",
    "Client",
    "ClawpenError",
    "DEFAULT_SOCKET",
    "DaemonUnreachable",
    "FINAL_STATES",
    "FileInfo",
    "FileTooLarge",
    "Files",
    "FrameReader",
    "FrameTooLarge",
    "Internal",
    "InvalidRequest",
    "InvalidTenant",
    "Job",
    "JobFailed",
    "JobHandle",
    "Jobs",
    "MAX_FRAME_BYTES",
    "NotFound",
    "OOMKilled",
    "OutputChunk",
    "PermissionDenied",
    "PolicyDenied",
    "ProtocolError",
    "QuotaExceeded",
    "RequestTimeout",
    "Tenants",
    "TimedOut",
    "Unavailable",
    "UnknownJob",
    "UnknownTenant",
    "WorkerCrashed",
    "encode_frame",
    "error_from_reply",
    "resolve_socket",
]
