"""Object transfer benchmark, 1 KiB to 1 GiB: put, get and task-argument times, raylite vs Ray.

Both beside a plain memcpy of the same size.

Run from the repository root:

    python benchmarks/object_transfer.py [--quick] [--no-ray] [--ray-python PATH]
                                         [--only CONFIG ...]

``--quick`` stops at 64 MiB and takes fewer repeats. Ray runs under ``--ray-python``,
else ``$RAY_PYTHON``, else the current interpreter (it needs torch there too), and is
skipped with a note when it cannot be imported.

Payloads are float32 NumPy arrays or CPU torch tensors of 1K, 16K, 256K, 4M, 64M, 256M
and 1G bytes, one size at a time. Each config runs in its own fresh subprocess:

- raylite / Ray x NumPy, torch with zero-copy on, torch with zero-copy off (raylite:
  ``init(enable_zero_copy_torch_tensors=...)``; Ray: ``RAY_ENABLE_ZERO_COPY_TORCH_TENSORS``
  set or removed in the subprocess's environment before ``import ray``);
- memcpy: ``np.copyto`` into a preallocated, already-touched array of the same size.

Measured per size, as medians of repeats (after one discarded warm-up), freeing every
object (``del``) between repeats:

- put:   ``put(x)`` in the driver;
- get:   ``get(ref)`` in the driver, same node, of one object put beforehand;
- task:  a task on the driver's node receives a fresh ref as its argument and returns
  a checksum of 3 elements: time from ``.remote()`` until ``get`` returns;
- cross: the same, with the task pinned to a second virtual node (raylite starts two,
  ``nodes=[...]`` and ``label_selector``). Ray has no virtual nodes: its cross row shows
  its same-node task, marked ``*``.

A ``get`` that takes over 2 minutes counts as a hang: the config's larger sizes are
skipped and the error is reported. Results go to ``benchmarks/results/object_transfer.json``
(all samples, machine, versions, date) and a log-log plot of time against size, one
panel per operation, to ``benchmarks/results/object_transfer.png``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks._runner import run_json  # noqa: E402
from benchmarks.core import RESULTS, ROOT, _shown, machine_info, worker_env  # noqa: E402

SIZES = [1 << 10, 1 << 14, 1 << 18, 1 << 22, 1 << 26, 10**8, 1 << 28, 1 << 30]
QUICK_MAX = 1 << 26
OPS = ("put", "get", "task", "cross")
OP_TITLES = {
    "put": "put (driver)",
    "get": "get (driver, same node)",
    "task": "task argument, same node (round trip)",
    "cross": "task argument, other virtual node (round trip)",
}
WORKER_TIMEOUT_S = 900
GET_TIMEOUT_S = 120  # a get slower than this counts as a hang: larger sizes are skipped
SETTLE_S = 3.0  # after init, before timing


@dataclass(frozen=True)
class Config:
    framework: str  # "raylite", "ray" or "memcpy"
    payload: str  # "numpy" or "torch"
    zero_copy: bool | None = None  # torch only

    @property
    def key(self) -> str:
        zc = {None: "", True: " zc", False: " copy"}[self.zero_copy]
        return f"{self.framework} {self.payload}{zc}" if self.framework != "memcpy" else "memcpy"


CONFIGS = [
    Config(fw, payload, zc)
    for fw in ("raylite", "ray")
    for payload, zc in (("numpy", None), ("torch", True), ("torch", False))
] + [Config("memcpy", "numpy")]


def size_label(n: int) -> str:
    if n >= 10**6 and n % 10**6 == 0:  # the "100 MB"
        return f"{n // 10**6}MB"
    for unit, shift in (("G", 30), ("M", 20), ("K", 10)):
        if n >= 1 << shift:
            return f"{n >> shift}{unit}"
    return str(n)


def repeats_for(size: int, quick: bool, override: int | None) -> int:
    if override:
        return override
    if size <= 1 << 18:
        return 7 if quick else 21
    return 3 if quick or size >= 1 << 28 else 7


# --------------------------------------------------------------------------- worker


def _checksum(x: Any) -> float:
    return float(x[0]) + float(x[len(x) // 2]) + float(x[-1])


def _payload(kind: str, nbytes: int) -> Any:
    if kind == "torch":
        import torch

        return torch.ones(nbytes // 4, dtype=torch.float32)
    import numpy as np

    return np.ones(nbytes // 4, dtype=np.float32)


def _samples(sample: Callable[[], float], repeats: int) -> list[float]:
    sample()  # warm-up, discarded
    return [sample() for _ in range(repeats)]


def _copy_time(src: Any, dst: Any) -> float:
    import numpy as np

    start = time.perf_counter()
    np.copyto(dst, src)
    return time.perf_counter() - start


def measure_memcpy(sizes: list[int], reps: Callable[[int], int]) -> dict[str, Any]:
    import numpy as np

    out = {}
    for size in sizes:
        src, dst = _payload("numpy", size), np.zeros(size // 4, dtype=np.float32)
        out[str(size)] = {"copy": _samples(partial(_copy_time, src, dst), reps(size))}
        del src, dst
    return out


def measure(cfg: Config, sizes: list[int], reps: Callable[[int], int]) -> dict[str, Any]:
    """All operations for every size against ``cfg.framework`` in this process."""
    fw = __import__(cfg.framework)
    if cfg.framework == "ray":
        fw.init(num_cpus=2, include_dashboard=False)
        task_opts: dict[str, dict[str, Any]] = {"task": {}}
    else:
        zc = {} if cfg.zero_copy is None else {"enable_zero_copy_torch_tensors": cfg.zero_copy}
        fw.init(
            nodes=[
                {"num_cpus": 1, "labels": {"side": "near"}},
                {"num_cpus": 1, "labels": {"side": "far"}},
            ],
            **zc,
        )
        task_opts = {
            "task": {"label_selector": {"side": "near"}},
            "cross": {"label_selector": {"side": "far"}},
        }
    checksum = fw.remote(_checksum)
    out: dict[str, Any] = {}
    try:
        # Let start-up finish (Ray prestarts workers) before anything is timed.
        fw.get([checksum.options(**o).remote([1.0, 1.0, 1.0]) for o in task_opts.values()])
        time.sleep(SETTLE_S)
        for size in sizes:  # one payload alive at a time
            x = _payload(cfg.payload, size)
            res = out[str(size)] = {}
            try:
                measure_size(fw, checksum, task_opts, x, reps(size), res)
            except Exception as e:  # keep what was measured; the cluster may be broken
                res["error"] = f"{type(e).__name__}: {e}"
                print(f"{cfg.key} {size_label(size)} failed: {res['error']}", flush=True)
                break
            finally:
                del x
                gc.collect()
            print(f"{cfg.key} {size_label(size)} done", flush=True)
    finally:
        fw.shutdown()
    return out


def measure_size(
    fw: Any, checksum: Any, task_opts: dict[str, dict[str, Any]], x: Any, n: int, res: dict
) -> None:
    """put, get and task samples for payload ``x`` into ``res``; every object is freed
    before the next."""

    def put() -> float:
        start = time.perf_counter()
        ref = fw.put(x)
        elapsed = time.perf_counter() - start
        del ref
        return elapsed

    def get(ref: Any) -> float:
        start = time.perf_counter()
        value = fw.get(ref, timeout=GET_TIMEOUT_S)
        elapsed = time.perf_counter() - start
        assert type(value) is type(x) and _checksum(value) == 3.0, type(value)
        del value
        return elapsed

    def task(opts: dict[str, Any]) -> float:
        ref = fw.put(x)  # a fresh object each time, so each sample transfers it
        start = time.perf_counter()
        result = fw.get(checksum.options(**opts).remote(ref), timeout=GET_TIMEOUT_S)
        elapsed = time.perf_counter() - start
        assert result == 3.0, result
        del ref
        return elapsed

    res["put"] = _samples(put, n)
    ref = fw.put(x)
    res["get"] = _samples(partial(get, ref), n)
    del ref
    for op, opts in task_opts.items():
        res[op] = _samples(partial(task, opts), n)


def versions(cfg: Config) -> dict[str, str]:
    mods = ["numpy"] + (["torch"] if cfg.payload == "torch" else [])
    mods += [] if cfg.framework == "memcpy" else [cfg.framework]
    return {m: getattr(__import__(m), "__version__", "unknown") for m in mods}


def worker_main(args: argparse.Namespace) -> None:
    cfg = next(c for c in CONFIGS if c.key == args.config)
    try:
        vers = versions(cfg)
    except ImportError as exc:
        result: dict[str, Any] = {"skipped": f"cannot import: {exc}"}
    else:
        sizes = [s for s in SIZES if s <= args.max_size]
        reps = lambda size: repeats_for(size, args.quick, args.repeats)  # noqa: E731
        run = measure_memcpy if cfg.framework == "memcpy" else lambda *a: measure(cfg, *a)
        result = {
            "versions": vers,
            "python": platform.python_version(),
            "executable": sys.executable,
            "env": {k: v for k, v in os.environ.items() if "ZERO_COPY" in k},
            "samples": run(sizes, reps),
        }
    Path(args.out).write_text(json.dumps(result))


# --------------------------------------------------------------------------- parent


def run_worker(cfg: Config, python: str, args: argparse.Namespace) -> dict[str, Any]:
    """Measure one config in a fresh subprocess (own session); never leave processes behind."""
    env = worker_env(cfg.framework)
    env.pop("RAY_ENABLE_ZERO_COPY_TORCH_TENSORS", None)
    env.pop("RAYLITE_ENABLE_ZERO_COPY_TORCH_TENSORS", None)
    if cfg.framework == "ray" and cfg.zero_copy:
        env["RAY_ENABLE_ZERO_COPY_TORCH_TENSORS"] = "1"
    cmd = [python, str(Path(__file__).resolve()), "--worker", "--config", cfg.key,
           "--max-size", str(args.max_size)]
    cmd += (["--quick"] if args.quick else []) + (
        ["--repeats", str(args.repeats)] if args.repeats else [])
    start = time.monotonic()

    def progress(line: str) -> None:  # the worker's progress lines; the rest is kept
        if line.endswith(" done") or " failed: " in line:
            print(f"  {line.strip()}  ({time.monotonic() - start:.0f} s)", flush=True)
    return run_json(cmd, timeout_s=WORKER_TIMEOUT_S, env=env, cwd=ROOT, echo=progress)


def summarize(samples: list[float], size: int) -> dict[str, float]:
    med = statistics.median(samples)
    return {"median_s": med, "min_s": min(samples), "max_s": max(samples), "GBps": size / med / 1e9}


def _gbps(bw: float) -> str:
    return f"{bw:6,.0f}" if bw >= 100 else f"{bw:6.2f}"


def _time(s: float) -> str:
    if s >= 1:
        return f"{s:.3g} s"
    return f"{s * 1e3:.3g} ms" if s >= 1e-3 else f"{s * 1e6:.3g} us"


def stat(results: dict[str, Any], key: str, size: int, op: str) -> dict[str, float] | None:
    """Summary of one measurement; memcpy's copy stands for every op, Ray's same-node task
    for its missing cross-node one."""
    per_size = results.get(key, {}).get("stats", {}).get(str(size), {})
    if key == "memcpy":
        op = "copy"
    elif key.startswith("ray ") and op == "cross":
        op = "task"
    return per_size.get(op)


def print_tables(results: dict[str, Any], sizes: list[int]) -> None:
    keys = [k for k, r in results.items() if "stats" in r]
    for op in OPS:
        print(f"\n{OP_TITLES[op]}: median time and bandwidth (GB/s)")
        print(f"{'size':>6}" + "".join(f"{k:>21}" for k in keys))
        for size in sizes:
            cells = []
            for k in keys:
                s = stat(results, k, size, op)
                mark = "*" if op == "cross" and k.startswith("ray ") else ""
                cells.append(f"{_time(s['median_s'])} {_gbps(s['GBps'])}{mark}" if s else "-")
            print(f"{size_label(size):>6}" + "".join(f"{c:>21}" for c in cells))
    print("* Ray has no virtual nodes: same-node task round trip.")
    print("memcpy: np.copyto into a preallocated array, shown in every table.")
    for key, r in results.items():
        if "skipped" in r:
            print(f"note: {key} not measured: {r['skipped']}")
        for size, ops in r.get("samples", {}).items():
            if "error" in ops:
                print(f"note: {key} failed at {size_label(int(size))}: {ops['error']}")


def print_targets(results: dict[str, Any]) -> None:
    """Issue #3's targets for raylite, read at the nearest sizes measured here."""
    M, G = 1 << 20, 1 << 30
    checks = [  # label, config, size, op, limit (s)
        *[(f"put {p} 100MB >= 8 GB/s", f"raylite {p}", 10**8, "put", 10**8 / 8e9)
          for p in ("numpy", "torch zc", "torch copy")],
        *[(f"get {p} 1G <= 0.3 ms", f"raylite {p}", G, "get", 3e-4)
          for p in ("numpy", "torch zc")],
        ("get torch copy 1G <= 0.2 s", "raylite torch copy", G, "get", 0.2),
        ("cross numpy 1G >= 2 GB/s", "raylite numpy", G, "cross", G / 2e9),
    ]  # fmt: skip
    print("\nraylite against issue #3's targets:")
    for label, key, size, op, limit in checks:
        st = stat(results, key, size, op)
        if st is None:
            print(f"  {label:<30}  not measured")
            continue
        verdict = "ok" if st["median_s"] <= limit else "MISSED"
        print(f"  {label:<30}{_time(st['median_s']):>10} {_gbps(st['GBps']):>8} GB/s  {verdict}")
    flat = [stat(results, "raylite numpy", size, "get") for size in (4 * M, G)]
    if None not in flat:
        ratio = flat[1]["median_s"] / flat[0]["median_s"]
        verdict = "ok" if ratio <= 3 else "MISSED"
        print(f"  {'get numpy 1G within 3x of 4M':<30}{ratio:>9.2f}x {'':14}{verdict}")


