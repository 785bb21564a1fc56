"""Scheduling benchmarks: the autoscaler's decision time against cluster size, and the
runtime's placement-group and queued-task rates beside Ray.

Run from the repository root:

    python benchmarks/scheduling.py [--quick] [--no-ray] [--no-runtime] [--ray-python PATH]

1. **Autoscaler decision** (raylite only, in this process, no cluster): the time of one
   ``raylite.autoscaler.decide`` call for 10 -> 1,000 nodes and 100 -> 10,000 pending
   requests, median of several repeats (5; 2 with ``--quick``). The input is synthetic
   but shaped like a real cluster: six node types (4-CPU, 16-CPU and 1-GPU nodes in two
   zones), nodes with random free capacity, requests of a handful of shapes (some with a
   zone label selector, some GPU actors) plus one pending placement group per 100
   requests (PACK / SPREAD / STRICT_PACK / STRICT_SPREAD in turn). A second series gives
   every 50th request its own shape (200 distinct shapes at 10,000 requests), since the
   policy's cost grows with distinct shapes, not with requests.
2. **Runtime** (``--no-runtime`` skips it; each framework in its own fresh subprocess,
   Ray under ``--ray-python``, else ``$RAY_PYTHON``, else ``/work/rayvenv/bin/python``
   when it exists): placement group create+remove per second (Ray's microbenchmark
   shape: create a batch of one-bundle groups, wait for all, remove all; Ray 2.53
   publishes 679/s) and the time to run 10,000 queued no-op tasks (submit all, get all)
   on ``init(num_cpus=2)``.

Results go to ``benchmarks/results/scheduling.json`` and, with matplotlib,
``benchmarks/results/scheduling.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._runner import run_json  # noqa: E402
from benchmarks.core import RESULTS, ROOT, _shown, machine_info, worker_env  # noqa: E402

NODES = (10, 100, 1000)
REQUESTS = (100, 1000, 10000)
PG_BATCH = 100
QUEUED_TASKS = 10_000
RAY_PG_PUBLISHED = 679.0  # Ray 2.53 release microbenchmark, placement groups per second
WORKER_TIMEOUT_S = 600
DEFAULT_RAY_PYTHON = "/work/rayvenv/bin/python"


# ------------------------------------------------------------------ 1. autoscaler decision
def synthetic(num_nodes: int, num_requests: int, distinct_every: int = 0, seed: int = 0):
    """(demand, nodes, node types) for one decision; see the module docstring."""
    from raylite.autoscaler import NODE_TYPE_LABEL, AutoscalerConfig

    rng = random.Random(seed)
    kinds = {"cpu4": {"CPU": 4}, "cpu16": {"CPU": 16}, "gpu": {"CPU": 8, "GPU": 1}}
    spec = {f"{k}-{z}": {"resources": r, "labels": {"zone": z}, "max_workers": 10 * num_nodes}
            for k, r in kinds.items() for z in ("a", "b")}
    types = AutoscalerConfig(node_types=spec).node_types
    names = list(types)
    nodes = []
    for i in range(num_nodes):
        t = types[rng.choice(names)]
        free = {k: float(rng.randint(0, int(v))) for k, v in t.resources.items()}
        nodes.append({"node_id": f"n{i}", "node_type": t.name, "status": "running",
                      "alive": True, "resources": dict(t.resources), "available": free,
                      "labels": {**t.labels, NODE_TYPE_LABEL: t.name,
                                 "raylite.io/node-id": f"n{i}"},
                      "idle_s": rng.uniform(0, 120), "start_time": 0.0})
    shapes = [({"CPU": 1}, None, "task", 50), ({"CPU": 2}, None, "task", 20),
              ({"CPU": 1}, {"zone": "b"}, "task", 15), ({"CPU": 1, "GPU": 1}, None, "actor", 10),
              ({"CPU": 4}, {"zone": "!a"}, "actor", 5)]
    weights = [s[3] for s in shapes]
    requests = []
    for i in range(num_requests):
        if distinct_every and i % distinct_every == 0:
            d, sel, kind = {"CPU": 1, "memory": float(i + 1)}, None, "task"
        else:
            d, sel, kind, _ = rng.choices(shapes, weights)[0]
        requests.append({"kind": kind, "demand": d, "label_selector": sel,
                         "strategy": "DEFAULT", "infeasible": False})
    strategies = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")
    pgs = [{"strategy": strategies[i % 4],
            "bundles": [{"resources": {"CPU": 1}, "label_selector": {}}
                        for _ in range(2 + i % 3)]} for i in range(num_requests // 100)]
    return {"requests": requests, "placement_groups": pgs}, nodes, types


def time_decision(num_nodes: int, num_requests: int, repeats: int,
                  distinct_every: int = 0) -> dict[str, Any]:
    from raylite.autoscaler import decide

    demand, nodes, types = synthetic(num_nodes, num_requests, distinct_every)
    decide(demand, nodes, types, idle_timeout_s=60)  # warm-up
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        d = decide(demand, nodes, types, idle_timeout_s=60)
        samples.append((time.perf_counter() - t0) * 1e3)
    return {"nodes": num_nodes, "requests": num_requests,
            "shapes": len({(tuple(sorted(r["demand"].items())), str(r["label_selector"]))
                           for r in demand["requests"]}),
            "placement_groups": len(demand["placement_groups"]),
            "ms": {"median": statistics.median(samples), "min": min(samples),
                   "max": max(samples)},
            "launched": sum(d.launch_counts().values()), "terminated": len(d.terminations)}


def autoscaler_decisions(repeats: int) -> list[dict[str, Any]]:
    rows = []
    for series, every in (("mixed", 0), ("many shapes", 50)):
        for n in NODES:
            for r in REQUESTS:
                row = time_decision(n, r, repeats, every)
                row["series"] = series
                rows.append(row)
                print(f"  {series:<12} {n:>5} nodes {r:>6} requests ({row['shapes']:>3} "
                      f"shapes): {row['ms']['median']:8.2f} ms", flush=True)
    return rows


# ------------------------------------------------------------------ 2. runtime (per framework)
def _noop() -> None:
    return None


def measure_runtime(name: str, repeats: int) -> dict[str, list[float]]:
    """Placement groups per second and 10,000 queued tasks, on init(num_cpus=2)."""
    fw = __import__(name)
    util = __import__(f"{name}.util", fromlist=["placement_group"])
    kwargs = {"num_cpus": 2} | ({"include_dashboard": False} if name == "ray" else {})
    fw.init(**kwargs)
    noop = fw.remote(_noop)
    try:
        fw.get([noop.remote() for _ in range(100)])  # warm the workers

        def pg_rate() -> float:
            t0 = time.perf_counter()
            pgs = [util.placement_group([{"CPU": 0.01}]) for _ in range(PG_BATCH)]
            for pg in pgs:
                assert pg.wait(30)
            for pg in pgs:
                util.remove_placement_group(pg)
            return PG_BATCH / (time.perf_counter() - t0)

        def queued_tasks() -> float:
            t0 = time.perf_counter()
            fw.get([noop.remote() for _ in range(QUEUED_TASKS)])
            return time.perf_counter() - t0

        out: dict[str, list[float]] = {}
        for key, bench in (("pg_per_s", pg_rate), ("queued_10k_s", queued_tasks)):
            bench()  # warm-up
            out[key] = [bench() for _ in range(repeats)]
        return out
    finally:
        fw.shutdown()


def worker_main(name: str, repeats: int, out_path: str) -> None:
    try:
        fw = __import__(name)
    except ImportError as exc:
        result: dict[str, Any] = {"skipped": f"cannot import {name}: {exc}"}
    else:
        result = {"version": getattr(fw, "__version__", "unknown"),
                  "samples": measure_runtime(name, repeats)}
    Path(out_path).write_text(json.dumps(result))


def run_worker(name: str, python: str, repeats: int) -> dict[str, Any]:
    """Measure one framework in a fresh subprocess; never leave its processes behind."""
    cmd = [python, str(Path(__file__).resolve()), "--worker", "--framework", name,
           "--repeats", str(repeats)]
    result = run_json(cmd, timeout_s=WORKER_TIMEOUT_S, env=worker_env(name), cwd=ROOT,
                      echo=None)
    if "samples" in result:
        result["metrics"] = {k: {"median": statistics.median(v), "min": min(v), "max": max(v)}
                             for k, v in result["samples"].items()}
    return result


# ------------------------------------------------------------------ report
def print_tables(decisions: list[dict], runtime: dict[str, dict]) -> None:
    print(f"\nAutoscaler decision time (ms, median), os.cpu_count()={os.cpu_count()}")
    for series in ("mixed", "many shapes"):
        rows = [r for r in decisions if r["series"] == series]
        if not rows:
            continue
        print(f"{series:<14}" + "".join(f"{r:>12,} req" for r in REQUESTS))
        for n in NODES:
            cells = {r["requests"]: r["ms"]["median"] for r in rows if r["nodes"] == n}
            print(f"{n:>6,} nodes   " + "".join(f"{cells.get(r, float('nan')):>16.2f}"
                                                 for r in REQUESTS))
    if runtime:
        print("\nRuntime (median [min-max])")
        for name, r in runtime.items():
            if "metrics" not in r:
                print(f"  {name}: not measured ({r.get('skipped')})")
                continue
            m = r["metrics"]
            print(f"  {name:<8} placement groups create+remove: {m['pg_per_s']['median']:,.0f}/s "
                  f"[{m['pg_per_s']['min']:,.0f}-{m['pg_per_s']['max']:,.0f}]   "
                  f"{QUEUED_TASKS:,} queued tasks: {m['queued_10k_s']['median']:.2f} s "
                  f"[{m['queued_10k_s']['min']:.2f}-{m['queued_10k_s']['max']:.2f}]")
        print(f"  (Ray 2.53 published {RAY_PG_PUBLISHED:.0f} placement groups/s)")


def plot(decisions: list[dict], runtime: dict[str, dict], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("plot skipped: matplotlib is not installed")
        return
    measured = {n: r["metrics"] for n, r in runtime.items() if "metrics" in r}
    fig, axes = plt.subplots(1, 3 if measured else 1, figsize=(13 if measured else 6, 4.2))
    axes = axes if measured else [axes]
    ax = axes[0]
    for series, style in (("mixed", "-"), ("many shapes", "--")):
        for r, color in zip(REQUESTS, ("tab:blue", "tab:orange", "tab:green"), strict=True):
            pts = sorted((d["nodes"], d["ms"]["median"]) for d in decisions
                         if d["series"] == series and d["requests"] == r)
            if pts:
                ax.plot(*zip(*pts, strict=True), style, marker="o", color=color,
                        label=f"{r:,} requests ({series})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("nodes")
    ax.set_ylabel("decision time (ms, log)")
    ax.set_title("autoscaler decision time")
    ax.legend(fontsize=7)
    if measured:
        names = list(measured)
        pg = [measured[n]["pg_per_s"]["median"] for n in names]
        axes[1].bar(names, pg, color=["tab:green" if n == "raylite" else "tab:grey"
                                      for n in names])
        axes[1].axhline(RAY_PG_PUBLISHED, color="black", linestyle="--", linewidth=1,
                        label=f"Ray 2.53 published ({RAY_PG_PUBLISHED:.0f}/s)")
        axes[1].set_title("placement groups create+remove per second")
        axes[1].legend(fontsize=7)
        q = [measured[n]["queued_10k_s"]["median"] for n in names]
        axes[2].bar(names, q, color=["tab:green" if n == "raylite" else "tab:grey"
                                     for n in names])
        axes[2].set_title(f"{QUEUED_TASKS:,} queued no-op tasks (s, lower is better)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"saved {_shown(path)}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="2 repeats instead of 5")
    p.add_argument("--repeats", type=int, help="repeats per measurement (default 5)")
    p.add_argument("--no-ray", action="store_true", help="runtime part: raylite only")
    p.add_argument("--no-runtime", action="store_true", help="only the autoscaler decision")
    p.add_argument("--ray-python", default=os.environ.get("RAY_PYTHON") or (
        DEFAULT_RAY_PYTHON if os.path.exists(DEFAULT_RAY_PYTHON) else sys.executable),
        help="interpreter with ray installed")
    p.add_argument("--json", type=Path, default=RESULTS / "scheduling.json")
    p.add_argument("--png", type=Path, default=RESULTS / "scheduling.png")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--framework", choices=("raylite", "ray"), help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.repeats = args.repeats or (2 if args.quick else 5)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        worker_main(args.framework, args.repeats, args.out)
        return
    print("autoscaler decisions ...", flush=True)
    decisions = autoscaler_decisions(args.repeats)
    runtime: dict[str, dict] = {}
    if not args.no_runtime:
        pythons = {"raylite": sys.executable, "ray": args.ray_python}
        for name in ("raylite",) + (() if args.no_ray else ("ray",)):
            print(f"runtime: {name} with {pythons[name]} ...", flush=True)
            runtime[name] = run_worker(name, pythons[name], args.repeats)
            if "log" in runtime[name]:
                print(runtime[name]["log"], file=sys.stderr)
    print_tables(decisions, runtime)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    report = {"machine": machine_info(),
              "config": {"repeats": args.repeats, "pg_batch": PG_BATCH,
                         "queued_tasks": QUEUED_TASKS,
                         "ray_published_pg_per_s": RAY_PG_PUBLISHED},
              "autoscaler_decision": decisions, "runtime": runtime}
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"saved {_shown(args.json)}")
    if args.png:
        plot(decisions, runtime, args.png)


if __name__ == "__main__":
    main()
