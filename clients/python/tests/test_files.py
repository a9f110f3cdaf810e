"""A tenant's files through ``client.files``, against the real daemon: content checked by hash
inside the sandbox, chunked transfers, file objects, listings, and every refused path shape the
protocol names. Skipped (saying so) while the daemon under test has no file requests."""

from __future__ import annotations

import hashlib
import io
import os
import tempfile

import clawpen
from daemon_fixture import DaemonTestCase


class FilesTest(DaemonTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.require("file.stat")
        self.tenant = self.new_tenant()
        self.files = self.client.files

    def sandbox_sha256(self, path: str) -> str:
        """The file's hash as a job of the tenant computes it inside the sandbox."""
        job = self.client.run(self.tenant, ["sha256sum", path])
        self.assertTrue(job.ok, job.stderr)
        return job.stdout.split()[0]

    def test_write_read_small(self) -> None:
        info = self.files.write(self.tenant, "/home/a.txt", b"hello\n")
        self.assertIsInstance(info, clawpen.FileInfo)
        self.assertEqual(
            (info.path, info.name, info.type, info.size, info.mode), ("/home/a.txt", "a.txt", "file", 6, 0o644)
        )
        self.assertEqual(info.mode_string, "-rw-r--r--")
        self.assertEqual(self.files.read(self.tenant, "/home/a.txt"), b"hello\n")
        self.assertEqual(self.client.run(self.tenant, ["cat", "/home/a.txt"]).stdout, "hello\n")
        tenant_uid = self.client.tenants.get(self.tenant)["uid"]
        self.assertEqual(info.uid, tenant_uid, "the worker writes as the tenant's uid")
        self.files.write(self.tenant, "/home/a.txt", "wörld", mode=0o600)
        self.assertEqual(self.files.read_text(self.tenant, "/home/a.txt"), "wörld")
        self.assertEqual(self.files.stat(self.tenant, "/home/a.txt").mode, 0o600)
        self.files.write(self.tenant, "/home/empty", b"")
        self.assertEqual(self.files.read(self.tenant, "/home/empty"), b"")

    def test_binary_file_in_chunks_checked_by_hash(self) -> None:
        data = os.urandom(3 * 1024 * 1024 + 12345)
        want = hashlib.sha256(data).hexdigest()
        info = self.files.write(self.tenant, "/home/blob.bin", data, chunk_size=256 * 1024)
        self.assertEqual(info.size, len(data))
        self.assertEqual(self.sandbox_sha256("/home/blob.bin"), want)
        self.assertEqual(
            hashlib.sha256(self.files.read(self.tenant, "/home/blob.bin", chunk_size=64 * 1024)).hexdigest(), want
        )
        # A file made inside the sandbox comes out exactly.
        self.assertTrue(self.client.run(self.tenant, ["sh", "-c", "head -c 2000000 /dev/urandom > /tmp/r.bin"]).ok)
        self.assertEqual(
            hashlib.sha256(self.files.read(self.tenant, "/tmp/r.bin")).hexdigest(), self.sandbox_sha256("/tmp/r.bin")
        )

    def test_file_objects(self) -> None:
        data = os.urandom(700 * 1024)
        with tempfile.TemporaryFile() as f:
            f.write(data)
            f.seek(0)
            self.files.write(self.tenant, "/home/from-file", f, chunk_size=100 * 1024)
        self.files.write(self.tenant, "/home/from-bytesio", io.BytesIO(data))
        for path in ("/home/from-file", "/home/from-bytesio"):
            sink = io.BytesIO()
            self.assertEqual(self.files.read(self.tenant, path, sink, chunk_size=128 * 1024), len(data))
            self.assertEqual(sink.getvalue(), data, path)

    def test_list_stat_mkdir_remove(self) -> None:
        d = self.files.mkdir(self.tenant, "/home/d")
        self.assertTrue(d.is_dir)
        self.assertEqual(d.mode, 0o755)
        for name in ("b", "a", "c"):
            self.files.write(self.tenant, f"/home/d/{name}", name.encode())
        self.assertTrue(self.client.run(self.tenant, ["ln", "-s", "/etc/passwd", "/home/d/link"]).ok)
        listed = self.files.list(self.tenant, "/home/d")
        self.assertEqual([e.name for e in listed], ["a", "b", "c", "link"])
        link = listed[-1]
        self.assertEqual((link.type, link.target), ("symlink", "/etc/passwd"))
        self.assertTrue(
            self.files.stat(self.tenant, "/home/d/link").is_symlink, "stat describes the link, not its target"
        )
        self.assertEqual([e.name for e in self.files.list(self.tenant, "/home/d/a")], ["a"], "a file lists itself")
        entries, truncated = self.files.list_page(self.tenant, "/home/d", limit=2)
        self.assertEqual((len(entries), truncated), (2, True))
        self.assertTrue(self.files.exists(self.tenant, "/home/d/a"))
        self.assertFalse(self.files.exists(self.tenant, "/home/d/zz"))
        self.assertEqual(self.files.remove(self.tenant, "/home/d/link"), 1)
        self.assertTrue(
            self.client.run(self.tenant, ["test", "-f", "/etc/passwd"]).ok, "removing a link leaves its target"
        )
        with self.assertRaises(clawpen.InvalidRequest):
            self.files.remove(self.tenant, "/home/d")  # not empty
        self.assertEqual(self.files.remove(self.tenant, "/home/d", recursive=True), 4)
        self.assertFalse(self.files.exists(self.tenant, "/home/d"))
        deep = self.files.mkdir(self.tenant, "/home/x/y/z", parents=True)
        self.assertEqual(deep.path, "/home/x/y/z")
        self.files.mkdir(self.tenant, "/home/x/y/z", parents=True)  # as mkdir -p: no error
        with self.assertRaises(clawpen.InvalidRequest):
            self.files.mkdir(self.tenant, "/home/x/y/z")
        with self.assertRaises(clawpen.NotFound):
            self.files.mkdir(self.tenant, "/home/nope/sub")

    def test_not_found(self) -> None:
        with self.assertRaises(clawpen.NotFound) as cm:
            self.files.read(self.tenant, "/home/missing")
        self.assertIsInstance(cm.exception, FileNotFoundError)
        self.assertEqual(cm.exception.path, "/home/missing")
        self.assertIn("/home/missing", cm.exception.message)
        with self.assertRaises(clawpen.NotFound):
            self.files.write(self.tenant, "/home/no/dir/f", b"x")

    def test_refused_paths(self) -> None:
        self.assertTrue(self.client.run(self.tenant, ["ln", "-s", "/etc", "/home/etc-link"]).ok)
        cases = [
            # docs/protocol.md lists `..` under invalid_request; the daemon refuses it by rule
            # beneath_root. Either is a refusal that names the path and why.
            ("read", "/home/../etc/passwd", (clawpen.InvalidRequest, clawpen.PolicyDenied), {None, "beneath_root"}),
            ("read", "home/relative", clawpen.InvalidRequest, None),
            ("read", "/home/a\x00b", clawpen.InvalidRequest, None),
            ("read", "/home/etc-link/passwd", clawpen.PolicyDenied, {"no_symlinks"}),
            ("read", "/proc/self/environ", clawpen.PolicyDenied, {"pseudo_filesystem"}),
            ("read", "/proc/self/root/etc/passwd", clawpen.PolicyDenied, {"pseudo_filesystem", "no_symlinks"}),
            ("read", "/home/" + "n" * 256, clawpen.PolicyDenied, {"name_max"}),
            ("write", "/usr/bin/evil", clawpen.PolicyDenied, {"read_only_mount", "writable_roots"}),
            ("write", "/etc/passwd", clawpen.PolicyDenied, {"read_only_mount", "writable_roots"}),
            ("write", "/home/etc-link/evil", clawpen.PolicyDenied, {"no_symlinks"}),
            ("mkdir", "/usr/evil", clawpen.PolicyDenied, {"read_only_mount", "writable_roots"}),
            ("remove", "/home", clawpen.PolicyDenied, {"writable_roots", "read_only_mount"}),
        ]
        for op, path, cls, rules in cases:
            with self.subTest(op=op, path=path):
                with self.assertRaises(cls) as cm:
                    if op == "read":
                        self.files.read(self.tenant, path)
                    elif op == "write":
                        self.files.write(self.tenant, path, b"x")
                    elif op == "mkdir":
                        self.files.mkdir(self.tenant, path)
                    else:
                        self.files.remove(self.tenant, path)
                err = cm.exception
                if rules is not None:
                    self.assertIn(err.rule, rules, err.message)
                if "\x00" not in path:
                    self.assertIn(path[:40], err.message, "a refusal names the path")
        self.assertTrue(self.client.run(self.tenant, ["test", "!", "-e", "/usr/bin/evil"]).ok)

    def test_file_max_bytes(self) -> None:
        self.client.tenants.set_quota(self.tenant, file_max_bytes=100_000)
        self.files.write(self.tenant, "/home/keep", b"old")
        with self.assertRaises(clawpen.FileTooLarge) as cm:
            self.files.write(self.tenant, "/home/keep", b"x" * 200_000)
        self.assertEqual(cm.exception.rule, "file_max_bytes")
        # Without a size announced (a stream), the daemon counts the chunks as they come.
        with self.assertRaises(clawpen.FileTooLarge):
            self.files.write(self.tenant, "/home/keep", _Unsized(b"y" * 300_000), chunk_size=32 * 1024)
        self.assertEqual(self.files.read(self.tenant, "/home/keep"), b"old", "a refused put leaves the old file")
        names = [e.name for e in self.files.list(self.tenant, "/home")]
        self.assertFalse([n for n in names if n.startswith(".clawpen-put-")], names)
        # A file made inside the sandbox over the limit is refused on the way out.
        self.assertTrue(self.client.run(self.tenant, ["sh", "-c", "head -c 150000 /dev/zero > /home/big"]).ok)
        with self.assertRaises(clawpen.FileTooLarge):
            self.files.read(self.tenant, "/home/big")
        self.assertEqual(self.files.read(self.tenant, "/home/keep"), b"old", "the connection still works")


class _Unsized(io.RawIOBase):
    """A readable stream whose size cannot be known in advance."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, b: "bytearray") -> int:  # type: ignore[override]
        chunk = self._data.read(len(b))
        b[: len(chunk)] = chunk
        return len(chunk)
