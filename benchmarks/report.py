"""The suite's summary: one table of raylite beside its peers and the physical limits,
built from the JSON each benchmark script writes; plots of it; the README that shows it.

Pure functions of those JSON reports (no measuring here), so a notebook can rebuild the
table and the plots from committed results as well as from a run it just made.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks.core import METRICS as CORE_METRICS
from benchmarks.object_transfer import size_label

FRAMEWORKS = ("raylite", "ray", "raylite-on-ray", "dask", "ipyparallel", "multiprocessing")
TITLES = {"raylite": "raylite", "ray": "Ray", "raylite-on-ray": "raylite on Ray",
          "dask": "Dask", "ipyparallel": "ipyparallel", "multiprocessing": "multiprocessing",
          "limit": "limit"}
COLORS = {"raylite": "tab:green", "ray": "tab:orange", "raylite-on-ray": "tab:olive",
          "dask": "tab:blue", "ipyparallel": "tab:purple", "multiprocessing": "tab:brown",
          "limit": "black"}
TABLE_SIZE = 1 << 26  # object rows at 64 MiB (quick runs: their largest size)
# core metric -> the limit that bounds it (limits.py's key), where one does
CORE_LIMITS = {"init": "python_imports", "async_tasks": "zmq_pipelined",
               "sync_task": "zmq_rtt", "async_actor": "zmq_pipelined",
               "sync_actor": "zmq_rtt"}


@dataclass
class Row:
    section: str
    key: str
    label: str
    unit: str
    higher_is_better: bool
    values: dict[str, dict[str, float]]  # framework -> {median, min, max}
    limit: dict[str, float] | None = None
    limit_note: str = ""

    def vs_ray(self) -> float | None:
        """How many times better raylite is than Ray (> 1: raylite better)."""
        mine, ray = self.values.get("raylite"), self.values.get("ray")
        if not (mine and ray):
            return None
        return ratio(mine["median"], ray["median"], self.higher_is_better)


def ratio(value: float, baseline: float, higher_is_better: bool) -> float:
    """Times better ``value`` is than ``baseline``."""
    return value / baseline if higher_is_better else baseline / value


def _stats(median: float, lo: float, hi: float, scale: float = 1.0) -> dict[str, float]:
    return {"median": median * scale, "min": lo * scale, "max": hi * scale}


# --------------------------------------------------------------------------- rows
def core_rows(reports: dict[str, Any]) -> list[Row]:
    core = reports.get("core", {}).get("frameworks", {})
    peers = reports.get("peers", {}).get("peers", {})
    limits = reports.get("limits", {}).get("metrics", {})
    rows = []
    for m in CORE_METRICS:
        values = {fw: core[fw]["metrics"][m.key] for fw in ("raylite", "ray")
                  if m.key in core.get(fw, {}).get("metrics", {})}
        values |= {p: r["metrics"][m.key] for p, r in peers.items()
                   if m.key in r.get("metrics", {})}
        lim = limits.get(CORE_LIMITS.get(m.key, ""))
        if not (values or lim):
            continue
        rows.append(Row("core", m.key, m.label, m.unit, m.higher_is_better, values,
                        _limit(lim), lim["label"] if lim else ""))
    return rows


def _limit(metric: dict[str, Any] | None) -> dict[str, float] | None:
    return {k: metric[k] for k in ("median", "min", "max")} if metric else None


def object_size(reports: dict[str, Any]) -> int | None:
    """The size the object rows show: 64 MiB, or the largest raylite was measured at."""
    stats = reports.get("objects", {}).get("results", {}).get("raylite numpy", {}).get("stats")
    sizes = sorted(int(s) for s in stats or ())
    if not sizes:
        return None
    return TABLE_SIZE if TABLE_SIZE in sizes else sizes[-1]


def object_rows(reports: dict[str, Any]) -> list[Row]:
    size = object_size(reports)
    if size is None:
        return []
    results = reports["objects"]["results"]
    peers = reports.get("peers", {}).get("peers", {})

    def ms(key: str, op: str) -> dict[str, float] | None:
        st = results.get(key, {}).get("stats", {}).get(str(size), {}).get(op)
        return _stats(st["median_s"], st["min_s"], st["max_s"], 1e3) if st else None

    limits = reports.get("limits", {}).get("metrics", {})
    rtt = limits.get("zmq_rtt")
    memcpy = _copy_limit(limits, size) or ms("memcpy", "copy")
    label = size_label(size)
    rows = []
    for op, title, limit, note in (
        ("put", f"put {label} NumPy", memcpy, "one memcpy into the store"),
        ("get", f"get {label} NumPy, same node", None, ""),
        ("task", f"task with a {label} NumPy argument", _stats(*_mmm(rtt), 1e-3) if rtt
         else None, "pyzmq round trip: a zero-copy read"),
    ):
        values = {fw: v for fw in ("raylite", "ray") if (v := ms(f"{fw} numpy", op))}
        for p, r in peers.items():
            st = r.get("object_stats", {}).get(str(size), {}).get(op)
            if st:
                values[p] = _stats(st["median"], st["min"], st["max"], 1e3)
        rows.append(Row("objects", f"{op}_{label}", title, "ms", False, values, limit, note))
    for zc, flag in (("zc", "on"), ("copy", "off")):
        values = {fw: v for fw in ("raylite", "ray") if (v := ms(f"{fw} torch {zc}", "get"))}
        if values:
            rows.append(Row("objects", f"get_torch_{zc}_{label}",
                            f"get {label} torch tensor, zero-copy flag {flag}", "ms", False,
                            values, memcpy if zc == "copy" else None,
                            "memcpy" if zc == "copy" else ""))
    return rows


def _copy_limit(limits: dict[str, Any], size: int) -> dict[str, float] | None:
    """Milliseconds to copy ``size`` bytes at the best memcpy bandwidth measured (one
    thread or one per CPU), min-max from its samples."""
    best = max((limits[k] for k in ("memcpy", "memcpy_parallel") if k in limits),
               key=lambda m: m["median"], default=None)
    if best is None:
        return None
    return {"median": size / best["median"] / 1e6, "min": size / best["max"] / 1e6,
            "max": size / best["min"] / 1e6}


def _mmm(metric: dict[str, float]) -> tuple[float, float, float]:
    return metric["median"], metric["min"], metric["max"]


def serve_rows(reports: dict[str, Any]) -> list[Row]:
    serve = reports.get("serve", {}).get("frameworks", {})
    rows = []
    for via, key, label, unit, higher in (
        ("http", "rps", "Serve HTTP, 1 replica, 8 clients", "req/s", True),
        ("http", "p99_ms", "Serve HTTP p99, 1 replica, 8 clients", "ms", False),
        ("handle", "rps", "Serve handle, 1 replica, 8 clients", "req/s", True),
    ):
        values = {}
        for fw in ("raylite", "ray", "raylite-on-ray"):
            for r in serve.get(fw, {}).get("rows", ()):
                if (r["via"], r["replicas"], r["concurrency"]) == (via, 1, 8):
                    runs = [run[key] for run in r.get("runs", [r])]
                    values[fw] = _stats(r[key], min(runs), max(runs))
        if values:
            rows.append(Row("serve", f"{via}_{key}", label, unit, higher, values))
    return rows


def scheduling_rows(reports: dict[str, Any]) -> list[Row]:
    runtime = reports.get("scheduling", {}).get("runtime", {})
    rows = []
    for key, label, unit, higher in (
        ("pg_per_s", "placement groups create+remove", "groups/s", True),
        ("queued_10k_s", "10,000 queued no-op tasks", "s", False),
    ):
        values = {fw: r["metrics"][key] for fw, r in runtime.items()
                  if key in r.get("metrics", {})}
        if values:
            rows.append(Row("scheduling", key, label, unit, higher, values))
    return rows


TRAIN_METRICS = (  # train.py's key, label, unit; plain torch.distributed is the floor
    ("fit_s", "2-worker DDP fit(), 3 epochs", "s"),
    ("first_report_s", "fit() -> first report", "s"),
    ("refit_s", "fit() again, same cluster", "s"),
    ("refirst_report_s", "fit() again -> first report", "s"),
    ("ckpt_report_ms", "report with a checkpoint", "ms"),
    ("metrics_report_ms", "metrics-only report", "ms"),
)


def train_rows(reports: dict[str, Any]) -> list[Row]:
    results = reports.get("train", {}).get("results", {})

    def stats(r: dict[str, Any], key: str) -> dict[str, float] | None:
        if key not in r:
            return None
        runs = [run[key] for run in r.get("runs", [r])]
        return _stats(r[key], min(runs), max(runs))

    rows = []
    for key, label, unit in TRAIN_METRICS:
        values = {fw: s for fw in ("raylite", "ray", "raylite-on-ray")
                  if (s := stats(results.get(fw, {}), key))}
        # plain torch has nothing to do for a metrics-only report: no floor there
        floor = None if key == "metrics_report_ms" else stats(results.get("torch", {}), key)
        if values:
            rows.append(Row("train", f"train_{key}", label, unit, False, values, floor,
                            "plain torch.distributed (mp.spawn)"))
    return rows


def backend_rows(reports: dict[str, Any]) -> list[Row]:
    """The Ray backend's seam (``ray_backend.py``): raylite's API on Ray beside the same
    calls made to Ray directly, in one Ray session."""
    rows = []
    for name, r in reports.get("ray_backend", {}).get("rows", {}).items():
        scale, unit = (1e3, "ms") if r["ray_s"] > 1e-2 else (1e6, "us")
        values = {fw: _stats(r[f"{key}_s"], *r[f"{key}_min_max_s"], scale)
                  for fw, key in (("ray", "ray"), ("raylite-on-ray", "raylite"))}
        rows.append(Row("ray backend", f"ray_backend_{name.replace(' ', '_')}", name, unit,
                        False, values))
    return rows


def limit_rows(reports: dict[str, Any]) -> list[Row]:
    return [Row("limits", key, m["label"], m["unit"], m["higher_is_better"], {}, _limit(m))
            for key, m in reports.get("limits", {}).get("metrics", {}).items()]


def build_rows(reports: dict[str, Any]) -> list[Row]:
    return (core_rows(reports) + object_rows(reports) + serve_rows(reports)
            + scheduling_rows(reports) + train_rows(reports) + backend_rows(reports)
            + limit_rows(reports))


def curves(reports: dict[str, Any]) -> dict[str, dict[str, list[list[float]]]]:
    """Object time against size: {series: {op: [[bytes, median_s, min_s, max_s], ...]}}."""
    out: dict[str, dict[str, list[list[float]]]] = {}
    for key, r in reports.get("objects", {}).get("results", {}).items():
        for size, ops in r.get("stats", {}).items():
            for op, st in ops.items():
                series = out.setdefault(key, {}).setdefault(op, [])
                series.append([int(size), st["median_s"], st["min_s"], st["max_s"]])
    for peer, r in reports.get("peers", {}).get("peers", {}).items():
        for size, ops in r.get("object_stats", {}).items():
            for op, st in ops.items():
                series = out.setdefault(peer, {}).setdefault(op, [])
                series.append([int(size), st["median"], st["min"], st["max"]])
    for series in out.values():
        for points in series.values():
            points.sort()
    return out


def summarize(reports: dict[str, Any]) -> dict[str, Any]:
    """What suite.json keeps beside the steps' own reports: rows, curves, frameworks."""
    rows = build_rows(reports)
    present = {fw for r in rows for fw in r.values}
    return {"frameworks": [fw for fw in FRAMEWORKS if fw in present],
            "object_size": object_size(reports),
            "rows": [asdict(r) | {"vs_ray": r.vs_ray()} for r in rows],
            "curves": curves(reports),
            "serve": {fw: r.get("rows", []) for fw, r in
                      reports.get("serve", {}).get("frameworks", {}).items() if "rows" in r}}


