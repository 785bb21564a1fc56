"""Core runtime microbenchmarks: raylite beside Ray.

Run from the repository root:

    python benchmarks/core.py [--quick] [--no-ray] [--ray-python PATH]

Each framework is measured in its own fresh subprocess (this script re-invokes itself
with ``--framework NAME --worker``), so neither sees the other's imports, threads or
processes. raylite runs under the current interpreter; Ray runs under ``--ray-python``,
else ``$RAY_PYTHON``, else the current interpreter, and is skipped with a note when it
cannot be imported there (``pip install ray`` in a separate venv is the usual setup).

Measured, after a warm-up run of each, as medians of several repeats (5; 2 with
``--quick``) with min-max:

- init -> first result: ``init(num_cpus=2)`` until ``get`` of a trivial task returns,
  and ``shutdown()`` time, over fresh init/shutdown cycles in one process;
- 1000 async no-op tasks (submit all, then get all), sync task round trip;
- actor creation (create + first method result), 1000 async actor calls, sync actor
  round trip;
- 1000 small ``put`` calls.

Ray runs with usage stats and the dashboard off (raylite has neither); log forwarding
to the driver stays on, as in raylite. Results go to ``benchmarks/results/core.json``
and, when both frameworks ran and matplotlib is installed, a chart of how many times
faster raylite is than Ray to ``benchmarks/results/core.png``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks._runner import run_json  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
FRAMEWORKS = ("raylite", "ray")
BATCH = 1000  # tasks / actor calls / puts per async or put sample
WORKER_TIMEOUT_S = 900


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    unit: str
    higher_is_better: bool
    target: float  # what raylite must reach (issue #2)


METRICS = [
    Metric("init", "init -> first result", "s", False, 0.25),
    Metric("shutdown", "shutdown", "s", False, 0.1),
    Metric("async_tasks", f"{BATCH} async tasks", "tasks/s", True, 8000),
    Metric("sync_task", "sync task round trip", "us", False, 300),
    Metric("actor_create", "actor creation", "s", False, 0.05),
    Metric("async_actor", f"{BATCH} async actor calls", "calls/s", True, 15000),
    Metric("sync_actor", "sync actor round trip", "us", False, 250),
    Metric("puts", f"{BATCH} small puts", "puts/s", True, 10000),
]


# --------------------------------------------------------------------------- worker


def _noop() -> None:
    return None


class _Pinger:
    def ping(self) -> None:
        return None


def _timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _samples(sample: Callable[[], float], repeats: int) -> list[float]:
    sample()  # warm-up, discarded
    return [sample() for _ in range(repeats)]


def _init_kwargs(name: str) -> dict[str, Any]:
    if name == "ray":
        return {"num_cpus": 2, "include_dashboard": False}
    return {"num_cpus": 2}


def measure(name: str, repeats: int, sync_calls: int) -> dict[str, list[float]]:
    """Run every benchmark against framework ``name`` in this process."""
    fw = __import__(name)
    noop = fw.remote(_noop)
    out = init_cycles(fw, noop, repeats)
    fw.init(**_init_kwargs(fw.__name__))
    try:
        out.update(steady_state(fw, noop, fw.remote(_Pinger), repeats, sync_calls))
    finally:
        fw.shutdown()
    return out


def init_cycles(fw: Any, noop: Any, repeats: int) -> dict[str, list[float]]:
    """Fresh init -> first result -> shutdown cycles; cycle 0 is the warm-up."""
    out: dict[str, list[float]] = {"init": [], "shutdown": []}
    for cycle in range(repeats + 1):
        start = time.perf_counter()
        fw.init(**_init_kwargs(fw.__name__))
        fw.get(noop.remote())
        first = time.perf_counter()
        fw.shutdown()
        if cycle:
            out["init"].append(first - start)
            out["shutdown"].append(time.perf_counter() - first)
    return out


def steady_state(
    fw: Any, noop: Any, pinger_cls: Any, repeats: int, sync_calls: int
) -> dict[str, list[float]]:
    """Task, actor and put benchmarks on a running cluster."""

    def submit_all(call: Callable[[], Any]) -> Callable[[], Any]:
        return lambda: fw.get([call() for _ in range(BATCH)])

    def one_by_one(call: Callable[[], Any]) -> Callable[[], Any]:
        return lambda: [fw.get(call()) for _ in range(sync_calls)]

    def actor_create() -> float:
        start = time.perf_counter()
        actor = pinger_cls.remote()
        fw.get(actor.ping.remote())
        elapsed = time.perf_counter() - start
        fw.kill(actor)
        return elapsed

    def puts() -> float:
        start = time.perf_counter()
        refs = [fw.put(b"x" * 64) for _ in range(BATCH)]
        elapsed = time.perf_counter() - start
        del refs  # freeing happens outside the timed region
        return BATCH / elapsed

    actor = pinger_cls.remote()
    fw.get(actor.ping.remote())
    benches: dict[str, Callable[[], float]] = {
        "async_tasks": lambda: BATCH / _timed(submit_all(noop.remote)),
        "sync_task": lambda: 1e6 * _timed(one_by_one(noop.remote)) / sync_calls,
        "actor_create": actor_create,
        "async_actor": lambda: BATCH / _timed(submit_all(actor.ping.remote)),
        "sync_actor": lambda: 1e6 * _timed(one_by_one(actor.ping.remote)) / sync_calls,
        "puts": puts,
    }
    return {key: _samples(bench, repeats) for key, bench in benches.items()}


def worker_main(name: str, repeats: int, sync_calls: int, out_path: str) -> None:
    try:
        fw = __import__(name)
    except ImportError as exc:
        result: dict[str, Any] = {"skipped": f"cannot import {name}: {exc}"}
    else:
        result = {
            "version": getattr(fw, "__version__", "unknown"),
            "python": platform.python_version(),
            "executable": sys.executable,
            "samples": measure(name, repeats, sync_calls),
        }
    Path(out_path).write_text(json.dumps(result))


# --------------------------------------------------------------------------- parent


def worker_env(framework: str) -> dict[str, str]:
    """The environment of a measuring subprocess: Ray's usage stats off, and raylite
    importable from a checkout without installing. ``raylite`` runs on its own runtime
    whatever ``RAYLITE_BACKEND`` says; ``raylite-on-ray`` starts a fresh local Ray, never
    joins the one ``RAY_ADDRESS`` names."""
    env = dict(os.environ, RAY_DISABLE_USAGE_STATS="1")
    if framework.startswith("raylite"):
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        env.pop("RAYLITE_BACKEND", None)
    if framework == "raylite-on-ray":
        env.pop("RAY_ADDRESS", None)
    return env


def run_worker(name: str, python: str, repeats: int, sync_calls: int) -> dict[str, Any]:
    """Measure one framework in a fresh subprocess; never leave its processes behind."""
    cmd = [python, str(Path(__file__).resolve()), "--worker", "--framework", name,
           "--repeats", str(repeats), "--sync-calls", str(sync_calls)]
    return run_json(cmd, timeout_s=WORKER_TIMEOUT_S, env=worker_env(name), cwd=ROOT, echo=None)


def summarize(samples: list[float]) -> dict[str, float]:
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples)}


def speedup(metric: Metric, raylite: float, ray: float) -> float:
    """How many times faster raylite is than Ray (> 1: raylite faster)."""
    return raylite / ray if metric.higher_is_better else ray / raylite


def meets(metric: Metric, value: float) -> bool:
    return value >= metric.target if metric.higher_is_better else value <= metric.target


def _fmt(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def _cell(stats: dict[str, float] | None) -> str:
    if stats is None:
        return "-"
    return f"{_fmt(stats['median'])} [{_fmt(stats['min'])}-{_fmt(stats['max'])}]"


def print_table(results: dict[str, dict[str, Any]], repeats: int) -> None:
    stats = {name: r.get("metrics", {}) for name, r in results.items()}
    print(f"\nCore benchmarks: medians of {repeats} [min-max], os.cpu_count()={os.cpu_count()}")
    header = f"{'metric':<34}{'raylite':<26}{'ray':<26}{'raylite vs ray':<17}target"
    print(header)
    print("-" * (len(header) + 8))
    for m in METRICS:
        mine, theirs = stats.get("raylite", {}).get(m.key), stats.get("ray", {}).get(m.key)
        ratio = (
            f"{speedup(m, mine['median'], theirs['median']):.2f}x faster"
            if mine and theirs
            else "-"
        )
        target = f"{'>=' if m.higher_is_better else '<='} {_fmt(m.target)}"
        if mine:
            target += "  ok" if meets(m, mine["median"]) else "  MISSED"
        print(
            f"{m.label + ' (' + m.unit + ')':<34}{_cell(mine):<26}{_cell(theirs):<26}"
            f"{ratio:<17}{target}"
        )
    for name, r in results.items():
        if "skipped" in r:
            print(f"note: {name} not measured: {r['skipped']}")


def plot(results: dict[str, dict[str, Any]], path: Path) -> None:
    """Bar chart of raylite's speedup over Ray, with the speedup each target implies."""
    mine, theirs = (results[n].get("metrics") for n in FRAMEWORKS)
    if not (mine and theirs):
        print("plot skipped: needs results for both raylite and ray")
        return
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("plot skipped: matplotlib is not installed")
        return
    labels = [m.label for m in METRICS]
    ratios = [speedup(m, mine[m.key]["median"], theirs[m.key]["median"]) for m in METRICS]
    needed = [speedup(m, m.target, theirs[m.key]["median"]) for m in METRICS]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.barh(
        labels,
        ratios,
        color=[
            "tab:green" if r >= n else "tab:orange" for r, n in zip(ratios, needed, strict=True)
        ],
    )
    ax.scatter(needed, labels, marker="|", s=300, color="black", label="target", zorder=3)
    ax.axvline(1, color="grey", linestyle="--", linewidth=1)
    ax.set_xscale("log")
    ax.invert_yaxis()
    ax.set_xlabel("times faster than Ray (log scale; > 1: raylite faster)")
    ax.set_title("raylite vs Ray: core runtime")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"saved {_shown(path)}")


