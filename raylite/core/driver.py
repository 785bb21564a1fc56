"""``init`` / ``shutdown``: start or join a cluster from a notebook or script.

``init()`` with no address starts a head and one agent per virtual node as child
processes of this one (they die with it: parent-death signal plus a watcher), all in
parallel, and returns as soon as the head has seen every node register.
"""

from __future__ import annotations

import atexit
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import uuid

from raylite import exceptions as exc
from raylite.core import protocol as P
from raylite.core import runtime, store
from raylite.core.core_worker import CoreWorker, HeadDiedError, print_worker_lines
from raylite.core.object_ref import new_id
from raylite.core.osutil import free_port_pair, stop_processes
from raylite.core.transport import _advertise, host_of, is_loopback
from raylite.core.zygote import PRELOAD_ENV

SESSION_FILE_DIR = os.path.join(os.environ.get("TMPDIR", "/tmp"), "raylite")
LOG_DIR = os.path.join(SESSION_FILE_DIR, "logs")


def new_session_id() -> str:
    """A session id; it starts with the pid of the process tree's root (a test run, a
    notebook kernel), so tools can tell whose stores are whose."""
    root = os.environ.get("RAYLITE_ROOT_PID", str(os.getpid()))
    return f"{root}-{uuid.uuid4().hex[:8]}"


class LocalCluster:
    """The processes of a cluster this driver started: a head and its node agents.

    Every cluster has a token, also on loopback: one is made here when none is given."""

    def __init__(self, session: str, host: str = "127.0.0.1", token: str | None = None,
                 detached: bool = False):
        self.session = session
        store.store_root()  # decide where stores live; children inherit the choice
        self.host = host
        self.token = token or secrets.token_hex(16)
        self.detached = detached
        self.port = free_port_pair(host)
        self.address = f"tcp://{_advertise(host)}:{self.port}"
        self.head = None
        self.agents: dict[str, subprocess.Popen] = {}
        self._n = 0
        self.preload: str | None = None  # RAYLITE_PRELOAD for the nodes (None: see _env)

    def _env(self) -> dict:
        env = dict(os.environ)
        if not self.detached:
            env["RAYLITE_PARENT_PID"] = str(os.getpid())
        else:
            env.pop("RAYLITE_PARENT_PID", None)
        env["RAYLITE_TOKEN"] = self.token
        if self.preload is not None:
            env[PRELOAD_ENV] = self.preload
        elif PRELOAD_ENV not in env and "torch" in sys.modules:
            env[PRELOAD_ENV] = "torch"  # a driver that uses torch: its workers will too
        pkg_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env["PYTHONPATH"] = pkg_root + os.pathsep + env.get("PYTHONPATH", "")
        return env

    def _log(self, name: str):
        """Detached processes log to files (there is no driver to print to)."""
        if not self.detached:
            return None
        os.makedirs(LOG_DIR, exist_ok=True)
        return open(os.path.join(LOG_DIR, f"{name}.log"), "ab")

    def start_head(self, port: int | None = None, wait_ready: bool = False) -> None:
        """Start the head. Its ports are picked free here but bound there, so another
        process may take them in between: with ``wait_ready`` a head that could not bind
        is restarted on fresh ports (a fixed ``port`` is not retried)."""
        for _attempt in range(5):
            if port:
                self.port = port
            self.address = self.address.rsplit(":", 1)[0] + f":{self.port}"
            self.head = subprocess.Popen(
                [sys.executable, "-m", "raylite.core.head", "--port", str(self.port),
                 "--session", self.session, "--host", self.host], env=self._env(),
                stdout=subprocess.PIPE if wait_ready else subprocess.DEVNULL,
                stderr=self._log("head"), stdin=subprocess.DEVNULL,
                start_new_session=self.detached)
            if not wait_ready:
                return
            ready = self.head.stdout.readline().startswith(b"RAYLITE_HEAD_READY")
            self.head.stdout.close()
            if ready:
                return
            self.head.wait()
            if port:  # a port asked for is not swapped for another: say why it failed
                raise RuntimeError(f"the raylite head could not start on {self.host}:"
                                   f"{port} (it listens on that port and the next one):"
                                   f" {self._log_tail('head')}")
            self.port = free_port_pair(self.host)
        raise RuntimeError(f"the raylite head did not start: {self._log_tail('head')}")

    def _log_tail(self, name: str, lines: int = 3) -> str:
        if not self.detached:
            return "its error is printed above"
        try:
            with open(os.path.join(LOG_DIR, f"{name}.log"), errors="replace") as f:
                tail = [ln.strip() for ln in f.readlines()[-lines:] if ln.strip()]
        except OSError:
            tail = []
        return " / ".join(tail) or f"see {os.path.join(LOG_DIR, name + '.log')}"

    def head_died(self) -> bool:
        return self.head is not None and self.head.poll() is not None

    def add_node(self, num_cpus=None, num_gpus=None, resources=None, labels=None,
                 node_id: str | None = None, warm: int | None = None, memory=None) -> str:
        node_id = node_id or f"node{self._n}-{uuid.uuid4().hex[:6]}"
        self._n += 1
        res = node_resources(num_cpus, num_gpus, resources, memory)
        if warm is None:
            warm = int(min(max(res.get("CPU", 1), 1), 4))
        self.agents[node_id] = subprocess.Popen(
            [sys.executable, "-m", "raylite.core.agent", "--head", self.address, "--session",
             self.session, "--node-id", node_id, "--resources", json.dumps(res), "--labels",
             json.dumps(labels or {}), "--host", self.host, "--warm", str(warm)],
            env=self._env(), stdin=subprocess.DEVNULL, start_new_session=self.detached,
            stdout=self._log(node_id), stderr=subprocess.STDOUT if self.detached else None)
        return node_id

    def node_process(self, node_id: str) -> subprocess.Popen | None:
        """The agent process of a node started here (None once it is forgotten)."""
        return self.agents.get(node_id)

    def stop_node(self, node_id: str) -> subprocess.Popen | None:
        """Ask a node's agent to stop (SIGTERM: it stops its workers and frees its
        store); returns its process, which stays known until :meth:`forget_node`."""
        proc = self.agents.get(node_id)
        if proc is not None and proc.poll() is None:
            proc.terminate()
        return proc

    def forget_node(self, node_id: str, proc: subprocess.Popen | None = None) -> None:
        """Drop a node whose agent has exited: its process (when it is still ``proc``)
        and its store directory."""
        if proc is None or self.agents.get(node_id) is proc:
            self.agents.pop(node_id, None)
        store.remove_dir(store.node_dir(self.session, node_id))

    def kill_node(self, node_id: str, drop_store: bool = False) -> None:
        """SIGKILL a node's agent (and so its workers), as losing a machine would; with
        ``drop_store`` its store goes too (a lost machine loses its memory)."""
        proc = self.agents.pop(node_id)
        proc.kill()
        proc.wait()
        if drop_store:
            store.remove_dir(store.node_dir(self.session, node_id))

    def stop(self) -> None:
        procs = list(self.agents.values()) + ([self.head] if self.head else [])
        stop_processes(procs)
        self.agents.clear()
        store.remove_dir(store.session_dir(self.session))
        store.remove_dir(store.spill_root(self.session))