def rows_of(summary: dict[str, Any]) -> list[Row]:
    return [Row(**{k: v for k, v in r.items() if k != "vs_ray"}) for r in summary["rows"]]


# --------------------------------------------------------------------------- text
def fmt(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}" if abs(value) >= 0.001 else f"{value:.2e}"


def cell(stats: dict[str, float] | None, markdown: bool = True) -> str:
    if not stats:
        return "–" if markdown else "-"
    rng = f"{fmt(stats['min'])}–{fmt(stats['max'])}"
    return f"{fmt(stats['median'])} <sub>{rng}</sub>" if markdown else \
        f"{fmt(stats['median'])} [{rng}]"


def markdown_table(summary: dict[str, Any]) -> str:
    fws = summary["frameworks"]
    head = ["metric", *[TITLES[f] for f in fws], "limit", "raylite vs Ray"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    section = None
    for row in rows_of(summary):
        if row.section != section:
            section = row.section
            lines.append(f"| **{section}** |" + " |" * (len(head) - 1))
        better = "higher" if row.higher_is_better else "lower"
        vs = Row.vs_ray(row)
        limit = cell(row.limit)
        if row.limit and row.limit_note and row.section != "limits":
            limit += f"<br><sub>{row.limit_note}</sub>"
        lines.append("| " + " | ".join([
            f"{row.label} ({row.unit}, {better} is better)",
            *[cell(row.values.get(fw)) for fw in fws], limit,
            f"**{vs:.2f}x**" if vs else "–"]) + " |")
    return "\n".join(lines)


def text_table(summary: dict[str, Any]) -> str:
    fws = summary["frameworks"]
    width = 26
    out = [f"{'metric':<46}" + "".join(f"{TITLES[f]:<{width}}" for f in [*fws, "limit"])
           + "vs Ray"]
    for row in rows_of(summary):
        vs = row.vs_ray()
        out.append(f"{(row.label + ' (' + row.unit + ')')[:45]:<46}"
                   + "".join(f"{cell(row.values.get(f), False):<{width}}" for f in fws)
                   + f"{cell(row.limit, False):<{width}}" + (f"{vs:.2f}x" if vs else "-"))
    return "\n".join(out)


# --------------------------------------------------------------------------- plots
def _plt():
    """pyplot, on whatever backend the caller chose (the suite picks Agg; a notebook keeps
    its inline one)."""
    import matplotlib.pyplot as plt

    return plt


def plot_ratios(summary: dict[str, Any], baseline: str = "ray"):
    """Grouped bars: how many times better each framework (and the limit) is than
    ``baseline`` on every metric where both were measured; None if nothing compares."""
    rows = [r for r in rows_of(summary) if baseline in r.values and r.section != "limits"]
    others = [f for f in [*summary["frameworks"], "limit"] if f != baseline]
    if not rows or not others:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(8.0, 0.16 * len(rows) * len(others) + 3), 6.5))
    width = 0.84 / len(others)
    for i, fw in enumerate(others):
        xs, ys = [], []
        for x, r in enumerate(rows):
            v = r.limit if fw == "limit" else r.values.get(fw)
            if v:
                xs.append(x + (i - (len(others) - 1) / 2) * width)
                ys.append(ratio(v["median"], r.values[baseline]["median"], r.higher_is_better))
        kw = {"fill": False, "hatch": "//"} if fw == "limit" else {}
        ax.bar(xs, ys, width=width, color=COLORS[fw], edgecolor=COLORS[fw],
               label=TITLES[fw], **kw)
    ax.set_xticks(range(len(rows)), [f"{r.label} ({r.unit})" for r in rows], fontsize=8,
                  rotation=40, ha="right", rotation_mode="anchor")
    ax.axhline(1, color="grey", linestyle="--", linewidth=1)
    ax.set_yscale("log")
    ax.set_xlim(-0.6, len(rows) - 0.4)
    ax.set_ylabel(f"times better than {TITLES[baseline]} (log; > 1: better)")
    ax.set_title(f"Every framework and the limit against {TITLES[baseline]} (medians)",
                 pad=24)
    ax.legend(fontsize=8, ncol=len(others), loc="lower center", bbox_to_anchor=(0.5, 1.0),
              frameon=False)
    ax.grid(axis="y", which="major", alpha=0.3)
    fig.tight_layout()
    return fig


