"""Train benchmark: one 2-worker DDP loop under raylite.train (on its own runtime and on
the Ray backend), plain torch.distributed (``torch.multiprocessing.spawn``, the floor)
and Ray Train 2.53 where it is installed.

Run from the repository root:

    python benchmarks/train.py [--quick] [--no-ray] [--ray-python PATH] [--only NAME ...]

(also the ``train`` step of ``python -m benchmarks``). The loop (issue #14): an MLP
64-512-512-1, gloo, 32,768 random rows (each rank takes its half), batch 256, 3 epochs, a
metrics-only report every step and a checkpoint (the model's state dict) per epoch from
rank 0; raylite and Ray Train run the very same function (``train_loop``). Each
framework runs in a fresh subprocess (this script re-invokes itself with ``--worker
--framework NAME``); every worker uses one torch thread. The driver imports torch after
``init()``, as a notebook's later cell would, and the clock starts at ``fit()``.
Frameworks: ``raylite`` (``init(preload=["torch"])``: the node imports torch in the
background and its warm pool is forked with torch imported), ``raylite_cold`` (the same
with ``preload=[]``: each worker imports torch itself, as before pre-warming), ``torch``,
``ray`` (the bench venv's interpreter, ``make bench-env``) and ``raylite-on-ray``
(raylite's TorchTrainer, the same code as ``raylite``, on the Ray backend:
``raylite.init(backend="ray", num_cpus=2)`` starts a fresh local Ray, dashboard off, and
its ``shutdown`` stops it; its controller and workers are Ray actors, not preloaded, as
Ray has no warm pool; this interpreter when it imports ray, else the Ray one with raylite
from this checkout). Measured, as the median
of ``--repeats`` runs that go round the frameworks in turn, so that the load of a shared
machine falls on all of them alike (``--quick``: 1 run of 1 epoch, one fit):

- ``fit_s``: wall time of ``fit()`` (for torch: of ``mp.spawn``), start-up included;
- ``first_report_s``: from calling ``fit()`` to rank 0's first report (workers
  started, process group formed, one step taken);
- ``ckpt_report_ms``: one report with a checkpoint, as rank 0 sees it (torch: save +
  barrier);
- ``metrics_report_ms``: one metrics-only report (torch: nothing to do, 0).

Targets: fit within 1.1x of plain torch; first report within 0.5 s of it; a checkpoint
report under 50 ms; a metrics-only report under 1 ms. Results go to
``benchmarks/results/train.json`` and a chart to ``benchmarks/results/train.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._runner import (  # noqa: E402
    python_has,
    raylite_on_ray_python,
    run_json,
    write_json,
)
from benchmarks.core import worker_env  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
ROWS, DIM, BATCH, WORKERS = 32768, 64, 256, 2
WORKER_TIMEOUT_S = 900
# Ray Train v2 holds one report per worker and its controller takes it every 2 s, so with
# its defaults every report waits ~2 s (1.99 s measured here, 153 s for a 1-epoch fit);
# measured with the poll interval lowered so the loop, not the poll, is what is timed
RAY_POLL_S = 0.05
FRAMEWORKS = ("raylite", "raylite_cold", "torch", "ray", "raylite-on-ray")
TITLES = {"raylite": "raylite", "raylite_cold": "raylite, no preload", "torch": "torch",
          "ray": "Ray Train", "raylite-on-ray": "raylite on Ray"}
# raylite's init options per framework (it has no warm pool on Ray: nothing to preload)
RAYLITE_OPTIONS = {"raylite": {"preload": ["torch"]}, "raylite_cold": {"preload": []},
                   "raylite-on-ray": {"backend": "ray", "include_dashboard": False,
                                      "log_to_driver": False}}


# ------------------------------------------------------------------ the shared loop
def _model_and_data(rank: int, world: int):
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(DIM, 512), torch.nn.ReLU(),
                                torch.nn.Linear(512, 512), torch.nn.ReLU(),
                                torch.nn.Linear(512, 1))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(ROWS, DIM, generator=g)
    y = x.sum(dim=1, keepdim=True)
    return model, x[rank::world], y[rank::world]


def _steps(model, opt, x, y):
    import torch

    for i in range(0, len(x), BATCH):
        loss = torch.nn.functional.mse_loss(model(x[i:i + BATCH]), y[i:i + BATCH])
        opt.zero_grad()
        loss.backward()
        opt.step()
        yield float(loss)


def train_loop(cfg):
    """The loop under raylite.train or ray.train (``cfg["api"]``): the same calls in both."""
    import importlib

    warm = "torch._dynamo" in sys.modules  # DDP imports it: here already = preloaded

    import torch

    rt = importlib.import_module(cfg["api"])
    prepare_model = importlib.import_module(cfg["api"] + ".torch").prepare_model
    ctx = rt.get_context()
    rank = ctx.get_world_rank()
    model, x, y = _model_and_data(rank, ctx.get_world_size())
    model = prepare_model(model)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    first, metrics_s, ckpt_s = None, [], []
    for epoch in range(cfg["epochs"]):
        for loss in _steps(model, opt, x, y):
            t = time.perf_counter()
            rt.report({"loss": loss})
            metrics_s.append(time.perf_counter() - t)
            first = first or time.time()
        with tempfile.TemporaryDirectory() as d:
            ckpt = None
            if rank == 0:
                torch.save(model.module.state_dict(), os.path.join(d, "model.pt"))
                ckpt = rt.Checkpoint.from_directory(d)
            t = time.perf_counter()
            rt.report({"epoch": epoch}, checkpoint=ckpt)
            ckpt_s.append(time.perf_counter() - t)
    if rank == 0:  # to a file, as the torch run does (Ray's Result keeps only the
        # metrics of checkpoint reports)
        with open(os.path.join(cfg["out"], "rank0.json"), "w") as f:
            json.dump({"first": first, "metrics_s": statistics.median(metrics_s),
                       "ckpt_s": statistics.median(ckpt_s), "preloaded": warm}, f)


def _torch_worker(rank: int, world: int, port: int, epochs: int, out_dir: str):
    import torch
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    model, x, y = _model_and_data(rank, world)
    model = torch.nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    first, ckpt_s = None, []
    for epoch in range(epochs):
        for _ in _steps(model, opt, x, y):
            first = first or time.time()
        t = time.perf_counter()
        if rank == 0:
            d = os.path.join(out_dir, f"checkpoint_{epoch}")
            os.makedirs(d, exist_ok=True)
            torch.save(model.module.state_dict(), os.path.join(d, "model.pt"))
        dist.barrier()
        ckpt_s.append(time.perf_counter() - t)
    if rank == 0:
        with open(os.path.join(out_dir, "rank0.json"), "w") as f:
            json.dump({"first": first, "ckpt_s": statistics.median(ckpt_s)}, f)
    dist.destroy_process_group()


# ------------------------------------------------------------------ one run each
def run_trainer(name: str, epochs: int, fits: int, idle_s: float = 0.0) -> list[dict]:
    """``fits`` fit()s, one after the other on one fresh 2-CPU cluster, under raylite
    (``name`` "raylite": workers preloaded with torch; "raylite_cold": not;
    "raylite-on-ray": on the Ray backend) or Ray Train ("ray"); the first ``idle_s``
    after init (a notebook's user between cells)."""
    import importlib

    if name == "ray":
        import ray as core

        api, opts = "ray.train", {"include_dashboard": False, "log_to_driver": False}
    else:
        import raylite as core

        api, opts = "raylite.train", RAYLITE_OPTIONS[name]
    train = importlib.import_module(api)
    trainer_cls = importlib.import_module(api + ".torch").TorchTrainer
    core.init(num_cpus=WORKERS, **opts)
    out = []
    try:
        import torch  # noqa: F401  (the driver imports it after init, as a notebook's cell)
        time.sleep(idle_s)  # not a wait for anything: the time a person takes
        for _ in range(fits):
            with tempfile.TemporaryDirectory() as d:
                t0 = time.time()
                r = trainer_cls(train_loop,
                                train_loop_config={"epochs": epochs, "api": api, "out": d},
                                scaling_config=train.ScalingConfig(num_workers=WORKERS),
                                run_config=train.RunConfig(name="bench", storage_path=d)).fit()
                fit = time.time() - t0
                assert r.checkpoint is not None, "no checkpoint was registered"
                with open(os.path.join(d, "rank0.json")) as f:
                    m = json.load(f)
            out.append({"fit_s": fit, "first_report_s": m["first"] - t0,
                        "ckpt_report_ms": 1000 * m["ckpt_s"],
                        "metrics_report_ms": 1000 * m["metrics_s"],
                        "preloaded": m["preloaded"]})
        return out
    finally:
        core.shutdown()


def run_torch(epochs: int, fits: int) -> list[dict]:
    import socket

    import torch.multiprocessing as mp

    out = []
    for _ in range(fits):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        with tempfile.TemporaryDirectory() as d:
            t0 = time.time()
            mp.spawn(_torch_worker, args=(WORKERS, port, epochs, d), nprocs=WORKERS)
            fit = time.time() - t0
            with open(os.path.join(d, "rank0.json")) as f:
                m = json.load(f)
        out.append({"fit_s": fit, "first_report_s": m["first"] - t0,
                    "ckpt_report_ms": 1000 * m["ckpt_s"], "metrics_report_ms": 0.0})
    return out


def one_run(name: str, epochs: int, fits: int, idle_s: float) -> dict:
    """A run's figures: its first fit's, and the next fit's as ``refit_s`` and
    ``refirst_report_s`` (a notebook running its training cell again)."""
    fit, *again = (run_torch(epochs, fits) if name == "torch" else
                   run_trainer(name, epochs, fits, idle_s))
    if again:
        fit |= {"refit_s": again[0]["fit_s"], "refirst_report_s": again[0]["first_report_s"],
                "refit_preloaded": again[0].get("preloaded")}
    return fit


def worker_main(name: str, epochs: int, repeats: int, fits: int, idle_s: float,
                out_path: str) -> None:
    runs = [one_run(name, epochs, fits, idle_s) for _ in range(repeats)]
    version = "?"
    try:
        if name in ("ray", "raylite-on-ray"):
            import ray
            version = ray.__version__
        else:
            import torch
            version = torch.__version__
    except ImportError:
        pass
    write_json(out_path, {"framework": name, "version": version, "runs": runs})


def with_medians(r: dict[str, Any]) -> dict[str, Any]:
    """``r`` with the median of each figure over its runs."""
    runs = r["runs"]
    return r | {k: statistics.median(x[k] for x in runs) for k in runs[0]
                if not k.endswith("preloaded")}


# ------------------------------------------------------------------ the driver
def measure(name: str, python: str, epochs: int, repeats: int, fits: int,
            ray_poll_s: float | None = None, idle_s: float = 0.0) -> dict[str, Any]:
    cmd = [python, str(Path(__file__).resolve()), "--worker", "--framework", name,
           "--epochs", str(epochs), "--repeats", str(repeats), "--fits", str(fits),
           "--idle-s", str(idle_s)]
    env = worker_env(name) | {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    if name == "ray" and ray_poll_s is not None:
        env["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = str(ray_poll_s)
    return run_json(cmd, timeout_s=WORKER_TIMEOUT_S, env=env, cwd=ROOT, echo=None)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in FRAMEWORKS if "fit_s" in results.get(n, {})]
    if not names:
        return
    metrics = [("fit_s", "fit() (s)"), ("first_report_s", "first report (s)"),
               ("refit_s", "fit() again (s)"), ("refirst_report_s", "first report again (s)"),
               ("ckpt_report_ms", "checkpoint report (ms)"),
               ("metrics_report_ms", "metrics-only report (ms)")]
    metrics = [m for m in metrics if any(m[0] in results[n] for n in names)]
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.3 * len(metrics), 3.4))
    colors = {"raylite": "#4e79a7", "raylite_cold": "#a0cbe8", "torch": "#59a14f",
              "ray": "#f28e2b", "raylite-on-ray": "#b5bd1e"}
    for ax, (key, title) in zip(axes, metrics, strict=True):
        vals = [results[n].get(key, 0.0) for n in names]
        ax.bar([TITLES[n].replace(", ", ",\n").replace(" on ", "\non ") for n in names], vals,
               color=[colors[n] for n in names])
        ax.tick_params(axis="x", labelsize=8)
        for i, v in enumerate(vals):
            ax.text(i, v, f"{v:.3g}", ha="center", va="bottom", fontsize=8)
        ax.set_title(title, fontsize=10)
    fig.suptitle("2-worker DDP (MLP 64-512-512-1, gloo, 32k rows, checkpoint per epoch)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def table(results: dict) -> str:
    lines = [f"{'framework':<20} {'fit s':>7} {'first s':>7} {'refit s':>7} {'first s':>7} "
             f"{'ckpt ms':>8} {'metrics ms':>10}  workers preloaded (fit, refit)"]
    for n in FRAMEWORKS:
        r = results.get(n, {})
        if "fit_s" not in r:
            lines.append(f"{TITLES[n]:<20} {r.get('skipped', 'not run')}")
            continue
        again = [f"{r[k]:7.2f}" if k in r else f"{'-':>7}" for k in ("refit_s",
                                                                        "refirst_report_s")]
        warm = ", ".join(f"{sum(bool(x.get(k)) for x in r['runs'])}/{len(r['runs'])}"
                         for k in ("preloaded", "refit_preloaded") if k in r["runs"][0])
        lines.append(f"{TITLES[n]:<20} {r['fit_s']:7.2f} {r['first_report_s']:7.2f} "
                     f"{' '.join(again)} {r['ckpt_report_ms']:8.2f} "
                     f"{r['metrics_report_ms']:10.3f}  {warm}")
    return "\n".join(lines)


def find_ray_train(explicit: str | None) -> str | None:
    """The interpreter with Ray Train: ``explicit``, else ``$RAY_PYTHON``, else found."""
    explicit = explicit or os.environ.get("RAY_PYTHON")
    candidates = [explicit] if explicit else [str(ROOT / ".bench-venv/bin/python"),
                                              "/work/rayvenv/bin/python", sys.executable]
    return next((p for p in candidates if python_has(p, "ray.train.torch")), None)


def compare(results: dict) -> dict[str, float]:
    """raylite against the floor (plain torch), Ray Train and itself without preloading;
    raylite's TorchTrainer on the Ray backend against Ray Train and raylite's runtime."""
    r = {n: results.get(n, {}) for n in FRAMEWORKS}
    out = {}
    if "fit_s" in r["raylite"] and "fit_s" in r["torch"]:
        out["fit_vs_torch"] = r["raylite"]["fit_s"] / r["torch"]["fit_s"]
        out["first_report_minus_torch_s"] = (r["raylite"]["first_report_s"]
                                             - r["torch"]["first_report_s"])
    if "fit_s" in r["raylite"] and "fit_s" in r["ray"]:
        out["ray_fit_vs_raylite"] = r["ray"]["fit_s"] / r["raylite"]["fit_s"]
        out["ray_first_report_vs_raylite"] = (r["ray"]["first_report_s"]
                                              / r["raylite"]["first_report_s"])
    on_ray = r["raylite-on-ray"]
    for base, key in (("ray", "vs_ray_train"), ("raylite", "vs_raylite")):
        if "fit_s" in on_ray and "fit_s" in r[base]:
            out[f"raylite_on_ray_fit_{key}"] = on_ray["fit_s"] / r[base]["fit_s"]
            out[f"raylite_on_ray_first_report_{key}"] = (on_ray["first_report_s"]
                                                        / r[base]["first_report_s"])
    if "fit_s" in r["raylite"] and "fit_s" in r["raylite_cold"]:
        for key in ("first_report_s", "refirst_report_s"):
            if key in r["raylite"]:
                out[f"{key[:-2]}_saved_by_preload_s"] = (r["raylite_cold"][key]
                                                         - r["raylite"][key])
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="1 run of 1 epoch")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--fits", type=int, default=2, choices=(1, 2),
                   help="fits per cluster: 2 also measures fit() run again (refit_s)")
    p.add_argument("--idle-s", type=float, default=0.0,
                   help="seconds between init() and the first fit() (raylite and Ray: a "
                        "notebook's next cell; default 0: fit() at once)")
    p.add_argument("--no-ray", action="store_true",
                   help="neither Ray Train nor raylite on the Ray backend")
    p.add_argument("--ray-python", help="an interpreter with ray[train] and torch")
    p.add_argument("--ray-poll-s", type=float, default=RAY_POLL_S,
                   help="Ray Train's controller poll interval (RAY_TRAIN_HEALTH_CHECK_"
                        "INTERVAL_S; Ray's default: 2 s, which every report waits for)")
    p.add_argument("--only", nargs="+", choices=FRAMEWORKS, default=list(FRAMEWORKS),
                   help="which frameworks to measure (default: all)")
    p.add_argument("--json", default=str(RESULTS / "train.json"))
    p.add_argument("--png", default=str(RESULTS / "train.png"))
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--framework", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    a = parse_args(argv)
    if a.worker:
        worker_main(a.framework, a.epochs, a.repeats, a.fits, a.idle_s, a.out)
        return
    epochs, repeats, fits = (1, 1, 1) if a.quick else (a.epochs, a.repeats, a.fits)
    results: dict[str, Any] = {}
    pythons = {}
    for name in FRAMEWORKS:
        if name not in a.only:
            results[name] = {"skipped": "not requested"}
        elif name == "raylite-on-ray":
            python = None if a.no_ray else raylite_on_ray_python(find_ray_train(a.ray_python))
            if python is None:
                results[name] = {"skipped": "--no-ray" if a.no_ray else
                                 "Ray not installed (pip install 'raylite[ray]')"}
            else:
                pythons[name] = python
        elif name != "ray":
            pythons[name] = sys.executable
        elif a.no_ray or (python := find_ray_train(a.ray_python)) is None:
            results[name] = {"skipped": "--no-ray" if a.no_ray else
                             "Ray Train not installed (make bench-env)"}
        else:
            pythons[name] = python
    # the repeats go round the frameworks, so that a load that comes and goes on a shared
    # machine falls on all of them alike
    for rep in range(repeats):
        for name, python in list(pythons.items()):
            print(f"== {name} ({rep + 1}/{repeats})", flush=True)
            r = measure(name, python, epochs, 1, fits, a.ray_poll_s, a.idle_s)
            if "runs" not in r:
                results[name] = r
                del pythons[name]
                continue
            got = results.setdefault(name, {**r, "runs": [], "wall_s": 0.0})
            got["runs"] += r["runs"]
            got["wall_s"] += r["wall_s"]
    for name in pythons:
        results[name] = with_medians(results[name])
    ratios = compare(results)
    report = {"benchmark": "train", "quick": a.quick, "epochs": epochs, "repeats": repeats,
              "fits": fits, "idle_s": a.idle_s,
              "ray_train_health_check_interval_s": a.ray_poll_s,
              "loop": {"rows": ROWS, "dim": DIM, "batch": BATCH, "workers": WORKERS},
              "machine": {"date": time.strftime("%Y-%m-%d %H:%M"), "cpus": os.cpu_count(),
                          "loadavg": os.getloadavg()},
              "results": results, "ratios": ratios,
              "targets": {"fit_vs_torch": 1.1, "first_report_minus_torch_s": 0.5,
                          "ckpt_report_ms": 50, "metrics_report_ms": 1}}
    write_json(a.json, report)
    print(table(results))
    for key, v in ratios.items():
        print(f"{key} = {v:.3f}")
    try:
        plot(results, Path(a.png))
        print(f"saved {a.json} and {a.png}")
    except ImportError:
        print(f"saved {a.json} (no matplotlib: no plot)")


if __name__ == "__main__":
    main()