def node_resources(num_cpus=None, num_gpus=None, resources=None, memory=None) -> dict:
    """A node's resources; ``memory`` (bytes) defaults, as in Ray, to 70% of the
    machine's available memory (every virtual node of one host reports it)."""
    import psutil

    if memory is None:
        memory = int(psutil.virtual_memory().available * 0.7)
    res = {"CPU": float(os.cpu_count() or 1 if num_cpus is None else num_cpus),
           "GPU": float(detect_gpus() if num_gpus is None else num_gpus),
           "memory": float(memory)}
    res.update({k: float(v) for k, v in (resources or {}).items()})
    return {k: v for k, v in res.items() if v or k == "CPU"}


def detect_gpus() -> int:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip()])
    try:
        found = len([d for d in os.listdir("/dev") if d.startswith("nvidia") and d[6:].isdigit()])
    except OSError:
        found = 0
    if found == 0 and shutil.which("nvidia-smi"):  # e.g. sandboxes without /dev/nvidiaN
        try:
            out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True,
                                 timeout=5, check=False).stdout
            found = sum(1 for line in out.splitlines() if line.startswith("GPU "))
        except (OSError, subprocess.SubprocessError):
            pass
    return found


class _State:
    cluster: LocalCluster | None = None
    context = None
    shutdown_hooks: list = []  # called first by shutdown() (e.g. the autoscaler's stop)


