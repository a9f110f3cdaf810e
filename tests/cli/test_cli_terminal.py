"""`clawpen submit -it` and `clawpen job attach` on a real terminal, against the real daemon.

Run from the repository root (scripts/test does)::

    swift build
    python3 -m unittest discover -s tests/cli -v

pexpect gives the CLI a pseudo-terminal of its own, as a person's terminal would: raw mode,
window size changes (SIGWINCH), ctrl-p ctrl-q, exit status and the terminal restored afterwards.
The daemon binary is ``$CLAWPEN_BIN``, else ``<repo>/.build/debug/clawpen``; if it is missing
every test FAILS (never skipped).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import termios
import time
import unittest
import uuid

import pexpect

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))


def clawpen() -> str:
    return os.environ.get("CLAWPEN_BIN") or os.path.join(REPO, ".build", "debug", "clawpen")


class TerminalTest(unittest.TestCase):
    tmp = ""
    sock = ""
    proc: subprocess.Popen | None = None

    @classmethod
    def setUpClass(cls) -> None:
        cls.tmp = tempfile.mkdtemp(prefix="cpt-tty-", dir="/tmp")
        cls.sock = os.path.join(cls.tmp, "s.sock")
        log = open(os.path.join(cls.tmp, "daemon.log"), "wb")
        cls.proc = subprocess.Popen(
            [clawpen(), "serve", "--socket", cls.sock, "--state-dir", os.path.join(cls.tmp, "state"),
             "--subuid-file", os.path.join(cls.tmp, "subuid"), "--subgid-file", os.path.join(cls.tmp, "subgid"),
             "--workspace-root", os.path.join(cls.tmp, "ws"), "--policies", os.path.join(REPO, "policies")],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if cls.cli(["ping"]).returncode == 0:
                break
            time.sleep(0.1)
        cls.tenant = "t" + uuid.uuid4().hex[:8]
        r = cls.cli(["tenant", "create", cls.tenant])
        assert r.returncode == 0, r.stderr

    @classmethod
    def tearDownClass(cls) -> None:
        if cls.proc and cls.proc.poll() is None:
            cls.proc.send_signal(signal.SIGTERM)
            try:
                cls.proc.wait(15)
            except subprocess.TimeoutExpired:
                cls.proc.kill()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    @classmethod
    def cli(cls, args: list[str]) -> subprocess.CompletedProcess:
        return subprocess.run([clawpen()] + args, env={**os.environ, "CLAWPEN_SOCKET": cls.sock},
                              capture_output=True, text=True, timeout=60)

    def spawn(self, args: list[str], rows: int = 30, cols: int = 100) -> pexpect.spawn:
        return pexpect.spawn(clawpen(), args, env={**os.environ, "CLAWPEN_SOCKET": self.sock, "TERM": "xterm"},
                             dimensions=(rows, cols), timeout=15)

    def test_python_repl_like_docker_run_it(self) -> None:
        c = self.spawn(["submit", "-it", "--tenant", self.tenant, "--", "python3", "-q"])
        c.expect(">>> ")
        # Raw mode on our side: the echo comes from the job's terminal, not ours (once).
        c.sendline("1+1")
        c.expect("2\r\n>>> ")
        self.assertEqual(c.before.count(b"1+1"), 1, c.before)
        c.sendline("import os; print(os.get_terminal_size(), os.isatty(0), os.getsid(0) == os.getpid())")
        c.expect(r"terminal_size\(columns=100, lines=30\) True True")
        # Our window changes: the job's terminal follows (SIGWINCH, then job.resize).
        c.setwinsize(40, 120)
        deadline = time.monotonic() + 5
        seen = b""
        while time.monotonic() < deadline and b"columns=120, lines=40" not in seen:
            c.sendline("print(os.get_terminal_size())")
            c.expect(">>> ")
            seen = c.before
        self.assertIn(b"columns=120, lines=40", seen)
        # ctrl-C reaches the job as a keystroke: KeyboardInterrupt, the REPL goes on.
        c.sendline("import time; time.sleep(30)")
        time.sleep(0.5)
        c.sendcontrol("c")
        c.expect("KeyboardInterrupt")
        c.expect(">>> ")
        c.sendline("raise SystemExit(5)")
        c.expect(pexpect.EOF)
        c.close()
        self.assertEqual(c.exitstatus, 5, "the job's exit status is ours")

    def test_terminal_is_restored_and_detach_keys_leave_the_job_running(self) -> None:
        c = self.spawn(["submit", "-it", "--tenant", self.tenant, "--", "sh", "-c", "echo ready; sleep 20; echo late"])
        c.expect("ready")
        before = termios.tcgetattr(c.child_fd)
        self.assertFalse(before[3] & termios.ICANON, "raw mode while the job runs")
        c.sendcontrol("p")
        c.sendcontrol("q")
        c.expect("detached")
        c.expect(pexpect.EOF)
        c.close()
        self.assertEqual(c.exitstatus, 0)
        jobs = self.cli(["job", "list", "--tenant", self.tenant, "--state", "running", "--json"])
        self.assertIn("sleep 20", jobs.stdout, "detached, the job keeps running")
        for job in json.loads(jobs.stdout):
            self.cli(["job", "cancel", job["id"]])

    def test_attach_to_a_running_terminal_job(self) -> None:
        r = self.cli(["submit", "--detach", "-it", "--tenant", self.tenant, "--", "sh", "-c",
                      "echo started; read x; echo got $x"])
        self.assertEqual(r.returncode, 0, r.stderr)
        job_id = r.stdout.strip()
        c = self.spawn(["job", "attach", "--replay", job_id])
        c.expect("started")
        c.sendline("hello")
        c.expect("got hello")
        c.expect(pexpect.EOF)
        c.close()
        self.assertEqual(c.exitstatus, 0)


if __name__ == "__main__":
    unittest.main()