def plot(results: dict[str, Any], sizes: list[int], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("plot skipped: matplotlib is not installed")
        return
    colors = {"numpy": "tab:blue", "torch zc": "tab:orange", "torch copy": "tab:green"}
    fig, axes = plt.subplots(2, 2, figsize=(12, 9), sharex=True, sharey=True)
    for ax, op in zip(axes.flat, OPS, strict=True):
        for key, r in results.items():
            if "stats" not in r:
                continue
            pts = [(s, st["median_s"]) for s in sizes if (st := stat(results, key, s, op))]
            if not pts:
                continue
            fw, _, payload = key.partition(" ")
            label = key + (" (same node)" if op == "cross" and fw == "ray" else "")
            style = {"raylite": ("-", "o"), "ray": ("--", "s"), "memcpy": (":", "")}[fw]
            ax.plot(
                *zip(*pts, strict=True),
                linestyle=style[0],
                marker=style[1],
                markersize=4,
                color=colors.get(payload, "black"),
                label=label,
            )
        ax.set(xscale="log", yscale="log", title=OP_TITLES[op])
        ax.set_xticks(sizes, [size_label(s) for s in sizes])
        ax.minorticks_off()
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=7)
    for ax in axes[1]:
        ax.set_xlabel("object size (bytes)")
    for ax in axes[:, 0]:
        ax.set_ylabel("median time (s)")
    fig.suptitle("Object transfer: raylite (solid) vs Ray (dashed) vs memcpy (dotted)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"saved {_shown(path)}")


def _git_describe() -> str:
    """The checkout's commit, with "-dirty" when it has uncommitted changes."""
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() or "unknown"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="stop at 64M, fewer repeats")
    p.add_argument("--repeats", type=int, help="repeats for every size (default: by size)")
    p.add_argument("--no-ray", action="store_true", help="skip the Ray configs")
    p.add_argument(
        "--only",
        nargs="+",
        metavar="CONFIG",
        choices=[c.key for c in CONFIGS],
        help="measure only these configs",
    )
    p.add_argument(
        "--ray-python",
        default=os.environ.get("RAY_PYTHON", sys.executable),
        help="interpreter with ray and torch installed (default: $RAY_PYTHON, else this one)",
    )
    p.add_argument("--json", type=Path, default=RESULTS / "object_transfer.json")
    p.add_argument("--png", type=Path, default=RESULTS / "object_transfer.png")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--config", help=argparse.SUPPRESS)
    p.add_argument("--max-size", type=int, help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.max_size = args.max_size or (QUICK_MAX if args.quick else SIZES[-1])
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        worker_main(args)
        return
    started, load_at_start = time.monotonic(), os.getloadavg()
    sizes = [s for s in SIZES if s <= args.max_size]
    results: dict[str, Any] = {}
    for cfg in CONFIGS:
        if (args.only and cfg.key not in args.only) or (args.no_ray and cfg.framework == "ray"):
            continue
        python = args.ray_python if cfg.framework == "ray" else sys.executable
        print(f"measuring {cfg.key} with {python} ...", flush=True)
        result = run_worker(cfg, python, args)
        if "samples" in result:
            result["stats"] = {
                size: {op: summarize(v, int(size)) for op, v in ops.items() if op != "error"}
                for size, ops in result["samples"].items()
            }
        elif "log" in result:
            print(result["log"], file=sys.stderr)
        results[cfg.key] = {"config": asdict(cfg), **result}
    print_tables(results, sizes)
    print_targets(results)
    total = time.monotonic() - started
    print(f"\ntotal wall time {total:.0f} s")
    report = {
        "machine": {**machine_info(), "loadavg": {"start": load_at_start, "end": os.getloadavg()}},
        "raylite_commit": _git_describe(),
        "config": {
            "sizes": sizes,
            "quick": args.quick,
            "repeats": args.repeats,
            "wall_s": round(total, 1),
        },
        "results": results,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1) + "\n")
    print(f"saved {_shown(args.json)}")
    if args.png:
        plot(results, sizes, args.png)


if __name__ == "__main__":
    main()
