"""Serve benchmark: a no-op deployment over HTTP and through handles, raylite beside Ray
Serve and raylite's Serve on the Ray backend; and the cost of one autoscaling decision
against the size of the metric window.

Run from the repository root:

    python benchmarks/serve.py [--quick] [--no-ray] [--ray-python PATH]

Each framework runs in its own fresh subprocess (this script re-invokes itself with
``--worker --framework NAME``), on a 2-CPU cluster (``init(num_cpus=2)``) with the
deployment's default options (``max_ongoing_requests=5``, one CPU per replica) except
``num_replicas``. Frameworks:

- ``raylite``: raylite.serve on raylite's own runtime;
- ``ray``: Ray Serve, under ``--ray-python``, else ``$RAY_PYTHON``, else the current
  interpreter; skipped with a note when ``ray.serve`` cannot be imported there;
- ``raylite-on-ray``: the very same raylite.serve code as ``raylite``, on the Ray backend
  (``raylite.init(backend="ray", num_cpus=2)``: a fresh local Ray, dashboard off, stopped
  at ``shutdown``), so raylite's controller, proxy and replicas are Ray actors. It needs
  raylite and Ray in one interpreter: this one when it imports ray, else the Ray one
  (raylite from this checkout); skipped with a note when ray cannot be imported there.

Measured, for 1 and 2 replicas and client concurrencies 1, 8 and 32, after a warm-up, as
the medians of 3 runs of 3 s per point (``--quick``: one run of 2 s):

- HTTP: ``wrk -t1 -c<concurrency> -d<seconds>`` against ``GET /`` (wrk from Debian's
  packages; a Lua ``done`` hook reports requests/s and the p50 / p99 latency);
- handles: ``<concurrency>`` asyncio tasks in the driver, each awaiting
  ``handle.remote()`` in a loop for the same time: requests/s, p50, p99.

And, in this process (raylite only, pure code): the time of one autoscaling step
(record a sample, aggregate the window, decide) with 10 to 1,000,000 points in the
look-back window, beside a baseline that sorts the window's points for every decision
(the O(n log n) aggregation Ray 2.53 replaced). raylite's should stay flat.

Target (issue #6, this 2-core machine): >= 1,000 requests/s and p99 <= 20 ms for HTTP with
``wrk -t1 -c8`` on 1 replica. Results go to ``benchmarks/results/serve.json`` and a chart
to ``benchmarks/results/serve.png``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks._runner import raylite_on_ray_python, run_json  # noqa: E402
from benchmarks.core import RESULTS, ROOT, _shown, machine_info, worker_env  # noqa: E402

FRAMEWORKS = ("raylite", "ray", "raylite-on-ray")
TITLES = {"raylite": "raylite", "ray": "Ray Serve", "raylite-on-ray": "raylite on Ray"}
# framework -> (the package whose init and serve it uses, init's options beside num_cpus)
SETUPS = {"raylite": ("raylite", {}),
          "ray": ("ray", {"include_dashboard": False}),
          "raylite-on-ray": ("raylite", {"backend": "ray", "include_dashboard": False})}
REPLICAS = (1, 2)
CONCURRENCY = (1, 8, 32)
WINDOW_POINTS = (10, 100, 1_000, 10_000, 100_000, 1_000_000)
TARGET = {"replicas": 1, "concurrency": 8, "rps": 1000.0, "p99_ms": 20.0}
WORKER_TIMEOUT_S = 900

WRK_LUA = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests": %d, "duration_us": %d, "errors": %d, "non2xx": %d, '
    .. '"p50_us": %d, "p99_us": %d, "mean_us": %.1f}\\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout,
    e.status, latency:percentile(50), latency:percentile(99), latency.mean))
end
"""


# --------------------------------------------------------------------------- worker


class Noop:
    """The deployment: answers every request with an empty body."""

    def __call__(self, request=None):
        return b""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wrk(url: str, concurrency: int, seconds: float, lua: str) -> dict[str, float]:
    out = subprocess.run(
        ["wrk", "-t1", f"-c{concurrency}", f"-d{seconds:g}s", "-s", lua, url],
        capture_output=True, text=True, timeout=seconds + 60, check=True).stdout
    line = next(ln for ln in out.splitlines() if ln.startswith("WRKJSON "))
    r = json.loads(line[len("WRKJSON "):])
    return {"rps": r["requests"] / (r["duration_us"] / 1e6), "p50_ms": r["p50_us"] / 1e3,
            "p99_ms": r["p99_us"] / 1e3, "errors": r["errors"] + r["non2xx"],
            "requests": r["requests"]}


