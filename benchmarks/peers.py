"""raylite's peers on its core metrics: Dask distributed, ipyparallel and multiprocessing.

Run from the repository root:

    python benchmarks/peers.py [--quick] [--only PEER ...] [--peers-python PATH]

Each peer runs in its own fresh subprocess, on two worker processes (as raylite and Ray
run on ``init(num_cpus=2)`` in ``core.py``), and is measured the way ``core.py`` and
``object_transfer.py`` measure raylite and Ray: a warm-up run, then medians of repeats
with min-max, with the same batch sizes, payloads and sizes.

- **Dask distributed**: ``LocalCluster`` of 2 single-threaded worker processes and a
  ``Client``; tasks ``client.submit(f, pure=False)``; actors ``submit(Cls, actor=True)``;
  put / get ``scatter(x, hash=False)`` / ``future.result()``; a task's argument is a
  scattered future (as a ref is for raylite and Ray).
- **ipyparallel**: ``Cluster(n=2)`` (a controller, 2 engines); tasks through a
  load-balanced view; actor-like calls: an object pushed to one engine, called through
  ``DirectView.apply(f, Reference(name))``; put / get ``push`` / ``pull`` on one engine;
  a task's argument is the array itself (no object store).
- **multiprocessing**: ``Pool(2)`` (the platform's default start method); actor-like: a
  ``BaseManager`` server process holding the object (proxies are synchronous: no async
  actor calls); no put / get; a task's argument is the array itself.

Dask and ipyparallel run under ``--peers-python`` (else ``$PEERS_PYTHON``, else the first of
``.bench-venv``, ``/work/peersvenv``, the Ray interpreter and this one where the peer
imports); multiprocessing under this interpreter. A peer that cannot be imported is
skipped with a note. Results go to ``benchmarks/results/peers.json``.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks._runner import python_has, run_json, terminate_on_sigterm, write_json  # noqa: E402
from benchmarks.core import BATCH, RESULTS, ROOT, _samples, _shown, _timed, machine_info  # noqa: E402
from benchmarks.object_transfer import SIZES, _checksum, repeats_for, size_label  # noqa: E402

PEERS = ("dask", "ipyparallel", "multiprocessing")
MODULES = {"dask": "distributed", "ipyparallel": "ipyparallel",
           "multiprocessing": "multiprocessing"}
PEER_TIMEOUT_S = 900
FULL_MAX = 1 << 28  # peers copy every byte through sockets or pipes: stop at 256 MiB
QUICK_MAX = 1 << 22
CANDIDATES = [str(ROOT / ".bench-venv/bin/python"), "/work/peersvenv/bin/python"]


def _noop() -> None:
    return None


class Pinger:
    def ping(self) -> None:
        return None


def _ping(p: Any) -> None:
    return p.ping()


# --------------------------------------------------------------------------- adapters
class Dask:
    """Dask distributed on a local cluster of two single-threaded worker processes."""

    def start(self) -> None:
        from dask.distributed import Client, LocalCluster

        self.cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                    dashboard_address=None)
        self.client = Client(self.cluster)

    def stop(self) -> None:
        self.client.close()
        self.cluster.close()

    def submit(self) -> Any:
        return self.client.submit(_noop, pure=False)

    def wait(self, futures: list[Any]) -> list[Any]:
        return self.client.gather(futures)

    def actor(self) -> Any:
        actor = self.client.submit(Pinger, actor=True, pure=False).result()
        actor.ping().result()
        return actor

    def call(self, actor: Any) -> Any:
        return actor.ping()

    def call_wait(self, calls: list[Any]) -> list[Any]:
        return [c.result() for c in calls]

    def kill(self, actor: Any) -> None:
        del actor  # Dask ends an actor when its last future is released

    def put(self, value: Any) -> Any:
        return self.client.scatter(value, hash=False)

    def get(self, ref: Any) -> Any:
        return ref.result()

    def task(self, value: Any) -> float:
        ref = self.put(value)  # outside the timed region, as object_transfer.py's task
        start = time.perf_counter()
        assert self.client.submit(_checksum, ref, pure=False).result() == 3.0
        return time.perf_counter() - start


class IPyParallel:
    """ipyparallel: a controller and two engines; tasks through a load-balanced view."""

    def start(self) -> None:
        import ipyparallel as ipp

        self.cluster = ipp.Cluster(n=2, log_level=40)
        self.rc = self.cluster.start_and_connect_sync()
        self.rc[:].use_cloudpickle()  # functions defined in __main__ travel by value
        self.view = self.rc.load_balanced_view()
        self.engine = self.rc[0]

    def stop(self) -> None:
        self.rc.close()
        self.cluster.stop_cluster_sync()

    def submit(self) -> Any:
        return self.view.apply_async(_noop)

    def wait(self, futures: list[Any]) -> list[Any]:
        return [f.get() for f in futures]

    def actor(self) -> Any:
        import ipyparallel as ipp

        self.actors = getattr(self, "actors", 0) + 1
        name = f"_pinger{self.actors}"
        self.engine.push({name: Pinger()}, block=True)
        ref = ipp.Reference(name)
        self.engine.apply_sync(_ping, ref)
        return ref

    def call(self, actor: Any) -> Any:
        return self.engine.apply_async(_ping, actor)

    call_wait = wait

    def kill(self, actor: Any) -> None:
        self.engine.execute(f"del {actor.name}", block=True)

    def put(self, value: Any) -> Any:
        self.engine.push({"_x": value}, block=True)
        return "_x"

    def get(self, ref: Any) -> Any:
        return self.engine.pull(ref, block=True)

    def task(self, value: Any) -> float:
        start = time.perf_counter()
        assert self.view.apply_sync(_checksum, value) == 3.0
        return time.perf_counter() - start


class Multiprocessing:
    """The standard library: ``Pool(2)`` (the platform's default start method) for tasks,
    a ``BaseManager`` server process for actor-like state."""

    def start(self) -> None:
        import multiprocessing

        self.pool = multiprocessing.Pool(2)

    def stop(self) -> None:
        self.pool.close()
        self.pool.join()

    def submit(self) -> Any:
        return self.pool.apply_async(_noop)

    def wait(self, futures: list[Any]) -> list[Any]:
        return [f.get() for f in futures]

    def actor(self) -> Any:
        from multiprocessing.managers import BaseManager

        class Manager(BaseManager):
            pass

        Manager.register("Pinger", Pinger)
        manager = Manager()
        manager.start()
        proxy = manager.Pinger()
        proxy.ping()
        return manager, proxy

    call = None  # proxies are synchronous: no async actor calls

    def call_sync(self, actor: Any) -> None:
        actor[1].ping()

    def kill(self, actor: Any) -> None:
        actor[0].shutdown()

    put = None  # no object store

    def task(self, value: Any) -> float:
        start = time.perf_counter()
        assert self.pool.apply(_checksum, (value,)) == 3.0
        return time.perf_counter() - start


ADAPTERS = {"dask": Dask, "ipyparallel": IPyParallel, "multiprocessing": Multiprocessing}


# --------------------------------------------------------------------------- worker
def core_metrics(make: Callable[[], Any], repeats: int, sync_calls: int) -> tuple[Any, dict]:
    """core.py's metrics; returns the running peer (started) and the samples."""
    out: dict[str, list[float]] = {"init": [], "shutdown": []}
    for cycle in range(repeats + 1):  # cycle 0 is the warm-up
        peer = make()
        start = time.perf_counter()
        peer.start()
        peer.wait([peer.submit()])
        first = time.perf_counter()
        peer.stop()
        if cycle:
            out["init"].append(first - start)
            out["shutdown"].append(time.perf_counter() - first)
    peer = make()
    peer.start()
    peer.wait([peer.submit() for _ in range(10)])

    def actor_create() -> float:
        start = time.perf_counter()
        actor = peer.actor()
        elapsed = time.perf_counter() - start
        peer.kill(actor)
        return elapsed

    benches: dict[str, Callable[[], float]] = {
        "async_tasks": lambda: BATCH / _timed(
            lambda: peer.wait([peer.submit() for _ in range(BATCH)])),
        "sync_task": lambda: 1e6 * _timed(
            lambda: [peer.wait([peer.submit()]) for _ in range(sync_calls)]) / sync_calls,
        "actor_create": actor_create,
    }
    actor = peer.actor()
    if peer.call is not None:
        benches["async_actor"] = lambda: BATCH / _timed(
            lambda: peer.call_wait([peer.call(actor) for _ in range(BATCH)]))
        benches["sync_actor"] = lambda: 1e6 * _timed(
            lambda: [peer.call_wait([peer.call(actor)]) for _ in range(sync_calls)]) / sync_calls
    else:
        benches["sync_actor"] = lambda: 1e6 * _timed(
            lambda: [peer.call_sync(actor) for _ in range(sync_calls)]) / sync_calls
    if peer.put is not None:
        def puts() -> float:
            start = time.perf_counter()
            refs = [peer.put(b"x" * 64) for _ in range(BATCH)]
            elapsed = time.perf_counter() - start
            del refs
            return BATCH / elapsed
        benches["puts"] = puts
    out.update({key: _samples(bench, repeats) for key, bench in benches.items()})
    peer.kill(actor)
    return peer, out


def object_metrics(peer: Any, sizes: list[int], quick: bool) -> dict[str, dict]:
    """put, get and task-argument times per size, as object_transfer.py measures them."""
    import numpy as np

    def put(x: Any) -> float:
        start = time.perf_counter()
        ref = peer.put(x)
        elapsed = time.perf_counter() - start
        del ref
        return elapsed

    def get(ref: Any) -> float:
        start = time.perf_counter()
        value = peer.get(ref)
        elapsed = time.perf_counter() - start
        assert _checksum(value) == 3.0
        return elapsed

    out: dict[str, dict] = {}
    for size in sizes:
        x = np.ones(size // 4, dtype=np.float32)
        n = repeats_for(size, quick, None)
        res = out[str(size)] = {}
        if peer.put is not None:
            res["put"] = _samples(partial(put, x), n)
            ref = peer.put(x)
            res["get"] = _samples(partial(get, ref), n)
            del ref
        res["task"] = _samples(partial(peer.task, x), n)
        del x
        gc.collect()
        print(f"{type(peer).__name__} {size_label(size)} done", flush=True)
    return out


def versions(name: str) -> dict[str, str]:
    import numpy

    mods = {"dask": ["dask", "distributed"], "ipyparallel": ["ipyparallel", "zmq"],
            "multiprocessing": []}[name]
    out = {m: __import__(m).__version__ for m in mods}
    return {**out, "numpy": numpy.__version__, "python": platform.python_version()}


def worker_main(name: str, quick: bool, out_path: str) -> None:
    try:
        __import__(MODULES[name])
        vers = versions(name)
    except ImportError as exc:
        write_json(out_path, {"skipped": f"cannot import {MODULES[name]}: {exc}"})
        return
    repeats, sync_calls = (2, 100) if quick else (5, 300)
    peer, samples = core_metrics(ADAPTERS[name], repeats, sync_calls)
    try:
        sizes = [s for s in SIZES if s <= (QUICK_MAX if quick else FULL_MAX)]
        objects = object_metrics(peer, sizes, quick)
    finally:
        peer.stop()
    write_json(out_path, {"versions": vers, "executable": sys.executable,
                          "config": {"repeats": repeats, "sync_calls": sync_calls,
                                     "batch": BATCH},
                          "samples": samples, "objects": objects})


# --------------------------------------------------------------------------- parent
def summarize(samples: list[float]) -> dict[str, float]:
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples)}