def _shown(path: Path) -> Path:
    path = path.resolve()
    return path.relative_to(ROOT) if path.is_relative_to(ROOT) else path


def machine_info() -> dict[str, Any]:
    return {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "processor": _cpu_model(),
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="2 repeats instead of 5")
    p.add_argument("--repeats", type=int, help="repeats per measurement (default 5)")
    p.add_argument("--no-ray", action="store_true", help="measure raylite only")
    p.add_argument("--framework", choices=FRAMEWORKS, help="measure only this framework")
    p.add_argument(
        "--ray-python",
        default=os.environ.get("RAY_PYTHON", sys.executable),
        help="interpreter with ray installed (default: $RAY_PYTHON, else this one)",
    )
    p.add_argument("--json", type=Path, default=RESULTS / "core.json", help="JSON output")
    p.add_argument("--png", type=Path, default=RESULTS / "core.png", help="chart output")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--sync-calls", type=int, help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.repeats = args.repeats or (2 if args.quick else 5)
    args.sync_calls = args.sync_calls or (100 if args.quick else 300)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        worker_main(args.framework, args.repeats, args.sync_calls, args.out)
        return
    names = [args.framework] if args.framework else ["raylite"] + ([] if args.no_ray else ["ray"])
    pythons = {"raylite": sys.executable, "ray": args.ray_python}
    results: dict[str, dict[str, Any]] = {}
    for name in FRAMEWORKS:
        if name not in names:
            results[name] = {"skipped": "not requested"}
            continue
        print(f"measuring {name} with {pythons[name]} ...", flush=True)
        result = run_worker(name, pythons[name], args.repeats, args.sync_calls)
        if "samples" in result:
            result["metrics"] = {k: summarize(v) for k, v in result["samples"].items()}
        elif "log" in result:
            print(result["log"], file=sys.stderr)
        results[name] = result
    print_table(results, args.repeats)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "machine": machine_info(),
        "config": {"repeats": args.repeats, "batch": BATCH, "sync_calls": args.sync_calls},
        "targets": {
            m.key: {
                "label": m.label,
                "unit": m.unit,
                "target": m.target,
                "higher_is_better": m.higher_is_better,
            }
            for m in METRICS
        },
        "frameworks": results,
    }
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"saved {_shown(args.json)}")
    if args.png:
        plot(results, args.png)


if __name__ == "__main__":
    main()