def connect(address: str, *, session: str | None = None, token: str | None = None,
            namespace: str | None = None, log_to_driver: bool = True, expect_nodes: int = 0,
            bind_host: str = "127.0.0.1", node_id: str | None = None, abort=None) -> dict:
    """Connect this process as a driver to the head at ``address``."""
    job_id = new_id().hex()[:8]
    core = CoreWorker(address, node_id="", session=session or "", job_id=job_id, token=token,
                      bind_host=bind_host, namespace=namespace or f"anon-{job_id}")
    try:
        info = core.request_head(P.REGISTER_DRIVER, {
            "job_id": job_id, "core_addr": core.addr, "expect_nodes": expect_nodes},
            timeout=30 if expect_nodes else 10, abort=abort)
    except HeadDiedError:
        core.shutdown()
        raise
    except exc.RayliteSystemError:
        core.shutdown()
        raise ConnectionError(
            f"Could not connect to the raylite head at {address}: no answer. Check that the "
            "cluster is running (`raylite status`) and, for a cluster that listens on a "
            "network interface, that you pass its token (_token=... or RAYLITE_TOKEN).") from None
    except BaseException:
        core.shutdown()
        raise
    core.sync_events()
    core.session = info["session"]
    # the driver's node (where its puts go): the one it started first, else the one that
    # listens on the driver's own address, else one with this host's name
    alive = [n for n in info["nodes"] if n["alive"]]
    here = ([n for n in alive if not is_loopback(bind_host) and
             host_of(n["addr"]) == bind_host] or
            [n for n in alive if n["host"] == socket.gethostname()] or alive)
    core.node_id = node_id or (here[0]["node_id"] if here else "")
    core.store_dir = store.node_dir(core.session, core.node_id)
    if log_to_driver:
        core.log_hook = print_worker_lines
    runtime.core = core
    return info


def resolve_address(address: str) -> tuple[str, str | None]:
    """'auto' / 'host:port' / 'tcp://host:port' -> (zmq address, token)."""
    token = os.environ.get("RAYLITE_TOKEN")
    if address == "auto":
        path = os.path.join(SESSION_FILE_DIR, "cluster.json")
        try:
            with open(path) as f:
                info = json.load(f)
        except FileNotFoundError:
            raise ConnectionError("init(address='auto') found no running cluster; start one "
                                  "with `raylite start --head`.") from None
        return info["address"], token or info.get("token")
    if not address.startswith("tcp://"):
        address = "tcp://" + address
    if token is None:
        try:
            with open(os.path.join(SESSION_FILE_DIR, "cluster.json")) as f:
                info = json.load(f)
            if info["address"] == address:
                token = info.get("token")
        except (FileNotFoundError, ValueError, KeyError):
            pass
    return address, token


def start_local(num_cpus=None, num_gpus=None, resources=None, labels=None, nodes=None,
                warm=None, host: str = "127.0.0.1", preload: str | None = None) -> LocalCluster:
    """Start a head and its nodes all at once (no waiting: start-up is what init costs)."""
    cluster = LocalCluster(new_session_id(), host=host)
    cluster.preload = preload
    cluster.start_head()
    specs = nodes or [{"num_cpus": num_cpus, "num_gpus": num_gpus, "resources": resources,
                       "labels": labels}]
    for spec in specs:
        cluster.add_node(**spec, warm=warm)
    return cluster


atexit_registered = False


def register_atexit(fn) -> None:
    global atexit_registered
    if not atexit_registered:
        atexit.register(fn)
        atexit_registered = True


def local_ip_for(address: str) -> str:
    """The address of this machine that peers at ``address`` reach it by: 127.0.0.1 for
    a head on loopback, else the source address of the route to the head."""
    host = host_of(address)
    if is_loopback(host):
        return "127.0.0.1"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect((host, 9))  # UDP: no packet is sent, the kernel only picks a route
            return s.getsockname()[0]
        except OSError:
            return "127.0.0.1"


def query_head(address: str, msg_type: bytes, body: dict | None = None,
               token: str | None = None, timeout: float = 5.0, bind_host: str | None = None):
    """One request to a head without joining as a driver (CLI, test clusters). The reply
    comes to an inbox bound on ``bind_host`` (default: this machine's address towards the
    head), so it also works across hosts."""
    from raylite.core.transport import Transport

    transport = Transport(token, bind_host or local_ip_for(address))
    inbox, addr = transport.bind()
    out = transport.connect(address)
    try:
        req_id = new_id()
        out.send_multipart(P.encode(msg_type, dict(body or {}, req_id=req_id, reply_to=addr)))
        if not inbox.poll(int(timeout * 1000)):
            raise ConnectionError(f"no answer from the raylite head at {address} within "
                                  f"{timeout}s (is it running? is the token right?)")
        _, reply, _ = P.decode(inbox.recv_multipart())
        if reply.get("error") is not None:
            raise reply["error"]
        return reply["value"]
    finally:
        out.close(linger=0)
        inbox.close(linger=0)
        transport.close(linger_ms=0)
