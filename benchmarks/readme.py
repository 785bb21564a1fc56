"""The README the suite writes beside its results (``benchmarks/README.md`` for a full
run): the table, the plots, how the numbers were taken and how much to trust them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from benchmarks import report

STEP_PLOTS = [  # (file, caption) of the steps' own plots
    ("core.png", "Core runtime, raylite vs Ray, against issue #2's targets (`core.py`)"),
    ("object_transfer.png", "Objects from 1 KiB to 1 GiB: NumPy, torch with the zero-copy "
                            "flag on and off, raylite vs Ray vs memcpy (`object_transfer.py`)"),
    ("serve.png", "Serve: throughput and p99 latency against client concurrency, raylite, "
                  "Ray Serve and raylite on Ray; autoscaling decision time against window "
                  "size (`serve.py`)"),
    ("scheduling.png", "Autoscaler decision time; placement groups and queued tasks "
                       "(`scheduling.py`)"),
    ("train.png", "Train: one 2-worker DDP loop, raylite with and without torch preloaded, "
                  "raylite on Ray, plain torch.distributed and Ray Train (`train.py`)"),
]
SUITE_PLOTS = [
    ("ratios.png", "Every framework and the limit as times better than Ray (log scale)"),
    ("objects.png", "Put, get and task-argument time against object size, every framework"),
    ("values.png", "Absolute medians with min-max, per metric"),
]

HOW = """\
## How to run

```bash
make bench                              # = .venv/bin/python -m benchmarks (full, ~25 min)
make bench-env                          # once: the peers in .bench-venv (Ray, Dask, ipyparallel)
python -m benchmarks --quick            # seconds to a minute or two, to benchmarks/results/quick/
python -m benchmarks --quick --no-peers # raylite and the limits only (CI runs this)
python -m benchmarks --steps serve      # one step again; the others come from results/*.json
```

Peers are found, never required: Ray under `--ray-python` / `$RAY_PYTHON` (else
`.bench-venv`, `/work/rayvenv`, this interpreter), Dask and ipyparallel under
`--peers-python` / `$PEERS_PYTHON` (else `.bench-venv`, `/work/peersvenv`, the Ray
interpreter, this one); multiprocessing is always there. Each framework runs in a fresh
process of its own, on two worker processes, after a warm-up, as medians of repeats with
the min-max in small print. Every step is a script that runs alone too
(`python benchmarks/core.py --help`). The notebook `notebooks/06_benchmarks.ipynb` runs the
quick mode and plots it.
"""

WHAT = """\
## What each row measures

- **core** (`core.py`, `peers.py`): a fresh cluster of 2 worker processes until the result
  of one no-op task is back, and its shutdown; 1,000 no-op tasks submitted then awaited;
  one task at a time; an actor created and called once; 1,000 actor calls submitted then
  awaited; one call at a time; 1,000 `put`s of 64 bytes. Dask: `LocalCluster`, actors
  `submit(Cls, actor=True)`, put `scatter`. ipyparallel: load-balanced view; "actor" is an
  object pushed to one engine and called through a `DirectView` with a `Reference`; put
  `push`. multiprocessing: `Pool(2)` (fork); "actor" is a `BaseManager` server process
  (synchronous proxies only); no put.
- **objects** (`object_transfer.py`, `peers.py`): a float32 array, freed between repeats.
  put: into the store (Dask `scatter`, ipyparallel `push`); get: back in the driver
  (raylite and Ray: zero-copy from shared memory; Dask `result()`, ipyparallel `pull`:
  copies over a socket); task: a task gets it as its argument and returns a checksum
  (raylite, Ray, Dask: a ref put beforehand; ipyparallel and multiprocessing have no store:
  the array itself). torch rows: a CPU tensor with the zero-copy flag on and off
  (`RAYLITE_`/`RAY_ENABLE_ZERO_COPY_TORCH_TENSORS`).
- **serve** (`serve.py`): a no-op deployment; `wrk -t1 -c8` over HTTP; 8 asyncio clients
  on a handle. *raylite on Ray*: the same raylite.serve code on the Ray backend
  (`init(backend="ray", num_cpus=2)`, a fresh local Ray): its controller, proxy and
  replicas are Ray actors.
- **scheduling** (`scheduling.py`): 100 one-bundle placement groups created, awaited,
  removed; 10,000 queued no-op tasks.
