"""The asyncio client against the real daemon (each test runs its own event loop)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from typing import Any, Awaitable, List

import clawpen
from daemon_fixture import CALL_TIMEOUT_S, DaemonTestCase, unique


class AsyncClientTest(DaemonTestCase):
    def arun(self, coro: Awaitable[Any]) -> Any:
        return asyncio.run(asyncio.wait_for(coro, 120))

    def aclient(self) -> clawpen.AsyncClient:
        return clawpen.AsyncClient(self.daemon.socket, timeout=CALL_TIMEOUT_S)

    def test_run_and_errors(self) -> None:
        async def main() -> None:
            async with self.aclient() as c:
                self.assertEqual((await c.ping())["type"], "pong")
                t = unique()
                await c.tenants.create(t)
                job = await c.run(t, ["sh", "-c", "cat; echo $AGENT_X"], stdin=b"in\n", env={"AGENT_X": "y"})
                self.assertEqual((job.state, job.stdout), ("succeeded", "in\ny\n"))
                with self.assertRaises(clawpen.UnknownTenant):
                    await c.run(unique("nosuch"), ["true"])
                with self.assertRaises(clawpen.PolicyDenied) as cm:
                    await c.run(t, ["su"])
                self.assertIn("commands_deny", cm.exception.rule or "")
                with self.assertRaises(clawpen.JobFailed):
                    await c.run(t, ["false"], check=True)
                sleeper = await c.submit(t, ["sleep", "30"])
                with self.assertRaises(clawpen.RequestTimeout):
                    await c.jobs.wait(sleeper.id, timeout=0.3)
                self.assertEqual((await c.jobs.cancel(sleeper.id)).state, "canceled")
                self.assertIn(t, [x["tenant"] for x in await c.tenants.list()])
                self.assertEqual((await c.status(t))["tenants"][0]["tenant"], t)

        self.arun(main())

    def test_offboard_and_restore(self) -> None:
        async def main() -> None:
            async with self.aclient() as c:
                t = unique()
                await c.tenants.create(t)
                self.assertTrue((await c.run(t, ["true"])).ok)
                would = await c.tenants.offboard(t, dry_run=True)
                self.assertEqual(would["would_remove"]["job_records"], 1)
                self.assertEqual((await c.tenants.offboard(t, grace_period_days=1))["offboarding"]["state"], "grace")
                with self.assertRaises(clawpen.Unavailable):
                    await c.run(t, ["true"])
                await c.tenants.restore(t)
                self.assertTrue((await c.run(t, ["true"])).ok)
                self.assertEqual((await c.tenants.offboard(t, now=True))["offboarding"]["state"], "done")

        asyncio.run(main())

    def test_many_tasks_share_one_connection(self) -> None:
        async def main() -> None:
            async with self.aclient() as c:
                t = unique()
                await c.tenants.create(t, "pro")
                start = time.monotonic()
                slow = asyncio.ensure_future(c.run(t, ["sh", "-c", "sleep 1.5; echo slow"]))
                await asyncio.sleep(0.2)
                quick = await asyncio.gather(*[c.run(t, ["echo", str(i)]) for i in range(6)])
                quick_done = time.monotonic() - start
                self.assertEqual([j.stdout for j in quick], [f"{i}\n" for i in range(6)])
                self.assertEqual((await slow).stdout, "slow\n")
                self.assertLess(quick_done, 1.4, "quick jobs do not wait behind the slow one")

        self.arun(main())

    def test_unreachable(self) -> None:
        async def main() -> None:
            with self.assertRaises(clawpen.DaemonUnreachable):
                await clawpen.AsyncClient(os.path.join(self.daemon.tmp, "missing.sock")).connect()

        self.arun(main())

    def test_stream_and_spawn(self) -> None:
        self.require_stream()

        async def main() -> None:
            async with self.aclient() as c:
                t = unique()
                await c.tenants.create(t, "pro")
                got: List[clawpen.OutputChunk] = []
                handle = await c.stream(t, ["sh", "-c", "echo one; sleep 0.5; echo two >&2"])
                async for chunk in handle:
                    got.append(chunk)
                self.assertEqual(b"".join(x.data for x in got if x.stream == "stdout"), b"one\n")
                self.assertEqual(b"".join(x.data for x in got if x.stream == "stderr"), b"two\n")
                assert handle.result is not None
                self.assertTrue(handle.result.ok)
                async with await c.spawn(t, ["cat"], stdin=True) as cat:
                    await cat.write("ping\n")
                    self.assertEqual(await cat.read_until("ping\n", timeout=10), b"ping\n")
                    await cat.close_stdin()
                    job = await cat.wait(timeout=CALL_TIMEOUT_S)
                self.assertEqual(job.stdout, "ping\n")
                # One task reads the output while another writes the input.
                async with await c.spawn(t, ["cat"], stdin=True) as cat2:

                    async def read_all() -> bytes:
                        return b"".join([chunk.data async for chunk in cat2])

                    reader = asyncio.ensure_future(read_all())
                    for i in range(30):
                        await cat2.write(f"l{i}\n")
                    await cat2.close_stdin()
                    self.assertEqual(await reader, "".join(f"l{i}\n" for i in range(30)).encode())
                seen: List[bytes] = []

                async def collect(chunk: clawpen.OutputChunk) -> None:
                    seen.append(chunk.data)

                await c.run(t, ["echo", "cb"], on_output=collect)
                self.assertEqual(b"".join(seen), b"cb\n")
                # attach (with replay), logs and list of a finished job
                async with await c.attach(job.id, replay=True) as att:
                    self.assertEqual(b"".join([x.data async for x in att]), b"ping\n")
                    assert att.result is not None
                    self.assertEqual(att.result.state, "succeeded")
                logs = await c.jobs.logs(job.id)
                self.assertEqual(b"".join([x.data async for x in logs]), b"ping\n")
                listed = await c.jobs.list(tenant=t, limit=3)
                self.assertEqual(len(listed), 3)
                self.assertIn(job.id, [j.id for j in await c.jobs.list(tenant=t)])

        self.arun(main())

    def test_a_stream_nobody_reads_holds_the_job(self) -> None:
        self.require_stream()

        async def main() -> None:
            async with self.aclient() as c:
                t = unique()
                await c.tenants.create(t, "pro")
                total = 8_000_000
                handle = await c.stream(t, ["head", "-c", str(total), "/dev/zero"])
                await asyncio.sleep(1.5)
                self.assertEqual((await c.jobs.get(handle.id)).state, "running", "the unread stream holds the job back")
                n = 0
                async for chunk in handle:
                    n += len(chunk.data)
                self.assertEqual(n, total)

        self.arun(main())

    def test_files(self) -> None:
        self.require("file.stat")

        async def main() -> None:
            async with self.aclient() as c:
                t = unique()
                await c.tenants.create(t)
                data = os.urandom(1_500_000)
                info = await c.files.write(t, "/home/x.bin", data, chunk_size=256 * 1024)
                self.assertEqual(info.size, len(data))
                self.assertEqual(await c.files.read(t, "/home/x.bin"), data)
                job = await c.run(t, ["sha256sum", "/home/x.bin"])
                self.assertEqual(job.stdout.split()[0], hashlib.sha256(data).hexdigest())
                self.assertIn("x.bin", [e.name for e in await c.files.list(t, "/home")])
                with self.assertRaises(clawpen.NotFound):
                    await c.files.stat(t, "/home/nothing")
                self.assertEqual(await c.files.remove(t, "/home/x.bin"), 1)

        self.arun(main())
