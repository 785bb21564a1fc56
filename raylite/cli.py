"""The ``raylite`` command: start, join, inspect and stop a cluster.

    raylite start --head [--port 6379] [--num-cpus N] [--num-gpus N]
                  [--resources '{"x": 1}'] [--labels k=v,k2=v2] [--node-ip-address IP]
    raylite start --address HOST:PORT [--token T] [--num-cpus N] ...
    raylite status [--address HOST:PORT]
    raylite stop

A head bound to anything but 127.0.0.1 gets a random token, printed with the join
command; every node and driver must present it (``--token`` or ``RAYLITE_TOKEN``).
The processes are detached from the shell; their pids are kept under /tmp/raylite.
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
    new_session_id,
    query_head,
    resolve_address,
)

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


def _record_pid(pid: int, role: str, session: str) -> None:
    os.makedirs(PIDS_DIR, exist_ok=True)
    with open(os.path.join(PIDS_DIR, f"{pid}.json"), "w") as f:
        json.dump({"pid": pid, "role": role, "session": session}, f)


def _node_args(args) -> dict:
    return {"num_cpus": args.num_cpus, "num_gpus": args.num_gpus,
            "resources": json.loads(args.resources) if args.resources else None,
            "labels": parse_labels(args.labels)}


def cmd_start(args) -> int:
    host = args.node_ip_address
    if args.object_store_memory:
        os.environ[store.CAPACITY_ENV] = str(args.object_store_memory)
    if args.head:
        token = args.token or (None if host in ("127.0.0.1", "localhost")
                               else secrets.token_hex(16))
        cluster = LocalCluster(new_session_id(), host=host, token=token, detached=True)
        cluster.start_head(args.port, wait_ready=True)
        cluster.add_node(**_node_args(args))
        address = cluster.address
        query_head(address, P.CLUSTER_INFO, token=token, timeout=20)
        os.makedirs(SESSION_FILE_DIR, exist_ok=True)
        with open(CLUSTER_FILE, "w") as f:
            json.dump({"address": address, "token": token, "session": cluster.session}, f)
        os.chmod(CLUSTER_FILE, 0o600)
        _record_pid(cluster.head.pid, "head", cluster.session)
        for proc in cluster.agents.values():
            _record_pid(proc.pid, "agent", cluster.session)
        hostport = address.replace("tcp://", "")
        print(f"raylite head started at {hostport} (session {cluster.session}).")
        join = f"raylite start --address {hostport}" + (f" --token {token}" if token else "")
        print(f"To add a node:    {join}")
        print(f"To connect:       raylite.init(address={hostport!r}"
              + (f", _token={token!r})" if token else ")"))
        print("To stop:          raylite stop")
        return 0
    if not args.address:
        print("raylite start needs --head or --address HOST:PORT", file=sys.stderr)
        return 2
    address, token = resolve_address(args.address)
    token = args.token or token
    info = query_head(address, P.CLUSTER_INFO, token=token, timeout=10)
    cluster = LocalCluster(info["session"], host=host, token=token, detached=True)
    cluster.address = address
    node_id = cluster.add_node(**_node_args(args))
    _record_pid(cluster.agents[node_id].pid, "agent", info["session"])
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
        try:
            os.kill(rec["pid"], signal.SIGTERM)
            stopped.append(rec["pid"])
        except ProcessLookupError:
            pass
        os.unlink(path)
    deadline = time.monotonic() + 5
    for pid in stopped:
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.05)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
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
    st.add_argument("--node-ip-address", default="127.0.0.1",
                    help="interface to listen on (default 127.0.0.1; anything else needs a token)")
    st.add_argument("--token", default=os.environ.get("RAYLITE_TOKEN"))
    s2 = sub.add_parser("status", help="show the cluster's nodes and resources")
    s2.add_argument("--address")
    s2.add_argument("--token", default=os.environ.get("RAYLITE_TOKEN"))
    sub.add_parser("stop", help="stop the raylite processes started on this machine")
    args = ap.parse_args(argv)
    return {"start": cmd_start, "status": cmd_status, "stop": cmd_stop}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
