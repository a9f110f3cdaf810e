#!/usr/bin/env python3
# A stand-in for systemd's file descriptor store, for the upgrade tests (UpgradeTests.swift):
#   fdstore.py NOTIFY_PATH CONTROL_DIR
# Binds NOTIFY_PATH (the daemon's NOTIFY_SOCKET) and keeps what FDSTORE=1 messages pass, by
# FDNAME=; FDSTOREREMOVE=1 drops a name. Every message goes to CONTROL_DIR/messages, the names
# kept to CONTROL_DIR/names after each change. When CONTROL_DIR/start.json appears
# ({"argv": [...], "env": {...}, "log": PATH}), it starts that command the way systemd starts
# a service: the kept descriptors at 3, 4, ... with LISTEN_FDS, LISTEN_FDNAMES and LISTEN_PID
# (set by the exec'ing shell to its own pid), and writes its pid to CONTROL_DIR/started. On
# SIGTERM it closes everything it keeps (as systemd does when the service stops for good).
import array, json, os, signal, socket, sys

notify_path, ctl = sys.argv[1], sys.argv[2]
sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
sock.bind(notify_path)
sock.settimeout(0.05)
kept = []  # (name, fd), in the order stored
children = []


def save_names():
    with open(os.path.join(ctl, "names.tmp"), "w") as f:
        f.write("".join(n + "\n" for n, _ in kept))
    os.rename(os.path.join(ctl, "names.tmp"), os.path.join(ctl, "names"))


def stop(*_):
    for _, fd in kept:
        os.close(fd)
    sys.exit(0)


signal.signal(signal.SIGTERM, stop)
save_names()
while True:
    try:
        msg, anc, _, _ = sock.recvmsg(65536, socket.CMSG_SPACE(253 * 4))
    except socket.timeout:
        msg, anc = None, []
    if msg is not None:
        fds = array.array("i")
        for level, kind, data in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(data[: len(data) - (len(data) % fds.itemsize)])
        fields = dict(l.split("=", 1) for l in msg.decode().split("\n") if "=" in l)
        with open(os.path.join(ctl, "messages"), "a") as f:
            f.write(msg.decode().replace("\n", " ") + (" fds=%d" % len(fds)) + "\n")
        if fields.get("FDSTORE") == "1":
            for fd in fds:
                kept.append((fields.get("FDNAME", "stored"), fd))
            save_names()
        else:
            for fd in fds:
                os.close(fd)
        if fields.get("FDSTOREREMOVE") == "1":
            for n, fd in [k for k in kept if k[0] == fields.get("FDNAME")]:
                os.close(fd)
            kept = [k for k in kept if k[0] != fields.get("FDNAME")]
            save_names()
    start = os.path.join(ctl, "start.json")
    if os.path.exists(start):
        spec = json.load(open(start))
        os.remove(start)
        fds = [fd for _, fd in kept]
        env = dict(spec["env"], LISTEN_FDS=str(len(fds)), LISTEN_FDNAMES=":".join(n for n, _ in kept))
        log = open(spec["log"], "a")

        def place():
            # The kept descriptors to 3, 4, ...: first out of the way, then into place.
            high = [os.dup(fd) for fd in fds]
            moved = [os.dup2(h, 100 + i) for i, h in enumerate(high)]
            for i in range(len(fds)):
                os.dup2(100 + i, 3 + i)
                os.close(100 + i)
            os.closerange(3 + len(fds), 100)

        p = os.fork()
        if p == 0:
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
            place()
            argv = ["/bin/sh", "-c", 'LISTEN_PID=$$; export LISTEN_PID; exec "$@"', "sh"] + spec["argv"]
            os.execve("/bin/sh", argv, env)
        children.append(p)
        with open(os.path.join(ctl, "started"), "w") as f:
            f.write(str(p))
    for c in list(children):
        try:
            if os.waitpid(c, os.WNOHANG)[0] == c:
                children.remove(c)
        except ChildProcessError:
            children.remove(c)
