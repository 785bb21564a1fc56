"""The node agent: one per (virtual) node. Starts and watches workers, owns the node's
shared-memory store directory, forwards worker output, serves object bytes to other hosts.

Why a separate process: workers come and go (crashes, kills, actor exits); someone on the
node must notice each exit at once and tell the head, keep a warm pool ready, and clean
the store when the node goes away. The agent does only that, so it stays responsive.

Workers are forked by a zygote (see ``zygote.py``) that the agent forks at start-up, so a
new worker costs a fork (milliseconds), not a fresh interpreter (~100 ms).

Run: ``python -m raylite.core.agent --head ADDR --session S --node-id N --resources JSON``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import time

from raylite.core import protocol as P
from raylite.core import store
from raylite.core.osutil import accelerator_type, die_with_parent, drain_fd, signal_wakeup_fd
from raylite.core.transfer import Transfers

log = logging.getLogger("raylite.agent")

HEARTBEAT_S = 0.3


class Agent:
    def __init__(self, args, token: str | None):
        self.head_addr = args.head
        self.session = args.session
        self.node_id = args.node_id
        self.resources = json.loads(args.resources)
        self.labels = json.loads(args.labels or "{}")
        if self.resources.get("GPU") and "raylite.io/accelerator-type" not in self.labels:
            acc = accelerator_type()
            if acc:  # as Ray: a label, and a resource that accelerator_type= asks for
                self.labels["raylite.io/accelerator-type"] = acc
                self.resources.setdefault(f"accelerator_type:{acc}", 1.0)
        self.token = token
        self.bind_host = args.host
        self.warm = args.warm
        self.store_dir = store.node_dir(self.session, self.node_id)
        os.makedirs(self.store_dir, exist_ok=True)
        st = os.statvfs(self.store_dir)
        self.shm_size = st.f_blocks * st.f_frsize  # the store's room when no capacity is set
        self.children: dict[int, dict] = {}  # pid -> {"fd", "buf", "env_key"}
        self.poller = None
        self.running = True

    # ------------------------------------------------------------------ workers
    def worker_env(self, env_vars: dict, env_key: str) -> dict:
        env = dict(os.environ)
        env.update({k: str(v) for k, v in env_vars.items()})
        env.update({"RAYLITE_HEAD": self.head_addr, "RAYLITE_SESSION": self.session,
                    "RAYLITE_NODE_ID": self.node_id, "RAYLITE_ENV_KEY": env_key,
                    "PYTHONUNBUFFERED": "1", "RAYLITE_BIND_HOST": self.bind_host})
        return env

    def spawn_worker(self, env_vars: dict, env_key: str) -> None:
        """Ask the zygote to fork a worker (it answers with the pid and output pipe)."""
        self.zygote_sock.send(json.dumps({"env": self.worker_env(env_vars, env_key),
                                          "env_key": env_key}).encode())

    def on_zygote(self) -> None:
        """A message from the zygote: a worker was forked, or one exited."""
        data, fds, _, _ = socket.recv_fds(self.zygote_sock, 1 << 16, 4)
        if not data:
            self.running = False  # the zygote died: this node cannot run workers
            return
        msg = json.loads(data)
        if "spawned" in msg:
            self.add_child(msg["spawned"], fds[0], msg["env_key"])
        elif "preloaded" in msg:  # the workers forked before lack the modules
            self.send_head(P.RETIRE_IDLE, {"node_id": self.node_id,
                                           "pids": list(self.children)})
        else:
            self.child_exited(msg["exited"], msg["code"])

    def add_child(self, pid: int, fd: int, env_key: str) -> None:
        os.set_blocking(fd, False)
        self.children[pid] = {"fd": fd, "buf": b"", "env_key": env_key}
        self.poller.register(fd, 1)  # zmq.POLLIN

    def child_exited(self, pid: int, code: int) -> None:
        child = self.children.pop(pid, None)
        if child is None:
            return
        self.read_output(pid, child, final=True)
        # unregister before closing: a new pipe may reuse the fd number at once
        self.poller.unregister(child["fd"])
        os.close(child["fd"])
        reason = f"exit code {code}" if code >= 0 else f"killed by signal {-code}"
        self.send_head(P.WORKER_EXITED, {"pid": pid, "node_id": self.node_id,
                                         "reason": reason, "env_key": child["env_key"]})

    def read_output(self, pid: int, child: dict, final: bool = False) -> None:
        try:
            data = os.read(child["fd"], 1 << 16)
        except (BlockingIOError, OSError):
            data = b""
        buf = child["buf"] + data
        lines = buf.split(b"\n")
        child["buf"] = b"" if final else lines.pop()
        if data and child["buf"]:
            child["partial_since"] = child.get("partial_since") or time.monotonic()
        lines = [ln for ln in lines if ln]
        if lines:
            prefix = f"(pid={pid}, node={self.node_id}) "
            self.send_head(P.LOG, {"lines": [prefix + ln.decode(errors="replace")
                                             for ln in lines]})

    def flush_partial_lines(self) -> None:
        """Forward output that has waited 0.1 s for its newline (progress bars, prompts)."""
        now = time.monotonic()
        for pid, child in self.children.items():
            since = child.get("partial_since")
            if child["buf"] and since and now - since > 0.1:
                child["buf"] += b"\n"
                child["partial_since"] = None
                self.read_output(pid, child)

    # ------------------------------------------------------------------ messaging
    def send_head(self, msg_type: bytes, body: dict) -> None:
        self.outbox.send(self.head_addr, P.encode(msg_type, body))

    def on_spawn(self, body: dict) -> None:
        self.spawn_worker(body.get("env_vars") or {}, body.get("env_key", ""))

    def on_kill_worker(self, body: dict) -> None:
        pid = body.get("pid")
        if pid in self.children:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def on_shutdown(self, body: dict) -> None:
        self.running = False

    def on_rejoin(self, body: dict) -> None:
        """The head declared this node dead (its heartbeats stopped for a while) and now
        hears from it again: its workers and objects are gone for the cluster, so kill
        the workers, empty the store and register again as a new node (``node_id``)."""
        log.warning("node %s was declared dead by the head; rejoining as %s",
                    self.node_id, body["node_id"])
        for pid, child in list(self.children.items()):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.poller.unregister(child["fd"])  # their exits are not news any more
            os.close(child["fd"])
        self.wait_gone(list(self.children))
        self.children.clear()
        self.transfers.fail_all("this node rejoined the cluster as a new node")
        store.remove_dir(self.store_dir)
        self.node_id = body["node_id"]
        self.store_dir = store.node_dir(self.session, self.node_id)
        os.makedirs(self.store_dir, exist_ok=True)
        self.register()
        for _ in range(self.warm):
            self.spawn_worker({}, "")

    def register(self) -> None:
        self.send_head(P.REGISTER_NODE, {
            "node_id": self.node_id, "addr": self.addr, "resources": self.resources,
            "labels": self.labels, "host": socket.gethostname(), "pid": os.getpid(),
            "warm": self.warm})

    def run(self) -> None:
        import zmq

        from raylite.core.outbox import Outbox
        from raylite.core.transport import Transport

        self.transport = Transport(self.token, self.bind_host)
        self.outbox = Outbox(self.transport)
        self.inbox, self.addr = self.transport.bind()
        self.transfers = Transfers(self)
        self.register()
        handlers = {P.SPAWN_WORKER: self.on_spawn, P.KILL_WORKER: self.on_kill_worker,
                    P.PULL: self.transfers.on_pull,
                    P.FETCH_CHUNK: self.transfers.on_fetch_chunk, P.SHUTDOWN: self.on_shutdown,
                    P.CHUNK: self.transfers.on_chunk, P.REJOIN: self.on_rejoin}
        poller = self.poller = zmq.Poller()
        poller.register(self.inbox, zmq.POLLIN)
        poller.register(self.zygote_sock.fileno(), zmq.POLLIN)
        wake = signal_wakeup_fd()
        poller.register(wake, zmq.POLLIN)
        for _ in range(self.warm):
            self.spawn_worker({}, "")
        last_beat = last_trim = 0.0
        while self.running:
            ready = dict(poller.poll(50))
            if self.inbox in ready:
                # a bounded batch: during a long transfer the inbox never empties, and
                # the heartbeats below must still go out
                for _ in range(32):
                    try:  # frames as received (chunks are written from them, no copy)
                        frames = self.inbox.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    try:
                        mtype, handler, body, bufs = P.route(frames, handlers, "an agent")
                    except P.InvalidMessage as e:
                        log.warning("agent: dropped an invalid message: %s", e)
                        continue
                    try:
                        if mtype == P.CHUNK:
                            handler(body, bufs)
                        else:
                            handler(body)
                    except Exception:  # one failing handler must not end the node
                        log.exception("agent: error handling %s", mtype.decode())
            if wake in ready:
                drain_fd(wake)
            if self.zygote_sock.fileno() in ready:
                self.on_zygote()
            by_fd = {c["fd"]: (pid, c) for pid, c in self.children.items()}
            for fd in ready:
                if isinstance(fd, int) and fd in by_fd:
                    self.read_output(*by_fd[fd])
            self.flush_partial_lines()
            now = time.monotonic()
            if self.transfers.pulls:
                self.transfers.check_stalled(now)
            if now - last_beat > HEARTBEAT_S:
                last_beat = now
                used, count = store.usage(self.store_dir)
                if now - last_trim > 5.0:
                    last_trim = now
                    store.trim_pool(self.store_dir)
                self.send_head(P.HEARTBEAT, {
                    "node_id": self.node_id, "transfers": self.transfers.completed,
                    "store_used": used, "store_objects": count,
                    "store_capacity": store.capacity() or self.shm_size})
        self.stop()

    def stop(self) -> None:
        for pid in list(self.children) + [self.zygote_pid]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            os.waitpid(self.zygote_pid, 0)
        except ChildProcessError:
            pass
        self.wait_gone(list(self.children))
        store.remove_dir(self.store_dir)
        store.remove_dir(os.path.join(store.spill_root(self.session), self.node_id))
        try:
            os.rmdir(store.session_dir(self.session))
        except OSError:
            pass
        try:
            self.outbox.close(linger_ms=100)
            self.inbox.close(linger=0)
            self.transport.close(linger_ms=0)
        except Exception:
            pass


    @staticmethod
    def wait_gone(pids: list[int], timeout: float = 2.0) -> None:
        """Wait until killed workers (children of the zygote, not ours) are gone, so
        their shared memory is unmapped before the store is removed."""
        deadline = time.monotonic() + timeout
        for pid in pids:
            while time.monotonic() < deadline:
                try:
                    with open(f"/proc/{pid}/stat") as f:
                        if f.read().split(") ", 1)[1][:1] in "ZX":
                            break
                except OSError:
                    break
                time.sleep(0.005)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m raylite.core.agent")
    ap.add_argument("--head", required=True)
    ap.add_argument("--session", required=True)
    ap.add_argument("--node-id", required=True)
    ap.add_argument("--resources", required=True)
    ap.add_argument("--labels", default="{}")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--warm", type=int, default=2)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="[raylite agent] %(message)s")
    agent = Agent(args, os.environ.get("RAYLITE_TOKEN"))
    # import the worker's modules, then fork the zygote before any thread or ZeroMQ
    # context exists in this process: the zygote forks every worker from this state
    from raylite.core import worker, zygote

    preload = zygote.preload_modules(os.environ.get(zygote.PRELOAD_ENV))
    agent.zygote_pid, agent.zygote_sock = zygote.start(worker.main, preload)
    die_with_parent(signal.SIGTERM)

    def on_term(*_):
        agent.running = False
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        agent.run()
    finally:
        if agent.running:
            agent.stop()


if __name__ == "__main__":
    main()