def plot_values(summary: dict[str, Any], sections: tuple[str, ...] = ("core", "objects")):
    """One small bar chart per metric (absolute medians with min-max), every framework
    measured plus the limit: readable without Ray."""
    rows = [r for r in rows_of(summary) if r.section in sections and (r.values or r.limit)]
    if not rows:
        return None
    plt = _plt()
    cols = 4
    nrows = -(-len(rows) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.6 * cols, 2.6 * nrows), squeeze=False)
    for ax, r in zip(axes.flat, rows, strict=False):
        names = [f for f in [*summary["frameworks"], "limit"]
                 if (r.limit if f == "limit" else r.values.get(f))]
        stats = [r.limit if f == "limit" else r.values[f] for f in names]
        med = [s["median"] for s in stats]
        err = [[m - s["min"] for m, s in zip(med, stats, strict=True)],
               [s["max"] - m for m, s in zip(med, stats, strict=True)]]
        ax.bar([TITLES[f] for f in names], med, yerr=err, capsize=3,
               color=[COLORS[f] for f in names])
        ax.set_title(f"{r.label}\n({r.unit}, {'higher' if r.higher_is_better else 'lower'}"
                     " is better)", fontsize=8)
        ax.tick_params(axis="x", labelrotation=30, labelsize=7)
        ax.tick_params(axis="y", labelsize=7)
        if med and max(med) / max(min(med), 1e-12) > 50:
            ax.set_yscale("log")
    for ax in list(axes.flat)[len(rows):]:
        ax.axis("off")
    fig.tight_layout()
    return fig


