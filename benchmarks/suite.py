"""The benchmark suite: every benchmark, raylite beside its peers and the physical limits.

    python -m benchmarks                      # full: ~30 minutes on 2 cores with every peer
    python -m benchmarks --quick              # seconds to a minute or two
    python -m benchmarks --quick --no-peers   # raylite and the limits only (what CI runs)
    make bench                                # = python -m benchmarks

Steps, each a script of its own (run alone with ``python benchmarks/NAME.py``), each run
here as a subprocess, and each of those measures every framework in a fresh subprocess of
its own, after a warm-up, as medians of repeats with min-max:

- ``limits``      pyzmq round trip and pipelined throughput between two processes, memcpy,
                  first-touch shared memory, Python start-up (``limits.py``);
- ``core``        start-up, tasks, actors, small puts: raylite and Ray (``core.py``);
- ``objects``     put / get / task argument from 1 KiB to 1 GiB, NumPy and torch, Ray with
                  and without ``RAY_ENABLE_ZERO_COPY_TORCH_TENSORS=1`` (``object_transfer.py``);
- ``scheduling``  autoscaler decisions; placement groups and queued tasks beside Ray
                  (``scheduling.py``);
- ``serve``       HTTP (needs ``wrk``) and handle throughput and latency against client
                  concurrency, beside Ray Serve and raylite's Serve on the Ray backend
                  (``serve.py``);
- ``peers``       Dask distributed, ipyparallel and multiprocessing on the core and object
                  metrics (``peers.py``);
- ``train``       one 2-worker DDP loop: raylite.train (with and without torch preloaded,
                  and on the Ray backend) beside plain torch.distributed, the floor, and
                  Ray Train (``train.py``);
- ``llm``         the LLM engine beside HF ``generate`` (static batching) and the model's
                  decode floor, in-process and over the OpenAI HTTP API (``llm.py``);
- ``ray_backend`` raylite's API on a Ray session (``init(backend="ray")``) beside the
                  same Ray calls made directly: the seam's overhead (``ray_backend.py``).

Peers are found, not required: Ray under ``--ray-python``, else ``$RAY_PYTHON``, else the
first of ``.bench-venv/bin/python`` (``make bench-env``), ``/work/rayvenv/bin/python`` and
this interpreter where ``import ray`` works; Dask and ipyparallel likewise
(``--peers-python``, ``$PEERS_PYTHON``). A missing one is skipped with a note.

Everything goes to ``--out`` (default ``benchmarks/results/``; with ``--quick``,
``benchmarks/results/quick/``, which git ignores): each step's JSON and plots, and
``suite.json`` (machine, versions, date, load averages, the table) with ``ratios.png``,
``values.png`` and ``objects.png``; and a README with the table and the plots
(``benchmarks/README.md`` for the default full run, else ``OUT/README.md``). Steps not
run this time (``--steps``) are taken from the JSON already in ``--out``, if any.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks import report  # noqa: E402
from benchmarks._runner import python_has, run_streaming, terminate_on_sigterm, write_json  # noqa: E402
from benchmarks.core import RESULTS, ROOT, _shown, machine_info  # noqa: E402
from benchmarks.object_transfer import _git_describe  # noqa: E402

STEPS = ("limits", "core", "objects", "scheduling", "serve", "peers", "train", "llm",
         "ray_backend")
PEERS = ("ray", "dask", "ipyparallel", "multiprocessing")
SCRIPTS = {"limits": "limits", "core": "core", "objects": "object_transfer",
           "scheduling": "scheduling", "serve": "serve", "peers": "peers", "train": "train",
           "llm": "llm", "ray_backend": "ray_backend"}
RAY_CANDIDATES = [str(ROOT / ".bench-venv/bin/python"), "/work/rayvenv/bin/python"]
QUICK_OUT = RESULTS / "quick"
README = ROOT / "benchmarks" / "README.md"
QUICK_OBJECT_MAX = 1 << 22
TIMEOUT_S = {"limits": 300, "core": 1200, "objects": 2400, "scheduling": 1200,
             "serve": 2400, "peers": 2400, "train": 1800, "llm": 1800, "ray_backend": 900}
QUICK_TIMEOUT_S = 300


def find_ray(explicit: str | None) -> str | None:
    """The interpreter to run Ray under, or None when no candidate imports it."""
    explicit = explicit or os.environ.get("RAY_PYTHON")
    candidates = [explicit] if explicit else [*RAY_CANDIDATES, sys.executable]
    return next((p for p in candidates if python_has(p, "ray")), None)


def step_command(step: str, quick: bool, peers: tuple[str, ...], ray_python: str | None,
                 peers_python: str | None, json_path: Path, out: Path) -> list[str] | str:
    """The command line of one step, or a string saying why it is skipped."""
    script = SCRIPTS[step]
    cmd = [sys.executable, str(ROOT / "benchmarks" / f"{script}.py"), "--json", str(json_path)]
    if step not in ("limits", "peers"):
        cmd += ["--png", str(out / f"{script}.png")]
        if step != "llm":  # the LLM benchmark's peers are HF generate and the floor
            cmd += ["--ray-python", ray_python] if ray_python else ["--no-ray"]
    if quick:
        cmd.append("--quick")
    if step == "objects" and quick:
        configs = ["raylite numpy", "memcpy"]
        if ray_python:
            configs += ["raylite torch zc", "raylite torch copy", "ray numpy", "ray torch zc",
                        "ray torch copy"]
        cmd += ["--max-size", str(QUICK_OBJECT_MAX), "--repeats", "3", "--only", *configs]
    if step == "serve":
        if shutil.which("wrk") is None:
            return "wrk is not installed (apt-get install -y wrk)"
        if quick:
            cmd += ["--seconds", "1", "--repeats", "1", "--replicas", "1", "--concurrency",
                    "1", "8", "--window-points", "10", "1000", "100000"]
    if step == "train":
        if importlib.util.find_spec("torch") is None:
            return "torch is not installed (pip install 'raylite[torch]')"
        if quick:  # raylite and its floor (and Ray when asked), not raylite unpreloaded
            cmd += ["--only", "raylite", "torch",
                    *(["ray", "raylite-on-ray"] if ray_python else [])]
    if step == "peers":
        names = [p for p in peers if p != "ray"]
        if not names:
            return "no peers requested"
        cmd += ["--only", *names]
        cmd += ["--peers-python", peers_python] if peers_python else []
        cmd += ["--ray-python", ray_python] if ray_python else []
    return cmd


def run(quick: bool = False, peers: tuple[str, ...] = PEERS, steps: tuple[str, ...] = STEPS,
        out: Path | None = None, ray_python: str | None = None,
        peers_python: str | None = None, readme: Path | None = None,
        echo: Callable[[str], None] | None = print,
        command: str = "benchmarks.suite.run()") -> dict[str, Any]:
    """Run ``steps``; write every report, the summary, the plots and the README into
    ``out``; return the summary (what ``suite.json`` holds)."""
    out = Path(out or (QUICK_OUT if quick else RESULTS))
    out.mkdir(parents=True, exist_ok=True)
    say = echo or (lambda line: None)
    started, load_start = time.monotonic(), os.getloadavg()
    notes: list[str] = []
    ray = find_ray(ray_python) if "ray" in peers else None
    if "ray" in peers and ray is None:
        notes.append("Ray not measured: no interpreter with ray installed (--ray-python, "
                     "$RAY_PYTHON or make bench-env)")
    reports: dict[str, Any] = {}
    step_info: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="raylite-bench-") as tmp:
        for step in STEPS:
            final = out / f"{SCRIPTS[step]}.json"
            if step not in steps:
                if final.exists():
                    reports[step] = report_json(final)
                    step_info[step] = {"status": "reused", "json": final.name,
                                       "date": reports[step].get("machine", {}).get("date")}
                continue
            fresh = Path(tmp) / final.name
            cmd = step_command(step, quick, peers, ray, peers_python, fresh, out)
            if isinstance(cmd, str):
                step_info[step] = {"status": "skipped", "note": cmd}
                notes.append(f"{step} not measured: {cmd}")
                say(f"== {step}: skipped ({cmd})")
                continue
            say(f"== {step}: {' '.join(cmd[1:2] + cmd[4:])}")
            load = os.getloadavg()[0]
            code, tail, wall = run_streaming(
                cmd, timeout_s=QUICK_TIMEOUT_S if quick else TIMEOUT_S[step], cwd=ROOT,
                echo=(lambda line, s=step: echo(f"[{s}] {line}")) if echo else None)
            info = {"wall_s": wall, "loadavg_1min": [load, os.getloadavg()[0]]}
            if code == 0 and fresh.exists():
                shutil.move(fresh, final)
                reports[step] = report_json(final)
                step_info[step] = {"status": "ok", "json": final.name, **info}
            else:
                why = "timed out" if code is None else f"exit {code}"
                step_info[step] = {"status": "failed", "note": why, "log": tail, **info}
                notes.append(f"{step} failed ({why}); see suite.json")
                say(f"== {step} failed ({why}):\n{tail}")
            say(f"== {step}: {step_info[step]['status']} in {wall:.0f} s, 1-min load "
                f"{info['loadavg_1min'][0]:.1f} -> {info['loadavg_1min'][1]:.1f}")
    notes += skipped_notes(reports)
    summary = {
        "suite": {"quick": quick, "steps": list(steps), "peers": list(peers),
                  "wall_s": round(time.monotonic() - started, 1),
                  "command": command},
        "machine": {**machine_info(), "loadavg": {"start": load_start, "end": os.getloadavg()}},
        "versions": versions(reports),
        "steps": step_info, "notes": notes, **report.summarize(reports)}
    write_json(out / "suite.json", summary)
    plots = write_plots(summary, out)
    readme = Path(readme) if readme else (README if out.resolve() == RESULTS.resolve()
                                          else out / "README.md")
    readme.write_text(readme_text(summary, out, plots, readme.parent))
    say(report.text_table(summary))
    say(f"saved {_shown(out / 'suite.json')}, {_shown(readme)} and "
        f"{', '.join(plots)} in {_shown(out)} ({summary['suite']['wall_s']:.0f} s)")
    return summary


def report_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def skipped_notes(reports: dict[str, Any]) -> list[str]:
    """Frameworks a step could not measure, and why."""
    found = []
    for step, rep in reports.items():
        for key in ("frameworks", "results", "peers", "runtime"):
            for name, r in (rep.get(key) or {}).items():
                if isinstance(r, dict) and "skipped" in r and r["skipped"] != "not requested":
                    found.append(f"{step}: {name} not measured: {r['skipped']}")
    return found


def versions(reports: dict[str, Any]) -> dict[str, str]:
    import numpy
    import zmq

    import raylite

    out = {"raylite": raylite.__version__, "raylite_commit": _git_describe(),
           "python": platform.python_version(), "numpy": numpy.__version__,
           "pyzmq": zmq.__version__, "libzmq": zmq.zmq_version()}
    core = reports.get("core", {}).get("frameworks", {})
    if "version" in core.get("ray", {}):
        out["ray"] = core["ray"]["version"]
    for r in reports.get("objects", {}).get("results", {}).values():
        for mod, v in r.get("versions", {}).items():
            out.setdefault(mod, v)
    for r in reports.get("peers", {}).get("peers", {}).values():
        for mod, v in r.get("versions", {}).items():
            if mod not in ("numpy", "python", "zmq"):
                out.setdefault(mod, v)
    return out


def write_plots(summary: dict[str, Any], out: Path) -> list[str]:
    made = []
    for name, fig in (("ratios.png", lambda: report.plot_ratios(summary)),
                      ("values.png", lambda: report.plot_values(summary)),
                      ("objects.png", lambda: report.plot_objects(summary))):
        try:
            ok = report.save(fig(), out / name)
        except ImportError:
            ok = False
        if ok:
            made.append(name)
        elif (out / name).exists():
            (out / name).unlink()  # never show a plot of an older run as this one's
    return made


def readme_text(summary: dict[str, Any], out: Path, plots: list[str], where: Path) -> str:
    from benchmarks.readme import render

    return render(summary, out, plots, where)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks",
                                description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true",
                   help="seconds, not minutes: fewer repeats, smaller sizes, shorter runs")
    p.add_argument("--no-peers", action="store_true", help="raylite and the limits only")
    p.add_argument("--peers", nargs="+", choices=PEERS, default=list(PEERS),
                   help="which peers to measure when installed (default: all)")
    p.add_argument("--steps", nargs="+", choices=STEPS, default=list(STEPS),
                   help="which steps to run (others are taken from --out's JSON)")
    p.add_argument("--ray-python", help="interpreter with ray[serve] and torch "
                   "(default: $RAY_PYTHON, else found)")
    p.add_argument("--peers-python", default=os.environ.get("PEERS_PYTHON"),
                   help="interpreter with dask[distributed] and ipyparallel "
                        "(default: $PEERS_PYTHON, else found)")
    p.add_argument("--out", type=Path, help="results folder (default benchmarks/results/, "
                   "or benchmarks/results/quick/ with --quick)")
    p.add_argument("--readme", type=Path, help="README to write (default: see above)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    terminate_on_sigterm()  # a killed suite still kills what it started (finally blocks)
    try:
        import matplotlib

        matplotlib.use("Agg")
    except ImportError:
        print("matplotlib is not installed: no plots", file=sys.stderr)
    run(quick=args.quick, peers=() if args.no_peers else tuple(args.peers),
        steps=tuple(args.steps), out=args.out, ray_python=args.ray_python,
        peers_python=args.peers_python, readme=args.readme,
        command=" ".join(["python -m benchmarks", *(argv if argv is not None else sys.argv[1:])]))


if __name__ == "__main__":
    main()
