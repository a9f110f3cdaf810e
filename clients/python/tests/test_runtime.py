"""The agent runtime through the synchronous client, against the real daemon: output as it is
written, stdin, terminals, signals, attach, logs and list. Each test is skipped (and says so)
when the daemon under test does not have the request yet."""

from __future__ import annotations

import hashlib
import os
import signal
import threading
import time
from typing import List, Tuple

import clawpen
from daemon_fixture import CALL_TIMEOUT_S, DaemonTestCase


def wait_running(client: clawpen.Client, job_id: str) -> None:
    """Until the job has started (attach and logs follow a running job)."""
    deadline = time.monotonic() + 20
    while client.jobs.get(job_id).state == "queued":
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} did not start within 20 s")
        time.sleep(0.02)


def joined(chunks: List[clawpen.OutputChunk], stream: str) -> bytes:
    return b"".join(c.data for c in chunks if c.stream == stream)


class StreamTest(DaemonTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.require_stream()
        self.tenant = self.new_tenant("pro")

    def test_output_arrives_as_written_in_order(self) -> None:
        start = time.monotonic()
        arrivals: List[Tuple[float, clawpen.OutputChunk]] = []
        handle = self.client.stream(self.tenant, ["sh", "-c", "echo one; sleep 1; echo two >&2; sleep 0.2; echo three"])
        self.assertFalse(handle.job.done, "the handle opens when the job is accepted, before it ends")
        for chunk in handle:
            arrivals.append((time.monotonic() - start, chunk))
        chunks = [c for _, c in arrivals]
        self.assertEqual(joined(chunks, "stdout"), b"one\nthree\n")
        self.assertEqual(joined(chunks, "stderr"), b"two\n")
        self.assertFalse(any(c.replay for c in chunks))
        seqs = [c.seq for c in chunks]
        self.assertEqual(seqs, sorted(seqs))
        self.assertEqual(len(set(seqs)), len(seqs))
        # "one" came while the job still slept: at least 0.7 s before the job's end.
        first_at = arrivals[0][0]
        self.assertEqual(chunks[0].data[:4], b"one\n")
        self.assertIsNotNone(handle.result)
        assert handle.result is not None
        self.assertEqual(handle.result.state, "succeeded")
        self.assertEqual(handle.result.stdout, "one\nthree\n", "the final job still has the captured output")
        self.assertLess(first_at, arrivals[-1][0] - 0.7, f"arrivals: {[(round(t, 3), c.data) for t, c in arrivals]}")
        # stderr's "two" was written between stdout's "one" and "three" (apart enough for two
        # pipes to be read in that order), and seq says so.
        order = [c.data.strip() for c in chunks if c.data.strip()]
        self.assertEqual(b"".join(order), b"onetwothree")
        self.assertTrue(handle.closed)

    def test_offsets_and_binary_output(self) -> None:
        chunks = list(self.client.stream(self.tenant, ["sh", "-c", "printf '\\377\\000'; sleep 0.2; printf 'x'"]))
        self.assertEqual(joined(chunks, "stdout"), b"\xff\x00x")
        out = [c for c in chunks if c.stream == "stdout"]
        self.assertEqual(out[0].offset, 0)
        self.assertEqual(out[-1].offset + len(out[-1].data), 3)

    def test_run_with_on_output(self) -> None:
        seen: List[clawpen.OutputChunk] = []
        job = self.client.run(self.tenant, ["sh", "-c", "echo a; echo b >&2"], on_output=seen.append)
        self.assertTrue(job.ok)
        self.assertEqual((joined(seen, "stdout"), joined(seen, "stderr")), (b"a\n", b"b\n"))

    def test_stdin_write_and_eof(self) -> None:
        with self.client.spawn(self.tenant, ["cat"], stdin=True) as cat:
            self.assertTrue(cat.job.stdin_open)
            self.assertEqual(cat.write("hello\n"), 6)
            self.assertEqual(cat.read_until(b"hello\n", timeout=10), b"hello\n")
            cat.write(b"\xff\x00bytes\n")
            self.assertEqual(cat.read_until(b"bytes\n", timeout=10), b"\xff\x00bytes\n")
            cat.close_stdin()
            job = cat.wait(timeout=CALL_TIMEOUT_S)
        self.assertEqual(job.state, "succeeded")
        self.assertEqual(job.stdout_bytes, b"hello\n\xff\x00bytes\n")
        with self.assertRaises(clawpen.InvalidRequest):
            self.client.jobs.write(job.id, "too late")

    def test_one_thread_reads_while_another_writes(self) -> None:
        lines = [f"line {i}\n" for i in range(50)]
        with self.client.spawn(self.tenant, ["cat"], stdin=True) as cat:
            got: List[bytes] = []
            reader = threading.Thread(target=lambda: got.extend(c.data for c in cat))
            reader.start()
            for line in lines:
                cat.write(line)
            cat.close_stdin()
            reader.join(CALL_TIMEOUT_S)
            self.assertFalse(reader.is_alive())
        self.assertEqual(b"".join(got), "".join(lines).encode())
        assert cat.result is not None
        self.assertTrue(cat.result.ok)

    def test_stdin_data_is_the_whole_input(self) -> None:
        # As for run(): the data, then end of file (cat ends by itself).
        chunks = list(self.client.stream(self.tenant, ["cat"], stdin="first\n"))
        self.assertEqual(joined(chunks, "stdout"), b"first\n")
        with self.client.spawn(self.tenant, ["sh", "-c", "cat; echo done"], stdin=b"\x00\xff") as h:
            job = h.wait(timeout=CALL_TIMEOUT_S)
        self.assertEqual(job.stdout_bytes, b"\x00\xffdone\n")
        self.assertFalse(job.stdin_open)

    def test_tty_size_and_resize(self) -> None:
        script = "test -t 0 && echo tty; stty size; read x; stty size"
        with self.client.spawn(self.tenant, ["sh", "-c", script], tty=True, rows=30, cols=100) as sh:
            self.assertTrue(sh.job.tty)
            self.assertIn(b"tty", sh.read_until("30 100", timeout=10))
            sh.resize(50, 132)
            sh.write("\n")
            sh.read_until("50 132", timeout=10)
            job = sh.wait(timeout=CALL_TIMEOUT_S)
        self.assertEqual(job.state, "succeeded")
        both = list(self.client.spawn(self.tenant, ["sh", "-c", "echo out; echo err >&2"], tty=True))
        self.assertEqual({c.stream for c in both}, {"stdout"}, "a terminal has one stream")
        self.assertIn(b"err", joined(both, "stdout"))

    def test_python_repl_on_a_tty(self) -> None:
        with self.client.spawn(self.tenant, ["python3", "-q", "-i"], tty=True) as repl:
            repl.read_until(">>> ", timeout=20)
            start = time.monotonic()
            repl.write("1+1\n")
            echoed = repl.read_until("\n2", timeout=10)
            rtt = time.monotonic() - start
            self.assertIn(b"1+1", echoed)
            repl.read_until(">>> ", timeout=10)
            repl.write("\x03")  # ctrl-C: the terminal sends SIGINT to the foreground group
            repl.read_until("KeyboardInterrupt", timeout=10)
            repl.write("raise SystemExit(7)\n")
            job = repl.wait(timeout=CALL_TIMEOUT_S)
        self.assertEqual((job.state, job.exit_code), ("failed", 7))
        self.assertLess(rtt, 2.0)

    def test_signal_reaches_a_tty_job(self) -> None:
        code = (
            "import os, signal, time\n"
            "signal.signal(signal.SIGUSR1, lambda *a: os.write(1, b'got USR1\\n'))\n"
            "print('ready', flush=True)\n"
            "time.sleep(20)\n"
        )
        for tty in (False, True):
            with self.subTest(tty=tty), self.client.spawn(self.tenant, ["python3", "-c", code], tty=tty) as h:
                h.read_until("ready", timeout=20)
                h.signal(signal.SIGUSR1)
                h.read_until("got USR1", timeout=10)
                h.signal("KILL")
                self.assertEqual(h.wait(timeout=CALL_TIMEOUT_S).signal, signal.SIGKILL)

    def test_cancel_from_the_handle(self) -> None:
        with self.client.spawn(self.tenant, ["sleep", "30"], stdin=True) as h:
            self.assertEqual(h.cancel().state, "canceled")
            self.assertEqual(h.wait(timeout=CALL_TIMEOUT_S).state, "canceled")

    def test_signal_ends_the_job(self) -> None:
        with self.client.spawn(self.tenant, ["sleep", "30"]) as h:
            time.sleep(0.2)
            h.signal("TERM")
            job = h.wait(timeout=CALL_TIMEOUT_S)
        self.assertEqual((job.state, job.signal), ("killed", signal.SIGTERM))
        with self.assertRaises(clawpen.InvalidRequest):
            self.client.jobs.signal(job.id, "TERM")  # it has finished
        with self.assertRaises(clawpen.InvalidRequest):
            self.client.jobs.signal(job.id, "NOSUCHSIG")

    def test_attach_two_clients_detach_and_reattach(self) -> None:
        ticks = "for i in 1 2 3 4 5 6; do echo tick$i; sleep 0.3; done"
        job = self.client.submit(self.tenant, ["sh", "-c", ticks])
        wait_running(self.client, job.id)
        with clawpen.Client(self.daemon.socket, timeout=CALL_TIMEOUT_S) as other:
            a = self.client.attach(job.id)
            b = other.attach(job.id)
            a.read_until("tick2", timeout=10)
            b.read_until("tick2", timeout=10)
            a.detach()
            self.assertTrue(a.closed)
            rest = b"".join(c.data for c in b)
            self.assertIn(b"tick6", rest)
            assert b.result is not None
            self.assertEqual(b.result.state, "succeeded", "a client that detached leaves the job running")
        again = self.client.attach(job.id, replay=True)
        replayed = b"".join(c.data for c in again)
        self.assertEqual(replayed, b"".join(f"tick{i}\n".encode() for i in range(1, 7)))

    def test_attach_sends_input(self) -> None:
        spawned = self.client.spawn(self.tenant, ["cat"], stdin=True)
        job_id = spawned.id
        spawned.detach()  # the job keeps running, its stdin open
        self.assertEqual(self.client.jobs.get(job_id).state, "running")
        with spawned.attach() as h:
            h.write("via attach\n")
            self.assertEqual(h.read_until("via attach\n", timeout=10), b"via attach\n")
            h.close_stdin()
            self.assertEqual(h.wait(timeout=CALL_TIMEOUT_S).stdout, "via attach\n")

    def test_a_stream_nobody_reads_holds_the_job(self) -> None:
        # 8 MB of output (many times what the pipe, the windows and the socket buffers hold): to a
        # reader that keeps up, a debug daemon passes it in about 2 s.
        # The client reads nothing for 1.5 s: the job must still be running (blocked on its
        # full pipe), not finished into a buffer somewhere; then every byte arrives.
        total = 8_000_000
        handle = self.client.stream(self.tenant, ["sh", "-c", f"head -c {total} /dev/zero; echo end >&2"])
        time.sleep(1.5)
        self.assertEqual(self.client.jobs.get(handle.id).state, "running", "the unread stream holds the job back")
        got = {"stdout": 0, "stderr": 0}
        for chunk in handle:
            got[chunk.stream] += len(chunk.data)
        self.assertEqual(got, {"stdout": total, "stderr": 4}, "the stream is not capped like the captured output")
        assert handle.result is not None
        self.assertTrue(handle.result.ok)
        self.assertTrue(handle.result.stdout_truncated, "the captured output is capped")

    def test_input_flood_is_slowed_to_the_jobs_pace(self) -> None:
        # 3 MiB of input to a job that reads nothing for 1 s: write() is held back until the
        # job reads (the daemon takes at most 256 KiB it has not written), then all arrives.
        data = os.urandom(3 * 1024 * 1024)
        with self.client.spawn(self.tenant, ["sh", "-c", "sleep 1; sha256sum"], stdin=True) as h:
            start = time.monotonic()
            self.assertEqual(h.write(data, eof=True), len(data))
            elapsed = time.monotonic() - start
            job = h.wait(timeout=CALL_TIMEOUT_S)
        self.assertEqual(job.stdout.split()[0], hashlib.sha256(data).hexdigest())
        self.assertGreater(elapsed, 0.7, "the writer waited for the job to read")

    def test_unknown_job(self) -> None:
        with self.assertRaises(clawpen.UnknownJob):
            self.client.jobs.write("0196a0c3e2f1-000000000000dead", "x")
        with self.assertRaises(clawpen.UnknownJob):
            self.client.attach("0196a0c3e2f1-000000000000dead")


class LogsAndListTest(DaemonTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.tenant = self.new_tenant("pro")

    def test_logs_and_follow(self) -> None:
        self.require("job.logs")
        job = self.client.submit(self.tenant, ["sh", "-c", "echo out1; echo err1 >&2; sleep 0.6; echo out2"])
        wait_running(self.client, job.id)
        with self.client.jobs.logs(job.id, follow=True) as follow:
            chunks = list(follow)
        self.assertEqual(joined(chunks, "stdout"), b"out1\nout2\n")
        self.assertEqual(joined(chunks, "stderr"), b"err1\n")
        assert follow.result is not None
        self.assertEqual(follow.result.state, "succeeded")
        kept = list(self.client.jobs.logs(job.id))
        self.assertTrue(all(c.replay for c in kept), "a finished job's logs are its kept output, sent again")
        self.assertEqual(joined(kept, "stdout"), b"out1\nout2\n")
        self.assertEqual(joined(kept, "stderr"), b"err1\n")
        streams = [c.stream for c in kept]
        self.assertEqual(streams, sorted(streams, key=lambda s: s != "stdout"), "stdout's chunks, then stderr's")

    def test_list_filters(self) -> None:
        self.require("job.list")
        ok = [self.client.run(self.tenant, ["echo", str(i)]) for i in range(2)]
        bad = self.client.run(self.tenant, ["false"])
        sleeper = self.client.submit(self.tenant, ["sleep", "30"])
        try:
            time.sleep(0.3)
            listed = self.client.jobs.list(tenant=self.tenant)
            self.assertEqual([j.id for j in listed], [sleeper.id, bad.id, ok[1].id, ok[0].id], "newest first")
            self.assertEqual(listed[0].state, "running")
            self.assertEqual(listed[-1].stdout, "", "a list carries no output")
            self.assertEqual([j.id for j in self.client.jobs.list(tenant=self.tenant, state="failed")], [bad.id])
            self.assertEqual(len(self.client.jobs.list(tenant=self.tenant, limit=2)), 2)
        finally:
            self.client.jobs.cancel(sleeper.id)
