"""The zygote: a small process that forks workers on demand, for the node agent.

Why: a fresh Python interpreter that imports the worker's modules costs ~100 ms of CPU
on a small machine, which is what creating an actor or growing the pool would wait for.
A fork of a process that already imported them costs a few milliseconds. The agent
cannot fork itself safely once it runs ZeroMQ threads, so right at start-up (before any
thread or socket exists) it forks this zygote, which stays single-threaded and does
nothing but fork workers and report their exits.

Preloading (``RAYLITE_PRELOAD=torch``, ``init(preload=...)``; Ray has no such thing):
importing torch, and the torch._dynamo that DistributedDataParallel imports, takes
seconds, which every new worker of a training run would pay. The zygote cannot import
them itself without stalling the forks asked for meanwhile, so once it has forked the
warm pool it forks a *preloader*, a second zygote that imports the modules (only imports
them: no torch op runs there, so no thread pool starts and forking stays safe), at the
lowest CPU priority where it can go back after (so a training run started meanwhile is
not slowed by it), and then takes the requests over. The first zygote stops reading
requests but lives on as the parent of the workers it forked (they die with it), and
the agent hears ``{"preloaded": [...]}`` so the head replaces the workers forked before:
the idle ones at once, leased ones when their lease comes back (actors keep theirs). A module that
fails to import leaves the first zygote serving. What a module reads from the
environment at import time it reads from the node's, not from a worker's runtime_env
(OMP_NUM_THREADS is applied again in each worker).

Protocol over a SOCK_SEQPACKET socket pair, one JSON message per packet:
agent -> zygote ``{"env": {...}, "env_key": k}``; zygote -> agent ``{"spawned": pid,
"env_key": k}`` carrying the read end of the worker's output pipe (SCM_RIGHTS),
``{"exited": pid, "code": c}`` when a worker dies, and ``{"preloaded": [names]}`` once
the preloader serves.
"""

from __future__ import annotations

import importlib
import json
import os
import select
import signal
import socket
import sys
import time

PRELOAD_ENV = "RAYLITE_PRELOAD"
# the preloader starts once no request came for PRELOAD_IDLE_S after the warm pool was
# forked (which the agent asks for once it has registered: init() is past that point),
# or for PRELOAD_START_S when no pool was asked for
PRELOAD_IDLE_S, PRELOAD_START_S = 0.1, 1.0
# what a module leaves to be imported on first use, which a worker would pay for then:
# DistributedDataParallel imports torch._dynamo (800 modules, ~1.5 s) when it is built
ALSO_PRELOAD = {"torch": ["torch.distributed", "torch._dynamo"]}


def preload_modules(value: str | None) -> list[str]:
    """The modules a ``RAYLITE_PRELOAD`` value ("torch,numpy"; "" or None: none) names,
    with the ones each imports lazily (``ALSO_PRELOAD``)."""
    out: list[str] = []
    for name in (m.strip() for m in (value or "").split(",")):
        for m in [name, *ALSO_PRELOAD.get(name, ())] if name else ():
            if m not in out:
                out.append(m)
    return out


def start(worker_main, preload: list[str] | tuple = ()) -> tuple[int, socket.socket]:
    """Fork the zygote; returns (pid, the agent's end of the socket pair). ``preload``:
    modules the workers forked once the preloader is ready have imported already."""
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:
        mine.close()
        try:
            _serve(theirs, parent, worker_main, list(preload))
        finally:
            os._exit(0)
    theirs.close()
    return pid, mine


def _serve(sock: socket.socket, parent: int, worker_main, preload: list[str]) -> None:
    from raylite.core.osutil import die_with_parent

    os.environ["RAYLITE_PARENT_PID"] = str(parent)
    die_with_parent(signal.SIGKILL, watch=False)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    handed_over = None  # the read end of the preloader's "I serve now" pipe
    last, forked = time.monotonic(), False
    while True:
        watch = [sock] + ([handed_over] if handed_over is not None else [])
        ready, _, _ = select.select(watch, [], [], 0.05)
        if handed_over is not None and handed_over in ready:
            took_over = os.read(handed_over, 1) == b"1"  # b"": it failed, keep serving
            os.close(handed_over)
            handed_over = None
            if took_over:
                return _reap_forever(sock)
        if sock in ready:
            try:
                data = sock.recv(1 << 20, socket.MSG_DONTWAIT)
            except BlockingIOError:
                data = None  # the preloader took this one
            if data == b"":
                return  # the agent is gone
            if data:
                _spawn(sock, json.loads(data), worker_main)
                last, forked = time.monotonic(), True
        _reap(sock)
        if preload and time.monotonic() - last > (PRELOAD_IDLE_S if forked else
                                                  PRELOAD_START_S):
            handed_over = _fork_preloader(sock, worker_main, preload)
            preload = []


def _fork_preloader(sock: socket.socket, worker_main, modules: list[str]) -> int:
    """Fork the preloader; returns the read end of the pipe it reports success on."""
    r, w = os.pipe()
    me = os.getpid()
    if os.fork() != 0:
        os.close(w)
        return r
    os.close(r)
    from raylite.core.osutil import die_with_parent

    os.environ["RAYLITE_PARENT_PID"] = str(me)
    die_with_parent(signal.SIGKILL, watch=False)  # before the import: it takes seconds
    try:
        base = _lower_priority()
        for name in modules:
            importlib.import_module(name)
        if base is not None:
            os.setpriority(os.PRIO_PROCESS, 0, base)  # the workers forked next run as usual
    except BaseException as e:  # noqa: BLE001 (any failure: the first zygote serves on)
        print(f"[raylite zygote] not preloading {modules}: {e!r}", file=sys.stderr, flush=True)
        os._exit(1)
    try:
        sock.send(json.dumps({"preloaded": modules}).encode())
        os.write(w, b"1")
        os.close(w)
        _serve(sock, me, worker_main, [])
    finally:
        os._exit(0)


def _lower_priority() -> int | None:
    """Drop to the lowest CPU priority for the import when it can be raised back after
    (CAP_SYS_NICE, or an RLIMIT_NICE that allows it: a forked probe tries); returns the
    priority to go back to. The preload then takes only CPU the node's workers leave
    idle: a training run started at once imports torch in its own workers no slower."""
    base = os.getpriority(os.PRIO_PROCESS, 0)
    probe = os.fork()
    if probe == 0:
        try:
            os.setpriority(os.PRIO_PROCESS, 0, 19)
            os.setpriority(os.PRIO_PROCESS, 0, base)
            os._exit(0)
        except OSError:
            os._exit(1)
    if os.waitstatus_to_exitcode(os.waitpid(probe, 0)[1]) != 0:
        return None
    os.setpriority(os.PRIO_PROCESS, 0, 19)
    return base


def _reap_forever(sock: socket.socket) -> None:
    """The zygote after the hand-over: report its workers' exits until it is killed."""
    while True:
        time.sleep(0.05)
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
        _apply_thread_env()
        try:
            worker_main(forked=True)
        finally:
            os._exit(0)
    os.close(w)
    socket.send_fds(sock, [json.dumps({"spawned": pid, "env_key": req["env_key"]}).encode()],
                    [r])
    os.close(r)


def _apply_thread_env() -> None:
    """A preloaded torch read OMP_NUM_THREADS in the zygote: apply the worker's own."""
    torch = sys.modules.get("torch")
    n = os.environ.get("OMP_NUM_THREADS", "")
    if torch is not None and n.isdigit() and int(n) > 0:
        torch.set_num_threads(int(n))


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