def handle_load(handle: Any, concurrency: int, seconds: float) -> dict[str, float]:
    """``concurrency`` asyncio tasks awaiting ``handle.remote()`` back to back."""
    latencies: list[float] = []

    async def client(deadline: float) -> None:
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            await handle.remote()
            latencies.append(time.perf_counter() - t0)

    async def main() -> float:
        start = time.perf_counter()
        await asyncio.gather(*[client(start + seconds) for _ in range(concurrency)])
        return time.perf_counter() - start

    elapsed = asyncio.run(main())
    latencies.sort()
    return {"rps": len(latencies) / elapsed,
            "p50_ms": 1e3 * latencies[len(latencies) // 2],
            "p99_ms": 1e3 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
            "requests": len(latencies), "errors": 0}


def _median(runs: list[dict[str, float]]) -> dict[str, float]:
    """Each metric's median over repeated runs of one point, and the runs themselves."""
    out: dict[str, Any] = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    out["runs"] = runs
    return out


def measure(name: str, seconds: float, repeats: int, replicas: tuple[int, ...] = REPLICAS,
            concurrency: tuple[int, ...] = CONCURRENCY) -> list[dict[str, Any]]:
    """Every HTTP and handle point for framework ``name``, in this process."""
    package, options = SETUPS[name]
    fw = importlib.import_module(package)
    serve = importlib.import_module(f"{package}.serve")
    fw.init(num_cpus=2, **options)
    rows = []
    try:
        port = _free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        url = f"http://127.0.0.1:{port}/"
        with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
            f.write(WRK_LUA)
        for n_replicas in replicas:
            app = serve.deployment(Noop, name="Noop").options(num_replicas=n_replicas).bind()
            handle = serve.run(app, name="bench", route_prefix="/")
            wrk(url, 8, min(seconds, 2), f.name)  # warm-up
            handle_load(handle, 8, min(seconds, 1))
            for c in concurrency:
                rows.append({"via": "http", "replicas": n_replicas, "concurrency": c,
                             **_median([wrk(url, c, seconds, f.name)
                                        for _ in range(repeats)])})
                rows.append({"via": "handle", "replicas": n_replicas, "concurrency": c,
                             **_median([handle_load(handle, c, seconds)
                                        for _ in range(repeats)])})
                print(rows[-2], rows[-1], flush=True)
            serve.delete("bench")
        os.unlink(f.name)
    finally:
        serve.shutdown()
        fw.shutdown()
    return rows


def worker_main(name: str, seconds: float, repeats: int, out_path: str,
                replicas: tuple[int, ...] = REPLICAS,
                concurrency: tuple[int, ...] = CONCURRENCY) -> None:
    package = SETUPS[name][0]
    needs = [f"{package}.serve", *(["ray"] if name == "raylite-on-ray" else [])]
    try:
        for module in needs:
            importlib.import_module(module)
    except ImportError as exc:
        result: dict[str, Any] = {"skipped": f"cannot import {', '.join(needs)}: {exc}"}
    else:
        fw = sys.modules[package]
        result = {"version": getattr(fw, "__version__", "unknown"),
                  "executable": sys.executable,
                  "rows": measure(name, seconds, repeats, replicas, concurrency)}
        if name == "raylite-on-ray":
            result["ray_version"] = sys.modules["ray"].__version__
    Path(out_path).write_text(json.dumps(result))


# --------------------------------------------------------------------------- parent


def run_worker(name: str, python: str, seconds: float, repeats: int,
               replicas: tuple[int, ...] = REPLICAS,
               concurrency: tuple[int, ...] = CONCURRENCY) -> dict[str, Any]:
    """Measure one framework in a fresh subprocess; never leave its processes behind."""
    cmd = [python, str(Path(__file__).resolve()), "--worker", "--framework", name,
           "--seconds", str(seconds), "--repeats", str(repeats),
           "--replicas", *map(str, replicas), "--concurrency", *map(str, concurrency)]
    return run_json(cmd, timeout_s=WORKER_TIMEOUT_S, env=worker_env(name), cwd=ROOT, echo=None)


def decision_times(points: tuple[int, ...], repeats: int) -> list[dict[str, float]]:
    """Time of one autoscaling step with ``n`` points in the window: raylite's policy
    (O(1) aggregation) and a baseline that sorts the window's points each decision."""
    rows = []
    for n in points:
        ours = _DecisionLoop(n)
        gc.disable()  # as timeit does: time the algorithm, not collections of the heap
        try:
            ours_us = statistics.median(ours.step_time() for _ in range(repeats))
            base_us = statistics.median(_sort_baseline(list(ours.policy.window._points))
                                        for _ in range(repeats))
        finally:
            gc.enable()
        rows.append({"points": n, "raylite_us": 1e6 * ours_us,
                     "sort_baseline_us": 1e6 * base_us})
        print(rows[-1], flush=True)
    return rows


class _DecisionLoop:
    """An autoscaling policy whose look-back window holds ``n`` points, one per 10 ms."""

    DT = 0.01

    def __init__(self, n: int):
        from raylite.serve._private.autoscaling import AutoscalingPolicy
        from raylite.serve.config import AutoscalingConfig

        cfg = AutoscalingConfig(min_replicas=1, max_replicas=100,
                                look_back_period_s=n * self.DT,
                                upscale_delay_s=1e9, downscale_delay_s=1e9)
        self.policy = AutoscalingPolicy(cfg)
        self.rng = random.Random(0)
        self.t = 0.0
        self.steps = max(200, min(20_000, 2_000_000 // n))
        for _ in range(n):
            self._record()

    def _record(self) -> None:
        self.t += self.DT
        self.policy.record(self.t, self.rng.randint(0, 20))

    def step_time(self) -> float:
        """Seconds per step: record a sample (evicting the oldest), aggregate, decide."""
        start = time.perf_counter()
        for _ in range(self.steps):
            self._record()
            self.policy.decide(self.t, 4, 4)
        return (time.perf_counter() - start) / self.steps


def _sort_baseline(window: list) -> float:
    """Seconds per decision that merges and sorts the window's points (as before Ray
    2.53) and then averages them."""
    steps = max(3, min(2000, 200_000 // len(window)))
    start = time.perf_counter()
    for _ in range(steps):
        pts = sorted(window)
        sum(v for _, v in pts) / len(pts)
    return (time.perf_counter() - start) / steps


def _row(result: dict, via: str, replicas: int, c: int) -> dict | None:
    for r in result.get("rows", ()):
        if (r["via"], r["replicas"], r["concurrency"]) == (via, replicas, c):
            return r
    return None


def print_table(results: dict[str, dict[str, Any]], decisions: list[dict]) -> None:
    print(f"\nServe benchmarks (no-op deployment), os.cpu_count()={os.cpu_count()}")
    widths = {name: max(9, len(TITLES[name]) + 4) for name in FRAMEWORKS}
    header = f"{'via':<7}{'replicas':>8}{'clients':>8}" + "".join(
        f"   {TITLES[n] + ' rps':>{widths[n]}}{'p50 ms':>8}{'p99 ms':>8}" for n in FRAMEWORKS)
    print(header)
    print("-" * len(header))
    for via in ("http", "handle"):
        for replicas in REPLICAS:
            for c in CONCURRENCY:
                cells = []
                for name in FRAMEWORKS:
                    r = _row(results[name], via, replicas, c)
                    width = widths[name]
                    cells.append("   " + (f"{r['rps']:>{width},.0f}{r['p50_ms']:>8.1f}"
                                          f"{r['p99_ms']:>8.1f}" if r else
                                          f"{'-':>{width}}{'-':>8}{'-':>8}"))
                print(f"{via:<7}{replicas:>8}{c:>8}" + "".join(cells))
    mine = _row(results["raylite"], "http", TARGET["replicas"], TARGET["concurrency"])
    if mine:
        ok = mine["rps"] >= TARGET["rps"] and mine["p99_ms"] <= TARGET["p99_ms"]
        print(f"target (http, 1 replica, wrk -c8): >= {TARGET['rps']:,.0f} rps and p99 <= "
              f"{TARGET['p99_ms']:g} ms: {'ok' if ok else 'MISSED'}")
    print(f"\n{'window points':>14}{'raylite decision us':>22}{'sort baseline us':>19}")
    for d in decisions:
        print(f"{d['points']:>14,}{d['raylite_us']:>22.2f}{d['sort_baseline_us']:>19.1f}")
    for name, r in results.items():
        if "skipped" in r:
            print(f"note: {name} not measured: {r['skipped']}")
        elif "load_average_1min" in r:
            before, after = r["load_average_1min"]
            print(f"note: 1-min load average while measuring {name}: {before:.1f} -> "
                  f"{after:.1f} (this machine has {os.cpu_count()} CPUs)")


def plot(results: dict[str, dict[str, Any]], decisions: list[dict], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("plot skipped: matplotlib is not installed")
        return
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    styles = {"raylite": "tab:blue", "ray": "tab:orange", "raylite-on-ray": "tab:olive"}
    panels = [(axes[0][0], "http", "rps", "HTTP requests/s"),
              (axes[0][1], "http", "p99_ms", "HTTP p99 latency (ms)"),
              (axes[1][0], "handle", "rps", "handle requests/s")]
    for ax, via, key, title in panels:
        for name in FRAMEWORKS:
            for replicas, ls in zip(REPLICAS, ("-", "--"), strict=True):
                pts = [(c, r[key]) for c in CONCURRENCY
                       if (r := _row(results[name], via, replicas, c))]
                if pts:
                    ax.plot(*zip(*pts, strict=True), ls, marker="o", color=styles[name],
                            label=f"{TITLES[name]}, {replicas} replica"
                                  f"{'s' * (replicas > 1)}")
        ax.set_xscale("log", base=2)
        ax.set_xticks(CONCURRENCY, [str(c) for c in CONCURRENCY])
        ax.set_xlabel("client concurrency")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0][0].axhline(TARGET["rps"], color="grey", ls=":", label="target (1 replica, c=8)")
    axes[0][1].axhline(TARGET["p99_ms"], color="grey", ls=":", label="target (1 replica, c=8)")
    axes[0][1].set_yscale("log")
    axes[0][0].legend(fontsize=8)
    ax = axes[1][1]
    if decisions:
        n = [d["points"] for d in decisions]
        ax.loglog(n, [d["raylite_us"] for d in decisions], "o-", label="raylite (O(1))")
        ax.loglog(n, [d["sort_baseline_us"] for d in decisions], "s--", color="grey",
                  label="sort the window (O(n log n))")
        ax.set_xlabel("metric points in the look-back window")
        ax.set_ylabel("µs per autoscaling decision")
        ax.set_title("autoscaling decision time")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle("Serve: raylite, Ray Serve and raylite's Serve on the Ray backend, no-op "
                 "deployment (2 CPUs)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"saved {_shown(path)}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="one 2 s run per point")
    p.add_argument("--seconds", type=float, help="seconds per run (default 3)")
    p.add_argument("--repeats", type=int, help="runs per point, medians kept (default 3)")
    p.add_argument("--replicas", type=int, nargs="+", default=REPLICAS,
                   help=f"replica counts (default {REPLICAS})")
    p.add_argument("--concurrency", type=int, nargs="+", default=CONCURRENCY,
                   help=f"client concurrencies (default {CONCURRENCY})")
    p.add_argument("--window-points", type=int, nargs="+", default=WINDOW_POINTS,
                   help="autoscaling window sizes to time decisions at")
    p.add_argument("--no-ray", action="store_true",
                   help="measure raylite only (neither Ray Serve nor raylite on Ray)")
    p.add_argument("--framework", choices=FRAMEWORKS, help="measure only this framework")
    p.add_argument("--ray-python", default=os.environ.get("RAY_PYTHON", sys.executable),
                   help="interpreter with ray[serve] installed (default: $RAY_PYTHON, else "
                        "this one)")
    p.add_argument("--json", type=Path, default=RESULTS / "serve.json", help="JSON output")
    p.add_argument("--png", type=Path, default=RESULTS / "serve.png", help="chart output")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.seconds = args.seconds or (2.0 if args.quick else 3.0)
    args.repeats = args.repeats or (1 if args.quick else 3)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        worker_main(args.framework, args.seconds, args.repeats, args.out,
                    tuple(args.replicas), tuple(args.concurrency))
        return
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install -y wrk")
    names = ([args.framework] if args.framework else
             ["raylite"] + ([] if args.no_ray else ["ray", "raylite-on-ray"]))
    pythons = {"raylite": sys.executable, "ray": args.ray_python}
    if "raylite-on-ray" in names:
        pythons["raylite-on-ray"] = raylite_on_ray_python(args.ray_python)
    results: dict[str, dict[str, Any]] = {}
    for name in FRAMEWORKS:
        if name not in names:
            results[name] = {"skipped": "not requested"}
            continue
        print(f"measuring {name} with {pythons[name]} ...", flush=True)
        load_before = os.getloadavg()[0]
        results[name] = run_worker(name, pythons[name], args.seconds, args.repeats,
                                   tuple(args.replicas), tuple(args.concurrency))
        # other work on the machine shows in the tails: keep the load beside the numbers
        results[name]["load_average_1min"] = [load_before, os.getloadavg()[0]]
        if "log" in results[name]:
            print(results[name]["log"], file=sys.stderr)
    print("timing autoscaling decisions ...", flush=True)
    decisions = decision_times(tuple(args.window_points), repeats=3 if args.quick else 5)
    print_table(results, decisions)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    report = {"machine": machine_info(),
              "config": {"seconds": args.seconds, "repeats": args.repeats,
                         "replicas": args.replicas,
                         "concurrency": args.concurrency, "load_generator": "wrk -t1"},
              "target": TARGET, "frameworks": results, "autoscaling_decision": decisions}
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"saved {_shown(args.json)}")
    if args.png:
        plot(results, decisions, args.png)


if __name__ == "__main__":
    main()
