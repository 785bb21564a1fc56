"""The benchmark suite's quick mode runs end to end, so the suite never rots.

``python -m benchmarks --quick --no-peers`` (raylite and the physical limits; serve only
where ``wrk`` is installed) runs in a subprocess, writing into a temporary folder (never
over the committed results), and the report it writes is checked for shape: every step
there, every number positive, min <= median <= max. No timing thresholds: the numbers
depend on the machine and its load.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import report

ROOT = Path(__file__).resolve().parent.parent
# a guard against a hang, not a speed target (speed lives in the benchmarks' own
# output): quick mode takes ~40 s on a quiet 2-core machine, several times that loaded
QUICK_TIMEOUT_S = 300
CORE_KEYS = {"init", "shutdown", "async_tasks", "sync_task", "actor_create", "async_actor",
             "sync_actor", "puts"}
LIMIT_KEYS = {"zmq_rtt", "zmq_pipelined", "pipe_rtt", "memcpy", "memcpy_parallel",
              "first_touch_shm", "python_startup", "python_imports"}


def _positive(stats: dict[str, float]) -> bool:
    return 0 < stats["min"] <= stats["median"] <= stats["max"]


@pytest.mark.timeout(QUICK_TIMEOUT_S + 40)
def test_quick_mode(tmp_path):
    out = tmp_path / "results"
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks", "--quick", "--no-peers", "--out", str(out)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        log, _ = proc.communicate(timeout=QUICK_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)  # the suite kills its steps' processes, then exits
        log, _ = proc.communicate(timeout=30)
        pytest.fail(f"quick mode took over {QUICK_TIMEOUT_S} s:\n{log[-4000:]}")
    assert proc.returncode == 0, log[-4000:]

    summary = json.loads((out / "suite.json").read_text())
    assert {"suite", "machine", "versions", "steps", "notes", "frameworks", "rows",
            "curves"} <= set(summary)
    assert summary["suite"]["quick"] is True
    assert summary["machine"]["cpu_count"] > 0 and len(summary["machine"]["loadavg"]["start"]) == 3
    assert {"raylite", "python", "numpy", "pyzmq"} <= set(summary["versions"])
    assert summary["frameworks"] == ["raylite"]  # no peers asked for

    steps = summary["steps"]
    for step in ("limits", "core", "objects", "scheduling", "train"):
        assert steps[step]["status"] == "ok", (step, steps[step])
    assert steps["serve"]["status"] == ("ok" if shutil.which("wrk") else "skipped")
    assert steps["peers"]["status"] == "skipped"
    for name in ("limits", "core", "object_transfer", "scheduling", "train"):
        assert (out / f"{name}.json").exists()

    rows = {r["key"]: r for r in summary["rows"]}
    assert CORE_KEYS <= set(rows) and LIMIT_KEYS <= set(rows)
    for key in CORE_KEYS:
        assert _positive(rows[key]["values"]["raylite"]), rows[key]
        assert rows[key]["vs_ray"] is None
    for key in LIMIT_KEYS:
        assert _positive(rows[key]["limit"]), rows[key]
    objects = [r for r in summary["rows"] if r["section"] == "objects"]
    assert {r["key"].split("_")[0] for r in objects} == {"put", "get", "task"}
    assert all(_positive(r["values"]["raylite"]) for r in objects)
    assert summary["object_size"] == 1 << 22
    assert {"put", "get", "task"} <= set(summary["curves"]["raylite numpy"])
    for key in ("pg_per_s", "queued_10k_s"):
        assert _positive(rows[key]["values"]["raylite"])
    if steps["serve"]["status"] == "ok":
        assert _positive(rows["http_rps"]["values"]["raylite"])
    for key in ("train_fit_s", "train_first_report_s", "train_ckpt_report_ms"):
        assert _positive(rows[key]["values"]["raylite"]) and _positive(rows[key]["limit"])
    assert _positive(rows["train_metrics_report_ms"]["values"]["raylite"])

    readme = (out / "README.md").read_text()
    assert "| metric | raylite | limit | raylite vs Ray |" in readme
    assert "sync task round trip" in readme
    for png in ("values.png", "objects.png", "train.png"):
        assert (out / png).stat().st_size > 0, png
        assert f"({png})" in readme


def _reports(ray_sync_us: float) -> dict:
    """Step reports shaped as the scripts write them, with made-up numbers."""
    stats = lambda m: {"median": m, "min": m * 0.9, "max": m * 1.1}  # noqa: E731
    return {
        "core": {"frameworks": {"raylite": {"metrics": {"sync_task": stats(100.0),
                                                        "async_tasks": stats(20000.0)}},
                                "ray": {"metrics": {"sync_task": stats(ray_sync_us),
                                                    "async_tasks": stats(2000.0)}}}},
        "peers": {"peers": {"dask": {"metrics": {"sync_task": stats(10000.0)}},
                            "ipyparallel": {"skipped": "not installed"}}},
        "limits": {"metrics": {"zmq_rtt": {"label": "pyzmq round trip", "unit": "us",
                                           "higher_is_better": False, **stats(30.0)}}},
    }


def test_report_rows_ratios_and_table():
    summary = report.summarize(_reports(ray_sync_us=1000.0))
    assert summary["frameworks"] == ["raylite", "ray", "dask"]
    rows = {r["key"]: r for r in summary["rows"]}
    assert rows["sync_task"]["vs_ray"] == pytest.approx(10.0)      # lower is better
    assert rows["async_tasks"]["vs_ray"] == pytest.approx(10.0)    # higher is better
    assert rows["sync_task"]["limit"]["median"] == 30.0            # the round trip bounds it
    assert "init" not in rows  # nothing measured it
    table = report.markdown_table(summary)
    assert table.splitlines()[0] == ("| metric | raylite | Ray | Dask | limit | "
                                     "raylite vs Ray |")
    assert "**10.00x**" in table
    assert "sync task round trip" in report.text_table(summary)