def plot_objects(summary: dict[str, Any]):
    """Time against object size, log-log, one panel per operation, every framework."""
    data = summary["curves"]
    if not data:
        return None
    plt = _plt()
    ops = (("put", "put"), ("get", "get (same node)"), ("task", "task with the array as argument"))
    fig, axes = plt.subplots(1, 3, figsize=(15, 5.2), sharey=True)
    rtt = next((r.limit for r in rows_of(summary) if r.key == "zmq_rtt"), None)
    series = {"raylite numpy": "raylite", "ray numpy": "ray", "dask": "dask",
              "ipyparallel": "ipyparallel", "multiprocessing": "multiprocessing"}
    for ax, (op, title) in zip(axes, ops, strict=True):
        for key, fw in series.items():
            pts = data.get(key, {}).get(op)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", markersize=3,
                        color=COLORS[fw], label=TITLES[fw])
                ax.fill_between([p[0] for p in pts], [p[2] for p in pts], [p[3] for p in pts],
                                color=COLORS[fw], alpha=0.15)
        memcpy = data.get("memcpy", {}).get("copy")
        if memcpy:
            ax.plot([p[0] for p in memcpy], [p[1] for p in memcpy], ":", color="black",
                    label="memcpy, one thread")
        if op == "task" and rtt:
            ax.axhline(rtt["median"] * 1e-6, color="black", linestyle="--", linewidth=1,
                       label="pyzmq round trip (limit of a zero-copy task)")
        ax.set(xscale="log", yscale="log", title=title, xlabel="object size (bytes)")
        sizes = sorted({p[0] for s in data.values() for pts in s.values() for p in pts})
        ax.set_xticks(sizes, _size_ticks(sizes), fontsize=7)
        ax.minorticks_off()
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("median time (s; band: min-max)")
    handles = {}
    for ax in axes:  # one legend for the three panels, below them
        for h, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, h)
    fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=4, fontsize=8,
               frameon=False)
    fig.suptitle("Objects: NumPy float32 arrays, time against size")
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    return fig


def _size_ticks(sizes: list[int]) -> list[str]:
    """Size labels, blank where a size sits within 2x of the last one labelled."""
    out, last = [], 0
    for s in sizes:
        out.append(size_label(s) if s >= 2 * last else "")
        last = s if out[-1] else last
    return out


def save(fig: Any, path: Path) -> bool:
    if fig is None:
        return False
    fig.savefig(path, dpi=110)
    _plt().close(fig)
    return True