- **train** (`train.py`): the same 2-worker DDP loop (MLP 64-512-512-1, gloo, 32,768
  rows, batch 256, 3 epochs, a metrics-only report per step, a checkpoint per epoch) on a
  fresh cluster: `fit()` from the call to its return, the time to rank 0's first report,
  one report with a checkpoint, one metrics-only report. raylite's workers come from a
  pool forked with torch already imported (`init(preload=["torch"])`; the driver imports
  torch after `init`, as a notebook's later cell would); *fit() again*: a second `fit()`
  on the same cluster, as a notebook running its training cell again. The limit is plain
  torch.distributed started by `torch.multiprocessing.spawn`. *raylite on Ray*: the same
  raylite TorchTrainer on the Ray backend (a fresh local Ray; its workers are Ray actors,
  nothing preloaded). `train.json` also has raylite without preloading.
- **ray backend** (`ray_backend.py`): raylite's core API on a Ray session
  (`init(backend="ray")`) beside the very same Ray calls made directly, in shuffled
  rounds: the seam's own cost.
- **limits** (`limits.py`): the floors of raylite's design on this machine. pyzmq
  DEALER/ROUTER over
  `tcp://127.0.0.1` between two processes (raylite's transport): one 64-byte message out
  and back at a time, and 10,000 sent before the replies are read; `np.copyto` of 64 MiB
  into touched memory, in one thread and in one per CPU; the same into a fresh `/dev/shm`
  mapping (page faults included);
  `python -c pass` and a worker's minimal imports; a `multiprocessing.Pipe` round trip for
  comparison. The limit column pairs each row with the floor of raylite's design on this
  machine: start-up with a Python start-up plus a worker's imports, sync calls with a pyzmq
  round trip, async calls with pipelined round trips, put with one memcpy (the faster
  of one thread and one per CPU), a zero-copy
  task argument with a round trip. multiprocessing can pass under two of them: its workers
  are forked (no interpreter start-up) and it talks over bare pipes (the pipe round trip,
  several times below pyzmq's), at the price of no scheduler, no objects and no cluster.
"""


def _rel(path: Path, where: Path) -> str:
    return Path(os.path.relpath(path, where)).as_posix()


def render(summary: dict[str, Any], out: Path, plots: list[str], where: Path) -> str:
    m, suite = summary["machine"], summary["suite"]
    mode = "quick" if suite["quick"] else "full"
    load = m.get("loadavg", {})
    lines = [
        "# Benchmarks",
        "",
        "<!-- Written by `python -m benchmarks` (benchmarks/suite.py, readme.py): edits here "
        "are overwritten. -->",
        "",
        "raylite beside Ray (with and without its zero-copy torch flag), raylite's "
        "libraries on the Ray backend, Dask distributed, ipyparallel and multiprocessing, "
        "and the physical limits of the machine, measured in one run on one machine.",
        "",
        f"## Latest run ({mode})",
        "",
        f"- {m['date']} · raylite {summary['versions'].get('raylite_commit', '?')} · "
        f"`{suite['command']}` · {suite['wall_s'] / 60:.1f} min",
        f"- {m['cpu_count']} CPUs ({m['processor']}), {m['platform']}, Python {m['python']}",
    ]
    if load:
        lines.append(f"- 1/5/15-min load average: {_load(load['start'])} at the start, "
                     f"{_load(load['end'])} at the end")
    lines += ["", report.markdown_table(summary), "",
              "Medians, with the min-max of the repeats in small print. *raylite vs Ray*: "
              "times better (> 1: raylite is faster). *limit*: the physical floor or ceiling "
              "of that row on this machine (see below); a blank cell: not measured, or the "
              "framework has no such operation.", ""]
    lines += ["### Noise", "", _noise(summary), ""]
    notes = summary.get("notes", [])
    if notes:
        lines += ["### Not measured", "", *[f"- {n}" for n in notes], ""]
    lines += ["## Plots", ""]
    for name, caption in SUITE_PLOTS + STEP_PLOTS:
        if (out / name).exists() and (name in plots or name not in dict(SUITE_PLOTS)):
            lines += [f"**{caption}**", "", f"![{caption}]({_rel(out / name, where)})", ""]
    lines += [HOW, WHAT, "## Versions", "",
              "| package | version |", "|---|---|",
              *[f"| {k} | {v} |" for k, v in summary["versions"].items()], "",
              "## Steps", "", "| step | status | wall (s) | 1-min load, start → end |",
              "|---|---|---|---|"]
    for step, info in summary["steps"].items():
        la = info.get("loadavg_1min")
        status = info["status"] + (f" ({info['note']})" if "note" in info else "")
        status += f" from {info['date']}" if info.get("date") else ""
        lines.append(f"| {step} | {status} | {info.get('wall_s', '–')} | "
                     f"{f'{la[0]:.1f} → {la[1]:.1f}' if la else '–'} |")
    return "\n".join(lines) + "\n"


def _load(triple: list[float]) -> str:
    return " / ".join(f"{x:.1f}" for x in triple)


def _noise(summary: dict[str, Any]) -> str:
    cpus = summary["machine"]["cpu_count"]
    peaks = [max(i["loadavg_1min"]) for i in summary["steps"].values() if "loadavg_1min" in i]
    peak = f" (the 1-minute load average reached {max(peaks):.1f} during a step)" if peaks else ""
    return (f"This machine has {cpus} CPUs and is shared with other work{peak}. Each "
            "framework's cluster uses 2 worker processes, so anything else running competes "
            "for the same cores: sub-millisecond latencies and per-second rates can move by "
            "2x between runs, most for the frameworks measured while the load was high (the "
            "per-step load averages are below and in `suite.json`). It is also a virtual "
            "machine, where a round trip between two processes depends on whether the other "
            "virtual CPU is awake: measured here, a pipe round trip takes ~8-20 us while "
            "something else keeps the CPUs busy and ~60 us when the machine is otherwise "
            "idle, pyzmq's ~30 us against ~100 us, and raylite's sync task ~120 us against "
            "~250 us; the limits move with the frameworks, so compare a row with its limit "
            "from the same run. The ratios, taken from runs minutes apart, are sturdier than "
            "the absolute numbers; the min-max ranges show how much each moved within its "
            "own run.")
