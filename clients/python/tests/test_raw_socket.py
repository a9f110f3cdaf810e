"""The daemon's framing rules seen from a raw socket (independent of the client package):
malformed payloads keep the connection, ids are echoed, an oversized header closes it."""

from __future__ import annotations

import json
import socket
import struct
from typing import Any, Dict

from daemon_fixture import CALL_TIMEOUT_S, DaemonTestCase


def send_raw(sock: socket.socket, payload: bytes) -> None:
    sock.sendall(struct.pack(">I", len(payload)) + payload)


def recv_raw(sock: socket.socket) -> Dict[str, Any]:
    def exactly(n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = sock.recv(n - len(buf))
            if not chunk:
                raise EOFError(f"EOF after {len(buf)} of {n} bytes")
            buf += chunk
        return buf

    (n,) = struct.unpack(">I", exactly(4))
    return json.loads(exactly(n).decode("utf-8"))


class RawSocketTest(DaemonTestCase):
    def raw(self) -> socket.socket:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(CALL_TIMEOUT_S)
        s.connect(self.daemon.socket)
        self.addCleanup(s.close)
        return s

    def test_malformed_json_keeps_connection(self) -> None:
        s = self.raw()
        for bad in [b"{not json", b"[1, 2]", b'{"id": 5}', b'{"type": 5, "id": 6}', b"\xff\xfe"]:
            with self.subTest(payload=bad):
                send_raw(s, bad)
                reply = recv_raw(s)
                self.assertEqual((reply["type"], reply["error"]["code"]), ("error", "invalid_request"), reply)
        send_raw(s, b'{"type": "ping", "id": "after"}')
        self.assertEqual(recv_raw(s)["id"], "after")

    def test_unknown_type_and_pipelining(self) -> None:
        s = self.raw()
        send_raw(s, b'{"type": "no.such.thing", "id": 9}')
        reply = recv_raw(s)
        self.assertEqual((reply["type"], reply["id"], reply["error"]["code"]), ("error", 9, "invalid_request"))
        send_raw(s, b'{"type": "ping", "id": "a"}')
        send_raw(s, b'{"type": "ping", "id": 2}')
        send_raw(s, b'{"type": "ping"}')
        ids = sorted(repr(recv_raw(s).get("id")) for _ in range(3))
        self.assertEqual(ids, sorted(["'a'", "2", "None"]))

    def test_frame_too_large_closes_only_that_connection(self) -> None:
        s = self.raw()
        s.sendall(struct.pack(">I", 100 * 1024 * 1024))
        reply = recv_raw(s)
        self.assertEqual(reply["error"]["code"], "frame_too_large", reply)
        self.assertEqual(s.recv(1), b"", "the connection is closed after frame_too_large")
        self.assertEqual(self.client.ping()["type"], "pong", "the daemon keeps serving others")
