"""Train benchmark: one 2-worker DDP loop under raylite.train, plain torch.distributed
(``torch.multiprocessing.spawn``, the floor) and Ray Train 2.53 where it is installed.

Run from the repository root:

    python benchmarks/train.py [--quick] [--no-ray] [--ray-python PATH]

The loop (issue #14): an MLP 64-512-512-1, gloo, 32,768 random rows (each rank takes
its half), batch 256, 3 epochs, a metrics-only report every step and a checkpoint (the
model's state dict) per epoch from rank 0. Each framework runs in a fresh subprocess
(this script re-invokes itself with ``--worker --framework NAME``); every worker uses
one torch thread. Measured, as the median of ``--repeats`` runs (``--quick``: 1 run of
1 epoch):

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

from benchmarks._runner import python_has, run_json, write_json  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
ROWS, DIM, BATCH, WORKERS = 32768, 64, 256, 2
WORKER_TIMEOUT_S = 600
FRAMEWORKS = ("raylite", "torch", "ray")


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


def raylite_loop(cfg):
    import torch

    from raylite import train
    from raylite.train.torch import prepare_model

    ctx = train.get_context()
    rank = ctx.get_world_rank()
    model, x, y = _model_and_data(rank, ctx.get_world_size())
    model = prepare_model(model)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    first, metrics_s, ckpt_s = None, [], []
    for epoch in range(cfg["epochs"]):
        for loss in _steps(model, opt, x, y):
            t = time.perf_counter()
            train.report({"loss": loss})
            metrics_s.append(time.perf_counter() - t)
            first = first or time.time()
        d = tempfile.mkdtemp()
        ckpt = None
        if rank == 0:
            torch.save(model.module.state_dict(), os.path.join(d, "model.pt"))
            ckpt = train.Checkpoint.from_directory(d)
        t = time.perf_counter()
        train.report({"epoch": epoch}, checkpoint=ckpt)
        ckpt_s.append(time.perf_counter() - t)
    train.report({"first": first, "metrics_s": statistics.median(metrics_s),
                  "ckpt_s": statistics.median(ckpt_s)})


def ray_loop(cfg):
    import ray.train as rt
    import torch
    from ray.train.torch import prepare_model

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
    rt.report({"first": first, "metrics_s": statistics.median(metrics_s),
               "ckpt_s": statistics.median(ckpt_s)})


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
def run_raylite(epochs: int) -> dict:
    import raylite
    from raylite.train import RunConfig, ScalingConfig
    from raylite.train.torch import TorchTrainer

    raylite.init(num_cpus=WORKERS)
    try:
        import torch  # noqa: F401  (the driver imports it once, as a notebook has)
        with tempfile.TemporaryDirectory() as d:
            t0 = time.time()
            r = TorchTrainer(raylite_loop, train_loop_config={"epochs": epochs},
                             scaling_config=ScalingConfig(num_workers=WORKERS),
                             run_config=RunConfig(name="bench", storage_path=d)).fit()
            fit = time.time() - t0
        m = r.metrics
        return {"fit_s": fit, "first_report_s": m["first"] - t0,
                "ckpt_report_ms": 1000 * m["ckpt_s"], "metrics_report_ms": 1000 * m["metrics_s"]}
    finally:
        raylite.shutdown()


def run_ray(epochs: int) -> dict:
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    ray.init(num_cpus=WORKERS, include_dashboard=False, log_to_driver=False)
    try:
        with tempfile.TemporaryDirectory() as d:
            t0 = time.time()
            r = TorchTrainer(ray_loop, train_loop_config={"epochs": epochs},
                             scaling_config=ScalingConfig(num_workers=WORKERS),
                             run_config=RunConfig(name="bench", storage_path=d)).fit()
            fit = time.time() - t0
        m = r.metrics
        return {"fit_s": fit, "first_report_s": m["first"] - t0,
                "ckpt_report_ms": 1000 * m["ckpt_s"], "metrics_report_ms": 1000 * m["metrics_s"]}
    finally:
        ray.shutdown()


def run_torch(epochs: int) -> dict:
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as d:
        t0 = time.time()
        mp.spawn(_torch_worker, args=(WORKERS, port, epochs, d), nprocs=WORKERS)
        fit = time.time() - t0
        with open(os.path.join(d, "rank0.json")) as f:
            m = json.load(f)
    return {"fit_s": fit, "first_report_s": m["first"] - t0,
            "ckpt_report_ms": 1000 * m["ckpt_s"], "metrics_report_ms": 0.0}


def worker_main(name: str, epochs: int, repeats: int, out_path: str) -> None:
    fn = {"raylite": run_raylite, "torch": run_torch, "ray": run_ray}[name]
    runs = [fn(epochs) for _ in range(repeats)]
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    version = "?"
    try:
        if name == "ray":
            import ray
            version = ray.__version__
        else:
            import torch
            version = torch.__version__
    except ImportError:
        pass
    write_json(out_path, {"framework": name, "version": version, "runs": runs, **med})


# ------------------------------------------------------------------ the driver
def measure(name: str, python: str, epochs: int, repeats: int) -> dict[str, Any]:
    cmd = [python, str(Path(__file__).resolve()), "--worker", "--framework", name,
           "--epochs", str(epochs), "--repeats", str(repeats)]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return run_json(cmd, timeout_s=WORKER_TIMEOUT_S, env=env, cwd=ROOT, echo=None)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in FRAMEWORKS if "fit_s" in results.get(n, {})]
    metrics = [("fit_s", "fit() (s)"), ("first_report_s", "first report (s)"),
               ("ckpt_report_ms", "checkpoint report (ms)"),
               ("metrics_report_ms", "metrics-only report (ms)")]
    fig, axes = plt.subplots(1, 4, figsize=(13, 3.2))
    colors = {"raylite": "#4e79a7", "torch": "#59a14f", "ray": "#f28e2b"}
    for ax, (key, title) in zip(axes, metrics, strict=True):
        vals = [results[n][key] for n in names]
        ax.bar(names, vals, color=[colors[n] for n in names])
        for i, v in enumerate(vals):
            ax.text(i, v, f"{v:.3g}", ha="center", va="bottom", fontsize=8)
        ax.set_title(title, fontsize=10)
    fig.suptitle("2-worker DDP (MLP 64-512-512-1, gloo, 32k rows, checkpoint per epoch)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def table(results: dict) -> str:
    lines = [f"{'framework':<10} {'fit s':>8} {'first s':>8} {'ckpt ms':>9} {'metrics ms':>11}"]
    for n in FRAMEWORKS:
        r = results.get(n, {})
        if "fit_s" not in r:
            lines.append(f"{n:<10} {r.get('skipped', 'not run')}")
            continue
        lines.append(f"{n:<10} {r['fit_s']:8.2f} {r['first_report_s']:8.2f} "
                     f"{r['ckpt_report_ms']:9.2f} {r['metrics_report_ms']:11.3f}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="1 run of 1 epoch")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-ray", action="store_true")
    p.add_argument("--ray-python", help="an interpreter with ray[train] and torch")
    p.add_argument("--json", default=str(RESULTS / "train.json"))
    p.add_argument("--png", default=str(RESULTS / "train.png"))
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--framework", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    a = parse_args(argv)
    if a.worker:
        worker_main(a.framework, a.epochs, a.repeats, a.out)
        return
    epochs, repeats = (1, 1) if a.quick else (a.epochs, a.repeats)
    results: dict[str, Any] = {}
    for name in FRAMEWORKS:
        python = sys.executable
        if name == "ray":
            python = a.ray_python or os.environ.get("RAY_PYTHON") or next(
                (p for p in (str(ROOT / ".bench-venv/bin/python"), "/work/rayvenv/bin/python",
                             sys.executable) if python_has(p, "ray.train")), None)
            if a.no_ray or python is None:
                results[name] = {"skipped": "Ray Train not installed (make bench-env)"
                                 if not a.no_ray else "--no-ray"}
                continue
        print(f"== {name}", flush=True)
        results[name] = measure(name, python, epochs, repeats)
    torch_r, rl = results.get("torch", {}), results.get("raylite", {})
    ratios = {}
    if "fit_s" in torch_r and "fit_s" in rl:
        ratios = {"fit_vs_torch": rl["fit_s"] / torch_r["fit_s"],
                  "first_report_minus_torch_s": rl["first_report_s"] - torch_r["first_report_s"]}
    report = {"benchmark": "train", "quick": a.quick, "epochs": epochs, "repeats": repeats,
              "loop": {"rows": ROWS, "dim": DIM, "batch": BATCH, "workers": WORKERS},
              "machine": {"date": time.strftime("%Y-%m-%d %H:%M"), "cpus": os.cpu_count(),
                          "loadavg": os.getloadavg()},
              "results": results, "ratios": ratios,
              "targets": {"fit_vs_torch": 1.1, "first_report_minus_torch_s": 0.5,
                          "ckpt_report_ms": 50, "metrics_report_ms": 1}}
    write_json(a.json, report)
    print(table(results))
    if ratios:
        print(f"raylite fit / torch fit = {ratios['fit_vs_torch']:.2f}x; first report "
              f"{ratios['first_report_minus_torch_s']:+.2f} s vs torch")
    try:
        plot(results, Path(a.png))
        print(f"saved {a.json} and {a.png}")
    except ImportError:
        print(f"saved {a.json} (no matplotlib: no plot)")


if __name__ == "__main__":
    main()
