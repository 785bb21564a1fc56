"""The zygote: a small process that forks workers on demand, for the node agent.

Why: a fresh Python interpreter that imports the worker's modules costs ~100 ms of CPU
on a small machine, which is what creating an actor or growing the pool would wait for.
A fork of a process that already imported them costs a few milliseconds. The agent
cannot fork itself safely once it runs ZeroMQ threads, so right at start-up (before any
thread or socket exists) it forks this zygote, which stays single-threaded and does
nothing but fork workers and report their exits.

Protocol over a SOCK_SEQPACKET socket pair, one JSON message per packet:
agent -> zygote ``{"env": {...}, "env_key": k}``; zygote -> agent ``{"spawned": pid,
"env_key": k}`` carrying the read end of the worker's output pipe (SCM_RIGHTS), and
``{"exited": pid, "code": c}`` when a worker dies.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket


def start(worker_main) -> tuple[int, socket.socket]:
    """Fork the zygote; returns (pid, the agent's end of the socket pair)."""
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:
        mine.close()
        try:
            _serve(theirs, parent, worker_main)
        finally:
            os._exit(0)
    theirs.close()
    return pid, mine


def _serve(sock: socket.socket, parent: int, worker_main) -> None:
    from raylite.core.osutil import die_with_parent

    os.environ["RAYLITE_PARENT_PID"] = str(parent)
    die_with_parent(signal.SIGKILL, watch=False)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while True:
        ready, _, _ = select.select([sock], [], [], 0.05)
        if ready:
            data = sock.recv(1 << 20)
            if not data:
                return  # the agent is gone
            req = json.loads(data)
            _spawn(sock, req, worker_main)
        _reap(sock)


def _spawn(sock: socket.socket, req: dict, worker_main) -> None:
    r, w = os.pipe()
    me = os.getpid()
    pid = os.fork()
    if pid == 0:
        sock.close()
        os.close(r)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(w, 1)
        os.dup2(w, 2)
        os.close(w)
        os.environ.clear()
        os.environ.update(req["env"])
        os.environ["RAYLITE_PARENT_PID"] = str(me)  # if the zygote died already, we exit
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        try:
            worker_main(forked=True)
        finally:
            os._exit(0)
    os.close(w)
    socket.send_fds(sock, [json.dumps({"spawned": pid, "env_key": req["env_key"]}).encode()],
                    [r])
    os.close(r)


def _reap(sock: socket.socket) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        sock.send(json.dumps({"exited": pid, "code": os.waitstatus_to_exitcode(status)})
                  .encode())
