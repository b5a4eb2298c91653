"""A fork server that misbehaves on purpose, one way per MODE (argv[1]):

  garbage      sends bytes that are not protocol, then sleeps
  never_ready  never says anything
  os_fork      reports ready, then forks with os.fork() (its child is NOT a
               child of ringmux) and reports that child
  die_on_spawn reports ready, exits when the first spawn request arrives
  silent       reports ready, never answers spawn requests
  fatal        reports a fatal setup error and exits
  leak         reports ready; per spawn forks a child of ringmux
               (CLONE_PARENT) that exits at once, never reports it, and
               answers with an error: ringmux must still reap the zombie

It writes its pid to $BAD_FORK_SERVER_PIDS (one line per start) so tests can
count restarts.
"""

import os
import socket
import sys
import time

mode = sys.argv[1]
if os.environ.get("BAD_FORK_SERVER_PIDS"):
    with open(os.environ["BAD_FORK_SERVER_PIDS"], "a") as f:
        f.write(f"{os.getpid()}\n")
chan = socket.socket(fileno=int(os.environ["RINGMUX_FORK_SERVER_FD"]))


def send(obj, fds=()):
    import json

    data = json.dumps({"v": 1, **obj}).encode()
    if fds:
        socket.send_fds(chan, [data], list(fds))
    else:
        chan.send(data)


if mode == "garbage":
    chan.send(b"this is not json")
    time.sleep(300)
elif mode == "never_ready":
    time.sleep(300)
elif mode == "fatal":
    send({"type": "fatal", "error": "ImportError: no module named my_tools"})
    sys.exit(1)
send({"type": "ready", "pid": os.getpid()})
while True:
    data, fds, _, _ = socket.recv_fds(chan, 65536, 4)
    if not data:
        sys.exit(0)
    import json

    msg = json.loads(data)
    if mode == "die_on_spawn":
        os._exit(7)
    if mode == "silent":
        continue
    if mode == "leak":
        from ringmux_fork import clone

        pid, pidfd = clone.fork_into_parent()
        if pid == 0:
            os._exit(0)
        os.close(pidfd)
        for fd in fds:
            os.close(fd)
        send({"type": "error", "id": msg["id"], "error": "lost the child on purpose"})
        continue
    if mode == "os_fork":
        pid = os.fork()
        if pid == 0:
            time.sleep(300)
            os._exit(0)
        pidfd = os.pidfd_open(pid)
        send({"type": "spawned", "id": msg["id"], "pid": pid}, [pidfd])
        os.close(pidfd)
        for fd in fds:
            os.close(fd)
        # reap it when it dies (so this test zygote leaves no zombie of its own)
        continue
