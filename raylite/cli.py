"""The ``raylite`` command: start, join, inspect and stop a cluster.

    raylite start --head [--port 6379] [--num-cpus N] [--num-gpus N]
                  [--resources '{"x": 1}'] [--labels k=v,k2=v2] [--node-ip-address IP]
    raylite start --address HOST:PORT [--token T] [--num-cpus N] ...
    raylite status [--address HOST:PORT]
    raylite stop

Every head gets a random token (unless ``--token`` gives one), printed with the join
command and kept in /tmp/raylite/cluster.json (mode 0600); every node and driver must
present it (``--token`` or ``RAYLITE_TOKEN``; on the head's machine the file is read).
Off loopback all traffic is encrypted (CURVE). ``--node-ip-address`` is the address this
node listens on and the other hosts reach it by (default: 127.0.0.1 for a head, and for
a joining node the address of its route to the head). The processes are detached from
the shell; their pids are kept under /tmp/raylite, and ``raylite stop`` only signals a
pid whose command line is still that raylite process's.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import sys
import time

from raylite.core import protocol as P
from raylite.core import store
from raylite.core.driver import (
    SESSION_FILE_DIR,
    LocalCluster,
    local_ip_for,
    new_session_id,
    query_head,
    resolve_address,
)
from raylite.core.transport import MissingTokenError, is_loopback

CLUSTER_FILE = os.path.join(SESSION_FILE_DIR, "cluster.json")
PIDS_DIR = os.path.join(SESSION_FILE_DIR, "pids")


def parse_labels(text: str | None) -> dict:
    if not text:
        return {}
    labels = {}
    for item in text.split(","):
        if "=" not in item:
            raise SystemExit(f"--labels: {item!r} is not key=value")
        k, v = item.split("=", 1)
        k = k.strip()
        if k.startswith("raylite.io/"):
            raise SystemExit(f"--labels: the prefix 'raylite.io/' is reserved ({k})")
        labels[k] = v.strip()
    return labels


def write_private(path: str, data: dict) -> None:
    """Write a JSON file that only this user can read, atomically: it is created 0600
    under a temporary name and renamed into place, so its content is never readable by
    others, not even for a moment, and a reader never sees half of it."""
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


_ROLE_MODULE = {"head": "raylite.core.head", "agent": "raylite.core.agent"}


def _record_pid(pid: int, role: str, session: str) -> None:
    write_private(os.path.join(PIDS_DIR, f"{pid}.json"),
                  {"pid": pid, "role": role, "session": session})


def _is_ours(rec: dict) -> bool:
    """True when the recorded pid still runs the raylite process we started (pids are
    reused: a stale file must never make `raylite stop` kill someone else's process)."""
    try:
        with open(f"/proc/{int(rec['pid'])}/cmdline", "rb") as f:
            argv = f.read().decode(errors="replace").split("\0")
    except (OSError, ValueError, KeyError):
        return False
    return _ROLE_MODULE.get(rec.get("role")) in argv and rec.get("session") in argv


def _node_args(args) -> dict:
    return {"num_cpus": args.num_cpus, "num_gpus": args.num_gpus,
            "resources": json.loads(args.resources) if args.resources else None,
            "labels": parse_labels(args.labels)}


def cmd_start(args) -> int:
    host = args.node_ip_address
    if args.object_store_memory:
        os.environ[store.CAPACITY_ENV] = str(args.object_store_memory)
    if args.head:
        host = host or "127.0.0.1"
        token = args.token or secrets.token_hex(16)
        cluster = LocalCluster(new_session_id(), host=host, token=token, detached=True)
        try:
            cluster.start_head(args.port, wait_ready=True)
        except RuntimeError as e:  # e.g. the port is taken: the head's own error, now
            cluster.stop()
            print(e, file=sys.stderr)
            return 1
        cluster.add_node(**_node_args(args))
        address = cluster.address
        try:
            query_head(address, P.CLUSTER_INFO, token=token, timeout=20, bind_host=host)
        except BaseException:
            # a head nobody can reach is stopped at once, with its store: recorded
            # nowhere, `raylite stop` could not find it (its /dev/shm dir was left)
            cluster.stop()
            raise
        write_private(CLUSTER_FILE, {"address": address, "token": token,
                                     "session": cluster.session})
        _record_pid(cluster.head.pid, "head", cluster.session)
        for proc in cluster.agents.values():
            _record_pid(proc.pid, "agent", cluster.session)
        hostport = address.replace("tcp://", "")
        print(f"raylite head started at {hostport} (session {cluster.session}).")
        if is_loopback(host):
            join = f"raylite start --address {hostport} --token {token}"
            connect = f"raylite.init(address={hostport!r}, _token={token!r})"
        else:  # the new node must listen on an address the head (and others) can reach
            join = (f"raylite start --address {hostport} --token {token} "
                    "--node-ip-address NODE_IP")
            connect = (f"raylite.init(address={hostport!r}, _token={token!r}, "
                       "_node_ip_address=NODE_IP)")
        print(f"To add a node:    {join}")
        print(f"To connect:       {connect}")
        if not is_loopback(host):
            print("                  (NODE_IP: the address of that machine which the "
                  "others reach; by default its route to the head)")
        print("To stop:          raylite stop")
        return 0
    if not args.address:
        print("raylite start needs --head or --address HOST:PORT", file=sys.stderr)
        return 2
    address, token = resolve_address(args.address)
    token = args.token or token
    host = host or local_ip_for(address)
    info = query_head(address, P.CLUSTER_INFO, token=token, timeout=10, bind_host=host)
    cluster = LocalCluster(info["session"], host=host, token=token, detached=True)
    cluster.address = address
    node_id = cluster.add_node(**_node_args(args))
    agent = cluster.agents[node_id]
    _record_pid(agent.pid, "agent", info["session"])
    deadline = time.monotonic() + 30
    while True:  # "joined" only once the head lists the node as alive
        nodes = query_head(address, P.CLUSTER_INFO, token=token, timeout=10,
                           bind_host=host)["nodes"]
        if any(n["node_id"] == node_id and n["alive"] for n in nodes):
            break
        if agent.poll() is not None or time.monotonic() > deadline:
            print(f"raylite node {node_id} did not join {address}: see "
                  f"{SESSION_FILE_DIR}/logs/{node_id}.log", file=sys.stderr)
            return 1
        time.sleep(0.1)
    print(f"raylite node {node_id} joined {address.replace('tcp://', '')}.")
    return 0


def cmd_status(args) -> int:
    address, token = resolve_address(args.address or "auto")
    info = query_head(address, P.CLUSTER_INFO, token=args.token or token)
    print(f"raylite cluster at {address.replace('tcp://', '')} (session {info['session']})")
    for n in info["nodes"]:
        state = "alive" if n["alive"] else "dead"
        res = ", ".join(f"{k} {n['available'].get(k, 0):g}/{v:g}"
                        for k, v in n["resources"].items())
        labels = ", ".join(f"{k}={v}" for k, v in n["labels"].items()
                           if not k.startswith("raylite.io/"))
        print(f"  {n['node_id']:<24} {state:<6} {res}  {labels}")
    actors = [a for a in info["actors"] if a["state"] != "DEAD"]
    print(f"  {len(info['workers'])} workers, {len(actors)} live actors, "
          f"{info['pending']} pending requests")
    return 0


def cmd_stop(args) -> int:
    if not os.path.isdir(PIDS_DIR):
        print("no raylite processes recorded")
        return 0
    stopped, sessions = [], set()
    for name in os.listdir(PIDS_DIR):
        path = os.path.join(PIDS_DIR, name)
        with open(path) as f:
            rec = json.load(f)
        sessions.add(rec["session"])
        if _is_ours(rec):
            try:
                os.kill(rec["pid"], signal.SIGTERM)
                stopped.append(rec["pid"])
            except ProcessLookupError:
                pass
        else:
            print(f"skipped pid {rec.get('pid')}: it is no longer the raylite "
                  f"{rec.get('role')} recorded", file=sys.stderr)
        os.unlink(path)
    deadline = time.monotonic() + 5
    for pid in stopped:
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.05)
        if _alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    for session in sessions:
        store.remove_dir(store.session_dir(session))
    if os.path.exists(CLUSTER_FILE):
        os.unlink(CLUSTER_FILE)
    print(f"stopped {len(stopped)} raylite processes")
    return 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie child of ours is dead too
        return os.waitpid(pid, os.WNOHANG) == (0, 0)
    except ChildProcessError:
        return True


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="raylite", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    st = sub.add_parser("start", help="start a head, or a node that joins one")
    st.add_argument("--head", action="store_true")
    st.add_argument("--address")
    st.add_argument("--port", type=int, default=6379)
    st.add_argument("--num-cpus", type=float)
    st.add_argument("--num-gpus", type=float)
    st.add_argument("--resources", help='JSON, e.g. \'{"custom": 2}\'')
    st.add_argument("--labels", help="k=v,k2=v2")
    st.add_argument("--object-store-memory", type=int,
                    help="bytes of shared memory per node before objects spill to disk")
    st.add_argument("--node-ip-address", default=None,
                    help="address to listen on, which the other hosts reach (default: "
                         "127.0.0.1 for a head; a joining node's route to the head)")
    st.add_argument("--token", default=os.environ.get("RAYLITE_TOKEN"))
    s2 = sub.add_parser("status", help="show the cluster's nodes and resources")
    s2.add_argument("--address")
    s2.add_argument("--token", default=os.environ.get("RAYLITE_TOKEN"))
    sub.add_parser("stop", help="stop the raylite processes started on this machine")
    args = ap.parse_args(argv)
    try:
        return {"start": cmd_start, "status": cmd_status, "stop": cmd_stop}[args.cmd](args)
    except (ConnectionError, MissingTokenError) as e:
        print(f"raylite {args.cmd}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
