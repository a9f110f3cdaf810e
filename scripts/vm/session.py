#!/usr/bin/env python3
"""The interactive half of the VM's upgrade check, over the socket as a service would.

  session.py start SOCKET TENANT   starts `echo ready; read x; echo got-$x` on a terminal
                                   (stdin open, streamed), waits for "ready", prints the job id
                                   and leaves (its client goes away; the job runs on)
  session.py resume SOCKET JOB     attaches with a replay, types "hello", prints what the job
                                   printed in all and its final state
"""
import base64, json, socket, struct, sys


def conn(path):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(30)
    s.connect(path)
    return s


def send(s, obj):
    b = json.dumps(obj).encode()
    s.sendall(struct.pack(">I", len(b)) + b)


def recv(s):
    def exactly(n):
        out = b""
        while len(out) < n:
            chunk = s.recv(n - len(out))
            if not chunk:
                raise EOFError("connection closed")
            out += chunk
        return out
    (n,) = struct.unpack(">I", exactly(4))
    return json.loads(exactly(n))


def output(frame):
    return base64.b64decode(frame.get("data_b64", "")).decode(errors="replace") if frame.get("type") == "output" else ""


def start(path, tenant):
    s = conn(path)
    send(s, {"type": "submit", "id": 1, "tenant": tenant, "argv": ["sh", "-c", "echo ready; read x; echo got-$x"],
             "stdin_open": True, "tty": True, "stream": True})
    job, text = None, ""
    while "ready" not in text:
        f = recv(s)
        if f.get("type") == "accepted":
            job = f["job"]["id"]
        elif f.get("type") == "error":
            sys.exit("refused: %s" % f)
        text += output(f)
    print(job)


def resume(path, job):
    s = conn(path)
    send(s, {"type": "job.attach", "id": 1, "job_id": job, "replay": True})
    send(s, {"type": "job.input", "id": 2, "job_id": job, "data_b64": base64.b64encode(b"hello\n").decode()})
    text = ""
    while True:
        f = recv(s)
        text += output(f)
        if f.get("type") == "job" and f.get("id") == 1:
            print(json.dumps({"text": text, "state": f["job"]["state"]}))
            return
        if f.get("type") == "error" and f.get("id") == 1:
            sys.exit("attach refused: %s" % f)


if __name__ == "__main__":
    {"start": start, "resume": resume}[sys.argv[1]](sys.argv[2], sys.argv[3])