def find_python(name: str, explicit: str | None, ray_python: str | None) -> str | None:
    """The interpreter to measure peer ``name`` with, or None where none has it."""
    if name == "multiprocessing":
        return sys.executable
    candidates = [explicit] if explicit else [*CANDIDATES, ray_python, sys.executable]
    return next((p for p in candidates if p and python_has(p, MODULES[name])), None)


def run(names: list[str], quick: bool, peers_python: str | None = None,
        ray_python: str | None = None, echo: Callable[[str], None] | None = print
        ) -> dict[str, Any]:
    """Measure each peer in a fresh subprocess; the report ``peers.json`` holds."""
    results: dict[str, Any] = {}
    for name in names:
        python = find_python(name, peers_python, ray_python)
        if python is None:
            results[name] = {"skipped": f"{MODULES[name]} is not installed (pip install "
                                        "'raylite[bench]' in a separate venv, then "
                                        "--peers-python)"}
            continue
        if echo:
            echo(f"measuring {name} with {python} ...")
        env = dict(os.environ, PYTHONPATH=str(ROOT), DASK_DISTRIBUTED__LOGGING__DISTRIBUTED="error")
        r = run_json([python, str(Path(__file__).resolve()), "--worker", "--peer", name]
                     + (["--quick"] if quick else []), timeout_s=PEER_TIMEOUT_S, env=env,
                     cwd=ROOT, echo=echo)
        if "samples" in r:
            r["metrics"] = {k: summarize(v) for k, v in r["samples"].items()}
            r["object_stats"] = {size: {op: summarize(v) for op, v in ops.items()}
                                 for size, ops in r["objects"].items()}
        elif "log" in r and echo:
            echo(r["log"])
        results[name] = r
    return {"machine": machine_info(), "loadavg": os.getloadavg(),
            "config": {"quick": quick}, "peers": results}


