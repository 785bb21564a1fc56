"""Run one measuring subprocess, stream its output, and leave nothing behind.

The suite (``python -m benchmarks``), ``peers.py`` and ``limits.py`` start every measurement
in a fresh interpreter. Each child writes its result as JSON to a path it is given; this
module runs it with a wall-clock limit and, whatever happens (timeout, error, Ctrl-C,
SIGTERM to the parent), kills the child's whole process tree: the frameworks measured
start clusters of their own (raylite's head and workers, Ray's raylet, Dask's nanny),
and some of them run in sessions of their own, so a process-group kill is not enough.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil


def kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` and every process below it (found before any is killed)."""
    try:
        root = psutil.Process(pid)
        procs = root.children(recursive=True) + [root]
    except psutil.NoSuchProcess:
        return
    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=5)


def run_streaming(
    cmd: list[str],
    *,
    timeout_s: float,
    env: dict[str, str] | None = None,
    cwd: str | Path | None = None,
    echo: Callable[[str], None] | None = print,
) -> tuple[int | None, str, float]:
    """Run ``cmd`` to its end or ``timeout_s``; (exit code or None on timeout, the last
    3,000 characters of its output, wall seconds). ``echo`` gets each output line as it
    comes (None: keep quiet). Nothing it started outlives it."""
    start = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    timer = threading.Timer(timeout_s, kill_tree, [proc.pid])
    timer.start()
    log: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            log.append(line)
            if echo is not None:
                echo(line.rstrip("\n"))
        proc.wait()
    finally:
        timer.cancel()
        kill_tree(proc.pid)  # whatever the child's frameworks left running
    wall = round(time.monotonic() - start, 1)
    code = None if wall >= timeout_s else proc.returncode
    return code, "".join(log)[-3000:], wall


def run_json(cmd: list[str], *, timeout_s: float, **kwargs: Any) -> dict[str, Any]:
    """Run ``cmd + ["--out", PATH]`` (see ``run_streaming``); return the JSON the child
    wrote to PATH, with ``wall_s``. A child that fails, times out or writes nothing gives
    ``{"skipped": why, "log": tail, "wall_s": ...}``."""
    with tempfile.TemporaryDirectory(prefix="raylite-bench-") as tmp:
        out = os.path.join(tmp, "result.json")
        code, tail, wall = run_streaming([*cmd, "--out", out], timeout_s=timeout_s, **kwargs)
        if code is None:
            return {"skipped": f"timed out after {timeout_s:.0f} s", "log": tail, "wall_s": wall}
        if code != 0 or not os.path.exists(out):
            return {"skipped": f"failed (exit {code})", "log": tail, "wall_s": wall}
        result = json.loads(Path(out).read_text())
        result["wall_s"] = wall
        return result


def terminate_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so ``finally`` blocks kill the children first."""

    def handler(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)


def write_json(path: str | Path, data: Any) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(data, indent=1) + "\n")


def python_has(python: str, module: str, timeout_s: float = 60) -> bool:
    """Whether ``module`` imports under the interpreter ``python``."""
    if not python or not os.path.exists(python):
        return False
    try:
        return subprocess.run([python, "-c", f"import {module}"], capture_output=True,
                              timeout=timeout_s).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def raylite_on_ray_python(ray_python: str | None) -> str | None:
    """The interpreter for raylite on the Ray backend (the benchmarks' "raylite-on-ray"
    framework): this one when it imports ray (the [ray] extra), else ``ray_python``, the
    Ray one, where raylite comes from this checkout."""
    return sys.executable if python_has(sys.executable, "ray") else ray_python


def stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