def print_table(report: dict[str, Any]) -> None:
    from benchmarks.core import METRICS, _cell

    peers = report["peers"]
    print("\nPeers: medians [min-max]")
    print(f"{'metric':<34}" + "".join(f"{n:<28}" for n in peers))
    for m in METRICS:
        cells = [_cell(peers[n].get("metrics", {}).get(m.key)) for n in peers]
        print(f"{m.label + ' (' + m.unit + ')':<34}" + "".join(f"{c:<28}" for c in cells))
    for name, r in peers.items():
        if "skipped" in r:
            print(f"note: {name} not measured: {r['skipped']}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer repeats, sizes up to 4 MiB")
    p.add_argument("--only", nargs="+", choices=PEERS, default=list(PEERS))
    p.add_argument("--peers-python", default=os.environ.get("PEERS_PYTHON"),
                   help="interpreter with dask[distributed] and ipyparallel")
    p.add_argument("--ray-python", default=os.environ.get("RAY_PYTHON"),
                   help="also looked in for the peers")
    p.add_argument("--json", type=Path, default=RESULTS / "peers.json")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--peer", choices=PEERS, help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker_main(args.peer, args.quick, args.out)
        return
    terminate_on_sigterm()
    report = run(args.only, args.quick, args.peers_python, args.ray_python)
    print_table(report)
    write_json(args.json, report)
    print(f"saved {_shown(args.json)}")


if __name__ == "__main__":
    main()
